"""What only the SQLite backend shows: group commit, its options, its file on disk, and sharing that file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold import ANY, NO_STREAM, AppendResult, NewEvent, StreamSnapshot
from agentfold.appending import Watched, WatchedStreamMoved

# private: POLL_INTERVAL, how often a store looks for other processes' appends, is switched off by the wake-up tests
from agentfold.backends import sqlite as sqlite_backend

# private: _fetch_page_records runs on a connection whose string limit a test lowers (no public knob); the filtered
# reads' statements are planned by hand to show which index serves them
from agentfold.backends.sqlite import (
    _SELECT_CATEGORY_PAGE,
    _SELECT_TYPE_POSITIONS,
    GROUPS_IN_FLIGHT,
    MAX_GROUP_APPENDS,
    SCHEMA_VERSION,
    SQLiteStore,
    _fetch_page_records,
)
from agentfold.errors import (
    CapabilityMissing,
    DuplicateEventId,
    InvalidURL,
    StoreClosed,
    StoreCorrupted,
    StoreNotFound,
    StoreTimeout,
    StoreUnavailable,
    WrongExpectedVersion,
)
from tests.backends import SQLITE_EVENTS_BEFORE_SCHEMA_6
from tests.group_helpers import until


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


async def open_sqlite(path: Path, query: str = "", **options: Any) -> SQLiteStore:
    store = await agentfold.connect(f"sqlite:///{path}{query}", **options)
    assert isinstance(store, SQLiteStore)
    return store


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await open_sqlite(db_path)
    try:
        yield opened
    finally:
        await opened.close()


@contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the file's write lock from another connection, as another process would."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield connection
        if connection.in_transaction:
            connection.execute("COMMIT")
    finally:
        connection.close()


async def let_tasks_submit(tasks: list[asyncio.Task[Any]]) -> None:
    """Run the event loop until every task has queued its request (each does so in its first step)."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(task.done() for task in tasks)


async def writer_has_taken_everything(store: SQLiteStore) -> None:
    """Make sure every request submitted is taken into a group: a sender takes its group in its first step, which
    runs in the event loop's next iteration after the request is queued."""
    await asyncio.sleep(0)
    assert store.backend._committer.queued == 0  # no public view of the group committer's queue


async def writer_thread_is_committing(store: SQLiteStore) -> None:
    """`writer_has_taken_everything`, and the writer thread has taken every group handed to it into its transaction
    (where it then waits for the file's write lock), so groups formed from now on commit after that one."""
    await writer_has_taken_everything(store)
    await until(store.backend._writer._groups.empty)  # no public view of the writer thread's queue


def events(count: int, event_type: str = "Noted") -> list[NewEvent]:
    return [NewEvent(event_type, {"n": n}) for n in range(count)]


async def test_one_failing_append_in_a_group_fails_alone(store: SQLiteStore, db_path: Path) -> None:
    await store.append("kept", events(2), NO_STREAM)
    retried = events(2)
    original = await store.append("retried", retried, NO_STREAM)
    overlap = NewEvent("Noted", {"overlap": True})

    commits_before = store.commit_count
    with write_lock_held(db_path):
        # The writer takes this first request and waits for the lock; everything submitted meanwhile queues up.
        blocker = asyncio.ensure_future(store.append("blocker", events(1)))
        await let_tasks_submit([blocker])
        await writer_thread_is_committing(store)
        attempts = {
            "fresh": store.append("fresh", events(3), NO_STREAM),
            "wrong_version": store.append("kept", events(1), expected_version=5),
            "exact": store.append("kept", events(2), expected_version=2),
            "retry": store.append("retried", retried, NO_STREAM),
            "partial_overlap": store.append("retried", [retried[0], overlap], ANY),
            "any": store.append("other", events(1), ANY),
        }
        tasks = {name: asyncio.ensure_future(attempt) for name, attempt in attempts.items()}
        await let_tasks_submit(list(tasks.values()))
    await blocker
    outcomes = dict(zip(tasks, await asyncio.gather(*tasks.values(), return_exceptions=True), strict=True))

    # The six requests waited together, so they shared one transaction: one commit (one fsync) for all of them.
    assert store.commit_count - commits_before == 2
    assert isinstance(outcomes["wrong_version"], WrongExpectedVersion)
    assert outcomes["wrong_version"].actual == 2
    assert isinstance(outcomes["partial_overlap"], DuplicateEventId)
    assert outcomes["retry"] == original
    assert outcomes["fresh"].version == 3  # type: ignore[union-attr]
    assert outcomes["exact"].version == 4  # type: ignore[union-attr]
    assert outcomes["any"].version == 1  # type: ignore[union-attr]

    assert [event.data for event in [e async for e in store.read_stream("kept")]] == [{"n": 0}, {"n": 1}] * 2
    assert await store.stream_version("retried") == 2
    positions = [event.position async for event in store.read_all()]
    assert positions == list(range(1, len(positions) + 1))
    assert len(positions) == 2 + 2 + 1 + 3 + 2 + 1


