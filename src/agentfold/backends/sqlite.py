"""`sqlite:///path`: the embedded default store, one SQLite file in WAL mode.

- Durable by default: `synchronous=FULL` fsyncs the write-ahead log at every commit. `synchronous=NORMAL` skips that
  fsync: the store still survives a crash of the process, but a power loss may take away the last commits.
- The event loop never blocks on disk. One writer thread owns the only write connection and group-commits (the
  queueing and grouping are `agentfold.committer.GroupCommitter`'s): every append waiting when a group forms is
  checked and written in one `BEGIN IMMEDIATE` transaction that commits once (one fsync for the whole group). Each
  append keeps its own atomicity and its own expected-version check: an append that fails (wrong version, duplicate
  id) writes nothing and gets its own error while the others commit. An append is acknowledged only after the commit
  that holds it has returned (with `FULL`: after its fsync).
- A group costs a fixed handful of statements however many appends it holds (one read of everything the checks need,
  one multi-row INSERT per table, the commit), and one wake-up each way between the event loop and the writer
  thread. Appends that arrive while a group commits form the next groups (up to `GROUPS_IN_FLIGHT` of them), which
  wait in the writer thread's queue and then commit together in one transaction, so the disk does not wait for the
  event loop between groups, and appends that arrive one by one still share a commit.
- Reads run in worker threads, each with its own read connection; WAL lets them proceed beside the writer.
- Several processes may share one file: `BEGIN IMMEDIATE` plus the busy timeout make their writers queue. Positions
  are assigned inside the write transaction from the file's `AUTOINCREMENT` counter, so they follow commit order and
  are never reused, and a reader never sees a gap that is filled later.
- Blobs (`agentfold.blobs`) are rows of the `blobs` table in the same file, keyed by digest, and `event_blobs` links
  each event's position to the digests it refers to: written in the transaction of their append, removed in the
  transaction of the trim that deletes their last event. One file keeps one commit for an event and its blobs, one
  fsync, one backup (docs/payloads.md says why not a directory of files).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast
from urllib.parse import unquote

import msgspec

from agentfold import openruns, runrows
from agentfold.appending import IdRecord, Watched, WatchedStreamMoved, check_expected, check_watched, find_retry
from agentfold.backend import RecordDecoder, prefix_category
from agentfold.backends import runs_tables
from agentfold.blobs import DEFAULT_BLOB_THRESHOLD, DEFAULT_MAX_BLOB_SIZE, BlobUsage
from agentfold.committer import GroupCommitter
from agentfold.encoding import DEFAULT_MAX_EVENT_SIZE, EncodedEvent
from agentfold.errors import (
    AgentfoldError,
    InvalidInput,
    InvalidURL,
    StoreClosed,
    StoreCorrupted,
    StoreFull,
    StoreNotFound,
    StoreReadOnly,
    StoreTimeout,
    StoreUnavailable,
    WrongExpectedVersion,
)
from agentfold.events import ANY, AppendResult, ExpectedVersion, RecordedEvent
from agentfold.options import BLOB_THRESHOLD, MAX_BLOB_SIZE, MAX_EVENT_SIZE, Option, parse_options, redact, split_url
from agentfold.store import EventStore
from agentfold.wakeup import Broadcast, retrieve_outcome

T = TypeVar("T")

SCHEMA_VERSION: Final = 7
"""Stored in `PRAGMA user_version`: the number of the last step of `_MIGRATIONS` the file has."""

DEFAULT_BUSY_TIMEOUT_MS: Final = 5000
DEFAULT_READ_CACHE_MB: Final = 32
"""The page cache of each read connection, at most. SQLite's own default (2 MB) holds about 4,000 ~200-byte events,
so a fold of a longer stream read every page from the file again (docs/measurements.md). Memory is taken only as
pages are read."""
DEFAULT_WRITE_CACHE_MB: Final = 32
"""The page cache of the writer connection, at most. With SQLite's default (2 MB), the interior pages of a large
store's tables and indexes no longer fit, so appends read them from the file again: at 5M events, an append to a
random stream read 4.5 pages from the file instead of 3.6 (docs/benchmarks.md, "The log grows"). Memory is taken
only as pages are read."""
DEFAULT_CHECKPOINT_PAGES: Final = 2000
"""WAL pages after which a commit copies the log into the database file (SQLite's `wal_autocheckpoint`). The commit
that reaches it waits for the copy and its fsync. Twice SQLite's default, so that this commit is about 1 in 290
one-event appends, not 1 in 150: rarer than 1 in 200, the p99 of appends is the append's own cost and not the
checkpoint's, on a large store as on a small one. The price is a stall about 1.6 times as long for the commit that
pays it (a higher p99.9); `checkpoint_pages=1000` is the other side of that trade (docs/measurements.md)."""
SYNCHRONOUS_MODES: Final = ("FULL", "NORMAL")
POLL_INTERVAL: Final = 0.025
"""How often `wait_for_append` looks for appends made by other processes (seconds); stores of this process on the
same file wake each other at once (`_SameFileStores`)."""
MAX_GROUP_APPENDS: Final = 1000
MAX_GROUP_EVENTS: Final = 20_000
READ_THREADS: Final = 2
GROUPS_IN_FLIGHT: Final = 4
"""Groups handed to the writer thread at most: while it commits one (and waits for its fsync), the next ones are
formed on the event loop and wait in its queue, so the disk never waits for the event loop; the waiting ones then
commit together in one transaction. More than two let appends that arrive one by one (HTTP requests) share larger
commits (docs/measurements.md)."""

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        type TEXT NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        batch_first INTEGER NOT NULL,
        batch_last INTEGER NOT NULL,
        record TEXT NOT NULL,
        UNIQUE (stream_id, version)
    )
    """,
    # The version of a stream whose last events a trim deleted (`_version_of`): it outlives its events.
    """
    CREATE TABLE IF NOT EXISTS streams (
        stream_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    # Ids of trimmed events, so that a retry of a trimmed append is still recognised.
    """
    CREATE TABLE IF NOT EXISTS trimmed_events (
        event_id TEXT PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        batch_first INTEGER NOT NULL,
        batch_last INTEGER NOT NULL,
        position INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS snapshots (
        stream_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (stream_id, name)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS checkpoints (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
)

_CATEGORY: Final = "substr(stream_id, 1, instr(stream_id, '-'))"
"""A stream's category as SQL (`agentfold.backend.stream_category`): the expression the category index holds,
written the same way in every query that uses it."""
_RECORD: Final = (
    'CASE WHEN events.data IS NULL THEN events.record ELSE printf(\'{"stream_id":"%s","version":%d,'
    '"position":%d,"type":"%s","data":%s,"metadata":%s,"_id":"%s","_recorded_at_us":%d}\', '
    "events.stream_id, events.version, events.position, events.type, events.data, events.metadata, events.event_id, "
    "events.recorded_at_us) END"
)
"""An event as SQL: the JSON text a `RecordedEvent` decodes from, built from the row's columns, or the `record` of a
row that holds the whole event (`_event_rows`). The texts go in unquoted: an event id is the canonical text of a
UUID, and a row whose stream id or type JSON would escape keeps the whole event in `record`."""
_DATA: Final = "coalesce(events.data, json_extract(events.record, '$.data'))"
"""An event's data as SQL (JSON text), whichever schema wrote its row."""

_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    # Blobs: large data fields kept apart from their events, once per content (agentfold.blobs). A rowid table, so a
    # blob's pages are its own overflow chain; `event_blobs` says which events refer to which blob, and its digest
    # index finds whether any event still does when a trim removes one.
    2: (
        """
        CREATE TABLE IF NOT EXISTS blobs (
            digest TEXT PRIMARY KEY,
            content BLOB NOT NULL
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS event_blobs (
            position INTEGER NOT NULL,
            digest TEXT NOT NULL,
            PRIMARY KEY (position, digest)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX IF NOT EXISTS event_blobs_digest ON event_blobs (digest)",
    ),
    # Filtered reads of the global log (a worker's start, triggers, subscriptions and groups with filters) find
    # their events through these instead of testing every row. An index on a rowid table holds the rowid (the
    # position) after its columns, so each is in effect (key, position): a page is one range of it.
    3: (
        "CREATE INDEX IF NOT EXISTS events_type ON events (type)",
        f"CREATE INDEX IF NOT EXISTS events_category ON events ({_CATEGORY})",
    ),
    # The open runs (agentfold.openruns), kept by every append in its transaction; a file that had events before
    # gets them folded from its log by `_fill_open_runs`, in the same transaction as this step.
    4: (
        """
        CREATE TABLE IF NOT EXISTS open_runs (
            workflow_id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            owner TEXT
        ) WITHOUT ROWID
        """,
    ),
    # The runs index (agentfold.runrows), kept by every append in its transaction; a file that had events before
    # gets it folded from its log by `_fill_runs_index` (from the checkpoint of the projector that kept it before,
    # where there is one), in the same transaction as this step.
    5: tuple(runs_tables.create_statements("TEXT", "INTEGER")),
    # Each fact of an event stored once: its data, metadata and time in columns of their own beside the stream,
    # version, type and id, and readers' JSON built from them by the read statements (`_RECORD`), where a row used
    # to hold the whole event again as JSON in `record`, key names included. Rows written before keep their
    # `record` (no rewrite of the log on upgrade); rows written after hold '' there (`_event_rows` says which keep
    # it still).
    6: (
        "ALTER TABLE events ADD COLUMN data TEXT",
        "ALTER TABLE events ADD COLUMN metadata TEXT",
        "ALTER TABLE events ADD COLUMN recorded_at_us INTEGER",
    ),
    # A stream's version read from its last event (`_version_of`), appends writing no `streams` row; the rows kept
    # so far stay (at most the version). No table changes: the step makes an earlier agentfold, which reads the
    # version from `streams` alone, refuse the file.
    7: (),
}
"""Schema steps after the first (`_SCHEMA`), by the `user_version` they bring a file to; each runs once, in order,
in the transaction that sets that version. Never edit a released step; add one."""

_SELECT_HEAD: Final = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
_OPEN_RUN_SQL: Final = {
    openruns.OPEN: "INSERT INTO open_runs (workflow_id, workflow, owner) VALUES (:run, :workflow, NULL) "
    "ON CONFLICT (workflow_id) DO UPDATE SET workflow = excluded.workflow, owner = NULL",
    openruns.CLOSE: "DELETE FROM open_runs WHERE workflow_id = :run",
    openruns.HOLD: "UPDATE open_runs SET owner = :owner WHERE workflow_id = :run",
}
"""What each kind of `agentfold.openruns.Change` does to the table."""
_SELECT_KEPT_EVENTS: Final = (
    f"SELECT stream_id, type, {_DATA} FROM events WHERE type IN ({{types}}) "
    "AND substr(stream_id, 1, {length}) = ? ORDER BY position"
).format(types=", ".join("?" * len(openruns.KEPT_TYPES)), length=len(openruns.WORKFLOW_STREAM_PREFIX))
_SELECT_OPEN_RUNS: Final = "SELECT workflow_id, workflow, owner FROM open_runs"
_SELECT_TYPE_POSITIONS: Final = (
    "SELECT {index} AS type_index, position FROM "
    "(SELECT position FROM events WHERE type = :type{index} AND position > :after ORDER BY position LIMIT :limit)"
)
_SELECT_TYPED_PAGE: Final = (
    "WITH found AS ({found}), "
    "filled AS (SELECT max(position) AS last FROM found GROUP BY type_index HAVING count(*) = :limit), "
    "bound AS (SELECT coalesce((SELECT min(last) FROM filled), "
    "(SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0) AS position), "
    "chosen AS (SELECT found.position FROM found, bound WHERE found.position <= bound.position "
    "ORDER BY found.position LIMIT :limit), "
    "scanned AS (SELECT CASE WHEN (SELECT count(*) FROM chosen) = :limit THEN (SELECT max(position) FROM chosen) "
    "ELSE (SELECT position FROM bound) END AS position) "
    "SELECT matched.record, scanned.position FROM scanned LEFT JOIN "
    "(SELECT {record} AS record, events.position FROM chosen JOIN events ON events.position = chosen.position "
    "{also}) "
    "AS matched ON 1 ORDER BY matched.position"
)
"""A page of events of the types asked for, as `_typed_page` says, in one statement."""
_SELECT_CATEGORY_PAGE: Final = (
    f"SELECT {{record}}, position FROM events WHERE {_CATEGORY} = ? AND position > ? ORDER BY position LIMIT ?"
)
_SELECT_ALL_PAGE: Final = "SELECT {record} FROM events WHERE position > ? AND position <= ? {also} ORDER BY position"
_IN_PREFIX: Final = "substr(stream_id, 1, ?) = ?"
_SELECT_ID_RECORDS: Final = (
    "SELECT event_id, stream_id, version, batch_first, batch_last, position FROM events "
    "WHERE event_id IN (SELECT value FROM json_each(?1)) "
    "UNION ALL SELECT event_id, stream_id, version, batch_first, batch_last, position FROM trimmed_events "
    "WHERE event_id IN (SELECT value FROM json_each(?1))"
)


def _version_of(stream_id_sql: str) -> str:
    """A stream's version as SQL: its last event's, through the `(stream_id, version)` index, or the one `streams`
    kept for it when a trim deleted its last events. Since schema 7 an append writes no `streams` row: the index
    leaf it reads is the one its insert then changes, where a row of its own was one more page written per append,
    in another place of the file for each stream (docs/measurements.md). Rows an earlier schema kept for every
    stream are at most the version, never above it."""
    return (
        f"max(coalesce((SELECT max(version) FROM events WHERE stream_id = {stream_id_sql}), 0), "
        f"coalesce((SELECT version FROM streams WHERE stream_id = {stream_id_sql}), 0))"
    )


_SELECT_GROUP_STATE: Final = (
    "SELECT "
    "(SELECT json_group_array(event_id) FROM ("
    "SELECT event_id FROM events WHERE event_id IN (SELECT value FROM json_each(?1)) "
    "UNION ALL SELECT event_id FROM trimmed_events WHERE event_id IN (SELECT value FROM json_each(?1)))), "
    "(SELECT json_group_object(value, version) FROM ("
    f"SELECT value, {_version_of('value')} AS version FROM json_each(?2)) WHERE version > 0), "
    "(SELECT seq FROM sqlite_sequence WHERE name = 'events')"
)
"""Everything a group's checks need, as one row from one statement: which of the group's event ids are already
known (a JSON array), the current versions of the group's streams (a JSON object) and the head position."""
_SELECT_VERSION: Final = f"SELECT {_version_of('?1')}"
_INSERT_EVENTS: Final = (
    "INSERT INTO events (position, stream_id, version, type, event_id, batch_first, batch_last, record, data, "
    "metadata, recorded_at_us) VALUES {rows}"
)
_KEEP_VERSION: Final = (
    "INSERT INTO streams (stream_id, version) SELECT stream_id, max(version) FROM events WHERE stream_id = ?1 "
    "GROUP BY stream_id ON CONFLICT (stream_id) DO UPDATE SET version = max(version, excluded.version)"
)
"""Before a trim: keep the stream's version in `streams`, where it outlives the events the trim deletes."""
_INSERT_EVENTS_GROUP: Final = _INSERT_EVENTS.replace("INSERT INTO", "INSERT OR ROLLBACK INTO")
"""The group's writes. `OR ROLLBACK` ends the whole transaction on a constraint failure instead of undoing only
the failing statement, which spares SQLite a statement journal (a copy of every page the statement first touches:
the cost of inserting rows into many streams' places in the `(stream_id, version)` index at once)."""
_INSERT_BLOB: Final = "INSERT OR IGNORE INTO blobs (digest, content) VALUES (?, ?)"
_INSERT_LINKS: Final = "INSERT INTO event_blobs (position, digest) VALUES {rows}"
_INSERT_LINKS_GROUP: Final = _INSERT_LINKS.replace("INSERT INTO", "INSERT OR ROLLBACK INTO")
_SELECT_BLOBS: Final = "SELECT digest, content FROM blobs WHERE digest IN (SELECT value FROM json_each(?))"
_TRIMMED_POSITIONS: Final = "SELECT position FROM events WHERE stream_id = ?1 AND version < ?2"
_SELECT_TRIMMED_LINKS: Final = f"SELECT DISTINCT digest FROM event_blobs WHERE position IN ({_TRIMMED_POSITIONS})"
_DELETE_TRIMMED_LINKS: Final = f"DELETE FROM event_blobs WHERE position IN ({_TRIMMED_POSITIONS})"
_SWEEP_BLOBS: Final = (
    "DELETE FROM blobs WHERE digest IN (SELECT value FROM json_each(?)) "
    "AND NOT EXISTS (SELECT 1 FROM event_blobs WHERE event_blobs.digest = blobs.digest)"
)
"""A trim's blob writes, before it deletes the events: the links of the events it removes go, then every blob of
theirs no other event links to (in the trim's own transaction)."""
ROWS_PER_STATEMENT: Final = 64
"""Rows per multi-row INSERT: one statement step (one release of the GIL) writes them all."""
_UPSERT_CHECKPOINT: Final = (
    "INSERT INTO checkpoints (name, position) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position"
)
_SELECT_STREAM_PAGE: Final = (
    f"SELECT CAST({_RECORD} AS BLOB), version FROM events WHERE stream_id = ? AND version > ? ORDER BY version LIMIT ?"
)
_STREAM_PAGE_ROWS: Final = (
    f"(SELECT {_RECORD} AS record, version FROM events WHERE stream_id = ? AND version > ? ORDER BY version LIMIT ?)"
)
_SELECT_STREAM_PAGE_BACKWARDS: Final = (
    f"SELECT CAST({_RECORD} AS BLOB) FROM events WHERE stream_id = ? AND version < ? AND version > ? "
    "ORDER BY version DESC LIMIT ?"
)
_SELECT_STREAM_PAGE_SEPARATED: Final = (
    f"SELECT CAST(group_concat(record, char(30)) AS BLOB), count(*), max(version) FROM {_STREAM_PAGE_ROWS}"
)
_RECORD_SEPARATOR: Final = b"\x1e"  # char(30): JSON text holds no raw control character

_json_encoder = msgspec.json.Encoder()
PAGES_AHEAD: Final = 4
"""How many pages a stream read fetches ahead of its reader, at most."""
_page_decoder = msgspec.json.Decoder(list[RecordedEvent])
_record_decoder = msgspec.json.Decoder(RecordedEvent)
_id_list_decoder = msgspec.json.Decoder(list[str])
_versions_decoder = msgspec.json.Decoder(dict[str, int])

# Primary result codes (https://www.sqlite.org/rescode.html).
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_READONLY: Final = 8
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26


@dataclass(frozen=True, slots=True)
class SQLiteSettings:
    """What `open_store` read from the URL and keyword options."""

    path: str
    synchronous: str = "FULL"
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    read_cache_mb: int = DEFAULT_READ_CACHE_MB
    blob_threshold: int = DEFAULT_BLOB_THRESHOLD
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    write_cache_mb: int = DEFAULT_WRITE_CACHE_MB
    checkpoint_pages: int = DEFAULT_CHECKPOINT_PAGES


OPTIONS: Final = (
    Option("synchronous", str, "FULL", choices=SYNCHRONOUS_MODES),
    Option("busy_timeout", int, DEFAULT_BUSY_TIMEOUT_MS, minimum=0, maximum=2**31 - 1),
    MAX_EVENT_SIZE,
    Option("read_cache_mb", int, DEFAULT_READ_CACHE_MB, minimum=0, maximum=2**20),
    BLOB_THRESHOLD,
    MAX_BLOB_SIZE,
    Option("write_cache_mb", int, DEFAULT_WRITE_CACHE_MB, minimum=0, maximum=2**20),
    Option("checkpoint_pages", int, DEFAULT_CHECKPOINT_PAGES, minimum=1, maximum=2**31 - 1),
)
"""What `sqlite://` accepts, in its query or as keywords (see `open_store`)."""


def parse_url(url: str, **options: Any) -> SQLiteSettings:
    """Read `sqlite:///relative.db` or `sqlite:////absolute/path.db` and its options; raise `InvalidURL` if bad.

    Keyword options override query options.
    """
    split_url(url, ("sqlite",))
    shown = redact(url)
    rest = url.partition("://")[2]
    location = rest.split("?", 1)[0]
    if not location.startswith("/"):
        raise InvalidURL(
            f"{shown!r} names a host; use sqlite:///relative/path.db or sqlite:////absolute/path.db (no host)"
        )
    path = unquote(location[1:])
    if not path:
        raise InvalidURL(f"{shown!r} has no file path: use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if path == ":memory:" or path.startswith("file:"):
        raise InvalidURL(f"{shown!r}: the sqlite backend needs a file path; use memory:// for a store in memory")
    values = parse_options(url, OPTIONS, options)
    return SQLiteSettings(
        path,
        cast(str, values["synchronous"]),
        cast(int, values["busy_timeout"]),
        cast(int, values["max_event_size"]),
        cast(int, values["read_cache_mb"]),
        cast(int, values["blob_threshold"]),
        cast(int, values["max_blob_size"]),
        cast(int, values["write_cache_mb"]),
        cast(int, values["checkpoint_pages"]),
    )


def translate_error(error: sqlite3.Error, path: str) -> AgentfoldError:
    """The one place where driver errors become `agentfold.errors`."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    where = f"SQLite store {path!r}"
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreTimeout(f"{where} stayed locked by another writer beyond the busy timeout: {error}")
    if primary == _SQLITE_FULL:
        return StoreFull(f"{where} is full (disk or size limit): {error}")
    if primary == _SQLITE_READONLY:
        return StoreReadOnly(f"{where} is read-only: {error}")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or isinstance(error, sqlite3.IntegrityError):
        return StoreCorrupted(f"{where} holds data agentfold did not write: {error}")
    return StoreUnavailable(f"{where} is unavailable: {error}")


class _AppendRequest:
    """One append waiting for its group; `outcome` is set in the writer thread."""

    __slots__ = ("events", "expected", "indexed", "outcome", "stream_id", "watched")

    def __init__(
        self, stream_id: str, events: list[EncodedEvent], expected: ExpectedVersion, watched: Watched | None = None
    ) -> None:
        self.stream_id = stream_id
        self.events = events
        self.expected = expected
        self.watched = watched
        self.outcome: AppendResult | BaseException | None = None
        self.indexed = runrows.written(stream_id, _read_back(events), 0, 0)
        """What the append does to the runs index if it is written, computed before the writer takes the file's
        lock (its version and time are set when it is written: `_indexed`)."""


def _indexed(request: _AppendRequest, version: int, at_us: int) -> runrows.Written | None:
    """The request's runs-index updates as written at stream version `version` and time `at_us`."""
    found = request.indexed
    return None if found is None else msgspec.structs.replace(found, version=version, at_us=at_us)


class _WriteJob:
    """Any other write (snapshot, trim, checkpoint), run in its own savepoint inside a group."""

    __slots__ = ("outcome", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        self.work = work
        self.outcome: Any = None


_Request = _AppendRequest | _WriteJob


BLOB_WEIGHT: Final = 4096
"""Blob bytes that weigh as much as one event in a group (`MAX_GROUP_EVENTS`): about 80 MB of blobs per group."""


def _size(request: _Request) -> int:
    if not isinstance(request, _AppendRequest):
        return 1
    events = request.events
    return len(events) + sum(len(blob.content) for event in events for blob in event.blobs) // BLOB_WEIGHT


def _connect(settings: SQLiteSettings, *, writer: bool) -> sqlite3.Connection:
    connection = sqlite3.connect(
        settings.path,
        timeout=settings.busy_timeout_ms / 1000,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=512,
    )
    try:
        connection.execute(f"PRAGMA busy_timeout = {settings.busy_timeout_ms}")
        if writer:
            connection.execute(f"PRAGMA synchronous = {settings.synchronous}")
            connection.execute(f"PRAGMA cache_size = {-1024 * settings.write_cache_mb}")
            connection.execute(f"PRAGMA wal_autocheckpoint = {settings.checkpoint_pages}")
            # The journal a statement or savepoint keeps within a group's transaction stays in memory instead of a
            # temporary file created and deleted on many commits (docs/measurements.md).
            connection.execute("PRAGMA temp_store = MEMORY")
        else:
            connection.execute("PRAGMA query_only = 1")
            connection.execute(f"PRAGMA cache_size = {-1024 * settings.read_cache_mb}")
    except BaseException:
        connection.close()
        raise
    return connection


def _switch_to_wal(connection: sqlite3.Connection, attempts: int = 100) -> str:
    """`PRAGMA journal_mode = WAL`, retried: while another process is switching a fresh file, SQLite may answer
    "database is locked" at once instead of waiting for the busy timeout."""
    attempt = 0
    while True:
        try:
            return str(connection.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as error:
            attempt += 1
            if "locked" not in str(error) or attempt >= attempts:
                raise
            time.sleep(0.01 * (1 + attempt % 10))


def _create_schema(connection: sqlite3.Connection, path: str) -> None:
    """Switch to WAL and create the tables. Idempotent; two processes may run it at once (the write lock orders
    them and the second finds everything in place)."""
    mode = _switch_to_wal(connection)
    if str(mode).lower() != "wal":
        raise StoreUnavailable(f"SQLite store {path!r} cannot use WAL mode (journal_mode is {mode})")
    found = connection.execute("PRAGMA user_version").fetchone()[0]
    if found == SCHEMA_VERSION:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        found = connection.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"SQLite store {path!r} has schema version {found}, newer than this agentfold understands "
                f"({SCHEMA_VERSION}); upgrade agentfold"
            )
        if found == 0:
            for statement in _SCHEMA:
                connection.execute(statement)
        for step in range(max(found, 1) + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                connection.execute(statement)
        # The tables a step added are filled from the log once every step has run: the fills read the events as
        # the current schema stores them.
        if 0 < found < 4:
            _fill_open_runs(connection)
        if 0 < found < 5:
            _fill_runs_index(connection)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _rebuild_open_runs(connection: sqlite3.Connection) -> int:
    connection.execute("DELETE FROM open_runs")
    _fill_open_runs(connection)
    return int(connection.execute("SELECT count(*) FROM open_runs").fetchone()[0])


def _fill_open_runs(connection: sqlite3.Connection) -> None:
    """Fold the open runs of a file that had events before it kept them (once, in the upgrade's transaction, which
    holds the write lock: no append comes in between), through the type index."""
    found = connection.execute(_SELECT_KEPT_EVENTS, (*openruns.KEPT_TYPES, openruns.WORKFLOW_STREAM_PREFIX))
    runs = openruns.fold((stream_id, event_type, data.encode()) for stream_id, event_type, data in found)
    connection.executemany(
        "INSERT INTO open_runs (workflow_id, workflow, owner) VALUES (?, ?, ?)",
        [(run.workflow_id, run.workflow, run.owner) for run in runs.values()],
    )


def _apply_open_runs(connection: sqlite3.Connection, found: Sequence[openruns.Change]) -> None:
    """Apply an append's open-run changes, in order, in the caller's transaction."""
    for change in found:
        parameters = {"run": change.workflow_id, "workflow": change.workflow, "owner": change.owner}
        connection.execute(_OPEN_RUN_SQL[change.kind], parameters)


def _open_run_changes(stream_id: str, events: Sequence[EncodedEvent]) -> list[openruns.Change]:
    return openruns.changes(stream_id, ((event.type, event.data) for event in events))


_RUN_COLUMNS: Final = ", ".join(runrows.COLUMNS)
_SELECT_RUN_ROWS: Final = (
    f"SELECT {_RUN_COLUMNS} FROM {runs_tables.TABLE} WHERE workflow_id IN (SELECT value FROM json_each(?))"
)
_SELECT_WORKER_EXPIRIES: Final = (
    f"SELECT worker, expires_at_us FROM {runs_tables.WORKERS_TABLE} WHERE worker IN (SELECT value FROM json_each(?))"
)
_RESUME_RUNS: Final = (
    f"UPDATE {runs_tables.TABLE} SET status = 'Processing', last_event_at_us = ?, last_event_type = ?, version = ? "
    "WHERE workflow_id = ? AND status = 'Suspended'"
)
"""What an ordinary event does to its run's row (`agentfold.runrows.only_resumes`): a suspended run goes on."""
_SUSPENDED_RUNS: Final = f"SELECT 1 FROM {runs_tables.COUNTS_TABLE} WHERE status = 'Suspended' AND runs > 0"
_RUNS_INDEX_CATEGORIES: Final = (openruns.WORKFLOW_STREAM_PREFIX, runrows.WORKER_STREAM_PREFIX)
"""The categories of the streams whose events change the runs index: runs' and workers'."""
_FOLD_PAGE: Final = 5000


def _read_back(events: Sequence[EncodedEvent]) -> Iterator[runrows.Encoded]:
    return ((event.type, event.data, event.metadata) for event in events)


def _apply_runs_index(connection: sqlite3.Connection, appends: Sequence[runrows.Written]) -> None:
    """Apply written appends' runs-index updates, in order, in the caller's transaction."""
    if not appends:
        return
    apart = runrows.resuming(appends)
    resumed = [append for append, resumes in zip(appends, apart, strict=True) if resumes]
    if resumed and connection.execute(_SUSPENDED_RUNS).fetchone():
        # A run's steps change the rows of the runs that are suspended (the counts say whether any is): one statement.
        values = [
            (append.at_us, append.run.whole.last_event_type, append.version, append.run.workflow_id)
            for append in resumed
            if append.run is not None
        ]
        moved = connection.executemany(_RESUME_RUNS, values).rowcount
        if moved > 0:
            connection.executemany(runs_tables.add_count(), [("Suspended", -moved), ("Processing", moved)])
    others = [append for append, resumes in zip(appends, apart, strict=True) if not resumes]
    if not others:
        return
    rows = _load_runs_index(connection, runrows.named_runs(others), runrows.named_workers(others))
    rows.apply(others)
    _write_runs_index(connection, rows)


def _load_runs_index(connection: sqlite3.Connection, run_ids: Iterable[str], workers: Iterable[str]) -> runrows.Rows:
    """The stored rows of these runs and workers (those that have one)."""
    run_list, worker_list = list(run_ids), list(workers)
    runs = {}
    if run_list:
        for record in connection.execute(_SELECT_RUN_ROWS, (_json_list(run_list),)):
            runs[record[0]] = runrows.RunRow(*record)
    expiries: dict[str, int] = {}
    if worker_list:
        expiries = dict(connection.execute(_SELECT_WORKER_EXPIRIES, (_json_list(worker_list),)).fetchall())
    return runrows.Rows(runs, expiries)


def _write_runs_index(connection: sqlite3.Connection, rows: runrows.Rows) -> None:
    changed, counts, workers = rows.changes()
    if changed:
        connection.executemany(runs_tables.upsert_row(), [runrows.row_values(row) for row in changed])
    if counts:
        connection.executemany(runs_tables.add_count(), list(counts.items()))
    if workers:
        connection.executemany(runs_tables.set_worker(), list(workers.items()))


def _fold_runs_index(connection: sqlite3.Connection, after_position: int) -> None:
    """Fold the events of runs' and workers' streams after `after_position` into the runs index, a page at a time
    through the category index (the two tables are independent, so one category after the other)."""
    for category in _RUNS_INDEX_CATEGORIES:
        after = after_position
        while True:
            records = connection.execute(
                _SELECT_CATEGORY_PAGE.format(record=_RECORD), (category, after, _FOLD_PAGE)
            ).fetchall()
            if not records:
                break
            _apply_runs_index(connection, runrows.recorded(_record_decoder.decode(record) for record, _ in records))
            after = records[-1][1]


def _fill_runs_index(connection: sqlite3.Connection) -> None:
    """Bring the runs index of a file that had events before appends kept it up to its head (once, in the upgrade's
    transaction, which holds the write lock): from the checkpoint of the projector that kept it then, if it has
    one, else from the start; then drop that checkpoint."""
    row = connection.execute(
        "SELECT position FROM checkpoints WHERE name = ?", (runs_tables.PROJECTOR_NAME,)
    ).fetchone()
    _fold_runs_index_again(connection, 0 if row is None else int(row[0]))
    connection.execute("DELETE FROM checkpoints WHERE name = ?", (runs_tables.PROJECTOR_NAME,))


def _fold_runs_index_again(connection: sqlite3.Connection, after_position: int) -> None:
    """Fold the runs index on from `after_position` (0: from nothing, every row dropped first), then count the runs
    per status again from the rows."""
    if after_position == 0:
        for statement in runs_tables.clear():
            connection.execute(statement)
    _fold_runs_index(connection, after_position)
    for statement in runs_tables.recount():
        connection.execute(statement)


def _rebuild_runs_index(connection: sqlite3.Connection) -> int:
    _fold_runs_index_again(connection, 0)
    return int(connection.execute(f"SELECT count(*) FROM {runs_tables.TABLE}").fetchone()[0])


def _json_list(values: Iterable[str]) -> str:
    return _json_encoder.encode(list(values)).decode()


def _load_id_records(connection: sqlite3.Connection, ids: Sequence[str]) -> dict[str, IdRecord]:
    rows = connection.execute(_SELECT_ID_RECORDS, (_json_list(ids),)).fetchall()
    return {row[0]: IdRecord(*row[1:]) for row in rows}


def _escaped_in_json(text: str) -> bool:
    """Whether JSON would escape a character of `text` (stream ids and types hold no control characters)."""
    return '"' in text or "\\" in text


class _StoredRecord(msgspec.Struct, frozen=True, gc=False):
    """A whole event as the JSON a `RecordedEvent` decodes from, as `record` holds it in the rows that keep it."""

    stream_id: str
    version: int
    position: int
    type: str
    data: msgspec.Raw
    metadata: msgspec.Raw
    _id: str
    _recorded_at_us: int


def _event_rows(
    stream_id: str, events: list[EncodedEvent], first_version: int, first_position: int, now_us: int
) -> list[tuple[Any, ...]]:
    """The `events` rows of an append, as `_INSERT_EVENTS` takes them: each fact once, in its column (`_RECORD` says
    how a reader gets the event back). An event whose stream id or type holds a character JSON escapes (`"` or
    `\\`) is kept whole in `record` instead, as every event was before schema 6, so that reads of the others build
    their JSON without quoting texts."""
    last_version = first_version + len(events) - 1
    stream_escaped = _escaped_in_json(stream_id)
    rows: list[tuple[Any, ...]] = []
    for offset, event in enumerate(events):
        version = first_version + offset
        position = first_position + offset
        facts = (position, stream_id, version, event.type, event.id, first_version, last_version)
        if stream_escaped or _escaped_in_json(event.type):
            whole = _StoredRecord(
                stream_id,
                version,
                position,
                event.type,
                msgspec.Raw(event.data),
                msgspec.Raw(event.metadata),
                event.id,
                now_us,
            )
            rows.append((*facts, _json_encoder.encode(whole).decode(), None, None, None))
        else:
            rows.append((*facts, "", event.data.decode(), event.metadata.decode(), now_us))
    return rows


def _blob_rows(
    events: list[EncodedEvent], first_position: int, blobs: dict[str, bytes], links: list[tuple[int, str]]
) -> None:
    """Add the blobs of an append's events to `blobs` (digest -> content) and their links to `links`."""
    for offset, event in enumerate(events):
        for blob in event.blobs:
            blobs[blob.digest] = blob.content
            links.append((first_position + offset, blob.digest))


def _insert_blobs(
    connection: sqlite3.Connection, blobs: dict[str, bytes], links: list[tuple[int, str]], template: str
) -> None:
    """Write the blobs (a digest already stored keeps its row) and the links, in the caller's transaction."""
    connection.executemany(_INSERT_BLOB, blobs.items())
    _insert_rows(connection, template, links)


@functools.lru_cache(maxsize=256)
def _multi_row_sql(template: str, row_count: int, width: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return template.format(rows=", ".join([row] * row_count))


def _insert_rows(connection: sqlite3.Connection, template: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `rows` with multi-row statements of at most `ROWS_PER_STATEMENT` rows (few distinct SQL texts, so
    the prepared statements stay cached)."""
    width = len(rows[0])
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        connection.execute(_multi_row_sql(template, len(chunk), width), [value for row in chunk for value in row])


def _decode_page(rows: list[tuple[str]]) -> list[RecordedEvent]:
    """Decode the `record` column of a page of rows with one msgspec call."""
    if not rows:
        return []
    try:
        page = _page_decoder.decode("[" + ",".join([row[0] for row in rows]) + "]")
    except (msgspec.DecodeError, TypeError) as error:
        raise StoreCorrupted(f"a stored event does not decode as an event record: {error}") from None
    if len(page) != len(rows):
        raise StoreCorrupted(f"{len(rows)} stored event records decoded as {len(page)} events")
    return page


def _fetch_page_records(
    connection: sqlite3.Connection, stream_id: str, after_version: int, limit: int
) -> tuple[list[bytes], int, int]:
    """A page of the stream's stored records, one by one, for a fold to decode each just before its handler runs,
    with the page's event count and last version. The records are bytes (so that msgspec checks the text's UTF-8
    and a damaged record is `StoreCorrupted`), and come in no promised order (the store puts them in version order).

    SQLite joins the records into one blob, without the GIL and without a Python string per row, and the blob is
    split here at a separator that JSON text cannot hold (a raw control character is invalid JSON outside a string
    and escaped inside one). A page longer than SQLite's string limit (`SQLITE_MAX_LENGTH`, 1 GB by default) is
    fetched row by row instead.
    """
    try:
        joined, count, last_version = connection.execute(
            _SELECT_STREAM_PAGE_SEPARATED, (stream_id, after_version, limit)
        ).fetchone()
    except sqlite3.DataError:
        return _fetch_page_rows(connection, stream_id, after_version, limit)
    if not count:
        return [], 0, after_version
    records: list[bytes] = joined.split(_RECORD_SEPARATOR)
    if len(records) != count:
        raise StoreCorrupted(f"stream {stream_id!r}: a stored event record holds a raw control character (char 30)")
    return records, count, last_version


def _fetch_page_rows(
    connection: sqlite3.Connection, stream_id: str, after_version: int, limit: int
) -> tuple[list[bytes], int, int]:
    """A page's records row by row, in version order, with its event count and last version: for a page longer
    than SQLite's string limit."""
    rows = connection.execute(_SELECT_STREAM_PAGE, (stream_id, after_version, limit)).fetchall()
    return [row[0] for row in rows], len(rows), rows[-1][1] if rows else after_version


class _PageProducer:
    """One reader-thread job of a stream read: fetches pages in order until the stream ends, the read stops, or
    it is `ahead` pages in front of the reader (so a slow reader never holds more than that in memory, nor a
    reader thread at all). Pages go to `pages`; `None` follows the last one."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stream_id: str,
        after_version: int,
        remaining: int | None,
        page_size: int,
        ahead: int,
        fetch: Callable[[sqlite3.Connection, str, int, int], tuple[Any, int, int]],
    ) -> None:
        self.pages: asyncio.Queue[Any] = asyncio.Queue()
        self.after_version = after_version
        self.remaining = remaining
        self.exhausted = False
        self.stopped = False
        self.taken = 0
        self._produced = 0
        self._loop = loop
        self._stream_id = stream_id
        self._page_size = page_size
        self._ahead = ahead
        self._fetch = fetch

    def produce(self, connection: sqlite3.Connection) -> None:
        """Runs in a reader thread."""
        while not self.stopped and self._produced - self.taken < self._ahead:
            remaining = self.remaining
            size = self._page_size if remaining is None else min(self._page_size, remaining)
            raw, count, last_version = self._fetch(connection, self._stream_id, self.after_version, size)
            self._produced += 1
            self._loop.call_soon_threadsafe(self.pages.put_nowait, raw)
            self.after_version = last_version
            if remaining is not None:
                self.remaining = remaining - count
            if count < size or self.remaining == 0:
                self.exhausted = True
                return

    def finish(self, _job: asyncio.Future[None]) -> None:
        self.pages.put_nowait(None)


def _settle(future: asyncio.Future[list[Any]], outcome: list[Any] | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


_Queued = tuple[list[_Request], asyncio.Future[list[Any]]]
"""A group handed to the writer thread and the future of its outcomes."""


def _settle_all(settled: list[tuple[asyncio.Future[list[Any]], list[Any] | BaseException]]) -> None:
    """Hand the outcomes of the groups of one transaction to their callers, in one callback on the event loop."""
    for future, outcome in settled:
        _settle(future, outcome)


class _Writer:
    """The writer thread: commits the groups handed to it, in order, on the writer connection, and hands their
    outcomes back to the event loop in one callback per transaction. A group and the groups queued behind it when
    the thread takes it share one transaction (one fsync); the queueing and grouping on the event loop are
    `GroupCommitter`'s."""

    def __init__(self, connection: sqlite3.Connection, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self._connection = connection
        self._path = path
        self._loop = loop
        self._groups: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self.commits = 0
        self.thread = threading.Thread(target=self._run, name=f"agentfold-sqlite-writer:{path}", daemon=True)
        self.thread.start()

    def commit(self, group: list[_Request]) -> asyncio.Future[list[Any]]:
        """Queue `group` behind the groups queued before it; the future gets its outcomes."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._groups.put((group, future))
        return future

    def stop(self) -> None:
        """Stop the thread after the groups queued before, and close the connection."""
        self._groups.put(None)

    def _run(self) -> None:
        try:
            waiting: _Queued | None = None
            stopping = False
            while not stopping:
                first = waiting if waiting is not None else self._groups.get()
                if first is None:
                    return
                taken, waiting, stopping = self._gather(first)
                requests = [request for group, _ in taken for request in group]
                try:
                    outcome: list[Any] | BaseException = self.commit_group(requests)
                except BaseException as error:  # a bug: the group's callers get it rather than waiting forever
                    outcome = error
                settled: list[tuple[asyncio.Future[list[Any]], list[Any] | BaseException]] = []
                start = 0
                for group, future in taken:
                    end = start + len(group)
                    settled.append((future, outcome if isinstance(outcome, BaseException) else outcome[start:end]))
                    start = end
                try:
                    self._loop.call_soon_threadsafe(_settle_all, settled)
                except RuntimeError:
                    return  # the event loop is gone; nobody is waiting for these outcomes
        finally:
            self._connection.close()

    def _gather(self, first: _Queued) -> tuple[list[_Queued], _Queued | None, bool]:
        """`first` and the groups queued behind it, in order, as long as together they stay within one group's
        limits; the first group left over (or None), and whether `stop` was queued.

        The groups formed on the event loop while the last transaction committed then commit in one transaction
        (one fsync) instead of one after another. Appends that arrive one by one, as HTTP requests do, would
        otherwise form a small group as soon as the writer is busy and wait behind it (docs/measurements.md).
        """
        taken: list[_Queued] = [first]
        count = len(first[0])
        weight = sum(_size(request) for request in first[0])
        while True:
            try:
                queued = self._groups.get_nowait()
            except queue.Empty:
                return taken, None, False
            if queued is None:
                return taken, None, True
            more = sum(_size(request) for request in queued[0])
            if count + len(queued[0]) > MAX_GROUP_APPENDS or weight + more > MAX_GROUP_EVENTS:
                return taken, queued, False
            taken.append(queued)
            count += len(queued[0])
            weight += more

    def commit_group(self, group: list[_Request]) -> list[Any]:
        """Commit `group` in one transaction; one outcome per request (a result, or the error that is its outcome)."""
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._apply_group(group)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            self.commits += 1
        except sqlite3.Error as error:
            return [translate_error(error, self._path) for _ in group]
        return [request.outcome for request in group]

    def _apply_group(self, group: list[_Request]) -> None:
        appends = [request for request in group if type(request) is _AppendRequest]
        if appends:
            for leftover in self._append_together(appends):
                self._append_alone(leftover)
        if len(appends) < len(group):
            for job in group:
                if isinstance(job, _WriteJob):
                    self._in_savepoint(job, job.work)

    def _append_together(self, appends: list[_AppendRequest]) -> list[_AppendRequest]:
        """Check and write every append that reuses no known event id with a few statements in all: one that reads
        the known ids, the versions and the head, then multi-row INSERTs of the events and of the stream versions
        (one statement per `ROWS_PER_STATEMENT` rows; a group of one-event appends from 16 tasks needs one each).

        Version checks run in Python against the versions read at the start of the transaction, updated as each
        append is accepted: the same serial order the appends then commit in. An append that fails its check is
        never written, so it needs no rollback. Appends reusing a known id (retries, duplicates) are returned for
        `_append_alone`; they were submitted concurrently with the others, so running them afterwards is a valid
        serial order too. Nothing is written in the transaction before this step, so if the tables turn out to
        disagree with the checks (a damaged file), rolling the whole transaction back undoes exactly this step.
        """
        connection = self._connection
        now_us = time.time_ns() // 1000
        all_ids = [event.id for request in appends for event in request.events]
        stream_ids = list({request.stream_id: None for request in appends})
        watched_ids = {request.watched.stream_id for request in appends if request.watched is not None}
        stream_ids += watched_ids.difference(stream_ids)
        known_text, versions_text, head = connection.execute(
            _SELECT_GROUP_STATE, (_json_list(all_ids), _json_list(stream_ids))
        ).fetchone()
        known_ids: set[str] = set() if known_text == "[]" else set(_id_list_decoder.decode(known_text))
        versions = _versions_decoder.decode(versions_text)
        next_position = head + 1 if head else 1
        rows: list[tuple[Any, ...]] = []
        blobs: dict[str, bytes] = {}
        links: list[tuple[int, str]] = []
        opened: list[openruns.Change] = []
        indexed: list[runrows.Written] = []
        leftovers: list[_AppendRequest] = []
        for request in appends:
            stream_id = request.stream_id
            events = request.events
            ids = [event.id for event in events]
            watched = request.watched
            if watched is not None:
                try:
                    check_watched(watched, versions.get(watched.stream_id, 0))
                except WatchedStreamMoved as moved:
                    request.outcome = moved
                    continue
            if not known_ids.isdisjoint(ids):
                leftovers.append(request)
                continue
            current = versions.get(stream_id, 0)
            expected = request.expected
            if expected is not ANY:
                try:
                    check_expected(stream_id, expected, current)
                except WrongExpectedVersion as error:
                    request.outcome = error
                    continue
            known_ids.update(ids)
            count = len(events)
            rows += _event_rows(stream_id, events, current + 1, next_position, now_us)
            _blob_rows(events, next_position, blobs, links)
            opened += _open_run_changes(stream_id, events)
            found = _indexed(request, current + count, now_us)
            if found is not None:
                indexed.append(found)
            next_position += count
            versions[stream_id] = current + count
            request.outcome = AppendResult(current + count, next_position - 1)
        if not rows:
            return leftovers
        try:
            _insert_rows(connection, _INSERT_EVENTS_GROUP, rows)
            if links:
                _insert_blobs(connection, blobs, links, _INSERT_LINKS_GROUP)
            _apply_open_runs(connection, opened)
            _apply_runs_index(connection, indexed)
        except sqlite3.IntegrityError:
            # The tables disagree with the checks above (a damaged file): fall back to one append at a time so
            # only the appends that meet the damage fail. `OR ROLLBACK` has already ended the transaction.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            connection.execute("BEGIN IMMEDIATE")
            for request in appends:
                request.outcome = None
            return appends
        return leftovers

    def _append_alone(self, request: _AppendRequest) -> None:
        now_us = time.time_ns() // 1000

        def append(connection: sqlite3.Connection) -> AppendResult:
            if request.watched is not None:
                watched = connection.execute(_SELECT_VERSION, (request.watched.stream_id,)).fetchone()
                check_watched(request.watched, watched[0] if watched else 0)
            ids = [event.id for event in request.events]
            known = _load_id_records(connection, ids)
            retry = find_retry(request.stream_id, request.events, [known.get(event.id) for event in request.events])
            if retry is not None:
                return retry
            row = connection.execute(_SELECT_VERSION, (request.stream_id,)).fetchone()
            current = row[0] if row else 0
            check_expected(request.stream_id, request.expected, current)
            head_row = connection.execute(_SELECT_HEAD).fetchone()
            first_position = head_row[0] + 1 if head_row else 1
            count = len(request.events)
            _insert_rows(
                connection,
                _INSERT_EVENTS,
                _event_rows(request.stream_id, request.events, current + 1, first_position, now_us),
            )
            blobs: dict[str, bytes] = {}
            links: list[tuple[int, str]] = []
            _blob_rows(request.events, first_position, blobs, links)
            if links:
                _insert_blobs(connection, blobs, links, _INSERT_LINKS)
            _apply_open_runs(connection, _open_run_changes(request.stream_id, request.events))
            found = _indexed(request, current + count, now_us)
            if found is not None:
                _apply_runs_index(connection, [found])
            return AppendResult(current + count, first_position + count - 1)

        self._in_savepoint(request, append)

    def _in_savepoint(self, request: _Request, work: Callable[[sqlite3.Connection], Any]) -> None:
        """Run one request alone: its own errors roll back only its own writes."""
        connection = self._connection
        connection.execute("SAVEPOINT one_request")
        try:
            request.outcome = work(connection)
        except (AgentfoldError, WatchedStreamMoved) as error:
            request.outcome = error
        except sqlite3.IntegrityError as error:
            request.outcome = translate_error(error, self._path)
        except BaseException:
            connection.execute("ROLLBACK TO one_request")
            connection.execute("RELEASE one_request")
            raise
        else:
            connection.execute("RELEASE one_request")
            return
        connection.execute("ROLLBACK TO one_request")
        connection.execute("RELEASE one_request")


class _SameFileStores:
    """The stores this process has open on each database file, so that an append wakes the waiting readers of the
    others at once. SQLite tells no one of a commit; without this, a worker and an app that each opened the file in
    one process would see each other's appends only at their next poll (`POLL_INTERVAL`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_file: dict[tuple[int, int], weakref.WeakSet[SQLiteBackend]] = {}

    def join(self, file: tuple[int, int], backend: SQLiteBackend) -> None:
        with self._lock:
            self._by_file.setdefault(file, weakref.WeakSet()).add(backend)

    def leave(self, file: tuple[int, int], backend: SQLiteBackend) -> None:
        with self._lock:
            stores = self._by_file.get(file)
            if stores is not None:
                stores.discard(backend)
                if not stores:
                    del self._by_file[file]

    def others(self, file: tuple[int, int], backend: SQLiteBackend) -> list[SQLiteBackend]:
        with self._lock:
            return [store for store in self._by_file.get(file, ()) if store is not backend]


_SAME_FILE: Final = _SameFileStores()


class SQLiteBackend:
    """The I/O of an event store in one SQLite file: a writer thread committing groups, reader threads."""

    scheme = "sqlite"
    reads_ahead = True  # a reader thread fetches the next pages while this one decodes and folds
    page_size = 500
    """Smaller than the default 1,000: a page's joined text and its events then fit memory this process already
    holds. With 1,000, each page took fresh memory from the OS, and folds and `read_all` were slower
    (docs/measurements.md)."""
    record_decoder: RecordDecoder | None = _record_decoder  # folds decode the records one by one

    def __init__(self, settings: SQLiteSettings, writer_connection: sqlite3.Connection) -> None:
        self.settings = settings
        self.max_event_size = settings.max_event_size
        self.blob_threshold = settings.blob_threshold
        self.max_blob_size = settings.max_blob_size
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._writer = _Writer(writer_connection, settings.path, self._loop)
        self._committer: GroupCommitter[_Request, Any] = GroupCommitter(
            self._commit_group,
            max_group=MAX_GROUP_APPENDS,
            max_weight=MAX_GROUP_EVENTS,
            weight=_size,
            in_flight=GROUPS_IN_FLIGHT,
            name="sqlite store",
        )
        self._readers = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="agentfold-sqlite-read")
        self._reader_local = threading.local()
        self._read_connections: list[sqlite3.Connection] = []
        self._read_connections_lock = threading.Lock()
        self._appended = Broadcast()
        self._committed_position = 0
        status = os.stat(settings.path)
        self._file = (status.st_dev, status.st_ino)
        _SAME_FILE.join(self._file, self)

    @property
    def path(self) -> str:
        """The database file."""
        return self.settings.path

    @property
    def synchronous(self) -> str:
        """`FULL` (every commit is fsynced) or `NORMAL` (may lose the last commits on power loss)."""
        return self.settings.synchronous

    @property
    def commit_count(self) -> int:
        """Write transactions committed by this store so far; appends / commits is the group-commit factor."""
        return self._writer.commits

    # -- writes ----------------------------------------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: list[EncodedEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        result: AppendResult = await self._committer.submit(_AppendRequest(stream_id, events, expected_version))
        return result

    async def append_watching(
        self, stream_id: str, events: list[EncodedEvent], expected_version: ExpectedVersion, watched: Watched
    ) -> AppendResult:
        """`WatchingAppends.append_watching`: the watched stream's version is read in the append's transaction (in
        the group's state read, beside the streams appended to)."""
        request = _AppendRequest(stream_id, events, expected_version, watched)
        result: AppendResult = await self._committer.submit(request)
        return result

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the writer connection inside a write transaction, in its own savepoint."""
        if self._closed:
            raise StoreClosed("the sqlite store is closed")
        outcome: T = await self._committer.submit(_WriteJob(work))
        return outcome

    async def _commit_group(self, group: list[_Request]) -> list[Any]:
        """Commit a group in the writer thread, then wake the waiting readers, this store's and those of the other
        stores of this process on the file, when it appended."""
        outcomes = await self._writer.commit(group)
        last = max((outcome.position for outcome in outcomes if type(outcome) is AppendResult), default=0)
        if last:
            self._take_committed(last)
            for other in _SAME_FILE.others(self._file, self):
                other._appended_elsewhere(last)
        return outcomes

    def _appended_elsewhere(self, position: int) -> None:
        """Another store of this process committed up to `position` in this file: this one's readers, waiting now
        or about to wait for what is below it, return at once. Run in this store's own loop (the other store may
        run in another thread, as the sync API's does)."""
        with contextlib.suppress(RuntimeError):  # this store's loop is closed: nobody waits in it
            self._loop.call_soon_threadsafe(self._take_committed, position)

    def _take_committed(self, position: int) -> None:
        """Events up to `position` are committed: wake this store's waiting readers."""
        if position > self._committed_position:
            self._committed_position = position
        self._appended.wake()

    # -- reads -----------------------------------------------------------------------------------------------------

    def _read_connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._reader_local, "connection", None)
        if connection is None:
            connection = _connect(self.settings, writer=False)
            self._reader_local.connection = connection
            with self._read_connections_lock:
                self._read_connections.append(connection)
        return connection

    def _run_read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        try:
            connection = self._read_connection()
            try:
                return query(connection)
            finally:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
        except sqlite3.Error as error:
            raise translate_error(error, self.settings.path) from None

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._loop.run_in_executor(self._readers, self._run_read, query)
        except RuntimeError as error:
            if self._closed:
                raise StoreClosed("the sqlite store is closed") from None
            raise error

    async def read_stream_backwards(
        self, stream_id: str, before_version: int, after_version: int, limit: int
    ) -> list[RecordedEvent]:
        def query(connection: sqlite3.Connection) -> list[bytes]:
            rows = connection.execute(
                _SELECT_STREAM_PAGE_BACKWARDS, (stream_id, before_version, after_version, limit)
            ).fetchall()
            return [row[0] for row in rows]

        records = await self._read(query)
        try:
            return list(map(_record_decoder.decode, records))
        except msgspec.DecodeError as error:
            raise StoreCorrupted(f"a stored event does not decode as an event record: {error}") from None

    def read_stream_records(
        self, stream_id: str, after_version: int, limit: int | None
    ) -> AsyncGenerator[list[bytes], None]:
        # A fold decodes each record just before its handler: no page of decoded events is alive at once, so the
        # garbage collector stays idle during a fold, at the small cost of splitting the page
        # (docs/measurements.md).
        return self._produced_pages(stream_id, after_version, limit, _fetch_page_records)

    async def _produced_pages(
        self,
        stream_id: str,
        after_version: int,
        remaining: int | None,
        fetch: Callable[[sqlite3.Connection, str, int, int], tuple[Any, int, int]],
    ) -> AsyncGenerator[Any, None]:
        # A reader thread fetches the pages one after another while this thread decodes and folds the ones it
        # already has: SQLite builds a page without holding the GIL, so the two overlap on two cores. A thread
        # that is asked for a page only runs once this one waits (the GIL again), which is why a single job
        # fetches several pages rather than one job per page.
        while remaining is None or remaining > 0:
            producer = _PageProducer(
                self._loop,
                stream_id,
                after_version,
                remaining,
                self.page_size,
                PAGES_AHEAD if self.reads_ahead else 1,
                fetch,
            )
            job = asyncio.ensure_future(self._read(producer.produce))
            job.add_done_callback(producer.finish)
            try:
                while (raw := await producer.pages.get()) is not None:
                    producer.taken += 1
                    if raw:  # only the last page of a stream can be empty
                        yield raw
            finally:
                producer.stopped = True
                if not job.done():
                    job.add_done_callback(retrieve_outcome)  # the read stopped early; its last fetch is dropped
            job.result()  # the error that ended the job, after the pages it fetched before it
            if producer.exhausted:
                return
            after_version, remaining = producer.after_version, producer.remaining

    async def read_all_page(
        self,
        after_position: int,
        limit: int,
        types: tuple[str, ...] | None,
        stream_prefix: str | None,
    ) -> tuple[list[RecordedEvent], int]:
        # Each query reads its rows and the head in one read transaction, so from one snapshot: every position up
        # to that head is final in it (positions are assigned in the file's one write transaction at a time).
        category = None if stream_prefix is None else prefix_category(stream_prefix)
        if types is not None:
            query = functools.partial(_typed_page, after_position, limit, types, stream_prefix)
        elif stream_prefix is not None and category is not None:
            query = functools.partial(_category_page, after_position, limit, category, stream_prefix)
        else:
            query = functools.partial(_scanned_page, after_position, limit, stream_prefix)
        return await self._read(query)

    async def stream_version(self, stream_id: str) -> int:
        def query(connection: sqlite3.Connection) -> int:
            row = connection.execute(_SELECT_VERSION, (stream_id,)).fetchone()
            return int(row[0]) if row else 0

        return await self._read(query)

    async def head_position(self) -> int:
        return await self._read(_head)

    async def open_runs(self) -> tuple[int, list[openruns.OpenRun]]:
        def query(connection: sqlite3.Connection) -> tuple[int, list[openruns.OpenRun]]:
            connection.execute("BEGIN")  # one snapshot for the head and the rows
            position = _head(connection)
            rows = connection.execute(_SELECT_OPEN_RUNS).fetchall()
            return position, [openruns.OpenRun(*row) for row in rows]

        return await self._read(query)

    async def rebuild_open_runs(self) -> int:
        return await self._write(_rebuild_open_runs)  # in the writer's transaction: no append interleaves

    async def rebuild_runs_index(self) -> int:
        return await self._write(_rebuild_runs_index)  # in the writer's transaction: no append interleaves

    async def wait_for_append(self, after_position: int, timeout: float) -> None:
        deadline = self._loop.time() + timeout
        while self._committed_position <= after_position and not self._closed:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return
            ticket = self._appended.ticket()
            await Broadcast.wait(ticket, min(remaining, POLL_INTERVAL))
            if ticket.is_set():
                return
            # Appends by other processes (or other stores on this file) wake nobody here: poll for them.
            if await self._read(_head) > after_position:
                return

    # -- records beside the log ------------------------------------------------------------------------------------

    async def load_snapshot(self, owner: str, name: str) -> tuple[int, bytes] | None:
        def query(connection: sqlite3.Connection) -> tuple[int, bytes] | None:
            row = connection.execute(
                "SELECT version, state FROM snapshots WHERE stream_id = ? AND name = ?", (owner, name)
            ).fetchone()
            return (int(row[0]), bytes(row[1])) if row else None

        return await self._read(query)

    async def save_snapshot(self, owner: str, name: str, mark: int, state: bytes) -> None:
        def save(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO snapshots (stream_id, name, version, state) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (stream_id, name) DO UPDATE SET version = excluded.version, state = excluded.state "
                "WHERE excluded.version >= snapshots.version",
                (owner, name, mark, state),
            )

        await self._write(save)

    async def trim_stream(self, stream_id: str, before_version: int) -> int:
        def trim(connection: sqlite3.Connection) -> int:
            connection.execute(_KEEP_VERSION, (stream_id,))
            unlinked = connection.execute(_SELECT_TRIMMED_LINKS, (stream_id, before_version)).fetchall()
            if unlinked:
                connection.execute(_DELETE_TRIMMED_LINKS, (stream_id, before_version))
                connection.execute(_SWEEP_BLOBS, (_json_list(row[0] for row in unlinked),))
            connection.execute(
                "INSERT INTO trimmed_events (event_id, stream_id, version, batch_first, batch_last, position) "
                "SELECT event_id, stream_id, version, batch_first, batch_last, position FROM events "
                "WHERE stream_id = ? AND version < ?",
                (stream_id, before_version),
            )
            deleted = connection.execute(
                "DELETE FROM events WHERE stream_id = ? AND version < ?", (stream_id, before_version)
            )
            return deleted.rowcount

        return await self._write(trim)

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        def query(connection: sqlite3.Connection) -> dict[str, bytes]:
            rows = connection.execute(_SELECT_BLOBS, (_json_list(digests),)).fetchall()
            return {row[0]: row[1] for row in rows}

        return await self._read(query)

    async def blob_usage(self) -> BlobUsage:
        def query(connection: sqlite3.Connection) -> BlobUsage:
            count, size = connection.execute("SELECT count(*), coalesce(sum(length(content)), 0) FROM blobs").fetchone()
            return BlobUsage(int(count), int(size))

        return await self._read(query)

    async def load_checkpoint(self, name: str) -> int | None:
        def query(connection: sqlite3.Connection) -> int | None:
            row = connection.execute("SELECT position FROM checkpoints WHERE name = ?", (name,)).fetchone()
            return int(row[0]) if row else None

        return await self._read(query)

    async def save_checkpoint(self, name: str, position: int, apply: Callable[[Any], Any] | None = None) -> None:
        """Save the checkpoint; with `apply`, run `apply(writer_connection)` in the same transaction: exactly once."""

        def apply_and_save(connection: sqlite3.Connection) -> None:
            if apply is not None:
                outcome = apply(connection)
                if inspect.iscoroutine(outcome):
                    outcome.close()
                    raise InvalidInput("a SQLite read-model update runs in the writer thread: use a plain function")
            connection.execute(_UPSERT_CHECKPOINT, (name, position))

        await self._write(apply_and_save)

    # -- closing ---------------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Let the writer commit everything queued before the close, then stop the threads and close connections."""
        self._closed = True
        await self._committer.close()
        _SAME_FILE.leave(self._file, self)
        self._writer.stop()
        await asyncio.to_thread(self._writer.thread.join)
        await asyncio.to_thread(self._readers.shutdown, True)
        with self._read_connections_lock:
            connections, self._read_connections = self._read_connections, []
        for connection in connections:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
        self._appended.wake()


class SQLiteStore(EventStore):
    """An event store in one SQLite file. Open it with `agentfold.connect("sqlite:///path.db")`."""

    backend: SQLiteBackend

    @property
    def settings(self) -> SQLiteSettings:
        """The options the store was opened with."""
        return self.backend.settings

    @property
    def path(self) -> str:
        """The database file."""
        return self.backend.path

    @property
    def synchronous(self) -> str:
        """`FULL` (every commit is fsynced) or `NORMAL` (may lose the last commits on power loss)."""
        return self.backend.synchronous

    @property
    def commit_count(self) -> int:
        """Write transactions committed by this store so far; appends / commits is the group-commit factor."""
        return self.backend.commit_count


def _head(connection: sqlite3.Connection) -> int:
    row = connection.execute(_SELECT_HEAD).fetchone()
    return int(row[0]) if row else 0


def _prefix_test(stream_prefix: str | None) -> tuple[str, list[Any]]:
    """The SQL condition (after AND) and its parameters keeping the streams starting with `stream_prefix`."""
    if stream_prefix is None:
        return "", []
    return f"AND {_IN_PREFIX}", [len(stream_prefix), stream_prefix]


@functools.lru_cache(maxsize=64)
def _typed_page_sql(type_count: int, prefixed: bool) -> str:
    found = " UNION ALL ".join(_SELECT_TYPE_POSITIONS.format(index=index) for index in range(type_count))
    also = "WHERE substr(events.stream_id, 1, :prefix_length) = :prefix" if prefixed else ""
    return _SELECT_TYPED_PAGE.format(found=found, also=also, record=_RECORD)


def _typed_page(
    after: int, limit: int, types: tuple[str, ...], stream_prefix: str | None, connection: sqlite3.Connection
) -> tuple[list[RecordedEvent], int]:
    """A page of events of `types` through the type index: the first `limit` positions above `after` of each
    type, merged. Every match up to the lowest last position of a type that filled its `limit` (else the head)
    is among them; the page is the first `limit` of those, and the position scanned the last one it covers. The
    merge runs in SQLite: one statement, so one snapshot, and no Python object per position read."""
    chosen = list(dict.fromkeys(types))
    parameters: dict[str, Any] = {"after": after, "limit": limit}
    parameters.update((f"type{index}", event_type) for index, event_type in enumerate(chosen))
    if stream_prefix is not None:
        parameters.update(prefix_length=len(stream_prefix), prefix=stream_prefix)
    if not chosen:
        return [], max(after, _head(connection))
    rows = connection.execute(_typed_page_sql(len(chosen), stream_prefix is not None), parameters).fetchall()
    return _decode_page([row for row in rows if row[0] is not None]), max(after, rows[0][1])


def _category_page(
    after: int, limit: int, category: str, stream_prefix: str, connection: sqlite3.Connection
) -> tuple[list[RecordedEvent], int]:
    """A page of a stream category's events through the category index: its next `limit` events, of which those
    on streams starting with `stream_prefix` (a prefix longer than the category) are returned."""
    if stream_prefix == category:
        sql, parameters = _SELECT_CATEGORY_PAGE.format(record=_RECORD), [category, after, limit]
    else:
        record = f"CASE WHEN {_IN_PREFIX} THEN {_RECORD} END"
        sql = _SELECT_CATEGORY_PAGE.format(record=record)
        parameters = [len(stream_prefix), stream_prefix, category, after, limit]
    connection.execute("BEGIN")
    rows = connection.execute(sql, parameters).fetchall()
    bound = rows[-1][1] if len(rows) == limit else _head(connection)
    connection.execute("COMMIT")
    return _decode_page([row for row in rows if row[0] is not None]), max(after, bound)


def _scanned_page(
    after: int, limit: int, stream_prefix: str | None, connection: sqlite3.Connection
) -> tuple[list[RecordedEvent], int]:
    """A page of the positions above `after`, at most `limit` of them, each tested against the prefix (no index
    serves a prefix without a ``-``, nor no filter at all)."""
    also, parameters = _prefix_test(stream_prefix)
    connection.execute("BEGIN")
    rows = connection.execute(
        _SELECT_ALL_PAGE.format(also=also, record=_RECORD), [after, after + limit, *parameters]
    ).fetchall()
    head = _head(connection)
    connection.execute("COMMIT")
    return _decode_page(rows), max(after, min(after + limit, head))


def _open_writer_connection(settings: SQLiteSettings, shown_url: str, create: bool) -> sqlite3.Connection:
    directory = os.path.dirname(os.path.abspath(settings.path))
    if not create and not os.path.isfile(settings.path):
        raise StoreNotFound(f"no agentfold store at {shown_url}: the file {settings.path!r} does not exist")
    if not os.path.isdir(directory):
        raise StoreUnavailable(f"SQLite store {settings.path!r}: directory {directory!r} does not exist")
    try:
        connection = _connect(settings, writer=True)
    except sqlite3.Error as error:
        raise _open_error(error, settings.path, directory) from None
    try:
        if not create:
            _require_schema(connection, settings.path, shown_url)
        _create_schema(connection, settings.path)
    except BaseException as error:
        connection.close()
        if isinstance(error, sqlite3.Error):
            raise _open_error(error, settings.path, directory) from None
        raise
    return connection


def _require_schema(connection: sqlite3.Connection, path: str, shown_url: str) -> None:
    """Refuse a file that holds no agentfold store, or one an older agentfold wrote that needs an upgrade, before
    anything (even the switch to WAL) writes to it: opened with `create=False`, a store is only read as it is."""
    found = connection.execute("PRAGMA user_version").fetchone()[0]
    if found == 0:
        raise StoreNotFound(f"no agentfold store at {shown_url}: the file {path!r} holds no agentfold tables")
    if found < SCHEMA_VERSION:
        raise StoreNotFound(
            f"the agentfold store at {shown_url} has schema version {found} and needs an upgrade to {SCHEMA_VERSION}, "
            "which opening it without create=False does (agentfold.connect(url), or a command that writes)"
        )


def _open_error(error: sqlite3.Error, path: str, directory: str) -> AgentfoldError:
    """Why the store cannot be opened. A WAL store needs to write its folder (the -wal and -shm files) even to read,
    and SQLite reports a read-only file system as "unable to open": name that cause instead."""
    try:
        read_only_mount = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_mount = False
    if read_only_mount or not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return StoreReadOnly(
            f"SQLite store {path!r} is on a read-only file system or in a folder this process cannot write: {error}"
        )
    return translate_error(error, path)


async def open_store(url: str, *, create: bool = True, **options: Any) -> SQLiteStore:
    """Open (creating if needed, unless `create` is false) the SQLite store at `url`.

    Options, in the URL query or as keywords (keywords win): `synchronous` = `FULL` (default) or `NORMAL`,
    `busy_timeout` in milliseconds (default 5000), `max_event_size`, `blob_threshold` and `max_blob_size` in bytes,
    `read_cache_mb` and `write_cache_mb`: the page cache of each read connection and of the writer (default 32
    each), `checkpoint_pages`: the WAL pages after which a commit copies the log into the file (default 2000).
    Bad options raise `InvalidURL`.
    With `create=False` a missing file, or one without agentfold's tables, raises `StoreNotFound` untouched.
    """
    settings = parse_url(url, **options)
    connection = await asyncio.to_thread(_open_writer_connection, settings, redact(url), create)
    return SQLiteStore(SQLiteBackend(settings, connection))


__all__ = ["SQLiteBackend", "SQLiteSettings", "SQLiteStore", "open_store", "parse_url", "translate_error"]
