"""Replicated data types: states that merge without coordination.

Each type is a join-semilattice: `merge` is commutative, associative and idempotent, so replicas that have seen the
same operations hold equal states no matter in which order, how often, or interleaved with what they saw them. Every
operation is first turned into a small state of its own (a delta) tagged with the operation's unique id, and folding
is merging those deltas; an operation delivered twice therefore counts once.

Pure: no I/O, no clocks, no randomness. Values are JSON values; where values must be compared or hashed their
canonical JSON encoding (sorted keys) is used, so the result never depends on dict order.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import msgspec

from agentfold.shared.hlc import Timestamp

_canonical_encoder = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """The encoding of a JSON value with sorted object keys: equal values give equal bytes."""
    return _canonical_encoder.encode(value)


class Replicated(abc.ABC):
    """A mergeable state. Subclasses guarantee `a.joined(b) == b.joined(a)`, associativity, and `a.joined(a) == a`."""

    __slots__ = ()

    @abc.abstractmethod
    def merge(self, other: Self) -> None:
        """Absorb `other` into this state (in place)."""

    @abc.abstractmethod
    def copy(self) -> Self:
        """An independent copy."""

    @property
    @abc.abstractmethod
    def value(self) -> Any:
        """The plain value the state stands for, in a deterministic shape."""

    def joined(self, other: Self) -> Self:
        """A new state holding both this one and `other`."""
        result = self.copy()
        result.merge(other)
        return result


# -- last-writer-wins ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LWWEntry:
    """One write to a last-writer-wins cell; `present` is False for a delete."""

    timestamp: Timestamp
    op_id: str
    value: Any
    present: bool = True

    def wins_over(self, other: LWWEntry) -> bool:
        """Larger (timestamp, op id) wins. The rest only orders corrupt duplicates of one op id deterministically."""
        if self.timestamp != other.timestamp:
            return self.timestamp > other.timestamp
        if self.op_id != other.op_id:
            return self.op_id > other.op_id
        return (self.present, canonical_json(self.value)) > (other.present, canonical_json(other.value))

    def same(self, other: LWWEntry) -> bool:
        return (
            self.timestamp == other.timestamp
            and self.op_id == other.op_id
            and self.present == other.present
            and canonical_json(self.value) == canonical_json(other.value)
        )


def _newer(current: LWWEntry | None, candidate: LWWEntry) -> LWWEntry:
    if current is None or candidate.wins_over(current):
        return candidate
    return current


class LWWRegister(Replicated):
    """One value; the write with the largest hybrid logical timestamp wins (agent id, then op id break ties)."""

    __slots__ = ("_entry",)

    def __init__(self, entry: LWWEntry | None = None) -> None:
        self._entry = entry

    @classmethod
    def assign(cls, timestamp: Timestamp, op_id: str, value: Any) -> LWWRegister:
        """The delta of one write."""
        return cls(LWWEntry(timestamp, op_id, value))

    @property
    def entry(self) -> LWWEntry | None:
        """The winning write, or None before any write."""
        return self._entry

    @property
    def value(self) -> Any:
        return None if self._entry is None else self._entry.value

    def merge(self, other: LWWRegister) -> None:
        if other._entry is not None:
            self._entry = _newer(self._entry, other._entry)

    def copy(self) -> LWWRegister:
        return LWWRegister(self._entry)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LWWRegister):
            return NotImplemented
        if self._entry is None or other._entry is None:
            return self._entry is other._entry
        return self._entry.same(other._entry)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWRegister({self._entry!r})"


class LWWMap(Replicated):
    """A JSON object whose fields are independent last-writer-wins cells; a delete is a write of "absent"."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, LWWEntry] | None = None) -> None:
        self._fields: dict[str, LWWEntry] = dict(fields) if fields else {}

    @classmethod
    def put(cls, timestamp: Timestamp, op_id: str, field: str, value: Any) -> LWWMap:
        """The delta of setting one field."""
        return cls({field: LWWEntry(timestamp, op_id, value)})

    @classmethod
    def delete(cls, timestamp: Timestamp, op_id: str, field: str) -> LWWMap:
        """The delta of deleting one field (it stays deleted until a later put)."""
        return cls({field: LWWEntry(timestamp, op_id, None, present=False)})

    def entry(self, field: str) -> LWWEntry | None:
        """The winning write of `field` (a delete included), or None if it was never written."""
        return self._fields.get(field)

    @property
    def value(self) -> dict[str, Any]:
        """The present fields, in key order."""
        return {field: entry.value for field, entry in sorted(self._fields.items()) if entry.present}

    def merge(self, other: LWWMap) -> None:
        fields = self._fields
        for field, entry in other._fields.items():
            fields[field] = _newer(fields.get(field), entry)

    def copy(self) -> LWWMap:
        return LWWMap(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LWWMap):
            return NotImplemented
        return self._fields.keys() == other._fields.keys() and all(
            entry.same(other._fields[field]) for field, entry in self._fields.items()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWMap({self.value!r})"


# -- counter ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CounterEntry:
    """One increment (amount > 0) or decrement (amount < 0) of a counter."""

    timestamp: Timestamp
    op_id: str
    amount: int


class PNCounter(Replicated):
    """A counter that many writers increment and decrement at once.

    It keeps a grow-only map of increments (P) and one of decrements (N), each keyed by the operation's id rather
    than by a per-writer running total: a writer never has to know what it wrote before, and a replayed operation
    lands on the same key. The value is sum(P) - sum(N); amounts are integers, so the sum is exact in any order.
    """

    __slots__ = ("_entries", "_total_decrements", "_total_increments")

    def __init__(self, entries: dict[str, CounterEntry] | None = None) -> None:
        self._entries: dict[str, CounterEntry] = {}
        self._total_increments = 0
        self._total_decrements = 0
        for entry in (entries or {}).values():
            self._absorb(entry)

    @classmethod
    def add(cls, timestamp: Timestamp, op_id: str, amount: int) -> PNCounter:
        """The delta of adding `amount` (negative to decrement)."""
        return cls({op_id: CounterEntry(timestamp, op_id, amount)})

    @property
    def value(self) -> int:
        return self._total_increments - self._total_decrements

    @property
    def increments(self) -> int:
        """sum(P): everything ever added."""
        return self._total_increments

    @property
    def decrements(self) -> int:
        """sum(N): everything ever subtracted, as a positive number."""
        return self._total_decrements

    def entries(self) -> list[CounterEntry]:
        """Every operation, ordered by (timestamp, op id): the same list on every replica."""
        return sorted(self._entries.values(), key=lambda entry: (entry.timestamp, entry.op_id))

    def __len__(self) -> int:
        return len(self._entries)

    def _absorb(self, entry: CounterEntry) -> None:
        known = self._entries.get(entry.op_id)
        if known is not None:
            # Only a corrupt duplicate (one op id, two contents) gets here; keep the larger one on every replica.
            if (known.timestamp, known.amount) >= (entry.timestamp, entry.amount):
                return
            self._count(known.amount, -1)
        self._entries[entry.op_id] = entry
        self._count(entry.amount, 1)

    def _count(self, amount: int, sign: int) -> None:
        if amount >= 0:
            self._total_increments += sign * amount
        else:
            self._total_decrements -= sign * amount

    def merge(self, other: PNCounter) -> None:
        for entry in other._entries.values():
            self._absorb(entry)

    def copy(self) -> PNCounter:
        copied = PNCounter()
        copied._entries = dict(self._entries)
        copied._total_increments = self._total_increments
        copied._total_decrements = self._total_decrements
        return copied

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PNCounter):
            return NotImplemented
        return self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter(value={self.value}, operations={len(self._entries)})"


