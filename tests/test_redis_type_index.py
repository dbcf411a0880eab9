"""Redis's type indexes (``{prefix}:type:{type}``): the positions of every event of a type, which reads of the log
filtered by type read instead of scanning it.

What is checked: a read filtered by types (and by a stream prefix with them) returns exactly what the unfiltered
read filtered in Python returns, at several page sizes and from several positions, after many appends of many
types sent together, retries and refused appends (which add no position), trims (whose positions leave the
indexes), on a store written before the indexes existed (read through the log, then caught up when opened again),
with appends running during a catch-up, after `agentfold reindex` put damaged indexes right, and on a layout-1 store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold.errors import StoreCorrupted, WrongExpectedVersion
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

TYPES = [f"T{number}" for number in range(7)]
QUERIES: list[dict[str, Any]] = [
    {"types": ["T0"]},
    {"types": ["T1", "T3"]},
    {"types": ["T6", "T2", "T5", "T2"]},
    {"types": ["Beat"]},
    {"types": ["Absent"]},
    {"types": []},
    {"types": ["T1", "Absent", "Beat"]},
    {"types": ["T0", "T4"], "stream_prefix": "order-1"},
    {"types": ["T2"], "stream_prefix": "item-"},
    {"types": ["Beat"], "stream_prefix": "$worker-"},
]


def drop_type_indexes(prefix: str) -> None:
    """The keys as agentfold left them before it kept the type indexes."""
    with client() as redis_client:
        redis_client.delete(f"{prefix}:typesat", f"{prefix}:types", *index_keys(prefix, "type"))


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    yield from fresh_url(tmp_path)


async def write(store: EventStore, rounds: int, tag: str = "") -> None:
    """Appends of several events of several types to a few streams, sent together (one script call carries many),
    with retries and refused appends among them."""

    writers = asyncio.Semaphore(16)

    async def one(round_: int) -> None:
        async with writers:
            await append(round_)

    async def append(round_: int) -> None:
        events = [NewEvent(TYPES[(round_ * 3 + i) % len(TYPES)], {"n": round_, "i": i}) for i in range(1 + round_ % 4)]
        stream = f"order-{tag}{round_ % 5}" if round_ % 3 else f"item-{tag}{round_ % 2}"
        first = await store.append(stream, events)
        assert await store.append(stream, events) == first  # a retry: nothing written, no position added
        with pytest.raises(WrongExpectedVersion):
            await store.append(stream, [NewEvent("T0", {"refused": True})], expected_version=first.version + 10_000)
        if round_ % 4 == 0:
            await store.append(f"$worker-{tag}{round_ % 3}", [NewEvent("Beat", {"n": round_})])

    await asyncio.gather(*(one(round_) for round_ in range(rounds)))


def assert_indexed(prefix: str, everything: list[RecordedEvent]) -> None:
    """Each type index holds exactly the positions of the type's events, and no other type has one."""
    kinds = sorted({event.type for event in everything})
    assert index_keys(prefix, "type") == [f"{prefix}:type:{kind}" for kind in kinds]
    for kind in kinds:
        assert indexed_positions(prefix, "type", kind) == [event.position for event in everything if event.type == kind]


async def test_appends_keep_the_index_of_their_types_as_of_the_head(redis_url: str) -> None:
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await write(store, 60)
        everything = await assert_exact(store, QUERIES)
        assert index_mark(prefix, "typesat") == await store.head_position() == len(everything)
        assert_indexed(prefix, everything)
        with client() as redis_client:
            assert {member.decode() for member in redis_client.smembers(f"{prefix}:types")} == set(
                index_keys(prefix, "type")
            )


async def test_a_page_never_claims_a_position_a_later_match_falls_at_or_below(redis_url: str) -> None:
    """The backend's page: at most `limit` events, and every event of the types up to the position scanned."""
    async with agentfold.connect(redis_url) as store:
        await write(store, 30)
        everything = [event async for event in store.read_all()]
        for types in (("T0",), ("T1", "T5"), ("T2", "T3", "T4", "Beat")):
            for limit in (1, 2, 7):
                after = 0
                while after < everything[-1].position:
                    page, scanned = await store.backend.read_all_page(after, limit, types, None)
                    assert len(page) <= limit and scanned > after
                    expected = [event for event in everything if after < event.position <= scanned]
                    assert page == [event for event in expected if event.type in types]
                    after = scanned


async def test_a_store_written_before_the_indexes_is_read_exactly_then_indexed_when_opened(redis_url: str) -> None:
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await write(store, 30)
        drop_type_indexes(prefix)
        await assert_exact(store, QUERIES)
        await write(store, 10, "x")  # behind the head: these appends keep no index
        assert index_keys(prefix, "type") == [] and index_mark(prefix, "typesat") is None
        await assert_exact(store, QUERIES)
    async with agentfold.connect(redis_url) as store:
        head = await store.head_position()
        assert index_mark(prefix, "typesat") == head  # caught up when opened
        everything = await assert_exact(store, QUERIES)
        assert_indexed(prefix, everything)
        written = await store.append("order-9", [NewEvent("T3", {})])
        assert (
            index_mark(prefix, "typesat") == head + 1
            and indexed_positions(prefix, "type", "T3")[-1] == written.position
        )
        assert_indexed(prefix, await assert_exact(store, QUERIES))


