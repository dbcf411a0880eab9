from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import agentfold
from agentfold.store import EventStore
from tests.backends import AVAILABLE, DURABLE, Backend, require_service

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