# -- observed-remove set ---------------------------------------------------------------------------------------------


class ORSet(Replicated):
    """A set of JSON values where an add wins over a concurrent remove.

    Every add tags the element with its op id. A remove deletes only the tags its writer had observed, so an add
    the remover had not seen (a concurrent one) keeps the element in the set. Elements are compared by canonical JSON.
    """

    __slots__ = ("_added", "_removed")

    def __init__(self) -> None:
        self._added: dict[bytes, tuple[Any, set[str]]] = {}  # canonical element -> (element, add tags)
        self._removed: set[str] = set()  # tags some remove has observed

    @classmethod
    def add(cls, op_id: str, element: Any) -> ORSet:
        """The delta of adding `element`, tagged `op_id`."""
        delta = cls()
        delta._added[canonical_json(element)] = (element, {op_id})
        return delta

    @classmethod
    def remove(cls, observed_tags: Iterable[str]) -> ORSet:
        """The delta of removing an element: the add tags its writer had observed for it."""
        delta = cls()
        delta._removed.update(observed_tags)
        return delta

    def tags(self, element: Any) -> frozenset[str]:
        """The live add tags of `element`: what a remove issued now must name."""
        found = self._added.get(canonical_json(element))
        if found is None:
            return frozenset()
        return frozenset(found[1] - self._removed)

    def __contains__(self, element: Any) -> bool:
        return bool(self.tags(element))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.value)

    @property
    def value(self) -> list[Any]:
        """The elements present, in canonical-JSON order."""
        removed = self._removed
        return [element for _key, (element, tags) in sorted(self._added.items()) if not tags <= removed]

    def merge(self, other: ORSet) -> None:
        for key, (element, tags) in other._added.items():
            known = self._added.get(key)
            if known is None:
                self._added[key] = (element, set(tags))
            else:
                known[1].update(tags)
        self._removed.update(other._removed)

    def copy(self) -> ORSet:
        copied = ORSet()
        copied._added = {key: (element, set(tags)) for key, (element, tags) in self._added.items()}
        copied._removed = set(self._removed)
        return copied

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ORSet):
            return NotImplemented
        return self._removed == other._removed and {key: tags for key, (_e, tags) in self._added.items()} == {
            key: tags for key, (_e, tags) in other._added.items()
        }

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ORSet({self.value!r})"


