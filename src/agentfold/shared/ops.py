"""Operations on shared state and their event form.

Every write to a shared stream is one event. Its id is the operation's id (the "dot" that makes a replayed or
duplicated delivery count once); its data names the key, the hybrid logical timestamp and the operation's arguments.
Decoding is strict: a malformed event is refused with `InvalidSharedOperation`, and the fold keeps a record of it
instead of guessing. Pure: no I/O.
"""

from __future__ import annotations

import abc
import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from agentfold.errors import InvalidEventData, InvalidInput, InvalidSharedOperation
from agentfold.events import AGENT_ID, NewEvent
from agentfold.shared.hlc import Timestamp
from agentfold.shared.types import LWWMap, LWWRegister, MVRegister, ORSet, PNCounter, Replicated
from agentfold.validation import check_json_object, check_text, describe

MAX_KEY_LENGTH: Final = 200
MAX_AMOUNT: Final = 2**62
EVENT_TYPE_PREFIX: Final = "shared."


class SharedKind(enum.StrEnum):
    """The replicated type a key of a shared stream holds."""

    COUNTER = "counter"
    REGISTER = "register"
    MAP = "map"
    SET = "set"
    MULTIVALUE = "multivalue"


REPLICATED_TYPES: Final[dict[SharedKind, type[Replicated]]] = {
    SharedKind.COUNTER: PNCounter,
    SharedKind.REGISTER: LWWRegister,
    SharedKind.MAP: LWWMap,
    SharedKind.SET: ORSet,
    SharedKind.MULTIVALUE: MVRegister,
}


@dataclass(frozen=True, slots=True)
class Operation(abc.ABC):
    """One write to one key. `op_id` is unique forever; `timestamp` orders it among the others."""

    op_id: str
    key: str
    timestamp: Timestamp

    kind: ClassVar[SharedKind]
    event_type: ClassVar[str]

    @abc.abstractmethod
    def delta(self) -> Replicated:
        """The operation as a state of its own, ready to merge."""

    @abc.abstractmethod
    def arguments(self) -> dict[str, Any]:
        """The operation's own fields, as stored in the event data."""

    def to_event(self) -> NewEvent:
        """The event that records this operation (its id is the op id)."""
        data = {"key": self.key, "hlc": self.timestamp.to_json(), **self.arguments()}
        return NewEvent(self.event_type, data, {AGENT_ID: self.timestamp.agent_id}, id=uuid.UUID(self.op_id))


@dataclass(frozen=True, slots=True)
class CounterAdd(Operation):
    """Add `amount` (negative: subtract) to a PN-counter."""

    amount: int

    kind: ClassVar[SharedKind] = SharedKind.COUNTER
    event_type: ClassVar[str] = "shared.counter.add"

    def delta(self) -> PNCounter:
        return PNCounter.add(self.timestamp, self.op_id, self.amount)

    def arguments(self) -> dict[str, Any]:
        return {"amount": self.amount}


@dataclass(frozen=True, slots=True)
class RegisterAssign(Operation):
    """Set a last-writer-wins register."""

    value: Any

    kind: ClassVar[SharedKind] = SharedKind.REGISTER
    event_type: ClassVar[str] = "shared.register.assign"

    def delta(self) -> LWWRegister:
        return LWWRegister.assign(self.timestamp, self.op_id, self.value)

    def arguments(self) -> dict[str, Any]:
        return {"value": self.value}


@dataclass(frozen=True, slots=True)
class MapPut(Operation):
    """Set one field of a last-writer-wins map."""

    field: str
    value: Any

    kind: ClassVar[SharedKind] = SharedKind.MAP
    event_type: ClassVar[str] = "shared.map.put"

    def delta(self) -> LWWMap:
        return LWWMap.put(self.timestamp, self.op_id, self.field, self.value)

    def arguments(self) -> dict[str, Any]:
        return {"field": self.field, "value": self.value}


@dataclass(frozen=True, slots=True)
class MapDelete(Operation):
    """Delete one field of a last-writer-wins map."""

    field: str

    kind: ClassVar[SharedKind] = SharedKind.MAP
    event_type: ClassVar[str] = "shared.map.delete"

    def delta(self) -> LWWMap:
        return LWWMap.delete(self.timestamp, self.op_id, self.field)

    def arguments(self) -> dict[str, Any]:
        return {"field": self.field}


@dataclass(frozen=True, slots=True)
class SetAdd(Operation):
    """Add an element to an observed-remove set."""

    element: Any

    kind: ClassVar[SharedKind] = SharedKind.SET
    event_type: ClassVar[str] = "shared.set.add"

    def delta(self) -> ORSet:
        return ORSet.add(self.op_id, self.element)

    def arguments(self) -> dict[str, Any]:
        return {"element": self.element}


@dataclass(frozen=True, slots=True)
class SetRemove(Operation):
    """Remove an element from an observed-remove set: only the add tags in `observed` are removed."""

    element: Any
    observed: tuple[str, ...]

    kind: ClassVar[SharedKind] = SharedKind.SET
    event_type: ClassVar[str] = "shared.set.remove"

    def delta(self) -> ORSet:
        return ORSet.remove(self.observed)

    def arguments(self) -> dict[str, Any]:
        return {"element": self.element, "observed": list(self.observed)}


