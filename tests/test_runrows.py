"""What an append does to the runs index, computed from its events alone (`agentfold.runrows`): applying one
append's update gives the row that applying its events one by one gives, whatever the row was, however a run's
events are split into appends; the row's status is the runtime's lifecycle fold of the run."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfold import runrows
from agentfold.errors import IllegalTransition
from agentfold.events import AGENT_ID, RecordedEvent
from agentfold.runtime import history as h
from agentfold.runtime.leases import WORKER_HEARTBEAT, WORKER_STOPPED, worker_stream
from agentfold.runtime.statemachine import DEFAULT_LIFECYCLE

RUN_IDS = ("a", "b", "c")
encode = msgspec.json.encode
TYPES = (
    h.WORKFLOW_STARTED,
    h.STEP_STARTED,
    h.STEP_COMPLETED,
    h.STEP_FAILED,
    h.WAIT_STARTED,
    h.SIGNAL_RECEIVED,
    h.WORKFLOW_SUSPENDED,
    h.WORKFLOW_CLAIMED,
    h.WORKFLOW_RELEASED,
    h.WORKFLOW_CANCEL_REQUESTED,
    h.WORKFLOW_COMPLETED,
    h.WORKFLOW_FAILED,
    h.WORKFLOW_CANCELLED,
    h.WORKFLOW_TERMINATED,
    h.WORKFLOW_RESTARTED,
)

event_parts = st.tuples(
    st.sampled_from(TYPES),
    st.sampled_from([None, "w1", "w2"]),  # the worker named in the metadata, or by a claim
    st.sampled_from([*RUN_IDS, "x" * 191, 7, None]),  # a step's result: another run, too long, not text
    st.booleans(),  # a failed step is final
)


def data_of(event_type: str, worker: str | None, result: Any, final: bool) -> dict[str, Any]:
    if event_type == h.WORKFLOW_STARTED:
        return {"workflow": "intake", "input": {"args": []}}
    if event_type == h.STEP_COMPLETED:
        return {"seq": 1, "result": result}
    if event_type == h.STEP_FAILED:
        return {"seq": 1, "final": final}
    if event_type == h.WORKFLOW_CLAIMED:
        return {"worker": worker}
    if event_type == h.WORKFLOW_RESTARTED:
        return {"from_seq": 1}
    return {}


def recorded(run_id: str, version: int, parts: tuple[str, str | None, Any, bool], at_us: int) -> RecordedEvent:
    event_type, worker, _, _ = parts
    metadata: dict[str, Any] = {} if worker is None else {h.OWNER_KEY: worker}
    if event_type == h.WORKFLOW_STARTED:
        metadata[AGENT_ID] = "agent-1"
    return RecordedEvent(
        h.workflow_stream(run_id),
        version,
        version,
        event_type,
        data_of(*parts),
        metadata,
        f"00000000-0000-4000-8000-{version:012d}",
        at_us,
    )


runs = st.lists(
    st.tuples(st.sampled_from(RUN_IDS), st.lists(event_parts, min_size=1, max_size=5)), min_size=1, max_size=25
)


@settings(max_examples=300, deadline=None)
@given(runs)
def test_an_appends_update_is_its_events_applied_one_by_one(appends: list[tuple[str, list[Any]]]) -> None:
    one_by_one = runrows.Rows()
    together = runrows.Rows()
    versions = dict.fromkeys(RUN_IDS, 0)
    for at, (run_id, parts) in enumerate(appends, 1):
        events = []
        for part in parts:
            versions[run_id] += 1
            events.append(recorded(run_id, versions[run_id], part, at * 1000))
        one_by_one.apply(runrows.recorded(events))
        stream_id = h.workflow_stream(run_id)
        update = runrows.written(stream_id, map(runrows.encoded, events), versions[run_id], at * 1000)
        as_json = [(event.type, encode(event.data), encode(event.metadata)) for event in events]
        assert runrows.written(stream_id, as_json, versions[run_id], at * 1000) == update  # as a backend reads it
        together.apply([] if update is None else [update])
    assert together.runs == one_by_one.runs
    assert together.changes() == one_by_one.changes()


@settings(max_examples=200, deadline=None)
@given(st.lists(event_parts, min_size=1, max_size=30))
def test_a_rows_status_is_the_lifecycles_fold_of_the_run(parts: list[tuple[str, str | None, Any, bool]]) -> None:
    """Without suspensions (a state of the index, not of the lifecycle) and up to the first event the lifecycle
    refuses."""
    parts = [part for part in parts if part[0] != h.WORKFLOW_SUSPENDED]
    events = [recorded("a", version, (h.WORKFLOW_STARTED, None, None, False), 1) for version in (1,)]
    events += [recorded("a", version, part, version) for version, part in enumerate(parts, 2)]
    rows = runrows.Rows()
    rows.apply(runrows.recorded(events))
    try:
        state = DEFAULT_LIFECYCLE.fold(events, "a")
    except IllegalTransition:  # the runtime refuses a history it did not write
        return
    assert rows.runs["a"].status == state


def test_counts_follow_each_status_change_and_new_rows() -> None:
    rows = runrows.Rows()
    start = recorded("a", 1, (h.WORKFLOW_STARTED, "w1", None, False), 10)
    rows.apply(runrows.recorded([start]))
    assert rows.changes()[1] == {"Processing": 1}
    done = recorded("a", 2, (h.WORKFLOW_COMPLETED, None, None, False), 20)
    rows.apply(runrows.recorded([done]))
    changed, counts, _ = rows.changes()
    assert counts == {"Processing": -1, "Completed": 1}
    assert (changed[0].finished_at_us, changed[0].version, changed[0].owner, changed[0].agent) == (
        20,
        2,
        "w1",
        "agent-1",
    )


def test_workers_leases_run_out_at_their_latest_heartbeat_and_at_once_when_they_stop() -> None:
    def liveness(event_type: str, data: dict[str, Any], at_us: int) -> RecordedEvent:
        return RecordedEvent(
            worker_stream("w1"), 1, 1, event_type, data, {}, "00000000-0000-4000-8000-000000000001", at_us
        )

    rows = runrows.Rows()
    rows.apply(runrows.recorded([liveness(WORKER_HEARTBEAT, {"worker": "w1", "ttl_us": 3.0e6}, 100)]))
    assert rows.workers == {"w1": 3_000_100}
    rows.apply(runrows.recorded([liveness(WORKER_HEARTBEAT, {"worker": "w1", "ttl_us": 10}, 200)]))
    assert rows.workers == {"w1": 3_000_100}
    rows.apply(runrows.recorded([liveness(WORKER_STOPPED, {"worker": "w1"}, 300)]))
    assert rows.workers == {"w1": 0}
    rows.apply(runrows.recorded([liveness(WORKER_HEARTBEAT, {"worker": 5, "ttl_us": 10}, 400)]))
    assert rows.workers == {"w1": 0}
