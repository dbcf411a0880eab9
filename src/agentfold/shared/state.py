"""The state of a shared stream: every key's replicated value, computed by merging operations.

`SharedState` is itself a join-semilattice: applying the same operations in any order, any number of times, or
merging two states that saw them in different orders, gives equal states. Which type a key holds comes from the
schema when one is given (operations of another type are then rejected and listed in `rejected`), otherwise from
the operations themselves; a key written as two types without a schema is a `SharedTypeConflict` on read, never a
silent pick. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from agentfold.errors import InvalidSharedOperation, SharedTypeConflict, SharedTypeMismatch
from agentfold.events import RecordedEvent
from agentfold.shared.ops import (
    REPLICATED_TYPES,
    Operation,
    SharedKind,
    check_key,
    decode_operation,
    is_shared_event_type,
)
from agentfold.shared.resolution import Resolver, resolve
from agentfold.shared.types import LWWMap, LWWRegister, MVRegister, ORSet, PNCounter, Replicated

SchemaEntry = SharedKind | Resolver
"""A key's declared type, or a resolver: a multi-value register whose siblings the resolver turns into one value."""

Schema = Mapping[str, SchemaEntry]

_R = TypeVar("_R", bound=Replicated)


def schema_kind(entry: SchemaEntry) -> SharedKind:
    """The replicated type a schema entry declares."""
    return entry if isinstance(entry, SharedKind) else SharedKind.MULTIVALUE


def check_schema(schema: Schema | None) -> dict[str, SchemaEntry]:
    """A copy of `schema` after checking its keys and entries; raise `InvalidSharedOperation` naming a bad one."""
    if schema is None:
        return {}
    if not isinstance(schema, Mapping):
        raise InvalidSharedOperation(f"a schema must map keys to SharedKind or a resolver, got {type(schema).__name__}")
    checked: dict[str, SchemaEntry] = {}
    for key, entry in schema.items():
        check_key(key)
        if not isinstance(entry, SharedKind) and not callable(entry):
            raise InvalidSharedOperation(f"schema entry for {key!r} must be a SharedKind or a resolver, got {entry!r}")
        checked[key] = entry
    return checked


