"""Redis faults under load: a restart of a server with AOF `appendfsync always`, clean (SIGTERM) and killed.

Each test starts a private redis-server (`tests.servers`), runs 8 writers and 2 subscribers on it, restarts it,
and proves: writers saw only typed retryable errors and recovered by retrying the same events; subscribers resumed
without loss or duplicates; the log after the restart is exactly the set of acknowledged appends.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable

import pytest

import agentfold
from agentfold.backends.redis import RedisDurabilityWarning, RedisStore
from tests.servers import AOF_ALWAYS, FaultWorkload, PrivateRedis, private_redis

__all__ = ["private_redis"]


pytestmark = pytest.mark.usefixtures("redis_service")


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
async def test_a_server_restart_under_eight_writers_and_two_subscribers(
    private_redis: Callable[[dict[str, str]], PrivateRedis], hard: bool
) -> None:
    """With `appendfsync always` a reply is sent only after the AOF write reached the disk, so even SIGKILL loses
    nothing acknowledged; an append in flight at the kill is either in the AOF whole (a script is one AOF entry)
    or not at all, and its retry settles which."""
    server = private_redis(AOF_ALWAYS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RedisDurabilityWarning)
        store = await agentfold.connect(f"{server.url}?prefix=faults&timeout=5")
    assert isinstance(store, RedisStore)
    assert store.persistence.survives_crash
    try:
        async with FaultWorkload(store) as workload:
            await workload.until_acknowledged(200)
            await asyncio.to_thread(server.restart, hard=hard)
            await workload.until_acknowledged(200)
            log = await workload.finish()
        workload.check(log)
        assert workload.retryable_errors, "the restart went unnoticed: the test proved nothing"
    finally:
        await store.close()
    # A fresh client after the restart reads the same log from the AOF.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RedisDurabilityWarning)
        async with agentfold.connect(f"{server.url}?prefix=faults") as reopened:
            assert [event.id async for event in reopened.read_all()] == [event.id for event in log]
