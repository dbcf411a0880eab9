"""The runs index: one row per workflow run, kept from the log, so a listing of 100k runs reads one page of rows.

A read model above the store. On SQLite and PostgreSQL it is a table in the store's own database kept by
`store.projector(...)`, so each page of events and the checkpoint commit together (exactly once). On memory and
Redis stores it lives in this process's memory and is rebuilt from the log when opened. Either way it can be
dropped and rebuilt from the log at any time (`rebuild()`); the log stays the truth.

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
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit, urlunsplit

from agentfold.errors import AgentfoldError, InvalidInput
from agentfold.events import AGENT_ID, RecordedEvent
from agentfold.runtime import history as h
from agentfold.runtime.inspect import SUSPENDED, iso_time, now_us, run_id_of
from agentfold.runtime.leases import WORKER_HEARTBEAT, WORKER_STOPPED, WORKER_STREAM_PREFIX
from agentfold.runtime.statemachine import (
    AWAITING_INPUT,
    CANCELLED,
    COMPLETED,
    DEFAULT_LIFECYCLE,
    FAILED,
    IDLE,
    PROCESSING,
    TERMINATED,
)
from agentfold.store import EventStore

PROJECTOR_NAME: Final = "agentfold-runs-index"
"""The checkpoint name the index's projector keeps."""
TABLE: Final = "agentfold_runs_index"
WORKERS_TABLE: Final = "agentfold_runs_index_workers"
COUNTS_TABLE: Final = "agentfold_runs_index_counts"
"""Runs per stored status, kept with the rows, so an unfiltered listing's counts read a handful of rows."""

STALLED: Final = "Stalled"
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


@dataclass
class RunRow:
    """One run as the index holds it."""

    workflow_id: str
    workflow: str
    agent: str
    status: str
    """The lifecycle state or `Suspended`; `Stalled` is decided at read time (see `stalled`)."""
    started_at_us: int
    last_event_at_us: int
    last_event_type: str
    finished_at_us: int | None = None
    version: int = 0
    retries: int = 0
    failed_steps: int = 0
    owner: str | None = None
    parent_id: str | None = None
    stalled: bool = False
    """Filled in when read: unfinished and no live worker holds it."""

    @property
    def shown_status(self) -> str:
        return STALLED if self.stalled else self.status

    def duration_us(self, at_us: int | None = None) -> int:
        end = self.finished_at_us if self.finished_at_us is not None else (now_us() if at_us is None else at_us)
        return max(0, end - self.started_at_us)

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "workflow": self.workflow,
            "agent": self.agent,
            "status": self.shown_status,
            "state": self.status,
            "stalled": self.stalled,
            "started_at": iso_time(self.started_at_us),
            "last_event_at": iso_time(self.last_event_at_us),
            "last_event": self.last_event_type,
            "finished_at": iso_time(self.finished_at_us),
            "duration_s": self.duration_us() / 1e6,
            "version": self.version,
            "retries": self.retries,
            "failed_steps": self.failed_steps,
            "owner": self.owner,
            "parent_id": self.parent_id,
        }


COLUMNS: Final = tuple(f.name for f in fields(RunRow) if f.name != "stalled")


def _status_after(row: RunRow, event: RecordedEvent) -> str:
    if event.type == h.WORKFLOW_SUSPENDED:
        return SUSPENDED
    if row.status == SUSPENDED and event.type in (*h.LEASE_TYPES, *h.CONTROL_TYPES):
        return SUSPENDED  # a claim or a cancel request leaves the run suspended, as `History` folds it
    lifecycle = PROCESSING if row.status == SUSPENDED else row.status
    try:
        return DEFAULT_LIFECYCLE.next_state(lifecycle, event.type, event.data, row.workflow_id, check_guard=False)
    except AgentfoldError:
        return row.status  # a history the runtime did not write: the run page names the event it refused


