"""`postgresql://user@host/db?schema=NAME`: the production store, shared by every process that connects to it.

Guarantees beyond the `EventStore` contract:

- The database itself enforces one event per (stream, version) and one row per event id (unique constraints).
- Global positions are handed out in commit order and never have an uncommitted hole below a visible event, so a
  reader tailing `read_all` never skips one (see `PostgresStore._commit`).
- Appends from many tasks of one process share transactions (group commit, through
  `agentfold.committer.GroupCommitter`); each keeps its own expected-version check and its own outcome.
- Nothing waits forever: lock, statement, idle-in-transaction, pool and connect timeouts are always set, and a
  timeout or a dropped connection surfaces as a retryable `StoreTimeout` / `StoreUnavailable`.
- `LISTEN/NOTIFY` only wakes waiters early; they always re-read the table.
- Blobs (`agentfold.blobs`) are rows of `blobs`, linked to their events' positions by `event_blobs` (a foreign key
  keeps every link on a stored blob): written in their append's transaction, under its table lock; `trim_stream()`
  takes the same lock and removes the trimmed events, their links and every blob left without a link in one
  transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, NoReturn
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import RowFactory, scalar_row, tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agentfold import openruns, runrows
from agentfold.appending import IdRecord, Outcome, find_retry, render_outcome_codes
from agentfold.backend import DEFAULT_PAGE_SIZE, RecordDecoder, RecordPage, prefix_category, read_pages
from agentfold.backends import runs_tables
from agentfold.blobs import DEFAULT_BLOB_THRESHOLD, DEFAULT_MAX_BLOB_SIZE, BlobUsage
from agentfold.committer import GroupCommitter
from agentfold.encoding import DEFAULT_MAX_EVENT_SIZE, EncodedEvent
from agentfold.errors import (
    AgentfoldError,
    InvalidEventData,
    InvalidURL,
    StoreCorrupted,
    StoreFull,
    StoreNotFound,
    StoreReadOnly,
    StoreTimeout,
    StoreUnavailable,
    WrongExpectedVersion,
)
from agentfold.events import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, ExpectedVersion, RecordedEvent
from agentfold.options import BLOB_THRESHOLD, MAX_BLOB_SIZE, MAX_EVENT_SIZE, Option, parse_options, redact, split_url
from agentfold.store import EventStore
from agentfold.wakeup import Broadcast, wait_event

DEFAULT_SCHEMA: Final = "agentfold"
DEFAULT_POOL_MIN: Final = 2
DEFAULT_POOL_MAX: Final = 10
DEFAULT_LOCK_TIMEOUT: Final = 5.0
"""Seconds an append waits for the events table lock (held by another process's commit) before `StoreTimeout`."""
DEFAULT_STATEMENT_TIMEOUT: Final = 30.0
"""Seconds any one statement may run before the server cancels it (`StoreTimeout`)."""
DEFAULT_IDLE_IN_TRANSACTION_SESSION_TIMEOUT: Final = 10.0
"""Seconds a session may sit idle inside a transaction before the server ends it, releasing its locks, so a stalled
client can never freeze every other writer."""
DEFAULT_POOL_TIMEOUT: Final = 10.0
"""Seconds a call waits for a free pooled connection before `StoreTimeout`."""
DEFAULT_CONNECT_TIMEOUT: Final = 10
"""Seconds to establish one connection."""

MAX_GROUP_APPENDS: Final = 1000
MAX_GROUP_BYTES: Final = 8 * 1024 * 1024
GROUPS_IN_FLIGHT: Final = 2
"""Group transactions one process keeps in flight: while one holds the table lock and waits for its commit to reach
disk, the next is already encoded, sent and queued on the lock."""

logger = logging.getLogger("agentfold.postgres")

_LISTENER_HEALTH_CHECK: Final = 30.0
_POLL_SECONDS: Final = 0.05  # how often waiters re-read while no LISTEN connection is up
_RECONNECT_DELAYS: Final = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

_SCHEMA_NAME = re.compile(r"(?![pP][gG]_)[A-Za-z_][A-Za-z0-9_]{0,62}")
_MIGRATION_LOCK_CLASS: Final = 0x61660001  # first key of the advisory lock that serialises migrations

# libpq connection parameters a URL may carry besides agentfold's own options.
_LIBPQ_PARAMETERS: Final = frozenset(
    {
        "application_name",
        "channel_binding",
        "connect_timeout",
        "gssencmode",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "passfile",
        "service",
        "sslcert",
        "sslcrl",
        "sslkey",
        "sslmode",
        "sslpassword",
        "sslrootcert",
        "target_session_attrs",
        "tcp_user_timeout",
    }
)

_record_decoder = msgspec.json.Decoder(RecordedEvent)


# -- error translation: the one place where driver errors become agentfold errors ---------------------------------


def translate_error(error: BaseException) -> AgentfoldError:
    """The agentfold error for a psycopg / pool error, by SQLSTATE.

    Timeouts and connection loss are retryable: appends are idempotent by event id, so repeating a call whose outcome
    is unknown applies it at most once.
    """
    if isinstance(error, AgentfoldError):
        return error
    if isinstance(error, PoolTimeout):
        return StoreTimeout(f"no pooled PostgreSQL connection became free in time: {error}")
    sqlstate = getattr(error, "sqlstate", None) or ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if sqlstate == "55P03":
        return StoreTimeout(f"PostgreSQL lock wait ran out (lock_timeout): {message}")
    if sqlstate == "57014":
        return StoreTimeout(f"PostgreSQL cancelled a statement (statement_timeout or cancel): {message}")
    if sqlstate == "25P03":
        return StoreTimeout(f"PostgreSQL ended an idle transaction (idle_in_transaction_session_timeout): {message}")
    if sqlstate in ("40001", "40P01"):
        return StoreTimeout(f"PostgreSQL aborted a transaction in a conflict; retry: {message}")
    if sqlstate == "23505":
        return StoreUnavailable(
            f"a concurrent write conflicted at the database (unique violation); a retry re-checks it: {message}"
        )
    if sqlstate == "53100":
        return StoreFull(f"PostgreSQL is out of disk space: {message}")
    if sqlstate == "25006":
        return StoreReadOnly(f"PostgreSQL refused a write in a read-only transaction: {message}")
    if sqlstate.startswith("22") or (not sqlstate and isinstance(error, psycopg.DataError)):
        return InvalidEventData(f"PostgreSQL refused a value (nothing was written): {message}")
    if sqlstate.startswith(("08", "57P")) or isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"PostgreSQL connection failed or was closed: {message}")
    unexpected = StoreUnavailable(f"PostgreSQL error {sqlstate or type(error).__name__}: {message}")
    unexpected.retryable = False
    return unexpected


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (psycopg.Error, PoolTimeout) as error:
        raise translate_error(error) from error


def _is_database_refusal(error: BaseException) -> bool:
    """The server refused the statement itself (not a lost connection or a timeout): other appends may still go."""
    if not isinstance(error, psycopg.Error) or isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    return not (error.sqlstate or "").startswith(("08", "57", "55P03", "25P03", "40"))


# -- options ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresOptions:
    """Everything `open_store` accepts, from the URL query or keyword arguments (keywords win). Times in seconds."""

    schema: str = DEFAULT_SCHEMA
    pool_min: int = DEFAULT_POOL_MIN
    pool_max: int = DEFAULT_POOL_MAX
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT
    idle_in_transaction_session_timeout: float = DEFAULT_IDLE_IN_TRANSACTION_SESSION_TIMEOUT
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    max_event_size: int | None = None
    blob_threshold: int = DEFAULT_BLOB_THRESHOLD
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    partitions: int | None = None
    """Hash partitions of the events table by stream id, chosen when the store is created (0: one table); when
    given to an existing store, it must be the number the store was created with."""


MAX_PARTITIONS: Final = 1024
_MAX_TIMEOUT_SECONDS: Final = 2_000_000.0  # in milliseconds, it must fit the server's int

OPTIONS: Final = (
    Option(
        "schema",
        str,
        DEFAULT_SCHEMA,
        pattern=_SCHEMA_NAME,
        meaning="1-63 letters, digits or underscores, not starting with a digit or 'pg_'",
    ),
    Option("pool_min", int, DEFAULT_POOL_MIN, minimum=0, maximum=1000),
    Option("pool_max", int, DEFAULT_POOL_MAX, minimum=1, maximum=1000),
    Option("lock_timeout", float, DEFAULT_LOCK_TIMEOUT, minimum=0.001, maximum=_MAX_TIMEOUT_SECONDS),
    Option("statement_timeout", float, DEFAULT_STATEMENT_TIMEOUT, minimum=0.001, maximum=_MAX_TIMEOUT_SECONDS),
    Option(
        "idle_in_transaction_session_timeout",
        float,
        DEFAULT_IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
        minimum=0.001,
        maximum=_MAX_TIMEOUT_SECONDS,
    ),
    Option("pool_timeout", float, DEFAULT_POOL_TIMEOUT, minimum=0.001, maximum=_MAX_TIMEOUT_SECONDS),
    Option("connect_timeout", int, DEFAULT_CONNECT_TIMEOUT, minimum=1, maximum=2_000_000),
    MAX_EVENT_SIZE,
    BLOB_THRESHOLD,
    MAX_BLOB_SIZE,
    Option("partitions", int, None, minimum=0, maximum=MAX_PARTITIONS),
    *(Option(name, str, None) for name in sorted(_LIBPQ_PARAMETERS - {"connect_timeout"})),
)
"""What `postgresql://` accepts, in its query or as keywords (keywords win): agentfold's options (`PostgresOptions`)
and the libpq connection parameters passed through to the driver."""


def _parse_options(url: str, keyword_options: dict[str, Any]) -> tuple[PostgresOptions, dict[str, str]]:
    """Split URL query and keywords into agentfold options and libpq parameters; refuse anything unknown."""
    values = parse_options(url, OPTIONS, keyword_options)
    own = {name: values.pop(name) for name in PostgresOptions.__dataclass_fields__}
    options = PostgresOptions(**own)  # type: ignore[arg-type]
    if options.pool_max < max(options.pool_min, 1):
        raise InvalidURL(f"pool_max ({options.pool_max}) must be >= pool_min ({options.pool_min}) and >= 1")
    libpq = {name: str(value) for name, value in values.items() if value is not None}
    libpq["connect_timeout"] = str(options.connect_timeout)
    libpq.setdefault("application_name", "agentfold")
    return options, libpq


def _conninfo(url: str, options: PostgresOptions, libpq: dict[str, str]) -> str:
    parts = urlsplit(url)
    bare = urlunsplit(("postgresql", parts.netloc, parts.path, "", ""))
    settings = {
        "lock_timeout": options.lock_timeout,
        "statement_timeout": options.statement_timeout,
        "idle_in_transaction_session_timeout": options.idle_in_transaction_session_timeout,
    }
    # Milliseconds, at least 1: PostgreSQL reads 0 as "no limit".
    server_options = " ".join(f"-c {name}={max(1, round(seconds * 1000))}" for name, seconds in settings.items())
    # append_group() relies on a fresh snapshot per statement after its LOCK: pin READ COMMITTED whatever the
    # server's default isolation is.
    server_options += r" -c default_transaction_isolation=read\ committed"
    return make_conninfo(bare, options=server_options, **libpq)


# -- schema and migrations ----------------------------------------------------------------------------------------

_CATEGORY: Final = "substr(stream_id, 1, strpos(stream_id, '-'))"
"""A stream's category as SQL (`agentfold.backend.stream_category`): the expression the category index holds,
written the same way in every query that uses it."""


class _Migration(NamedTuple):
    version: int
    description: str
    statements: tuple[str, ...]


