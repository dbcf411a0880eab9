"""Redis-native consumer groups on relayed partition streams: shared work, stream order, takeover, dead letters."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import agentfold
from agentfold import NewEvent, RecordedEvent
from agentfold.errors import InvalidInput, InvalidURL
from agentfold.fanout.redis_groups import RedisConsumerGroupMember, dead_letters, redis_consumer_group
from agentfold.fanout.redis_relay import relay
from agentfold.groups import partition_of
from agentfold.store import EventStore
from tests.backends import REDIS_URL
from tests.group_helpers import PoisonJobs, until

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8

pytestmark = pytest.mark.usefixtures("redis_service")


@pytest.fixture
async def source() -> AsyncIterator[EventStore]:
    async with agentfold.connect("memory://") as store:
        yield store


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(REDIS_URL.split("?")[0])
    yield connection
    await connection.aclose()


def prefix_of(url: str) -> str:
    return url.rsplit("prefix=", 1)[1].split("&")[0]


async def feed(source: EventStore, redis_target: str, streams: int, per_stream: int, first: int = 0) -> int:
    """Append `per_stream` events to each of `streams` streams, interleaved, and relay them; return how many."""
    for number in range(first, first + per_stream):
        for stream in range(streams):
            await source.append(f"job-{stream}", [NewEvent("JobQueued", {"stream": stream, "n": number})])
    await relay(source, redis_target, once=True, partitions=PARTITIONS)
    return streams * per_stream


def assert_in_stream_order(events: list[RecordedEvent]) -> None:
    by_stream: dict[str, list[int]] = defaultdict(list)
    for event in events:
        by_stream[event.stream_id].append(event.version)
    for stream, versions in by_stream.items():
        assert versions == sorted(versions), f"{stream} handled out of order: {versions}"


async def pending_count(client: aioredis.Redis, redis_target: str, group: str) -> int:
    total = 0
    for partition in range(PARTITIONS):
        key = f"{prefix_of(redis_target)}:partition:{partition}"
        if await client.exists(key):
            total += int((await client.xpending(key, group))["pending"])
    return total


async def test_each_event_goes_to_one_member_each_stream_in_order(source: EventStore, redis_target: str) -> None:
    seen: list[tuple[str, RecordedEvent]] = []

    def handler_for(member: str) -> Callable[[RecordedEvent], Awaitable[None]]:
        async def handle(event: RecordedEvent) -> None:
            seen.append((member, event))
            await asyncio.sleep(0)  # let the members interleave

        return handle

    members = [
        redis_consumer_group(
            redis_target, "workers", handler_for(f"m{index}"), member_id=f"m{index}", lease_seconds=1.5
        )
        for index in range(3)
    ]
    async with members[0], members[1], members[2]:
        await asyncio.sleep(0.2)  # nothing relayed yet: the members wait for the relay to declare its partitions
        assert all(member.partitions == [] for member in members)
        await relay(source, redis_target, once=True, partitions=PARTITIONS)  # an empty source: declares the partitions
        await until(lambda: sorted(len(member.partitions) for member in members) == [2, 3, 3])
        total = await feed(source, redis_target, streams=20, per_stream=10)
        await until(lambda: len(seen) >= total)
        await asyncio.sleep(0.3)  # time for a duplicate to show up, if there were one
    ids = [event.id for _, event in seen]
    assert len(ids) == len(set(ids)) == total, "each event handled exactly once"
    assert {event.id async for event in source.read_all()} == set(ids)
    assert {member for member, _ in seen} == {"m0", "m1", "m2"}
    by_member_and_stream = {(event.stream_id, member) for member, event in seen}
    assert len(by_member_and_stream) == 20, "with no rebalance, every stream stays with one member"
    assert_in_stream_order([event for _, event in seen])
    assert sum(member.handled for member in members) == total


async def test_members_joining_and_leaving_rebalance_without_loss(
    source: EventStore, redis_target: str, client: aioredis.Redis
) -> None:
    await relay(source, redis_target, once=True, partitions=PARTITIONS)
    handled: list[RecordedEvent] = []

    async def handle(event: RecordedEvent) -> None:
        await asyncio.sleep(0.002)  # slow enough that partitions change hands with entries read but not handled
        handled.append(event)

    # max_attempts=1: an entry handed over with a wrong delivery count would be dead-lettered instead of handled.
    options = {"lease_seconds": 1.5, "min_idle_seconds": 30.0, "max_attempts": 1, "batch_size": 10}
    first = redis_consumer_group(redis_target, "rebalance", handle, member_id="first", **options)
    second = redis_consumer_group(redis_target, "rebalance", handle, member_id="second", **options)
    total = 0
    async with first:
        await until(lambda: len(first.partitions) == PARTITIONS)
        total += await feed(source, redis_target, streams=16, per_stream=10)
        async with second:  # joins while the first is busy
            await until(lambda: len(first.partitions) == len(second.partitions) == PARTITIONS // 2)
            total += await feed(source, redis_target, streams=16, per_stream=10, first=10)
            await until(lambda: len({event.id for event in handled}) >= total)
            total += await feed(source, redis_target, streams=16, per_stream=10, first=20)
        # the second left with entries in hand: the first takes them at once (min idle 30 s is not waited for)
        await until(lambda: len(first.partitions) == PARTITIONS)
        await until(lambda: len({event.id for event in handled}) >= total)
    ids = [event.id for event in handled]
    assert len(ids) == len(set(ids)) == total, "a clean hand-over repeats nothing that was acknowledged"
    assert first.handled > 0 and second.handled > 0
    assert_in_stream_order(handled)
    assert await dead_letters(redis_target, "rebalance") == []
    assert await pending_count(client, redis_target, "rebalance") == 0


async def test_poison_events_are_dead_lettered_and_the_group_moves_on(
    source: EventStore, redis_target: str, client: aioredis.Redis
) -> None:
    await source.append("job-1", [NewEvent("JobQueued", {"n": 1}), NewEvent("JobQueued", {"poison": True})])
    await source.append("job-1", [NewEvent("JobQueued", {"n": 3})])
    await relay(source, redis_target, once=True, partitions=PARTITIONS)
    handle = PoisonJobs()
    async with redis_consumer_group(
        redis_target, "careful", handle, max_attempts=3, retry_delay_seconds=0.001
    ) as member:
        await until(lambda: handle.done == [1, 3])
    assert handle.attempts == {1: 1, 2: 3, 3: 1}
    assert member.dead_lettered == 1
    letters = await dead_letters(redis_target, "careful")
    assert len(letters) == 1
    letter = letters[0]
    assert letter.event is not None
    assert (letter.event.stream_id, letter.event.version, letter.event.data) == ("job-1", 2, {"poison": True})
    assert letter.attempts == 3
    assert "cannot parse this job" in letter.error
    assert "ValueError" in letter.traceback
    assert letter.partition == partition_of("job-1", PARTITIONS)
    assert letter.member == member.member_id
    assert await pending_count(client, redis_target, "careful") == 0


async def test_an_event_whose_members_keep_dying_is_dead_lettered_unhandled(
    source: EventStore, redis_target: str, client: aioredis.Redis
) -> None:
    """An event that crashes every process handling it: after max_attempts deliveries it goes to the dead letters."""
    await source.append("job-7", [NewEvent("JobQueued", {"crashes": True}), NewEvent("JobQueued", {"n": 2})])
    await relay(source, redis_target, once=True, partitions=PARTITIONS)
    key = f"{prefix_of(redis_target)}:partition:{partition_of('job-7', PARTITIONS)}"
    # What members that died mid-handler leave behind: the entry pending under a dead consumer, delivered 3 times.
    await client.xgroup_create(key, "fragile", id="0", mkstream=True)
    [[_, [(entry_id, _)]]] = await client.xreadgroup("fragile", "dead-member", {key: ">"}, count=1)
    await client.xclaim(key, "fragile", "dead-member", 0, [entry_id], idle=60_000, retrycount=3)
    handled: list[RecordedEvent] = []

    async def handle(event: RecordedEvent) -> None:
        handled.append(event)

    async with redis_consumer_group(redis_target, "fragile", handle, max_attempts=3, min_idle_seconds=1.0):
        await until(lambda: len(handled) == 1)
    assert [event.version for event in handled] == [2], "the crashing event is not handed to a handler again"
    [letter] = await dead_letters(redis_target, "fragile")
    assert letter.event is not None and letter.event.data == {"crashes": True}
    assert letter.attempts == 3
    assert "without being acknowledged" in letter.error
    assert await pending_count(client, redis_target, "fragile") == 0


async def test_bad_arguments_are_refused(redis_target: str) -> None:
    async def handle(event: RecordedEvent) -> None:
        return None

    for group in ("", "a b", "a:b", "x" * 101):
        with pytest.raises(InvalidInput, match="group"):
            RedisConsumerGroupMember(redis_target, group, handle)
    with pytest.raises(InvalidInput, match="member_id"):
        RedisConsumerGroupMember(redis_target, "g", handle, member_id="two words")
    for bad in (
        {"lease_seconds": 0},
        {"lease_seconds": float("nan")},
        {"min_idle_seconds": -1},
        {"max_attempts": 0},
        {"max_attempts": True},
        {"batch_size": 0},
        {"batch_size": 10_001},
        {"retry_delay_seconds": float("inf")},
    ):
        with pytest.raises(InvalidInput, match=next(iter(bad))):
            RedisConsumerGroupMember(redis_target, "g", handle, **bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="handler"):
        RedisConsumerGroupMember(redis_target, "g", "not a function")  # type: ignore[arg-type]
    with pytest.raises(InvalidURL):
        RedisConsumerGroupMember("sqlite:///nowhere.db", "g", handle)
    with pytest.raises(InvalidURL, match="durability"):
        RedisConsumerGroupMember(f"{redis_target}&durability=waitaof", "g", handle)
    member = RedisConsumerGroupMember(redis_target, "g", handle)
    async with member:
        with pytest.raises(InvalidInput, match="started already"):
            await member.start()


# -- three member processes, one SIGKILLed with an event in hand ----------------------------------------------------


async def test_sigkilled_member_entries_go_to_the_survivors(
    source: EventStore, redis_target: str, client: aioredis.Redis
) -> None:
    await relay(source, redis_target, once=True, partitions=PARTITIONS)
    lines: dict[str, list[list[str]]] = defaultdict(list)
    processes = {
        member: subprocess.Popen(
            [sys.executable, "-m", "tests.procs", "redis-group", redis_target, "crash", member, hold],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for member, hold in (("a", "3"), ("b", "0"), ("c", "0"))
    }

    def collect(member: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines[member].append(line.split())

    def handled_by(*members: str) -> set[str]:
        return {words[1] for member in members for words in list(lines[member]) if words[0] == "HANDLED"}

    def holding() -> list[str]:
        return [words[1] for words in list(lines["a"]) if words[0] == "HOLDING"]

    async def owners() -> set[bytes]:
        keys = [f"{prefix_of(redis_target)}:group:crash:owner:{partition}" for partition in range(PARTITIONS)]
        return {owner for owner in await client.mget(keys) if owner is not None}

    readers = [threading.Thread(target=collect, args=item, daemon=True) for item in processes.items()]
    for reader in readers:
        reader.start()
    total = 0
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while await owners() != {b"a", b"b", b"c"}:
            assert asyncio.get_running_loop().time() < deadline, "the partitions did not spread over 3 members"
            await asyncio.sleep(0.05)
        total += await feed(source, redis_target, streams=24, per_stream=4)
        await until(lambda: bool(holding()), 60)
        processes["a"].send_signal(signal.SIGKILL)  # with an event received and not acknowledged
        processes["a"].wait(timeout=30)
        total += await feed(source, redis_target, streams=24, per_stream=2, first=4)
        await until(lambda: len(handled_by("a", "b", "c")) >= total, 60)
    except TimeoutError:
        counts = {member: len(handled_by(member)) for member in processes}
        raise AssertionError(f"handled {len(handled_by('a', 'b', 'c'))} of {total}: {counts}") from None
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    expected = {str(event.position) async for event in source.read_all()}
    assert handled_by("a", "b", "c") == expected, "every event handled, none lost"
    assert len(handled_by("a")) == 3
    assert holding()[0] in handled_by("b", "c"), "the event the killed member held went to a survivor"
    assert handled_by("b") and handled_by("c")
