"""The runs index: one row per workflow run, kept from the log, so a listing of 100k runs reads one page of rows.

On SQLite and PostgreSQL the rows are tables in the store's own database, written by each append in its transaction
(`agentfold.runrows` says what an append changes), so a listing is always as current as the log and nobody folds the
log to read it. On memory and Redis stores they live in this process's memory, folded from the log by the same
code and followed from there; a memory store's reader folds the whole log when opened, a Redis store's reader loads
the rows its readers keep in Redis with the position they are as of, and folds only the events after it
(`RedisRunsTable`). Either way they can be dropped and rebuilt from the log at any time (`rebuild()`); the log stays
the truth.

A row holds what a listing filters and sorts on: workflow, agent, status, start, last event, finish, retries, failed
steps, the worker holding the run and the parent that started it. A run is `Stalled` when it is unfinished and no
live worker holds it (the holder's last heartbeat plus its TTL is past, it stopped, or none ever ran it): the same
rule as `agentfold.runtime.leases.stalled_runs`, decided when the listing is read.

Pages are keyset-paged on (start time, workflow id), newest first: the cost of a page does not grow with how far
into the listing it is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final
from urllib.parse import parse_qs, urlsplit, urlunsplit

import msgspec

from agentfold import runrows
from agentfold.backends.runs_tables import COUNTS_TABLE, SQLITE_RECORDED_AT, TABLE, WORKERS_TABLE, for_psycopg
from agentfold.display import now_us
from agentfold.errors import InvalidInput, StoreCorrupted, StoreFull, StoreReadOnly
from agentfold.lifecycle import (
    AWAITING_INPUT,
    CANCELLED,
    COMPLETED,
    FAILED,
    IDLE,
    PROCESSING,
    TERMINATED,
)
from agentfold.openruns import WORKFLOW_STREAM_PREFIX
from agentfold.runrows import COLUMNS, STALLED, SUSPENDED, RunRow
from agentfold.store import EventStore

LISTED_STATUSES: Final = (
    PROCESSING,
    AWAITING_INPUT,
    SUSPENDED,
    COMPLETED,
    FAILED,
    CANCELLED,
    TERMINATED,
    STALLED,
    IDLE,
)
"""Every status a listing can filter on, in the order the counts are shown."""
UNFINISHED: Final = (IDLE, PROCESSING, AWAITING_INPUT)
"""Statuses a run can be stalled in (a suspended run waits for code, not for a worker)."""
MAX_PAGE: Final = 500


# -- queries -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunsQuery:
    """Which runs a listing shows. Every criterion is optional; they combine with AND."""

    status: str | None = None
    """The status shown (`Stalled` for an unfinished run no live worker holds, else the state below)."""
    state: str | None = None
    """The lifecycle state or `Suspended`, stalled or not."""
    workflow: str | None = None
    id_prefix: str | None = None
    started_from_us: int | None = None
    """Runs started at or after this time."""
    started_until_us: int | None = None
    """Runs started before this time."""
    after: str | None = None
    """The cursor of the page before (`RunsPage.next_cursor`)."""
    limit: int = 50

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in LISTED_STATUSES:
            raise InvalidInput(f"unknown run status {self.status!r}; use one of {', '.join(LISTED_STATUSES)}")
        if self.state is not None and (self.state == STALLED or self.state not in LISTED_STATUSES):
            states = ", ".join(status for status in LISTED_STATUSES if status != STALLED)
            raise InvalidInput(f"unknown run state {self.state!r}; use one of {states}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be an int from 1 to {MAX_PAGE}, got {self.limit!r}")
        if self.after is not None:
            decode_cursor(self.after)

    def counting(self) -> RunsQuery:
        """The same criteria without status, state and paging: what the per-status counts cover."""
        return replace(self, status=None, state=None, after=None)


def encode_cursor(row: RunRow) -> str:
    raw = f"{row.started_at_us}:{row.workflow_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(start time, workflow id) of the last row of the page before; `InvalidInput` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        started, workflow_id = raw.split(":", 1)
        return int(started), workflow_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"not a page cursor: {cursor[:40]!r}") from None


@dataclass(frozen=True)
class RunsPage:
    """One page of a listing, the cursor of the next page, and the counts per status over the whole filter."""

    runs: list[RunRow]
    next_cursor: str | None
    counts: dict[str, int]
    position: int
    """The global position the index had reached when read."""

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": [row.to_json() for row in self.runs],
            "next_cursor": self.next_cursor,
            "counts": self.counts,
            "position": self.position,
        }


def _ordered_counts(counter: Counter[str]) -> dict[str, int]:
    return {status: counter.get(status, 0) for status in LISTED_STATUSES}


# -- the tables ----------------------------------------------------------------------------------------------------


class RunsTable:
    """Where the index rows are read from; one implementation per kind of backend."""

    kept: ClassVar[bool] = True
    """Whether the rows are kept in the store, for every reader (False: only in this process's memory)."""

    async def open(self) -> None:
        """Connect."""

    async def page(self, query: RunsQuery, at_us: int) -> tuple[list[RunRow], Counter[str]]:
        """The rows of one page and the counts per shown status."""
        raise InvalidInput("this runs table cannot be read")  # each table overrides it

    async def get(self, workflow_ids: Sequence[str], at_us: int) -> dict[str, RunRow]:
        raise InvalidInput("this runs table cannot be read")  # each table overrides it

    async def children(self, parent_id: str, at_us: int) -> list[RunRow]:
        raise InvalidInput("this runs table cannot be read")  # each table overrides it

    async def workflows(self) -> list[str]:
        raise InvalidInput("this runs table cannot be read")  # each table overrides it

    async def close(self) -> None:
        """Release connections."""


class MemoryRunsTable(RunsTable):
    """Rows in this process, for memory stores: folded from the whole log on every start."""

    kept = False

    def __init__(self) -> None:
        self.rows = runrows.Rows()
        self._listed: set[str] = set()
        self._order: list[tuple[int, str]] = []
        self._sorted = True

    def update(self, events: Sequence[Any]) -> None:
        """Fold one page of recorded events."""
        self.rows.apply(runrows.recorded(events))
        changed, _, workers = self.rows.changes(last_event=True)
        self._list(changed)
        self.changed(changed, workers)

    def _list(self, rows: Iterable[RunRow]) -> None:
        for row in rows:
            if row.workflow_id not in self._listed:
                self._listed.add(row.workflow_id)
                self._order.append((row.started_at_us, row.workflow_id))
                self._sorted = False

    def changed(self, rows: Sequence[RunRow], workers: dict[str, int]) -> None:
        """What one page of events changed (every row it touched, its last event included): kept nowhere here."""

    def clear(self) -> None:
        self.rows = runrows.Rows()
        self._listed.clear()
        self._order.clear()
        self._sorted = True

    async def load(self) -> int:
        """Start from the rows kept for this store; the position they are as of (0: nothing kept, fold it all)."""
        self.clear()
        return 0

    async def save(self, position: int) -> bool:
        """Keep the rows as of `position` for the next reader, where the store can; False when the kept rows were
        dropped or rebuilt since this table loaded them (`load` them again, then fold on top)."""
        return True

    async def drop(self) -> None:
        """Forget every row, and any kept for the store: the next fold starts from the log's first event."""
        self.clear()

    def _stalled(self, row: RunRow, at_us: int) -> bool:
        if row.status not in UNFINISHED:
            return False
        return row.owner is None or self.rows.workers.get(row.owner, 0) <= at_us

    def _shown(self, row: RunRow, at_us: int) -> RunRow:
        return replace(row, stalled=self._stalled(row, at_us))

    async def page(self, query: RunsQuery, at_us: int) -> tuple[list[RunRow], Counter[str]]:
        if not self._sorted:
            self._order.sort(reverse=True)
            self._sorted = True
        cursor = decode_cursor(query.after) if query.after else None
        counts: Counter[str] = Counter()
        chosen: list[RunRow] = []
        for started, workflow_id in self._order:
            row = self._shown(self.rows.runs[workflow_id], at_us)
            if not _matches(row, query):
                continue
            counts[row.shown_status] += 1
            if query.status is not None and row.shown_status != query.status:
                continue
            if query.state is not None and row.status != query.state:
                continue
            if cursor is not None and (started, workflow_id) >= cursor:
                continue
            if len(chosen) <= query.limit:
                chosen.append(row)
        return chosen, counts

    async def get(self, workflow_ids: Sequence[str], at_us: int) -> dict[str, RunRow]:
        runs = self.rows.runs
        return {i: self._shown(runs[i], at_us) for i in workflow_ids if i in runs}

    async def children(self, parent_id: str, at_us: int) -> list[RunRow]:
        found = [self._shown(row, at_us) for row in self.rows.runs.values() if row.parent_id == parent_id]
        return sorted(found, key=lambda row: (row.started_at_us, row.workflow_id))

    async def workflows(self) -> list[str]:
        return sorted({row.workflow for row in self.rows.runs.values()})


SAVE_SCRIPT: Final = """#!lua
local at = redis.call('GET', KEYS[3])
local epoch = redis.call('GET', KEYS[4]) or '0'
if epoch ~= ARGV[3] then return -1 end
local stored = tonumber(at or '0')
if stored < tonumber(ARGV[1]) then return -1 end
if stored >= tonumber(ARGV[2]) then return 0 end
local last = 4 + 2 * tonumber(ARGV[4])
local i = 5
while i <= last do
  local j = math.min(i + 999, last)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  redis.call('HSET', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
redis.call('SET', KEYS[3], ARGV[2])
return 1
"""
"""KEYS: rows, workers, at, epoch. ARGV: the position the writer last agreed with the kept rows, the position its
rows are as of, the epoch it loaded, how many rows follow, then workflow id, row pairs and worker, expiry pairs.
-1: the kept rows are not the ones the writer started from (another epoch, or behind it); 0: they are already as
of that position or later, nothing written; 1: written."""

DROP_SCRIPT: Final = """#!lua
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return redis.call('INCR', KEYS[4])
"""

_ROW_DECODER: Final = msgspec.msgpack.Decoder(
    tuple[str, str, str, str, int, int, str, int | None, int, int, int, str | None, str | None]
)
_ROW_ENCODER: Final = msgspec.msgpack.Encoder()


class RedisRunsTable(MemoryRunsTable):
    """Rows in this process for a Redis store, kept in Redis by the readers for the next one: a projector and its
    checkpoint. Opening loads the rows (one per run, not one per event) and the position they are as of; the
    index then folds only the events after it, and writes back what they changed.

    Keys, beside the store's own under its prefix: ``{prefix}:runsindex:rows`` (workflow id -> the row's
    `runrows.COLUMNS` as a msgpack array), ``{prefix}:runsindex:workers`` (worker -> when its leases run out),
    ``{prefix}:runsindex:at`` (the position both are as of: they are always the fold of the log up to it) and
    ``{prefix}:runsindex:epoch`` (counts the drops, `agentfold reindex`'s).

    A reader writes only the rows and workers it changed since it last agreed with the kept ones (loaded them, or
    wrote them at position q), with the new position n, in one script that writes only if the kept rows are of
    the same epoch and as of a position p with q <= p < n. That is exact: the kept rows are the fold up to p; a row
    this reader did not change in (q, n] is the same at p as at n (p lies between), and every row it did change it
    writes as it is at n. Where p >= n another reader is as far or further, and its rows include these changes:
    nothing is written, and this reader keeps its changes to write with its next, later position. Where the kept
    rows were dropped or rebuilt since (another epoch, or p < q), this reader loads them again and folds on top.
    """

    kept = True

    def __init__(self, url: str) -> None:
        from agentfold.backends.redis import parse_url

        super().__init__()
        self.settings = parse_url(url, {})
        keys = f"{self.settings.prefix}:runsindex"
        self.keys = [f"{keys}:rows", f"{keys}:workers", f"{keys}:at", f"{keys}:epoch"]
        self._client: Any = None
        self._save_script: Any = None
        self._drop_script: Any = None
        self._epoch = b"0"
        self._agreed = 0
        """The position the kept rows and these last agreed at (loaded or written)."""
        self._unsaved: set[str] = set()
        self._unsaved_workers: set[str] = set()

    async def open(self) -> None:
        from agentfold.backends.redis import make_client

        self._client = make_client(self.settings, self.settings.timeout)
        self._save_script = self._client.register_script(SAVE_SCRIPT)
        self._drop_script = self._client.register_script(DROP_SCRIPT)

    def changed(self, rows: Sequence[RunRow], workers: dict[str, int]) -> None:
        self._unsaved.update(row.workflow_id for row in rows)
        self._unsaved_workers.update(workers)

    def _forget_changes(self, position: int) -> None:
        self._agreed = position
        self._unsaved.clear()
        self._unsaved_workers.clear()

    async def load(self) -> int:
        from agentfold.backends.redis import translate_errors

        rows_key, workers_key, at_key, epoch_key = self.keys
        with translate_errors("load the runs index from Redis"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(at_key)
                pipe.get(epoch_key)
                pipe.hgetall(rows_key)
                pipe.hgetall(workers_key)
                at, epoch, rows, workers = await pipe.execute()
        self.clear()
        self._epoch = bytes(epoch or b"0")
        position = 0 if at is None else int(at)
        if at is not None:
            try:
                runs = {key.decode(): RunRow(*_ROW_DECODER.decode(value)) for key, value in rows.items()}
                expiries = {key.decode(): int(value) for key, value in workers.items()}
            except (ValueError, msgspec.DecodeError) as error:
                raise StoreCorrupted(
                    f"a row of {rows_key!r} or {workers_key!r} was not written by agentfold: {error}"
                ) from None
            self.rows = runrows.Rows(runs, expiries)
            self._list(runs.values())
        self._forget_changes(position)
        return position

    async def save(self, position: int) -> bool:
        from agentfold.backends.redis import translate_errors

        if position <= self._agreed and not self._unsaved and not self._unsaved_workers:
            return True
        arguments: list[bytes | str | int] = [self._agreed, position, self._epoch, len(self._unsaved)]
        runs = self.rows.runs
        for workflow_id in self._unsaved:
            arguments += [workflow_id, _ROW_ENCODER.encode(runrows.row_values(runs[workflow_id]))]
        workers = self.rows.workers
        for worker in self._unsaved_workers:
            arguments += [worker, workers[worker]]
        try:
            with translate_errors("keep the runs index in Redis"):
                written = int(await self._save_script(keys=self.keys, args=arguments))
        except (StoreReadOnly, StoreFull):
            return True  # a replica, or a full server: the rows stay in this process, a later catch-up writes them
        if written == -1:
            return False
        if written == 1:
            self._forget_changes(position)
        return True

    async def drop(self) -> None:
        from agentfold.backends.redis import translate_errors

        with translate_errors("drop the runs index in Redis"):
            epoch = await self._drop_script(keys=self.keys, args=[])
        self.clear()
        self._epoch = b"%d" % int(epoch)
        self._forget_changes(0)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _matches(row: RunRow, query: RunsQuery) -> bool:
    if query.workflow is not None and row.workflow != query.workflow:
        return False
    if query.id_prefix is not None and not row.workflow_id.startswith(query.id_prefix):
        return False
    if query.started_from_us is not None and row.started_at_us < query.started_from_us:
        return False
    return query.started_until_us is None or row.started_at_us < query.started_until_us


class SqlRunsTable(RunsTable):
    """What the SQLite and PostgreSQL tables share: the filter as SQL, with `?` placeholders rewritten per driver."""

    table = TABLE
    workers_table = WORKERS_TABLE
    counts_table = COUNTS_TABLE

    def _stalled_sql(self) -> str:
        unfinished = ", ".join(f"'{status}'" for status in UNFINISHED)
        return (
            f"(r.status IN ({unfinished}) AND (r.owner IS NULL OR NOT EXISTS (SELECT 1 FROM {self.workers_table} w "
            "WHERE w.worker = r.owner AND w.expires_at_us > ?)))"
        )

    def _where(self, query: RunsQuery, at_us: int, *, paging: bool) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if query.workflow is not None:
            clauses.append("r.workflow = ?")
            params.append(query.workflow)
        if query.id_prefix:
            clauses.append("r.workflow_id >= ? AND r.workflow_id < ?")
            params += [query.id_prefix, query.id_prefix + "\U0010ffff"]
        if query.started_from_us is not None:
            clauses.append("r.started_at_us >= ?")
            params.append(query.started_from_us)
        if query.started_until_us is not None:
            clauses.append("r.started_at_us < ?")
            params.append(query.started_until_us)
        if paging and query.state is not None:
            clauses.append("r.status = ?")
            params.append(query.state)
        if paging and query.status is not None:
            if query.status == STALLED:
                clauses.append(self._stalled_sql())
                params.append(at_us)
            else:
                clauses.append("r.status = ?")
                params.append(query.status)
                if query.status in UNFINISHED:
                    clauses.append(f"NOT {self._stalled_sql()}")
                    params.append(at_us)
        if paging and query.after is not None:
            started, workflow_id = decode_cursor(query.after)
            clauses.append("(r.started_at_us < ? OR (r.started_at_us = ? AND r.workflow_id < ?))")
            params += [started, started, workflow_id]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    events_table = "events"
    recorded_at_sql = SQLITE_RECORDED_AT
    """A stored event's time, in SQL over the events table as `e`."""

    def _select(self) -> str:
        columns = ", ".join(f"r.{column}" for column in COLUMNS)
        return f"SELECT {columns}, {self._stalled_sql()} AS stalled FROM {self.table} r"

    def _with_last_events(self, rows_sql: str, order: str) -> str:
        """`rows_sql` (a `_select` chosen and limited) with each run's last event read from its stream: the store
        writes a row's version, last event time and type only with its other changes (`runrows.Rows.changes`), so a
        run's steps cost no write to the index. Three index probes per row shown, never per row scanned."""
        last = (
            f"(SELECT {{}} FROM {self.events_table} e WHERE e.stream_id = '{WORKFLOW_STREAM_PREFIX}' || r.workflow_id "
            "ORDER BY e.version DESC LIMIT 1)"
        )
        picked = {"version": "e.version", "last_event_at_us": self.recorded_at_sql, "last_event_type": "e.type"}
        columns = ", ".join(
            f"coalesce({last.format(picked[column])}, r.{column})" if column in picked else f"r.{column}"
            for column in COLUMNS
        )
        return f"SELECT {columns}, r.stalled FROM ({rows_sql}) r ORDER BY {order}"

    def page_sql(self, query: RunsQuery, at_us: int) -> tuple[str, list[Any]]:
        where, params = self._where(query, at_us, paging=True)
        order = "r.started_at_us DESC, r.workflow_id DESC"
        page = f"{self._select()}{where} ORDER BY {order} LIMIT {query.limit + 1}"
        return self._with_last_events(page, order), [at_us, *params]

    def get_sql(self, where: str) -> str:
        return self._with_last_events(f"{self._select()} {where}", "r.workflow_id")

    def children_sql(self) -> str:
        order = "r.started_at_us, r.workflow_id"
        return self._with_last_events(f"{self._select()} WHERE r.parent_id = ? ORDER BY {order} LIMIT 1000", order)

    def counts_sql(self, query: RunsQuery, at_us: int) -> tuple[str, list[Any], str, list[Any]]:
        """Runs per stored status, and stalled runs per stored status: two queries, the second over unfinished
        runs only (the status index finds them), instead of deciding `Stalled` for every row."""
        where, params = self._where(query.counting(), at_us, paging=False)
        totals = f"SELECT r.status, count(*) FROM {self.table} r{where} GROUP BY r.status"
        unfinished = ", ".join(f"'{status}'" for status in UNFINISHED)
        stalled_where = f"{where} AND" if where else " WHERE"
        stalled = (
            f"SELECT r.status, count(*) FROM {self.table} r{stalled_where} r.status IN ({unfinished}) "
            f"AND {self._stalled_sql()} GROUP BY r.status"
        )
        return totals, params, stalled, [*params, at_us]

    async def _query(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise InvalidInput("this runs table cannot be read")  # each table overrides it

    def kept_counts_sql(self, at_us: int) -> tuple[str, list[Any], str, list[Any]]:
        """For a listing without filters: the kept runs per stored status, and the unfinished runs that live
        workers hold per status (through the (owner, status) index, one probe per live worker): what it costs is
        the number of statuses and of live workers' runs, not of runs."""
        unfinished = ", ".join(f"'{status}'" for status in UNFINISHED)
        totals = f"SELECT status, runs FROM {self.counts_table}"
        # CROSS JOIN: SQLite then walks the live workers and looks their runs up, never the other way round.
        held = (
            f"SELECT r.status, count(*) FROM {self.workers_table} w CROSS JOIN {self.table} r "
            f"WHERE w.expires_at_us > ? AND r.owner = w.worker AND r.status IN ({unfinished}) GROUP BY r.status"
        )
        return totals, [], held, [at_us]

    async def page(self, query: RunsQuery, at_us: int) -> tuple[list[RunRow], Counter[str]]:
        page_sql, params = self.page_sql(query, at_us)
        kept = query.counting() == RunsQuery(limit=query.limit)
        if kept:
            totals_sql, totals_params, held_sql, held_params = self.kept_counts_sql(at_us)
        else:
            totals_sql, totals_params, held_sql, held_params = self.counts_sql(query, at_us)
        records, totals, others = await asyncio.gather(
            self._query(page_sql, params),
            self._query(totals_sql, totals_params),
            self._query(held_sql, held_params),
        )
        counts: Counter[str] = Counter({str(status): int(count) for status, count in totals})
        if kept:  # unfinished and not held by a live worker: stalled
            held = {str(status): int(count) for status, count in others}
            stalled = {status: counts.get(status, 0) - held.get(status, 0) for status in UNFINISHED}
        else:
            stalled = {str(status): int(count) for status, count in others}
        for status, count in stalled.items():
            if count:
                counts[status] -= count
                counts[STALLED] += count
        return [self.row_of(record) for record in records], counts

    async def workflows(self) -> list[str]:
        """Distinct names by skipping through the workflow index (one probe per name, not a scan of every row)."""
        statement = (
            f"WITH RECURSIVE names(workflow) AS (SELECT min(workflow) FROM {self.table} "
            f"UNION ALL SELECT (SELECT min(t.workflow) FROM {self.table} t WHERE t.workflow > names.workflow) "
            "FROM names WHERE names.workflow IS NOT NULL) SELECT workflow FROM names WHERE workflow IS NOT NULL"
        )
        return [str(record[0]) for record in await self._query(statement, [])]

    @staticmethod
    def row_of(record: Sequence[Any]) -> RunRow:
        values = dict(zip(COLUMNS, record, strict=False))
        return RunRow(**values, stalled=bool(record[len(COLUMNS)]))


class SQLiteRunsTable(SqlRunsTable):
    """The index as tables in the store's SQLite file (the backend writes them), read on a connection of its own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._reader: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        return self._reader

    async def _query(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            rows = self._connect().execute(statement, params).fetchall()
            self._connect().rollback()
            return rows

        async with self._lock:
            return await asyncio.to_thread(run)

    async def open(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._connect)

    async def get(self, workflow_ids: Sequence[str], at_us: int) -> dict[str, RunRow]:
        if not workflow_ids:
            return {}
        marks = ", ".join("?" for _ in workflow_ids)
        records = await self._query(self.get_sql(f"WHERE r.workflow_id IN ({marks})"), [at_us, *workflow_ids])
        return {row.workflow_id: row for row in map(self.row_of, records)}

    async def children(self, parent_id: str, at_us: int) -> list[RunRow]:
        return [self.row_of(record) for record in await self._query(self.children_sql(), [at_us, parent_id])]

    async def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.to_thread(reader.close)


class PostgresRunsTable(SqlRunsTable):
    """The index as tables in the store's PostgreSQL schema (the backend writes them), read through a pool."""

    def __init__(self, url: str, schema: str) -> None:
        from psycopg import sql

        self.url = url
        self.schema = schema
        quoted = sql.Identifier(schema).as_string(None)
        self.table = f"{quoted}.{TABLE}"
        self.workers_table = f"{quoted}.{WORKERS_TABLE}"
        self.counts_table = f"{quoted}.{COUNTS_TABLE}"
        self.events_table = f"{quoted}.events"
        self.recorded_at_sql = "e.recorded_at_us"
        self._pool: Any = None

    async def open(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        parts = urlsplit(self.url)
        conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, "", ""))
        self._pool = AsyncConnectionPool(conninfo, min_size=1, max_size=4, open=False, kwargs={"autocommit": True})
        await self._pool.open(wait=True, timeout=10)

    async def _query(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(for_psycopg(statement), params)
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
            return rows

    async def get(self, workflow_ids: Sequence[str], at_us: int) -> dict[str, RunRow]:
        if not workflow_ids:
            return {}
        records = await self._query(self.get_sql("WHERE r.workflow_id = ANY(?)"), [at_us, list(workflow_ids)])
        return {row.workflow_id: row for row in map(self.row_of, records)}

    async def children(self, parent_id: str, at_us: int) -> list[RunRow]:
        return [self.row_of(record) for record in await self._query(self.children_sql(), [at_us, parent_id])]

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


def table_for(url: str) -> RunsTable:
    """The kind of table the store at `url` keeps its index in."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from agentfold.backends.sqlite import parse_url

        return SQLiteRunsTable(parse_url(url).path)
    if scheme in ("postgresql", "postgres"):
        from agentfold.backends.postgres import DEFAULT_SCHEMA

        schema = parse_qs(urlsplit(url).query).get("schema", [DEFAULT_SCHEMA])[-1]
        return PostgresRunsTable(url, schema)
    if scheme == "redis":
        return RedisRunsTable(url)
    return MemoryRunsTable()


# -- the index -----------------------------------------------------------------------------------------------------


class RunsIndex:
    """The runs index of one store: `catch_up()` or `run()` keeps it current, `page()` reads it.

    Open with ``async with RunsIndex(store, url) as index:``; `url` is the store's URL (the SQL tables open their
    own read connections to the same database).
    """

    def __init__(self, store: EventStore, url: str) -> None:
        self.store = store
        self.table = table_for(url)
        self.position = 0
        self._stopping = asyncio.Event()
        self._catching_up = asyncio.Lock()

    async def __aenter__(self) -> RunsIndex:
        await self.table.open()
        if isinstance(self.table, MemoryRunsTable):
            self.position = await self.table.load()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        await self.table.close()

    @property
    def kept_by_store(self) -> bool:
        """True where the store writes the rows with each append (SQL backends): nothing to fold here."""
        return self.store.keeps_runs_index

    @property
    def kept_in_store(self) -> bool:
        """True where the rows are kept in the store for every reader: by its appends (`kept_by_store`), or by its
        readers with the position they are as of (Redis); False where each reader folds the whole log."""
        return self.table.kept

    async def catch_up(self) -> int:
        """Apply every event appended so far; return how many were applied (none where the store keeps the rows).
        On Redis the rows they changed are then kept for the next reader (`RedisRunsTable`). Callers may overlap (a
        page view and the follower): one catches up at a time."""
        async with self._catching_up:
            if self.kept_by_store:
                self.position = await self.store.head_position()
                return 0
            assert isinstance(self.table, MemoryRunsTable)
            applied = await self._fold()
            if applied and not await self.table.save(self.position):
                # The kept rows were dropped or rebuilt since they were loaded: start from them again.
                self.position = await self.table.load()
                await self._fold()
                await self.table.save(self.position)
            return applied

    async def _fold(self) -> int:
        assert isinstance(self.table, MemoryRunsTable)
        applied = 0
        async for page in self.store.read_all_pages(after_position=self.position):
            self.table.update(page)
            self.position = page[-1].position
            applied += len(page)
        return applied

    async def run(self, pause: float = 0.0) -> None:
        """Catch up, then follow new events until `stop()`, waiting at least `pause` seconds after each catch-up
        (where the store keeps the rows there is nothing to follow: it returns at once).

        Whoever reads the index catches it up first (`catch_up`), so following only keeps that catch-up short; a
        pause lets it fold many commits' events in one page instead of one per commit."""
        if self.kept_by_store:
            return
        while not self._stopping.is_set():
            await self.catch_up()
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
            await self.store.wait_for_append(self.position, 1.0, until=self._stopping)

    def stop(self) -> None:
        self._stopping.set()

    async def rebuild(self) -> int:
        """Forget every row (those kept in the store too) and fold the whole log again; return how many runs the
        index holds."""
        if self.kept_by_store:
            runs = await self.store.rebuild_runs_index()
            self.position = await self.store.head_position()
            return int(runs or 0)
        assert isinstance(self.table, MemoryRunsTable)
        async with self._catching_up:
            await self.table.drop()
            self.position = 0
        await self.catch_up()
        return len(self.table.rows.runs)

    async def page(self, query: RunsQuery, at_us: int | None = None) -> RunsPage:
        """One page of runs, newest start first, with counts per status over the whole filter."""
        moment = now_us() if at_us is None else at_us
        rows, counts = await self.table.page(query, moment)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return RunsPage(
            rows, encode_cursor(rows[-1]) if more and rows else None, _ordered_counts(counts), self.position
        )

    async def runs(self, workflow_ids: Sequence[str], at_us: int | None = None) -> dict[str, RunRow]:
        """The rows of these runs (missing ids are left out)."""
        return await self.table.get(list(workflow_ids), now_us() if at_us is None else at_us)

    async def children(self, parent_id: str, at_us: int | None = None) -> list[RunRow]:
        """The runs `parent_id` started (hand-offs and children), oldest first."""
        return await self.table.children(parent_id, now_us() if at_us is None else at_us)

    async def workflows(self) -> list[str]:
        """Every workflow name with a run."""
        return await self.table.workflows()


__all__ = [
    "LISTED_STATUSES",
    "STALLED",
    "RunRow",
    "RunsIndex",
    "RunsPage",
    "RunsQuery",
]