async def test_concurrent_appends_with_conflicts_give_consistent_streams(store: SQLiteStore) -> None:
    streams = [f"race-{n}" for n in range(4)]
    writers_per_stream = 6
    appends_per_writer = 8

    async def writer(stream_id: str, writer_id: int) -> int:
        conflicts = 0
        for n in range(appends_per_writer):
            event = NewEvent("Counted", {"writer": writer_id, "n": n})
            while True:
                version = await store.stream_version(stream_id)
                try:
                    await store.append(stream_id, [event], expected_version=version)
                    break
                except WrongExpectedVersion:
                    conflicts += 1
        return conflicts

    conflicts = await asyncio.gather(
        *(writer(stream_id, w) for stream_id in streams for w in range(writers_per_stream))
    )
    assert sum(conflicts) > 0  # the writers really raced

    expected_count = writers_per_stream * appends_per_writer
    for stream_id in streams:
        recorded = [event async for event in store.read_stream(stream_id)]
        assert [event.version for event in recorded] == list(range(1, expected_count + 1))
        written = sorted((event.data["writer"], event.data["n"]) for event in recorded)
        assert written == sorted((w, n) for w in range(writers_per_stream) for n in range(appends_per_writer))
    positions = [event.position async for event in store.read_all()]
    assert positions == list(range(1, len(streams) * expected_count + 1))


async def writer_synchronous(store: SQLiteStore) -> int:
    """The synchronous level the writer connection really uses (0 OFF, 1 NORMAL, 2 FULL)."""
    # private: runs SQL on the store's writer connection (no public API runs arbitrary SQL)
    # private: the PRAGMA as the writer's connection sees it
    return int(await store.backend._write(lambda connection: connection.execute("PRAGMA synchronous").fetchone()[0]))


async def test_synchronous_defaults_to_full(store: SQLiteStore) -> None:
    assert store.synchronous == "FULL"
    assert await writer_synchronous(store) == 2


@pytest.mark.parametrize("how", ["query", "keyword"])
async def test_synchronous_normal_can_be_chosen(db_path: Path, how: str) -> None:
    if how == "query":
        store = await open_sqlite(db_path, "?synchronous=normal")
    else:
        store = await open_sqlite(db_path, "?synchronous=FULL", synchronous="NORMAL")
    try:
        assert store.synchronous == "NORMAL"
        assert await writer_synchronous(store) == 1
        await store.append("s", events(1), NO_STREAM)
    finally:
        await store.close()


