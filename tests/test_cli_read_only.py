"""Inspection commands only read: they open stores with `connect(url, create=False)`, which creates and upgrades
nothing. A mistyped SQLite path, PostgreSQL `?schema=` or Redis `?prefix=` is a clear error (exit code 2) that
leaves no file, schema or key behind. The Redis durability warning is printed once per command, as one line.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

import agentfold
from agentfold import NewEvent
from agentfold.errors import StoreNotFound
from tests.backends import PG_URL, REDIS_URL, Backend
from tests.test_cli import cli

COMMANDS = (
    ["workflows"],
    ["show", "order-1"],
    ["replay", "order-1"],
    ["diff", "order-1", "0", "1"],
    ["tail", "--after", "0", "--count", "1"],
    ["export", "order-1"],
    ["stats"],
    ["reindex"],
)


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&")[0]


def prefix_of(url: str) -> str:
    return url.rsplit("prefix=", 1)[1].split("&")[0]


def what_exists(backend: Backend, url: str, tmp_path: Path) -> Any:
    """What a store at `url` would have left behind: files, the schema, keys under the prefix."""
    if backend.name == "sqlite":
        return sorted(path.name for path in tmp_path.iterdir())
    if backend.name == "postgres":
        with psycopg.connect(PG_URL.split("?")[0]) as connection:
            found = connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_of(url),))
            return found.fetchone() is not None
    client = redis.Redis.from_url(REDIS_URL.split("?")[0])
    try:
        return sorted(client.scan_iter(match=f"{prefix_of(url)}:*"))
    finally:
        client.close()


def test_a_missing_store_is_an_error_and_nothing_is_created(
    durable_backend: Backend, durable_url: str, tmp_path: Path
) -> None:
    before = what_exists(durable_backend, durable_url, tmp_path)
    for command in COMMANDS:
        result = cli(*command, "--store", durable_url)
        assert result.returncode == 2, (command, result.stderr)
        assert "no agentfold store" in result.stderr and "Traceback" not in result.stderr
        assert "a store is created by the first program that opens it to write" in result.stderr
        assert "--store URL" in result.stderr and "AGENTFOLD_STORE" in result.stderr
    if durable_backend.name == "postgres":
        assert f"in schema {schema_of(durable_url)!r}" in result.stderr
    if durable_backend.name == "redis":
        assert f"under prefix {prefix_of(durable_url)!r}" in result.stderr
    with pytest.raises(StoreNotFound):
        asyncio.run(_open_and_close(durable_url, create=False))
    assert what_exists(durable_backend, durable_url, tmp_path) == before


def test_an_existing_store_opens_without_create(durable_url: str) -> None:
    async def scenario() -> None:
        async with agentfold.connect(durable_url) as store:
            await store.append("order-1", [NewEvent("OrderPlaced", {"n": 1})])
        async with agentfold.connect(durable_url, create=False) as store:
            assert [event.type async for event in store.read_stream("order-1")] == ["OrderPlaced"]

    asyncio.run(scenario())
    result = cli("stats", "--json", "--store", durable_url)
    assert result.returncode == 0, result.stderr


def test_a_sqlite_file_that_is_not_a_store_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    result = cli("workflows", "--store", f"sqlite:///{path}")
    assert result.returncode == 2
    assert "no agentfold store" in result.stderr and "holds no agentfold tables" in result.stderr
    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["notes.db"]  # no -wal or -shm either


def test_a_postgres_store_needing_an_upgrade_is_not_upgraded(durable_backend: Backend, durable_url: str) -> None:
    if durable_backend.name != "postgres":
        return
    asyncio.run(_open_and_close(durable_url))
    schema = schema_of(durable_url)
    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as connection:
        connection.execute(f'DELETE FROM "{schema}".schema_migrations WHERE version > 1')
    result = cli("workflows", "--store", durable_url)
    assert result.returncode == 2
    assert "is at migration 1" in result.stderr and "not upgraded" in result.stderr
    with psycopg.connect(PG_URL.split("?")[0]) as connection:
        count = connection.execute(f'SELECT count(*) FROM "{schema}".schema_migrations').fetchone()
    assert count == (1,)


async def _open_and_close(url: str, create: bool = True) -> None:
    async with agentfold.connect(url, create=create):
        pass


def test_the_redis_durability_warning_is_one_clean_line(private_redis: Any) -> None:
    server = private_redis({"appendonly": "no", "save": ""})
    url = f"{server.url}?prefix=warned"

    async def one_event() -> None:
        with pytest.warns(UserWarning):
            async with agentfold.connect(url) as store:
                await store.append("order-1", [NewEvent("OrderPlaced", {"n": 1})])

    asyncio.run(one_event())
    for command in (["stats"], ["workflows"], ["tail", "--after", "0", "--count", "1"]):
        result = cli(*command, "--store", url)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == [
            f"warning: Redis at {server.url}: no persistence at all (no AOF, no RDB): a restart loses every event. "
            "Use AOF with appendfsync always, or durability=waitaof on Redis >= 7.2, for appends that survive a "
            "crash."
        ]