@dataclass(frozen=True, slots=True)
class MultiValueWrite(Operation):
    """Write a multi-value register, replacing the writes in `replaces` (those the writer had observed)."""

    value: Any
    replaces: tuple[str, ...]

    kind: ClassVar[SharedKind] = SharedKind.MULTIVALUE
    event_type: ClassVar[str] = "shared.multivalue.write"

    def delta(self) -> MVRegister:
        return MVRegister.write(self.timestamp, self.op_id, self.value, self.replaces)

    def arguments(self) -> dict[str, Any]:
        return {"value": self.value, "replaces": list(self.replaces)}


OPERATION_TYPES: Final[dict[str, type[Operation]]] = {
    operation.event_type: operation
    for operation in (CounterAdd, RegisterAssign, MapPut, MapDelete, SetAdd, SetRemove, MultiValueWrite)
}


def is_shared_event_type(event_type: str) -> bool:
    """True for the event types shared streams write (and must be able to decode)."""
    return event_type.startswith(EVENT_TYPE_PREFIX)


def decode_operation(op_id: str, event_type: str, data: dict[str, Any], id_is_canonical: bool = False) -> Operation:
    """The operation an event records; raise `InvalidSharedOperation` naming what is wrong.

    `id_is_canonical` skips re-parsing `op_id` when it comes from a store, which always returns canonical UUID text.
    """
    operation_type = OPERATION_TYPES.get(event_type)
    if operation_type is None:
        raise InvalidSharedOperation(f"unknown shared operation type {event_type!r}")
    expected = {"key", "hlc", *_ARGUMENTS[operation_type]}
    if set(data) != expected:
        raise InvalidSharedOperation(
            f"{event_type} data must have exactly the fields {sorted(expected)}, got {sorted(data)}"
        )
    try:
        timestamp = Timestamp.from_json(data["hlc"])
    except InvalidInput as error:
        raise InvalidSharedOperation(f"{event_type} hlc: {error}") from None
    key = check_key(data["key"])
    if not id_is_canonical:
        op_id = check_op_id(op_id)
    if operation_type is CounterAdd:
        return CounterAdd(op_id, key, timestamp, check_amount(data["amount"], allow_negative=True))
    if operation_type is RegisterAssign:
        return RegisterAssign(op_id, key, timestamp, data["value"])
    if operation_type is MapPut:
        return MapPut(op_id, key, timestamp, check_key(data["field"], "map field"), data["value"])
    if operation_type is MapDelete:
        return MapDelete(op_id, key, timestamp, check_key(data["field"], "map field"))
    if operation_type is SetAdd:
        return SetAdd(op_id, key, timestamp, data["element"])
    if operation_type is SetRemove:
        return SetRemove(op_id, key, timestamp, data["element"], check_op_ids(data["observed"], "observed"))
    return MultiValueWrite(op_id, key, timestamp, data["value"], check_op_ids(data["replaces"], "replaces"))


_ARGUMENTS: Final[dict[type[Operation], tuple[str, ...]]] = {
    CounterAdd: ("amount",),
    RegisterAssign: ("value",),
    MapPut: ("field", "value"),
    MapDelete: ("field",),
    SetAdd: ("element",),
    SetRemove: ("element", "observed"),
    MultiValueWrite: ("value", "replaces"),
}


def check_key(key: object, what: str = "shared key") -> str:
    """Return `key` if it is 1 to 200 printable characters, else raise `InvalidSharedOperation`."""
    return check_text(key, what, InvalidSharedOperation, MAX_KEY_LENGTH)


def check_amount(amount: object, allow_negative: bool = False) -> int:
    """Return `amount` if it is an int in range (> 0 unless `allow_negative`), else raise `InvalidSharedOperation`.

    Amounts are integers so that a sum is exact in every order; count cents or tokens, not fractional dollars.
    """
    if type(amount) is not int:
        raise InvalidSharedOperation(f"a counter amount must be an int, got {type(amount).__name__} {describe(amount)}")
    if abs(amount) > MAX_AMOUNT:
        raise InvalidSharedOperation(f"a counter amount must be within ±2**62, got {describe(amount)}")
    if not allow_negative and amount <= 0:
        raise InvalidSharedOperation(f"a counter amount must be > 0, got {amount}")
    return amount


def check_value(value: Any, what: str = "value") -> Any:
    """Return `value` if it is JSON (finite numbers, strings, lists, objects), else raise `InvalidSharedOperation`."""
    try:
        check_json_object({what: value}, "shared")
    except InvalidEventData as error:
        raise InvalidSharedOperation(str(error)) from None
    return value


def check_op_id(op_id: object) -> str:
    """Return the canonical text of a UUID op id, else raise `InvalidSharedOperation`."""
    if isinstance(op_id, uuid.UUID):
        return str(op_id)
    if not isinstance(op_id, str):
        raise InvalidSharedOperation(f"an op id must be a UUID, got {type(op_id).__name__}")
    try:
        return str(uuid.UUID(op_id))
    except ValueError:
        raise InvalidSharedOperation(f"op id {op_id!r} is not a UUID") from None


def check_op_ids(op_ids: object, what: str) -> tuple[str, ...]:
    """Return a list of op ids as a sorted tuple, else raise `InvalidSharedOperation`."""
    if not isinstance(op_ids, list):
        raise InvalidSharedOperation(f"{what} must be a list of op ids, got {type(op_ids).__name__}")
    return tuple(sorted({check_op_id(op_id) for op_id in op_ids}))


def new_op_id() -> str:
    """A fresh, unique op id."""
    return str(uuid.uuid4())


def sorted_op_ids(op_ids: Iterable[str]) -> tuple[str, ...]:
    """Op ids without repeats, in a canonical order."""
    return tuple(sorted(set(op_ids)))
