"""A shared stream: one stream that many agents write at once, whose state is merged at read time.

Writers append ordinary events with `expected_version=ANY`, so they never wait for or fail on each other. Readers
fold the stream through `SharedState`, whose merge gives the same result for any order, duplication or interleaving
of the same events; every agent that has read the same events holds the same state.

Guarantees of `SharedStream`:

- Before each write it reads what the stream gained since its last read and advances its clock past every
  timestamp there, so a write is timestamped after every operation the stream held when the write began, however
  skewed this machine's clock is (last-writer-wins then lets causally later writes win).
- A write is one `append` of one event; retrying it with the same `op_id` writes nothing new (the store's
  idempotent retry), and were it delivered twice the fold would still count it once.
- `state()` reflects every write this object made (read-your-writes) and everything it read.

Shared streams are never trimmed: every operation is needed to compute the state.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from agentfold.errors import DuplicateEventId, SharedTypeConflict, SharedTypeMismatch
from agentfold.events import ANY
from agentfold.shared.hlc import HybridLogicalClock, Timestamp, WallClock, system_wall_clock_ms
from agentfold.shared.ops import (
    CounterAdd,
    MapDelete,
    MapPut,
    MultiValueWrite,
    Operation,
    RegisterAssign,
    SetAdd,
    SetRemove,
    SharedKind,
    check_amount,
    check_key,
    check_op_id,
    check_value,
    decode_operation,
    new_op_id,
    sorted_op_ids,
)
from agentfold.shared.state import Schema, SharedState, schema_kind
from agentfold.store import EventStore

_Build = Callable[[Timestamp, str], Operation]
"""Builds the operation of a write once its timestamp and op id are known."""


class WriteReceipt(msgspec.Struct, frozen=True):
    """What a write recorded and where."""

    op_id: str
    """The operation's id (also the event id); pass it again to retry the write idempotently."""
    timestamp: Timestamp
    """The timestamp this attempt gave the operation (a retry that the store recognised keeps the first one's)."""
    version: int
    """The stream's version after the append."""
    position: int
    """The global position of the event."""


