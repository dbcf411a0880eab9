"""Redis's category indexes (`agentfold.backends.redis.indexed_category`): the positions of agentfold's own
streams' categories (``$worker-``, ...), which filtered reads of those categories read instead of the log.

What is checked: a filtered read by such a category (and by types within it) returns exactly what the unfiltered
read filtered in Python returns, on a store written before the indexes existed (before and after it is opened
again, which catches them up), after appends that kept no index (as an older agentfold's do), after trims, after
`agentfold reindex` put a damaged index right, and on a layout-1 store; an index key of another type refuses the
appends that would write to it, writing nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold.errors import StoreCorrupted
from agentfold.events import NewEvent, RecordedEvent
from agentfold.store import EventStore
from tests.redis_indexes import (
    assert_exact,
    client,
    fresh_url,
    index_keys,
    index_mark,
    indexed_positions,
    prefix_of,
    put_back,
    write_layout_1_store,
)
from tests.test_cli import ok_json

QUERIES: list[dict[str, Any]] = [
    {"stream_prefix": "$worker-"},
    {"stream_prefix": "$worker-b"},
    {"types": ["Beat"], "stream_prefix": "$worker-"},
    {"types": ["Stopped", "Nothing"], "stream_prefix": "$worker-a"},
    {"stream_prefix": "$breaker-"},
    {"stream_prefix": "$w"},
    {"types": ["Beat"]},
]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    yield from fresh_url(tmp_path)


async def write(store: EventStore, rounds: int, tag: str = "") -> None:
    """Domain events with heartbeats of two workers and a breaker's events among them."""
    for round_ in range(rounds):
        await store.append(f"order-{tag}{round_ % 3}", [NewEvent("Placed", {"n": round_})] * 1)
        await store.append(f"order-{tag}{round_ % 3}", [NewEvent("Beat", {"n": round_}), NewEvent("Paid", {})])
        await store.append(f"$worker-a{tag}", [NewEvent("Beat", {"n": round_})])
        if round_ % 2:
            await store.append(f"$worker-b{tag}", [NewEvent("Beat", {}), NewEvent("Stopped", {"n": round_})])
        if round_ % 5 == 0:
            await store.append(f"$breaker-x{tag}", [NewEvent("Opened", {"n": round_})])


def worker_positions(everything: list[RecordedEvent]) -> list[int]:
    return [event.position for event in everything if event.stream_id.startswith("$worker-")]


async def test_appends_keep_the_index_of_their_category_as_of_the_head(redis_url: str) -> None:
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await write(store, 12)
        everything = await assert_exact(store, QUERIES)
        assert index_mark(prefix, "catsat") == await store.head_position()
        assert indexed_positions(prefix, "cat", "$worker-") == worker_positions(everything)
        assert index_keys(prefix, "cat") == [f"{prefix}:cat:$breaker-", f"{prefix}:cat:$worker-"]  # none for order-


async def test_a_store_written_before_the_indexes_is_read_exactly_then_indexed_when_opened(redis_url: str) -> None:
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await write(store, 10)
        with client() as redis_client:  # the keys as agentfold left them before it kept the indexes
            redis_client.delete(f"{prefix}:catsat", f"{prefix}:cats", *index_keys(prefix, "cat"))
        await assert_exact(store, QUERIES)
        await write(store, 4, "x")  # behind the head: these appends keep no index
        assert index_keys(prefix, "cat") == [] and index_mark(prefix, "catsat") is None
        await assert_exact(store, QUERIES)
    async with agentfold.connect(redis_url) as store:
        head = await store.head_position()
        assert index_mark(prefix, "catsat") == head  # caught up when opened
        everything = await assert_exact(store, QUERIES)
        assert indexed_positions(prefix, "cat", "$worker-") == worker_positions(everything)
        written = await store.append("$worker-a", [NewEvent("Beat", {})])
        assert (
            index_mark(prefix, "catsat") == head + 1
            and indexed_positions(prefix, "cat", "$worker-")[-1] == written.position
        )
        await assert_exact(store, QUERIES)


async def test_appends_that_kept_no_index_leave_it_behind_and_a_catch_up_brings_it_on(redis_url: str) -> None:
    """Appends that wrote events but no index entries (as an older agentfold's do: ``catsat`` and the entries put
    back as they were before them): reads use the index up to ``catsat`` and the log after it, and a catch-up adds
    the rest, after which appends keep the index again."""
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await write(store, 6)
        behind = index_mark(prefix, "catsat")
        kept = [f"{prefix}:catsat", f"{prefix}:cats", *index_keys(prefix, "cat")]
        with put_back(kept):  # as if an older agentfold had appended those
            await write(store, 6, "y")
        await write(store, 2, "z")  # keeps nothing: the index is behind the head
        assert index_mark(prefix, "catsat") == behind
        everything = await assert_exact(store, QUERIES)
        assert await store.backend.catch_up_category_indexes()  # type: ignore[attr-defined]
        assert index_mark(prefix, "catsat") == await store.head_position()
        assert indexed_positions(prefix, "cat", "$worker-") == worker_positions(everything)
        await write(store, 2, "w")
        everything = await assert_exact(store, QUERIES)
        assert indexed_positions(prefix, "cat", "$worker-") == worker_positions(everything)