class SharedState:
    """Every key's replicated value. Build it with `apply`/`apply_event`/`fold_events`; combine with `merge`."""

    __slots__ = ("_rejected", "_schema", "_values")

    def __init__(self, schema: Schema | None = None) -> None:
        self._schema = check_schema(schema)
        self._values: dict[str, dict[SharedKind, Replicated]] = {}
        self._rejected: dict[str, str] = {}

    # -- building ---------------------------------------------------------------------------------------------------

    def apply(self, operation: Operation) -> bool:
        """Merge one operation in; False (and recorded in `rejected`) when the schema gives its key another type."""
        declared = self._schema.get(operation.key)
        if declared is not None and schema_kind(declared) is not operation.kind:
            self._rejected[operation.op_id] = (
                f"{operation.event_type} on key {operation.key!r}, which the schema declares {schema_kind(declared)}"
            )
            return False
        by_kind = self._values.setdefault(operation.key, {})
        known = by_kind.get(operation.kind)
        if known is None:
            by_kind[operation.kind] = operation.delta()
        else:
            known.merge(operation.delta())
        return True

    def apply_event(self, event: RecordedEvent) -> Operation | None:
        """Merge the operation an event records. Other event types are ignored (None); a malformed shared event is
        recorded in `rejected` (None)."""
        if not is_shared_event_type(event.type):
            return None
        try:
            operation = decode_operation(event.id_text, event.type, event.data, id_is_canonical=True)
        except InvalidSharedOperation as error:
            self._rejected[event.id_text] = str(error)
            return None
        return operation if self.apply(operation) else None

    def merge(self, other: SharedState) -> None:
        """Absorb another replica's state (in place). Both must use the same schema."""
        for key, by_kind in other._values.items():
            for kind, value in by_kind.items():
                declared = self._schema.get(key)
                if declared is not None and schema_kind(declared) is not kind:
                    continue
                mine = self._values.setdefault(key, {})
                known = mine.get(kind)
                if known is None:
                    mine[kind] = value.copy()
                else:
                    known.merge(value)
        self._rejected.update(other._rejected)

    def copy(self) -> SharedState:
        """An independent copy."""
        copied = SharedState()
        copied._schema = self._schema
        copied._values = {
            key: {kind: value.copy() for kind, value in by_kind.items()} for key, by_kind in self._values.items()
        }
        copied._rejected = dict(self._rejected)
        return copied

    def joined(self, other: SharedState) -> SharedState:
        """A new state holding both this one and `other`."""
        result = self.copy()
        result.merge(other)
        return result

    # -- reading ----------------------------------------------------------------------------------------------------

    @property
    def schema(self) -> Mapping[str, SchemaEntry]:
        return self._schema

    @property
    def rejected(self) -> dict[str, str]:
        """Op id -> why it was not merged (malformed, or against the schema), in op id order."""
        return dict(sorted(self._rejected.items()))

    def keys(self) -> list[str]:
        """Every key written so far, in order."""
        return sorted(self._values)

    def kind(self, key: str) -> SharedKind | None:
        """The type of `key`: from the schema, else from its operations (None if never written)."""
        declared = self._schema.get(key)
        if declared is not None:
            return schema_kind(declared)
        kinds = self._values.get(key)
        if not kinds:
            return None
        if len(kinds) > 1:
            raise SharedTypeConflict(key, sorted(kinds))
        return next(iter(kinds))

    def counter(self, key: str) -> PNCounter:
        """The PN-counter at `key` (empty if never written)."""
        return self._typed(key, SharedKind.COUNTER, PNCounter)

    def register(self, key: str) -> LWWRegister:
        """The last-writer-wins register at `key`."""
        return self._typed(key, SharedKind.REGISTER, LWWRegister)

    def map(self, key: str) -> LWWMap:
        """The last-writer-wins map at `key`."""
        return self._typed(key, SharedKind.MAP, LWWMap)

    def set(self, key: str) -> ORSet:
        """The add-wins observed-remove set at `key`."""
        return self._typed(key, SharedKind.SET, ORSet)

    def multivalue(self, key: str) -> MVRegister:
        """The multi-value register at `key`."""
        return self._typed(key, SharedKind.MULTIVALUE, MVRegister)

    def resolved(self, key: str, default: Any = None) -> Any:
        """The value of a key the schema gives a resolver: its only sibling, or the resolver's pick among several."""
        declared = self._schema.get(key)
        if declared is None or isinstance(declared, SharedKind):
            raise SharedTypeMismatch(f"shared key {key!r} has no resolver in the schema")
        return resolve(declared, self.multivalue(key).siblings(), default)

    def value(self, key: str) -> Any:
        """The plain value of `key` in its type's shape (resolved, for a key with a resolver); None if never written."""
        kind = self.kind(key)
        if kind is None:
            return None
        declared = self._schema.get(key)
        if declared is not None and not isinstance(declared, SharedKind):
            return self.resolved(key)
        return self._typed(key, kind, REPLICATED_TYPES[kind]).value

    def to_json(self) -> dict[str, Any]:
        """Everything, as JSON: ``{"values": {key: value}, "conflicts": {key: {kind: value}}, "rejected": {...}}``."""
        values: dict[str, Any] = {}
        conflicts: dict[str, Any] = {}
        for key in self.keys():
            try:
                values[key] = self.value(key)
            except SharedTypeConflict:
                conflicts[key] = {str(kind): value.value for kind, value in sorted(self._values[key].items())}
        return {"values": values, "conflicts": conflicts, "rejected": self.rejected}

    def _typed(self, key: str, kind: SharedKind, replicated_type: type[_R]) -> _R:
        declared = self._schema.get(key)
        if declared is not None and schema_kind(declared) is not kind:
            raise SharedTypeMismatch(f"shared key {key!r} is declared {schema_kind(declared)}, not {kind}")
        by_kind = self._values.get(key, {})
        if declared is None and len(by_kind) > 1:
            raise SharedTypeConflict(key, sorted(by_kind))
        if by_kind and kind not in by_kind:
            raise SharedTypeMismatch(f"shared key {key!r} holds a {next(iter(by_kind))}, not a {kind}")
        found = by_kind.get(kind)
        if found is None:
            return replicated_type()
        assert isinstance(found, replicated_type)
        return found

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SharedState):
            return NotImplemented
        return self._values == other._values and self._rejected == other._rejected

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SharedState({self.to_json()!r})"


def fold_events(events: Iterable[RecordedEvent], schema: Schema | None = None) -> SharedState:
    """The state the events stand for: the same for any order or duplication of them."""
    state = SharedState(schema)
    for event in events:
        state.apply_event(event)
    return state


def fold_operations(operations: Iterable[Operation], schema: Schema | None = None) -> SharedState:
    """The state the operations stand for: the same for any order or duplication of them."""
    state = SharedState(schema)
    for operation in operations:
        state.apply(operation)
    return state
