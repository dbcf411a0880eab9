"""The runs index's tables in a SQL store, as both SQL backends write them (`agentfold.runrows` says what goes in).

Three tables beside the events, written in each append's transaction: a row per run, a row per worker (when its
leases run out; 0 once it stopped) and the runs per stored status, so an unfiltered listing counts a handful of
rows. Statements use ``?`` placeholders; PostgreSQL's backend rewrites them to its own.
"""

from __future__ import annotations

from typing import Final

from agentfold.runrows import COLUMNS

TABLE: Final = "agentfold_runs_index"
WORKERS_TABLE: Final = "agentfold_runs_index_workers"
COUNTS_TABLE: Final = "agentfold_runs_index_counts"
PROJECTOR_NAME: Final = "agentfold-runs-index"
"""The checkpoint of the projector that kept the tables before appends did: a store upgraded from then folds the
log from it, and drops it."""
SQLITE_RECORDED_AT: Final = "coalesce(e.recorded_at_us, json_extract(e.record, '$._recorded_at_us'))"
"""A stored event's time on SQLite, over the events table as `e`: its column, or in the `record` of a row written
before schema 6."""


def create_statements(text: str, integer: str, schema: str = "") -> list[str]:
    """The tables and their indexes, with the SQL names of a text and an integer column, in `schema` (``"s."``)."""
    t, i, s = text, integer, schema
    return [
        f"CREATE TABLE IF NOT EXISTS {s}{TABLE} (workflow_id {t} PRIMARY KEY, workflow {t} NOT NULL, "
        f"agent {t} NOT NULL, status {t} NOT NULL, started_at_us {i} NOT NULL, last_event_at_us {i} NOT NULL, "
        f"last_event_type {t} NOT NULL, finished_at_us {i}, version {i} NOT NULL, retries {i} NOT NULL, "
        f"failed_steps {i} NOT NULL, owner {t}, parent_id {t})",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_started ON {s}{TABLE} (started_at_us DESC, workflow_id DESC)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_status ON {s}{TABLE} (status, started_at_us DESC, workflow_id DESC)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_workflow ON {s}{TABLE} (workflow, started_at_us DESC, workflow_id DESC)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_parent ON {s}{TABLE} (parent_id)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_owner ON {s}{TABLE} (owner, status)",
        f"CREATE TABLE IF NOT EXISTS {s}{WORKERS_TABLE} (worker {t} PRIMARY KEY, expires_at_us {i} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {s}{COUNTS_TABLE} (status {t} PRIMARY KEY, runs {i} NOT NULL)",
    ]


def upsert_row(schema: str = "") -> str:
    columns = ", ".join(COLUMNS)
    marks = ", ".join("?" for _ in COLUMNS)
    updates = ", ".join(f"{column} = excluded.{column}" for column in COLUMNS if column != "workflow_id")
    return f"INSERT INTO {schema}{TABLE} ({columns}) VALUES ({marks}) ON CONFLICT (workflow_id) DO UPDATE SET {updates}"


def add_count(schema: str = "") -> str:
    """Add to the runs of one status."""
    return (
        f"INSERT INTO {schema}{COUNTS_TABLE} AS c (status, runs) VALUES (?, ?) "
        "ON CONFLICT (status) DO UPDATE SET runs = c.runs + excluded.runs"
    )


def set_worker(schema: str = "") -> str:
    return (
        f"INSERT INTO {schema}{WORKERS_TABLE} (worker, expires_at_us) VALUES (?, ?) "
        "ON CONFLICT (worker) DO UPDATE SET expires_at_us = excluded.expires_at_us"
    )


def recount(schema: str = "") -> list[str]:
    """Count the runs per status again from the rows."""
    return [
        f"DELETE FROM {schema}{COUNTS_TABLE}",
        f"INSERT INTO {schema}{COUNTS_TABLE} (status, runs) SELECT status, count(*) FROM {schema}{TABLE} "
        "GROUP BY status",
    ]


def for_psycopg(statement: str) -> bytes:
    """A statement written with ``?`` placeholders, as psycopg takes it (``%s``, and a literal ``%`` doubled)."""
    return statement.replace("%", "%%").replace("?", "%s").encode()


def clear(schema: str = "") -> list[str]:
    return [f"DELETE FROM {schema}{table}" for table in (TABLE, WORKERS_TABLE, COUNTS_TABLE)]


__all__ = [
    "COUNTS_TABLE",
    "PROJECTOR_NAME",
    "SQLITE_RECORDED_AT",
    "TABLE",
    "WORKERS_TABLE",
    "add_count",
    "clear",
    "create_statements",
    "for_psycopg",
    "recount",
    "set_worker",
    "upsert_row",
]
