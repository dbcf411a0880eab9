"""What only a shared PostgreSQL server can prove: gap-free global order under concurrent writers, push wake-ups that
survive a killed listener, migrations under concurrent openers, schema isolation, and driver errors arriving as typed,
retryable agentfold errors. Every test works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import agentfold

# private: _group_arguments/_PendingAppend build the store's own append call, run by hand to hold it open
from agentfold.backends.postgres import MIGRATIONS, PostgresStore, _group_arguments, _PendingAppend
from agentfold.encoding import EncodedEvent, encode_events
from agentfold.errors import (
    DuplicateEventId,
    InvalidEventData,
    InvalidURL,
    StoreTimeout,
    StoreUnavailable,
    WrongExpectedVersion,
)
from agentfold.events import ANY, NewEvent, RecordedEvent
from tests.backends import BACKENDS, PG_URL, Backend, require_service

POSTGRES: Backend = next(backend for backend in BACKENDS if backend.name == "postgres")
ADMIN_URL = PG_URL.split("?")[0]
CONDITION_BOUND = 60.0  # seconds a test waits for a condition before failing (a hang guard, not a speed check)


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    require_service(POSTGRES)
    url = POSTGRES.make_url(tmp_path)
    yield url
    POSTGRES.cleanup(url)


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = await agentfold.connect(pg_url)
    assert isinstance(store, PostgresStore)
    try:
        yield store
    finally:
        await store.close()


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&")[0]


async def admin() -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True)


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until `condition()` holds; fail naming `what` if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONDITION_BOUND
    while not await condition():
        if loop.time() > deadline:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.01)


async def read_all_list(store: agentfold.EventStore, after: int = 0) -> list[RecordedEvent]:
    return [event async for event in store.read_all(after)]


def events(count: int, kind: str = "Tick") -> list[NewEvent]:
    return [NewEvent(kind, {"n": number}) for number in range(count)]


# -- gap-free global order ----------------------------------------------------------------------------------------


async def test_readers_do_not_pass_an_open_append_transaction_and_see_it_once_it_commits(
    pg_url: str, pg_store: PostgresStore
) -> None:
    store = pg_store
    seed = await store.append("seed", events(1))
    head = seed.position
    held_events = encode_events([NewEvent("Held", {"holds": "the lower position"})])
    live: list[RecordedEvent] = []
    subscription = store.subscribe(after_position=head)

    async def follow() -> None:
        async for event in subscription:
            live.append(event)

    following = asyncio.create_task(follow())
    holder = await admin()
    try:
        # An append transaction exactly as the store runs it, held open before COMMIT: it owns position head + 1.
        await holder.execute("BEGIN")
        cursor = await holder.execute(
            # private: the store's own append statement, run by hand to hold its transaction open
            # private: one group is committed through the backend's own SQL to race it deterministically
            store.backend._sql["append_group"],
            # private: the store's own append statement, run by hand to hold its transaction open
            _group_arguments([_PendingAppend("held", held_events, ANY)], store.backend._channel),
        )
        assert await cursor.fetchall() == [(0, 1, head + 1)]

        # A later append from another store (another process, as far as the server knows) cannot take a position
        # while the lower one is uncommitted: it queues on the table lock instead of committing ahead of it.
        other = await agentfold.connect(pg_url)
        try:
            later = asyncio.create_task(other.append("later", [NewEvent("Later", {})]))

            async def later_is_waiting_on_the_lock() -> bool:
                async with await admin() as probe:
                    cursor = await probe.execute(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                        (f'"{schema_of(pg_url)}".events',),
                    )
                    row = await cursor.fetchone()
                    return bool(row and row[0] > 0)

            await eventually(later_is_waiting_on_the_lock, "the later append waits on the events table lock")
            assert not later.done()

            # Readers see nothing above the committed head: not the open position, not anything after it.
            assert await read_all_list(store, head) == []
            assert await store.head_position() == head
            # A tailing reader that waits for news and re-reads, and a live subscription, find nothing to pass.
            await store.wait_for_append(head, 0.2)
            assert await read_all_list(store, head) == []
            assert live == []

            await holder.execute("COMMIT")
            result = await asyncio.wait_for(later, CONDITION_BOUND)
        finally:
            await other.close()
    finally:
        await holder.close()

    assert result.position == head + 2
    delivered = await read_all_list(store, head)
    assert [(event.stream_id, event.position) for event in delivered] == [("held", head + 1), ("later", head + 2)]
    await eventually(lambda: _async_true(len(live) >= 2), "the subscription delivers both events")
    await subscription.close()
    await asyncio.wait_for(following, CONDITION_BOUND)
    assert [(event.stream_id, event.position) for event in live] == [("held", head + 1), ("later", head + 2)]


async def test_sixteen_writers_and_two_tailing_readers_see_every_event_once_in_order(pg_url: str) -> None:
    writer_stores = [await agentfold.connect(pg_url, pool_min=1, pool_max=2) for _ in range(8)]
    reader_store = await agentfold.connect(pg_url, pool_min=1, pool_max=2)
    assert isinstance(reader_store, PostgresStore)
    reader_store.page_size = 37  # many small pages: many chances to race the writers
    appends_per_writer = 40
    written: set[str] = set()
    writing = True

    async def writer(number: int) -> None:
        store = writer_stores[number % len(writer_stores)]
        for step in range(appends_per_writer):
            batch = [NewEvent("Wrote", {"writer": number, "step": step, "part": part}) for part in range(1 + step % 3)]
            await store.append(f"writer-{number}-{step % 4}", batch)
            written.update(str(event.id) for event in batch)

    async def tail() -> list[RecordedEvent]:
        seen: list[RecordedEvent] = []
        position = 0
        while True:
            page_found = False
            async for page in reader_store.read_all_pages(position):
                seen.extend(page)
                position = page[-1].position
                page_found = True
            if not page_found:
                if not writing and len(seen) >= len(written):
                    return seen
                await reader_store.wait_for_append(position, 0.5)

    try:
        readers = [asyncio.create_task(tail()) for _ in range(2)]
        await asyncio.gather(*(writer(number) for number in range(16)))
        writing = False
        seen_by_readers = await asyncio.wait_for(asyncio.gather(*readers), CONDITION_BOUND)
    finally:
        for store in [*writer_stores, reader_store]:
            await store.close()

    expected_total = sum(1 + step % 3 for step in range(appends_per_writer)) * 16
    assert len(written) == expected_total
    for seen in seen_by_readers:
        positions = [event.position for event in seen]
        assert all(earlier < later for earlier, later in itertools.pairwise(positions))
        assert len(seen) == len({str(event.id) for event in seen})
        assert {str(event.id) for event in seen} == written
        assert positions == list(range(1, expected_total + 1))


# -- LISTEN / NOTIFY ----------------------------------------------------------------------------------------------


async def test_a_notify_from_another_store_wakes_a_waiter(pg_url: str) -> None:
    waiter = await agentfold.connect(pg_url)
    writer = await agentfold.connect(pg_url)
    assert isinstance(waiter, PostgresStore)
    try:
        head = await waiter.head_position()
        await waiter.wait_for_append(head, 0.01)  # starts the listener
        # private: the LISTEN connection's state has no public view
        # private: the listener's state is what these tests are about; no public API exposes it
        await asyncio.wait_for(waiter.backend._listening.wait(), CONDITION_BOUND)
        waiting = asyncio.create_task(waiter.wait_for_append(head, 3600))
        await asyncio.sleep(0)
        await writer.append("pushed", [NewEvent("Pushed", {})])
        await asyncio.wait_for(waiting, CONDITION_BOUND)
        # private: the LISTEN connection's state has no public view
        assert waiter.backend._notifications >= 1
        assert [event.stream_id for event in await read_all_list(waiter, head)] == ["pushed"]
    finally:
        await waiter.close()
        await writer.close()


async def test_the_listener_reconnects_and_re_listens_after_its_connection_is_killed(pg_url: str) -> None:
    waiter = await agentfold.connect(pg_url)
    writer = await agentfold.connect(pg_url)
    assert isinstance(waiter, PostgresStore)
    try:
        await waiter.wait_for_append(0, 0.01)
        # private: the LISTEN connection's state has no public view
        await asyncio.wait_for(waiter.backend._listening.wait(), CONDITION_BOUND)
        # private: the LISTEN connection's state has no public view
        first_pid = waiter.backend._listener_backend_pid
        # private: the LISTEN connection's state has no public view
        connects = waiter.backend._listener_connects
        assert first_pid is not None

        # An append committed while the listener is down sends its NOTIFY to nobody; the waiter must still learn of
        # it, because the listener wakes waiters after it listens again and they re-read.
        waiting = asyncio.create_task(waiter.wait_for_append(0, 3600))
        async with await admin() as killer:
            await killer.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        await writer.append("while-down", [NewEvent("Missed", {})])
        await asyncio.wait_for(waiting, CONDITION_BOUND)
        assert [event.stream_id for event in await read_all_list(waiter)] == ["while-down"]

        async def listening_again() -> bool:
            # private: the LISTEN connection's state has no public view
            return waiter.backend._listener_connects > connects and waiter.backend._listening.is_set()

        await eventually(listening_again, "the listener connects and LISTENs again")
        # private: the LISTEN connection's state has no public view
        assert waiter.backend._listener_backend_pid not in (None, first_pid)

        # And pushes arrive on the new connection.
        head = await waiter.head_position()
        # private: the LISTEN connection's state has no public view
        notifications = waiter.backend._notifications
        waiting = asyncio.create_task(waiter.wait_for_append(head, 3600))
        await asyncio.sleep(0)
        await writer.append("after-reconnect", [NewEvent("Pushed", {})])
        await asyncio.wait_for(waiting, CONDITION_BOUND)
        await eventually(
            # private: the LISTEN connection's state has no public view
            lambda: _async_true(waiter.backend._notifications > notifications),
            "a NOTIFY arrives on the new connection",
        )
        assert [event.stream_id for event in await read_all_list(waiter, head)] == ["after-reconnect"]
    finally:
        await waiter.close()
        await writer.close()


async def _async_true(value: bool) -> bool:
    return value


# -- migrations and schemas ---------------------------------------------------------------------------------------


async def test_concurrent_openers_migrate_a_new_schema_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(agentfold.connect(pg_url, pool_min=0, pool_max=1) for _ in range(8)))
    try:
        results = await asyncio.gather(*(store.append(f"s{index}", events(1)) for index, store in enumerate(stores)))
        assert sorted(result.position for result in results) == list(range(1, 9))
    finally:
        for store in stores:
            await store.close()
    async with await admin() as connection:
        cursor = await connection.execute(
            f'SELECT version FROM "{schema_of(pg_url)}".schema_migrations ORDER BY version'
        )
        assert [row[0] for row in await cursor.fetchall()] == [migration.version for migration in MIGRATIONS]
    # Reopening an up-to-date schema changes nothing.
    async with agentfold.connect(pg_url) as store:
        assert await store.head_position() == 8


async def test_filtered_reads_can_be_served_by_the_indexes(pg_store: PostgresStore) -> None:
    await pg_store.append("order-1", [NewEvent("Paid", {})])
    statements = pg_store.backend._sql  # private: the backend's own statements, planned by hand
    parameters = {"after": 0, "limit": 10, "prefix": "order-", "types": ["Paid"], "category": "order-"}
    async with await admin() as connection:
        # A tiny table is read whole; the plans that matter are the ones the indexes allow.
        await connection.execute("SET enable_seqscan = off")
        plans = {}
        for name in ("read_all_types", "read_all_category"):
            cursor = await connection.execute(b"EXPLAIN " + statements[name], parameters)
            plans[name] = "\n".join(row[0] for row in await cursor.fetchall())
    assert "events_type_hash_position" in plans["read_all_types"]
    assert "events_category_hash_position" in plans["read_all_category"]


# Pairs whose `hashtext` is equal (found with `GROUP BY hashtext(t) HAVING count(*) > 1` over generated names): the
# filtered reads' indexes are keyed by these hashes, so each pair shares one range of an index.
COLLIDING_TYPES = ("Type19055", "Type55408")
COLLIDING_CATEGORIES = ("c52504-", "c258949-")


async def test_types_and_categories_whose_index_keys_collide_read_back_only_their_own_events(
    pg_store: PostgresStore,
) -> None:
    async with await admin() as connection:
        cursor = await connection.execute(
            "SELECT hashtext(%s) = hashtext(%s), hashtext(%s) = hashtext(%s)", (*COLLIDING_TYPES, *COLLIDING_CATEGORIES)
        )
        assert await cursor.fetchone() == (True, True)
    mine, other = COLLIDING_TYPES
    for index in range(12):  # interleaved, so every page of one meets the other's rows in its range
        await pg_store.append(
            f"{COLLIDING_CATEGORIES[index % 2]}{index}", [NewEvent(mine if index % 3 else other, {"i": index})]
        )
    for limit in (None, 1, 2, 5):
        for wanted in COLLIDING_TYPES:
            events = [event async for event in pg_store.read_all(types=[wanted], limit=limit)]
            expected = [index for index in range(12) if (mine if index % 3 else other) == wanted]
            assert [event.data["i"] for event in events] == expected[:limit]
        for parity, category in enumerate(COLLIDING_CATEGORIES):
            events = [event async for event in pg_store.read_all(stream_prefix=category, limit=limit)]
            assert [event.data["i"] for event in events] == [index for index in range(12) if index % 2 == parity][
                :limit
            ]
    for limit in (None, 1, 5):  # both asked for: one key, each event once
        events = [event async for event in pg_store.read_all(types=[mine, other], limit=limit)]
        assert [event.data["i"] for event in events] == list(range(12))[:limit]
    pages = [page async for page in pg_store.read_all_pages(types=[mine], limit=3)]
    assert [event.type for page in pages for event in page] == [mine] * 3


async def test_schemas_are_isolated(tmp_path: Path) -> None:
    require_service(POSTGRES)
    first_url, second_url = POSTGRES.make_url(tmp_path), POSTGRES.make_url(tmp_path)
    try:
        async with agentfold.connect(first_url) as first, agentfold.connect(second_url) as second:
            shared_id = uuid.uuid4()
            await first.append("orders-1", [NewEvent("Placed", {"in": "first"}, id=shared_id)])
            assert await second.head_position() == 0
            assert await second.stream_version("orders-1") == 0
            # The same stream and the same event id are free in the other schema.
            result = await second.append("orders-1", [NewEvent("Placed", {"in": "second"}, id=shared_id)], 0)
            assert result.position == 1
            assert [event.data for event in await read_all_list(first)] == [{"in": "first"}]
            assert [event.data for event in await read_all_list(second)] == [{"in": "second"}]
    finally:
        POSTGRES.cleanup(first_url)
        POSTGRES.cleanup(second_url)


@pytest.mark.parametrize("schema", ["", "1abc", "pg_catalog", "a-b", 'x"; DROP TABLE y; --', "a" * 64, "sp ace"])
async def test_bad_schema_names_are_refused(schema: str) -> None:
    with pytest.raises(InvalidURL, match="schema"):
        await agentfold.connect(f"{ADMIN_URL}?schema={schema}" if schema else ADMIN_URL, schema=schema)


async def test_unknown_and_bad_options_are_refused(pg_url: str) -> None:
    with pytest.raises(InvalidURL, match="colour"):
        await agentfold.connect(f"{pg_url}&colour=blue")
    with pytest.raises(InvalidURL, match="lock_timeout"):
        await agentfold.connect(pg_url, lock_timeout="soon")
    with pytest.raises(InvalidURL, match="pool_max"):
        await agentfold.connect(pg_url, pool_min=5, pool_max=2)


async def test_the_password_never_appears_in_errors() -> None:
    url = "postgresql://agentfold:s3cret-pw@127.0.0.1:1/nowhere?schema=nothing_here"
    with pytest.raises(StoreUnavailable) as caught:
        await agentfold.connect(url, connect_timeout=2)
    assert caught.value.retryable
    assert "s3cret-pw" not in str(caught.value)
    assert "***" in str(caught.value)


# -- timeouts and lost connections --------------------------------------------------------------------------------


async def test_a_lock_timeout_is_a_retryable_store_timeout_and_the_retry_writes_once(pg_url: str) -> None:
    async with agentfold.connect(pg_url, lock_timeout=0.2) as store:
        await store.append("seed", events(1))
        batch = events(2)
        async with await admin() as blocker:
            async with blocker.transaction():
                await blocker.execute(f'LOCK TABLE "{schema_of(pg_url)}".events IN EXCLUSIVE MODE')
                with pytest.raises(StoreTimeout, match="lock_timeout") as caught:
                    await store.append("timed-out", batch)
                assert caught.value.retryable
        first = await store.append("timed-out", batch)
        again = await store.append("timed-out", batch)
        assert first == again
        assert await store.stream_version("timed-out") == 2


async def test_a_statement_timeout_is_a_retryable_store_timeout(pg_url: str) -> None:
    async with agentfold.connect(pg_url, lock_timeout=60, statement_timeout=0.2) as store:
        await store.append("seed", events(1))
        async with await admin() as blocker:
            async with blocker.transaction():
                await blocker.execute(f'LOCK TABLE "{schema_of(pg_url)}".events IN EXCLUSIVE MODE')
                with pytest.raises(StoreTimeout, match="statement_timeout") as caught:
                    await store.append("slow", events(1))
                assert caught.value.retryable
        assert (await store.append("slow", events(1))).version == 1


async def test_a_terminated_backend_is_a_retryable_error_and_the_store_recovers(pg_url: str) -> None:
    application = f"agentfold-test-{uuid.uuid4().hex[:8]}"
    async with agentfold.connect(f"{pg_url}&application_name={application}", pool_min=1, pool_max=1) as store:
        await store.append("before", events(1))

        async def terminate_pool_connections() -> None:
            async with await admin() as killer:
                await killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    (application,),
                )

                async def all_gone() -> bool:
                    cursor = await killer.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
                    )
                    row = await cursor.fetchone()
                    return bool(row and row[0] == 0)

                await eventually(all_gone, "the terminated backends exit")

        await terminate_pool_connections()
        batch = events(3)
        with pytest.raises((StoreUnavailable, StoreTimeout)) as caught:
            await store.append("after", batch)
        assert caught.value.retryable
        result = await store.append("after", batch)  # the retry is safe: appends are idempotent
        assert result.version == 3
        assert await store.stream_version("after") == 3

        await terminate_pool_connections()
        with pytest.raises((StoreUnavailable, StoreTimeout)) as read_error:
            await store.head_position()
        assert read_error.value.retryable
        assert await store.head_position() == result.position


# -- group commit -------------------------------------------------------------------------------------------------


async def test_one_append_the_server_refuses_does_not_fail_the_others_in_its_group(pg_store: PostgresStore) -> None:
    store = pg_store
    refused = [EncodedEvent(str(uuid.uuid4()), "Broken", b'{"not": json', b"{}")]
    good = [encode_events(events(1)) for _ in range(5)]
    outcomes = await asyncio.gather(
        *(store.backend.append(f"good-{index}", batch, ANY) for index, batch in enumerate(good[:2])),
        store.backend.append("refused", refused, ANY),
        *(store.backend.append(f"good-{index}", batch, ANY) for index, batch in enumerate(good[2:], start=2)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], InvalidEventData)
    assert all(not isinstance(outcome, BaseException) for index, outcome in enumerate(outcomes) if index != 2)
    assert await store.stream_version("refused") == 0
    assert sorted(event.stream_id for event in await read_all_list(store)) == [f"good-{index}" for index in range(5)]


async def test_appends_in_one_group_see_each_other_in_order(pg_store: PostgresStore) -> None:
    store = pg_store
    shared = NewEvent("Shared", {})
    outcomes = await asyncio.gather(
        store.append("one", [NewEvent("First", {})], 0),
        store.append("one", [NewEvent("Second", {})], 1),
        store.append("one", [NewEvent("Stale", {})], 1),
        store.append("two", [shared]),
        store.append("two", [shared]),
        store.append("three", [shared]),
        return_exceptions=True,
    )
    assert [getattr(outcome, "version", None) for outcome in outcomes[:2]] == [1, 2]
    assert isinstance(outcomes[2], WrongExpectedVersion) and outcomes[2].actual == 2
    assert outcomes[3] == outcomes[4]
    assert isinstance(outcomes[5], DuplicateEventId)
    assert [event.type for event in await read_all_list(store)] == ["First", "Second", "Shared"]


# -- trimming -----------------------------------------------------------------------------------------------------


async def test_trimming_a_whole_stream_keeps_its_version_head_and_retries(pg_store: PostgresStore) -> None:
    store = pg_store
    batch = events(3)
    original = await store.append("trimmed", batch)
    assert await store.trim_stream("trimmed", 100) == 3
    assert await store.stream_version("trimmed") == 3
    assert await store.head_position() == original.position
    with pytest.raises(DuplicateEventId, match="trimmed"):  # the ids are known, their content is gone: refused
        await store.append("trimmed", batch)
    with pytest.raises(DuplicateEventId):
        await store.append("elsewhere", batch[:1])
    with pytest.raises(WrongExpectedVersion):
        await store.append("trimmed", events(1), 0)
    after = await store.append("trimmed", events(1), 3)
    assert (after.version, after.position) == (4, original.position + 1)
    assert [event.version for event in [event async for event in store.read_stream("trimmed")]] == [4]


# -- read models --------------------------------------------------------------------------------------------------


async def test_a_failing_read_model_update_leaves_neither_its_rows_nor_the_checkpoint(
    pg_url: str, pg_store: PostgresStore
) -> None:
    table = f'"{schema_of(pg_url)}".seen'
    # private: the read model's table lives in the store's database, reached through its pool
    # private: the schema's tables inspected on the backend's own pool
    async with pg_store.backend._pool.connection() as connection:
        await connection.execute(f"CREATE TABLE {table} (position bigint PRIMARY KEY)")

    async def update(connection: psycopg.AsyncConnection[Any], position: int, fail: bool) -> None:
        await connection.execute(f"INSERT INTO {table} VALUES (%s)", (position,))
        if fail:
            raise RuntimeError("the read model refused the page")

    with pytest.raises(RuntimeError, match="refused"):
        await pg_store.apply_with_checkpoint("seen", 1, lambda connection: update(connection, 1, True))
    assert await pg_store.load_checkpoint("seen") is None
    await pg_store.apply_with_checkpoint("seen", 2, lambda connection: update(connection, 2, False))
    assert await pg_store.load_checkpoint("seen") == 2
    # private: the read model's table lives in the store's database, reached through its pool
    # private: the schema's tables inspected on the backend's own pool
    async with pg_store.backend._pool.connection() as connection:
        rows = await (await connection.execute(f"SELECT position FROM {table}")).fetchall()
    assert rows == [(2,)]