# Each migration runs once, in order, inside one transaction holding the schema's advisory lock. `{s}` stands for the
# quoted schema name. Never edit a released migration; add a new one.
#
# Until migration 5, an event row kept its columns for lookups (stream and version, position, id, type) and
# `record`: the whole event exactly as readers receive it, as JSON, so those facts were stored twice (migration 5
# stores each once and builds the same JSON text as it reads).
# The outcome codes are rendered from `agentfold.appending.Outcome`, the table the Redis script uses too; the
# rendered text is the released migration, unchanged.
_APPEND_GROUP = render_outcome_codes(r"""
CREATE FUNCTION {s}.append_group(
    append_streams text[], append_stream_json text[], append_expected bigint[], append_sizes integer[],
    event_ids uuid[], event_tails text[], event_types text[], channel text
) RETURNS TABLE (outcome integer, result_version bigint, result_position bigint)
LANGUAGE plpgsql VOLATILE AS $body$
-- Writes a group of appends in the caller's one transaction, deciding each in order as if it ran alone after the
-- ones before it. Per append, outcome 0: written (result_version, result_position of its last event); 1: wrong
-- expected version (result_version = the stream's actual version); 2: some of its ids exist already, nothing
-- written (an id record never changes, so the caller decides retry or duplicate from them afterwards).
-- append_expected: -1 any, -2 stream exists, n >= 0 exactly version n.
DECLARE
    has_trimmed boolean;
    head bigint;
    recorded_at_us bigint := (extract(epoch FROM statement_timestamp()) * 1000000)::bigint;
    known uuid[];
    stream_names text[];
    stream_versions bigint[];
    slot integer;
    current_version bigint;
    expected bigint;
    size integer;
    first_event integer := 1;
    written_appends integer[] := ARRAY[]::integer[];
    written_first_events integer[] := ARRAY[]::integer[];
    written_first_versions bigint[] := ARRAY[]::bigint[];
    written_first_positions bigint[] := ARRAY[]::bigint[];
BEGIN
    -- Serialises every writer of this schema, cluster-wide (why: PostgresStore._commit, agentfold.backends.postgres).
    LOCK TABLE {s}.events IN EXCLUSIVE MODE;
    has_trimmed := EXISTS (SELECT FROM {s}.trimmed_event_ids);
    head := coalesce((SELECT max(e.position) FROM {s}.events e), 0);
    known := ARRAY(SELECT e.id FROM {s}.events e WHERE e.id = ANY(event_ids));
    SELECT array_agg(streams.stream_id),
           array_agg(coalesce((SELECT max(e.version) FROM {s}.events e WHERE e.stream_id = streams.stream_id), 0))
      INTO stream_names, stream_versions
      FROM (SELECT DISTINCT unnest(append_streams) AS stream_id) AS streams;
    IF has_trimmed THEN
        -- Trimmed events still count for the head, for stream versions and for known ids.
        head := greatest(head, (SELECT max(t.position) FROM {s}.trimmed_event_ids t));
        known := known || ARRAY(SELECT t.id FROM {s}.trimmed_event_ids t WHERE t.id = ANY(event_ids));
        FOR slot IN 1 .. array_length(stream_names, 1) LOOP
            stream_versions[slot] := greatest(stream_versions[slot], (
                SELECT max(t.version) FROM {s}.trimmed_event_ids t WHERE t.stream_id = stream_names[slot]));
        END LOOP;
    END IF;
    FOR a IN 1 .. coalesce(array_length(append_streams, 1), 0) LOOP
        size := append_sizes[a];
        result_version := NULL;
        result_position := NULL;
        IF event_ids[first_event : first_event + size - 1] && known THEN
            outcome := {outcome.IDS_KNOWN};
        ELSE
            slot := array_position(stream_names, append_streams[a]);
            current_version := stream_versions[slot];
            expected := append_expected[a];
            IF expected = -1 OR (expected = -2 AND current_version > 0) OR expected = current_version THEN
                written_appends := written_appends || a;
                written_first_events := written_first_events || first_event;
                written_first_versions := written_first_versions || (current_version + 1);
                written_first_positions := written_first_positions || (head + 1);
                known := known || event_ids[first_event : first_event + size - 1];
                head := head + size;
                stream_versions[slot] := current_version + size;
                outcome := {outcome.WRITTEN};
                result_version := current_version + size;
                result_position := head;
            ELSE
                outcome := {outcome.WRONG_EXPECTED_VERSION};
                result_version := current_version;
            END IF;
        END IF;
        RETURN NEXT;
        first_event := first_event + size;
    END LOOP;
    IF cardinality(written_appends) > 0 THEN
        INSERT INTO {s}.events (position, stream_id, version, batch_first, batch_last, type, id, record)
        SELECT w.first_position + o.i, append_streams[w.append], w.first_version + o.i, w.first_version,
               w.first_version + append_sizes[w.append] - 1, event_types[w.first_event + o.i],
               event_ids[w.first_event + o.i],
               ('{"stream_id":' || append_stream_json[w.append] || ',"version":' || (w.first_version + o.i)
                || ',"position":' || (w.first_position + o.i) || ',"_recorded_at_us":' || recorded_at_us
                || event_tails[w.first_event + o.i])::json
        FROM unnest(written_appends, written_first_events, written_first_versions, written_first_positions)
                 AS w(append, first_event, first_version, first_position)
             CROSS JOIN LATERAL generate_series(0, append_sizes[w.append] - 1) AS o(i);
        PERFORM pg_notify(channel, '');
    END IF;
END
$body$
""")

# Trimming, once events may refer to blobs: the trimmed events, their links and every blob no event links to any
# more go in one transaction, under the lock appends take, so no append adds a link to a blob between the moment a
# trim finds it unreferenced and its deletion, and two trims of events sharing a blob cannot each leave it to the
# other. Each statement takes a fresh snapshot after the LOCK (a VOLATILE function under READ COMMITTED), as in
# append_group().
_TRIM_STREAM = r"""
CREATE FUNCTION {s}.trim_stream(trim_stream_id text, trim_before bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $body$
DECLARE
    trimmed_count bigint;
    unlinked text[];
BEGIN
    LOCK TABLE {s}.events IN EXCLUSIVE MODE;
    WITH trimmed AS (
        DELETE FROM {s}.events WHERE stream_id = trim_stream_id AND version < trim_before
        RETURNING id, stream_id, version, position, batch_first, batch_last
    ), kept AS (
        INSERT INTO {s}.trimmed_event_ids (id, stream_id, version, position, batch_first, batch_last)
        SELECT id, stream_id, version, position, batch_first, batch_last FROM trimmed
    ), links AS (
        DELETE FROM {s}.event_blobs WHERE position IN (SELECT position FROM trimmed) RETURNING digest
    )
    SELECT (SELECT count(*) FROM trimmed), (SELECT array_agg(DISTINCT digest) FROM links)
      INTO trimmed_count, unlinked;
    IF unlinked IS NOT NULL THEN
        DELETE FROM {s}.blobs b
        WHERE b.digest = ANY(unlinked) AND NOT EXISTS (SELECT FROM {s}.event_blobs e WHERE e.digest = b.digest);
    END IF;
    RETURN trimmed_count;
END
$body$
"""

# Migration 5 stores each fact of an event once. A row keeps the columns lookups need (position, stream and version,
# id, type), when it was written, its place in its append and the append's size (what an exact retry must match),
# and `data` and `metadata` as the JSON the client encoded (`json`: its text as sent, checked by the server, so a
# record that would not decode is refused at append time, and queryable as `data->>'field'`). The statements
# that read events build the reader's JSON from the columns (`_RECORD`). Fixed-width columns come first, widest
# first, so no row carries alignment padding.
_EVENT_COLUMNS: Final = """
    position bigint NOT NULL,
    version bigint NOT NULL,
    recorded_at_us bigint NOT NULL,
    batch_index integer NOT NULL,
    batch_size integer NOT NULL,
    id uuid NOT NULL,
    stream_id text NOT NULL,
    type text NOT NULL,
    data json NOT NULL,
    metadata json NOT NULL
"""

_OLD_APPEND_GROUP_SIGNATURE: Final = "append_group(text[], text[], bigint[], integer[], uuid[], text[], text[], text)"


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


_KNOWN_IDS_OF_EVENTS: Final = "known := ARRAY(SELECT e.id FROM {s}.events e WHERE e.id = ANY(event_ids));"
_KNOWN_IDS_OF_EVENT_IDS: Final = "known := ARRAY(SELECT e.id FROM {s}.event_ids e WHERE e.id = ANY(event_ids));"
assert _APPEND_GROUP.count(_KNOWN_IDS_OF_EVENTS) == 1

# Which of a group's ids are stored: one unique-index probe per id, said so that no plan can do otherwise. Written
# as `id = ANY(ids)`, the plan made once per session (plan_cache_mode, migration 2) is chosen while the table is
# new and its size unknown, and for the narrower rows of migration 5 the planner guessed a sequential scan cheaper:
# a scan of the whole table on every append until the next ANALYZE.
_KNOWN_IDS_5: Final = (
    "known := ARRAY(SELECT found.id FROM unnest(event_ids) AS wanted(id) CROSS JOIN LATERAL "
    "(SELECT e.id FROM {s}.events e WHERE e.id = wanted.id LIMIT 1) AS found);"
)
_KNOWN_IDS_5_OF_EVENT_IDS: Final = _KNOWN_IDS_5.replace("FROM {s}.events e", "FROM {s}.event_ids e")

# append_group() of migration 5: the same decisions as before, writing the columns of migration 5's rows.
_APPEND_GROUP_5: Final = _replace_once(
    _replace_once(
        _APPEND_GROUP.replace(_KNOWN_IDS_OF_EVENTS, _KNOWN_IDS_5),
        """    append_streams text[], append_stream_json text[], append_expected bigint[], append_sizes integer[],
    event_ids uuid[], event_tails text[], event_types text[], channel text
) RETURNS TABLE (outcome integer, result_version bigint, result_position bigint)
LANGUAGE plpgsql VOLATILE AS $body$""",
        """    append_streams text[], append_expected bigint[], append_sizes integer[],
    event_ids uuid[], event_types text[], event_data text[], event_metadata text[], channel text
) RETURNS TABLE (outcome integer, result_version bigint, result_position bigint)
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $body$""",
    ),
    """        INSERT INTO {s}.events (position, stream_id, version, batch_first, batch_last, type, id, record)
        SELECT w.first_position + o.i, append_streams[w.append], w.first_version + o.i, w.first_version,
               w.first_version + append_sizes[w.append] - 1, event_types[w.first_event + o.i],
               event_ids[w.first_event + o.i],
               ('{"stream_id":' || append_stream_json[w.append] || ',"version":' || (w.first_version + o.i)
                || ',"position":' || (w.first_position + o.i) || ',"_recorded_at_us":' || recorded_at_us
                || event_tails[w.first_event + o.i])::json""",
    """        INSERT INTO {s}.events (position, version, recorded_at_us, batch_index, batch_size, id, stream_id, type,
                                data, metadata)
        SELECT w.first_position + o.i, w.first_version + o.i, recorded_at_us, o.i, append_sizes[w.append],
               event_ids[w.first_event + o.i], append_streams[w.append], event_types[w.first_event + o.i],
               event_data[w.first_event + o.i]::json, event_metadata[w.first_event + o.i]::json""",
)

# trim_stream() of migration 5: the trimmed events' batches, from their place in their append and its size.
_TRIM_STREAM_5: Final = _replace_once(
    _replace_once(
        _TRIM_STREAM,
        "        RETURNING id, stream_id, version, position, batch_first, batch_last\n",
        "        RETURNING id, stream_id, version, position, version - batch_index AS batch_first,\n"
        "                  version - batch_index + batch_size - 1 AS batch_last\n",
    ),
    "CREATE FUNCTION",
    "CREATE OR REPLACE FUNCTION",
)

_EVENT_INDEXES: Final = (
    "CREATE INDEX events_type_position ON {s}.events (type, position)",
    f"CREATE INDEX events_category_position ON {{s}}.events (({_CATEGORY}), position)",
)
"""Migration 4's indexes for filtered reads (built again by migration 5's rewrite; replaced by migration 8's)."""

# Migration 8's indexes for filtered reads: (hash of the type, position) and (hash of the category, position).
# A page of a type is a range of positions under one key, as before; a row of another type under the same key
# (`hashtext` collides rarely) is left out when the page reads its events. Keyed by text, an entry was as wide as the
# type's name, and a type's range ends in the middle of the tree, where PostgreSQL splits a full page in half: grown
# by appends, the index ended about half full (72.7 bytes per event at 1M). Fixed-width keys of two integers are ones
# PostgreSQL recognises as rising within their group and splits after the new entry, so its pages stay packed
# (docs/scaling.md).
_TYPE_KEY: Final = "hashtext(type)"
_CATEGORY_KEY: Final = f"hashtext({_CATEGORY})"
_HASHED_EVENT_INDEXES: Final = (
    f"CREATE INDEX events_type_hash_position ON {{s}}.events (({_TYPE_KEY}), position)",
    f"CREATE INDEX events_category_hash_position ON {{s}}.events (({_CATEGORY_KEY}), position)",
)

