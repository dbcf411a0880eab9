"""What only the Redis backend has to prove: its keys, its scripts, the server's durability, a server restart.

The shared guarantees are in the conformance suite. Tests that restart or reconfigure a server start a private
``redis-server`` on a free port in a temporary folder; the machine's shared Redis is never restarted.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

import agentfold
from agentfold import ANY, NewEvent, StreamSnapshot
from agentfold.backends import redis as redis_backend
from agentfold.backends.redis import RedisDurabilityWarning, RedisStore, server_version
from agentfold.errors import (
    DuplicateEventId,
    InvalidURL,
    StoreCorrupted,
    StoreFull,
    StoreTimeout,
    StoreUnavailable,
    WrongExpectedVersion,
)
from agentfold.fanout.redis_relay import relay
from tests.backends import BACKENDS, REDIS_URL
from tests.servers import AOF_ALWAYS
from tests.test_fuzz_decode import SeenEvents

REDIS = next(backend for backend in BACKENDS if backend.name == "redis")


pytestmark = pytest.mark.usefixtures("redis_service")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh key prefix on the machine's Redis, its keys deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    REDIS.cleanup(f"{REDIS_URL}?prefix={name}")


async def open_redis(url: str, **options: Any) -> RedisStore:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RedisDurabilityWarning)
        store = await agentfold.connect(url, **options)
    assert isinstance(store, RedisStore)
    return store


NO_PERSISTENCE = {"appendonly": "no", "save": ""}


def events(count: int, **data: Any) -> list[NewEvent]:
    return [NewEvent("Happened", {"n": index, **data}) for index in range(count)]


# -- keys, layout and the append script ---------------------------------------------------------------------------


async def test_every_key_stays_under_the_prefix(private_redis: Any) -> None:
    server = private_redis(NO_PERSISTENCE)
    client = aioredis.Redis.from_url(server.url)
    other_db = aioredis.Redis.from_url(server.url[:-1] + "1")
    try:
        await client.set("app-other:key", "untouched")
        await client.set("appx", "untouched")
        await other_db.set("app:in-db-1", "untouched")
        async with await open_redis(f"{server.url}?prefix=app") as store:
            await store.append("order-1", events(5), expected_version=0)
            await store.append("order-2", events(2))
            await store.trim_stream("order-1", 3)
            await store.keep_snapshot(StreamSnapshot("order-1", "totals", 5, b"{}"))
            await store.save_checkpoint("emailer", 7)
            await store.wait_for_append(0, 0.01)
            [event async for event in store.read_all(types=["Happened"], stream_prefix="order")]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RedisDurabilityWarning)
                await relay(store, f"{server.url}?prefix=fan", once=True)
        keys = sorted(key.decode() for key in await client.keys("*"))
        assert {key for key in keys if not key.startswith(("app:", "fan:"))} == {"app-other:key", "appx"}
        assert await client.get("app-other:key") == b"untouched"
        assert await client.get("appx") == b"untouched"
        assert await other_db.keys("*") == [b"app:in-db-1"]
        assert set(keys) >= {"app:all", "app:head", "app:ids", "app:versions", "app:s:order-1", "app:s:order-2"}
    finally:
        await client.aclose()
        await other_db.aclose()


async def test_list_elements_are_versions_and_entry_ids_positions(prefix: str) -> None:
    url = f"{REDIS_URL}?prefix={prefix}"
    store = await open_redis(url)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await store.append("a", events(3))
        await store.append("b", events(2))
        await store.append("a", events(1))
        records = await client.lrange(f"{prefix}:s:a", 0, -1)
        assert [json.loads(record)[:2] for record in records] == [[1, 1], [2, 2], [3, 3], [4, 6]]
        assert [entry_id for entry_id, _ in await client.xrange(f"{prefix}:all")] == [
            f"0-{position}".encode() for position in range(1, 7)
        ]
        assert await client.hget(f"{prefix}:versions", "a") == b"4"
        assert await client.get(f"{prefix}:head") == b"6"
        await store.trim_stream("a", 4)
        assert (await client.lrange(f"{prefix}:s:a", 0, -1))[:3] == [b"", b"", b""]
        assert await client.hget(f"{prefix}:trimmed", "a") == b"3"
        assert await client.xlen(f"{prefix}:all") == 3
        assert await store.stream_version("a") == 4
        assert [event.version async for event in store.read_stream("a")] == [4]
        assert [event.version async for event in store.read_stream("a", backwards=True)] == [4]
    finally:
        await client.aclose()
        await store.close()


async def test_event_ids_are_kept_packed_and_older_agentfold_is_refused(prefix: str) -> None:
    """An id is kept as its UUID's 16 bytes; an older append script (whose first command is HMGET on the ``ids``
    hash) meets WRONGTYPE on a store created with packed ids, before it writes anything."""
    store = await open_redis(f"{REDIS_URL}?prefix={prefix}")
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        ids = [uuid.uuid4() for _ in range(2)]
        batch = [NewEvent("Happened", {}, id=str(event_id)) for event_id in ids]
        await store.append("a", batch)
        assert sorted(await client.hkeys(f"{prefix}:idx")) == sorted(event_id.bytes for event_id in ids)
        assert await client.get(f"{prefix}:ids") == redis_backend.LAYOUT_MARKER.encode()
        with pytest.raises(aioredis.ResponseError, match="WRONGTYPE"):
            await client.hmget(f"{prefix}:ids", [str(ids[0])])
        assert (await store.append("a", batch)).version == 2  # a retry, recognised by its packed ids
        with pytest.raises(DuplicateEventId):
            await store.append("b", [NewEvent("Happened", {}, id=str(ids[0]).upper())])
        assert await store.head_position() == 2
    finally:
        await client.aclose()
        await store.close()


async def test_a_store_written_before_packed_ids_stays_as_it_was(prefix: str) -> None:
    """Keys as agentfold wrote them before packed ids (the text id in the ``ids`` hash): read as before; a retry
    of its batch writes nothing, its ids stay duplicates, and new ids go to the same hash, as text."""
    client = aioredis.Redis.from_url(REDIS_URL)
    old_ids = [uuid.uuid4() for _ in range(2)]
    for position, event_id in enumerate(old_ids, 1):
        entry = f'[{position},{position},1796400000000000,"a","Happened","{event_id}",{{"n":{position}}},{{}}]'
        await client.xadd(f"{prefix}:s:a", {"e": entry}, id=f"0-{position}")
        await client.xadd(f"{prefix}:all", {"e": entry}, id=f"0-{position}")
        await client.hset(f"{prefix}:ids", str(event_id), f"{position} 1 2 {position} a")
    await client.hset(f"{prefix}:versions", "a", 2)
    await client.set(f"{prefix}:head", 2)
    store = await open_redis(f"{REDIS_URL}?prefix={prefix}")
    try:
        read = [event async for event in store.read_stream("a")]
        assert [(event.id, event.version, event.position, event.data) for event in read] == [
            (old_ids[0], 1, 1, {"n": 1}),
            (old_ids[1], 2, 2, {"n": 2}),
        ]
        retried = [NewEvent("Happened", {"n": n}, id=event_id) for n, event_id in enumerate(old_ids, 1)]
        assert (await store.append("a", retried)).version == 2
        with pytest.raises(DuplicateEventId):
            await store.append("b", [NewEvent("Happened", {"n": 1}, id=old_ids[0])])
        new_id = uuid.uuid4()
        await store.append("a", [NewEvent("Happened", {"n": 3}, id=new_id)])
        assert await client.type(f"{prefix}:ids") == b"hash"
        assert await client.hget(f"{prefix}:ids", str(new_id)) == b"3 3 3 3 a"
        assert not await client.exists(f"{prefix}:idx")
        assert [event.id async for event in store.read_all()] == [*old_ids, new_id]
        assert await store.trim_stream("a", 3) == 2
        assert await client.xlen(f"{prefix}:s:a") == 1
        assert [event.id async for event in store.read_stream("a")] == [new_id]
        assert [event.id async for event in store.read_stream("a", backwards=True)] == [new_id]
        assert [event.id async for event in store.read_all()] == [new_id]
    finally:
        await client.aclose()
        await store.close()


async def test_the_blob_digests_of_a_listed_event_go_with_its_trim(prefix: str) -> None:
    """Layout 2 keeps an event's blob digests under its position; trimming the event releases them and the blob."""
    store = await open_redis(f"{REDIS_URL}?prefix={prefix}", blob_threshold=1024)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await store.append("a", [NewEvent("Big", {"text": "x" * 2048}), NewEvent("Small", {"n": 1})])
        digests = await client.hgetall(f"{prefix}:blobevents")
        assert list(digests) == [b"1"] and len(digests[b"1"]) == 64
        assert (await store.blob_usage()).blobs == 1
        assert await store.trim_stream("a", 2) == 1
        assert await client.hlen(f"{prefix}:blobevents") == 0
        assert (await store.blob_usage()).blobs == 0
        assert [event.type async for event in store.read_stream("a")] == ["Small"]
    finally:
        await client.aclose()
        await store.close()


