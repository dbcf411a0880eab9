"""`WorkflowClient.result` callers are woken by their own run's end, not by every append to the store: a thousand
waiting callers do not each read their run again after every append anywhere."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest

from agentfold import EventStore, NewEvent
from agentfold.backends.memory import MemoryBackend
from agentfold.errors import WorkflowFailed
from agentfold.runtime import Runtime
from agentfold.runtime import history as h
from tests.group_helpers import until

WAITERS = 20
NOISE = 200


class CountingBackend(MemoryBackend):
    """The memory backend, counting the reads of each stream."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    async def read_stream_records(
        self, stream_id: str, after_version: int, limit: int | None
    ) -> AsyncGenerator[Sequence[Any], None]:
        self.reads[stream_id] += 1
        async for page in super().read_stream_records(stream_id, after_version, limit):
            yield page


def started() -> NewEvent:
    return NewEvent(h.WORKFLOW_STARTED, {"workflow": "elsewhere", "input": {"args": []}, "version": None})


async def test_waiting_callers_read_their_runs_when_they_end_not_at_every_append(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = CountingBackend()
    store = EventStore(backend)
    client = Runtime().client(store)
    for index in range(WAITERS):
        await store.append(f"{h.WORKFLOW_STREAM_PREFIX}run-{index}", [started()])
    waiting = [asyncio.create_task(client.result(f"run-{index}", timeout=60)) for index in range(WAITERS)]
    streams = [f"{h.WORKFLOW_STREAM_PREFIX}run-{index}" for index in range(WAITERS)]
    await until(lambda: all(backend.reads[stream] >= 1 for stream in streams))
    before = {stream: backend.reads[stream] for stream in streams}

    for index in range(NOISE):  # appends to other streams, one commit each
        await store.append(f"noise-{index % 7}", [NewEvent("Noise", {"n": index})])
        await asyncio.sleep(0.001)  # the waiters run between appends, as they would beside a real writer
    await store.append(streams[0], [NewEvent(h.WORKFLOW_COMPLETED, {"result": "done"})])
    await store.append(streams[1], [NewEvent(h.WORKFLOW_FAILED, {"error": {"type": "E", "message": "m"}})])

    assert await waiting[0] == "done"
    with pytest.raises(WorkflowFailed):
        await waiting[1]
    still = [stream for stream in streams[2:] if backend.reads[stream] - before[stream] > 2]
    assert still == [], "waiting callers read their runs again at unrelated appends"
    for task in waiting[2:]:
        assert not task.done()
        task.cancel()
    await asyncio.gather(*waiting[2:], return_exceptions=True)
    await store.close()


async def test_a_store_that_was_waited_on_can_be_collected() -> None:
    """The reader ends when its last caller stops waiting, and keeps no store alive."""
    store = EventStore(MemoryBackend())
    client = Runtime().client(store)
    await store.append(f"{h.WORKFLOW_STREAM_PREFIX}gone", [started()])
    with pytest.raises(TimeoutError):
        await client.result("gone", timeout=0.05)
    await until(lambda: not [task for task in asyncio.all_tasks() if task.get_name() == "agentfold result wake-ups"])
    await store.close()
    collected = weakref.ref(store)
    del store, client
    gc.collect()
    assert collected() is None