def fold_run_event(row: RunRow | None, workflow_id: str, event: RecordedEvent) -> RunRow | None:
    """The row after one event of the run's stream; None while the stream has not started as a run."""
    if row is None:
        if event.type != h.WORKFLOW_STARTED:
            return None
        agent = event.metadata.get(AGENT_ID)
        workflow = str(event.data.get("workflow", ""))
        row = RunRow(
            workflow_id=workflow_id,
            workflow=workflow,
            agent=agent if isinstance(agent, str) and agent else workflow,
            status=IDLE,
            started_at_us=event.recorded_at_us,
            last_event_at_us=event.recorded_at_us,
            last_event_type=event.type,
        )
    row.status = _status_after(row, event)
    row.version = event.version
    row.last_event_at_us = event.recorded_at_us
    row.last_event_type = event.type
    if event.type == h.STEP_FAILED:
        if event.data.get("final"):
            row.failed_steps += 1
        else:
            row.retries += 1
    elif event.type in h.FINISHED_TYPES:
        row.finished_at_us = event.recorded_at_us
    elif event.type == h.WORKFLOW_RESTARTED:
        row.finished_at_us = None
    if event.type in h.LEASE_TYPES:
        row.owner = event.data.get("worker") if event.type == h.WORKFLOW_CLAIMED else None
    else:
        owner = event.metadata.get(h.OWNER_KEY)
        if isinstance(owner, str):
            row.owner = owner
    return row


def handed_to(event: RecordedEvent) -> str | None:
    """The run a completed step may have started (a hand-off or child returns the new run's id), else None."""
    if event.type != h.STEP_COMPLETED:
        return None
    result = event.data.get("result")
    if isinstance(result, str) and 0 < len(result) <= h.MAX_WORKFLOW_ID_LENGTH:
        return result
    return None


def worker_expiry(event: RecordedEvent) -> tuple[str, int] | None:
    """(worker, when its leases run out) from a heartbeat, (worker, 0) from a stop; None for other events."""
    worker = event.data.get("worker")
    if not isinstance(worker, str):
        return None
    if event.type == WORKER_HEARTBEAT:
        return worker, event.recorded_at_us + int(event.data.get("ttl_us", 0))
    if event.type == WORKER_STOPPED:
        return worker, 0
    return None


@dataclass
class PageChanges:
    """What one page of events does to the index, computed without I/O from the rows it touches."""

    rows: dict[str, RunRow]
    workers: dict[str, int]


def plan_page(events: Sequence[RecordedEvent], loaded: dict[str, RunRow]) -> PageChanges:
    """Fold a page of events into the `loaded` rows (every run the page names, as stored); return the changes."""
    touched: dict[str, RunRow] = {}
    workers: dict[str, int] = {}
    for event in events:
        if event.stream_id.startswith(WORKER_STREAM_PREFIX):
            expiry = worker_expiry(event)
            if expiry is not None:
                worker, expires = expiry
                workers[worker] = expires if expires == 0 else max(expires, workers.get(worker, 0))
            continue
        workflow_id = run_id_of(event.stream_id)
        if workflow_id is None:
            continue
        before = touched.get(workflow_id) or loaded.get(workflow_id)
        if before is not None and event.version <= before.version:
            continue  # already folded: a page applied twice (two servers on one store) changes nothing
        row = fold_run_event(before, workflow_id, event)
        if row is None:
            continue
        touched[workflow_id] = row
        child_id = handed_to(event)
        if child_id is not None and child_id != workflow_id:
            child = touched.get(child_id) or loaded.get(child_id)
            if child is not None and child.parent_id is None:
                child.parent_id = workflow_id
                touched[child_id] = child
    return PageChanges(touched, workers)


def status_changes(before: dict[str, str], changes: PageChanges) -> dict[str, int]:
    """How a page changes the runs per stored status, from each touched run's status before it (none: new)."""
    delta: Counter[str] = Counter()
    for workflow_id, row in changes.rows.items():
        old = before.get(workflow_id)
        if old == row.status:
            continue
        if old is not None:
            delta[old] -= 1
        delta[row.status] += 1
    return {status: number for status, number in delta.items() if number}


