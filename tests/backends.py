"""The backends the conformance suite runs on, and how each test gets an isolated store of its own.

A backend whose module does not exist yet is left out. A backend whose server cannot be reached skips its tests,
except under CI=true, where a missing service is a failure. Backends written outside agentfold join through
``AGENTFOLD_TEST_BACKENDS`` (docs/backends.md).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_URL = os.environ.get("AGENTFOLD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AGENTFOLD_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


@dataclass(frozen=True)
class Backend:
    name: str
    module: str
    make_url: Callable[[Path], str]
    """A fresh, isolated store URL for one test (own file, schema or key prefix)."""
    cleanup: Callable[[str], None]
    """Remove what `make_url`'s store left behind."""
    durable: bool
    """Data survives closing and reopening the store (and other processes see it)."""

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def filled(self, tmp_path: Path, fill: Callable[[str], Awaitable[None]]) -> Iterator[str]:
        """A fixture's body: a fresh store of this backend (its service required), filled by `fill(url)`, its URL
        yielded, then removed."""
        require_service(self)
        url = self.make_url(tmp_path)
        asyncio.run(fill(url))
        yield url
        self.cleanup(url)


def _no_cleanup(url: str) -> None:
    return None


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / f'store-{uuid.uuid4().hex[:8]}.db'}"


def _pg_url(tmp_path: Path) -> str:
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema=t_{uuid.uuid4().hex[:12]}"


_SCHEMA_USERS = """
SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND l.pid <> pg_backend_pid()
"""


def _pg_cleanup(url: str) -> None:
    """Drop the test's schema. A session a test left behind (a server thread's last poll, say) may still be reading
    it, and a reader that locks one table while the drop holds another deadlocks with it: sessions holding locks in
    the schema are ended first, and the drop is tried again if one came in between."""
    import psycopg

    schema = url.rsplit("schema=", 1)[1].split("&")[0]
    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as connection:
        for attempt in range(5):
            for (pid,) in connection.execute(_SCHEMA_USERS, (schema,)).fetchall():
                connection.execute("SELECT pg_terminate_backend(%s)", (pid,))
            try:
                connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise
                time.sleep(0.2)


def execute_sql(url: str, *statements: str) -> None:
    """Run `statements` on the database under a SQLite or PostgreSQL store's URL, outside agentfold (a test editing
    or damaging what the store keeps), and commit them; ``{s}`` in a statement names the store's schema on
    PostgreSQL (``"schema".``) and nothing on SQLite."""
    if url.startswith("sqlite"):
        import sqlite3

        connection = sqlite3.connect(url.removeprefix("sqlite:///").split("?")[0])
        try:
            for statement in statements:
                connection.execute(statement.replace("{s}", ""))
            connection.commit()
        finally:
            connection.close()
        return
    import psycopg

    schema = url.rsplit("schema=", 1)[1].split("&")[0]
    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement.replace("{s}", f'"{schema}".').encode())


PG_PARTITIONS = 4
"""Hash partitions of the conformance suite's partitioned PostgreSQL stores: few, so each test's schema is quick to
create, and more than one, so every read crosses partitions."""


SQLITE_EVENTS_BEFORE_SCHEMA_6: tuple[str, ...] = (
    "UPDATE events SET record = json_object('stream_id', stream_id, 'version', version, 'position', position, "
    "'type', type, 'data', json(data), 'metadata', json(metadata), '_id', event_id, "
    "'_recorded_at_us', recorded_at_us) WHERE data IS NOT NULL",
    "ALTER TABLE events DROP COLUMN data",
    "ALTER TABLE events DROP COLUMN metadata",
    "ALTER TABLE events DROP COLUMN recorded_at_us",
)
"""Statements that leave a SQLite store's events as releases before schema 6 stored them (the whole event as JSON
in `record`, no columns of their own for its data, metadata and time), for tests of files those releases wrote."""


