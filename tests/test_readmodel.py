"""Read-model projectors: checkpointed page by page; exactly once on SQL backends even when SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import agentfold
from agentfold import NewEvent, RecordedEvent
from agentfold.store import EventStore

ROOT = Path(__file__).resolve().parent.parent


async def test_projector_applies_each_page_and_resumes_from_its_checkpoint(store: EventStore) -> None:
    for index in range(25):
        await store.append(f"order-{index % 5}", [NewEvent("OrderPlaced" if index % 2 else "Noise", {"n": index})])
    counts: Counter[str] = Counter()

    def update(handle: Any, events: list[RecordedEvent]) -> None:
        counts.update(event.stream_id for event in events)

    projector = store.projector("order-counts", update, types=["OrderPlaced"], page_size=4)
    assert await projector.catch_up() == 12
    assert sum(counts.values()) == 12
    assert await store.load_checkpoint("order-counts") == await store.head_position()
    assert await projector.catch_up() == 0

    await store.append("order-9", [NewEvent("OrderPlaced", {"n": 99})])
    again = store.projector("order-counts", update, types=["OrderPlaced"])
    assert await again.catch_up() == 1
    assert counts["order-9"] == 1


async def test_projector_follows_live_events(store: EventStore) -> None:
    seen: list[int] = []
    all_seen = asyncio.Event()

    def update(handle: Any, events: list[RecordedEvent]) -> None:
        seen.extend(event.position for event in events)
        if len(seen) == 5:
            all_seen.set()

    projector = store.projector("live", update)
    running = asyncio.create_task(projector.run())
    for index in range(5):
        await store.append("s", [NewEvent("E", {"n": index})])
    await asyncio.wait_for(all_seen.wait(), 30)
    projector.stop()
    await asyncio.wait_for(running, 30)
    assert seen == [event.position async for event in store.read_all()]


def _projector_process(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.procs", "projector", url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_sql_read_model_is_exactly_once_across_sigkills(durable_url: str, durable_backend: Any) -> None:
    if durable_backend.name not in ("sqlite", "postgres"):
        return  # exactly-once needs the read model in the store's own transaction: SQL backends only
    async with agentfold.connect(durable_url) as store:
        for start in range(0, 3000, 300):
            await asyncio.gather(
                *(store.append(f"acct-{n % 10}", [NewEvent("Deposited", {"n": n})]) for n in range(start, start + 300))
            )
    for _ in range(3):
        process = _projector_process(durable_url)
        assert process.stdout is not None
        applied = 0
        for line in process.stdout:
            if line.startswith("APPLIED"):
                applied += 1
                if applied == 5:
                    break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
        assert process.stderr is not None
        process.stderr.close()
    final = _projector_process(durable_url)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    totals = dict(line.split()[1:3] for line in out.splitlines() if line.startswith("TOTAL"))
    assert {stream: int(count) for stream, count in totals.items()} == {f"acct-{n}": 300 for n in range(10)}