async def test_trimmed_positions_leave_the_index(redis_url: str) -> None:
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await write(store, 12)
        assert await store.trim_stream("$worker-a", 10) == 9
        assert await store.trim_stream("$worker-b", 5) == 4
        everything = await assert_exact(store, QUERIES)
        assert indexed_positions(prefix, "cat", "$worker-") == worker_positions(everything)
        assert len(worker_positions(everything)) == 3 + 8


def test_reindex_puts_a_damaged_index_right(redis_url: str) -> None:
    prefix = prefix_of(redis_url)

    async def fill() -> None:
        async with agentfold.connect(redis_url) as store:
            await write(store, 9)

    async def check() -> list[RecordedEvent]:
        async with agentfold.connect(redis_url) as store:
            return await assert_exact(store, QUERIES)

    asyncio.run(fill())
    with client() as redis_client:  # an entry gone, one for an event of another category, a stray index
        first = indexed_positions(prefix, "cat", "$worker-")[0]
        redis_client.xdel(f"{prefix}:cat:$worker-", f"0-{first}")
        redis_client.xadd(f"{prefix}:cat:$breaker-", {"p": ""}, id="0-999999")
        redis_client.sadd(f"{prefix}:cats", f"{prefix}:cat:$stray-")
        redis_client.xadd(f"{prefix}:cat:$stray-", {"p": ""}, id="0-1")

    done = ok_json("reindex", "--json", "--store", redis_url)

    assert done["open_runs"] == 0
    everything = asyncio.run(check())
    assert indexed_positions(prefix, "cat", "$worker-") == worker_positions(everything)
    breakers = [event.position for event in everything if event.stream_id.startswith("$breaker-")]
    assert indexed_positions(prefix, "cat", "$breaker-") == breakers
    assert index_keys(prefix, "cat") == [f"{prefix}:cat:$breaker-", f"{prefix}:cat:$worker-"]
    assert index_mark(prefix, "catsat") == len(everything)


async def test_a_layout_1_store_gets_its_indexes_and_trims_them(redis_url: str) -> None:
    """A store created before layout 2 (each stream a Redis stream) is indexed like any other when opened."""
    prefix = prefix_of(redis_url)
    history = [("$worker-a", "Beat"), ("order-1", "Placed"), ("$worker-a", "Beat"), ("$worker-b", "Stopped")]
    write_layout_1_store(prefix, history)
    async with agentfold.connect(redis_url) as store:
        assert index_mark(prefix, "catsat") == 4 and indexed_positions(prefix, "cat", "$worker-") == [1, 3, 4]
        await store.append("$worker-a", [NewEvent("Beat", {})], 2)
        assert await store.trim_stream("$worker-a", 3) == 2
        everything = await assert_exact(store, QUERIES)
        assert indexed_positions(prefix, "cat", "$worker-") == worker_positions(everything) == [4, 5]
        with client() as redis_client:
            assert redis_client.type(f"{prefix}:s:$worker-a") == b"stream"


async def test_an_index_key_of_another_type_refuses_the_appends_that_write_to_it(redis_url: str) -> None:
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await store.append("$worker-a", [NewEvent("Beat", {})])
        with client() as redis_client:
            redis_client.delete(f"{prefix}:cat:$worker-")
            redis_client.set(f"{prefix}:cat:$worker-", "not an index")
        with pytest.raises(StoreCorrupted):
            await store.append("$worker-b", [NewEvent("Beat", {})])
        assert await store.stream_version("$worker-b") == 0
        assert (await store.append("order-1", [NewEvent("Placed", {})])).position == 2
        with client() as redis_client:
            redis_client.delete(f"{prefix}:cat:$worker-")
        await store.rebuild_open_runs()
        await store.append("$worker-b", [NewEvent("Beat", {})])
        everything = await assert_exact(store, QUERIES)
        assert indexed_positions(prefix, "cat", "$worker-") == worker_positions(everything) == [1, 3]


async def test_an_index_holding_positions_past_the_head_refuses_its_appends_until_reindexed(redis_url: str) -> None:
    """An index whose stream ids went past the positions indexed (no agentfold writes that; edited by hand) would
    refuse the entry an append adds to it half-way through the append: the script finds it before it writes."""
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await store.append("$worker-a", [NewEvent("Beat", {})])
        with client() as redis_client:
            redis_client.xadd(f"{prefix}:cat:$worker-", {"p": ""}, id="0-50")
        with pytest.raises(StoreCorrupted, match="reindex"):
            await store.append("$worker-a", [NewEvent("Beat", {})])
        assert await store.stream_version("$worker-a") == 1 and await store.head_position() == 1
        await store.rebuild_open_runs()
        await store.append("$worker-a", [NewEvent("Beat", {})])
        everything = await assert_exact(store, QUERIES)
        assert indexed_positions(prefix, "cat", "$worker-") == worker_positions(everything) == [1, 2]