async def test_appends_that_kept_no_index_leave_it_behind_and_a_catch_up_brings_it_on(redis_url: str) -> None:
    """Appends that wrote events but no index entries (as an older agentfold's do: ``typesat`` and the entries put
    back as they were before them): reads use the indexes up to ``typesat`` and the log after it."""
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await write(store, 20)
        behind = index_mark(prefix, "typesat")
        kept = [f"{prefix}:typesat", f"{prefix}:types", *index_keys(prefix, "type")]
        with put_back(kept):  # as if an older agentfold had appended those
            await write(store, 20, "y")
        await write(store, 5, "z")  # keeps nothing: the indexes are behind the head
        assert index_mark(prefix, "typesat") == behind
        await assert_exact(store, QUERIES)
        assert await store.backend.catch_up_type_indexes()  # type: ignore[attr-defined]
        assert index_mark(prefix, "typesat") == await store.head_position()
        await write(store, 5, "w")
        assert_indexed(prefix, await assert_exact(store, QUERIES))


async def test_appends_during_a_catch_up_are_indexed_once_it_is_done(redis_url: str) -> None:
    """A catch-up runs a page at a time while another store keeps appending: no position is lost or doubled."""
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await write(store, 200)  # several pages of the global stream
        drop_type_indexes(prefix)
        async with agentfold.connect(redis_url) as other:
            drop_type_indexes(prefix)  # `other` caught up when opened: behind again
            writing = asyncio.create_task(write(other, 60, "c"))
            caught_up = [await store.backend.catch_up_type_indexes() for _ in range(3)]  # type: ignore[attr-defined]
            await writing
        assert await store.backend.catch_up_type_indexes()  # type: ignore[attr-defined]
        assert caught_up[-1] or index_mark(prefix, "typesat") is not None
        assert index_mark(prefix, "typesat") == await store.head_position()
        await write(store, 5, "d")
        assert_indexed(prefix, await assert_exact(store, QUERIES))


async def test_trimmed_positions_leave_the_indexes(redis_url: str) -> None:
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await write(store, 40)
        for stream in ("order-1", "item-0"):
            version = await store.stream_version(stream)
            assert await store.trim_stream(stream, version - 1) == version - 2
        everything = await assert_exact(store, QUERIES)
        assert_indexed(prefix, everything)


def test_reindex_puts_damaged_indexes_right(redis_url: str) -> None:
    prefix = prefix_of(redis_url)

    async def fill() -> None:
        async with agentfold.connect(redis_url) as store:
            await write(store, 20)

    async def check() -> list[RecordedEvent]:
        async with agentfold.connect(redis_url) as store:
            return await assert_exact(store, QUERIES)

    asyncio.run(fill())
    with client() as redis_client:  # an entry gone, one for an event of another type, a stray index
        first = indexed_positions(prefix, "type", "T0")[0]
        redis_client.xdel(f"{prefix}:type:T0", f"0-{first}")
        redis_client.xadd(f"{prefix}:type:T1", {"p": ""}, id="0-999999")
        redis_client.sadd(f"{prefix}:types", f"{prefix}:type:Stray")
        redis_client.xadd(f"{prefix}:type:Stray", {"p": ""}, id="0-1")

    ok_json("reindex", "--json", "--store", redis_url)

    everything = asyncio.run(check())
    assert_indexed(prefix, everything)
    assert index_mark(prefix, "typesat") == len(everything)


async def test_a_layout_1_store_gets_its_type_indexes_and_trims_them(redis_url: str) -> None:
    """A store created before layout 2 (each stream a Redis stream) is indexed like any other when opened."""
    prefix = prefix_of(redis_url)
    history = [("order-1", "T0"), ("order-2", "T1"), ("order-1", "T1"), ("order-1", "T\u00e9"), ("order-2", "T0")]
    write_layout_1_store(prefix, history)
    async with agentfold.connect(redis_url) as store:
        assert index_mark(prefix, "typesat") == 5 and indexed_positions(prefix, "type", "T0") == [1, 5]
        await store.append("order-1", [NewEvent("T0", {})], 3)
        assert await store.trim_stream("order-1", 3) == 2
        everything = await assert_exact(store, QUERIES)
        assert [event.position for event in everything] == [2, 4, 5, 6]
        assert_indexed(prefix, everything)
        with client() as redis_client:
            assert redis_client.type(f"{prefix}:s:order-1") == b"stream"


async def test_a_type_index_key_of_another_type_refuses_the_appends_that_write_to_it(redis_url: str) -> None:
    prefix = prefix_of(redis_url)
    async with agentfold.connect(redis_url) as store:
        await store.append("order-1", [NewEvent("T0", {})])
        with client() as redis_client:
            redis_client.delete(f"{prefix}:type:T0")
            redis_client.set(f"{prefix}:type:T0", "not an index")
        with pytest.raises(StoreCorrupted):
            await store.append("order-2", [NewEvent("T1", {}), NewEvent("T0", {})])
        assert await store.stream_version("order-2") == 0 and await store.head_position() == 1
        assert index_keys(prefix, "type") == [f"{prefix}:type:T0"]  # the refused append added no T1 index either
        with client() as redis_client:
            redis_client.delete(f"{prefix}:type:T0")
        await store.rebuild_open_runs()
        await store.append("order-2", [NewEvent("T1", {}), NewEvent("T0", {})])
        assert_indexed(prefix, await assert_exact(store, QUERIES))
