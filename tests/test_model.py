"""A hypothesis state machine drives each backend and a plain-Python model with the same calls; they must agree."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

import agentfold
from agentfold import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, NewEvent
from agentfold.errors import DuplicateEventId, WrongExpectedVersion
from agentfold.events import ExpectedVersion
from tests.backends import AVAILABLE, Backend, require_service

STREAMS = st.sampled_from(["a", "b", "c"])
MODES = ["any", "no", "exists", "exact", "stale"]


class StoreModel:
    """The store's rules in a few lines: streams of ids, batches remembered by their first id."""

    def __init__(self) -> None:
        self.streams: dict[str, list[str]] = {}
        self.log: list[str] = []
        self.batches: dict[str, tuple[str, list[str], int]] = {}  # first id -> (stream, ids, last version)

    def version(self, stream_id: str) -> int:
        return len(self.streams.get(stream_id, []))

    def append(self, stream_id: str, ids: list[str], expected: ExpectedVersion) -> str | int:
        """The new version, or the name of the error the store must raise."""
        known = [event_id for event_id in ids if any(event_id in batch[1] for batch in self.batches.values())]
        if known:
            original = self.batches.get(ids[0])
            if original and original[0] == stream_id and original[1] == ids:
                return original[2]
            return "DuplicateEventId"
        current = self.version(stream_id)
        if (
            (expected is NO_STREAM and current != 0)
            or (expected is STREAM_EXISTS and current == 0)
            or (isinstance(expected, int) and expected != current)
        ):
            return "WrongExpectedVersion"
        self.streams.setdefault(stream_id, []).extend(ids)
        self.log.extend(ids)
        self.batches[ids[0]] = (stream_id, ids, current + len(ids))
        return current + len(ids)


class StoreMachine(RuleBasedStateMachine):
    url_factory: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tmp = tempfile.TemporaryDirectory()
        self.backend: Backend = type(self).backend_used
        self.url = self.backend.make_url(Path(self.tmp.name))
        self.store = self.runner.run(self._open())
        self.model = StoreModel()
        self.results: dict[str, AppendResult] = {}

    batches = Bundle("batches")

    async def _open(self) -> Any:
        return await agentfold.connect(self.url)

    def _append(self, stream_id: str, new: list[NewEvent], expected: ExpectedVersion) -> None:
        ids = [str(event.id) for event in new]
        outcome = self.model.append(stream_id, ids, expected)
        try:
            result = self.runner.run(self.store.append(stream_id, new, expected_version=expected))
        except (WrongExpectedVersion, DuplicateEventId) as error:
            assert type(error).__name__ == outcome
            return
        assert result.version == outcome
        if ids[0] in self.results:
            assert result == self.results[ids[0]]
        self.results[ids[0]] = result

    @rule(
        target=batches,
        stream_id=STREAMS,
        size=st.integers(1, 3),
        mode=st.sampled_from(["any", "no", "exists", "exact", "stale"]),
    )
    def append(self, stream_id: str, size: int, mode: str) -> tuple[str, list[NewEvent]]:
        current = self.model.version(stream_id)
        expected: ExpectedVersion = {
            "any": ANY,
            "no": NO_STREAM,
            "exists": STREAM_EXISTS,
            "exact": current,
            "stale": max(0, current - 1) if current else current + 1,
        }[mode]
        new = [NewEvent("Happened", {"size": size, "k": k}) for k in range(size)]
        self._append(stream_id, new, expected)
        return stream_id, new

    @rule(batch=batches)
    def retry(self, batch: tuple[str, list[NewEvent]]) -> None:
        self._append(batch[0], batch[1], ANY)

    @rule(batch=batches, stream_id=STREAMS)
    def reuse_elsewhere(self, batch: tuple[str, list[NewEvent]], stream_id: str) -> None:
        self._append(stream_id, batch[1], ANY)

    @rule(batch=batches)
    def partial_retry(self, batch: tuple[str, list[NewEvent]]) -> None:
        self._append(batch[0], [*batch[1], NewEvent("Extra", {})], ANY)

    @invariant()
    def agrees_with_model(self) -> None:
        async def read() -> tuple[list[Any], dict[str, int]]:
            everything = [event async for event in self.store.read_all()]
            versions = {stream: await self.store.stream_version(stream) for stream in "abc"}
            return everything, versions

        everything, versions = self.runner.run(read())
        assert [str(event.id) for event in everything] == self.model.log
        assert versions == {stream: self.model.version(stream) for stream in "abc"}
        positions = [event.position for event in everything]
        assert positions == sorted(set(positions))

    def teardown(self) -> None:
        self.runner.run(self.store.close())
        self.runner.close()
        self.backend.cleanup(self.url)
        self.tmp.cleanup()


def _machine_for(backend: Backend) -> Any:
    examples = 60 if backend.name in ("memory", "sqlite") else 20
    machine = type(f"StoreMachine_{backend.name}", (StoreMachine,), {"backend_used": backend})
    machine.TestCase.settings = settings(max_examples=examples, stateful_step_count=25, deadline=None)
    return machine


@pytest.mark.parametrize("backend", AVAILABLE, ids=lambda backend: backend.name)
def test_store_agrees_with_model(backend: Backend) -> None:
    require_service(backend)
    machine = _machine_for(backend)
    machine.TestCase("runTest").runTest()
