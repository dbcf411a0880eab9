"""The open runs a backend keeps with each append (`agentfold.openruns`), on every backend that keeps them.

What is checked: after any appends, the rows equal the fold of the log read back (including concurrent appends
that the backends commit in groups, and random histories); an append that is refused, fails in its transaction or
is retried changes nothing; a store that had events before it kept the open runs gets them folded once when
opened; a worker on a store without a registry snapshot starts from them. On Redis also: events appended without
keeping the open runs (as an older agentfold appends) leave them behind, and a reader folds the rest from the log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentfold
from agentfold import openruns
from agentfold.errors import AgentfoldError, StoreCorrupted, WrongExpectedVersion
from agentfold.events import ANY, NO_STREAM, NewEvent
from agentfold.openruns import OpenRun
from agentfold.runtime import NO_RETRY, Runtime, WorkflowContext
from agentfold.runtime import history as h
from agentfold.store import EventStore
from tests.backends import (
    AVAILABLE,
    PG_PARTITIONED,
    REDIS_URL,
    SQLITE_EVENTS_BEFORE_SCHEMA_6,
    Backend,
    execute_sql,
    require_service,
)
from tests.waiting_app import until as wait_until
from tests.waiting_app import waiting_app

KEEPING = [backend for backend in (*AVAILABLE, PG_PARTITIONED) if backend.available()]


@pytest.fixture(params=KEEPING, ids=lambda backend: backend.name)
def keeping_backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    require_service(chosen)
    return chosen


@pytest.fixture
def keeping_url(keeping_backend: Backend, tmp_path: Path) -> Iterator[str]:
    url = keeping_backend.make_url(tmp_path)
    yield url
    keeping_backend.cleanup(url)


@pytest.fixture
async def store(keeping_url: str) -> AsyncIterator[EventStore]:
    async with agentfold.connect(keeping_url) as opened:
        yield opened


def started(workflow: str = "w") -> NewEvent:
    return NewEvent(h.WORKFLOW_STARTED, {"workflow": workflow, "input": {}})


def claimed(worker: str) -> NewEvent:
    return NewEvent(h.WORKFLOW_CLAIMED, {"worker": worker, "incarnation": 1})


def event(kind: str, **data: Any) -> NewEvent:
    return NewEvent(kind, data)


async def kept(store: EventStore) -> tuple[int, dict[str, OpenRun]]:
    found = await store.open_runs()
    assert found is not None
    position, runs = found
    assert len({run.workflow_id for run in runs}) == len(runs)
    return position, {run.workflow_id: run for run in runs}


async def folded(store: EventStore) -> dict[str, OpenRun]:
    """The open runs folded from the log as it reads back: what the kept rows must equal."""
    return openruns.fold([(e.stream_id, e.type, e.data) async for e in store.read_all()])


async def test_the_open_runs_follow_each_runs_starts_claims_releases_and_ends(store: EventStore) -> None:
    await store.append("workflow-a", [started("alpha")], NO_STREAM)
    await store.append("workflow-b", [started("beta"), claimed("w1")], NO_STREAM)
    await store.append("other-c", [started("gamma")], NO_STREAM)  # not a run's stream: not a run
    await store.append("workflow-a", [claimed("w2")], 1)
    position, runs = await kept(store)
    assert position == await store.head_position()
    assert runs == {"a": OpenRun("a", "alpha", "w2"), "b": OpenRun("b", "beta", "w1")}

    await store.append("workflow-a", [event(h.WORKFLOW_RELEASED, worker="w2")], 2)
    await store.append("workflow-b", [event(h.WORKFLOW_COMPLETED, result=1)], 2)
    assert (await kept(store))[1] == {"a": OpenRun("a", "alpha")}

    await store.append("workflow-b", [event(h.WORKFLOW_RESTARTED, workflow="beta", from_step=0)], 3)
    await store.append("workflow-a", [event(h.WORKFLOW_TERMINATED, reason="x")], 3)
    await store.append("workflow-b", [claimed("w3"), event(h.WORKFLOW_FAILED, error={})], 4)
    await store.append("workflow-b", [claimed("w4")], 6)  # a claim of a finished run holds nothing
    assert (await kept(store))[1] == {} == await folded(store)


async def test_an_append_that_is_refused_or_retried_changes_no_open_run(store: EventStore) -> None:
    start = started()
    await store.append("workflow-a", [start], NO_STREAM)
    before = await kept(store)
    with pytest.raises(WrongExpectedVersion):
        await store.append("workflow-a", [event(h.WORKFLOW_COMPLETED, result=1)], 5)
    assert await kept(store) == before

    done = event(h.WORKFLOW_COMPLETED, result=1)
    await store.append("workflow-a", [done], 1)
    restart = event(h.WORKFLOW_RESTARTED, workflow="w", from_step=0)
    await store.append("workflow-a", [restart], 2)
    await store.append("workflow-a", [event(h.WORKFLOW_CANCELLED)], 3)
    # Retries of appends already written (same ids, same content) write nothing, so they open or close nothing
    # again: the run stays as its last event left it.
    await store.append("workflow-a", [restart], 2)
    await store.append("workflow-a", [start], NO_STREAM)
    assert (await kept(store))[1] == {} == await folded(store)


async def test_concurrent_appends_committed_together_keep_the_open_runs_exact(store: EventStore) -> None:
    async def one_run(index: int) -> None:
        stream = f"workflow-r{index}"
        await store.append(stream, [started(f"w{index % 3}")], NO_STREAM)
        await store.append(stream, [claimed(f"worker-{index % 4}")], 1)
        if index % 3:
            await store.append(stream, [event(h.WORKFLOW_COMPLETED, result=index)], 2)
        try:  # racing appends at one expected version: one wins, the others are refused and change nothing
            await store.append(stream, [claimed("racer")], 2 if index % 3 == 0 else 3)
        except WrongExpectedVersion:
            pass

    async def noise(index: int) -> None:
        await store.append(f"order-{index}", [NewEvent("Placed", {"n": index})], ANY)

    await asyncio.gather(*(one_run(index) for index in range(60)), *(noise(index) for index in range(60)))
    position, runs = await kept(store)
    assert position == await store.head_position()
    assert runs == await folded(store)
    assert {run.workflow_id for run in runs.values()} == {f"r{index}" for index in range(0, 60, 3)}


RUN_EVENTS = st.sampled_from(
    [
        ("start", None),
        ("restart", None),
        ("claim", "w1"),
        ("claim", "w2"),
        ("release", None),
        ("complete", None),
        ("fail", None),
        ("step", None),
    ]
)


def _event_of(kind: str, worker: str | None) -> NewEvent:
    if kind == "start":
        return started("w")
    if kind == "restart":
        return event(h.WORKFLOW_RESTARTED, workflow="w2", from_step=0)
    if kind == "claim":
        return claimed(str(worker))
    if kind == "release":
        return event(h.WORKFLOW_RELEASED, worker="w1")
    if kind == "complete":
        return event(h.WORKFLOW_COMPLETED, result=None)
    if kind == "fail":
        return event(h.WORKFLOW_FAILED, error={})
    return event(h.STEP_COMPLETED, seq=1, result=None)


APPENDS = st.lists(
    st.tuples(
        st.integers(0, 3),  # which run
        st.lists(RUN_EVENTS, min_size=1, max_size=3),
        st.sampled_from(["any", "exact", "wrong"]),
        st.booleans(),  # also in flight with the next one
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(appends=APPENDS)
async def test_the_open_runs_equal_a_fold_of_the_log_after_any_appends(store: EventStore, appends: list[Any]) -> None:
    """Every example appends to runs of its own in the one store; the whole store is compared after each."""
    tag = uuid.uuid4().hex[:8]
    pending: list[Any] = []

    async def append(run: int, batch: list[NewEvent], expected: str) -> None:
        stream = f"workflow-{tag}-{run}"
        version = await store.stream_version(stream)
        chosen = ANY if expected == "any" else version if expected == "exact" else version + 7
        try:
            await store.append(stream, batch, chosen)
        except AgentfoldError:
            pass

    for run, batch, expected, together in appends:
        pending.append(append(run, [_event_of(kind, worker) for kind, worker in batch], expected))
        if not together:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    assert (await kept(store))[1] == await folded(store)


# -- an append that fails in its transaction --------------------------------------------------------------------


def _refuse_run_in_sqlite(url: str, workflow_id: str) -> None:
    execute_sql(
        url,
        f"CREATE TRIGGER refuse_run BEFORE INSERT ON open_runs WHEN NEW.workflow_id = '{workflow_id}' "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )


def _refuse_run_in_postgres(url: str, workflow_id: str) -> None:
    execute_sql(
        url,
        """CREATE FUNCTION {s}refuse_run() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN RAISE EXCEPTION 'refused by the test'; END $body$""",
        "CREATE TRIGGER refuse_run BEFORE INSERT ON {s}open_runs FOR EACH ROW "
        f"WHEN (NEW.workflow_id = '{workflow_id}') EXECUTE FUNCTION {{s}}refuse_run()",
    )


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL.split("?")[0])


def redis_prefix(url: str) -> str:
    return url.rsplit("prefix=", 1)[1].split("&")[0]


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    chosen = next(backend for backend in KEEPING if backend.name == request.param)
    require_service(chosen)
    url = chosen.make_url(tmp_path)
    yield request.param, url
    chosen.cleanup(url)


async def test_an_append_whose_open_run_write_fails_writes_nothing(sql_store_url: tuple[str, str]) -> None:
    """A run's start whose open-run row the database refuses (a trigger standing for any failure inside the
    append's transaction) fails with a typed error and leaves no event; appends committed in the same group are
    written with their open runs."""
    name, url = sql_store_url
    async with agentfold.connect(url) as store:
        await store.append("workflow-ok", [started()], NO_STREAM)
        (_refuse_run_in_sqlite if name == "sqlite" else _refuse_run_in_postgres)(url, "boom")
        outcomes = await asyncio.gather(
            store.append("workflow-boom", [started()], NO_STREAM),
            store.append("workflow-fine", [started("other")], NO_STREAM),
            store.append("workflow-ok", [event(h.WORKFLOW_COMPLETED, result=1)], 1),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], AgentfoldError)
        assert not isinstance(outcomes[1], BaseException) and not isinstance(outcomes[2], BaseException)
        assert await store.stream_version("workflow-boom") == 0
        position, runs = await kept(store)
        assert runs == {"fine": OpenRun("fine", "other")} == await folded(store)
        assert position == await store.head_position()


# -- a store that had events before it kept the open runs -------------------------------------------------------


def _forget_open_runs(name: str, url: str) -> None:
    """Put the store back as the release before the open runs left it: no table, the schema one step back."""
    if name == "sqlite":
        execute_sql(url, "DROP TABLE open_runs", *SQLITE_EVENTS_BEFORE_SCHEMA_6, "PRAGMA user_version = 3")
    else:
        execute_sql(
            url,
            "DROP TABLE {s}open_runs",
            "DROP FUNCTION {s}apply_open_runs",
            "DROP FUNCTION {s}apply_runs_index",
            "DROP INDEX {s}events_type_hash_position",
            "DROP INDEX {s}events_category_hash_position",
            "CREATE INDEX events_type_position ON {s}events (type, position)",
            "CREATE INDEX events_category_position ON {s}events ((substr(stream_id, 1, strpos(stream_id, '-'))), "
            "position)",
            "DELETE FROM {s}schema_migrations WHERE version >= 7",
        )


async def thirty_runs(store: EventStore) -> dict[str, OpenRun]:
    """Thirty runs of two workflows claimed by three workers, every other one completed, beside other streams; the
    open runs a fold of the log gives then."""
    for index in range(30):
        stream = f"workflow-u{index}"
        await store.append(stream, [started(f"w{index % 2}"), claimed(f"k{index % 3}")], NO_STREAM)
        if index % 2:
            await store.append(stream, [event(h.WORKFLOW_COMPLETED, result=index)], 2)
        await store.append(f"order-{index}", [NewEvent("Placed", {"n": index})])
    return await folded(store)


async def test_a_store_upgraded_to_keep_the_open_runs_folds_them_from_its_log(
    sql_store_url: tuple[str, str],
) -> None:
    name, url = sql_store_url
    async with agentfold.connect(url) as store:
        expected = await thirty_runs(store)
    _forget_open_runs(name, url)
    async with agentfold.connect(url) as store:
        position, runs = await kept(store)
        assert runs == expected == await folded(store)
        assert len(runs) == 15 and runs["u0"] == OpenRun("u0", "w0", "k0")
        assert position == await store.head_position()
        await store.append("workflow-u0", [event(h.WORKFLOW_COMPLETED, result=0)], 2)
        assert "u0" not in (await kept(store))[1]


# -- a worker's first start -------------------------------------------------------------------------------------

runtime = Runtime(default_retry=NO_RETRY)


@runtime.workflow(name="open_runs_echo")
async def echo(ctx: WorkflowContext, value: int) -> int:
    return await ctx.step("double", lambda: value * 2)


async def test_the_first_worker_on_a_store_resumes_the_runs_started_before_it(store: EventStore) -> None:
    client = runtime.client(store)
    handles = [await client.start(echo, index, workflow_id=f"before-{index}") for index in range(5)]
    assert await store.load_log_snapshot("workers-registry") is None
    assert set((await kept(store))[1]) == {f"before-{index}" for index in range(5)}
    async with runtime.worker(store, unserved_grace=None):
        results = await asyncio.wait_for(asyncio.gather(*(handle.result() for handle in handles)), 60)
    assert results == [index * 2 for index in range(5)]
    assert (await kept(store))[1] == {}


async def test_the_first_worker_leaves_a_run_a_live_worker_holds_to_it(store: EventStore) -> None:
    """A worker starting without a registry snapshot, beside a live worker holding a run: it takes nothing over,
    and the holder finishes the run. (A run's first holder is named in its appends' metadata, not by a
    `WorkflowClaimed`, so the open runs, like the workers' follower, hold it as held by nobody; the newcomer finds
    the holder alive in the run's history before doing anything.)"""
    calls: Counter[str] = Counter()
    app = waiting_app(calls)
    client = app.client(store)
    async with app.worker(store, lease_ttl=3.0, heartbeat=0.25, worker_id="holder") as holder:
        await client.start("waiting", 1, workflow_id="held")
        await wait_until(store, lambda: client_waiting(client, "held"), 30)
        assert await store.load_log_snapshot("workers-registry") is None
        async with app.worker(store, lease_ttl=3.0, heartbeat=0.25, worker_id="newcomer") as newcomer:
            assert (await kept(store))[1]["held"] == OpenRun("held", "waiting")
            await asyncio.sleep(0.6)  # a few of the newcomer's rounds
            assert newcomer.taken_over == 0 and newcomer.running == []
            await client.signal("held", "go", {"by": "ops"})
            assert await client.result("held", timeout=30) == {"first": "first-1", "second": "second-1", "by": "ops"}
        assert holder.lost == 0
    assert (await client.history("held")).owner == "holder"
    assert set(calls.values()) == {1}


async def client_waiting(client: Any, workflow_id: str) -> bool:
    return bool(await client.state(workflow_id) == "AwaitingInput")


# -- a rebuild from the log ---------------------------------------------------------------------------------------


def _damage(url: str) -> None:
    """Rows no append would leave: a run that never started, and a started run's row gone."""
    if url.startswith(("sqlite", "postgres")):
        execute_sql(
            url,
            "INSERT INTO {s}open_runs VALUES ('ghost', 'w', NULL)",
            "DELETE FROM {s}open_runs WHERE workflow_id = 'r0'",
        )
    elif url.startswith("redis"):
        prefix = redis_prefix(url)
        with redis_client() as client:
            client.hset(f"{prefix}:runs", "ghost", "w")
            client.hdel(f"{prefix}:runs", "r0")
            client.hdel(f"{prefix}:holders", "r0")


async def test_a_rebuild_folds_the_open_runs_from_the_log_again_while_runs_are_appended(
    store: EventStore, keeping_url: str
) -> None:
    for index in range(20):
        await store.append(f"workflow-r{index}", [started(), claimed(f"k{index % 2}")], NO_STREAM)
    _damage(keeping_url)

    async def more(index: int) -> None:
        stream = f"workflow-r{index}"
        await store.append(stream, [event(h.WORKFLOW_COMPLETED, result=index)], 2)
        await store.append(f"workflow-n{index}", [started("later")], NO_STREAM)

    outcomes = await asyncio.gather(store.rebuild_open_runs(), *(more(index) for index in range(1, 20, 2)))
    assert isinstance(outcomes[0], int)
    runs = (await kept(store))[1]
    assert runs == await folded(store)
    assert "ghost" not in runs and runs["r0"] == OpenRun("r0", "w", "k0") and len(runs) == 20
    assert await store.rebuild_open_runs() == 20


# -- Redis: rows behind the head --------------------------------------------------------------------------------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    chosen = next(backend for backend in KEEPING if backend.name == "redis")
    require_service(chosen)
    url = chosen.make_url(tmp_path)
    yield url
    chosen.cleanup(url)


def _redis_rows(prefix: str) -> tuple[dict[bytes, bytes], dict[bytes, bytes], bytes | None]:
    with redis_client() as client:
        return (
            client.hgetall(f"{prefix}:runs"),
            client.hgetall(f"{prefix}:holders"),
            client.get(f"{prefix}:runsat"),
        )


def _put_redis_rows(prefix: str, rows: tuple[dict[bytes, bytes], dict[bytes, bytes], bytes | None]) -> None:
    runs, holders, at = rows
    with redis_client() as client:
        client.delete(f"{prefix}:runs", f"{prefix}:holders", f"{prefix}:runsat")
        if runs:
            client.hset(f"{prefix}:runs", mapping=runs)  # type: ignore[arg-type]
        if holders:
            client.hset(f"{prefix}:holders", mapping=holders)  # type: ignore[arg-type]
        if at is not None:
            client.set(f"{prefix}:runsat", at)


async def test_redis_rows_left_behind_by_appends_that_kept_nothing_are_folded_on_by_readers(redis_url: str) -> None:
    """Appends that wrote events but no open runs (as an older agentfold's do: the rows and ``runsat`` put back as
    they were before them) leave the rows behind the head: appends after them keep nothing either, a reader folds
    the events after ``runsat`` on top of the rows and writes them back, and appends keep them again."""
    prefix = redis_prefix(redis_url)
    async with agentfold.connect(redis_url) as store:
        await store.append("workflow-a", [started("alpha"), claimed("k1")], NO_STREAM)
        await store.append("workflow-b", [started("beta")], NO_STREAM)
        before = _redis_rows(prefix)
        assert before[2] == b"3"
        await store.append("workflow-a", [event(h.WORKFLOW_COMPLETED, result=1)], 2)
        await store.append("workflow-c", [started("gamma"), claimed("k2")], NO_STREAM)
        _put_redis_rows(prefix, before)  # as if an older agentfold had appended those two

        await store.append("workflow-b", [claimed("k3")], 1)  # behind the head: keeps nothing
        await store.append("order-1", [NewEvent("Placed", {})])
        assert _redis_rows(prefix)[2] == b"3"
        position, runs = await kept(store)
        assert position == await store.head_position() == 8
        assert runs == await folded(store) == {"b": OpenRun("b", "beta", "k3"), "c": OpenRun("c", "gamma", "k2")}
        assert _redis_rows(prefix)[2] == b"8"  # written back

        await store.append("workflow-c", [event(h.WORKFLOW_COMPLETED, result=2)], 2)
        assert _redis_rows(prefix)[2] == b"9"  # kept by the append again
        assert (await kept(store))[1] == {"b": OpenRun("b", "beta", "k3")} == await folded(store)


async def test_a_redis_store_written_before_the_open_runs_gets_them_folded_when_opened(redis_url: str) -> None:
    prefix = redis_prefix(redis_url)
    async with agentfold.connect(redis_url) as store:
        expected = await thirty_runs(store)
        head = await store.head_position()
    _put_redis_rows(prefix, ({}, {}, None))  # the keys as agentfold left them before it kept the open runs
    async with agentfold.connect(redis_url) as store:
        assert _redis_rows(prefix)[2] == str(head).encode()  # folded when opened
        position, runs = await kept(store)
        assert runs == expected and len(runs) == 15 and runs["u0"] == OpenRun("u0", "w0", "k0")
        assert position == head
        await store.append("workflow-u0", [event(h.WORKFLOW_COMPLETED, result=0)], 2)
        assert "u0" not in (await kept(store))[1]
        assert _redis_rows(prefix)[2] == str(head + 1).encode()


async def test_a_layout_1_redis_store_gets_its_open_runs_folded_and_kept(redis_url: str) -> None:
    """A store created before layout 2 (each stream a Redis stream, ids as text in the ``ids`` hash) keeps its
    layout and gets the open runs like any other."""
    prefix = redis_prefix(redis_url)
    history = [
        ("workflow-a", h.WORKFLOW_STARTED, '{"workflow":"alpha"}'),
        ("workflow-a", h.WORKFLOW_CLAIMED, '{"worker":"k"}'),
    ]
    with redis_client() as client:
        for position, (stream, kind, data) in enumerate(history, 1):
            entry = f'[{position},{position},1796400000000000,"{stream}","{kind}","{uuid.uuid4()}",{data},{{}}]'
            client.xadd(f"{prefix}:s:{stream}", {"e": entry}, id=f"0-{position}")
            client.xadd(f"{prefix}:all", {"e": entry}, id=f"0-{position}")
            client.hset(f"{prefix}:ids", str(uuid.uuid4()), f"{position} 1 2 {position} {stream}")
        client.hset(f"{prefix}:versions", "workflow-a", 2)
        client.set(f"{prefix}:head", 2)
    async with agentfold.connect(redis_url) as store:
        assert (await kept(store)) == (2, {"a": OpenRun("a", "alpha", "k")})
        await store.append("workflow-b", [started("beta")], NO_STREAM)
        await store.append("workflow-a", [event(h.WORKFLOW_COMPLETED, result=1)], 2)
        assert (await kept(store))[1] == {"b": OpenRun("b", "beta")} == await folded(store)
        assert _redis_rows(prefix)[2] == b"4"
        with redis_client() as client:
            assert client.type(f"{prefix}:s:workflow-b") == b"stream"


async def test_a_redis_append_whose_open_runs_key_is_damaged_writes_nothing(redis_url: str) -> None:
    """The script checks the open runs' keys before it writes: a run's start meets a key of another type with a
    typed error and leaves no event; an append that changes no open run is written."""
    prefix = redis_prefix(redis_url)
    async with agentfold.connect(redis_url) as store:
        await store.append("workflow-ok", [started()], NO_STREAM)
        with redis_client() as client:
            client.delete(f"{prefix}:holders")
            client.set(f"{prefix}:holders", "not a hash")
        with pytest.raises(StoreCorrupted):
            await store.append("workflow-boom", [started()], NO_STREAM)
        assert await store.stream_version("workflow-boom") == 0
        assert (await store.append("order-1", [NewEvent("Placed", {})])).position == 2
        with redis_client() as client:
            client.delete(f"{prefix}:holders")
        await store.append("workflow-boom", [started()], NO_STREAM)
        position, runs = await kept(store)
        assert runs == {"ok": OpenRun("ok", "w"), "boom": OpenRun("boom", "w")} == await folded(store)
        assert position == 3
