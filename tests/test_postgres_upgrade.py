"""Stores made by an older agentfold, upgraded for real when opened: a store is built at an older migration with that
migration's own functions (its `append_group()` and `trim_stream()`, called with the arguments that agentfold sent
them), then opened, and must read back the same events and still recognise retries of what it holds.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import psycopg
import pytest

import agentfold

# private: _migrate builds a store at an older migration, as an older agentfold left it
from agentfold.backends.postgres import MIGRATIONS, PostgresStore, _migrate
from agentfold.blobs import BlobPolicy
from agentfold.encoding import EncodedEvent, encode_events
from agentfold.errors import DuplicateEventId
from agentfold.events import AppendResult, NewEvent, RecordedEvent
from tests.backends import PG_URL

ADMIN_URL = PG_URL.split("?")[0]
SEPARATOR = "\x1e"


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&")[0]


def old_append(
    connection: psycopg.Connection[Any], schema: str, appends: list[tuple[str, list[EncodedEvent]]]
) -> list[tuple[int, int, int]]:
    """One group of appends (expected version: any) through the append_group() of migrations 1 to 4, with the
    arguments agentfold sent it then: each event's JSON tail built by the client, stream ids as JSON, arrays
    joined."""
    encode = msgspec.json.encode
    events = [event for _, batch in appends for event in batch]
    tails = [
        f',"type":{encode(event.type).decode()},"data":{event.data.decode()},'
        f'"metadata":{event.metadata.decode()},"_id":"{event.id}"}}'
        for event in events
    ]
    arguments = (
        SEPARATOR.join(stream for stream, _ in appends),
        SEPARATOR.join(encode(stream).decode() for stream, _ in appends),
        ",".join("-1" for _ in appends),
        ",".join(str(len(batch)) for _, batch in appends),
        ",".join(event.id for event in events),
        SEPARATOR.join(tails),
        SEPARATOR.join(event.type for event in events),
        "agentfold.upgrade-test",
    )
    with connection.transaction():
        rows = connection.execute(
            f"""SELECT * FROM "{schema}".append_group(
                string_to_array(%s, E'\\x1e'), string_to_array(%s, E'\\x1e'), string_to_array(%s, ',')::bigint[],
                string_to_array(%s, ',')::integer[], string_to_array(%s, ',')::uuid[], string_to_array(%s, E'\\x1e'),
                string_to_array(%s, E'\\x1e'), %s)""",
            arguments,
        ).fetchall()
        for (outcome, _, last_position), (_, batch) in zip(rows, appends, strict=True):
            assert outcome == 0
            for offset, event in enumerate(batch):
                for blob in event.blobs:  # as migration 4's agentfold stored an append's blobs, in its transaction
                    connection.execute(
                        f'INSERT INTO "{schema}".blobs VALUES (%s, %s) ON CONFLICT DO NOTHING',
                        (blob.digest, blob.content),
                    )
                    connection.execute(
                        f'INSERT INTO "{schema}".event_blobs VALUES (%s, %s)',
                        (last_position - len(batch) + 1 + offset, blob.digest),
                    )
    return [tuple(row) for row in rows]


def v4_events(connection: psycopg.Connection[Any], schema: str) -> list[RecordedEvent]:
    """Every stored event as migration 4's readers received it: its record."""
    rows = connection.execute(f'SELECT record::text FROM "{schema}".events ORDER BY position').fetchall()
    return [msgspec.json.decode(row[0], type=RecordedEvent) for row in rows]


def batch(kind: str, count: int, **data: Any) -> list[NewEvent]:
    return [NewEvent(kind, {"n": index, **data}, metadata={"by": "v4"}) for index in range(count)]


async def store_at_migration(url: str, version: int, partitions: int = 0) -> str:
    """Create the store of `url` as the agentfold of migration `version` left it; its schema name."""
    schema = schema_of(url)
    async with await psycopg.AsyncConnection.connect(ADMIN_URL) as connection:
        await _migrate(connection, schema, partitions, up_to=version)
    return schema


async def test_a_store_at_migration_2_gains_the_blob_tables_when_opened(plain_url: str) -> None:
    schema = await store_at_migration(plain_url, 2)
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        old_append(connection, schema, [("old", encode_events(batch("Ticked", 3)))])
    async with agentfold.connect(plain_url) as store:
        await store.append("new", [NewEvent("Prompted", {"prompt": "p" * 100_000})])
        assert [event.version async for event in store.read_stream("old")] == [1, 2, 3]
        assert await store.trim_stream("new", 2) == 1
        assert await store.blob_usage() == (0, 0)


async def test_a_store_at_migration_3_gets_the_filtered_read_indexes_when_opened(plain_url: str) -> None:
    schema = await store_at_migration(plain_url, 3)
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        for index in range(20):
            old_append(
                connection,
                schema,
                [
                    (f"noise-{index}", encode_events(batch("Noise", 10))),
                    (f"order-{index}", encode_events(batch("Paid", 1, i=index))),
                ],
            )
    async with agentfold.connect(plain_url) as store:
        paid = [event async for event in store.read_all(types=["Paid"])]
        orders = [event async for event in store.read_all(stream_prefix="order-")]
        assert [event.data["i"] for event in paid] == list(range(20)) == [event.data["i"] for event in orders]
    with psycopg.connect(ADMIN_URL) as connection:
        names = {
            row[0] for row in connection.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))
        }
    assert {"events_type_hash_position", "events_category_hash_position"} <= names


