"""The `Backend` protocol as a third party sees it: the shipped backends implement it, and the store's own promises
(records of a page in any order come out in version order) hold over any backend."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import pytest

from agentfold import EventStore, NewEvent, Projection, RecordedEvent, fold, handles
from agentfold.backend import Backend
from agentfold.backends.memory import MemoryBackend

ROOT = Path(__file__).resolve().parent.parent


class ReversedPages(MemoryBackend):
    """A memory backend whose pages come out newest first: the protocol allows it. (`tests/reversed_backend.py` is
    the same as a module of its own, registered with `agentfold.connect` on import: this file does not import it,
    so other tests never see its scheme.)"""

    async def read_stream_records(
        self, stream_id: str, after_version: int, limit: int | None
    ) -> AsyncGenerator[Sequence[RecordedEvent], None]:
        async for page in super().read_stream_records(stream_id, after_version, limit):
            yield list(reversed(page))


class Count(Projection[list[int]]):
    name = "count"

    def initial(self) -> list[int]:
        return []

    @handles("N")
    def n(self, state: list[int], event: RecordedEvent) -> list[int]:
        return [*state, event.data["n"]]


def test_the_memory_backend_implements_the_protocol() -> None:
    assert isinstance(MemoryBackend(), Backend)


async def test_every_connected_store_composes_a_backend(store: EventStore) -> None:
    assert isinstance(store.backend, Backend)
    assert store.scheme == store.backend.scheme


@pytest.mark.parametrize("page_size", [1, 3, 1000])
async def test_a_page_of_records_in_any_order_is_read_and_folded_in_version_order(page_size: int) -> None:
    async with EventStore(ReversedPages()) as store:
        store.page_size = page_size
        await store.append("s", [NewEvent("N", {"n": n}) for n in range(10)])
        assert [event.data["n"] async for event in store.read_stream("s")] == list(range(10))
        assert (await fold(store, "s", Count())).state == list(range(10))


def test_the_conformance_suite_runs_on_a_backend_written_outside_agentfold() -> None:
    """What docs/backends.md tells a backend author to run, run on `tests/reversed_backend.py`."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "0",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "tests/test_conformance.py",
            "-k",
            "reversed",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "AGENTFOLD_TEST_BACKENDS": "tests.reversed_backend"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