def named_runs(events: Iterable[RecordedEvent]) -> set[str]:
    """Every run id a page of events may change: the runs whose streams it touches and the runs handed to."""
    ids: set[str] = set()
    for event in events:
        workflow_id = run_id_of(event.stream_id)
        if workflow_id is None:
            continue
        ids.add(workflow_id)
        child_id = handed_to(event)
        if child_id is not None:
            ids.add(child_id)
    return ids


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
    """Where the index rows live; one implementation per kind of backend."""

    durable: bool = False
    """True when the rows are kept with the store and the projector's checkpoint (SQL backends)."""

    async def open(self) -> None:
        """Create what is missing."""

    def update(self, handle: Any, events: list[RecordedEvent]) -> Any:
        """Apply one page of events (the projector's update)."""
        raise InvalidInput("this runs table has no update")  # each table overrides it

    async def clear(self) -> None:
        """Drop every row, for a rebuild."""

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
    """Rows in this process, for memory and Redis stores: rebuilt from the log on every start."""

    def __init__(self) -> None:
        self.rows: dict[str, RunRow] = {}
        self.workers: dict[str, int] = {}
        self._order: list[tuple[int, str]] = []
        self._sorted = True

    def update(self, handle: Any, events: list[RecordedEvent]) -> None:
        changes = plan_page(events, self.rows)
        for workflow_id, row in changes.rows.items():
            if workflow_id not in self.rows:
                self._order.append((row.started_at_us, workflow_id))
                self._sorted = False
            self.rows[workflow_id] = row
        self.workers.update(changes.workers)

    async def clear(self) -> None:
        self.rows.clear()
        self.workers.clear()
        self._order.clear()

    def _stalled(self, row: RunRow, at_us: int) -> bool:
        if row.status not in UNFINISHED:
            return False
        return row.owner is None or self.workers.get(row.owner, 0) <= at_us

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
            row = self._shown(self.rows[workflow_id], at_us)
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
        return {i: self._shown(self.rows[i], at_us) for i in workflow_ids if i in self.rows}

    async def children(self, parent_id: str, at_us: int) -> list[RunRow]:
        found = [self._shown(row, at_us) for row in self.rows.values() if row.parent_id == parent_id]
        return sorted(found, key=lambda row: (row.started_at_us, row.workflow_id))

    async def workflows(self) -> list[str]:
        return sorted({row.workflow for row in self.rows.values()})


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

    durable = True
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

    def _select(self) -> str:
        columns = ", ".join(f"r.{column}" for column in COLUMNS)
        return f"SELECT {columns}, {self._stalled_sql()} AS stalled FROM {self.table} r"

    def page_sql(self, query: RunsQuery, at_us: int) -> tuple[str, list[Any]]:
        where, params = self._where(query, at_us, paging=True)
        page = f"{self._select()}{where} ORDER BY r.started_at_us DESC, r.workflow_id DESC LIMIT {query.limit + 1}"
        return page, [at_us, *params]

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

    def upsert_sql(self) -> str:
        columns = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        updates = ", ".join(f"{column} = excluded.{column}" for column in COLUMNS if column != "workflow_id")
        return (
            f"INSERT INTO {self.table} ({columns}) VALUES ({marks}) ON CONFLICT (workflow_id) DO UPDATE SET {updates}"
        )

    def create_sql(self, text_type: str, int_type: str) -> list[str]:
        t, i = text_type, int_type
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} (workflow_id {t} PRIMARY KEY, workflow {t} NOT NULL, "
            f"agent {t} NOT NULL, status {t} NOT NULL, started_at_us {i} NOT NULL, last_event_at_us {i} NOT NULL, "
            f"last_event_type {t} NOT NULL, finished_at_us {i}, version {i} NOT NULL, retries {i} NOT NULL, "
            f"failed_steps {i} NOT NULL, owner {t}, parent_id {t})",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_started ON {self.table} (started_at_us DESC, workflow_id DESC)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_status ON {self.table} (status, started_at_us DESC, workflow_id DESC)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_workflow ON {self.table} "
            "(workflow, started_at_us DESC, workflow_id DESC)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_parent ON {self.table} (parent_id)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_owner ON {self.table} (owner, status)",
            f"CREATE TABLE IF NOT EXISTS {self.workers_table} (worker {t} PRIMARY KEY, expires_at_us {i} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.counts_table} (status {t} PRIMARY KEY, runs {i} NOT NULL)",
        ]

    def uncounted_sql(self) -> str:
        """True when the index has rows but no counts: it was kept before the counts were."""
        return f"SELECT NOT EXISTS (SELECT 1 FROM {self.counts_table}) AND EXISTS (SELECT 1 FROM {self.table})"

    def count_rows_sql(self) -> str:
        """Count the rows of an index kept before the counts were, once."""
        return (
            f"INSERT INTO {self.counts_table} (status, runs) SELECT status, count(*) FROM {self.table} GROUP BY status"
        )

    def count_sql(self) -> str:
        """Add to the runs of one status."""
        return (
            f"INSERT INTO {self.counts_table} AS c (status, runs) VALUES (?, ?) "
            "ON CONFLICT (status) DO UPDATE SET runs = c.runs + excluded.runs"
        )

    @staticmethod
    def row_values(row: RunRow) -> tuple[Any, ...]:
        values = asdict(row)
        return tuple(values[column] for column in COLUMNS)


