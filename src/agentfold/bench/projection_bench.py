"""How fast state is rebuilt from events: a 10k-event fold through `project()`, and a 1M-event stream's state
loaded from its snapshot.

The fold figure is set beside `raw_read_decode_fold_10k_ms`, the bare driver fetching, decoding and counting 10k
~200-byte events of the same shape by type; the projection here does the same counting, so the difference is
agentfold's overhead. The two are timed in turns (ours, then the bare one, `ROUNDS` times), because this machine's speed
drifts within minutes: timed apart, the ratio between them varied from 1.0 to 2.3 between runs.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Final, Protocol

import msgspec

import agentfold
from agentfold.bench import event_payload
from agentfold.events import NewEvent, RecordedEvent
from agentfold.projection import Projection, fold, handles, project, save_snapshot

FOLD_EVENTS: Final = 10_000
BIG_EVENTS: Final = 1_000_000
ROUNDS: Final = 11
"""Rounds of the fold and its bare baseline, timed in turns; each figure is the best and the median of its own.
With 5, the best of each moved by up to 15% between runs minutes apart (a reader thread or the server scheduled a
little late once is enough)."""
APPEND_BATCH: Final = 1000
EVENT_TYPES: Final = tuple(f"Type{index}" for index in range(5))
SNAPSHOT_SCHEMES: Final = ("sqlite",)


class TypeCounts(msgspec.Struct):
    """Events seen per type, the amount they carried, and the last few order ids."""

    counts: dict[str, int] = {}
    amount: float = 0.0
    recent_orders: list[int] = []


class CountByType(Projection[TypeCounts]):
    """The fold the bare-driver baseline does: count events by type (here also summing one field)."""

    name = "bench-count-by-type"

    def initial(self) -> TypeCounts:
        return TypeCounts(counts={})

    @handles(*EVENT_TYPES)
    def count(self, state: TypeCounts, event: RecordedEvent) -> TypeCounts:
        counts = state.counts
        counts[event.type] = counts.get(event.type, 0) + 1
        state.amount += event.data.get("amount", 0.0)
        return state


class CountByTypeWithRecent(CountByType):
    name = "bench-count-by-type-recent"

    @handles(*EVENT_TYPES)
    def count(self, state: TypeCounts, event: RecordedEvent) -> TypeCounts:
        state = super().count(state, event)
        recent = state.recent_orders
        recent.append(event.data["n"])
        if len(recent) > 50:
            del recent[0]
        return state


async def measure_projection(url: str, big: bool = False) -> dict[str, float]:
    """Figures in ms: `fold_10k_ms` (best of `ROUNDS`; `_median` too) and, with `big` on sqlite,
    `snapshot_load_1m_ms` (best of `ROUNDS`; `_median` too) plus `snapshot_build_1m_s` (writing the stream and its first
    snapshot). Each measurement uses its own stream in the store at `url`."""
    figures: dict[str, float] = {}
    async with agentfold.connect(url) as store:
        stream_id = f"fold-bench-{uuid.uuid4().hex[:8]}"
        for start in range(0, FOLD_EVENTS, APPEND_BATCH):
            batch = [
                NewEvent(EVENT_TYPES[index % len(EVENT_TYPES)], event_payload(index))
                for index in range(start, start + APPEND_BATCH)
            ]
            await store.append(stream_id, batch)
        bare = await _bare_fold(url)
        timings: list[float] = []
        bare_timings: list[float] = []
        try:
            for _ in range(ROUNDS):
                started = time.perf_counter()
                state = await project(store, stream_id, CountByType)
                timings.append((time.perf_counter() - started) * 1000)
                if sum(state.counts.values()) != FOLD_EVENTS:
                    raise RuntimeError(f"folded {sum(state.counts.values())} events, wrote {FOLD_EVENTS}")
                if bare is not None:
                    bare_timings.append(await bare.run())
        finally:
            if bare is not None:
                await bare.close()
        figures["fold_10k_ms"] = min(timings)
        figures["fold_10k_ms_median"] = statistics.median(timings)
        if bare_timings:
            figures["raw_read_decode_fold_10k_ms"] = min(bare_timings)
            figures["raw_read_decode_fold_10k_ms_median"] = statistics.median(bare_timings)

        if big and url.split("://", 1)[0].lower() in SNAPSHOT_SCHEMES:
            figures.update(await _snapshot_load(store))
    return figures


class _BareFold(Protocol):
    async def run(self) -> float: ...
    async def close(self) -> None: ...


async def _bare_fold(url: str) -> _BareFold | None:
    """The bare-driver fold of the backend at `url`, set up and ready to time; None where there is none."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from agentfold.bench.raw_sqlite import BareFold as SQLiteBareFold

        return SQLiteBareFold(url)
    if scheme in ("postgresql", "postgres"):
        from agentfold.bench.raw_postgres import BareFold as PostgresBareFold

        return await PostgresBareFold.open(url)
    return None


async def _snapshot_load(store: agentfold.EventStore) -> dict[str, float]:
    stream_id = f"snapshot-bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    for start in range(0, BIG_EVENTS, APPEND_BATCH):
        batch = [
            NewEvent(EVENT_TYPES[index % len(EVENT_TYPES)], {"n": index, "amount": 1.5})
            for index in range(start, start + APPEND_BATCH)
        ]
        await store.append(stream_id, batch)
    saved = await save_snapshot(store, stream_id, CountByTypeWithRecent)
    build_seconds = time.perf_counter() - started
    if not saved.snapshot_saved or saved.version != BIG_EVENTS:
        raise RuntimeError(f"expected a snapshot at version {BIG_EVENTS}, got {saved}")
    timings = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        loaded = await fold(store, stream_id, CountByTypeWithRecent)
        timings.append((time.perf_counter() - started) * 1000)
        if loaded.snapshot_version != BIG_EVENTS or loaded.events_read or loaded.state != saved.state:
            raise RuntimeError(f"the state did not come from the snapshot: {loaded}")
    return {
        "snapshot_load_1m_ms": min(timings),
        "snapshot_load_1m_ms_median": statistics.median(timings),
        "snapshot_build_1m_s": build_seconds,
    }
