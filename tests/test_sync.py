"""`agentfold.sync`: the blocking API passes the conformance suite's main cases on every backend, raises the same
errors, and runs workflows, all from threads without an event loop of their own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import agentfold.sync
from agentfold import ANY, NO_STREAM, NewEvent, RecordedEvent
from agentfold.errors import InvalidInput, WorkflowCancelled, WrongExpectedVersion
from agentfold.events import AppendResult, ExpectedVersion
from agentfold.runtime import Runtime, WorkflowContext
from tests import test_conformance as conformance


class FromAThread:
    """The conformance cases' view of a `SyncStore`: each call is made, blocking, from a thread without a loop."""

    def __init__(self, store: agentfold.sync.SyncStore) -> None:
        self.store = store

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion = ANY
    ) -> AppendResult:
        return await asyncio.to_thread(self.store.append, stream_id, events, expected_version)

    async def stream_version(self, stream_id: str) -> int:
        return await asyncio.to_thread(self.store.stream_version, stream_id)

    async def head_position(self) -> int:
        return await asyncio.to_thread(self.store.head_position)

    async def read_stream(
        self, stream_id: str, after_version: int = 0, limit: int | None = None
    ) -> AsyncGenerator[RecordedEvent, None]:
        for event in await asyncio.to_thread(lambda: list(self.store.read_stream(stream_id, after_version, limit))):
            yield event

    async def read_all(self, **filters: Any) -> AsyncGenerator[RecordedEvent, None]:
        for event in await asyncio.to_thread(lambda: list(self.store.read_all(**filters))):
            yield event


MAIN_CASES: list[Callable[[Any], Awaitable[None]]] = [
    conformance.test_append_then_read_back,
    conformance.test_missing_stream_has_version_zero_and_no_events,
    conformance.test_read_stream_after_version_and_limit,
    conformance.test_read_all_in_global_order_with_filters,
    conformance.test_expected_version_no_stream,
    conformance.test_expected_version_exact,
    conformance.test_expected_version_stream_exists,
    conformance.test_batch_is_atomic_on_version_conflict,
    conformance.test_retrying_the_same_batch_returns_the_original_result,
    conformance.test_single_event_retry_in_the_middle_of_a_stream,
    conformance.test_id_reused_on_another_stream_is_refused,
]


@pytest.mark.parametrize("case", MAIN_CASES, ids=lambda case: case.__name__.removeprefix("test_"))
async def test_the_sync_store_passes_the_main_conformance_cases(
    store_url: str, case: Callable[[Any], Awaitable[None]]
) -> None:
    store = await asyncio.to_thread(agentfold.sync.connect, store_url)
    try:
        await case(FromAThread(store))
    finally:
        await asyncio.to_thread(store.close)


def test_plain_threads_append_and_read_with_the_same_errors(tmp_path: Path) -> None:
    with agentfold.sync.connect(f"sqlite:///{tmp_path / 'sync.db'}") as store:
        first = store.append("order-1", [NewEvent("OrderPlaced", {"total": 9.5})], expected_version=NO_STREAM)
        with pytest.raises(WrongExpectedVersion) as caught:
            store.append("order-1", [NewEvent("OrderPlaced", {"total": 1})], expected_version=NO_STREAM)
        assert (caught.value.expected, caught.value.actual) == (NO_STREAM, 1)

        def append_from_a_thread(number: int) -> None:
            store.append("order-1", [NewEvent("ItemAdded", {"n": number})])

        threads = [threading.Thread(target=append_from_a_thread, args=(number,)) for number in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.stream_version("order-1") == 9
        assert [event.version for event in store.read_stream("order-1")] == list(range(1, 10))
        assert sorted(event.data["n"] for event in store.read_all(types=["ItemAdded"])) == list(range(8))
        reader = store.read_all(limit=3)
        assert next(reader).position == first.position
        reader.close()  # an iterator left early releases its read
        assert store.head_position() == 9


def test_a_sync_client_runs_approves_and_cancels_workflows(tmp_path: Path) -> None:
    runtime = Runtime()

    def add_tax(total: float) -> float:
        return round(total * 1.2, 2)

    @runtime.workflow(name="checkout")
    async def checkout(ctx: WorkflowContext, total: float) -> dict[str, Any]:
        with_tax = await ctx.step("tax", add_tax, total)
        approval = await ctx.wait_for("approval")
        return {"total": with_tax, "by": approval["by"]}

    with (
        agentfold.sync.connect(f"sqlite:///{tmp_path / 'sync.db'}") as store,
        agentfold.sync.worker(runtime, store),
    ):
        client = agentfold.sync.SyncClient(runtime, store)
        assert client.start(checkout, 10.0, workflow_id="c-1") == "c-1"
        client.signal("c-1", "approval", {"by": "ann"})
        assert client.result("c-1", timeout=30) == {"total": 12.0, "by": "ann"}
        client.start("checkout", 5.0, workflow_id="c-2")
        client.cancel("c-2")
        with pytest.raises(WorkflowCancelled):
            client.result("c-2", timeout=30)
        assert client.state("c-2") == "Cancelled"


async def test_calling_it_inside_an_event_loop_is_refused() -> None:
    with pytest.raises(InvalidInput, match="use the async API"):
        agentfold.sync.connect("memory://")
