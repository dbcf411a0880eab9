"""Blobs beyond the conformance suite: reads that race a trim, stored references agentfold did not write, and the
splitting rule itself. The racing backends are the memory backend with a trim run at a chosen moment of a read."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

import msgspec
import pytest

import agentfold
from agentfold import EventStore, NewEvent, RecordedEvent
from agentfold.backends.memory import MemoryBackend
from agentfold.blobs import BLOB_KEY, BLOBS_KEY, BlobPolicy, joined, references, split_data, with_contents
from agentfold.encoding import encode_events
from agentfold.errors import EventsTrimmed, HistoryTrimmed, StoreCorrupted

BIG = "p" * 100_000


class TrimsDuringReads(MemoryBackend):
    """The memory backend trimming stream `s` below `before` right after it hands out a page (once), as another
    process's trim would land between a read and the loading of its blobs."""

    def __init__(self, before: int) -> None:
        super().__init__()
        self.before = before
        self.pending = True

    async def _trim_once(self) -> None:
        if self.pending:
            self.pending = False
            await self.trim_stream("s", self.before)

    async def read_all_page(
        self, after_position: int, limit: int, types: tuple[str, ...] | None, stream_prefix: str | None
    ) -> tuple[list[RecordedEvent], int]:
        page = await super().read_all_page(after_position, limit, types, stream_prefix)
        await self._trim_once()
        return page

    async def read_stream_records(
        self, stream_id: str, after_version: int, limit: int | None
    ) -> AsyncGenerator[Sequence[RecordedEvent], None]:
        async for page in super().read_stream_records(stream_id, after_version, limit):
            await self._trim_once()
            yield page


async def test_a_read_all_page_that_meets_a_trim_reads_the_page_again() -> None:
    async with EventStore(TrimsDuringReads(before=3)) as store:
        await store.append("s", [NewEvent("Prompted", {"prompt": BIG + str(n), "n": n}) for n in range(1, 5)])
        await store.append("t", [NewEvent("Prompted", {"prompt": BIG + "5", "n": 5})])
        page, scanned = await store.read_all_page(0, 10)
        assert [(event.stream_id, event.data["n"]) for event in page] == [("s", 3), ("s", 4), ("t", 5)]
        assert scanned == 5 and all(event.data["prompt"] == BIG + str(event.data["n"]) for event in page)


async def test_a_stream_read_that_meets_a_trim_raises_events_trimmed_and_a_fold_history_trimmed() -> None:
    async with EventStore(TrimsDuringReads(before=3)) as store:
        await store.append("s", [NewEvent("Prompted", {"prompt": BIG + str(n)}) for n in range(1, 5)])
        with pytest.raises(EventsTrimmed) as caught:
            _ = [event async for event in store.read_stream("s")]
        assert caught.value.stream_id == "s" and caught.value.version == 1
        assert [event.version async for event in store.read_stream("s")] == [3, 4]  # read again: after the trim

    class Count(agentfold.Projection[int]):
        name = "count"

        def initial(self) -> int:
            return 0

        @agentfold.handles("Prompted")
        def prompted(self, state: int, event: RecordedEvent) -> int:
            return state + len(event.data["prompt"])

    async with EventStore(TrimsDuringReads(before=3)) as store:
        await store.append("s", [NewEvent("Prompted", {"prompt": BIG + str(n)}) for n in range(1, 5)])
        with pytest.raises(HistoryTrimmed) as trimmed:
            await agentfold.project(store, "s", Count)
        assert trimmed.value.needed_from == 1


def stored(data: dict[str, Any], metadata: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent("s", 1, 1, "T", data, metadata, "00000000-0000-0000-0000-000000000001", 0)


DIGEST = "a" * 64
REFERENCE: dict[str, Any] = {BLOB_KEY: DIGEST, "size": 3}


@pytest.mark.parametrize(
    ("data", "metadata"),
    [
        ({"x": REFERENCE}, {BLOBS_KEY: "x"}),
        ({"x": REFERENCE}, {BLOBS_KEY: []}),
        ({"x": REFERENCE}, {BLOBS_KEY: [1]}),
        ({"x": REFERENCE}, {BLOBS_KEY: ["y"]}),
        ({"x": "plain"}, {BLOBS_KEY: ["x"]}),
        ({"x": {BLOB_KEY: "short", "size": 3}}, {BLOBS_KEY: ["x"]}),
        ({"x": {BLOB_KEY: "a" * 64, "size": -1}}, {BLOBS_KEY: ["x"]}),
        ({"x": {BLOB_KEY: "a" * 64, "size": 3, "more": 1}}, {BLOBS_KEY: ["x"]}),
    ],
    ids=repr,
)
def test_references_agentfold_did_not_write_are_store_corrupted(data: dict[str, Any], metadata: dict[str, Any]) -> None:
    with pytest.raises(StoreCorrupted, match="refers to blobs agentfold did not write"):
        references(stored(data, metadata))


@pytest.mark.parametrize(("content", "why"), [(b'"ab"', "holds 4 bytes, not 3"), (b"{x}", "is not JSON")])
def test_a_blob_that_does_not_match_its_reference_is_store_corrupted(content: bytes, why: str) -> None:
    event = stored({"x": REFERENCE}, {BLOBS_KEY: ["x"]})
    with pytest.raises(StoreCorrupted, match=why):
        with_contents(event, {DIGEST: content})
    assert with_contents(event, {}) is None  # missing: the caller tells a trim from damage
    whole = with_contents(event, {DIGEST: b'"a"'})
    assert whole is not None and whole.data == {"x": "a"} and whole.metadata == {}


def test_only_top_level_fields_of_at_least_the_threshold_become_blobs() -> None:
    policy = BlobPolicy(threshold=1000, max_size=10_000)
    data = {"small": "s" * 900, "big": ["b" * 2000], "nested": {"deep": "d" * 990}, "again": ["b" * 2000]}
    encoded = msgspec.json.encode(data)
    split = split_data(data, encoded, policy, "T", "events[0]")
    assert split is not None
    stored_data, fields, blobs = split
    assert fields == ["big", "nested", "again"]
    assert len(blobs) == 2  # "big" and "again" hold the same content: one blob
    kept = msgspec.json.decode(stored_data)
    assert kept["small"] == "s" * 900 and list(kept) == list(data)
    assert kept["big"] == kept["again"] == {BLOB_KEY: blobs[0].digest, "size": len(blobs[0].content)}
    assert split_data({"a": "x" * 10}, msgspec.json.encode({"a": "x" * 10}), policy, "T", "events[0]") is None
    (event,) = encode_events([NewEvent("T", data, {"k": 1})], 1_000_000, policy)
    assert msgspec.json.decode(event.metadata) == {"k": 1, BLOBS_KEY: fields}
    assert joined(event.data, event.metadata, event.blobs) == (encoded, b'{"k":1}')