# Rewrites the rows of migration 4 (stream, version, batch, type and id as columns and again, with the time, in
# `record`) into migration 5's, in the migration's transaction: the new table is filled, the old one dropped, and
# the constraints and indexes built again on the new one under their old names. The copy runs under the lock every
# append takes, so no append of a process still running an older agentfold can commit beside it and be dropped
# with the old table unseen: such an append waits, then fails.
_LOCK_EVENTS: Final = "LOCK TABLE {s}.events IN EXCLUSIVE MODE"
_COPY_EVENTS_5: Final = """INSERT INTO {s}.events_5 (position, version, recorded_at_us, batch_index, batch_size, id,
                                  stream_id, type, data, metadata)
    SELECT position, version, (record->>'_recorded_at_us')::bigint, (version - batch_first)::integer,
           (batch_last - batch_first + 1)::integer, id, stream_id, type, record->'data', record->'metadata'
    FROM {s}.events ORDER BY position"""

_DIET_STATEMENTS: Final = (
    _LOCK_EVENTS,
    f"CREATE TABLE {{s}}.events_5 ({_EVENT_COLUMNS})",
    _COPY_EVENTS_5,
    f"DROP FUNCTION {{s}}.{_OLD_APPEND_GROUP_SIGNATURE}",
    "DROP TABLE {s}.events",
    "ALTER TABLE {s}.events_5 RENAME TO events",
    "ALTER TABLE {s}.events ADD CONSTRAINT events_pkey PRIMARY KEY (position), "
    "ADD CONSTRAINT events_stream_version_key UNIQUE (stream_id, version), ADD CONSTRAINT events_id_key UNIQUE (id)",
    *_EVENT_INDEXES,
    _APPEND_GROUP_5,
    _TRIM_STREAM_5,
)
"""Migration 5 on a store in one table; `_partitioned_diet_statements` on a partitioned one."""


_APPLY_OPEN_RUNS: Final = """CREATE FUNCTION {s}.apply_open_runs(
    written integer[], slots integer[], kinds text[], runs text[], workflows text[], owners text[]
) RETURNS integer LANGUAGE plpgsql VOLATILE AS $body$
-- Applies the open-run changes (agentfold.openruns.changes, computed by the client) of the appends of a group that
-- were written (their slot is in `written`), in order, in the caller's statement: the one that ran append_group(),
-- so under its lock and in its transaction.
DECLARE
    i integer;
BEGIN
    IF (SELECT count(DISTINCT r) FROM unnest(runs) AS r) = coalesce(array_length(runs, 1), 0) THEN
        -- Each run changed once (the usual group): one statement per kind, in any order.
        INSERT INTO {s}.open_runs (workflow_id, workflow, owner)
        SELECT c.run, c.workflow, NULL FROM unnest(slots, kinds, runs, workflows) AS c(slot, kind, run, workflow)
        WHERE c.kind = 'open' AND c.slot = ANY (written)
        ON CONFLICT (workflow_id) DO UPDATE SET workflow = excluded.workflow, owner = NULL;
        DELETE FROM {s}.open_runs o USING unnest(slots, kinds, runs) AS c(slot, kind, run)
        WHERE c.kind = 'close' AND c.slot = ANY (written) AND o.workflow_id = c.run;
        UPDATE {s}.open_runs o SET owner = c.owner
        FROM unnest(slots, kinds, runs, owners) AS c(slot, kind, run, owner)
        WHERE c.kind = 'hold' AND c.slot = ANY (written) AND o.workflow_id = c.run;
        RETURN 0;
    END IF;
    FOR i IN 1 .. coalesce(array_length(slots, 1), 0) LOOP
        CONTINUE WHEN NOT (slots[i] = ANY (written));
        IF kinds[i] = 'open' THEN
            INSERT INTO {s}.open_runs (workflow_id, workflow, owner) VALUES (runs[i], workflows[i], NULL)
            ON CONFLICT (workflow_id) DO UPDATE SET workflow = excluded.workflow, owner = NULL;
        ELSIF kinds[i] = 'close' THEN
            DELETE FROM {s}.open_runs WHERE workflow_id = runs[i];
        ELSE
            UPDATE {s}.open_runs SET owner = owners[i] WHERE workflow_id = runs[i];
        END IF;
    END LOOP;
    RETURN 0;
END
$body$"""
assert (openruns.OPEN, openruns.CLOSE, openruns.HOLD) == ("open", "close", "hold")


_STORED_STATUSES_SQL: Final = "ARRAY[" + ", ".join(f"'{status}'" for status in runrows.STORED_STATUSES) + "]"
_APPLY_RUNS_INDEX: Final = f"""CREATE FUNCTION {{s}}.apply_runs_index(
    written integer[], versions bigint[], updates jsonb, resumed_slots integer[], resumed_runs text[],
    resumed_types text[]
) RETURNS integer LANGUAGE plpgsql VOLATILE AS $body$
-- Applies the runs-index updates (agentfold.runrows.written, computed by the client; one element per append that
-- has any: its slot, its run update or null, its worker updates) of the appends of a group that were written, in
-- order, in the caller's statement: the one that ran append_group(), so under its lock and in its transaction.
-- `versions` holds each append's stream version after it, by slot. What it does is `agentfold.runrows.Rows.apply`;
-- a row whose only change would be its last event is left as it is (readers take that from the run's stream).
-- The appends of runs that only resume (agentfold.runrows.only_resumes: a run's steps) come apart, as arrays: one
-- statement for all of them changes the rows of those runs that are suspended.
DECLARE
    at_us bigint := (extract(epoch FROM statement_timestamp()) * 1000000)::bigint;
    item jsonb;
    run jsonb;
    delta jsonb;
    beat jsonb;
    run_id text;
    slot integer;
    child text;
    old_status text;
    old_finished bigint;
    old_owner text;
    new_status text;
    new_finished bigint;
    new_owner text;
    added_retries bigint;
    added_failed bigint;
BEGIN
    IF resumed_slots <> '{{}}' AND EXISTS (
        SELECT FROM {{s}}.{runs_tables.COUNTS_TABLE} WHERE status = 'Suspended' AND runs > 0
    ) THEN
        WITH resumed AS (
            UPDATE {{s}}.{runs_tables.TABLE} r SET status = 'Processing', last_event_at_us = at_us,
                last_event_type = c.type, version = versions[c.slot]
            FROM unnest(resumed_slots, resumed_runs, resumed_types) AS c(slot, run, type)
            WHERE r.workflow_id = c.run AND r.status = 'Suspended' AND c.slot = ANY (written)
            RETURNING r.workflow_id
        ), moved AS (SELECT count(*) AS runs FROM resumed)
        INSERT INTO {{s}}.{runs_tables.COUNTS_TABLE} AS c (status, runs)
        SELECT s.status, s.sign * moved.runs
        FROM moved, (VALUES ('Suspended', -1), ('Processing', 1)) AS s(status, sign) WHERE moved.runs > 0
        ON CONFLICT (status) DO UPDATE SET runs = c.runs + excluded.runs;
    END IF;
    IF jsonb_array_length(updates) = 0 THEN
        RETURN 0;
    END IF;
    FOR item IN SELECT u FROM jsonb_array_elements(updates) AS u LOOP
        slot := (item->>'slot')::integer;
        CONTINUE WHEN NOT (slot = ANY (written));
        run := item->'run';
        IF jsonb_typeof(run) = 'object' THEN
            run_id := run->>'workflow_id';
            SELECT r.status, r.finished_at_us, r.owner INTO old_status, old_finished, old_owner
            FROM {{s}}.{runs_tables.TABLE} r WHERE r.workflow_id = run_id;
            IF FOUND THEN
                delta := run->'whole';
            ELSIF jsonb_typeof(run->'since_start') = 'object' THEN
                delta := run->'since_start';
            ELSE
                delta := NULL;
            END IF;
            IF delta IS NOT NULL THEN
                new_status := coalesce(
                    delta->'statuses'->>(array_position({_STORED_STATUSES_SQL}, coalesce(old_status, 'Idle')) - 1),
                    old_status);
                new_finished := CASE (delta->>'finished')::integer WHEN 1 THEN at_us WHEN 2 THEN NULL
                                ELSE old_finished END;
                new_owner := CASE WHEN (delta->>'owner_changed')::boolean THEN delta->>'owner' ELSE old_owner END;
                added_retries := (delta->>'retries')::bigint;
                added_failed := (delta->>'failed_steps')::bigint;
                IF old_status IS NULL THEN
                    INSERT INTO {{s}}.{runs_tables.TABLE} (workflow_id, workflow, agent, status, started_at_us,
                        last_event_at_us, last_event_type, finished_at_us, version, retries, failed_steps, owner,
                        parent_id)
                    VALUES (run_id, run->>'workflow', run->>'agent', new_status, at_us, at_us,
                        delta->>'last_event_type', new_finished, versions[slot], added_retries, added_failed,
                        new_owner, NULL);
                ELSIF new_status IS DISTINCT FROM old_status OR new_finished IS DISTINCT FROM old_finished
                      OR new_owner IS DISTINCT FROM old_owner OR added_retries <> 0 OR added_failed <> 0 THEN
                    UPDATE {{s}}.{runs_tables.TABLE} r SET status = new_status, last_event_at_us = at_us,
                        last_event_type = delta->>'last_event_type', finished_at_us = new_finished,
                        version = versions[slot], retries = r.retries + added_retries,
                        failed_steps = r.failed_steps + added_failed, owner = new_owner
                    WHERE r.workflow_id = run_id;
                END IF;
                IF new_status IS DISTINCT FROM old_status THEN
                    IF old_status IS NOT NULL THEN
                        INSERT INTO {{s}}.{runs_tables.COUNTS_TABLE} AS c (status, runs) VALUES (old_status, -1)
                        ON CONFLICT (status) DO UPDATE SET runs = c.runs - 1;
                    END IF;
                    INSERT INTO {{s}}.{runs_tables.COUNTS_TABLE} AS c (status, runs) VALUES (new_status, 1)
                    ON CONFLICT (status) DO UPDATE SET runs = c.runs + 1;
                END IF;
                IF jsonb_array_length(delta->'handed') > 0 THEN
                    FOR child IN SELECT h FROM jsonb_array_elements_text(delta->'handed') AS h LOOP
                        UPDATE {{s}}.{runs_tables.TABLE} SET parent_id = run_id
                        WHERE workflow_id = child AND parent_id IS NULL;
                    END LOOP;
                END IF;
            END IF;
        END IF;
        IF jsonb_array_length(item->'workers') > 0 THEN
            FOR beat IN SELECT b FROM jsonb_array_elements(item->'workers') AS b LOOP
                INSERT INTO {{s}}.{runs_tables.WORKERS_TABLE} AS w (worker, expires_at_us)
                VALUES (beat->>'worker', CASE WHEN jsonb_typeof(beat->'ttl_us') = 'number'
                                              THEN at_us + (beat->>'ttl_us')::bigint ELSE 0 END)
                ON CONFLICT (worker) DO UPDATE SET expires_at_us = CASE WHEN excluded.expires_at_us = 0 THEN 0
                    ELSE greatest(w.expires_at_us, excluded.expires_at_us) END;
            END LOOP;
        END IF;
    END LOOP;
    RETURN 0;
END
$body$"""
assert (runrows.UNCHANGED, runrows.SET, runrows.CLEAR) == (0, 1, 2)
assert runrows.STORED_STATUSES[0] == "Idle"  # a new row's status is `statuses[0]` of the events since its start


