"""agentfold beside eventsourcing (its SQLite and PostgreSQL recorders): appends and the replay of one aggregate.

Both write the same ~200-byte payloads (`event_payload`), one event per write, each writer awaiting its own
acknowledgement: agentfold through `EventStore.append`, eventsourcing through `Application.save` of an aggregate
held in memory (neither reads before it writes). The 16 concurrent writers are 16 asyncio tasks for agentfold
and 16 threads for eventsourcing, whose API is synchronous. The replay rebuilds state from a 10,000-event stream:
agentfold folds it with `project()`, eventsourcing reconstructs the aggregate with `repository.get()`; both count
the events and sum one field, and are timed in turns (one of each per round), so machine drift falls on both alike.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import msgspec
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from agentfold.bench import Progress, event_payload, measure_appends, scratch_store
from agentfold.bench.comparison import Comparison, PeerSizes, count_label, version
from agentfold.events import NewEvent, RecordedEvent
from agentfold.projection import Projection, handles, project

PEER: Final = "eventsourcing"
WRITERS: Final = 16
BATCH: Final = 1000


class OrderTotals(msgspec.Struct):
    updates: int = 0
    amount: float = 0.0


class OrderTotalsProjection(Projection[OrderTotals]):
    """The state the eventsourcing aggregate rebuilds: how many updates, and their summed amount."""

    name = "bench-peer-order-totals"

    def initial(self) -> OrderTotals:
        return OrderTotals()

    @handles("OrderUpdated")
    def updated(self, state: OrderTotals, event: RecordedEvent) -> OrderTotals:
        state.updates += 1
        state.amount += event.data["amount"]
        return state


class Order(Aggregate):
    """The aggregate eventsourcing rebuilds: how many updates, and their summed amount."""

    def __init__(self) -> None:
        self.updates = 0
        self.amount = 0.0

    @event("OrderUpdated")
    def update(self, data: dict[str, Any]) -> None:
        self.updates += 1
        self.amount += data["amount"]


@contextmanager
def _application(backend: str, pg_url: str, workdir: Path) -> Iterator[Application[UUID]]:
    """An eventsourcing `Application` on a fresh SQLite file or PostgreSQL schema of its own, removed afterwards."""
    tag = uuid.uuid4().hex[:10]
    if backend == "sqlite":
        path = workdir / f"eventsourcing-{tag}.db"
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path), "SQLITE_LOCK_TIMEOUT": "60"}
        application = Application[UUID](env=env)
        try:
            yield application
        finally:
            application.close()
            for leftover in workdir.glob(f"eventsourcing-{tag}.db*"):
                leftover.unlink()
        return
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    schema = f"bench_es_{tag}"
    params = conninfo_to_dict(pg_url)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname", "postgres")),
        "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(params.get("port", "5432")),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(params.get("password", "")),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": str(WRITERS),
    }
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        application = Application[UUID](env=env)
        try:
            yield application
        finally:
            application.close()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _peer_appends(application: Application[UUID], writers: int, seconds: float) -> float:
    """One-event saves from `writers` threads for about `seconds`, each thread its own aggregate; events per second."""
    counts = [0] * writers
    failures: list[BaseException] = []
    start = threading.Barrier(writers + 1)
    deadline = 0.0

    def writer(slot: int) -> None:
        order = Order()
        application.save(order)
        start.wait()
        index = 0
        try:
            while time.perf_counter() < deadline:
                order.update(event_payload(index))
                application.save(order)
                index += 1
        except BaseException as error:  # reported below, after every thread stopped
            failures.append(error)
        counts[slot] = index

    threads = [threading.Thread(target=writer, args=(slot,)) for slot in range(writers)]
    for thread in threads:
        thread.start()
    deadline = time.perf_counter() + seconds + 0.05
    started = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    return sum(counts) / elapsed


async def _replay(
    application: Application[UUID], events: int, rounds: int, backend: str, pg_url: str
) -> tuple[float, float]:
    """The best time (ms) of agentfold's fold and of eventsourcing's aggregate reconstruction of `events` events."""
    order = Order()
    for start in range(0, events, BATCH):
        for index in range(start, min(events, start + BATCH)):
            order.update(event_payload(index))
        application.save(order)
    ours: list[float] = []
    theirs: list[float] = []
    async with scratch_store(backend, pg_url) as (_, store):
        stream_id = f"replay-{uuid.uuid4().hex[:8]}"
        for start in range(0, events, BATCH):
            batch = [
                NewEvent("OrderUpdated", event_payload(index)) for index in range(start, min(events, start + BATCH))
            ]
            await store.append(stream_id, batch)
        for _ in range(rounds):
            started = time.perf_counter()
            state = await project(store, stream_id, OrderTotalsProjection)
            ours.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            rebuilt: Order = application.repository.get(order.id)
            theirs.append((time.perf_counter() - started) * 1000)
            if state.updates != events or rebuilt.updates != events:
                raise RuntimeError(f"replayed {state.updates} and {rebuilt.updates} events, wrote {events}")
    return min(ours), min(theirs)


async def measure_eventsourcing(
    backends: list[str], pg_url: str, workdir: Path, sizes: PeerSizes, progress: Progress
) -> list[Comparison]:
    """Appends from 1 and 16 writers and a replay, agentfold and eventsourcing in turns, on each backend."""
    peer_version = version(PEER)
    comparisons: list[Comparison] = []
    for backend in backends:
        for writers in (1, WRITERS):
            progress(f"{backend}: appends from {writers} writer(s), agentfold then eventsourcing")
            async with scratch_store(backend, pg_url) as (_, store):
                ours = await measure_appends(store, writers, sizes.seconds)
            with _application(backend, pg_url, workdir) as application:
                theirs = await asyncio.to_thread(_peer_appends, application, writers, sizes.seconds)
            comparisons.append(
                Comparison(
                    PEER,
                    peer_version,
                    backend,
                    f"append_{writers}_writer{'s' if writers > 1 else ''}_events_per_s",
                    "events/s",
                    ours,
                    theirs,
                    higher_is_better=True,
                    note="asyncio tasks vs threads" if writers > 1 else "",
                )
            )
        progress(f"{backend}: replay of a {sizes.replay_events:,}-event stream, in turns")
        with _application(backend, pg_url, workdir) as application:
            ours, theirs = await _replay(application, sizes.replay_events, sizes.replay_rounds, backend, pg_url)
        comparisons.append(
            Comparison(
                PEER,
                peer_version,
                backend,
                f"replay_{count_label(sizes.replay_events)}_events_ms",
                "ms",
                ours,
                theirs,
                higher_is_better=False,
                note="project() vs repository.get()",
            )
        )
    return comparisons