async def test_sixteen_concurrent_writers_stay_atomic(prefix: str) -> None:
    """Four stores (own connections), four tasks each: one contended stream and one stream per writer."""
    url = f"{REDIS_URL}?prefix={prefix}"
    stores = [await open_redis(url) for _ in range(4)]
    shared_results: list[int] = []
    conflicts = 0

    async def writer(store: RedisStore, number: int) -> None:
        nonlocal conflicts
        for round_number in range(15):
            while True:
                version = await store.stream_version("shared")
                try:
                    result = await store.append("shared", events(2, writer=number), expected_version=version)
                except WrongExpectedVersion:
                    conflicts += 1
                    continue
                shared_results.append(result.version)
                break
            await store.append(f"own-{number}", events(round_number % 3 + 1, writer=number), expected_version=ANY)

    try:
        await asyncio.gather(*(writer(stores[number % 4], number) for number in range(16)))
        store = stores[0]
        assert sorted(shared_results) == list(range(2, 16 * 15 * 2 + 1, 2))
        shared = [event async for event in store.read_stream("shared")]
        assert [event.version for event in shared] == list(range(1, 16 * 15 * 2 + 1))
        for first, second in zip(shared[::2], shared[1::2], strict=True):
            assert first.data["writer"] == second.data["writer"]  # a batch is never split by another writer
            assert second.position == first.position + 1
        everything = [event async for event in store.read_all()]
        head = await store.head_position()
        assert [event.position for event in everything] == list(range(1, head + 1))
        assert len({event.id for event in everything}) == head
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            assert await client.hlen(f"{prefix}:idx") == head
            assert await client.xlen(f"{prefix}:all") == head
            for number in range(16):
                version = await store.stream_version(f"own-{number}")
                assert await client.llen(f"{prefix}:s:own-{number}") == version == sum(r % 3 + 1 for r in range(15))
        finally:
            await client.aclose()
    finally:
        for store in stores:
            await store.close()