class SQLiteRunsTable(SqlRunsTable):
    """The index as a table in the store's SQLite file, written in the store's writer transaction."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._reader: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _create(self, connection: sqlite3.Connection) -> None:
        for statement in self.create_sql("TEXT", "INTEGER"):
            connection.execute(statement)
        # Only when it has something to write: a reader opening the index takes no write lock.
        if connection.execute(self.uncounted_sql()).fetchone()[0]:
            connection.execute(self.count_rows_sql())

    def update(self, handle: Any, events: list[RecordedEvent]) -> None:
        connection: sqlite3.Connection = handle
        self._create(connection)
        ids = sorted(named_runs(events))
        loaded: dict[str, RunRow] = {}
        columns = ", ".join(COLUMNS)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for record in connection.execute(
                f"SELECT {columns}, 0 FROM {self.table} WHERE workflow_id IN ({marks})", chunk
            ):
                row = self.row_of(record)
                loaded[row.workflow_id] = row
        before = {workflow_id: row.status for workflow_id, row in loaded.items()}
        changes = plan_page(events, loaded)
        connection.executemany(self.upsert_sql(), [self.row_values(row) for row in changes.rows.values()])
        connection.executemany(self.count_sql(), list(status_changes(before, changes).items()))
        connection.executemany(
            f"INSERT INTO {self.workers_table} (worker, expires_at_us) VALUES (?, ?) ON CONFLICT (worker) DO UPDATE "
            "SET expires_at_us = CASE WHEN excluded.expires_at_us = 0 THEN 0 "
            "ELSE max(expires_at_us, excluded.expires_at_us) END",
            list(changes.workers.items()),
        )

    def _connect(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            self._create(self._reader)
            self._reader.commit()
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

    async def clear(self) -> None:
        def run() -> None:
            connection = self._connect()
            connection.execute(f"DELETE FROM {self.table}")
            connection.execute(f"DELETE FROM {self.workers_table}")
            connection.execute(f"DELETE FROM {self.counts_table}")
            connection.commit()

        async with self._lock:
            await asyncio.to_thread(run)

    async def get(self, workflow_ids: Sequence[str], at_us: int) -> dict[str, RunRow]:
        if not workflow_ids:
            return {}
        marks = ", ".join("?" for _ in workflow_ids)
        records = await self._query(f"{self._select()} WHERE r.workflow_id IN ({marks})", [at_us, *workflow_ids])
        return {row.workflow_id: row for row in map(self.row_of, records)}

    async def children(self, parent_id: str, at_us: int) -> list[RunRow]:
        statement = f"{self._select()} WHERE r.parent_id = ? ORDER BY r.started_at_us, r.workflow_id LIMIT 1000"
        return [self.row_of(record) for record in await self._query(statement, [at_us, parent_id])]

    async def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.to_thread(reader.close)


class PostgresRunsTable(SqlRunsTable):
    """The index as a table in the store's PostgreSQL schema, written in the projector's transaction."""

    def __init__(self, url: str, schema: str) -> None:
        from psycopg import sql

        self.url = url
        self.schema = schema
        quoted = sql.Identifier(schema).as_string(None)
        self.table = f"{quoted}.{TABLE}"
        self.workers_table = f"{quoted}.{WORKERS_TABLE}"
        self.counts_table = f"{quoted}.{COUNTS_TABLE}"
        self._pool: Any = None

    @staticmethod
    def _pg(statement: str) -> bytes:
        return statement.replace("%", "%%").replace("?", "%s").encode()

    async def _create(self, connection: Any) -> None:
        for statement in self.create_sql("text", "bigint"):
            await connection.execute(self._pg(statement))
        cursor = await connection.execute(self._pg(self.uncounted_sql()))
        row = await cursor.fetchone()
        if row is not None and row[0]:
            await connection.execute(self._pg(self.count_rows_sql()))

    async def update(self, handle: Any, events: list[RecordedEvent]) -> None:
        # Two processes applying the same page take turns, so the second folds (and counts) what the first wrote.
        await handle.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.schema}.{TABLE}.update",))
        ids = sorted(named_runs(events))
        loaded: dict[str, RunRow] = {}
        if ids:
            columns = ", ".join(COLUMNS)
            cursor = await handle.execute(
                self._pg(f"SELECT {columns}, false FROM {self.table} WHERE workflow_id = ANY(?)"), (ids,)
            )
            for record in await cursor.fetchall():
                row = self.row_of(record)
                loaded[row.workflow_id] = row
        before = {workflow_id: row.status for workflow_id, row in loaded.items()}
        changes = plan_page(events, loaded)
        counted = status_changes(before, changes)
        async with handle.cursor() as cursor:
            if changes.rows:
                await cursor.executemany(
                    self._pg(self.upsert_sql()), [self.row_values(row) for row in changes.rows.values()]
                )
            if counted:
                await cursor.executemany(self._pg(self.count_sql()), list(counted.items()))
            if changes.workers:
                await cursor.executemany(
                    self._pg(
                        f"INSERT INTO {self.workers_table} AS w (worker, expires_at_us) VALUES (?, ?) "
                        "ON CONFLICT (worker) DO UPDATE SET expires_at_us = CASE WHEN excluded.expires_at_us = 0 "
                        "THEN 0 ELSE greatest(w.expires_at_us, excluded.expires_at_us) END"
                    ),
                    list(changes.workers.items()),
                )

    async def open(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        parts = urlsplit(self.url)
        conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, "", ""))
        self._pool = AsyncConnectionPool(conninfo, min_size=1, max_size=4, open=False, kwargs={"autocommit": True})
        await self._pool.open(wait=True, timeout=10)
        async with self._pool.connection() as connection:
            await connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"{self.schema}.{TABLE}",))
            try:
                await connection.execute(self._pg(f"CREATE SCHEMA IF NOT EXISTS {self.table.split('.')[0]}"))
                await self._create(connection)
            finally:
                await connection.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"{self.schema}.{TABLE}",))

    async def _query(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(self._pg(statement), params)
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
            return rows

    async def clear(self) -> None:
        async with self._pool.connection() as connection, connection.transaction():
            await connection.execute(self._pg(f"DELETE FROM {self.table}"))
            await connection.execute(self._pg(f"DELETE FROM {self.workers_table}"))
            await connection.execute(self._pg(f"DELETE FROM {self.counts_table}"))

    async def get(self, workflow_ids: Sequence[str], at_us: int) -> dict[str, RunRow]:
        if not workflow_ids:
            return {}
        records = await self._query(f"{self._select()} WHERE r.workflow_id = ANY(?)", [at_us, list(workflow_ids)])
        return {row.workflow_id: row for row in map(self.row_of, records)}

    async def children(self, parent_id: str, at_us: int) -> list[RunRow]:
        statement = f"{self._select()} WHERE r.parent_id = ? ORDER BY r.started_at_us, r.workflow_id LIMIT 1000"
        return [self.row_of(record) for record in await self._query(statement, [at_us, parent_id])]

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
    return MemoryRunsTable()


# -- the index -----------------------------------------------------------------------------------------------------


class RunsIndex:
    """The runs index of one store: `catch_up()` or `run()` keeps it current, `page()` reads it.

    Open with ``async with RunsIndex(store, url) as index:``; `url` is the store's URL (the SQL tables open their
    own read connections to the same database).
    """

    def __init__(self, store: EventStore, url: str, page_size: int = 500) -> None:
        self.store = store
        self.table = table_for(url)
        self.page_size = page_size
        self.position = 0
        self._stopping = asyncio.Event()
        self._catching_up = asyncio.Lock()

    async def __aenter__(self) -> RunsIndex:
        await self.table.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        await self.table.close()

    async def catch_up(self) -> int:
        """Apply every event appended so far; return how many were applied. Callers may overlap (a page view and
        the follower): one catches up at a time."""
        async with self._catching_up:
            return await self._catch_up()

    async def _catch_up(self) -> int:
        if self.table.durable:
            projector = self.store.projector(PROJECTOR_NAME, self.table.update, page_size=self.page_size)
            applied = await projector.catch_up()
            self.position = projector.position
        else:
            applied = 0
            async for page in self.store.read_all_pages(after_position=self.position):
                self.table.update(None, page)
                self.position = page[-1].position
                applied += len(page)
        return applied

    async def run(self, pause: float = 0.0) -> None:
        """Catch up, then follow new events until `stop()`, waiting at least `pause` seconds after each catch-up.

        Whoever reads the index catches it up first (`catch_up`), so following only keeps that catch-up short; a
        pause lets it fold many commits' events in one page and one checkpoint instead of one per commit, which
        under a stream of small appends costs the store a read and a write per commit (docs/measurements.md)."""
        while not self._stopping.is_set():
            await self.catch_up()
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
            await self.store.wait_for_append(self.position, 1.0, until=self._stopping)

    def stop(self) -> None:
        self._stopping.set()

    async def rebuild(self) -> int:
        """Forget every row and the checkpoint, and fold the whole log again."""
        await self.table.clear()
        if self.table.durable:
            await self.store.save_checkpoint(PROJECTOR_NAME, 0)
        self.position = 0
        return await self.catch_up()

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
    "fold_run_event",
    "plan_page",
]