@pytest.mark.parametrize("partitions", [0, 3])
async def test_a_store_at_migration_4_is_rewritten_by_migration_5_and_reads_back_the_same(
    plain_url: str, partitions: int
) -> None:
    schema = schema_of(plain_url)
    policy = BlobPolicy(threshold=1000, max_size=10_000_000)
    weird_stream = 'we"ird\\stream-1'
    written = {
        "order-1": encode_events(placed := batch("Placed", 3)),
        weird_stream: encode_events([NewEvent('Ty"pe\\x', {"text": 'é \u2028 "q" \\ \n'}, metadata={"k": [1]})]),
        "trim-1": encode_events(batch("Ticked", 4)),
        "blob-1": encode_events([NewEvent("Prompted", {"prompt": "p" * 5000, "n": 1})], blobs=policy),
    }
    later_trimmed = encode_events(ticked := batch("Ticked", 2))
    await store_at_migration(plain_url, 4, partitions)
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        results = old_append(connection, schema, list(written.items()))
        results += old_append(connection, schema, [("trim-1", later_trimmed)])
        assert connection.execute(f'SELECT "{schema}".trim_stream(%s, %s)', ("trim-1", 6)).fetchone() == (5,)
        connection.execute(f'INSERT INTO "{schema}".snapshots VALUES (%s, %s, %s, %s)', ("order-1", "v", 3, b"\x00s"))
        connection.execute(f'INSERT INTO "{schema}".checkpoints VALUES (%s, %s)', ("reader", 4))
        before = v4_events(connection, schema)
        assert len(before) == 1 + 3 + 1 + 1  # trim-1 keeps its 6th event only
        assert connection.execute(f'SELECT max(version) FROM "{schema}".schema_migrations').fetchone() == (4,)

    async with agentfold.connect(plain_url) as store:
        assert isinstance(store, PostgresStore)
        assert store.backend.partitions == partitions
        # The records as stored, before blobs are put back: the same events, ids, positions and times.
        assert await store.backend.read_all_page(0, 100, None, None) == (before, 11)
        assert [event.data async for event in store.read_stream("blob-1")] == [{"prompt": "p" * 5000, "n": 1}]
        for stream_id in written:
            stored = [event for event in before if event.stream_id == stream_id]
            assert [event.position async for event in store.read_stream(stream_id)] == [e.position for e in stored]
        backwards = await store.backend.read_stream_backwards("order-1", 10, 0, 10)
        assert [event.version for event in backwards] == [3, 2, 1]
        assert [event.type async for event in store.read_all(types=['Ty"pe\\x'])] == ['Ty"pe\\x']
        assert [event.stream_id async for event in store.read_all(stream_prefix="order-")] == ["order-1"] * 3
        assert await store.head_position() == 11
        assert await store.stream_version("trim-1") == 6
        assert await store.blob_usage() == (1, 5002)  # the prompt as JSON, quotes included
        assert await store.backend.load_snapshot("order-1", "v") == (3, b"\x00s")
        assert await store.backend.load_checkpoint("reader") == 4

        # Retries of appends written before the upgrade are recognised: stored, and trimmed since.
        assert await store.append("order-1", placed) == AppendResult(results[0][1], results[0][2])
        with pytest.raises(DuplicateEventId, match="trimmed"):  # known still, though its events are gone
            await store.append("trim-1", ticked)
        with pytest.raises(DuplicateEventId):
            await store.append("order-1", [NewEvent("Placed", {}, id=uuid.UUID(written["order-1"][0].id))])
        with pytest.raises(DuplicateEventId):  # a stored id on another stream
            await store.append("other-1", [NewEvent("Placed", {}, id=uuid.UUID(written[weird_stream][0].id))])

        # New appends go on from the upgraded store's head and versions.
        assert await store.append("order-1", batch("Placed", 2), 3) == AppendResult(5, 13)
        assert await store.trim_stream("order-1", 3) == 2
        assert [event.version async for event in store.read_stream("order-1")] == [3, 4, 5]
        with pytest.raises(DuplicateEventId):  # an id trimmed after the upgrade
            await store.append("order-1", [NewEvent("Placed", {}, id=uuid.UUID(written["order-1"][0].id))])

    with psycopg.connect(ADMIN_URL) as connection:
        versions = connection.execute(f'SELECT version FROM "{schema}".schema_migrations ORDER BY 1').fetchall()
        assert [row[0] for row in versions] == [migration.version for migration in MIGRATIONS]
        columns = connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'events' "
            "ORDER BY ordinal_position",
            (schema,),
        ).fetchall()
        assert "record" not in {row[0] for row in columns}
        if partitions:
            counts = connection.execute(
                f'SELECT (SELECT count(*) FROM "{schema}".event_ids), (SELECT count(*) FROM "{schema}".events)'
            ).fetchone()
            assert counts is not None and counts[0] == counts[1]


async def test_an_append_of_an_older_agentfold_committing_during_the_upgrade_is_kept(plain_url: str) -> None:
    schema = await store_at_migration(plain_url, 4)
    with psycopg.connect(ADMIN_URL, autocommit=True) as older:
        older.execute("BEGIN")  # an older agentfold's append, not committed yet when the upgrade starts
        [(outcome, version, position)] = old_append(older, schema, [("early", encode_events(batch("Ticked", 1)))])
        assert (outcome, version, position) == (0, 1, 1)

        async def open_store() -> agentfold.EventStore:
            return await agentfold.connect(plain_url)

        opening = asyncio.create_task(open_store())
        async with await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True) as probe:
            while True:
                cursor = await probe.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                    (f'"{schema}".events',),
                )
                waiting = await cursor.fetchone()
                if waiting is not None and waiting[0] > 0:
                    break
                assert not opening.done()
                await asyncio.sleep(0.01)
        older.execute("COMMIT")
        store = await opening
    try:
        assert [(event.stream_id, event.position) async for event in store.read_all()] == [("early", 1)]
    finally:
        await store.close()
