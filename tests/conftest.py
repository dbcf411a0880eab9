from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import agentfold
from agentfold.store import EventStore
from tests.backends import AVAILABLE, DURABLE, PG_PARTITIONED, SQL, Backend, require_service

pytest_plugins = ["tests.servers"]  # private PostgreSQL and Redis servers for fault tests


@pytest.fixture(params=AVAILABLE, ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    require_service(chosen)
    return chosen


@pytest.fixture(params=DURABLE, ids=lambda backend: backend.name)
def durable_backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    require_service(chosen)
    return chosen


@pytest.fixture(params=SQL, ids=lambda backend: backend.name)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store on SQLite and on PostgreSQL, the stores worker processes share in production."""
    chosen: Backend = request.param
    require_service(chosen)
    url = chosen.make_url(tmp_path)
    yield url
    chosen.cleanup(url)


@pytest.fixture
def plain_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL schema's URL without a layout: opened as it is, a store in one table; with
    `&partitions=N` added, a partitioned one. Dropped afterwards either way."""
    require_service(PG_PARTITIONED)
    url = PG_PARTITIONED.make_url(tmp_path).rsplit("&partitions=", 1)[0]
    yield url
    PG_PARTITIONED.cleanup(url)


@pytest.fixture
def store_url(backend: Backend, tmp_path: Path) -> Iterator[str]:
    url = backend.make_url(tmp_path)
    yield url
    backend.cleanup(url)


@pytest.fixture
def durable_url(durable_backend: Backend, tmp_path: Path) -> Iterator[str]:
    url = durable_backend.make_url(tmp_path)
    yield url
    durable_backend.cleanup(url)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[EventStore]:
    opened = await agentfold.connect(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def redis_service() -> None:
    """Skip unless the machine's Redis (``AGENTFOLD_TEST_REDIS``) is reachable; use with ``usefixtures``."""
    from tests.backends import BACKENDS

    require_service(next(backend for backend in BACKENDS if backend.name == "redis"))


@pytest.fixture
def redis_target(redis_service: None) -> Iterator[str]:
    """A URL on the machine's Redis under a fresh prefix, its keys deleted afterwards."""
    import uuid

    from tests.backends import BACKENDS, REDIS_URL

    url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix=t{uuid.uuid4().hex[:12]}"
    yield url
    next(backend for backend in BACKENDS if backend.name == "redis").cleanup(url)
