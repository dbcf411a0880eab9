"""Delivery figures: how long an appended event takes to reach a subscriber, and how fast a group drains a backlog.

For durable backends the subscriber runs in another process (`python -m agentfold.bench.delivery URL COUNT`), so the
figure includes the cross-process wake-up (NOTIFY, XREAD BLOCK, SQLite's poll). Both processes stamp times with the
same system clock.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import agentfold
from agentfold import NewEvent, RecordedEvent
from agentfold.store import EventStore

Figures = dict[str, float]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def counting_handler(events: int) -> tuple[Callable[[RecordedEvent], Awaitable[None]], asyncio.Event]:
    """A group handler that counts the events it is given, and the event it sets once it has counted `events`."""
    handled = 0
    done = asyncio.Event()

    async def handle(event: RecordedEvent) -> None:
        nonlocal handled
        handled += 1
        if handled >= events:
            done.set()

    return handle, done


async def _probe(url: str, count: int) -> None:
    """Subscribe and print `position received_ns` for `count` events of type LatencyProbe."""
    async with agentfold.connect(url) as store:
        head = await store.head_position()
        async with store.subscribe(after_position=head, types=["LatencyProbe"]) as subscription:
            print("READY", flush=True)
            received = 0
            async for event in subscription:
                print(event.position, time.time_ns(), flush=True)
                received += 1
                if received == count:
                    return


async def measure_latency(url: str, store: EventStore, count: int = 300, gap_seconds: float = 0.003) -> Figures:
    """Append-to-delivery latency in ms (p50, p99): appends one at a time, a subscriber elsewhere receives them."""
    sent: dict[int, int] = {}

    async def send() -> None:
        """Append the probes one at a time, noting when each append began."""
        for index in range(count):
            started = time.time_ns()
            result = await store.append("latency", [NewEvent("LatencyProbe", {"n": index})])
            sent[result.position] = started
            await asyncio.sleep(gap_seconds)

    if url.startswith("memory://"):
        received: dict[int, int] = {}

        async def subscriber() -> None:
            async with store.subscribe(after_position=await store.head_position(), types=["LatencyProbe"]) as sub:
                async for event in sub:
                    received[event.position] = time.time_ns()
                    if len(received) == count:
                        return

        task = asyncio.create_task(subscriber())
        await asyncio.sleep(0.05)
        await send()
        await asyncio.wait_for(task, 60)
    else:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentfold.bench.delivery",
            url,
            str(count),
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        assert (await asyncio.wait_for(process.stdout.readline(), 60)).strip() == b"READY"
        await send()
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        received = {int(line.split()[0]): int(line.split()[1]) for line in output.decode().splitlines() if line}
    latencies = [(received[position] - started) / 1e6 for position, started in sent.items()]
    return {
        "delivery_latency_p50_ms": statistics.median(latencies),
        "delivery_latency_p99_ms": _percentile(latencies, 0.99),
    }


async def measure_group(url: str, store: EventStore, events: int = 6000, streams: int = 60) -> Figures:
    """Events/s a 3-member consumer group delivers while draining a backlog (members in this process).

    On Redis, also the Redis-native group on relayed partition streams (`measure_redis_native_group`).
    """
    for start in range(0, events, 500):
        await asyncio.gather(
            *(
                store.append(f"work-{(start + offset) % streams}", [NewEvent("Job", {"n": start + offset})])
                for offset in range(min(500, events - start))
            )
        )
    figures: Figures = {}
    if url.startswith("redis://"):
        figures.update(await measure_redis_native_group(url, store, events))
    handle, done = counting_handler(events)
    stores: list[Any] = [store] if url.startswith("memory://") else [await agentfold.connect(url) for _ in range(3)]
    members = [
        (stores[index % len(stores)]).consumer_group("bench", handle, member_id=f"m{index}", partitions=12)
        for index in range(3)
    ]
    started = time.perf_counter()
    async with members[0], members[1], members[2]:
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - started
    if not url.startswith("memory://"):
        for opened in stores:
            await opened.close()
    figures["group_3_members_events_per_s"] = events / elapsed
    return figures


async def measure_redis_native_group(url: str, store: EventStore, events: int) -> Figures:
    """Events/s a 3-member Redis-native group delivers from relayed partition streams (see `native_group_rate`)."""
    return {"redis_native_group_events_per_s": await native_group_rate(store, url, events)}


async def native_group_rate(source: EventStore, url: str, events: int, partitions: int = 12) -> float:
    """Events/s three members of one Redis-native group deliver from `partitions` relayed partition streams.

    The members join first and settle their shares of the partitions (the partition count is declared by a relay
    run over an empty store); then the source's events are relayed to `url`, and the clock runs from the start of
    that relay to the last event handled. The relay's keys (``log``, ``partition:*``, ...) are apart from the
    store's, and the scratch prefix is dropped with everything under it.
    """
    from agentfold.fanout.redis_groups import redis_consumer_group
    from agentfold.fanout.redis_relay import relay

    async with agentfold.connect("memory://") as empty:
        await relay(empty, url, once=True, partitions=partitions, name="declare")
    handle, done = counting_handler(events)
    members = [
        redis_consumer_group(url, "bench", handle, member_id=f"m{index}", lease_seconds=1.5) for index in range(3)
    ]
    share = partitions // len(members)
    async with members[0], members[1], members[2]:
        async with asyncio.timeout(60):  # the members settle their shares by heartbeats (lease / 3)
            while True:
                if sorted(len(member.partitions) for member in members) == [share] * len(members):
                    break
                await asyncio.sleep(0.02)
        started = time.perf_counter()
        await relay(source, url, once=True, partitions=partitions, batch_size=2000)
        await asyncio.wait_for(done.wait(), 300)
        return events / (time.perf_counter() - started)


if __name__ == "__main__":
    asyncio.run(_probe(sys.argv[1], int(sys.argv[2])))