class SharedStream:
    """One agent's handle on a shared stream: writes replicated operations and reads the merged state.

    Create one per agent (each has its own hybrid logical clock). Tasks of one agent may share it.
    """

    def __init__(
        self,
        store: EventStore,
        stream_id: str,
        agent_id: str,
        schema: Schema | None = None,
        wall_clock: WallClock = system_wall_clock_ms,
    ) -> None:
        self._store = store
        self._stream_id = stream_id
        self._clock = HybridLogicalClock(agent_id, wall_clock)
        self._state = SharedState(schema)
        self._version = 0
        self._reading = asyncio.Lock()

    @property
    def stream_id(self) -> str:
        return self._stream_id

    @property
    def agent_id(self) -> str:
        return self._clock.agent_id

    @property
    def clock(self) -> HybridLogicalClock:
        return self._clock

    @property
    def version(self) -> int:
        """The stream version read so far."""
        return self._version

    # -- reading ----------------------------------------------------------------------------------------------------

    async def state(self) -> SharedState:
        """Read what the stream gained since the last read and return a copy of the merged state."""
        await self._catch_up()
        return self._state.copy()

    async def _catch_up(self) -> None:
        async with self._reading:
            async for page in self._store.read_stream_pages(self._stream_id, self._version):
                for event in page:
                    operation = self._state.apply_event(event)
                    if operation is not None:
                        self._clock.observe(operation.timestamp)
                self._version = page[-1].version

    # -- writing ----------------------------------------------------------------------------------------------------

    async def increment(self, key: str, amount: int = 1, op_id: uuid.UUID | str | None = None) -> WriteReceipt:
        """Add `amount` (an int > 0) to the PN-counter at `key`."""
        check_amount(amount)
        return await self._write(key, SharedKind.COUNTER, op_id, lambda ts, oid: CounterAdd(oid, key, ts, amount))

    async def decrement(self, key: str, amount: int = 1, op_id: uuid.UUID | str | None = None) -> WriteReceipt:
        """Subtract `amount` (an int > 0) from the PN-counter at `key`."""
        check_amount(amount)
        return await self._write(key, SharedKind.COUNTER, op_id, lambda ts, oid: CounterAdd(oid, key, ts, -amount))

    async def assign(self, key: str, value: Any, op_id: uuid.UUID | str | None = None) -> WriteReceipt:
        """Set the last-writer-wins register at `key` to the JSON `value`."""
        check_value(value)
        return await self._write(key, SharedKind.REGISTER, op_id, lambda ts, oid: RegisterAssign(oid, key, ts, value))

    async def put(self, key: str, field: str, value: Any, op_id: uuid.UUID | str | None = None) -> WriteReceipt:
        """Set `field` of the last-writer-wins map at `key` to the JSON `value`."""
        check_key(field, "map field")
        check_value(value)
        return await self._write(key, SharedKind.MAP, op_id, lambda ts, oid: MapPut(oid, key, ts, field, value))

    async def delete(self, key: str, field: str, op_id: uuid.UUID | str | None = None) -> WriteReceipt:
        """Delete `field` of the last-writer-wins map at `key`."""
        check_key(field, "map field")
        return await self._write(key, SharedKind.MAP, op_id, lambda ts, oid: MapDelete(oid, key, ts, field))

    async def add(self, key: str, element: Any, op_id: uuid.UUID | str | None = None) -> WriteReceipt:
        """Add the JSON `element` to the set at `key`. It wins over any remove that had not seen this add."""
        check_value(element, "element")
        return await self._write(key, SharedKind.SET, op_id, lambda ts, oid: SetAdd(oid, key, ts, element))

    async def discard(self, key: str, element: Any, op_id: uuid.UUID | str | None = None) -> WriteReceipt:
        """Remove `element` from the set at `key`: the adds this agent has seen are undone, concurrent ones stay."""
        check_value(element, "element")

        def build(timestamp: Timestamp, oid: str) -> Operation:
            observed = sorted_op_ids(self._state.set(key).tags(element))
            return SetRemove(oid, key, timestamp, element, observed)

        return await self._write(key, SharedKind.SET, op_id, build)

    async def write(self, key: str, value: Any, op_id: uuid.UUID | str | None = None) -> WriteReceipt:
        """Write the multi-value register at `key`, replacing the values this agent has seen; concurrent writes
        stay side by side as siblings (or go through the key's resolver)."""
        check_value(value)

        def build(timestamp: Timestamp, oid: str) -> Operation:
            replaces = sorted_op_ids(sibling.op_id for sibling in self._state.multivalue(key).siblings())
            return MultiValueWrite(oid, key, timestamp, value, replaces)

        return await self._write(key, SharedKind.MULTIVALUE, op_id, build)

    async def _write(self, key: str, kind: SharedKind, op_id: uuid.UUID | str | None, build: _Build) -> WriteReceipt:
        check_key(key)
        operation_id = new_op_id() if op_id is None else check_op_id(op_id)
        declared = self._state.schema.get(key)
        if declared is not None and schema_kind(declared) is not kind:
            raise SharedTypeMismatch(f"shared key {key!r} is declared {schema_kind(declared)}; cannot write a {kind}")
        await self._catch_up()
        try:
            known = self._state.kind(key)
        except SharedTypeConflict:
            known = None
        if known is not None and known is not kind:
            raise SharedTypeMismatch(f"shared key {key!r} holds a {known}; cannot write a {kind}")
        operation = build(self._clock.now(), operation_id)
        try:
            result = await self._store.append(self._stream_id, [operation.to_event()], ANY)
        except DuplicateEventId:
            # The op id was written before. This attempt's timestamp differs, so the store cannot call it an exact
            # retry; it is one when the earlier operation is the same write (kind, key, arguments).
            earlier = await self._earlier_write(operation)
            if earlier is None:
                raise
            return earlier
        return WriteReceipt(operation.op_id, operation.timestamp, result.version, result.position)

    async def _earlier_write(self, operation: Operation) -> WriteReceipt | None:
        """The receipt of the earlier write of `operation`'s op id on this stream, if it wrote the same operation."""
        async for event in self._store.read_stream(self._stream_id):
            if str(event.id) != operation.op_id:
                continue
            earlier = decode_operation(operation.op_id, event.type, event.data, id_is_canonical=True)
            if type(earlier) is not type(operation) or earlier.key != operation.key:
                return None
            if earlier.arguments() != operation.arguments():
                return None
            return WriteReceipt(earlier.op_id, earlier.timestamp, event.version, event.position)
        return None