async def test_the_file_is_in_wal_mode(store: SQLiteStore, db_path: Path) -> None:
    await store.append("s", events(1))
    connection = sqlite3.connect(db_path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        connection.close()


async def test_data_and_idempotency_survive_close_and_reopen(db_path: Path) -> None:
    batch = [NewEvent("Placed", {"order": 42}, {"agent_id": "a-1"}), NewEvent("Paid", {"amount": 9.5})]
    store = await open_sqlite(db_path)
    first = await store.append("order-42", batch, NO_STREAM)
    await store.append("order-42", events(3), expected_version=2)
    await store.save_checkpoint("projector", 4)
    await store.keep_snapshot(StreamSnapshot("order-42", "totals", 2, b"state-at-2"))
    await store.trim_stream("order-42", before_version=3)
    await store.close()

    store = await open_sqlite(db_path)
    try:
        # The trimmed batch is still recognised: its content cannot be compared any more, so even an exact retry is
        # refused (a retry is exact or refused), and nothing is written.
        with pytest.raises(DuplicateEventId, match="trimmed"):
            await store.append("order-42", batch, NO_STREAM)
        assert first.version == 2
        with pytest.raises(DuplicateEventId):
            await store.append("order-42", [batch[1]], ANY)
        with pytest.raises(DuplicateEventId):
            await store.append("elsewhere", batch, ANY)
        assert await store.stream_version("order-42") == 5
        assert await store.head_position() == 5
        remaining = [event async for event in store.read_stream("order-42")]
        assert [event.version for event in remaining] == [3, 4, 5]
        assert await store.load_checkpoint("projector") == 4
        assert await store.load_snapshot("order-42", "totals") == StreamSnapshot("order-42", "totals", 2, b"state-at-2")
    finally:
        await store.close()

    store = await open_sqlite(db_path)
    try:
        events_back = [event async for event in store.read_all()]
        assert [event.position for event in events_back] == [3, 4, 5]
        appended = await store.append("fresh", events(1), NO_STREAM)
        assert appended == AppendResult(1, 6)  # positions are never reused, even after trimming
    finally:
        await store.close()


async def test_recorded_events_read_back_exactly(store: SQLiteStore) -> None:
    event = NewEvent("Quoted", {"text": 'a "quote" \\ and ünïcode ✓', "items": [1, 2.5, None, True]}, {"k": "v"})
    result = await store.append("s", [event], NO_STREAM)
    (recorded,) = [e async for e in store.read_stream("s")]
    (via_all,) = [e async for e in store.read_all()]
    assert recorded == via_all
    assert recorded.id == event.id
    assert (recorded.stream_id, recorded.version, recorded.position) == ("s", 1, result.position)
    assert recorded.data == event.data
    assert recorded.metadata == {"k": "v"}
    assert recorded.recorded_at.tzinfo is not None


async def test_two_stores_on_one_file_see_each_other(db_path: Path) -> None:
    first = await open_sqlite(db_path)
    second = await open_sqlite(db_path)
    try:
        await first.append("shared", events(1), NO_STREAM)
        with pytest.raises(WrongExpectedVersion):
            await second.append("shared", events(1), NO_STREAM)
        await second.append("shared", events(1), expected_version=1)
        assert await first.stream_version("shared") == 2

        # A waiter on one store is woken by an append through the other (found by polling the file).
        head = await first.head_position()
        waiter = asyncio.ensure_future(first.wait_for_append(head, timeout=60))
        await asyncio.sleep(0)
        await second.append("shared", events(1), expected_version=2)
        await waiter
        assert await first.head_position() == head + 1

        async def append_through(store: SQLiteStore, writer: str) -> None:
            for n in range(20):
                await store.append(f"{writer}-{n % 3}", [NewEvent("Step", {"n": n})])

        await asyncio.gather(append_through(first, "a"), append_through(second, "b"))
        positions = [event.position async for event in second.read_all()]
        assert positions == list(range(1, 44))
    finally:
        await first.close()
        await second.close()


def test_concurrent_opens_create_the_schema_once(db_path: Path) -> None:
    errors: list[BaseException] = []

    def open_append_close(n: int) -> None:
        async def run() -> None:
            store = await open_sqlite(db_path)
            try:
                await store.append(f"opener-{n}", events(2), NO_STREAM)
            finally:
                await store.close()

        try:
            asyncio.run(run())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_append_close, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    async def check() -> None:
        store = await open_sqlite(db_path)
        try:
            assert await store.head_position() == 8
        finally:
            await store.close()

    asyncio.run(check())


async def test_close_finishes_queued_appends(db_path: Path) -> None:
    store = await open_sqlite(db_path)
    with write_lock_held(db_path):
        tasks = [asyncio.ensure_future(store.append(f"s-{n}", events(1), NO_STREAM)) for n in range(10)]
        await let_tasks_submit(tasks)
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0)
    await closing
    results = await asyncio.gather(*tasks)
    assert sorted(result.position for result in results) == list(range(1, 11))
    with pytest.raises(StoreClosed):
        await store.append("late", events(1))
    with pytest.raises(StoreClosed):
        await store.stream_version("s-1")

    reopened = await open_sqlite(db_path)
    try:
        assert await reopened.head_position() == 10
    finally:
        await reopened.close()


async def test_groups_waiting_for_the_writer_commit_together_in_their_order(store: SQLiteStore) -> None:
    """Appends that arrive one by one while the writer is busy, as HTTP requests do, each form a group of their own;
    the groups waiting in the writer thread then share one transaction (one fsync), in the order they were formed."""
    busy, release = threading.Event(), threading.Event()

    def hold(_connection: sqlite3.Connection) -> None:
        busy.set()
        release.wait()

    commits_before = store.commit_count
    groups_before = store.backend._committer.groups  # no public view of the group committer's groups
    holder = asyncio.ensure_future(store.backend._write(hold))
    try:
        assert await asyncio.to_thread(busy.wait, 60)  # the writer thread is inside the holder's transaction
        arrivals: list[asyncio.Task[AppendResult]] = []
        for n in range(GROUPS_IN_FLIGHT - 1):
            arrivals.append(asyncio.ensure_future(store.append(f"arrival-{n}", events(1), NO_STREAM)))
            await let_tasks_submit(arrivals[-1:])
            await writer_has_taken_everything(store)
    finally:
        release.set()
    await holder
    results = await asyncio.gather(*arrivals)

    assert store.backend._committer.groups - groups_before == GROUPS_IN_FLIGHT
    assert [result.position for result in results] == list(range(1, GROUPS_IN_FLIGHT))
    assert store.commit_count - commits_before == 2  # the holder's transaction, then the arrivals' one