MIGRATIONS: Final[tuple[_Migration, ...]] = (
    _Migration(
        1,
        "events, ids of trimmed events, snapshots, checkpoints, append_group()",
        (
            """CREATE TABLE {s}.events (
                position bigint PRIMARY KEY,
                stream_id text NOT NULL,
                version bigint NOT NULL,
                batch_first bigint NOT NULL,
                batch_last bigint NOT NULL,
                type text NOT NULL,
                id uuid NOT NULL,
                record json NOT NULL,
                CONSTRAINT events_stream_version_key UNIQUE (stream_id, version),
                CONSTRAINT events_id_key UNIQUE (id)
            )""",
            """CREATE TABLE {s}.trimmed_event_ids (
                id uuid PRIMARY KEY,
                stream_id text NOT NULL,
                version bigint NOT NULL,
                position bigint NOT NULL,
                batch_first bigint NOT NULL,
                batch_last bigint NOT NULL
            )""",
            "CREATE INDEX trimmed_event_ids_stream_version ON {s}.trimmed_event_ids (stream_id, version)",
            "CREATE INDEX trimmed_event_ids_position ON {s}.trimmed_event_ids (position)",
            """CREATE TABLE {s}.snapshots (
                stream_id text NOT NULL,
                name text NOT NULL,
                version bigint NOT NULL,
                state bytea NOT NULL,
                PRIMARY KEY (stream_id, name)
            )""",
            "CREATE TABLE {s}.checkpoints (name text PRIMARY KEY, position bigint NOT NULL)",
            _APPEND_GROUP,
        ),
    ),
    # PL/pgSQL caches a plan per statement and session, but under the default plan_cache_mode a statement that
    # reads the function's arguments is planned again at every call whenever the planner guesses a custom plan
    # cheaper than the generic one, which it does for these (arrays of unknown length), at a cost measured in
    # docs/measurements.md. The generic plans are the index scans the statements are written for, so plan them once
    # per session.
    _Migration(
        2,
        "append_group() plans its statements once per session",
        (
            "ALTER FUNCTION {s}.append_group(text[], text[], bigint[], integer[], uuid[], text[], text[], text) "
            "SET plan_cache_mode = force_generic_plan",
        ),
    ),
    # Large data fields kept apart from their events, once per content (agentfold.blobs). Their bytes are stored out
    # of line and uncompressed (STORAGE EXTERNAL): an append writes them while it holds the events lock, and
    # compressing megabytes there would make every other writer wait for it (docs/payloads.md).
    _Migration(
        3,
        "blobs, event_blobs, trim_stream()",
        (
            "CREATE TABLE {s}.blobs (digest text PRIMARY KEY, content bytea NOT NULL)",
            "ALTER TABLE {s}.blobs ALTER COLUMN content SET STORAGE EXTERNAL",
            """CREATE TABLE {s}.event_blobs (
                position bigint NOT NULL,
                digest text NOT NULL REFERENCES {s}.blobs (digest),
                PRIMARY KEY (position, digest)
            )""",
            "CREATE INDEX event_blobs_digest ON {s}.event_blobs (digest)",
            _TRIM_STREAM,
        ),
    ),
    # Filtered reads of the global log (a worker's start, triggers, subscriptions and groups with filters) find
    # their events through these instead of testing every row: a page is one range of (type, position), or of
    # (category, position), per type or category asked for.
    _Migration(
        4,
        "indexes on (type, position) and (stream category, position) for filtered reads of the log",
        (
            "CREATE INDEX IF NOT EXISTS events_type_position ON {s}.events (type, position)",
            f"CREATE INDEX IF NOT EXISTS events_category_position ON {{s}}.events (({_CATEGORY}), position)",
        ),
    ),
    # Each fact of an event stored once (see `_EVENT_COLUMNS`), the existing rows rewritten.
    _Migration(5, "events store each fact once: columns, and data and metadata as json", _DIET_STATEMENTS),
    # A partitioned store's appends lock one row and the partitions they write (`_PARTITIONED_HEAD_STATEMENTS`);
    # nothing changes in a store in one table.
    _Migration(6, "partitioned stores: appends serialise on a head row, not on every partition", ()),
    # The open runs (agentfold.openruns), kept by every append in its transaction; a store that had events before
    # gets them folded from its log by `_fill_open_runs`, in this migration's transaction.
    _Migration(
        7,
        "open runs kept with each append",
        (
            "CREATE TABLE {s}.open_runs (workflow_id text PRIMARY KEY, workflow text NOT NULL, owner text)",
            _APPLY_OPEN_RUNS,
        ),
    ),
    # The filtered reads' indexes keyed by a hash of the type or category instead of its text (see
    # `_HASHED_EVENT_INDEXES`); the old ones are dropped, the new ones built from the rows in this transaction.
    _Migration(
        8,
        "type and category indexes keyed by hashes: narrow entries that stay packed as the log grows",
        (
            "DROP INDEX {s}.events_type_position",
            "DROP INDEX {s}.events_category_position",
            *_HASHED_EVENT_INDEXES,
        ),
    ),
    # The runs index (agentfold.runrows), kept by every append in its transaction; a store that had events before
    # gets it folded from its log by `_fill_runs_index` (from the checkpoint of the projector that kept it before,
    # where there is one), in this migration's transaction.
    _Migration(
        9,
        "runs index kept with each append",
        (
            *runs_tables.create_statements("text", "bigint", "{s}."),
            # Room in each page for a row's next version: an append that changes no indexed column (most do not)
            # then updates it in place of its indexes (a heap-only tuple).
            f"ALTER TABLE {{s}}.{runs_tables.TABLE} SET (fillfactor = 70)",
            _APPLY_RUNS_INDEX,
        ),
    ),
)


# -- hash partitions (a layout chosen when a store is created) -----------------------------------------------------
#
# With `partitions=N` a new store's events table is split by a hash of the stream id into N tables, each with its own
# indexes, so no single index grows with the whole log. PostgreSQL cannot enforce a unique constraint on a partitioned
# table unless it holds the partition key, so the layout keeps each guarantee another way:
# - one event per (stream, version): the primary key (stream_id, version) holds the key, so the database enforces it;
# - one event per position: positions are handed out under the events table lock (`PostgresBackend._commit`), so
#   they are unique by construction; a plain index on position in each partition serves reads in position order (a
#   Merge Append of the partitions' index scans, stopped by the LIMIT);
# - one event per id: `event_ids` (id -> stream, version, position, batch), hash-partitioned by id with a primary
#   key, written and deleted with the events by statement triggers in the same transaction, so an idempotent retry
#   is one index lookup however large the log; append_group() reads it instead of the events.
# The layout is applied right after migration 1 created the (still empty) table, so every later migration runs on
# it as on a single table.

_PARTITIONED_EVENTS: Final = """CREATE TABLE {s}.events (
    position bigint NOT NULL,
    stream_id text NOT NULL,
    version bigint NOT NULL,
    batch_first bigint NOT NULL,
    batch_last bigint NOT NULL,
    type text NOT NULL,
    id uuid NOT NULL,
    record json NOT NULL,
    CONSTRAINT events_stream_version_key PRIMARY KEY (stream_id, version)
) PARTITION BY HASH (stream_id)"""

_EVENT_IDS: Final = """CREATE TABLE {s}.event_ids (
    id uuid PRIMARY KEY,
    stream_id text NOT NULL,
    version bigint NOT NULL,
    position bigint NOT NULL,
    batch_first bigint NOT NULL,
    batch_last bigint NOT NULL
) PARTITION BY HASH (id)"""

_EVENT_ID_TRIGGERS: Final = (
    """CREATE FUNCTION {s}.events_inserted() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    INSERT INTO {s}.event_ids (id, stream_id, version, position, batch_first, batch_last)
    SELECT id, stream_id, version, position, batch_first, batch_last FROM written;
    RETURN NULL;
END
$body$""",
    """CREATE FUNCTION {s}.events_deleted() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    DELETE FROM {s}.event_ids i WHERE i.id IN (SELECT r.id FROM removed r);
    RETURN NULL;
END
$body$""",
    "CREATE TRIGGER events_inserted AFTER INSERT ON {s}.events REFERENCING NEW TABLE AS written "
    "FOR EACH STATEMENT EXECUTE FUNCTION {s}.events_inserted()",
    "CREATE TRIGGER events_deleted AFTER DELETE ON {s}.events REFERENCING OLD TABLE AS removed "
    "FOR EACH STATEMENT EXECUTE FUNCTION {s}.events_deleted()",
)


def _partition_statements(partitions: int) -> tuple[str, ...]:
    """What turns the empty events table migration 1 created into `partitions` hash partitions, with `event_ids`."""
    digits = len(str(partitions - 1))
    return (
        "DROP TABLE {s}.events",
        _PARTITIONED_EVENTS,
        "CREATE INDEX events_position ON {s}.events (position)",
        *(
            f"CREATE TABLE {{s}}.events_p{index:0{digits}d} PARTITION OF {{s}}.events "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {index})"
            for index in range(partitions)
        ),
        _EVENT_IDS,
        *(
            f"CREATE TABLE {{s}}.event_ids_p{index:0{digits}d} PARTITION OF {{s}}.event_ids "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {index})"
            for index in range(partitions)
        ),
        *_EVENT_ID_TRIGGERS,
        "DROP FUNCTION {s}.append_group(text[], text[], bigint[], integer[], uuid[], text[], text[], text)",
        _APPEND_GROUP.replace(_KNOWN_IDS_OF_EVENTS, _KNOWN_IDS_OF_EVENT_IDS),
    )


# Migration 5 on a partitioned store: the same rows in a new partitioned table (same partitions, same names), and
# `event_ids` reduced to id -> position (the rest of an id's record is the event's, found by position).
_EVENT_IDS_5: Final = """CREATE TABLE {s}.event_ids_5 (
    id uuid NOT NULL,
    position bigint NOT NULL
) PARTITION BY HASH (id)"""

_EVENT_ID_TRIGGERS_5: Final = (
    """CREATE OR REPLACE FUNCTION {s}.events_inserted() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    INSERT INTO {s}.event_ids (id, position) SELECT id, position FROM written;
    RETURN NULL;
END
$body$""",
    *_EVENT_ID_TRIGGERS[2:],
)


def _partitioned_diet_statements(partitions: int) -> tuple[str, ...]:
    """Migration 5 on a store whose events table has `partitions` hash partitions."""
    digits = len(str(partitions - 1))
    names = [f"p{index:0{digits}d}" for index in range(partitions)]
    return (
        _LOCK_EVENTS,
        f"CREATE TABLE {{s}}.events_5 ({_EVENT_COLUMNS}) PARTITION BY HASH (stream_id)",
        *(
            f"CREATE TABLE {{s}}.events_5_{name} PARTITION OF {{s}}.events_5 "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {index})"
            for index, name in enumerate(names)
        ),
        _COPY_EVENTS_5,
        _EVENT_IDS_5,
        *(
            f"CREATE TABLE {{s}}.event_ids_5_{name} PARTITION OF {{s}}.event_ids_5 "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {index})"
            for index, name in enumerate(names)
        ),
        "INSERT INTO {s}.event_ids_5 (id, position) SELECT id, position FROM {s}.events_5",
        f"DROP FUNCTION {{s}}.{_OLD_APPEND_GROUP_SIGNATURE}",
        "DROP TABLE {s}.events, {s}.event_ids",
        "ALTER TABLE {s}.events_5 RENAME TO events",
        "ALTER TABLE {s}.event_ids_5 RENAME TO event_ids",
        *(f"ALTER TABLE {{s}}.events_5_{name} RENAME TO events_{name}" for name in names),
        *(f"ALTER TABLE {{s}}.event_ids_5_{name} RENAME TO event_ids_{name}" for name in names),
        "ALTER TABLE {s}.events ADD CONSTRAINT events_stream_version_key PRIMARY KEY (stream_id, version)",
        "ALTER TABLE {s}.event_ids ADD CONSTRAINT event_ids_pkey PRIMARY KEY (id)",
        "CREATE INDEX events_position ON {s}.events (position)",
        *_EVENT_INDEXES,
        *_EVENT_ID_TRIGGERS_5,
        _replace_once(_APPEND_GROUP_5, _KNOWN_IDS_5, _KNOWN_IDS_5_OF_EVENT_IDS),
        _TRIM_STREAM_5,
    )


# Migration 6 on a partitioned store: writers serialise on one row instead of on every partition. LOCK TABLE on the
# partitioned events table takes EXCLUSIVE on every partition, and the head as max(position) reads every partition's
# index. Instead, `head` holds the last position handed out (trimmed events included), read FOR UPDATE at the start
# of each append and updated in its transaction; trim_stream() takes the same row lock, so every writer of the schema
# still queues on one lock, and readers' guarantee is unchanged: one writer at a time hands out positions, each after
# the previous one committed, so positions become visible in order. An append writes (RowExclusiveLock) only the
# partitions of its streams and ids. Its lookups keep their plans made once per session (force_generic_plan, as in
# migration 5), which on PostgreSQL 15 take ACCESS SHARE on every partition before pruning: planning them per call
# with the stream ids as constants (force_custom_plan or EXECUTE) touched only the written partitions but cost more
# than the locks it saved (docs/postgres.md#partitions). trim_stream(), rare, plans its delete with its stream id.
# The head is filled under the lock appends took before, so no append of an older agentfold commits beside it unseen.
_HEAD: Final = "CREATE TABLE {s}.head (one boolean PRIMARY KEY DEFAULT true CHECK (one), position bigint NOT NULL)"
_FILL_HEAD: Final = """INSERT INTO {s}.head (position)
    SELECT greatest((SELECT max(position) FROM {s}.events), (SELECT max(position) FROM {s}.trimmed_event_ids), 0)"""
_LOCK_HEAD: Final = "SELECT h.position INTO head FROM {s}.head h FOR UPDATE;"