# -- multi-value register --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sibling:
    """One of the concurrent values of a multi-value register: the value and the write that made it."""

    value: Any
    timestamp: Timestamp
    op_id: str

    @property
    def agent_id(self) -> str:
        return self.timestamp.agent_id


class MVRegister(Replicated):
    """A register that keeps every value written concurrently, for the application to choose from.

    Each write names the writes it replaces (those its writer had observed). The register's siblings are the writes
    nobody has replaced yet: one after sequential writes, several after concurrent ones.
    """

    __slots__ = ("_replaced", "_writes")

    def __init__(self) -> None:
        self._writes: dict[str, Sibling] = {}
        self._replaced: set[str] = set()

    @classmethod
    def write(cls, timestamp: Timestamp, op_id: str, value: Any, replaces: Iterable[str] = ()) -> MVRegister:
        """The delta of one write that replaces the writes `replaces`."""
        delta = cls()
        delta._writes[op_id] = Sibling(value, timestamp, op_id)
        delta._replaced.update(replaces)
        return delta

    def siblings(self) -> list[Sibling]:
        """The writes not replaced yet, ordered by (timestamp, op id)."""
        replaced = self._replaced
        live = [sibling for op_id, sibling in self._writes.items() if op_id not in replaced]
        live.sort(key=lambda sibling: (sibling.timestamp, sibling.op_id))
        return live

    @property
    def value(self) -> list[Any]:
        """The sibling values, ordered by (timestamp, op id)."""
        return [sibling.value for sibling in self.siblings()]

    def merge(self, other: MVRegister) -> None:
        writes = self._writes
        for op_id, sibling in other._writes.items():
            known = writes.get(op_id)
            if known is None or _sibling_key(sibling) > _sibling_key(known):
                writes[op_id] = sibling
        self._replaced.update(other._replaced)

    def copy(self) -> MVRegister:
        copied = MVRegister()
        copied._writes = dict(self._writes)
        copied._replaced = set(self._replaced)
        return copied

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MVRegister):
            return NotImplemented
        return (
            self._replaced == other._replaced
            and self._writes.keys() == other._writes.keys()
            and all(_sibling_key(mine) == _sibling_key(other._writes[op_id]) for op_id, mine in self._writes.items())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MVRegister({self.value!r})"


def _sibling_key(sibling: Sibling) -> tuple[Timestamp, bytes]:
    return sibling.timestamp, canonical_json(sibling.value)
