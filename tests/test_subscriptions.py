"""Catch-up subscriptions and durable named subscribers, on every backend."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import agentfold
from agentfold import NewEvent
from agentfold.errors import InvalidInput
from agentfold.store import EventStore

ROOT = Path(__file__).resolve().parent.parent


def batch(count: int, event_type: str = "Happened") -> list[NewEvent]:
    return [NewEvent(event_type, {"n": index}) for index in range(count)]


async def take(subscription: agentfold.subscription.Subscription, count: int) -> list[agentfold.RecordedEvent]:
    taken = []
    async for event in subscription:
        taken.append(event)
        if len(taken) == count:
            break
    return taken


async def test_history_then_live_without_gap_or_repeat_while_writers_append(store: EventStore) -> None:
    for index in range(10):
        await store.append(f"s-{index % 3}", batch(5))

    async def writers() -> None:
        for index in range(40):
            await store.append(f"s-{index % 4}", batch(1 + index % 4))

    total = 50 + sum(1 + index % 4 for index in range(40))
    async with store.subscribe(after_position=0, page_size=7) as subscription:
        writing = asyncio.create_task(writers())
        received = await asyncio.wait_for(take(subscription, total), 60)
        await writing
    stored = [event async for event in store.read_all()]
    assert [event.position for event in received] == [event.position for event in stored]
    assert [event.id for event in received] == [event.id for event in stored]


async def test_filters_by_type_and_stream_prefix(store: EventStore) -> None:
    await store.append("order-1", batch(3, "OrderPlaced"))
    await store.append("user-1", batch(3, "OrderPaid"))
    await store.append("order-2", batch(2, "OrderPaid"))
    async with store.subscribe(types=["OrderPaid"], stream_prefix="order-", page_size=2) as subscription:
        first = await asyncio.wait_for(take(subscription, 2), 30)
        assert [(event.stream_id, event.type) for event in first] == [("order-2", "OrderPaid")] * 2
        await store.append("order-3", batch(1, "OrderPaid"))
        await store.append("order-3", batch(1, "OrderPlaced"))
        await store.append("order-4", batch(1, "OrderPaid"))
        live = await asyncio.wait_for(take(subscription, 2), 30)
        assert [event.stream_id for event in live] == ["order-3", "order-4"]


async def test_starts_after_a_given_position(store: EventStore) -> None:
    await store.append("s", batch(10))
    fifth = [event async for event in store.read_all()][4]
    async with store.subscribe(after_position=fifth.position) as subscription:
        rest = await asyncio.wait_for(take(subscription, 5), 30)
    assert [event.version for event in rest] == [6, 7, 8, 9, 10]


async def test_named_subscriber_resumes_after_last_acknowledged_position(store_url: str) -> None:
    async with agentfold.connect(store_url) as store:
        await store.append("s", batch(20))
        async with store.subscribe(name="emailer") as subscription:
            first = await asyncio.wait_for(take(subscription, 8), 30)
            await subscription.ack(first[5])
        assert await store.load_checkpoint("emailer") == first[5].position
        async with store.subscribe(name="emailer") as subscription:
            again = await asyncio.wait_for(take(subscription, 14), 30)
            assert [event.version for event in again] == list(range(7, 21))
            await subscription.ack()
        async with store.subscribe(name="other") as subscription:
            assert (await asyncio.wait_for(take(subscription, 1), 30))[0].version == 1


async def test_ack_moves_past_filtered_out_events(store: EventStore) -> None:
    await store.append("a", batch(1, "Wanted"))
    await store.append("b", batch(5, "Noise"))
    async with store.subscribe(types=["Wanted"], name="picky") as subscription:
        await asyncio.wait_for(take(subscription, 1), 30)
        waiting = asyncio.create_task(take(subscription, 1))
        await asyncio.sleep(0.1)
        await subscription.ack()
        assert await store.load_checkpoint("picky") == await store.head_position()
        await store.append("a", batch(1, "Wanted"))
        assert (await asyncio.wait_for(waiting, 30))[0].stream_id == "a"


async def test_close_ends_a_waiting_iteration(store: EventStore) -> None:
    subscription = await store.subscribe().start()
    waiting = asyncio.create_task(take(subscription, 1))
    await asyncio.sleep(0.05)
    await subscription.close()
    assert await asyncio.wait_for(waiting, 10) == []


async def test_a_slow_consumer_holds_at_most_one_page(store: EventStore) -> None:
    await store.append("s", batch(500))
    async with store.subscribe(page_size=50) as subscription:
        await asyncio.wait_for(take(subscription, 1), 30)
        # private: the read-ahead buffer's size is the bound under test
        assert len(subscription._buffer) <= 50
        assert await store.append("s", batch(1))


async def test_bad_subscription_arguments_are_refused(store: EventStore) -> None:
    with pytest.raises(InvalidInput):
        store.subscribe(after_position=-1)
    with pytest.raises(InvalidInput):
        store.subscribe(types="Single")
    with pytest.raises(InvalidInput):
        store.subscribe(name="")
    with pytest.raises(InvalidInput):
        await store.save_checkpoint("x", -3)


async def test_live_events_from_another_process(durable_url: str) -> None:
    async with agentfold.connect(durable_url) as store:
        async with store.subscribe() as subscription:
            writer = subprocess.Popen(
                [sys.executable, "-m", "tests.procs", "writer", durable_url, "remote", "25", "1", "4"],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                env={**os.environ},
            )
            try:
                received = await asyncio.wait_for(take(subscription, 100), 120)
            finally:
                writer.wait(timeout=60)
        assert len({event.id for event in received}) == 100
        assert [event.position for event in received] == sorted(event.position for event in received)
