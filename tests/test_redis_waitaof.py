"""`durability=waitaof`: an append returns only after the server fsynced it to its append-only file.

These tests need a server with WAITAOF (Redis >= 7.2, or Valkey). Debian bookworm ships Redis 7.0, so they run on a
private Valkey server (see `.ci/waitaof-server`), with `appendfsync everysec`: the setting where WAITAOF makes the
difference between "may lose the last second" and "survives a crash".
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

import agentfold
from agentfold import NewEvent
from agentfold.backends.redis import RedisDurabilityWarning, RedisStore
from agentfold.errors import InvalidURL, StoreUnavailable
from tests.servers import PrivateRedis, private_waitaof_redis

__all__ = ["private_waitaof_redis"]

EVERYSEC = {"appendonly": "yes", "appendfsync": "everysec", "save": ""}

StartServer = Callable[[dict[str, str]], PrivateRedis]


async def connect_waitaof(server: PrivateRedis, prefix: str = "app") -> RedisStore:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RedisDurabilityWarning)  # waitaof must not warn about lost appends
        store = await agentfold.connect(f"{server.url}?prefix={prefix}&durability=waitaof&timeout=10")
    assert isinstance(store, RedisStore)
    return store


async def calls(server: PrivateRedis, command: str) -> int:
    """How often the server ran `command` (its own count, from INFO commandstats)."""
    client = aioredis.Redis.from_url(server.url)
    try:
        stats: dict[str, Any] = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_acknowledged_appends_survive_a_sigkill_of_an_everysec_server(
    private_waitaof_redis: StartServer,
) -> None:
    """Every append script call is followed by a WAITAOF on the same connection (the server's own counts agree),
    and after a SIGKILL right behind the last acknowledgement every acknowledged append comes back whole. (A SIGKILL
    of the server alone cannot tell fsynced from written, since the OS keeps written pages; the WAITAOF count is
    what shows that each acknowledgement waited for the fsync.)"""
    server = private_waitaof_redis(EVERYSEC)
    store = await connect_waitaof(server)
    assert store.persistence.survives_crash
    acknowledged: dict[str, int] = {}

    async def writer(task: int) -> None:
        stream_id = f"agent-{task}"
        for batch in range(25):
            result = await store.append(
                stream_id, [NewEvent("Thought", {"task": task, "batch": batch, "part": part}) for part in range(3)]
            )
            acknowledged[stream_id] = result.version

    await asyncio.gather(*(writer(task) for task in range(8)))
    script_calls = await calls(server, "evalsha")
    assert script_calls >= 1
    assert await calls(server, "waitaof") == script_calls
    await store.close()
    server.kill()

    server.start()
    store = await connect_waitaof(server)
    try:
        for stream_id, version in acknowledged.items():
            assert version == 75
            read = [event async for event in store.read_stream(stream_id)]
            assert [event.version for event in read] == list(range(1, 76))
            assert [(event.data["batch"], event.data["part"]) for event in read] == [
                (batch, part) for batch in range(25) for part in range(3)
            ]
        assert [event.position async for event in store.read_all()] == list(range(1, 8 * 75 + 1))
    finally:
        await store.close()


async def test_waitaof_is_refused_on_a_server_without_the_append_only_file(
    private_waitaof_redis: StartServer,
) -> None:
    server = private_waitaof_redis({"appendonly": "no", "save": ""})
    with pytest.raises(InvalidURL, match="appendonly"):
        await agentfold.connect(f"{server.url}?prefix=app&durability=waitaof")


async def test_an_unconfirmed_fsync_is_a_retryable_error_and_the_retry_writes_nothing_twice(
    private_waitaof_redis: StartServer,
) -> None:
    """The operator turns the append-only file off under a running store: the script has run, but the server can no
    longer confirm the fsync. The append fails with a retryable `StoreUnavailable`, not a driver error, and once the
    file is back, retrying the same events returns the first result and writes them once."""
    server = private_waitaof_redis(EVERYSEC)
    store = await connect_waitaof(server)
    admin = aioredis.Redis.from_url(server.url)
    try:
        assert (await store.append("order-1", [NewEvent("Placed", {"n": 0})])).version == 1
        await admin.config_set("appendonly", "no")
        unconfirmed = [NewEvent("Paid", {"n": 1}), NewEvent("Shipped", {"n": 2})]
        with pytest.raises(StoreUnavailable, match="fsync") as raised:
            await store.append("order-1", unconfirmed)
        assert raised.value.retryable

        await admin.config_set("appendonly", "yes")
        retried = await store.append("order-1", unconfirmed)
        assert (retried.version, retried.position) == (3, 3)
        assert [event.type async for event in store.read_stream("order-1")] == ["Placed", "Paid", "Shipped"]
    finally:
        await admin.aclose()
        await store.close()