_PARTITIONED_APPEND_GROUP_6: Final = _replace_once(
    _replace_once(
        _replace_once(
            _replace_once(
                _replace_once(
                    _replace_once(_APPEND_GROUP_5, "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"),
                    """    LOCK TABLE {s}.events IN EXCLUSIVE MODE;
    has_trimmed := EXISTS (SELECT FROM {s}.trimmed_event_ids);
    head := coalesce((SELECT max(e.position) FROM {s}.events e), 0);
""",
                    """    SELECT h.position INTO head FROM {s}.head h FOR UPDATE;
    has_trimmed := EXISTS (SELECT FROM {s}.trimmed_event_ids);
""",
                ),
                _KNOWN_IDS_5,
                _KNOWN_IDS_5_OF_EVENT_IDS,
            ),
            """    SELECT array_agg(streams.stream_id),
           array_agg(coalesce((SELECT max(e.version) FROM {s}.events e WHERE e.stream_id = streams.stream_id), 0))
      INTO stream_names, stream_versions
      FROM (SELECT DISTINCT unnest(append_streams) AS stream_id) AS streams;
""",
            """    SELECT array_agg(streams.stream_id),
           array_agg(coalesce((SELECT max(e.version) FROM {s}.events e WHERE e.stream_id = streams.stream_id), 0))
      INTO stream_names, stream_versions
      FROM (SELECT DISTINCT unnest(append_streams) AS stream_id) AS streams;
""",
        ),
        """        -- Trimmed events still count for the head, for stream versions and for known ids.
        head := greatest(head, (SELECT max(t.position) FROM {s}.trimmed_event_ids t));
""",
        "        -- Trimmed events still count for stream versions and for known ids (the head counts them already).\n",
    ),
    "        PERFORM pg_notify(channel, '');\n",
    "        UPDATE {s}.head h SET position = head;\n        PERFORM pg_notify(channel, '');\n",
)

_PARTITIONED_TRIM_STREAM_6: Final = _replace_once(
    _replace_once(
        _TRIM_STREAM_5, "    LOCK TABLE {s}.events IN EXCLUSIVE MODE;\n", "    PERFORM FROM {s}.head h FOR UPDATE;\n"
    ),
    "plan_cache_mode = force_generic_plan",
    "plan_cache_mode = force_custom_plan",
)

_PARTITIONED_HEAD_STATEMENTS: Final = (
    _LOCK_EVENTS,
    _HEAD,
    _FILL_HEAD,
    _PARTITIONED_APPEND_GROUP_6,
    _PARTITIONED_TRIM_STREAM_6,
)
"""Migration 6 on a partitioned store (a store in one table keeps its functions: LOCK TABLE on one table is one
lock, and its head is one read of its primary key)."""


async def _partition_count(connection: psycopg.AsyncConnection[Any], schema: str) -> int:
    """How many partitions the store's events table has (0: it is one table)."""
    cursor = await connection.execute(
        "SELECT count(i.inhrelid) FROM pg_class c LEFT JOIN pg_inherits i ON i.inhparent = c.oid "
        "WHERE c.oid = to_regclass(format('%%I.events', %s::text)) AND c.relkind = 'p'",
        (schema,),
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _migrate(
    connection: psycopg.AsyncConnection[Any], schema: str, partitions: int, up_to: int | None = None
) -> None:
    """Create the schema and apply missing migrations (up to migration `up_to`, all when None: a store as an older
    agentfold left it); concurrent openers queue on an advisory lock. A new store gets its events table in
    `partitions` hash partitions (0: one table)."""
    quoted = sql.Identifier(schema).as_string(connection)
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_MIGRATION_LOCK_CLASS, f"agentfold:{schema}")
        )
        cursor = await connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if await cursor.fetchone() is None:
            await connection.execute(f"CREATE SCHEMA {quoted}".encode())
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (version integer PRIMARY KEY, "
            "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())".encode()
        )
        cursor = await connection.execute(f"SELECT coalesce(max(version), 0) FROM {quoted}.schema_migrations".encode())
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        latest = MIGRATIONS[-1].version
        if current > latest:
            raise StoreCorrupted(
                f"schema {schema!r} is at migration {current}, newer than this agentfold knows ({latest}); upgrade"
            )
        for migration in MIGRATIONS:
            if migration.version <= current or (up_to is not None and migration.version > up_to):
                continue
            statements = migration.statements
            if migration.version == 1 and partitions:
                statements += _partition_statements(partitions)
            if migration.version == 5 and (existing := await _partition_count(connection, schema)):
                statements = _partitioned_diet_statements(existing)
            if migration.version == 6 and await _partition_count(connection, schema):
                statements = _PARTITIONED_HEAD_STATEMENTS
            for statement in statements:
                await connection.execute(statement.replace("{s}", quoted).encode())
            if migration.version == 7:
                await _fill_open_runs(connection, quoted)
            if migration.version == 9:
                await _fill_runs_index(connection, quoted)
            await connection.execute(
                f"INSERT INTO {quoted}.schema_migrations (version, description) VALUES (%s, %s)".encode(),
                (migration.version, migration.description),
            )


async def _fill_open_runs(connection: psycopg.AsyncConnection[Any], quoted: str) -> None:
    """Fold the open runs of a store that had events before it kept them, through the type index (migration 4's
    when migration 7 runs, migration 8's after it), in the migration's transaction (every position it reads is
    final: `PostgresBackend._commit`)."""
    cursor = await connection.execute(
        f"SELECT stream_id, type, data::text FROM {quoted}.events WHERE type = ANY(%(types)s) "
        f"AND {_TYPE_KEY} = ANY(ARRAY(SELECT hashtext(kept) FROM unnest(%(types)s::text[]) AS kept)) "
        "AND starts_with(stream_id, %(prefix)s) ORDER BY position".encode(),
        {"types": list(openruns.KEPT_TYPES), "prefix": openruns.WORKFLOW_STREAM_PREFIX},
    )
    found = await cursor.fetchall()
    runs = openruns.fold((stream_id, event_type, data.encode()) for stream_id, event_type, data in found)
    if runs:
        await connection.execute(
            f"INSERT INTO {quoted}.open_runs (workflow_id, workflow, owner) SELECT * FROM unnest(%s::text[], "
            "%s::text[], %s::text[])".encode(),
            (
                [run.workflow_id for run in runs.values()],
                [run.workflow for run in runs.values()],
                [run.owner for run in runs.values()],
            ),
        )


_RUN_COLUMNS: Final = ", ".join(runrows.COLUMNS)
_FOLD_PAGE: Final = 5000


async def _fill_runs_index(connection: psycopg.AsyncConnection[Any], quoted: str) -> None:
    """Bring the runs index of a store that had events before appends kept it up to its head, in the migration's
    transaction: from the checkpoint of the projector that kept it then, if it has one, else from the start; then
    drop that checkpoint."""
    cursor = await connection.execute(
        f"SELECT position FROM {quoted}.checkpoints WHERE name = %s".encode(), (runs_tables.PROJECTOR_NAME,)
    )
    row = await cursor.fetchone()
    await _fold_runs_index_again(connection, quoted, 0 if row is None else int(row[0]))
    await connection.execute(
        f"DELETE FROM {quoted}.checkpoints WHERE name = %s".encode(), (runs_tables.PROJECTOR_NAME,)
    )


async def _fold_runs_index_again(connection: psycopg.AsyncConnection[Any], quoted: str, after_position: int) -> None:
    """Fold the runs index on from `after_position` (0: from nothing, every row dropped first), then count the runs
    per status again from the rows."""
    if after_position == 0:
        for statement in runs_tables.clear(f"{quoted}."):
            await connection.execute(statement.encode())
    await _fold_runs_index(connection, quoted, after_position)
    for statement in runs_tables.recount(f"{quoted}."):
        await connection.execute(statement.encode())


async def _fold_runs_index(connection: psycopg.AsyncConnection[Any], quoted: str, after_position: int) -> None:
    """Fold the events of runs' and workers' streams after `after_position` into the runs index, a page at a time
    through the category index (the two tables are independent, so one category after the other)."""
    statement = (
        f"SELECT {_RECORD}, e.stream_id, e.position FROM {quoted}.events e "
        f"WHERE ({_CATEGORY_KEY}, e.position) > (hashtext(%(category)s), %(after)s) "
        f"AND {_CATEGORY_KEY} <= hashtext(%(category)s) ORDER BY {_CATEGORY_KEY}, e.position LIMIT %(limit)s"
    ).encode()
    for category in (openruns.WORKFLOW_STREAM_PREFIX, runrows.WORKER_STREAM_PREFIX):
        after = after_position
        while True:
            cursor = await connection.execute(statement, {"category": category, "after": after, "limit": _FOLD_PAGE})
            found = await cursor.fetchall()
            if not found:
                break
            records = [record for record, stream_id, _ in found if stream_id.startswith(category)]
            appends = runrows.recorded(_decode_page(records))
            rows = await _load_runs_index(connection, quoted, appends)
            rows.apply(appends)
            await _write_runs_index(connection, quoted, rows)
            after = int(found[-1][2])


async def _load_runs_index(
    connection: psycopg.AsyncConnection[Any], quoted: str, appends: Sequence[runrows.Written]
) -> runrows.Rows:
    """The stored rows of the runs and workers `appends` name (those that have one)."""
    cursor = await connection.execute(
        f"SELECT {_RUN_COLUMNS} FROM {quoted}.{runs_tables.TABLE} WHERE workflow_id = ANY(%s)".encode(),
        (list(runrows.named_runs(appends)),),
    )
    runs = {record[0]: runrows.RunRow(*record) for record in await cursor.fetchall()}
    cursor = await connection.execute(
        f"SELECT worker, expires_at_us FROM {quoted}.{runs_tables.WORKERS_TABLE} WHERE worker = ANY(%s)".encode(),
        (list(runrows.named_workers(appends)),),
    )
    return runrows.Rows(runs, {worker: int(expires) for worker, expires in await cursor.fetchall()})


async def _write_runs_index(connection: psycopg.AsyncConnection[Any], quoted: str, rows: runrows.Rows) -> None:
    changed, counts, workers = rows.changes()
    schema = f"{quoted}."
    async with connection.cursor() as cursor:
        if changed:
            await cursor.executemany(
                runs_tables.for_psycopg(runs_tables.upsert_row(schema)), map(runrows.row_values, changed)
            )
        if counts:
            await cursor.executemany(runs_tables.for_psycopg(runs_tables.add_count(schema)), list(counts.items()))
        if workers:
            await cursor.executemany(runs_tables.for_psycopg(runs_tables.set_worker(schema)), list(workers.items()))


async def _rebuild_runs_index(connection: psycopg.AsyncConnection[Any], quoted: str) -> int:
    await _fold_runs_index_again(connection, quoted, 0)
    cursor = await connection.execute(f"SELECT count(*) FROM {quoted}.{runs_tables.TABLE}".encode())
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


# -- statements ---------------------------------------------------------------------------------------------------


def _record(stream_json: str) -> str:
    """SQL for the JSON text of event `e` as readers receive it (decoded by msgspec into a `RecordedEvent`), with
    `stream_json` the SQL for its stream id as JSON. Built by concatenation: stream ids and types may hold quotes and
    backslashes, so they go through to_json(); numbers, the uuid and the stored JSON need no escaping."""
    return (
        f"""'{{"stream_id":' || {stream_json} || ',"version":' || e.version || ',"position":' || e.position"""
        """ || ',"type":' || to_json(e.type)::text || ',"data":' || e.data::text"""
        """ || ',"metadata":' || e.metadata::text || ',"_id":"' || e.id || '","_recorded_at_us":' || e.recorded_at_us"""
        """ || '}'"""
    )


_RECORD: Final = _record("to_json(e.stream_id)::text")
_STREAM_RECORD: Final = _record("%(stream_json)s::text")  # a stream's events: its id as JSON comes from the client
_ID_RECORD: Final = (
    "e.id::text, e.stream_id, e.version, e.version - e.batch_index, e.version - e.batch_index + e.batch_size - 1, "
    "e.position"
)

_GROUP_CALL: Final = (
    "{s}.append_group(string_to_array(%s::text, E'\\x1e'), string_to_array(%s::text, ',')::bigint[], "
    "string_to_array(%s::text, ',')::integer[], string_to_array(%s::text, ',')::uuid[], "
    "string_to_array(%s::text, E'\\x1e'), string_to_array(%s::text, E'\\x1e'), "
    "string_to_array(%s::text, E'\\x1e'), %s::text)"
)
"""The call that writes a group, each array as one string of its elements joined by a separator (see below)."""

