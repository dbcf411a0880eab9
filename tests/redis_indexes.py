"""What the tests of Redis's position indexes share (`test_redis_category_index`, `test_redis_type_index`): a store
of their own, the index keys as Redis holds them, a store as layout 1 left it, keys put back as an older agentfold
leaves them, and the check that filtered reads equal the unfiltered read filtered here."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from agentfold.events import RecordedEvent
from agentfold.store import EventStore
from tests.backends import BACKENDS, REDIS_URL, require_service

REDIS = next(backend for backend in BACKENDS if backend.name == "redis")


def fresh_url(tmp_path: Path) -> Iterator[str]:
    """A store URL of its own for one test (its Redis required), its keys removed afterwards: each test file's
    `redis_url` fixture."""
    require_service(REDIS)
    url = REDIS.make_url(tmp_path)
    yield url
    REDIS.cleanup(url)


def client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL.split("?")[0])


def prefix_of(url: str) -> str:
    return url.rsplit("prefix=", 1)[1].split("&")[0]


def index_keys(prefix: str, kind: str) -> list[str]:
    """The index keys of `kind` (``cat`` or ``type``) the store holds, sorted."""
    with client() as redis_client:
        return sorted(key.decode() for key in redis_client.scan_iter(match=f"{prefix}:{kind}:*"))


def indexed_positions(prefix: str, kind: str, name: str) -> list[int]:
    """The positions the index of category or type `name` holds."""
    with client() as redis_client:
        return [int(entry_id.split(b"-")[1]) for entry_id, _ in redis_client.xrange(f"{prefix}:{kind}:{name}")]


def index_mark(prefix: str, mark: str) -> int | None:
    """The position the indexes are as of (`mark`: ``catsat`` or ``typesat``); None when the store has none."""
    with client() as redis_client:
        value = redis_client.get(f"{prefix}:{mark}")
    return None if value is None else int(value)


async def assert_exact(store: EventStore, queries: list[dict[str, Any]]) -> list[RecordedEvent]:
    """Every query, read at several page sizes and from several positions, equals the unfiltered read filtered
    here; the whole log is returned."""
    everything = [event async for event in store.read_all()]
    for query in queries:
        types, prefix = query.get("types"), query.get("stream_prefix")
        for page_size in (1, 2, 5, 1000):
            store.page_size = page_size
            for after in (0, everything[len(everything) // 3].position, everything[-1].position):
                expected = [
                    event
                    for event in everything
                    if event.position > after
                    and (types is None or event.type in types)
                    and (prefix is None or event.stream_id.startswith(prefix))
                ]
                assert [event async for event in store.read_all(after, **query)] == expected, (query, after)
    store.page_size = 1000
    return everything


@contextlib.contextmanager
def put_back(keys: list[str]) -> Iterator[None]:
    """The `keys` as they were on entry, put back on exit: what the appends made meanwhile leave of them is as if
    an older agentfold, which kept none of them, had made those appends."""
    with client() as redis_client:
        dumped = {key: redis_client.dump(key) for key in keys}
    yield
    with client() as redis_client:
        for key, value in dumped.items():
            redis_client.restore(key, 0, value, replace=True)  # type: ignore[arg-type]


def write_layout_1_store(prefix: str, history: list[tuple[str, str]]) -> None:
    """A store as agentfold's layout 1 left it (each stream a Redis stream, ids in the `ids` hash), holding one event
    of each (stream id, type) of `history`, in order."""
    versions: dict[str, int] = {}
    with client() as redis_client:
        for position, (stream, kind) in enumerate(history, 1):
            version = versions[stream] = versions.get(stream, 0) + 1
            entry = f'[{version},{position},1796400000000000,"{stream}","{kind}","{uuid.uuid4()}",{{}},{{}}]'
            redis_client.xadd(f"{prefix}:s:{stream}", {"e": entry}, id=f"0-{version}")
            redis_client.xadd(f"{prefix}:all", {"e": entry}, id=f"0-{position}")
            redis_client.hset(f"{prefix}:ids", str(uuid.uuid4()), f"{version} 1 1 {position} {stream}")
        redis_client.hset(f"{prefix}:versions", mapping=versions)  # type: ignore[arg-type]
        redis_client.set(f"{prefix}:head", len(history))