async def test_foreign_entries_are_reported_as_corruption(prefix: str) -> None:
    store = await open_redis(f"{REDIS_URL}?prefix={prefix}")
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await store.append("a", events(1))
        await client.xadd(f"{prefix}:all", {"e": "not json"}, id="0-2")
        with pytest.raises(StoreCorrupted):
            [event async for event in store.read_all()]
        # In a stream's own key, for a read and for a fold, which decodes entry by entry.
        await client.rpush(f"{prefix}:s:a", "not json")
        with pytest.raises(StoreCorrupted):
            [event async for event in store.read_stream("a")]
        with pytest.raises(StoreCorrupted):
            await agentfold.project(store, "a", SeenEvents)
        assert [event.version async for event in store.read_stream("a", limit=1)] == [1]
    finally:
        await client.aclose()
        await store.close()


async def test_a_full_server_refuses_whole_appends(private_redis: Any) -> None:
    """At maxmemory a script is refused before it runs: `StoreFull`, and never half an append."""
    server = private_redis({**NO_PERSISTENCE, "maxmemory": "3mb", "maxmemory-policy": "noeviction"})
    store = await open_redis(f"{server.url}?prefix=app")
    written = 0
    try:
        with pytest.raises(StoreFull):
            for _ in range(1000):
                await store.append("big", [NewEvent("Blob", {"text": "x" * 20_000}) for _ in range(5)])
                written += 5
        assert written > 0
        assert await store.stream_version("big") == written
        assert len([event async for event in store.read_stream("big")]) == written
        assert await store.head_position() == written
    finally:
        await store.close()


# -- URLs and options ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("prefix=a&colour=red", "colour"),
        ("prefix=has:colon", "prefix"),
        ("prefix=", "prefix"),
        ("durability=fsync", "durability"),
        ("max_event_size=0", "max_event_size"),
        ("max_event_size=big", "max_event_size"),
        ("timeout=-1", "timeout"),
    ],
)
async def test_bad_options_are_refused_without_showing_the_password(query: str, named: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        await agentfold.connect(f"redis://:hunter2@127.0.0.1:6379/0?{query}")
    assert named in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_bad_database_and_port_are_refused() -> None:
    with pytest.raises(InvalidURL, match="database"):
        await agentfold.connect("redis://127.0.0.1:6379/zero")
    with pytest.raises(InvalidURL, match="port"):
        await agentfold.connect("redis://127.0.0.1:99999/0")


async def test_unreachable_server_is_a_retryable_error_without_the_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StoreUnavailable) as caught:
        await agentfold.connect(f"redis://:hunter2@127.0.0.1:{port}/0?prefix=x&timeout=2")
    assert caught.value.retryable
    assert "hunter2" not in str(caught.value)


