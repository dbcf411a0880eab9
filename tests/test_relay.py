"""The relay: a store's global log copied into Redis Streams, in order, each event once, across crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import agentfold
from agentfold import NewEvent, RecordedEvent
from agentfold.backends.redis import RedisDurabilityWarning
from agentfold.errors import InvalidInput, InvalidURL
from agentfold.fanout.redis_relay import Relay, RelayConflict, category_of, decode_relayed, relay
from agentfold.groups import partition_of
from agentfold.store import EventStore
from tests.backends import REDIS_URL

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("redis_service")


def prefix_of(url: str) -> str:
    return url.rsplit("prefix=", 1)[1]


async def relayed(url: str, key: str = "log") -> list[RecordedEvent]:
    client = aioredis.Redis.from_url(url.split("?")[0])
    try:
        return [decode_relayed(entry_id, fields) for entry_id, fields in await client.xrange(f"{prefix_of(url)}:{key}")]
    finally:
        await client.aclose()


async def relayed_ids(url: str, key: str = "log") -> list[bytes]:
    client = aioredis.Redis.from_url(url.split("?")[0])
    try:
        return [entry_id for entry_id, _ in await client.xrange(f"{prefix_of(url)}:{key}")]
    finally:
        await client.aclose()


async def fill(store: EventStore, appends: int, batch: int = 1) -> None:
    for number in range(appends):
        stream_id = f"{('order', 'invoice', 'agent')[number % 3]}-{number % 7}"
        await store.append(stream_id, [NewEvent("Happened", {"n": number, "k": k}) for k in range(batch)])


async def source_events(store: EventStore) -> list[RecordedEvent]:
    return [event async for event in store.read_all()]


async def test_relay_copies_every_event_once_in_order(redis_target: str) -> None:
    async with agentfold.connect("memory://") as source:
        await fill(source, 30, batch=2)
        assert await relay(source, redis_target, once=True, batch_size=7) == 60
        expected = await source_events(source)
        assert await relayed(redis_target) == expected
        assert await relayed_ids(redis_target) == [f"0-{event.position}".encode() for event in expected]
        for category in ("order", "invoice", "agent"):
            assert await relayed(redis_target, f"category:{category}") == [
                event for event in expected if category_of(event.stream_id) == category
            ]

        assert await relay(source, redis_target, once=True) == 0
        await fill(source, 5)
        assert await relay(source, redis_target, once=True) == 5
        assert await relayed(redis_target) == await source_events(source)
        worker = Relay(source, redis_target)
        try:
            assert await worker.checkpoint() == await source.head_position()
        finally:
            await worker.close()


async def test_a_batch_at_or_below_the_checkpoint_is_never_written_again(redis_target: str) -> None:
    async with agentfold.connect("memory://") as source:
        await fill(source, 10)
        events = await source_events(source)
        worker = Relay(source, redis_target)
        try:
            # private: the relay's write step driven alone, to check its idempotence batch by batch
            await worker._check_target()
            assert await worker._write(events[:6]) == 6
            assert await worker._write(events[:6]) == 0  # e.g. a reply lost and the batch sent again
            assert await worker._write(events[3:]) == 4  # overlapping: only the part above the checkpoint
            assert await worker.checkpoint() == 10
        finally:
            await worker.close()
        assert await relayed(redis_target) == events


async def test_partition_streams_hold_each_stream_in_one_partition_in_order(redis_target: str) -> None:
    async with agentfold.connect("memory://") as source:
        await fill(source, 40, batch=2)
        assert await relay(source, redis_target, once=True, batch_size=9, partitions=4) == 80
        expected = await source_events(source)
        for partition in range(4):
            assert await relayed(redis_target, f"partition:{partition}") == [
                event for event in expected if partition_of(event.stream_id, 4) == partition
            ]
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            assert await client.get(f"{prefix_of(redis_target)}:partitions") == b"4"
        finally:
            await client.aclose()
        await fill(source, 3)
        assert await relay(source, redis_target, once=True, partitions=4) == 3
        with pytest.raises(InvalidInput, match="4 partition streams, not 8"):
            await relay(source, redis_target, once=True, partitions=8)
        with pytest.raises(InvalidInput, match="4 partition streams, not 0"):
            await relay(source, redis_target, once=True)


async def test_partitioning_is_refused_on_a_prefix_filled_without_it(redis_target: str) -> None:
    async with agentfold.connect("memory://") as source:
        await fill(source, 3)
        await relay(source, redis_target, once=True)
        with pytest.raises(InvalidInput, match="without partition streams, not 4"):
            await relay(source, redis_target, once=True, partitions=4)
        with pytest.raises(InvalidInput, match="partitions"):
            Relay(source, redis_target, partitions=-1)
        with pytest.raises(InvalidInput, match="partitions"):
            Relay(source, redis_target, partitions=1025)


async def test_trimmed_events_are_skipped(redis_target: str) -> None:
    async with agentfold.connect("memory://") as source:
        await source.append("order-1", [NewEvent("A", {"n": n}) for n in range(5)])
        await source.append("order-2", [NewEvent("B", {})])
        await source.trim_stream("order-1", 6)
        assert await relay(source, redis_target, once=True) == 1
        assert [event.stream_id for event in await relayed(redis_target)] == ["order-2"]


async def test_following_the_source_until_stopped(redis_target: str) -> None:
    async with agentfold.connect("memory://") as source:
        stop = asyncio.Event()
        running = asyncio.create_task(relay(source, redis_target, stop_event=stop))
        await fill(source, 12)
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            checkpoint_key = f"{prefix_of(redis_target)}:relay:relay"
            for _ in range(600):
                if await client.get(checkpoint_key) == b"12":
                    break
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()
        stop.set()
        assert await asyncio.wait_for(running, 30) == 12
        assert await relayed(redis_target) == await source_events(source)


async def test_a_second_relay_into_the_same_prefix_is_refused(redis_target: str) -> None:
    async with agentfold.connect("memory://") as first, agentfold.connect("memory://") as second:
        await fill(first, 5)
        await fill(second, 3)
        await relay(first, redis_target, once=True)
        with pytest.raises(RelayConflict, match="another relay"):
            await relay(second, redis_target, name="other", once=True)
        assert await relayed(redis_target) == await source_events(first)


async def test_bad_relay_arguments_are_refused(redis_target: str) -> None:
    async with agentfold.connect("memory://") as source:
        with pytest.raises(InvalidInput, match="batch_size"):
            Relay(source, redis_target, batch_size=0)
        with pytest.raises(InvalidInput, match="name"):
            Relay(source, redis_target, name="")
        with pytest.raises(InvalidURL, match="durability"):
            Relay(source, f"{redis_target}&durability=waitaof")
        with pytest.raises(InvalidURL):
            Relay(source, "sqlite:///nowhere.db")


# -- a real relay process, SIGKILLed mid-copy -----------------------------------------------------------------------


def start_relay(*arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentfold.cli", "relay", *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


async def test_relay_killed_mid_copy_resumes_without_gaps_or_duplicates(tmp_path: Path, redis_target: str) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    async with agentfold.connect(source_url) as source:
        await fill(source, 300, batch=50)
        expected = await source_events(source)
    total = len(expected)
    assert total == 15_000

    # Small batches make the copy take seconds, so the kill lands mid-copy even on a busy machine.
    process = start_relay("--from", source_url, "--to", redis_target, "--batch-size", "5")
    client = aioredis.Redis.from_url(REDIS_URL)
    checkpoint_key = f"{prefix_of(redis_target)}:relay:relay"
    try:
        deadline = time.monotonic() + 60
        while int(await client.get(checkpoint_key) or 0) < 500:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the relay wrote nothing within 60 s"
            await asyncio.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        at_kill = int(await client.get(checkpoint_key) or 0)
        assert 0 < at_kill < total, "the relay must be killed mid-copy"

        # What the killed relay left is a gap-free prefix that ends exactly at its checkpoint.
        assert await relayed_ids(redis_target) == [f"0-{event.position}".encode() for event in expected[:at_kill]]

        restarted = start_relay("--from", source_url, "--to", redis_target, "--once")
        out, err = restarted.communicate(timeout=120)
        assert restarted.returncode == 0, err
        assert f"relayed {total - at_kill} events" in out
        assert f"checkpoint {total}" in out
    finally:
        if process.poll() is None:
            process.kill()
        await client.aclose()

    copied = await relayed(redis_target)
    assert [event.position for event in copied] == [event.position for event in expected]
    assert copied == expected
    for category in ("order", "invoice", "agent"):
        assert await relayed(redis_target, f"category:{category}") == [
            event for event in expected if category_of(event.stream_id) == category
        ]


async def test_relay_command_follows_and_stops_on_sigterm(tmp_path: Path, redis_target: str) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    async with agentfold.connect(source_url) as source:
        await fill(source, 10)
    process = start_relay("--from", source_url, "--to", redis_target)
    client = aioredis.Redis.from_url(REDIS_URL)
    checkpoint_key = f"{prefix_of(redis_target)}:relay:relay"

    async def wait_for_checkpoint(position: int) -> None:
        deadline = time.monotonic() + 60
        while int(await client.get(checkpoint_key) or 0) < position:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"the relay did not reach position {position} within 60 s"
            await asyncio.sleep(0.01)

    try:
        await wait_for_checkpoint(10)
        async with agentfold.connect(source_url) as source:
            await fill(source, 5)  # appended after the relay caught up: it follows
        await wait_for_checkpoint(15)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        await client.aclose()
    assert process.returncode == 0, err
    assert "checkpoint 15" in out
    async with agentfold.connect(source_url) as source:
        assert await relayed(redis_target) == await source_events(source)


def test_relay_command_reports_bad_urls_without_the_password() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RedisDurabilityWarning)
        process = start_relay("--from", "memory://", "--to", "redis://:hunter2@127.0.0.1:6379/0?colour=red", "--once")
        out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "colour" in err
    assert "hunter2" not in out + err


def test_cli_limits_match_the_relay() -> None:
    from agentfold.cli import relay as relay_command
    from agentfold.fanout import redis_relay

    assert relay_command.DEFAULT_BATCH_SIZE == redis_relay.DEFAULT_BATCH_SIZE
    assert relay_command.MAX_BATCH_SIZE == redis_relay.MAX_BATCH_SIZE
    assert relay_command.MAX_PARTITIONS == redis_relay.MAX_PARTITIONS
