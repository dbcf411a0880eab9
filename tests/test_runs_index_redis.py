"""On Redis the runs index is kept by its readers, a projector with its checkpoint: a reader opened later loads the
rows and folds only the events after their position; readers taking turns, one behind the other, never move the
kept position back and leave rows that are the fold of the whole log; a rebuild drops the kept rows and readers
that loaded them before start again from the new ones."""

from __future__ import annotations

from dataclasses import replace

import msgspec
import redis.asyncio as aioredis

import agentfold
from agentfold import runrows
from agentfold.runs_index import RedisRunsTable, RunsIndex, RunsQuery
from agentfold.store import EventStore
from tests.backends import REDIS_URL
from tests.test_runs_index_kept import RUNS, folded, stalled, write_randomly

QUERY = RunsQuery(limit=100, started_from_us=0)


def prefix_of(url: str) -> str:
    return url.rsplit("prefix=", 1)[1].split("&")[0]


async def kept_position(url: str) -> int | None:
    async with aioredis.Redis.from_url(REDIS_URL.split("?")[0]) as client:
        at = await client.get(f"{prefix_of(url)}:runsindex:at")
    return None if at is None else int(at)


async def events_after(store: EventStore, position: int) -> int:
    return sum([1 async for _ in store.read_all(after_position=position)])


async def assert_is_the_fold(store: EventStore, index: RunsIndex) -> None:
    """The index's rows and workers are what folding the whole log gives."""
    expected = await folded(store)
    shown = {run_id: replace(row, stalled=stalled(row, expected)) for run_id, row in expected.runs.items()}
    assert await index.runs(RUNS, at_us=0) == shown
    assert isinstance(index.table, RedisRunsTable)
    assert index.table.rows.workers == expected.workers
    counted: dict[str, int] = {}
    for row in shown.values():
        counted[row.shown_status] = counted.get(row.shown_status, 0) + 1
    page = await index.page(QUERY, at_us=0)
    assert {status: count for status, count in page.counts.items() if count} == counted


async def fold_until(index: RunsIndex, limit: int) -> bool:
    """What `catch_up` does, stopped at position `limit`: fold the events up to it, then keep the rows."""
    assert isinstance(index.table, RedisRunsTable)
    async for page in index.store.read_all_pages(after_position=index.position):
        chosen = [event for event in page if event.position <= limit]
        if chosen:
            index.table.update(chosen)
            index.position = chosen[-1].position
        if len(chosen) < len(page):
            break
    return await index.table.save(index.position)


async def test_a_reader_loads_the_kept_rows_and_folds_only_the_events_after_them(redis_target: str) -> None:
    async with agentfold.connect(redis_target) as store:
        await write_randomly(store, seed=31)
        async with RunsIndex(store, redis_target) as first:
            assert first.kept_in_store and not first.kept_by_store
            assert first.position == 0
            assert await first.catch_up() == await store.head_position()
        kept = await kept_position(redis_target)
        assert kept == await store.head_position()
        await write_randomly(store, seed=32)
        since = await events_after(store, kept)
        assert since > 0
        async with RunsIndex(store, redis_target) as second:
            assert second.position == kept
            assert await second.catch_up() == since
            await assert_is_the_fold(store, second)
            page = await second.page(QUERY, at_us=0)
            assert await second.catch_up() == 0
        assert await kept_position(redis_target) == await store.head_position()
        async with RunsIndex(store, redis_target) as rebuilt:
            assert await rebuilt.rebuild() == len((await folded(store)).runs)
            assert await rebuilt.page(QUERY, at_us=0) == page


async def test_readers_in_turns_never_move_the_kept_position_back(redis_target: str) -> None:
    async with (
        agentfold.connect(redis_target) as store,
        RunsIndex(store, redis_target) as behind,
        RunsIndex(store, redis_target) as ahead,
    ):
        kept: list[int | None] = []
        await write_randomly(store, seed=41)
        first = await store.head_position()
        assert await fold_until(behind, first)
        kept.append(await kept_position(redis_target))
        await write_randomly(store, seed=42)
        assert await ahead.catch_up() == await store.head_position()  # it opened before anything was kept
        second = await store.head_position()
        kept.append(await kept_position(redis_target))
        await write_randomly(store, seed=43)
        assert await fold_until(behind, (first + second) // 2)  # behind the kept rows: writes nothing
        kept.append(await kept_position(redis_target))
        await ahead.catch_up()
        kept.append(await kept_position(redis_target))
        await write_randomly(store, seed=44)
        await behind.catch_up()  # writes what it changed since it last wrote, which covers what the kept rows lack
        kept.append(await kept_position(redis_target))
        await ahead.catch_up()
        kept.append(await kept_position(redis_target))
        assert kept == [first, second, second, kept[3], kept[4], kept[4]]
        assert kept[3] is not None and kept[4] is not None and second < kept[3] < kept[4]
        assert kept[4] == await store.head_position()
        for index in (behind, ahead):
            await assert_is_the_fold(store, index)
        async with RunsIndex(store, redis_target) as third:
            assert third.position == kept[4]
            assert await third.catch_up() == 0
            await assert_is_the_fold(store, third)


async def test_a_rebuild_replaces_damaged_rows_and_earlier_readers_reload(redis_target: str) -> None:
    prefix = prefix_of(redis_target)
    async with agentfold.connect(redis_target) as store, RunsIndex(store, redis_target) as earlier:
        await write_randomly(store, seed=51)
        await earlier.catch_up()
        ghost = runrows.RunRow("ghost", "w", "w", "Processing", 1, 1, "WorkflowStarted")
        async with aioredis.Redis.from_url(REDIS_URL.split("?")[0]) as client:
            assert await client.hdel(f"{prefix}:runsindex:rows", RUNS[0]) == 1
            encoded = msgspec.msgpack.encode(runrows.row_values(ghost))
            await client.hset(f"{prefix}:runsindex:rows", "ghost", encoded)
        async with RunsIndex(store, redis_target) as damaged:
            assert await damaged.catch_up() == 0
            assert set(await damaged.runs([RUNS[0], "ghost"])) == {"ghost"}  # it trusts what is kept
        async with RunsIndex(store, redis_target) as rebuilding:
            runs = await rebuilding.rebuild()
        assert runs == len((await folded(store)).runs)
        assert await kept_position(redis_target) == await store.head_position()
        async with RunsIndex(store, redis_target) as later:
            assert await later.catch_up() == 0
            assert "ghost" not in await later.runs(["ghost"])
            await assert_is_the_fold(store, later)
        await write_randomly(store, seed=52)
        await earlier.catch_up()  # loaded before the rebuild: loads the new rows, folds on top and keeps them
        await assert_is_the_fold(store, earlier)
        assert await kept_position(redis_target) == await store.head_position()
        async with RunsIndex(store, redis_target) as last:
            assert await last.catch_up() == 0
            await assert_is_the_fold(store, last)