_DECIDED: Final = f"""decided AS MATERIALIZED (
            SELECT g.outcome, g.result_version, g.result_position, g.slot
            FROM {_GROUP_CALL}
                 WITH ORDINALITY AS g(outcome, result_version, result_position, slot)
        )"""
"""The group written, one row per append in order (its slot), as a CTE of the statements that then apply changes."""
_INDEXED: Final = """indexed AS MATERIALIZED (
            SELECT {s}.apply_runs_index(ARRAY(SELECT slot::integer FROM decided WHERE outcome = 0),
                                        ARRAY(SELECT result_version FROM decided ORDER BY slot),
                                        %s::jsonb, %s::integer[], %s::text[], %s::text[]) AS done
            {after}
        )"""
"""The runs-index changes of the appends `decided` wrote, as a CTE; `{after}` what it must wait for."""

_STATEMENTS: Final = {
    # What an append takes first (append_group()), for a step no append may interleave with.
    "lock_writers": "LOCK TABLE {s}.events IN EXCLUSIVE MODE",
    # Each array comes as one string of its elements joined by a separator, split here by string_to_array: one
    # parameter per array for the driver instead of one per element (psycopg's binary array dumping was the larger
    # cost: docs/measurements.md). The separator cannot occur in an element: stream ids
    # and types are printable, JSON escapes control characters inside strings, uuids and numbers hold no comma.
    "append_group": """
        SELECT outcome, result_version, result_position
        FROM {group_call}
    """.replace("{group_call}", _GROUP_CALL),
    # A group with open-run or runs-index changes: the same call, then the changes of the appends it wrote, in one
    # statement (one round trip, one transaction, under the lock append_group() takes). The CTEs are materialized
    # in order: the changes are applied once append_group() has decided every append.
    "append_group_runs": f"""
        WITH {_DECIDED}, applied AS MATERIALIZED (
            SELECT {{s}}.apply_open_runs(ARRAY(SELECT slot::integer FROM decided WHERE outcome = 0),
                                       %s::integer[], %s::text[], %s::text[], %s::text[], %s::text[]) AS done
        ), {_INDEXED.replace("{after}", "FROM applied")}
        SELECT decided.outcome, decided.result_version, decided.result_position
        FROM decided, indexed ORDER BY decided.slot
    """,
    # A group with runs-index changes only (a run's steps): the same without the open runs.
    "append_group_indexed": f"""
        WITH {_DECIDED}, {_INDEXED.replace("{after}", "")}
        SELECT decided.outcome, decided.result_version, decided.result_position
        FROM decided, indexed ORDER BY decided.slot
    """,
    "id_records": f"""
        SELECT {_ID_RECORD}
        FROM {{s}}.events e WHERE e.id = ANY(%(ids)b::uuid[])
        UNION ALL
        SELECT id::text, stream_id, version, batch_first, batch_last, position
        FROM {{s}}.trimmed_event_ids WHERE id = ANY(%(ids)b::uuid[])
    """,
    # A stream's stored versions are contiguous (trimming removes a prefix), so a page is a version range: the plan
    # stays a short range scan even before the table has statistics. Rows come back as JSON text, each decoded on
    # its own (faster than joining a page, here or with `string_agg` on the server: docs/measurements.md).
    "read_stream": f"""
        SELECT {_STREAM_RECORD}
        FROM {{s}}.events e
        WHERE e.stream_id = %(stream)s
          AND e.version > greatest(%(after)s, (SELECT min(version) - 1 FROM {{s}}.events WHERE stream_id = %(stream)s))
          AND e.version <= greatest(%(after)s, (SELECT min(version) - 1 FROM {{s}}.events WHERE stream_id = %(stream)s))
                           + %(limit)s
        ORDER BY e.version
    """,
    "read_stream_backwards": f"""
        SELECT {_STREAM_RECORD}
        FROM {{s}}.events e
        WHERE e.stream_id = %(stream)s AND e.version < %(before)s AND e.version > %(after)s
        ORDER BY e.version DESC
        LIMIT %(limit)s
    """,
    # A filtered page reads an index and the head in one statement, so from one snapshot, in which every position
    # up to the head is final (see `PostgresBackend._commit`). Each row carries the position scanned; a page
    # without a match is one row without a record.
    #
    # By type: the first `limit` positions above `after` under each key (a type's hash: types asked for whose hashes
    # are equal share one) from the (type's hash, position) index. Every match up to the lowest last position of a
    # key that filled its `limit` (else the head) is among them; the page is the first `limit` of those, less the
    # rows of types not asked for.
    #
    # "(key, position) > (k, after) AND key <= k, in (key, position) order" is "key = k AND position > after, in
    # position order" said so that only the index's order serves it: said plainly, the planner may walk the
    # primary key in position order testing each row instead, whenever it guesses the type common enough, and a
    # rare type (or a common one absent from the log's tail) then costs a scan of everything after `after`.
    "read_all_types": f"""
        WITH found AS (
            SELECT f.position, count(*) OVER (PARTITION BY t.key) AS taken,
                   max(f.position) OVER (PARTITION BY t.key) AS last
            FROM (SELECT DISTINCT hashtext(wanted) FROM unnest(%(types)s::text[]) AS wanted) AS t(key)
            CROSS JOIN LATERAL (
                SELECT e.position FROM {{s}}.events e
                WHERE ({_TYPE_KEY}, e.position) > (t.key, %(after)s) AND {_TYPE_KEY} <= t.key
                ORDER BY {_TYPE_KEY}, e.position LIMIT %(limit)s
            ) AS f
        ), bound AS (
            SELECT coalesce((SELECT min(last) FROM found WHERE taken = %(limit)s),
                            greatest((SELECT max(position) FROM {{s}}.events),
                                     (SELECT max(position) FROM {{s}}.trimmed_event_ids)),
                            0) AS position
        ), chosen AS (
            SELECT found.position FROM found, bound WHERE found.position <= bound.position
            ORDER BY found.position LIMIT %(limit)s
        ), scanned AS (
            SELECT CASE WHEN (SELECT count(*) FROM chosen) = %(limit)s THEN (SELECT max(position) FROM chosen)
                        ELSE (SELECT position FROM bound) END AS position
        )
        SELECT {_RECORD}, scanned.position
        FROM scanned LEFT JOIN (chosen JOIN {{s}}.events e USING (position))
            ON e.type = ANY(%(types)s::text[])
               AND (%(prefix)s::text IS NULL OR starts_with(e.stream_id, %(prefix)s::text))
        ORDER BY e.position
    """,
    # By stream category: the category's next `limit` events from the (category's hash, position) index (said the
    # same way as the type's, for the same reason), of which those on streams starting with the prefix (which may be
    # longer than the category).
    "read_all_category": f"""
        WITH found AS (
            SELECT e.position, e.stream_id, {_RECORD} AS record FROM {{s}}.events e
            WHERE ({_CATEGORY_KEY}, e.position) > (hashtext(%(category)s), %(after)s)
                  AND {_CATEGORY_KEY} <= hashtext(%(category)s)
            ORDER BY {_CATEGORY_KEY}, e.position LIMIT %(limit)s
        ), scanned AS (
            SELECT CASE WHEN (SELECT count(*) FROM found) = %(limit)s THEN (SELECT max(position) FROM found)
                        ELSE coalesce(greatest((SELECT max(position) FROM {{s}}.events),
                                               (SELECT max(position) FROM {{s}}.trimmed_event_ids)), 0)
                   END AS position
        )
        SELECT found.record, scanned.position
        FROM scanned LEFT JOIN found ON starts_with(found.stream_id, %(prefix)s::text)
        ORDER BY found.position
    """,
    # Without a filter an index serves, every scanned row comes back with its position, so the page reports how
    # far it scanned; rows the filters leave out carry no record.
    "read_all": f"""
        SELECT CASE WHEN %(prefix)s::text IS NULL OR starts_with(e.stream_id, %(prefix)s::text) THEN {_RECORD} END,
               e.position
        FROM {{s}}.events e WHERE e.position > %(after)s ORDER BY e.position LIMIT %(limit)s
    """,
    "stream_version": """
        SELECT greatest((SELECT max(version) FROM {s}.events WHERE stream_id = %(stream)s),
                        (SELECT max(version) FROM {s}.trimmed_event_ids WHERE stream_id = %(stream)s), 0)
    """,
    "head_position": """
        SELECT greatest((SELECT max(position) FROM {s}.events), (SELECT max(position) FROM {s}.trimmed_event_ids), 0)
    """,
    "trim": "SELECT {s}.trim_stream(%s, %s)",
    # An append's blobs and links, in its transaction after append_group() (which holds the events lock): a blob
    # already stored under its digest keeps its row.
    "insert_blobs": """
        INSERT INTO {s}.blobs (digest, content) SELECT * FROM unnest(%s::text[], %b::bytea[])
        ON CONFLICT (digest) DO NOTHING
    """,
    "insert_links": "INSERT INTO {s}.event_blobs (position, digest) SELECT * FROM unnest(%s::bigint[], %s::text[])",
    "get_blobs": "SELECT digest, content FROM {s}.blobs WHERE digest = ANY(%s::text[])",
    "blob_usage": "SELECT count(*), coalesce(sum(octet_length(content)), 0) FROM {s}.blobs",
    "load_snapshot": "SELECT version, state FROM {s}.snapshots WHERE stream_id = %s AND name = %s",
    "save_snapshot": """
        INSERT INTO {s}.snapshots (stream_id, name, version, state) VALUES (%s, %s, %s, %s)
        ON CONFLICT (stream_id, name) DO UPDATE SET version = excluded.version, state = excluded.state
        WHERE snapshots.version <= excluded.version
    """,
    "load_checkpoint": "SELECT position FROM {s}.checkpoints WHERE name = %s",
    # The head before the rows, in one statement: one snapshot.
    "open_runs": """
        SELECT h.position, r.workflow_id, r.workflow, r.owner
        FROM (SELECT greatest((SELECT max(position) FROM {s}.events),
                              (SELECT max(position) FROM {s}.trimmed_event_ids), 0) AS position) h
        LEFT JOIN {s}.open_runs r ON true
    """,
    "save_checkpoint": """
        INSERT INTO {s}.checkpoints (name, position) VALUES (%s, %s)
        ON CONFLICT (name) DO UPDATE SET position = excluded.position
    """,
}


# A partitioned store finds event ids in `event_ids` (which holds every stored event's id) instead of the events, and
# its head in `head` (migration 6) instead of the last position of every partition.
_PARTITIONED_STATEMENTS: Final = {
    "head_position": "SELECT position FROM {s}.head",
    "open_runs": """
        SELECT h.position, r.workflow_id, r.workflow, r.owner FROM {s}.head h LEFT JOIN {s}.open_runs r ON true
    """,
    "lock_writers": "SELECT FROM {s}.head FOR UPDATE",
    "id_records": _STATEMENTS["id_records"].replace(
        "FROM {s}.events e WHERE e.id", "FROM {s}.event_ids i JOIN {s}.events e USING (position) WHERE i.id"
    ),
}
assert _PARTITIONED_STATEMENTS["id_records"] != _STATEMENTS["id_records"]


def _render_statements(connection: psycopg.AsyncConnection[Any], schema: str, partitioned: bool) -> dict[str, bytes]:
    quoted = sql.Identifier(schema).as_string(connection)
    chosen = {**_STATEMENTS, **_PARTITIONED_STATEMENTS} if partitioned else _STATEMENTS
    return {name: text.replace("{s}", quoted).encode() for name, text in chosen.items()}


# -- append decisions ---------------------------------------------------------------------------------------------


_EXPECTED_ANY: Final = -1
_EXPECTED_STREAM_EXISTS: Final = -2


def _expected_code(expected: ExpectedVersion) -> int:
    if expected is ANY:
        return _EXPECTED_ANY
    if expected is STREAM_EXISTS:
        return _EXPECTED_STREAM_EXISTS
    if expected is NO_STREAM:
        return 0
    assert isinstance(expected, int)
    return expected


_encode_json = msgspec.json.Encoder().encode


def _stream_json(stream_id: str) -> str:
    """A stream id as a JSON string, as the read statements put it in each record of the stream."""
    return _encode_json(stream_id).decode()


class _PendingAppend:
    """An append waiting for its group; `size` (its JSON and blob bytes) counts against `MAX_GROUP_BYTES`."""

    __slots__ = ("blob_bytes", "events", "expected", "indexed", "opened", "size", "stream_id")

    def __init__(self, stream_id: str, events: list[EncodedEvent], expected: ExpectedVersion) -> None:
        self.stream_id = stream_id
        self.events = events
        self.expected = expected
        self.blob_bytes = sum(len(blob.content) for event in events for blob in event.blobs)
        self.size = sum(len(event.data) + len(event.metadata) for event in events) + self.blob_bytes
        self.opened = openruns.changes(stream_id, ((event.type, event.data) for event in events))
        """What the append does to the open runs, if it is written."""
        read = ((event.type, event.data, event.metadata) for event in events)
        self.indexed = runrows.written(stream_id, read, 0, 0)
        """What the append does to the runs index, if it is written (its version and time are the database's)."""


