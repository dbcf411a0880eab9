"""Large payloads (`agentfold.blobs`): appending and reading 1 MiB payloads, and folding a stream of large events
whose fold reads only their small fields, with the payloads kept in the event (as before blobs) and as blobs.

The three folds are timed in turns (`ROUNDS` times), each figure the best and the median of its own, because this
machine's speed drifts within minutes.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any, Final

import msgspec

from agentfold.backend import BlobStorage
from agentfold.events import NewEvent, RecordedEvent
from agentfold.projection import Projection, handles, project
from agentfold.store import EventStore

MIB: Final = 1024 * 1024
APPEND_PAYLOADS: Final = 48
"""1 MiB appends timed (each a new blob: the payloads differ)."""
FOLD_EVENTS: Final = 200
FOLD_PAYLOAD: Final = 256 * 1024
"""A tool output of 256 KiB: small enough to stay in the event below the 1 MiB limit, so both ways can be timed."""
ROUNDS: Final = 5


def payload(index: int, size: int) -> dict[str, Any]:
    """A model call's record: a large prompt (its JSON about `size` bytes) and the small fields a fold reads."""
    return {"prompt": f"{index:08d}" + "p" * (size - 10), "tokens": index % 100, "model": "m-1"}


class Tokens(msgspec.Struct):
    """Tokens used and calls made."""

    tokens: int = 0
    calls: int = 0


class TokensUsed(Projection[Tokens]):
    """Sums the tokens of each call; its handler never reads the prompt, and says so."""

    name = "bench-tokens-used"

    def initial(self) -> Tokens:
        return Tokens()

    @handles("ModelCalled", blobs=False)
    def called(self, state: Tokens, event: RecordedEvent) -> Tokens:
        state.tokens += event.data["tokens"]
        state.calls += 1
        return state


class TokensUsedReadingPrompts(Projection[Tokens]):
    """The same sum from a handler that does not say it skips the prompt: the fold loads every blob."""

    name = "bench-tokens-used-loading"

    def initial(self) -> Tokens:
        return Tokens()

    @handles("ModelCalled")
    def called(self, state: Tokens, event: RecordedEvent) -> Tokens:
        state.tokens += event.data["tokens"]
        state.calls += 1 if event.data["prompt"] else 0
        return state


async def measure_blobs(store: EventStore, quick: bool = False) -> dict[str, float]:
    """Figures: `blob_append_1mib_mb_per_s` and `blob_read_1mib_mb_per_s` (one writer, then `read_stream`, MB/s of
    JSON payload), and in ms the fold of `FOLD_EVENTS` events with a 256 KiB field each, the fold reading their small
    fields only: `blob_fold_inline_ms` (the field kept in the event, as before blobs), `blob_fold_unread_ms` (kept as
    a blob, the handler declared ``blobs=False``), `blob_fold_loaded_ms` (kept as a blob, every blob loaded), and
    `blob_fold_unread_vs_inline` (how many times faster). Nothing without blob support in the backend."""
    if not store.keeps_blobs:
        return {}
    figures: dict[str, float] = {}
    appends = APPEND_PAYLOADS // 4 if quick else APPEND_PAYLOADS
    stream_id = f"blob-bench-{uuid.uuid4().hex[:8]}"
    events = [NewEvent("ModelCalled", payload(index, MIB)) for index in range(appends)]
    size = sum(len(event.data["prompt"]) + 2 for event in events)
    started = time.perf_counter()
    for event in events:
        await store.append(stream_id, [event])
    figures["blob_append_1mib_mb_per_s"] = size / MIB / (time.perf_counter() - started)
    reads = []
    for _ in range(3):
        started = time.perf_counter()
        read = [event async for event in store.read_stream(stream_id)]
        reads.append(time.perf_counter() - started)
        if [event.data["prompt"][:8] for event in read] != [f"{index:08d}" for index in range(appends)]:
            raise RuntimeError("the 1 MiB payloads did not read back")
    figures["blob_read_1mib_mb_per_s"] = size / MIB / min(reads)
    figures.update(await _folds(store, FOLD_EVENTS // 4 if quick else FOLD_EVENTS))
    return figures


async def _append_calls(store: EventStore, stream_id: str, count: int) -> None:
    for start in range(0, count, 20):
        indexes = range(start, min(count, start + 20))
        await store.append(stream_id, [NewEvent("ModelCalled", payload(index, FOLD_PAYLOAD)) for index in indexes])


async def _folds(store: EventStore, count: int) -> dict[str, float]:
    inline, kept = f"blob-fold-inline-{uuid.uuid4().hex[:8]}", f"blob-fold-blobs-{uuid.uuid4().hex[:8]}"
    backend = store.backend
    if not isinstance(backend, BlobStorage):
        return {}
    threshold = backend.blob_threshold
    backend.blob_threshold = 2 * FOLD_PAYLOAD  # the events as agentfold stored them before blobs: whole
    try:
        await _append_calls(store, inline, count)
    finally:
        backend.blob_threshold = threshold
    await _append_calls(store, kept, count)
    expected = Tokens(sum(index % 100 for index in range(count)), count)
    runs = {"inline": (inline, TokensUsed), "unread": (kept, TokensUsed), "loaded": (kept, TokensUsedReadingPrompts)}
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, (stream_id, projection) in runs.items():
            started = time.perf_counter()
            state = await project(store, stream_id, projection)
            timings[name].append((time.perf_counter() - started) * 1000)
            if state != expected:
                raise RuntimeError(f"the {name} fold gave {state}, not {expected}")
    figures: dict[str, float] = {}
    for name, values in timings.items():
        figures[f"blob_fold_{name}_ms"] = min(values)
        figures[f"blob_fold_{name}_ms_median"] = statistics.median(values)
    figures["blob_fold_unread_vs_inline"] = figures["blob_fold_inline_ms"] / figures["blob_fold_unread_ms"]
    return figures