async def test_a_backlog_beyond_the_group_limit_commits_in_order_before_close(db_path: Path) -> None:
    store = await open_sqlite(db_path)
    count = 2 * MAX_GROUP_APPENDS + 10
    commits_before = store.commit_count
    with write_lock_held(db_path):
        blocker = asyncio.ensure_future(store.append("blocker", events(1)))
        await let_tasks_submit([blocker])
        await writer_thread_is_committing(store)
        tasks = [asyncio.ensure_future(store.append(f"s-{n % 7}", events(1))) for n in range(count)]
        await let_tasks_submit(tasks)
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0)
    await closing
    await blocker
    results = await asyncio.gather(*tasks)
    # Submitted in one iteration of the event loop, taken in submission order, split only by the group limit.
    assert [result.position for result in results] == list(range(2, count + 2))
    assert store.commit_count - commits_before == 1 + 3

    reopened = await open_sqlite(db_path)
    try:
        assert await reopened.head_position() == count + 1
        assert sum([await reopened.stream_version(f"s-{n}") for n in range(7)]) == count
    finally:
        await reopened.close()


async def test_a_lock_held_beyond_the_busy_timeout_is_a_store_timeout(db_path: Path) -> None:
    store = await open_sqlite(db_path, "?busy_timeout=50")
    try:
        with write_lock_held(db_path):
            with pytest.raises(StoreTimeout) as raised:
                await store.append("s", events(1), NO_STREAM)
            assert raised.value.retryable
        assert await store.head_position() == 0
        assert await store.append("s", events(1), NO_STREAM) == AppendResult(1, 1)
    finally:
        await store.close()


async def test_a_corrupt_record_is_reported(store: SQLiteStore, db_path: Path) -> None:
    await store.append("s", events(2), NO_STREAM)
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        connection.execute("UPDATE events SET data = '{\"order\": oops' WHERE version = 2")
    finally:
        connection.close()
    with pytest.raises(StoreCorrupted):
        _ = [event async for event in store.read_stream("s")]
    with pytest.raises(StoreCorrupted):
        _ = [event async for event in store.read_all()]


async def test_a_blob_missing_under_its_event_is_store_corrupted(store: SQLiteStore, db_path: Path) -> None:
    await store.append("s", [NewEvent("Prompted", {"prompt": "p" * 100_000, "tokens": 3})])
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        connection.execute("DELETE FROM blobs")
    finally:
        connection.close()
    with pytest.raises(StoreCorrupted, match="refers to a blob the store does not hold"):
        _ = [event async for event in store.read_stream("s")]
    with pytest.raises(StoreCorrupted):
        _ = [event async for event in store.read_all()]
    assert [event.data["tokens"] async for event in store.read_stream("s", blobs=False)] == [3]


