"""PostgreSQL faults under load: a server restart (clean and crash-like) and a dropped LISTEN connection.

Each test starts a private PostgreSQL (fsync on) of its own (`tests.servers`), runs 8 writers and 2 subscribers on
it, breaks the server underneath, and proves: writers saw only typed retryable errors and recovered through the
pool by retrying the same events; subscribers resumed without loss or duplicates; the log is exactly the set of
acknowledged appends.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

import agentfold
from agentfold.backends.postgres import PostgresStore
from tests.servers import FaultWorkload, PrivatePostgres, eventually, private_postgres

__all__ = ["private_postgres"]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_server_restart_under_eight_writers_and_two_subscribers(
    private_postgres: PrivatePostgres, mode: str
) -> None:
    """`pg_ctl restart -m fast` ends every session cleanly; `-m immediate` kills the server without a checkpoint, so
    it starts with crash recovery from the WAL: every commit acknowledged before must still be there."""
    async with agentfold.connect(f"{private_postgres.url}?schema=faults&pool_max=12&pool_timeout=5") as store:
        async with FaultWorkload(store) as workload:
            await workload.until_acknowledged(200)
            await asyncio.to_thread(private_postgres.restart, mode)
            await workload.until_acknowledged(200)
            log = await workload.finish()
        workload.check(log)
        assert workload.retryable_errors, "the restart went unnoticed: the test proved nothing"
        assert len(log) == 3 * len(workload.acknowledged)


async def test_a_terminated_listen_connection_under_load_loses_no_wake_up(private_postgres: PrivatePostgres) -> None:
    """`pg_terminate_backend` on the LISTEN session: the store reconnects and re-LISTENs, waiters re-read, and the
    subscribers, which wait on it between pages, still see every event."""
    async with agentfold.connect(f"{private_postgres.url}?schema=listen") as store:
        assert isinstance(store, PostgresStore)
        async with FaultWorkload(store) as workload:
            await workload.until_acknowledged(100)
            for _ in range(3):
                # private: the LISTEN connection's state has no public view
                # private: the listener's connection is the fault's target; no public API names its backend pid
                await eventually(lambda: store.backend._listener_backend_pid is not None)
                # private: the LISTEN connection's state has no public view
                connects = store.backend._listener_connects
                # private: the LISTEN connection's state has no public view
                victim = store.backend._listener_backend_pid
                async with await psycopg.AsyncConnection.connect(private_postgres.url, autocommit=True) as admin:
                    cursor = await admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
                    assert (await cursor.fetchone()) == (True,)
                await eventually(lambda: store.backend._listener_connects > connects)  # noqa: B023 - read at once
                await workload.until_acknowledged(100)
            log = await workload.finish()
        workload.check(log)
        # private: the LISTEN connection's state has no public view
        assert store.backend._listener_backend_pid != victim
