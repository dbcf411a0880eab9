"""Consumer groups on every backend: shared work, stream order, takeover after SIGKILL, dead letters, rebalance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest

import agentfold
from agentfold import NewEvent, RecordedEvent
from agentfold.errors import InvalidInput
from agentfold.groups import ConsumerGroupMember, GroupSettings, dead_letters, partition_of
from agentfold.store import EventStore
from tests.group_helpers import PoisonJobs, until

ROOT = Path(__file__).resolve().parent.parent


async def fill(store: EventStore, streams: int, per_stream: int) -> int:
    for version in range(per_stream):
        for stream in range(streams):
            await store.append(f"job-{stream}", [NewEvent("JobQueued", {"stream": stream, "n": version})])
    return streams * per_stream


def test_partitions_are_stable_and_spread() -> None:
    assert partition_of("order-42", 16) == partition_of("order-42", 16)
    assert len({partition_of(f"order-{index}", 16) for index in range(200)}) == 16


def test_bad_settings_are_refused() -> None:
    for bad in ({"partitions": 0}, {"lease_seconds": 0}, {"max_attempts": 0}, {"checkpoint_every": 0}):
        with pytest.raises(InvalidInput):
            GroupSettings("g", **bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        GroupSettings("")


async def test_three_members_share_the_work_each_stream_in_order(store: EventStore) -> None:
    total = await fill(store, streams=12, per_stream=10)
    seen: list[tuple[str, RecordedEvent]] = []

    def handler_for(member: str):  # type: ignore[no-untyped-def]
        async def handle(event: RecordedEvent) -> None:
            seen.append((member, event))

        return handle

    members = [
        store.consumer_group("workers", handler_for(f"m{index}"), member_id=f"m{index}", lease_seconds=3, partitions=8)
        for index in range(3)
    ]
    async with members[0], members[1], members[2]:
        await until(lambda: len({event.id for _, event in seen}) >= total)
        await until(lambda: all(member.partitions for member in members))
        await store.append("job-0", [NewEvent("JobQueued", {"late": True})])
        await until(lambda: len({event.id for _, event in seen}) >= total + 1)
    by_stream: dict[str, list[int]] = defaultdict(list)
    for _, event in seen:
        by_stream[event.stream_id].append(event.version)
    for stream, versions in by_stream.items():
        assert versions == sorted(versions), f"{stream} out of order: {versions}"
    assert {event.id for _, event in seen} == {
        event.id async for event in store.read_all() if event.stream_id.startswith("job-")
    }
    assert not any(event.stream_id.startswith("$") for _, event in seen)


async def test_members_joining_and_leaving_rebalance(store: EventStore) -> None:
    await fill(store, streams=8, per_stream=3)
    handled: list[RecordedEvent] = []

    async def handle(event: RecordedEvent) -> None:
        handled.append(event)

    first = store.consumer_group("rebalance", handle, member_id="first", lease_seconds=1.5, partitions=8)
    second = store.consumer_group("rebalance", handle, member_id="second", lease_seconds=1.5, partitions=8)
    async with first:
        await until(lambda: len(first.partitions) == 8 and len(handled) == 24)
        async with second:
            await until(lambda: len(first.partitions) == 4 and len(second.partitions) == 4)
            await fill(store, streams=8, per_stream=1)
            await until(lambda: len(handled) >= 32)
        await until(lambda: len(first.partitions) == 8)
        await fill(store, streams=8, per_stream=1)
        await until(lambda: len(handled) >= 40)
    ids = [event.id for event in handled]
    assert len(ids) == len(set(ids)), "a clean rebalance repeats nothing that was acknowledged"


async def test_a_member_that_left_is_not_counted_until_its_heartbeat_runs_out(store: EventStore) -> None:
    """A member that leaves says so: one that joins after it (a worker restarted under a new id) takes every
    partition at once, not its share beside a member whose last heartbeat has not run out yet."""
    await fill(store, streams=8, per_stream=1)

    async def handle(event: RecordedEvent) -> None:
        return None

    settings = {"lease_seconds": 600, "partitions": 8}
    async with store.consumer_group("restarts", handle, member_id="before", **settings) as before:
        await until(lambda: len(before.partitions) == 8)
    async with store.consumer_group("restarts", handle, member_id="after", **settings) as after:
        await until(lambda: len(after.partitions) == 8)


async def test_poison_events_are_dead_lettered_and_the_group_moves_on(store: EventStore) -> None:
    await store.append("job-1", [NewEvent("JobQueued", {"n": 1}), NewEvent("JobQueued", {"poison": True})])
    await store.append("job-1", [NewEvent("JobQueued", {"n": 3})])
    handle = PoisonJobs()
    member = store.consumer_group("careful", handle, max_attempts=3, retry_delay_seconds=0.001, lease_seconds=3)
    async with member:
        await until(lambda: handle.done == [1, 3])
    assert handle.attempts[2] == 3
    letters = await dead_letters(store, "careful")
    assert len(letters) == 1
    assert letters[0].data["version"] == 2
    assert letters[0].data["attempts"] == 3
    assert "cannot parse this job" in letters[0].data["error"]
    assert member.dead_lettered == 1


async def test_a_member_fenced_out_stops_handling_its_partition(store: EventStore) -> None:
    await fill(store, streams=4, per_stream=2)
    handled: list[RecordedEvent] = []

    async def handle(event: RecordedEvent) -> None:
        handled.append(event)

    now = [1000.0]
    stale = ConsumerGroupMember(
        store, GroupSettings("fenced", partitions=2, lease_seconds=5), handle, "stale", lambda: now[0]
    )
    # private: heartbeats and renewals driven by hand to stage a stale member deterministically
    await stale._heartbeat()
    assert stale.partitions == [0, 1]
    now[0] += 60  # the stale member sleeps past its lease; another member takes over
    fresh = ConsumerGroupMember(
        store, GroupSettings("fenced", partitions=2, lease_seconds=5), handle, "fresh", lambda: now[0]
    )
    await fresh._heartbeat()
    assert fresh.partitions == [0, 1]
    await stale._renew(0)
    assert 0 not in stale.partitions


async def test_sigkilled_member_partitions_are_taken_over(durable_url: str) -> None:
    async with agentfold.connect(durable_url):
        pass
    handled: dict[str, list[str]] = defaultdict(list)
    processes = {
        member: subprocess.Popen(
            [sys.executable, "-m", "tests.procs", "group", durable_url, "takeover", member, "2"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for member in ("a", "b", "c")
    }

    def collect(member: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("HANDLED"):
                handled[member].append(line.split()[1])

    def union() -> set[str]:
        return {position for member in list(handled) for position in handled[member]}

    readers = [threading.Thread(target=collect, args=item, daemon=True) for item in processes.items()]
    for reader in readers:
        reader.start()
    total = 0
    try:
        async with agentfold.connect(durable_url) as store:
            # Keep work coming until the partitions have spread and every member has handled some.
            for _ in range(200):
                total += await fill(store, streams=24, per_stream=1)
                await until(lambda expected=total: len(union()) >= expected, 60)  # type: ignore[misc]
                if all(len(handled[member]) >= 3 for member in processes):
                    break
            processes["a"].send_signal(signal.SIGKILL)
            processes["a"].wait(timeout=30)
            total += await fill(store, streams=24, per_stream=3)
            await until(lambda: len(union()) >= total, 90)
            expected = {str(event.position) async for event in store.read_all(stream_prefix="job-")}
    except TimeoutError:
        counts = {member: len(seen) for member, seen in handled.items()}
        raise AssertionError(f"handled {len(union())} of {total}: {counts}") from None
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    assert all(len(handled[member]) >= 3 for member in processes)
    assert union() == expected
