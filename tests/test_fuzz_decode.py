"""Fuzz the decode path of stored events: whatever bytes sit in a backend's storage, a read gives valid events or
`StoreCorrupted`, never another exception and never a hang.

Records are planted directly in the backend's own storage, bypassing `append`: an SQLite `events` row (its TEXT
`record` column also takes BLOBs), a PostgreSQL `events` row (a record's fields are its typed columns, so only what
the server accepts in them can be planted), and Redis stream entries (any bytes). Each planted record is read with
`read_stream` and `read_all`; a returned event's properties must be usable too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, assume, event, given, settings

import agentfold
from agentfold.errors import HistoryTrimmed, StoreCorrupted
from agentfold.events import RecordedEvent
from agentfold.projection import Projection, project
from agentfold.store import EventStore
from tests.backends import PG_URL, REDIS_URL

EXAMPLES = 200
READ_TIMEOUT = 20.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_values = (
    json_values
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from(["not-a-uuid", "", "0" * 36, str(uuid.uuid4()).upper(), "\u0000"])
)


def good_record(stream_id: str, position: int) -> dict[str, Any]:
    return {
        "stream_id": stream_id,
        "version": 1,
        "position": position,
        "type": "Planted",
        "data": {"n": 1},
        "metadata": {},
        "_id": str(uuid.uuid4()),
        "_recorded_at_us": 1_700_000_000_000_000,
    }


@st.composite
def mutated_records(draw: st.DrawFn) -> Callable[[str, int], Any]:
    """A valid record with some fields replaced by arbitrary JSON values, dropped, or joined by extra ones."""
    changes = draw(st.dictionaries(st.sampled_from([*good_record("s", 1), "extra"]), field_values, max_size=2))
    dropped = draw(st.sets(st.sampled_from(list(good_record("s", 1))), max_size=1)) if not changes else set()

    def build(stream_id: str, position: int) -> Any:
        record = good_record(stream_id, position)
        record.update(changes)
        for key in dropped:
            record.pop(key, None)
        return record

    return build


def constant(value: Any) -> Callable[[str, int], Any]:
    return lambda stream_id, position: value


payloads = st.one_of(
    mutated_records().map(lambda build: ("json", build)),
    json_values.map(lambda value: ("json", constant(value))),
    st.binary(max_size=200).map(lambda raw: ("bytes", constant(raw))),
    st.text(max_size=200).map(lambda text: ("text", constant(text))),
)


def use(event: RecordedEvent) -> None:
    """Touch everything a reader uses; StoreCorrupted is the only error allowed."""
    assert isinstance(event, RecordedEvent)
    event.id  # noqa: B018
    event.recorded_at  # noqa: B018
    assert isinstance(event.data, dict) and isinstance(event.metadata, dict)
    assert isinstance(event.stream_id, str) and isinstance(event.type, str)
    assert isinstance(event.version, int) and isinstance(event.position, int)


class SeenEvents(Projection[int]):
    """Skips every type, so a fold decodes each event and does nothing else with it."""

    name = "fuzz-seen"

    def initial(self) -> int:
        return 0


async def read_back(store: EventStore, stream_id: str, position: int) -> list[str]:
    """How each read ended: "valid" or "corrupted". A fold only decodes the events (it reads no id or time), so
    it may find valid what a full read finds corrupted; it must not end any other way."""
    outcomes: list[str] = []
    reads: list[Callable[[], AsyncIterator[RecordedEvent]]] = [
        lambda: store.read_stream(stream_id),
        lambda: store.read_all(after_position=position - 1, limit=1),
    ]
    for read in reads:
        try:
            async for recorded in read():
                use(recorded)
            outcomes.append("valid")
        except StoreCorrupted:
            outcomes.append("corrupted")
    try:
        await project(store, stream_id, SeenEvents)
        outcomes.append("folds")
    except StoreCorrupted:
        outcomes.append("fold corrupted")
    except HistoryTrimmed:  # a lone record at version n > 1 looks exactly like a stream trimmed before n
        outcomes.append("fold trimmed")
    return outcomes


# -- planting records in each backend's storage -------------------------------------------------------------------


class Planter:
    """Writes one raw record per call at a fresh stream and position, the way a foreign writer would."""

    positions: Iterator[int]

    def plant(self, kind: str, record: Any, stream_id: str, position: int) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        return None


class SQLitePlanter(Planter):
    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)

    def plant(self, kind: str, record: Any, stream_id: str, position: int) -> bool:
        value: str | bytes = json.dumps(record) if kind == "json" else record
        self.connection.execute(
            "INSERT INTO events (position, stream_id, version, type, event_id, batch_first, batch_last, record) "
            "VALUES (?, ?, 1, 'Planted', ?, 1, 1, ?)",
            (position, stream_id, str(uuid.uuid4()), value),
        )
        return True

    def close(self) -> None:
        self.connection.close()


class PostgresPlanter(Planter):
    def __init__(self, url: str) -> None:
        import psycopg

        self.schema = url.rsplit("schema=", 1)[1].split("&")[0]
        self.connection = psycopg.connect(PG_URL.split("?")[0], autocommit=True)

    def plant(self, kind: str, record: Any, stream_id: str, position: int) -> bool:
        import psycopg

        # An event's row: its record's fields in their typed columns (the server refuses a value its column cannot
        # hold: nothing is planted then). Anything but a record object is planted as the data of a good record.
        if kind == "bytes":
            try:
                record = record.decode("utf-8")
            except UnicodeDecodeError:
                return False
            kind = "text"
        fields = record if kind == "json" and isinstance(record, dict) else good_record(stream_id, position)
        if fields is record:
            data = json.dumps(fields["data"]) if "data" in fields else None
        else:
            data = record if kind == "text" else json.dumps(record)
        metadata = json.dumps(fields["metadata"]) if "metadata" in fields else None
        try:
            self.connection.execute(
                f'INSERT INTO "{self.schema}".events (position, version, recorded_at_us, batch_index, batch_size, id, '
                "stream_id, type, data, metadata) VALUES (%s, %s, %s, 0, 1, %s, %s, %s, %s::json, %s::json)",
                (
                    position,
                    fields.get("version"),
                    fields.get("_recorded_at_us"),
                    fields.get("_id"),
                    stream_id,
                    fields.get("type"),
                    data,
                    metadata,
                ),
            )
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, ValueError):
            return False  # a value its column cannot hold, or a field the row cannot lack: the server refuses it
        return True

    def close(self) -> None:
        self.connection.close()


class RedisPlanter(Planter):
    def __init__(self, url: str) -> None:
        import redis

        from agentfold.backends.redis import LAYOUT_MARKER

        self.marker = LAYOUT_MARKER
        self.prefix = url.rsplit("prefix=", 1)[1].split("&")[0]
        self.client = redis.Redis.from_url(REDIS_URL.split("?")[0])

    def plant(self, kind: str, record: Any, stream_id: str, position: int) -> bool:
        if kind == "json" and isinstance(record, dict):
            # The Redis entry is the array [version, position, recorded_at_us, stream_id, type, id, data, metadata].
            order = ["version", "position", "_recorded_at_us", "stream_id", "type", "_id", "data", "metadata"]
            record = [record[key] for key in order if key in record]
        raw = json.dumps(record).encode() if kind == "json" else record if kind == "bytes" else record.encode()
        # In the layout stores are created with (agentfold.backends.redis.LAYOUT_MARKER): a stream is a list.
        self.client.set(f"{self.prefix}:ids", self.marker, nx=True)
        self.client.rpush(f"{self.prefix}:s:{stream_id}", raw)
        self.client.xadd(f"{self.prefix}:all", {"e": raw}, id=f"0-{position}")
        return True

    def close(self) -> None:
        self.client.close()


def planter_for(url: str) -> Planter:
    if url.startswith("sqlite"):
        return SQLitePlanter(url.removeprefix("sqlite:///"))
    if url.startswith("postgres"):
        return PostgresPlanter(url)
    return RedisPlanter(url)


def test_any_stored_record_reads_as_events_or_store_corrupted(durable_url: str) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(agentfold.connect(durable_url))
    planter = planter_for(durable_url)
    counter = itertools.count(1)
    seen: Counter[str] = Counter()
    try:
        base = loop.run_until_complete(store.head_position())

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(payload=payloads)
        def check(payload: tuple[str, Callable[[str, int], Any]]) -> None:
            number = next(counter)
            stream_id, position = f"fuzz-{number}", base + number
            kind, build = payload
            assume(planter.plant(kind, build(stream_id, position), stream_id, position))
            outcomes = loop.run_until_complete(asyncio.wait_for(read_back(store, stream_id, position), READ_TIMEOUT))
            event(f"planted {kind}: read_stream {outcomes[0]}, read_all {outcomes[1]}")
            seen.update(outcomes)

        check()
        assert seen["valid"] > 0 and seen["corrupted"] > 0, f"the fuzzer did not reach both outcomes: {seen}"
    finally:
        planter.close()
        loop.run_until_complete(store.close())
        loop.close()


@pytest.mark.parametrize(
    "record",
    [
        {**good_record("s", 1), "_id": "not-a-uuid"},
        {**good_record("s", 1), "_recorded_at_us": 2**62},
        {**good_record("s", 1), "data": None},
    ],
    ids=["bad-id", "far-future-time", "null-data"],
)
def test_known_bad_records_are_store_corrupted(durable_url: str, record: dict[str, Any]) -> None:
    """Examples the fuzzer found or should find, kept as plain cases."""

    async def scenario() -> None:
        async with agentfold.connect(durable_url) as store:
            position = await store.head_position() + 1
            planter = planter_for(durable_url)
            try:
                planted = planter.plant("json", {**record, "position": position, "stream_id": "s"}, "s", position)
            finally:
                planter.close()
            if not planted:
                # PostgreSQL keeps an event id in a uuid column: the server itself refuses one that is not a UUID.
                assert durable_url.startswith("postgres") and record["_id"] == "not-a-uuid"
                return
            with pytest.raises(StoreCorrupted):
                async for event in store.read_stream("s"):
                    use(event)

    asyncio.run(scenario())