async def test_a_file_of_schema_1_gains_the_blob_tables_when_opened(db_path: Path) -> None:
    store = await open_sqlite(db_path)
    try:
        await store.append("old", events(3), NO_STREAM)
    finally:
        await store.close()
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:  # the file as agentfold before blobs left it
        connection.execute("DROP TABLE event_blobs")
        connection.execute("DROP TABLE blobs")
        for statement in SQLITE_EVENTS_BEFORE_SCHEMA_6:
            connection.execute(statement)
        connection.execute("PRAGMA user_version = 1")
    finally:
        connection.close()
    with pytest.raises(StoreNotFound, match="schema version 1 and needs an upgrade"):
        await agentfold.connect(f"sqlite:///{db_path}", create=False)  # read as it is: nothing upgraded
    store = await open_sqlite(db_path)
    try:
        await store.append("new", [NewEvent("Prompted", {"prompt": "p" * 100_000})])
        assert [event.version async for event in store.read_stream("old")] == [1, 2, 3]
        assert [len(event.data["prompt"]) async for event in store.read_stream("new")] == [100_000]
        assert await store.blob_usage() == (1, 100_002)
    finally:
        await store.close()
    connection = sqlite3.connect(db_path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        connection.close()


async def test_a_group_meeting_tables_that_disagree_fails_only_the_damaged_append(
    store: SQLiteStore, db_path: Path
) -> None:
    prompt = {"prompt": "p" * 100_000}
    await store.append("healthy", events(1), NO_STREAM)
    await store.append("seen", [NewEvent("Prompted", prompt)])
    [seen] = [event async for event in store.read_stream("seen", blobs=False)]
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:  # a link to the prompt's blob at position 5, where no event is yet: the next event there meets it
        connection.execute("INSERT INTO event_blobs (position, digest) VALUES (5, ?)", (seen.data["prompt"]["$blob"],))
    finally:
        connection.close()
    commits_before = store.commit_count
    with write_lock_held(db_path):
        blocker = asyncio.ensure_future(store.append("blocker", events(1)))
        await let_tasks_submit([blocker])
        await writer_thread_is_committing(store)
        attempts = [
            asyncio.ensure_future(store.append("healthy", events(1), expected_version=1)),
            asyncio.ensure_future(store.append("damaged", [NewEvent("Prompted", prompt)], NO_STREAM)),
            asyncio.ensure_future(store.append("fresh", events(2), NO_STREAM)),
        ]
        await let_tasks_submit(attempts)
    await blocker
    healthy, damaged, fresh = await asyncio.gather(*attempts, return_exceptions=True)

    assert store.commit_count - commits_before == 2
    assert isinstance(damaged, StoreCorrupted)
    assert healthy == AppendResult(2, 4)
    assert fresh == AppendResult(2, 6)
    assert [event.version async for event in store.read_stream("damaged")] == []
    positions = [event.position async for event in store.read_all()]
    assert positions == list(range(1, 7))


def test_a_file_that_is_not_a_database_is_refused(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a SQLite database, just some text" * 100)
    with pytest.raises(StoreCorrupted):
        asyncio.run(open_sqlite(db_path))


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    connection = sqlite3.connect(db_path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(StoreUnavailable, match="newer"):
        await open_sqlite(db_path)


def query_plan(connection: sqlite3.Connection, sql: str, parameters: Any) -> str:
    return " / ".join(str(row[3]) for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", parameters))


async def test_a_version_2_file_is_upgraded_and_its_filtered_reads_use_the_new_indexes(db_path: Path) -> None:
    store = await open_sqlite(db_path)
    for index in range(30):
        await store.append(f"noise-{index}", events(20, "Noise"))
        await store.append(f"order-{index}", [NewEvent("Paid", {"n": index})])
    await store.close()
    connection = sqlite3.connect(db_path)
    connection.execute("DROP INDEX events_type")
    connection.execute("DROP INDEX events_category")
    for statement in SQLITE_EVENTS_BEFORE_SCHEMA_6:
        connection.execute(statement)
    connection.execute("PRAGMA user_version = 2")  # the file as version 2 (blobs, no filtered-read indexes) left it
    connection.commit()
    connection.close()

    store = await open_sqlite(db_path)
    try:
        paid = [event async for event in store.read_all(types=["Paid"])]
        orders = [event async for event in store.read_all(stream_prefix="order-")]
        assert [event.data["n"] for event in paid] == list(range(30)) == [event.data["n"] for event in orders]
    finally:
        await store.close()
    connection = sqlite3.connect(db_path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        by_type = query_plan(
            connection, _SELECT_TYPE_POSITIONS.format(index=0), {"type0": "Paid", "after": 0, "limit": 9}
        )
        by_category = query_plan(connection, _SELECT_CATEGORY_PAGE.format(record="record"), ("order-", 0, 10))
        assert "COVERING INDEX events_type (type=? AND rowid>?)" in by_type
        assert "INDEX events_category (<expr>=? AND rowid>?)" in by_category
    finally:
        connection.close()


async def test_a_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        await open_sqlite(tmp_path / "missing" / "store.db")


async def test_max_event_size_option(db_path: Path) -> None:
    from agentfold.errors import EventTooLarge

    store = await open_sqlite(db_path, "?max_event_size=100")
    try:
        with pytest.raises(EventTooLarge):
            await store.append("s", [NewEvent("Big", {"text": "x" * 200})])
        await store.append("s", [NewEvent("Small", {"text": "x"})])
    finally:
        await store.close()


async def test_a_page_beyond_sqlites_string_limit_is_read_row_by_row(store: SQLiteStore, db_path: Path) -> None:
    """A page is joined into one blob by SQLite; a page longer than SQLite's string limit comes back whole."""
    await store.append("s", [NewEvent("Big", {"text": "x" * 1000, "n": index}) for index in range(30)])
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        # private: the page fetch runs on a connection whose string limit the test lowers (no public knob)
        records = _fetch_page_records(connection, "s", 5, 20)
        connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000)
        records_row_by_row = _fetch_page_records(connection, "s", 5, 20)
        with pytest.raises(sqlite3.DataError):  # the joined page is over the limit, and was refused
            connection.execute(
                "SELECT group_concat(data) FROM events WHERE stream_id = 's' AND version > 5 AND version <= 25"
            ).fetchone()
    finally:
        connection.close()
    assert records == records_row_by_row
    assert all(isinstance(record, bytes) for record in records[0])
    decoder = store.record_decoder
    assert decoder is not None
    decoded = sorted((decoder.decode(record) for record in records[0]), key=lambda event: event.version)
    assert [event.data["n"] for event in decoded] == list(range(5, 25))
    assert records[1:] == (20, 25)


async def test_a_record_holding_the_separator_is_store_corrupted(store: SQLiteStore, db_path: Path) -> None:
    await store.append("s", events(3))
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        connection.execute("UPDATE events SET data = data || char(30) WHERE stream_id = 's' AND version = 2")
        with pytest.raises(StoreCorrupted, match="char 30"):
            _fetch_page_records(connection, "s", 0, 10)
    finally:
        connection.close()
    with pytest.raises(StoreCorrupted):
        [event async for event in store.read_stream("s")]


async def test_cache_options_set_the_read_connections_and_the_writer_s_cache(db_path: Path) -> None:
    store = await open_sqlite(db_path, "?read_cache_mb=3&write_cache_mb=5")
    try:
        await store.append("s", events(1))
        # private: runs SQL on a store reader connection (no public API runs arbitrary SQL)
        # private: the PRAGMA as a reader's connection sees it
        cache_size = await store.backend._read(lambda connection: connection.execute("PRAGMA cache_size").fetchone()[0])
        assert cache_size == -3072
        # private: the PRAGMA as the writer's connection sees it, run as a write job in the writer thread
        writer_cache = await store.backend._write(lambda connection: connection.execute("PRAGMA cache_size").fetchone())
        assert writer_cache[0] == -5120
    finally:
        await store.close()


async def test_checkpoint_pages_sets_how_much_log_a_commit_copies_at_once(db_path: Path) -> None:
    for url_tail, pages in (("", 2000), ("?checkpoint_pages=1000", 1000)):
        store = await open_sqlite(db_path, url_tail)
        try:
            # private: the PRAGMA as the writer's connection sees it, run as a write job in the writer thread
            found = await store.backend._write(
                lambda connection: connection.execute("PRAGMA wal_autocheckpoint").fetchone()
            )
            assert found[0] == pages
        finally:
            await store.close()


@pytest.mark.parametrize(
    ("url_tail", "options", "named"),
    [
        ("?synchronous=OFF", {}, "synchronous"),
        ("", {"synchronous": "EXTRA"}, "synchronous"),
        ("?busy_timeout=soon", {}, "busy_timeout"),
        ("?checkpoint_pages=0", {}, "checkpoint_pages"),
        ("?busy_timeout=-1", {}, "busy_timeout"),
        ("", {"busy_timeout": 1.5}, "busy_timeout"),
        ("?max_event_size=0", {}, "max_event_size"),
        ("", {"max_event_size": True}, "max_event_size"),
        ("?journal=delete", {}, "journal"),
        ("?synchronous=FULL&synchronous=NORMAL", {}, "twice"),
        ("?read_cache_mb=-1", {}, "read_cache_mb"),
        ("", {"write_cache_mb": "lots"}, "write_cache_mb"),
    ],
)
def test_bad_options_are_refused(db_path: Path, url_tail: str, options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidURL, match=named):
        asyncio.run(open_sqlite(db_path, url_tail, **options))
    assert not db_path.exists()  # refused before the file was touched


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/store.db", "sqlite:///:memory:"])
async def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidURL):
        await agentfold.connect(url)


async def test_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = await agentfold.connect("sqlite:///relative.db")
    await relative.close()
    assert (tmp_path / "relative.db").exists()
    absolute = await agentfold.connect(f"sqlite:///{tmp_path / 'absolute.db'}")
    await absolute.close()
    assert f"sqlite:///{tmp_path / 'absolute.db'}".startswith("sqlite:////")
    assert (tmp_path / "absolute.db").exists()


async def test_an_append_watching_a_stream_is_written_only_while_that_stream_stays_put(store: SQLiteStore) -> None:
    """`append_watching` checks the watched stream's version in the append's own transaction: an append watching a
    stream that moved writes nothing; one watching it where it is, is written; the check comes before an exact
    retry's answer too."""
    assert store.watches_streams
    await store.append("watched", events(2))
    moved = Watched("watched", 1)
    with pytest.raises(WatchedStreamMoved) as refused:
        await store.append_watching("work", events(1), ANY, moved)
    assert refused.value.actual == 2
    assert await store.stream_version("work") == 0

    first = [NewEvent("Noted", {"n": 1})]
    written = await store.append_watching("work", first, NO_STREAM, Watched("watched", 2))
    assert written.version == 1
    assert await store.append_watching("work", first, NO_STREAM, Watched("watched", 2)) == written  # exact retry
    with pytest.raises(WatchedStreamMoved):
        await store.append_watching("work", first, NO_STREAM, moved)
    assert await store.append_watching("work", events(1), ANY, Watched("never-written", 0)) == AppendResult(2, 4)
    assert await store.stream_version("work") == 2


async def test_appends_watching_a_stream_keep_the_group_s_serial_order(store: SQLiteStore) -> None:
    """In one group, an append to the watched stream moves it for the appends after it (in the group's order), not
    for those before; each one fails or stands alone."""
    await store.append("watched", events(1))
    at_one = Watched("watched", 1)
    before = store.append_watching("a", events(1), ANY, at_one)
    mover = store.append("watched", events(1))
    after = store.append_watching("b", events(1), ANY, at_one)
    retried_after = store.append_watching("c", events(1), ANY, Watched("watched", 2))
    outcomes = await asyncio.gather(before, mover, after, retried_after, return_exceptions=True)

    assert isinstance(outcomes[0], AppendResult) and isinstance(outcomes[1], AppendResult)
    assert isinstance(outcomes[2], WatchedStreamMoved) and outcomes[2].actual == 2
    assert isinstance(outcomes[3], AppendResult)
    assert [await store.stream_version(stream) for stream in ("a", "b", "c", "watched")] == [1, 0, 1, 2]


async def test_an_append_watching_a_stream_that_another_process_moved_writes_nothing(
    store: SQLiteStore, db_path: Path
) -> None:
    """Another store on the same file (another process) moves the watched stream: the check reads the file in the
    append's transaction, so it sees that write."""
    other = await open_sqlite(db_path)
    try:
        await other.append("watched", events(1))
    finally:
        await other.close()
    with pytest.raises(WatchedStreamMoved):
        await store.append_watching("work", events(1), ANY, Watched("watched", 0))
    assert await store.stream_version("work") == 0


async def test_a_store_that_cannot_watch_streams_says_so() -> None:
    async with await agentfold.connect("memory://") as memory:
        assert not memory.watches_streams
        with pytest.raises(CapabilityMissing):
            await memory.append_watching("work", events(1), ANY, Watched("watched", 0))


async def _every_read(store: SQLiteStore) -> dict[str, list[Any]]:
    """What each kind of read returns from the store of `test_a_schema_5_file_...`."""
    return {
        "all": [event async for event in store.read_all()],
        "typed": [event async for event in store.read_all(types=["Paid", "Noted"])],
        "typed in streams": [event async for event in store.read_all(types=["Noted"], stream_prefix='o"rder-1')],
        "category": [event async for event in store.read_all(stream_prefix="order-")],
        "streams": [event async for event in store.read_all(stream_prefix="o")],
        "stream": [event async for event in store.read_stream('o"rder-1')],
        "backwards": [event async for event in store.read_stream("order-2", backwards=True, limit=3)],
        "blob": [event.data["prompt"][:3] async for event in store.read_stream("prompts")],
    }


async def test_a_schema_5_file_reads_as_before_and_stores_what_comes_after_by_column(db_path: Path) -> None:
    """A file of schema 5 holds each event whole in `record`; opened by this release its events read back the same,
    through every kind of read, side by side with events stored by column."""

    def written(round_: int) -> list[tuple[str, list[NewEvent]]]:
        return [
            ('o"rder-1', [NewEvent("Noted", {"n": round_, "text": 'quote " back \\ ünï'}, {"by": "agent-\u00e9"})]),
            ("order-2", [NewEvent("Paid", {"n": round_, "amount": 1.5}), NewEvent("Noted", {"n": -round_})]),
            ("prompts", [NewEvent("Prompted", {"prompt": f"{round_:03d}" + "p" * 100_000})]),
        ]

    store = await open_sqlite(db_path)
    try:
        for stream_id, batch in written(1) + written(2):
            await store.append(stream_id, batch)
        before = await _every_read(store)
    finally:
        await store.close()
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        for statement in SQLITE_EVENTS_BEFORE_SCHEMA_6:
            connection.execute(statement)
        connection.execute("PRAGMA user_version = 5")
        record = connection.execute("SELECT record FROM events WHERE position = 1").fetchone()[0]
        assert record.startswith('{"stream_id":"o\\"rder-1","version":1,"position":1,"type":"Noted","data":{')
    finally:
        connection.close()

    store = await open_sqlite(db_path)
    try:
        assert await _every_read(store) == before
        for stream_id, batch in written(3):
            await store.append(stream_id, batch)
        after = await _every_read(store)
    finally:
        await store.close()
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        kept = connection.execute("SELECT position FROM events WHERE record <> '' AND data IS NULL").fetchall()
        by_column = connection.execute("SELECT record, data, metadata FROM events ORDER BY position DESC").fetchone()
    finally:
        connection.close()
    # Rows written before keep their record, and so does a new event of a stream whose id JSON escapes.
    assert [position for (position,) in kept] == [*range(1, len(before["all"]) + 1), len(before["all"]) + 1]
    assert by_column[0] == "" and by_column[2] == '{"$blobs":["prompt"]}' and by_column[1].startswith('{"prompt":')
    assert after["all"][: len(before["all"])] == before["all"]
    assert [event.data["n"] for event in after["typed"]] == [1, 1, -1, 2, 2, -2, 3, 3, -3]
    assert [event.data["n"] for event in after["typed in streams"]] == [1, 2, 3]
    assert after["typed in streams"][2].metadata == {"by": "agent-\u00e9"}
    assert after["typed in streams"][2].data["text"] == 'quote " back \\ ünï'
    assert [event.version for event in after["backwards"]] == [6, 5, 4]
    assert after["blob"] == ["001", "002", "003"]
    assert [event.position for event in after["all"]] == list(range(1, len(after["all"]) + 1))


async def test_an_append_wakes_the_readers_of_other_stores_of_this_process_on_the_file(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With polling for other processes' appends switched off, only the wake of a store on the same file can end
    # these waits: one in this event loop, one in a loop of its own thread (as the sync API runs).
    monkeypatch.setattr(sqlite_backend, "POLL_INTERVAL", 3600.0)
    writer, neighbour = await open_sqlite(db_path), await open_sqlite(db_path)
    waiting_elsewhere, woken_elsewhere = threading.Event(), threading.Event()

    def wait_in_own_loop() -> None:
        async def wait() -> None:
            store = await open_sqlite(db_path)
            try:
                waiting = asyncio.create_task(store.wait_for_append(0, 3600))
                await asyncio.sleep(0)
                waiting_elsewhere.set()
                await asyncio.wait_for(waiting, 60)
                woken_elsewhere.set()
            finally:
                await store.close()

        asyncio.run(wait())

    thread = threading.Thread(target=wait_in_own_loop)
    thread.start()
    try:
        waiting_here = asyncio.create_task(neighbour.wait_for_append(0, 3600))
        await asyncio.to_thread(waiting_elsewhere.wait, 60)
        await asyncio.sleep(0)
        assert not waiting_here.done()
        await writer.append("order-1", [NewEvent("OrderPlaced", {})], NO_STREAM)
        await asyncio.wait_for(waiting_here, 60)
        assert await asyncio.to_thread(woken_elsewhere.wait, 60)
    finally:
        await asyncio.to_thread(thread.join, 60)
        await writer.close()
        await neighbour.close()


async def test_a_store_closed_on_the_file_does_not_keep_an_append_from_waking_the_others(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "POLL_INTERVAL", 3600.0)
    writer, closed, open_one = await open_sqlite(db_path), await open_sqlite(db_path), await open_sqlite(db_path)
    await closed.close()
    try:
        await writer.append("order-1", [NewEvent("OrderPlaced", {})], NO_STREAM)
        await asyncio.wait_for(open_one.wait_for_append(0, 3600), 60)
        assert [event.stream_id async for event in open_one.read_all()] == ["order-1"]
    finally:
        await writer.close()
        await open_one.close()
