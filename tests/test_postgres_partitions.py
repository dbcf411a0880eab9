"""PostgreSQL's partitioned layout (`partitions=N`, chosen when a store is created): what the conformance suite does
not see (it runs on the layout as `postgres-partitioned`)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

import agentfold

# private: _migrate builds a store at an older migration, as an older agentfold left it
from agentfold.backends.postgres import _migrate
from agentfold.errors import InvalidURL
from agentfold.events import AppendResult, NewEvent
from tests.backends import PG_URL

ADMIN_URL = PG_URL.split("?")[0]


async def test_a_new_store_gets_hash_partitions_and_an_event_id_table(plain_url: str) -> None:
    async with agentfold.connect(f"{plain_url}&partitions=3") as store:
        await store.append("order-1", [NewEvent("Placed", {"n": 1})])
        await store.append("order-2", [NewEvent("Placed", {"n": 2})])
        schema = store.backend.schema
        assert store.backend.partitions == 3
    with psycopg.connect(ADMIN_URL) as connection:
        counts = connection.execute(
            "SELECT c.relname, count(i.inhrelid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_inherits i ON i.inhparent = c.oid WHERE n.nspname = %s AND c.relkind = 'p' GROUP BY 1",
            (schema,),
        ).fetchall()
        assert dict(counts) == {"events": 3, "event_ids": 3}
        ids = connection.execute(f'SELECT count(*) FROM "{schema}".event_ids').fetchone()
        assert ids == (2,)


async def test_partitions_are_chosen_at_creation_and_a_mismatch_is_refused(plain_url: str) -> None:
    async with agentfold.connect(plain_url) as store:
        await store.append("s", [NewEvent("A", {})])
        assert store.backend.partitions == 0
    with pytest.raises(InvalidURL, match="partitions are chosen when a store is created"):
        await agentfold.connect(f"{plain_url}&partitions=4")
    async with agentfold.connect(f"{plain_url}&partitions=0") as store:  # 0 names the layout it has
        assert await store.stream_version("s") == 1


async def test_trimming_a_partitioned_store_forgets_the_ids_of_its_trimmed_events_in_event_ids(plain_url: str) -> None:
    async with agentfold.connect(f"{plain_url}&partitions=2") as store:
        await store.append("s", [NewEvent("A", {"n": index}) for index in range(5)])
        assert await store.trim_stream("s", 4) == 3
        schema = store.backend.schema
    with psycopg.connect(ADMIN_URL) as connection:
        left = connection.execute(f'SELECT count(*) FROM "{schema}".event_ids').fetchone()
        kept = connection.execute(f'SELECT count(*) FROM "{schema}".trimmed_event_ids').fetchone()
    assert (left, kept) == ((2,), (3,))


def append_group_call(schema: str, stream_id: str, event_id: uuid.UUID) -> tuple[str, tuple[Any, ...]]:
    """One append of one event (expected version: any) through the store's append_group(), as agentfold calls it."""
    return (
        f'SELECT * FROM "{schema}".append_group(ARRAY[%s], ARRAY[-1]::bigint[], ARRAY[1], ARRAY[%s::uuid], '
        "ARRAY['Placed'], ARRAY['{}'], ARRAY['{}'], 'agentfold.partition-test')",
        (stream_id, str(event_id)),
    )


async def test_an_append_locks_the_head_row_and_writes_only_its_own_partitions(plain_url: str) -> None:
    async with agentfold.connect(f"{plain_url}&partitions=4") as store:
        for index in range(8):
            await store.append(f"order-{index}", [NewEvent("Placed", {"n": index})])
        schema = store.backend.schema
    with psycopg.connect(ADMIN_URL) as writer, psycopg.connect(ADMIN_URL, autocommit=True) as other:
        row = writer.execute(*append_group_call(schema, "order-3", uuid.uuid4())).fetchone()
        assert row == (0, 2, 9)
        (written,) = writer.execute(
            f'SELECT tableoid::regclass::text FROM "{schema}".events WHERE stream_id = %s AND version = 2',
            ("order-3",),
        ).fetchone() or (None,)
        locks = writer.execute(
            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = pg_backend_pid() AND c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p')",
            (schema,),
        ).fetchall()
        modes = {(name, mode) for name, mode in locks}
        # No table-wide lock: only the head row serialises writers, and rows are written to one partition only.
        assert not {mode for _, mode in modes} - {"AccessShareLock", "RowShareLock", "RowExclusiveLock"}
        events_written = {name for name, mode in modes if name.startswith("events_p") and mode == "RowExclusiveLock"}
        assert {f"{schema}.{name}" for name in events_written} == {written}
        # Another writer waits for the head row until this append commits; readers do not wait.
        other.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute(*append_group_call(schema, "order-5", uuid.uuid4()))
        assert other.execute(f'SELECT count(*) FROM "{schema}".events').fetchone() == (8,)
        writer.commit()
        assert other.execute(*append_group_call(schema, "order-5", uuid.uuid4())).fetchone() == (0, 2, 10)
    async with agentfold.connect(plain_url) as store:
        assert await store.head_position() == 10
        assert [event.position async for event in store.read_all()] == list(range(1, 11))


async def test_a_partitioned_store_at_migration_5_gets_its_head_from_migration_6(plain_url: str) -> None:
    schema = plain_url.rsplit("schema=", 1)[1].split("&")[0]
    async with await psycopg.AsyncConnection.connect(ADMIN_URL) as connection:
        await _migrate(connection, schema, 3, up_to=5)
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        for index in range(6):  # migration 5's append_group() takes the arguments it takes now
            with connection.transaction():
                assert connection.execute(*append_group_call(schema, "trim-1", uuid.uuid4())).fetchone() == (
                    0,
                    index + 1,
                    index + 1,
                )
        assert connection.execute(f'SELECT "{schema}".trim_stream(%s, %s)', ("trim-1", 7)).fetchone() == (6,)
    async with agentfold.connect(plain_url) as store:
        assert store.backend.partitions == 3
        assert await store.head_position() == 6  # trimmed events count
        assert await store.stream_version("trim-1") == 6
        assert await store.append("trim-1", [NewEvent("Placed", {})]) == AppendResult(7, 7)
        assert await store.append("order-1", [NewEvent("Placed", {})], expected_version=0) == AppendResult(1, 8)
        assert await store.trim_stream("trim-1", 8) == 1
        assert [event.position async for event in store.read_all()] == [8]
        assert await store.head_position() == 8
        assert await store.append("trim-1", [NewEvent("Placed", {})]) == AppendResult(8, 9)