def _pg_partitioned_url(tmp_path: Path) -> str:
    return f"{_pg_url(tmp_path)}&partitions={PG_PARTITIONS}"


def _redis_url(tmp_path: Path) -> str:
    return f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix=t{uuid.uuid4().hex[:12]}"


def _redis_cleanup(url: str) -> None:
    import redis

    prefix = url.rsplit("prefix=", 1)[1].split("&")[0]
    client = redis.Redis.from_url(REDIS_URL.split("?")[0])
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


BACKENDS: list[Backend] = [
    Backend("memory", "agentfold.backends.memory", lambda tmp_path: "memory://", _no_cleanup, durable=False),
    Backend("sqlite", "agentfold.backends.sqlite", _sqlite_url, _no_cleanup, durable=True),
    Backend("postgres", "agentfold.backends.postgres", _pg_url, _pg_cleanup, durable=True),
    Backend("redis", "agentfold.backends.redis", _redis_url, _redis_cleanup, durable=True),
]


def _third_party(module_name: str) -> Backend:
    """A backend written outside agentfold, named in ``AGENTFOLD_TEST_BACKENDS`` (module names, comma-separated).

    Importing the module registers its scheme with `agentfold.connect`; the module gives a fresh, isolated store URL
    per test (``conformance_url(tmp_path)``), may clean up after one (``conformance_cleanup(url)``), and says
    whether its data survives closing the store (``CONFORMANCE_DURABLE``, default False)."""
    module = importlib.import_module(module_name)
    return Backend(
        module_name.rsplit(".", 1)[-1],
        module_name,
        module.conformance_url,
        getattr(module, "conformance_cleanup", _no_cleanup),
        durable=bool(getattr(module, "CONFORMANCE_DURABLE", False)),
    )


BACKENDS += [_third_party(name.strip()) for name in os.environ.get("AGENTFOLD_TEST_BACKENDS", "").split(",") if name]

AVAILABLE = [backend for backend in BACKENDS if backend.available()]
DURABLE = [backend for backend in AVAILABLE if backend.durable]
PG_PARTITIONED = Backend(
    "postgres-partitioned", "agentfold.backends.postgres", _pg_partitioned_url, _pg_cleanup, durable=True
)
"""A PostgreSQL store created with ``partitions=``: a layout of the same backend, so only the conformance suite runs
on it (the other tests exercise what the layout does not change)."""
CONFORMANCE = AVAILABLE + [backend for backend in (PG_PARTITIONED,) if backend.available()]
CONFORMANCE_DURABLE = [backend for backend in CONFORMANCE if backend.durable]
SQL = [backend for backend in AVAILABLE if backend.name in ("sqlite", "postgres")]


def require_service(backend: Backend) -> None:
    """Skip (or, under CI=true, fail) when the backend's server is not reachable."""
    if backend.module == "agentfold.backends.postgres":
        _require(_pg_reachable, f"PostgreSQL at {PG_URL}")
    elif backend.name == "redis":
        _require(_redis_reachable, f"Redis at {REDIS_URL}")


def _require(check: Callable[[], bool], what: str) -> None:
    if check():
        return
    if IN_CI:
        pytest.fail(f"{what} is not reachable, and under CI=true backend tests never skip")
    pytest.skip(f"{what} is not reachable")


def require_tool(check: Callable[[], bool], what: str) -> None:
    """Skip (or, under CI=true, fail) when the machine lacks what a test needs (a tool, a privilege)."""
    if check():
        return
    if IN_CI:
        pytest.fail(f"this test needs {what}; under CI=true a test never skips")
    pytest.skip(f"this test needs {what}")


def _pg_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL.split("?")[0], connect_timeout=3):
            return True
    except Exception:
        return False


def _redis_reachable() -> bool:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL.split("?")[0], socket_connect_timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def run(coroutine: object) -> object:
    """Run a coroutine to completion from synchronous test code."""
    return asyncio.run(coroutine)  # type: ignore[arg-type]
