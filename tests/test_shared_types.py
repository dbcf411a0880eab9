"""What each replicated type means, the hybrid logical clock, schemas, and refusing malformed operations."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfold.errors import (
    InvalidInput,
    InvalidSharedOperation,
    SharedTypeConflict,
    SharedTypeMismatch,
)
from agentfold.events import RecordedEvent
from agentfold.shared import (
    CounterAdd,
    HybridLogicalClock,
    LWWMap,
    LWWRegister,
    MapDelete,
    MapPut,
    MultiValueWrite,
    MVRegister,
    ORSet,
    PNCounter,
    RegisterAssign,
    Schema,
    SetAdd,
    SetRemove,
    SharedKind,
    SharedState,
    Sibling,
    Timestamp,
    WallClock,
    decode_operation,
    fold_events,
    fold_operations,
)


def oid(number: int) -> str:
    return str(uuid.UUID(int=number))


def ts(wall_ms: int, logical: int = 0, agent: str = "a") -> Timestamp:
    return Timestamp(wall_ms, logical, agent)


# -- hybrid logical clock --------------------------------------------------------------------------------------------


def test_clock_increases_when_the_wall_clock_stands_still_or_runs_backwards() -> None:
    readings = iter([100, 100, 90, 50, 101, 101])
    clock = HybridLogicalClock("a", lambda: next(readings))
    stamps = [clock.now() for _ in range(6)]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 6
    assert stamps[0] == ts(100, 0) and stamps[3] == ts(100, 3) and stamps[4] == ts(101, 0)


def test_observing_a_clock_hours_ahead_orders_the_next_write_after_it() -> None:
    fast = HybridLogicalClock("fast", lambda: 10_000_000 + 3_600_000)
    slow = HybridLogicalClock("slow", lambda: 10_000_000)
    remote = fast.now()
    assert slow.now() < remote  # no causal link yet: the skew shows
    slow.observe(remote)
    reply = slow.now()
    assert reply > remote
    assert reply.wall_ms == remote.wall_ms and reply.logical == remote.logical + 1
    fast.observe(reply)
    assert fast.now() > reply


def test_agent_id_breaks_ties_between_agents() -> None:
    assert ts(5, 1, "b") > ts(5, 1, "a")
    assert ts(5, 2, "a") > ts(5, 1, "b")
    assert ts(6, 0, "a") > ts(5, 9, "z")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-(10**9), 10**9), min_size=2, max_size=5),
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(-1000, 1000)), max_size=60),
)
def test_causally_later_timestamps_are_larger_under_any_skew(offsets: list[int], steps: list[Any]) -> None:
    """Agent `sender` sends a timestamp to `receiver`, whose next timestamp must exceed it; clocks jump around."""
    base = [2 * 10**9]

    def skewed(offset: int) -> WallClock:
        return lambda: max(0, base[0] + offset)

    clocks = [HybridLogicalClock(f"agent-{index}", skewed(offset)) for index, offset in enumerate(offsets)]
    causal_floor = [ts(0, 0, "") for _ in offsets]
    for sender, receiver, jump in steps:
        sender %= len(offsets)
        receiver %= len(offsets)
        base[0] = max(0, base[0] + jump)
        sent = clocks[sender].now()
        assert sent > causal_floor[sender]
        causal_floor[sender] = sent
        clocks[receiver].observe(sent)
        causal_floor[receiver] = max(causal_floor[receiver], sent)
        answer = clocks[receiver].now()
        assert answer > sent
        causal_floor[receiver] = answer


def test_timestamp_json_round_trip_and_refusals() -> None:
    stamp = ts(1_700_000_000_000, 4, "agent-7")
    assert Timestamp.from_json(stamp.to_json()) == stamp
    for bad in ([1, 2], [-1, 0, "a"], [1, 0, ""], [1, True, "a"], "1.0@a", [1.5, 0, "a"], [1, 0, 7]):
        with pytest.raises(InvalidInput):
            Timestamp.from_json(bad)


def test_clock_refuses_bad_agent_ids_and_bad_wall_clocks() -> None:
    for bad in ("", "x" * 201, "tab\there", 7):
        with pytest.raises(InvalidInput, match="agent id"):
            HybridLogicalClock(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="wall_clock"):
        HybridLogicalClock("a", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="wall_clock"):
        HybridLogicalClock("a", lambda: -1).now()
    with pytest.raises(InvalidInput, match="wall_clock"):
        HybridLogicalClock("a", lambda: 1.5).now()  # type: ignore[arg-type, return-value]


# -- the replicated types ----------------------------------------------------------------------------------------------


def test_lww_register_keeps_the_largest_timestamp_in_any_order() -> None:
    writes = [
        LWWRegister.assign(ts(10, 0, "a"), oid(1), "first"),
        LWWRegister.assign(ts(10, 0, "b"), oid(2), "tie won by agent b"),
        LWWRegister.assign(ts(9, 5, "z"), oid(3), "older"),
    ]
    for order in (writes, writes[::-1], [writes[1], writes[0], writes[2], writes[1]]):
        register = LWWRegister()
        for write in order:
            register.merge(write)
        assert register.value == "tie won by agent b"
    assert LWWRegister().value is None and LWWRegister().entry is None


def test_lww_map_fields_are_independent_and_a_later_delete_removes() -> None:
    state = LWWMap()
    for delta in (
        LWWMap.put(ts(1), oid(1), "plan", {"steps": 3}),
        LWWMap.put(ts(2), oid(2), "owner", "b"),
        LWWMap.delete(ts(3), oid(3), "plan"),
        LWWMap.put(ts(2, 5), oid(4), "plan", "older than the delete"),
    ):
        state.merge(delta)
    assert state.value == {"owner": "b"}
    entry = state.entry("plan")
    assert entry is not None and not entry.present
    state.merge(LWWMap.put(ts(4), oid(5), "plan", [1]))
    assert state.value == {"owner": "b", "plan": [1]}


def test_pn_counter_counts_each_operation_once_and_orders_entries_by_timestamp() -> None:
    counter = PNCounter()
    deltas = [PNCounter.add(ts(3, 0, "b"), oid(1), 10), PNCounter.add(ts(1, 0, "a"), oid(2), -4)]
    for delta in deltas + deltas + [deltas[0]]:
        counter.merge(delta)
    assert (counter.value, counter.increments, counter.decrements, len(counter)) == (6, 10, 4, 2)
    assert [entry.op_id for entry in counter.entries()] == [oid(2), oid(1)]


def test_or_set_add_wins_over_a_concurrent_remove() -> None:
    replica_a, replica_b = ORSet(), ORSet()
    first_add = ORSet.add(oid(1), "task-1")
    replica_a.merge(first_add)
    replica_b.merge(first_add)
    # b removes what it has seen while a concurrently adds the same element again.
    removal = ORSet.remove(replica_b.tags("task-1"))
    concurrent_add = ORSet.add(oid(2), "task-1")
    replica_b.merge(removal)
    assert "task-1" not in replica_b
    replica_a.merge(concurrent_add)
    assert replica_a.joined(replica_b).value == ["task-1"] == replica_b.joined(replica_a).value
    # A remove that has seen both adds removes the element for good.
    both = replica_a.joined(replica_b)
    both.merge(ORSet.remove(both.tags("task-1")))
    assert both.value == [] and both.tags("task-1") == frozenset()


def test_or_set_compares_elements_as_json() -> None:
    state = ORSet()
    state.merge(ORSet.add(oid(1), {"a": 1, "b": [2]}))
    state.merge(ORSet.add(oid(2), {"b": [2], "a": 1}))
    assert state.value == [{"a": 1, "b": [2]}]
    assert state.tags({"b": [2], "a": 1}) == {oid(1), oid(2)}
    assert list(state) == state.value


def test_multi_value_register_keeps_concurrent_writes_until_one_replaces_them() -> None:
    register = MVRegister()
    register.merge(MVRegister.write(ts(5, 0, "a"), oid(1), "plan A"))
    register.merge(MVRegister.write(ts(4, 0, "b"), oid(2), "plan B"))
    assert register.value == ["plan B", "plan A"]
    assert [sibling.agent_id for sibling in register.siblings()] == ["b", "a"]
    seen = [sibling.op_id for sibling in register.siblings()]
    register.merge(MVRegister.write(ts(6, 0, "c"), oid(3), "plan C", seen))
    assert register.value == ["plan C"]


# -- shared state: schema, conflicts, resolvers, malformed events -----------------------------------------------------


def test_schema_rejects_operations_of_another_type_deterministically() -> None:
    operations = [
        CounterAdd(oid(1), "spent", ts(1), 5),
        RegisterAssign(oid(2), "spent", ts(2), 99),
        RegisterAssign(oid(3), "limit", ts(3), 100),
    ]
    schema = {"spent": SharedKind.COUNTER, "limit": SharedKind.REGISTER}
    state = fold_operations(operations, schema)
    assert state.to_json() == {
        "values": {"limit": 100, "spent": 5},
        "conflicts": {},
        "rejected": {oid(2): "shared.register.assign on key 'spent', which the schema declares counter"},
    }
    assert fold_operations(operations[::-1], schema) == state
    with pytest.raises(SharedTypeMismatch, match="declared counter"):
        state.register("spent")
    assert state.kind("spent") is SharedKind.COUNTER and state.kind("nothing") is None


def test_a_key_written_as_two_types_without_a_schema_is_a_conflict() -> None:
    state = fold_operations([CounterAdd(oid(1), "k", ts(1), 5), SetAdd(oid(2), "k", ts(2), "x")])
    with pytest.raises(SharedTypeConflict, match="counter, set"):
        state.counter("k")
    with pytest.raises(SharedTypeConflict):
        state.value("k")
    assert state.to_json()["conflicts"] == {"k": {"counter": 5, "set": ["x"]}}
    only_counter = fold_operations([CounterAdd(oid(1), "k", ts(1), 5)])
    with pytest.raises(SharedTypeMismatch, match="holds a counter"):
        only_counter.set("k")


def test_resolver_in_the_schema_turns_siblings_into_one_value() -> None:
    def highest(siblings: Any) -> Any:
        return max(sibling.value for sibling in siblings)

    schema: Schema = {"best": highest, "plain": SharedKind.MULTIVALUE}
    state = fold_operations(
        [
            MultiValueWrite(oid(1), "best", ts(1, 0, "a"), 7, ()),
            MultiValueWrite(oid(2), "best", ts(1, 0, "b"), 9, ()),
            MultiValueWrite(oid(3), "best", ts(1, 0, "c"), 8, ()),
        ],
        schema,
    )
    assert state.resolved("best") == 9 == state.value("best")
    assert state.multivalue("best").value == [7, 9, 8]
    with pytest.raises(SharedTypeMismatch, match="no resolver"):
        state.resolved("plain")
    single = fold_operations([MultiValueWrite(oid(1), "best", ts(1), {"x": 1}, ())], schema)
    assert single.resolved("best") == {"x": 1}
    assert SharedState(schema).resolved("best", default="unset") == "unset"


def test_schema_is_checked() -> None:
    with pytest.raises(InvalidSharedOperation, match="schema entry"):
        SharedState({"k": "counter-ish"})  # type: ignore[dict-item]
    with pytest.raises(InvalidSharedOperation, match="shared key"):
        SharedState({"": SharedKind.COUNTER})
    with pytest.raises(InvalidSharedOperation, match="must map"):
        SharedState([("k", SharedKind.COUNTER)])  # type: ignore[arg-type]


def recorded(event_id: str, event_type: str, data: dict[str, Any], version: int = 1) -> RecordedEvent:
    return RecordedEvent("shared", version, version, event_type, data, {}, event_id, 0)


def test_malformed_shared_events_are_recorded_and_other_events_ignored() -> None:
    good = recorded(oid(1), "shared.counter.add", {"key": "c", "hlc": [1, 0, "a"], "amount": 3})
    events = [
        good,
        recorded(oid(2), "shared.counter.add", {"key": "c", "hlc": [1, 0, "a"], "amount": 1.5}),
        recorded(oid(3), "shared.counter.add", {"key": "c", "hlc": "yesterday", "amount": 1}),
        recorded(oid(4), "shared.counter.add", {"key": "c", "hlc": [1, 0, "a"], "amount": 1, "extra": 1}),
        recorded(oid(5), "shared.nonsense", {"key": "c"}),
        recorded(oid(6), "task.started", {"anything": True}),
    ]
    state = fold_events(events)
    assert state.counter("c").value == 3
    assert sorted(state.rejected) == [oid(2), oid(3), oid(4), oid(5)]
    assert "amount must be an int" in state.rejected[oid(2)]
    assert fold_events(events[::-1] + events) == state


@pytest.mark.parametrize(
    ("event_type", "data", "message"),
    [
        ("shared.map.put", {"key": "m", "hlc": [1, 0, "a"], "field": "", "value": 1}, "map field"),
        ("shared.set.remove", {"key": "s", "hlc": [1, 0, "a"], "element": 1, "observed": "all"}, "observed"),
        ("shared.multivalue.write", {"key": "v", "hlc": [1, 0, "a"], "value": 1, "replaces": ["x"]}, "not a UUID"),
        ("shared.register.assign", {"key": 5, "hlc": [1, 0, "a"], "value": 1}, "shared key"),
        ("shared.counter.add", {"key": "c", "hlc": [1, 0, "a"], "amount": 2**70}, "2\\*\\*62"),
    ],
)
def test_decode_names_what_is_wrong(event_type: str, data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSharedOperation, match=message):
        decode_operation(oid(1), event_type, data)


def test_every_operation_round_trips_through_its_event() -> None:
    operations = [
        CounterAdd(oid(1), "c", ts(1), -3),
        RegisterAssign(oid(2), "r", ts(2), {"a": [1, None]}),
        MapPut(oid(3), "m", ts(3), "f", 2.5),
        MapDelete(oid(4), "m", ts(4), "f"),
        SetAdd(oid(5), "s", ts(5), "x"),
        SetRemove(oid(6), "s", ts(6), "x", (oid(5),)),
        MultiValueWrite(oid(7), "v", ts(7), "y", (oid(8),)),
    ]
    for operation in operations:
        event = operation.to_event()
        assert str(event.id) == operation.op_id
        assert event.metadata == {"agent_id": "a"}
        assert decode_operation(str(event.id), event.type, event.data) == operation


def test_sibling_names_its_agent() -> None:
    assert Sibling(1, ts(1, 0, "x"), oid(1)).agent_id == "x"
