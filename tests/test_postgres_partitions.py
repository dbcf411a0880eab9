"""PostgreSQL's partitioned layout (`partitions=N`, chosen when a store is created): what the conformance suite does
not see (it runs on the layout as `postgres-partitioned`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import agentfold
from agentfold.errors import InvalidURL
from agentfold.events import NewEvent
from tests.backends import PG_PARTITIONED, PG_URL, require_service

ADMIN_URL = PG_URL.split("?")[0]


@pytest.fixture
def plain_url(tmp_path: Path) -> Iterator[str]:
    require_service(PG_PARTITIONED)
    url = PG_PARTITIONED.make_url(tmp_path).rsplit("&partitions=", 1)[0]
    yield url
    PG_PARTITIONED.cleanup(url)


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