def _size_of(pending: _PendingAppend) -> int:
    return pending.size


_SEPARATOR: Final = "\x1e"  # ASCII record separator: not printable, and escaped inside JSON strings
_SEPARATOR_BYTES: Final = _SEPARATOR.encode()


def _group_arguments(group: list[_PendingAppend], channel: str) -> tuple[str, ...]:
    """The arrays `append_group()` takes, each joined into one string (see the `append_group` statement)."""
    events = [event for pending in group for event in pending.events]
    return (
        _SEPARATOR.join([pending.stream_id for pending in group]),
        ",".join([str(_expected_code(pending.expected)) for pending in group]),
        ",".join([str(len(pending.events)) for pending in group]),
        ",".join([event.id for event in events]),
        _SEPARATOR.join([event.type for event in events]),
        _SEPARATOR_BYTES.join([event.data for event in events]).decode(),
        _SEPARATOR_BYTES.join([event.metadata for event in events]).decode(),
        channel,
    )


def _open_run_arguments(group: list[_PendingAppend]) -> tuple[list[Any], ...]:
    """The open-run changes of the group's appends, in order, each with its append's slot (1-based) in the group:
    the arrays `apply_open_runs()` takes after the arrays of `append_group()`."""
    changes = [(slot, change) for slot, pending in enumerate(group, 1) for change in pending.opened]
    return (
        [slot for slot, _ in changes],
        [change.kind for _, change in changes],
        [change.workflow_id for _, change in changes],
        [change.workflow for _, change in changes],
        [change.owner for _, change in changes],
    )


class _IndexedSlot(msgspec.Struct, frozen=True):
    """One append's runs-index updates as `apply_runs_index()` reads them."""

    slot: int
    run: runrows.RunUpdate | None
    workers: list[runrows.WorkerUpdate]


_encode_updates: Final = msgspec.json.Encoder().encode


def _runs_index_arguments(group: list[_PendingAppend]) -> tuple[str, list[int], list[str], list[str]]:
    """The runs-index updates of the group's appends as `apply_runs_index()` takes them after the arrays of
    `apply_open_runs()`: as JSON, each with its append's slot (1-based); and apart, as arrays of slots, runs and
    last event types, the appends of runs that only resume (every update of the run in the group does)."""
    slots = [(slot, pending.indexed) for slot, pending in enumerate(group, 1) if pending.indexed is not None]
    updates: list[_IndexedSlot] = []
    resumed: list[tuple[int, str, str]] = []
    for (slot, found), apart in zip(slots, runrows.resuming([found for _, found in slots]), strict=True):
        if apart and found.run is not None:
            resumed.append((slot, found.run.workflow_id, found.run.whole.last_event_type))
        else:
            updates.append(_IndexedSlot(slot, found.run, found.workers))
    return (
        _encode_updates(updates).decode(),
        [slot for slot, _, _ in resumed],
        [run_id for _, run_id, _ in resumed],
        [event_type for _, _, event_type in resumed],
    )


def _blob_arguments(
    group: list[_PendingAppend], rows: list[tuple[int, int, int]]
) -> tuple[list[str], list[bytes], list[int], list[str]]:
    """The blobs of the group's written appends (each digest once) and their links (position, digest)."""
    blobs: dict[str, bytes] = {}
    positions: list[int] = []
    digests: list[str] = []
    for pending, (outcome, _, last_position) in zip(group, rows, strict=True):
        if outcome != Outcome.WRITTEN or not pending.blob_bytes:
            continue
        first_position = last_position - len(pending.events) + 1
        for offset, event in enumerate(pending.events):
            for blob in event.blobs:
                blobs[blob.digest] = blob.content
                positions.append(first_position + offset)
                digests.append(blob.digest)
    return list(blobs), list(blobs.values()), positions, digests


# -- the store ----------------------------------------------------------------------------------------------------


class PostgresBackend:
    """Events in PostgreSQL tables of one schema, written by a group-commit writer and pushed via LISTEN/NOTIFY."""

    scheme = "postgresql"
    page_size = DEFAULT_PAGE_SIZE
    reads_ahead = True  # the server finds the next page while this process decodes and folds the current one
    record_decoder: RecordDecoder | None = _record_decoder  # folds decode the records one by one
    max_event_size = DEFAULT_MAX_EVENT_SIZE

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        conninfo: str,
        options: PostgresOptions,
        statements: dict[str, bytes],
        display_url: str,
        partitions: int = 0,
    ) -> None:
        self._closed = False
        self.partitions = partitions
        """Hash partitions of the events table by stream id (0: one table)."""
        if options.max_event_size is not None:
            self.max_event_size = options.max_event_size
        self.blob_threshold = options.blob_threshold
        self.max_blob_size = options.max_blob_size
        self._pool = pool
        self._conninfo = conninfo
        self._options = options
        self._sql = statements
        self._display_url = display_url
        # One NOTIFY channel per schema. Kept under PostgreSQL's 63-byte identifier limit so LISTEN (which would
        # truncate) and pg_notify (which would refuse) name the same channel; a shared prefix only adds wake-ups.
        self._channel = f"agentfold.{options.schema}"[:63]
        self._committer: GroupCommitter[_PendingAppend, AppendResult] = GroupCommitter(
            self._commit_group,
            max_group=MAX_GROUP_APPENDS,
            max_weight=MAX_GROUP_BYTES,
            weight=_size_of,
            in_flight=GROUPS_IN_FLIGHT,
            name="postgresql store",
        )
        self._appended = Broadcast()
        self._listening = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._listener_backend_pid: int | None = None
        self._listener_connects = 0
        self._notifications = 0

    def __repr__(self) -> str:
        return f"PostgresBackend({self._display_url!r}, schema={self._options.schema!r})"

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the store's tables."""
        return self._options.schema

    # -- appends: group commit -----------------------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: list[EncodedEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        return await self._committer.submit(_PendingAppend(stream_id, events, expected_version))

    async def _commit_group(self, group: list[_PendingAppend]) -> list[AppendResult | BaseException]:
        """Commit the group: one outcome per append (`GroupCommitter` does the queueing, grouping and resolving)."""
        try:
            return list(await self._commit(group))
        except (psycopg.Error, PoolTimeout) as error:
            if len(group) > 1 and _is_database_refusal(error):
                # The server refused something in the group: give every append its own transaction, so one bad
                # append cannot fail the others.
                outcomes: list[AppendResult | BaseException] = []
                for pending in group:
                    outcomes += await self._commit_group([pending])
                return outcomes
            return [translate_error(error) for _ in group]

    async def _commit(self, group: list[_PendingAppend]) -> list[AppendResult | AgentfoldError]:
        """Write one group in one transaction (one round trip), then decide the appends that reused known ids.

        Why readers never skip an event: positions are not taken from a sequence at insert time (a sequence value
        becomes visible only when its transaction commits, so a reader could pass position 99 while the transaction
        holding it is still open, and lose it forever). Instead `append_group()` first takes `LOCK TABLE events IN
        EXCLUSIVE MODE` (on a partitioned store, the one row of `head` FOR UPDATE: migration 6), which conflicts with
        itself and with the row locks of writes, but not with plain SELECTs. So in the whole cluster only one
        transaction at a time assigns positions, and it assigns them after reading the committed head under the lock:
        the function is VOLATILE, so under READ COMMITTED each statement in it takes a fresh snapshot, after the LOCK
        returned (a STABLE function would reuse the calling query's snapshot, taken before the lock, and could miss the
        previous writer's rows). PostgreSQL marks a transaction committed before it releases its locks, so the next
        writer starts only after this one is visible. Hence positions grow in commit order, and any snapshot that shows
        position p also shows every position below p: a reader that passes p never leaves a hole behind it. This is the
        approach of the Python eventsourcing library's PostgreSQL recorder. The lock serialises writers; group commit
        pays for that by writing every pending append of this process in one transaction.
        See https://www.postgresql.org/docs/current/explicit-locking.html#LOCKING-TABLES and
        https://www.postgresql.org/docs/current/xfunc-volatility.html
        """
        if any(pending.opened for pending in group):
            statement = self._sql["append_group_runs"]
            arguments: tuple[Any, ...] = (
                *_group_arguments(group, self._channel),
                *_open_run_arguments(group),
                *_runs_index_arguments(group),
            )
        elif any(pending.indexed is not None for pending in group):
            statement = self._sql["append_group_indexed"]
            arguments = (*_group_arguments(group, self._channel), *_runs_index_arguments(group))
        else:
            statement, arguments = self._sql["append_group"], _group_arguments(group, self._channel)
        async with self._connection() as connection:
            if not any(pending.blob_bytes for pending in group):
                cursor = await connection.execute(statement, arguments)
                rows = await cursor.fetchall()
            else:  # the blobs and links in the same transaction, under the lock append_group() took
                async with connection.transaction():
                    cursor = await connection.execute(statement, arguments)
                    rows = await cursor.fetchall()
                    digests, contents, positions, linked = _blob_arguments(group, rows)
                    if positions:
                        await connection.execute(self._sql["insert_blobs"], (digests, contents))
                        await connection.execute(self._sql["insert_links"], (positions, linked))
        outcomes: list[AppendResult | AgentfoldError | None] = []
        reused: list[str] = []
        written = False
        for pending, (outcome, version, position) in zip(group, rows, strict=True):
            if outcome == Outcome.WRITTEN:
                outcomes.append(AppendResult(version, position))
                written = True
            elif outcome == Outcome.WRONG_EXPECTED_VERSION:
                outcomes.append(WrongExpectedVersion(pending.stream_id, pending.expected, version))
            else:
                outcomes.append(None)
                reused.extend(event.id for event in pending.events)
        if written:
            self._wake_waiters()
        if not reused:
            return [outcome for outcome in outcomes if outcome is not None]  # every append is decided
        # The group has committed; what is left are appends that reused known ids. Records of ids never change once
        # written, so deciding them after the commit gives the same answer as deciding them inside it.
        try:
            ids = {row[0]: IdRecord(*row[1:]) for row in await self._fetch_all("id_records", {"ids": reused})}
        except AgentfoldError as error:
            return [error if outcome is None else outcome for outcome in outcomes]
        decided: list[AppendResult | AgentfoldError] = []
        for pending, known in zip(group, outcomes, strict=True):
            if known is not None:
                decided.append(known)
                continue
            try:
                retry = find_retry(pending.stream_id, pending.events, [ids.get(event.id) for event in pending.events])
            except AgentfoldError as error:
                decided.append(error)
                continue
            assert retry is not None, "append_group() reported known ids that are gone"
            decided.append(retry)
        return decided

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; a cancellation that arrives while waiting for one is raised, never lost.

        The pool waits with `asyncio.wait_for`, which on Python 3.11 returns the connection when the cancellation
        lands as the connection is handed over, and the cancellation is gone: a loop around a read (a client
        awaiting a result) would then run on after its cancellation, holding event-loop shutdown open.
        """
        task = asyncio.current_task()
        cancelling = 0 if task is None else task.cancelling()
        async with self._pool.connection() as connection:
            if task is not None and task.cancelling() > cancelling:
                raise asyncio.CancelledError
            yield connection

    # -- reads ---------------------------------------------------------------------------------------------------

    def read_stream_records(
        self, stream_id: str, after_version: int, limit: int | None
    ) -> AsyncGenerator[Sequence[Any], None]:
        return read_pages(self._fetch_page, stream_id, after_version, limit, self.page_size, self.reads_ahead)

    async def _fetch_page(self, stream_id: str, after_version: int, limit: int) -> RecordPage:
        # The records come as a list of strings, not of 1-tuples: no object per row that is not needed, and none
        # that the garbage collector counts while the page is alive.
        records: list[str] = await self._fetch_all(
            "read_stream",
            {"stream": stream_id, "stream_json": _stream_json(stream_id), "after": after_version, "limit": limit},
            scalar_row,
        )
        if not records:
            return RecordPage(records, 0, after_version)
        try:
            last_version = _version_decoder.decode(records[-1]).version
        except msgspec.DecodeError as error:
            raise StoreCorrupted(f"a stored event of stream {stream_id!r} does not decode: {error}") from None
        return RecordPage(records, len(records), last_version)

    async def read_stream_backwards(
        self, stream_id: str, before_version: int, after_version: int, limit: int
    ) -> list[RecordedEvent]:
        records: list[str] = await self._fetch_all(
            "read_stream_backwards",
            {
                "stream": stream_id,
                "stream_json": _stream_json(stream_id),
                "before": before_version,
                "after": after_version,
                "limit": limit,
            },
            scalar_row,
        )
        return _decode_page(records)

    async def read_all_page(
        self,
        after_position: int,
        limit: int,
        types: tuple[str, ...] | None,
        stream_prefix: str | None,
    ) -> tuple[list[RecordedEvent], int]:
        category = None if stream_prefix is None else prefix_category(stream_prefix)
        if types is not None or category is not None:
            parameters = {"after": after_position, "limit": limit, "prefix": stream_prefix}
            if types is not None:
                rows = await self._fetch_all("read_all_types", {**parameters, "types": list(dict.fromkeys(types))})
            else:
                rows = await self._fetch_all("read_all_category", {**parameters, "category": category})
            records = [row[0] for row in rows if row[0] is not None]
            return _decode_page(records), max(after_position, int(rows[0][1]))
        rows = await self._fetch_all("read_all", {"after": after_position, "limit": limit, "prefix": stream_prefix})
        if not rows:
            return [], after_position
        return _decode_page([row[0] for row in rows if row[0] is not None]), int(rows[-1][1])

    async def stream_version(self, stream_id: str) -> int:
        row = await self._fetch_one("stream_version", {"stream": stream_id})
        return int(row[0]) if row else 0

    async def head_position(self) -> int:
        row = await self._fetch_one("head_position", ())
        return int(row[0]) if row else 0

    async def rebuild_open_runs(self) -> int:
        with _translated():
            return await self._rebuild_open_runs()

    async def _rebuild_open_runs(self) -> int:
        async with self._connection() as connection, connection.transaction():
            quoted = sql.Identifier(self.schema).as_string(connection)
            # An append holding the events lock waits here for the rows (apply_open_runs() writes them) and applies
            # its changes after this commits; one that committed before is in what the fold reads.
            await connection.execute(f"LOCK TABLE {quoted}.open_runs IN EXCLUSIVE MODE".encode())
            await connection.execute(f"DELETE FROM {quoted}.open_runs".encode())
            await _fill_open_runs(connection, quoted)
            cursor = await connection.execute(f"SELECT count(*) FROM {quoted}.open_runs".encode())
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def rebuild_runs_index(self) -> int:
        async with self._connection() as connection, connection.transaction():
            # Appends wait for the lock they take first, held here, so none interleaves with the rebuild.
            await connection.execute(self._sql["lock_writers"])
            return await _rebuild_runs_index(connection, sql.Identifier(self.schema).as_string(connection))

    async def open_runs(self) -> tuple[int, list[openruns.OpenRun]]:
        rows = await self._fetch_all("open_runs", ())
        position = int(rows[0][0]) if rows else 0
        return position, [openruns.OpenRun(*row[1:]) for row in rows if row[1] is not None]

    async def _fetch_all(self, statement: str, params: Any, row_factory: RowFactory[Any] = tuple_row) -> list[Any]:
        with _translated():
            async with self._connection() as connection:
                cursor = connection.cursor(row_factory=row_factory)
                await cursor.execute(self._sql[statement], params)
                rows: list[Any] = await cursor.fetchall()
                return rows

    async def _fetch_one(self, statement: str, params: Any) -> tuple[Any, ...] | None:
        with _translated():
            async with self._connection() as connection:
                cursor = await connection.execute(self._sql[statement], params)
                row: tuple[Any, ...] | None = await cursor.fetchone()
                return row

    # -- push ----------------------------------------------------------------------------------------------------

    async def wait_for_append(self, after_position: int, timeout: float) -> None:
        """Return once the head is above `after_position`, on a NOTIFY, after a (re)LISTEN, or after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._listener is None:
            self._listener = loop.create_task(self._listen_loop(), name="agentfold-pg-listener")
        if not self._listening.is_set():  # (re)connecting: give it a moment, then poll rather than trust a hint
            await wait_event(self._listening, max(0.0, min(deadline - loop.time(), _POLL_SECONDS)))
        # Taken before the re-check: a NOTIFY or reconnect after the check sets exactly this event.
        woken = self._appended.ticket()
        if await self.head_position() > after_position:
            return
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        if not self._listening.is_set():  # no LISTEN in place: notifications could be missed, so poll
            await asyncio.sleep(min(remaining, _POLL_SECONDS))
            return
        await Broadcast.wait(woken, remaining)

    def _wake_waiters(self) -> None:
        self._appended.wake()

    async def _listen_loop(self) -> None:
        """Keep one LISTEN connection (outside the pool) alive; wake waiters on every NOTIFY and every (re)LISTEN."""
        failures = 0
        while not self._closed:
            try:
                connection = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error:
                await asyncio.sleep(_RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)])
                failures += 1
                continue
            try:
                async with connection:
                    await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._listener_backend_pid = connection.info.backend_pid
                    self._listener_connects += 1
                    self._listening.set()
                    failures = 0
                    # Anything committed before LISTEN took effect sent its NOTIFY to nobody: make waiters re-read.
                    self._wake_waiters()
                    while True:
                        async for _ in connection.notifies(timeout=_LISTENER_HEALTH_CHECK):
                            self._notifications += 1
                            self._wake_waiters()
                        await connection.execute("SELECT 1")  # a silent network drop surfaces here
            except psycopg.Error:
                logger.debug("the LISTEN connection dropped; reconnecting", exc_info=True)
            finally:
                self._listening.clear()
                self._listener_backend_pid = None
                self._wake_waiters()
            await asyncio.sleep(_RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)])
            failures += 1

    # -- records beside the log ----------------------------------------------------------------------------------

    async def load_snapshot(self, owner: str, name: str) -> tuple[int, bytes] | None:
        row = await self._fetch_one("load_snapshot", (owner, name))
        return (int(row[0]), bytes(row[1])) if row else None

    async def save_snapshot(self, owner: str, name: str, mark: int, state: bytes) -> None:
        await self._execute("save_snapshot", (owner, name, mark, state))

    async def trim_stream(self, stream_id: str, before_version: int) -> int:
        row = await self._fetch_one("trim", (stream_id, before_version))
        return int(row[0]) if row else 0

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        with _translated():
            async with self._connection() as connection:
                # In binary: bytea in text comes as hex, twice the bytes to send and to decode.
                cursor = await connection.execute(self._sql["get_blobs"], (list(digests),), binary=True)
                rows = await cursor.fetchall()
        return {row[0]: bytes(row[1]) for row in rows}

    async def blob_usage(self) -> BlobUsage:
        row = await self._fetch_one("blob_usage", ())
        return BlobUsage(int(row[0]), int(row[1])) if row else BlobUsage(0, 0)

    async def load_checkpoint(self, name: str) -> int | None:
        row = await self._fetch_one("load_checkpoint", (name,))
        return int(row[0]) if row else None

    async def save_checkpoint(self, name: str, position: int, apply: Callable[[Any], Any] | None = None) -> None:
        """Save the checkpoint; with `apply`, run `apply(connection)` (plain or async) in the same transaction:
        exactly once.

        The connection is a `psycopg.AsyncConnection` inside that transaction, so a read model kept in the same
        database commits together with the position it covers, or not at all.
        """
        if apply is None:
            await self._execute("save_checkpoint", (name, position))
            return
        with _translated():
            async with self._connection() as connection, connection.transaction():
                outcome = apply(connection)
                if inspect.isawaitable(outcome):
                    await outcome
                await connection.execute(self._sql["save_checkpoint"], (name, position))

    async def _execute(self, statement: str, params: Any) -> int:
        with _translated():
            async with self._connection() as connection:
                cursor = await connection.execute(self._sql[statement], params)
                count: int = max(cursor.rowcount, 0)
                return count

    async def close(self) -> None:
        self._closed = True
        await self._committer.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        self._wake_waiters()
        await self._pool.close()


