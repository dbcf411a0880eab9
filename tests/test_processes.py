"""Guarantees that only separate OS processes can show: shared files/servers, SIGKILL, readers elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import agentfold
from agentfold import NewEvent

ROOT = Path(__file__).resolve().parent.parent


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.procs", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> list[str]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{err[-3000:]}"
    return out.splitlines()


def acks(lines: list[str]) -> list[tuple[str, int, int]]:
    return [(parts[1], int(parts[2]), int(parts[3])) for parts in (line.split() for line in lines) if parts[0] == "ACK"]


def kill_after_acks(process: subprocess.Popen[str], count: int) -> list[str]:
    """SIGKILL `process` once it has printed `count` acknowledgements; every line it printed, stripped."""
    assert process.stdout is not None and process.stderr is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line.strip())
        if sum(1 for seen in lines if seen.startswith("ACK")) >= count:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    lines.extend(line.strip() for line in process.stdout.read().splitlines())
    process.stdout.close()
    process.stderr.close()
    return lines


async def settled(url: str) -> None:
    """Return once the store holds still: a server may still commit the last transaction a SIGKILLed client had
    sent (it learns of the kill only when it next reads from the connection), after the kill has returned."""
    async with agentfold.connect(url) as store:
        seen = None
        for _ in range(100):
            now = (await store.head_position(), await store.blob_usage())
            if now == seen:
                return
            seen = now
            await asyncio.sleep(0.3)


async def everything(url: str) -> list[Any]:
    async with agentfold.connect(url) as store:
        return [event async for event in store.read_all()]


async def test_two_processes_append_to_one_store(durable_url: str) -> None:
    async with agentfold.connect(durable_url):
        pass  # create the schema once, so both writers race on appends only
    writers = [start("writer", durable_url, name, "60", "2", "4") for name in ("alpha", "beta")]
    acknowledged = [ack for process in writers for ack in acks(finish(process))]
    assert len(acknowledged) == 2 * 4 * 60

    events = await everything(durable_url)
    assert len(events) == 2 * 4 * 60 * 2
    positions = [event.position for event in events]
    assert positions == sorted(set(positions))
    by_stream: dict[str, list[int]] = {}
    for event in events:
        by_stream.setdefault(event.stream_id, []).append(event.version)
    assert len(by_stream) == 8
    assert all(versions == list(range(1, 121)) for versions in by_stream.values())
    stored = {(event.stream_id, event.version): event.position for event in events}
    assert all(stored[(stream, version)] == position for stream, version, position in acknowledged)


async def test_sigkilled_writer_loses_no_acknowledged_append(durable_url: str) -> None:
    async with agentfold.connect(durable_url):
        pass
    batch_size = 5
    lines = kill_after_acks(start("writer", durable_url, "victim", "0", str(batch_size), "8"), 150)

    acknowledged = acks([line for line in lines if line.startswith("ACK")])
    sent = [(parts[1], json.loads(parts[2])) for parts in (line.split(" ", 2) for line in lines) if parts[0] == "SEND"]
    events = await everything(durable_url)
    stored = {(event.stream_id, event.version): event for event in events}
    for stream, version, position in acknowledged:
        assert stored[(stream, version)].position == position
    positions = [event.position for event in events]
    assert positions == sorted(set(positions))
    for stream in {event.stream_id for event in events}:
        versions = sorted(event.version for event in events if event.stream_id == stream)
        assert versions == list(range(1, len(versions) + 1))
        assert len(versions) % batch_size == 0, f"a partial batch is stored on {stream}"

    # Every append that was sent (acknowledged or in flight at the kill) can be retried exactly: each lands once.
    async with agentfold.connect(durable_url) as store:
        for stream, sent_events in sent:
            batch = [NewEvent("Wrote", data, id=uuid.UUID(event_id)) for event_id, data in sent_events]
            await store.append(stream, batch)
        after = [event async for event in store.read_all()]
    seen_ids = [str(event.id) for event in after]
    assert len(seen_ids) == len(set(seen_ids))
    assert set(seen_ids) == {event_id for _, sent_events in sent for event_id, _ in sent_events}


async def test_a_writer_sigkilled_mid_append_of_large_payloads_leaves_events_and_blobs_together(
    durable_url: str,
) -> None:
    """Appends of 2 MiB blobs and trims from four tasks, SIGKILLed at the 30th acknowledgement: every event left
    has its blob, no blob is left without an event, and every acknowledged append that was not trimmed is there."""
    async with agentfold.connect(durable_url):
        pass
    lines = kill_after_acks(start("blob-writer", durable_url, "4"), 30)
    await settled(durable_url)

    async with agentfold.connect(durable_url) as store:
        stored = [event async for event in store.read_all(blobs=False)]
        whole = [event async for event in store.read_all()]  # every blob is there: no StoreCorrupted
        usage = await store.blob_usage()
    referenced = {event.data["prompt"]["$blob"]: event.data["prompt"]["size"] for event in stored}
    assert usage == (len(referenced), sum(referenced.values()))  # and no blob outlived its events
    assert all(event.data["prompt"].startswith(event.stream_id.removeprefix("blobs-") + ":") for event in whole)
    latest: dict[str, int] = {}
    for stream, version, _ in acks(lines):
        latest[stream] = max(latest.get(stream, 0), version)
    for stream, version in latest.items():  # a trim keeps the last two events, so the last acknowledged is there
        assert any(event.stream_id == stream and event.version == version for event in whole)
    assert all(len(event.data["prompt"]) > 2 * 1024 * 1024 for event in whole)


async def test_reader_in_another_process_never_sees_a_late_filler(durable_url: str) -> None:
    async with agentfold.connect(durable_url):
        pass
    writers_count, tasks, appends = 2, 8, 40
    total = writers_count * tasks * appends
    reader = start("reader", durable_url, str(total), "120")
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "READY"
    writers = [start("writer", durable_url, f"w{index}", str(appends), "1", str(tasks)) for index in range(2)]
    for process in writers:
        finish(process)
    lines = finish(reader)
    seen = json.loads(next(line for line in lines if line.startswith("POSITIONS")).split(" ", 1)[1])
    assert seen == sorted(set(seen)), "positions must strictly increase"
    stored = [event.position for event in await everything(durable_url)]
    assert seen == stored, "the reader skipped an event that appeared later below its position"