# -- durability -----------------------------------------------------------------------------------------------------


async def test_persistence_is_judged_at_connect_and_warned_once(private_redis: Any) -> None:
    server = private_redis(NO_PERSISTENCE)
    # private: forget this process's earlier warnings for the fresh server's URL (no public reset)
    # private: the once-per-server warning is reset so this test sees it again
    redis_backend._warned.difference_update({key for key in redis_backend._warned if key[0] == server.url})
    with pytest.warns(RedisDurabilityWarning, match="no persistence"):
        store = await agentfold.connect(f"{server.url}?prefix=a")
    assert isinstance(store, RedisStore)
    assert not store.persistence.survives_crash
    await store.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RedisDurabilityWarning)
        await (await agentfold.connect(f"{server.url}?prefix=b")).close()  # once per server and setting

    client = aioredis.Redis.from_url(server.url)
    try:
        await client.config_set("appendonly", "yes")
        await client.config_set("appendfsync", "everysec")
        with pytest.warns(RedisDurabilityWarning, match="everysec"):
            await (await agentfold.connect(f"{server.url}?prefix=a")).close()
        await client.config_set("appendfsync", "always")
        with warnings.catch_warnings():
            warnings.simplefilter("error", RedisDurabilityWarning)
            store = await agentfold.connect(f"{server.url}?prefix=a")
        assert isinstance(store, RedisStore)
        assert store.persistence.survives_crash
        await store.close()
    finally:
        await client.aclose()


async def test_waitaof_is_refused_before_redis_7_2(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        version = await server_version(client)
        appendonly = (await client.config_get("appendonly")).get(b"appendonly")
    finally:
        await client.aclose()
    url = f"{REDIS_URL}?prefix={prefix}&durability=waitaof"
    if version < (7, 2):
        with pytest.raises(InvalidURL, match=r"7\.2"):
            await agentfold.connect(url)
    elif appendonly == b"no":
        with pytest.raises(InvalidURL, match="appendonly"):
            await agentfold.connect(url)
    else:
        store = await open_redis(url)
        try:
            assert store.persistence.survives_crash
            assert (await store.append("s", events(2))).version == 2
        finally:
            await store.close()


async def test_a_redis_restart_while_appending(private_redis: Any) -> None:
    """SIGKILL the server mid-run and restart it: clear retryable errors, and retries write nothing twice."""
    server = private_redis(AOF_ALWAYS)
    store = await open_redis(f"{server.url}?prefix=app&timeout=5")
    batches = [events(2, batch=number) for number in range(150)]
    acknowledged: list[tuple[int, int]] = []
    failures: list[Exception] = []
    failed = asyncio.Event()
    running = asyncio.Event()

    async def appender() -> None:
        for batch in batches:
            while True:
                try:
                    result = await store.append("orders", batch, expected_version=ANY)
                except (StoreUnavailable, StoreTimeout) as error:
                    failures.append(error)
                    failed.set()
                    await asyncio.sleep(0.02)
                    continue
                acknowledged.append((result.version, result.position))
                if len(acknowledged) == 30:
                    running.set()
                break
            await asyncio.sleep(0)

    task = asyncio.create_task(appender())
    try:
        await asyncio.wait_for(running.wait(), 30)
        server.kill()
        await asyncio.wait_for(failed.wait(), 30)
        server.start()
        await asyncio.wait_for(task, 60)
        assert failures and all(error.retryable for error in failures)

        assert acknowledged == [(2 * number + 2, 2 * number + 2) for number in range(150)]
        read = [event async for event in store.read_stream("orders")]
        assert [event.id for event in read] == [event.id for batch in batches for event in batch]
        assert [event.version for event in read] == list(range(1, 301))
        everything = [event async for event in store.read_all()]
        assert [event.position for event in everything] == list(range(1, 301))
        assert await store.append("orders", batches[0]) == agentfold.AppendResult(2, 2)
    finally:
        task.cancel()
        await store.close()