class PostgresStore(EventStore):
    """An event store in a PostgreSQL schema (what ``connect("postgresql://...")`` returns); the I/O is its
    `PostgresBackend`."""

    backend: PostgresBackend

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the store's tables."""
        return self.backend.schema

    def __repr__(self) -> str:
        return f"PostgresStore({self.backend._display_url!r}, schema={self.schema!r})"


def _decode_page(records: list[str]) -> list[RecordedEvent]:
    """The events of stored records.

    Each record is decoded on its own. Joining a page into one JSON array and decoding that at once was slower:
    the joined text of a page is a fresh allocation each time, above glibc's mmap threshold, and its page faults
    cost more than the joining saved (docs/measurements.md).
    """
    decode = _record_decoder.decode
    try:
        return [decode(record) for record in records]
    except msgspec.DecodeError as error:
        raise StoreCorrupted(f"a stored event does not decode: {error}") from None


class _StoredVersion(msgspec.Struct):
    version: int


_version_decoder: Final = msgspec.json.Decoder(_StoredVersion)


def _raise_open_error(url: str, error: BaseException) -> NoReturn:
    translated = translate_error(error)
    raised = type(translated)(f"cannot open the PostgreSQL store at {redact(url)}: {translated}")
    raised.retryable = translated.retryable
    raise raised from None


async def _require_current_schema(connection: psycopg.AsyncConnection[Any], schema: str, shown_url: str) -> None:
    """Raise `StoreNotFound` unless `schema` holds a store at the latest migration; reads only."""
    cursor = await connection.execute(
        "SELECT to_regclass(format('%%I.schema_migrations', %s::text)) IS NOT NULL, "
        "to_regclass(format('%%I.events', %s::text)) IS NOT NULL",
        (schema, schema),
    )
    row = await cursor.fetchone()
    if row is None or not (row[0] and row[1]):
        cursor = await connection.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'schema_migrations' "
            "AND table_schema IN (SELECT table_schema FROM information_schema.tables WHERE table_name = 'events') "
            "ORDER BY 1"
        )
        others = [str(found[0]) for found in await cursor.fetchall()]
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        where = f"; schemas with one: {shown}" if others else "; there is none in this database"
        raise StoreNotFound(f"no agentfold store in schema {schema!r} at {shown_url}{where}")
    quoted = sql.Identifier(schema).as_string(connection)
    cursor = await connection.execute(f"SELECT coalesce(max(version), 0) FROM {quoted}.schema_migrations".encode())
    found = await cursor.fetchone()
    current = int(found[0]) if found else 0
    if current < MIGRATIONS[-1].version:
        raise StoreNotFound(
            f"the agentfold store in schema {schema!r} at {shown_url} is at migration {current} and this agentfold "
            f"reads migration {MIGRATIONS[-1].version}; it was not upgraded because it was opened without create"
        )


async def open_store(url: str, *, create: bool = True, **options: Any) -> PostgresStore:
    """Connect, create or upgrade the schema, and return a store. See `PostgresOptions` for the options.

    With `create=False` nothing is created or upgraded: a schema without a current store raises `StoreNotFound`.
    """
    split_url(url, ("postgresql", "postgres"))
    parsed, libpq = _parse_options(url, options)
    conninfo = _conninfo(url, parsed, libpq)
    try:
        async with await psycopg.AsyncConnection.connect(conninfo) as connection:
            if create:
                await _migrate(connection, parsed.schema, parsed.partitions or 0)
            else:
                await _require_current_schema(connection, parsed.schema, redact(url))
            partitions = await _partition_count(connection, parsed.schema)
            if parsed.partitions is not None and parsed.partitions != partitions:
                raise InvalidURL(
                    f"the store in schema {parsed.schema!r} at {redact(url)} has {partitions or 'no'} partitions and "
                    f"the URL asks for {parsed.partitions}: partitions are chosen when a store is created "
                    "(docs/postgres.md says how to move a store to another layout)"
                )
            statements = _render_statements(connection, parsed.schema, partitions > 0)
    except (psycopg.Error, PoolTimeout) as error:
        _raise_open_error(url, error)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo,
        min_size=parsed.pool_min,
        max_size=parsed.pool_max,
        kwargs={"autocommit": True},
        timeout=parsed.pool_timeout,
        open=False,
        name=f"agentfold-{parsed.schema}-{uuid.uuid4().hex[:6]}",
    )
    try:
        await pool.open(wait=parsed.pool_min > 0, timeout=parsed.pool_timeout)
    except (psycopg.Error, PoolTimeout) as error:
        await pool.close()
        _raise_open_error(url, error)
    return PostgresStore(PostgresBackend(pool, conninfo, parsed, statements, redact(url), partitions))
