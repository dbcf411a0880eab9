"""Property tests: random multi-agent histories converge under any delivery, and every merge is a join."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfold.errors import NondeterministicResolver
from agentfold.events import RecordedEvent
from agentfold.shared import (
    CounterAdd,
    HybridLogicalClock,
    MapDelete,
    MapPut,
    MultiValueWrite,
    Operation,
    RegisterAssign,
    SetAdd,
    SetRemove,
    SharedKind,
    SharedState,
    Sibling,
    Timestamp,
    WallClock,
    check_resolver,
    fold_events,
    fold_operations,
)

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALUES = [0, 1, -7, 2.5, "x", "", None, True, [1, 2], {"b": 1, "a": [None]}, {"a": [None], "b": 1}]
KEYS = {"c": SharedKind.COUNTER, "r": SharedKind.REGISTER, "m": SharedKind.MAP, "s": SharedKind.SET}
KEYS["v"] = SharedKind.MULTIVALUE
DAY_MS = 86_400_000


@dataclass
class History:
    """Operations in the order they were made, and for each the timestamps its writer had seen before making it."""

    operations: list[Operation] = field(default_factory=list)
    seen_before: dict[str, list[Timestamp]] = field(default_factory=dict)
    replicas: list[SharedState] = field(default_factory=list)


@st.composite
def histories(draw: st.DrawFn, max_steps: int = 40) -> History:
    """Agents with clocks up to a day apart (and running backwards at times) write and exchange operations."""
    agent_count = draw(st.integers(1, 4))
    offsets = draw(st.lists(st.integers(-DAY_MS, DAY_MS), min_size=agent_count, max_size=agent_count))
    now = [DAY_MS * 20_000]

    def skewed(offset: int) -> WallClock:
        return lambda: now[0] + offset

    clocks = [HybridLogicalClock(f"agent-{index}", skewed(offset)) for index, offset in enumerate(offsets)]
    replicas = [SharedState() for _ in range(agent_count)]
    seen: list[list[Timestamp]] = [[] for _ in range(agent_count)]
    history = History(replicas=replicas)
    for _step in range(draw(st.integers(0, max_steps))):
        now[0] += draw(st.integers(-20, 50))
        agent = draw(st.integers(0, agent_count - 1))
        action = draw(st.sampled_from(["sync", "c", "r", "m+", "m-", "s+", "s-", "v"]))
        if action == "sync":
            if history.operations:
                for received in draw(st.lists(st.sampled_from(history.operations), max_size=8)):
                    replicas[agent].apply(received)
                    clocks[agent].observe(received.timestamp)
                    seen[agent].append(received.timestamp)
            continue
        op_id = str(uuid.UUID(int=len(history.operations) + 1))
        timestamp = clocks[agent].now()
        replica = replicas[agent]
        operation: Operation
        if action == "c":
            operation = CounterAdd(op_id, "c", timestamp, draw(st.integers(-100, 100)))
        elif action == "r":
            operation = RegisterAssign(op_id, "r", timestamp, draw(st.sampled_from(VALUES)))
        elif action == "m+":
            operation = MapPut(op_id, "m", timestamp, draw(st.sampled_from("fgh")), draw(st.sampled_from(VALUES)))
        elif action == "m-":
            operation = MapDelete(op_id, "m", timestamp, draw(st.sampled_from("fgh")))
        elif action == "s+":
            operation = SetAdd(op_id, "s", timestamp, draw(st.sampled_from(VALUES)))
        elif action == "s-":
            element = draw(st.sampled_from(VALUES))
            operation = SetRemove(op_id, "s", timestamp, element, tuple(sorted(replica.set("s").tags(element))))
        else:
            replaces = tuple(sorted(sibling.op_id for sibling in replica.multivalue("v").siblings()))
            operation = MultiValueWrite(op_id, "v", timestamp, draw(st.sampled_from(VALUES)), replaces)
        history.seen_before[op_id] = list(seen[agent])
        replica.apply(operation)
        seen[agent].append(timestamp)
        history.operations.append(operation)
    return history


def as_recorded(operations: list[Operation]) -> list[RecordedEvent]:
    """The operations as a store would return them: JSON round-tripped event data."""
    recorded = []
    for position, operation in enumerate(operations, start=1):
        event = operation.to_event()
        data = msgspec.json.decode(msgspec.json.encode(event.data))
        recorded.append(
            RecordedEvent("shared", position, position, event.type, data, event.metadata or {}, str(event.id), 0)
        )
    return recorded


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Operation], list[Operation]]:
    """A history, and the same operations delivered shuffled with some of them repeated."""
    operations = draw(histories()).operations
    repeats = draw(st.lists(st.sampled_from(operations), max_size=10)) if operations else []
    return operations, draw(st.permutations(operations + repeats))


@PROPERTY_SETTINGS
@given(deliveries())
def test_every_order_and_duplication_converges(delivery: tuple[list[Operation], list[Operation]]) -> None:
    operations, delivered = delivery
    expected = fold_operations(operations)
    assert fold_operations(delivered) == expected
    assert fold_operations(delivered).to_json() == expected.to_json()
    assert fold_operations(reversed(operations)) == expected


@PROPERTY_SETTINGS
@given(deliveries())
def test_events_fold_like_operations(delivery: tuple[list[Operation], list[Operation]]) -> None:
    operations, delivered = delivery
    expected = fold_operations(operations)
    assert fold_events(as_recorded(delivered)) == expected
    assert fold_events(as_recorded(delivered)).to_json() == expected.to_json()


@PROPERTY_SETTINGS
@given(histories(), st.data())
def test_replicas_seeing_interleaved_subsets_merge_to_the_whole(history: History, data: st.DataObject) -> None:
    operations = history.operations
    replica_count = data.draw(st.integers(1, 4))
    assignment = data.draw(
        st.lists(
            st.sets(st.integers(0, replica_count - 1), min_size=1), min_size=len(operations), max_size=len(operations)
        )
    )
    replicas = [SharedState() for _ in range(replica_count)]
    for operation, targets in zip(operations, assignment, strict=True):
        for target in targets:
            replicas[target].apply(operation)
    merged = SharedState()
    for index in data.draw(st.permutations(range(replica_count))):
        merged.merge(replicas[index])
    assert merged == fold_operations(operations)


@PROPERTY_SETTINGS
@given(histories())
def test_agents_converge_after_exchanging_everything(history: History) -> None:
    expected = fold_operations(history.operations)
    for replica in history.replicas:
        for operation in history.operations:
            replica.apply(operation)
        assert replica == expected


@PROPERTY_SETTINGS
@given(histories())
def test_a_write_is_timestamped_after_everything_its_writer_had_seen(history: History) -> None:
    for operation in history.operations:
        assert all(operation.timestamp > earlier for earlier in history.seen_before[operation.op_id])
    assert len({operation.timestamp for operation in history.operations}) == len(history.operations)


@PROPERTY_SETTINGS
@given(histories())
def test_multi_value_siblings_are_exactly_the_concurrent_writes(history: History) -> None:
    writes = {op.op_id: op for op in history.operations if isinstance(op, MultiValueWrite)}
    siblings = fold_operations(history.operations).multivalue("v").siblings()
    replaced = {replaced for write in writes.values() for replaced in write.replaces}
    assert {sibling.op_id for sibling in siblings} == set(writes) - replaced
    for first in siblings:
        for second in siblings:
            if first is not second:
                assert first.timestamp not in history.seen_before[second.op_id]


def fold_some(operations: list[Operation], data: st.DataObject) -> SharedState:
    """The state of a drawn subset of `operations`."""
    mask = data.draw(st.lists(st.booleans(), min_size=len(operations), max_size=len(operations)))
    return fold_operations(operation for operation, keep in zip(operations, mask, strict=True) if keep)


KIND_READERS = {
    SharedKind.COUNTER: lambda state: state.counter("c"),
    SharedKind.REGISTER: lambda state: state.register("r"),
    SharedKind.MAP: lambda state: state.map("m"),
    SharedKind.SET: lambda state: state.set("s"),
    SharedKind.MULTIVALUE: lambda state: state.multivalue("v"),
}


@pytest.mark.parametrize("kind", list(KIND_READERS), ids=str)
@PROPERTY_SETTINGS
@given(history=histories(), data=st.data())
def test_merge_is_commutative_associative_idempotent(kind: SharedKind, history: History, data: st.DataObject) -> None:
    a, b, c = (KIND_READERS[kind](fold_some(history.operations, data)) for _ in range(3))
    assert a.joined(b) == b.joined(a)
    assert a.joined(b).value == b.joined(a).value
    assert a.joined(b).joined(c) == a.joined(b.joined(c))
    assert a.joined(a) == a
    assert a.joined(b).joined(b) == a.joined(b)
    before = a.copy()
    a.joined(b)
    assert a == before  # joined leaves its operands alone


@PROPERTY_SETTINGS
@given(history=histories(), data=st.data())
def test_shared_state_merge_is_a_join(history: History, data: st.DataObject) -> None:
    a, b, c = (fold_some(history.operations, data) for _ in range(3))
    assert a.joined(b) == b.joined(a)
    assert a.joined(b).joined(c) == a.joined(b.joined(c))
    assert a.joined(a) == a


# -- custom resolvers ------------------------------------------------------------------------------------------------


@st.composite
def sibling_sets(draw: st.DrawFn, min_size: int = 2) -> list[Sibling]:
    count = draw(st.integers(min_size, 7))
    values = draw(st.lists(st.integers(-1000, 1000), min_size=count, max_size=count))
    siblings = []
    for index, value in enumerate(values):
        timestamp = Timestamp(draw(st.integers(0, 10**6)), draw(st.integers(0, 5)), f"agent-{index}")
        siblings.append(Sibling({"score": value, "by": f"agent-{index}"}, timestamp, str(uuid.UUID(int=index + 1))))
    return siblings


def highest_score(siblings: Any) -> Any:
    return max((sibling.value for sibling in siblings), key=lambda value: (value["score"], value["by"]))


def all_scores(siblings: Any) -> Any:
    return sorted(sibling.value["score"] for sibling in siblings)


def first_sibling(siblings: Any) -> Any:
    return siblings[0].value


@PROPERTY_SETTINGS
@given(sibling_sets())
def test_order_independent_resolvers_pass_the_check(siblings: list[Sibling]) -> None:
    assert check_resolver(highest_score, siblings) == highest_score(siblings)
    assert check_resolver(all_scores, siblings) == all_scores(siblings)


@PROPERTY_SETTINGS
@given(sibling_sets())
def test_order_dependent_resolver_fails_the_check(siblings: list[Sibling]) -> None:
    with pytest.raises(NondeterministicResolver, match="order"):
        check_resolver(first_sibling, siblings)


def test_resolver_that_is_not_pure_fails_the_check() -> None:
    siblings = [
        Sibling([1], Timestamp(5, 0, "a"), str(uuid.UUID(int=1))),
        Sibling([2], Timestamp(5, 0, "b"), str(uuid.UUID(int=2))),
    ]
    calls = [0]

    def counting(given: Any) -> Any:
        calls[0] += 1
        return calls[0]

    def mutating(given: Any) -> Any:
        for sibling in given:
            sibling.value.append(0)
        return 1

    with pytest.raises(NondeterministicResolver, match="two different results"):
        check_resolver(counting, siblings)
    with pytest.raises(NondeterministicResolver, match="modified"):
        check_resolver(mutating, siblings)
    with pytest.raises(NondeterministicResolver, match="not a JSON value"):
        check_resolver(lambda given: {1, 2}, siblings)
