"""The conformance suite: every backend proves the same guarantees through the public store API."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import agentfold
from agentfold import ANY, NO_STREAM, STREAM_EXISTS, LogSnapshot, NewEvent, StreamSnapshot
from agentfold.blobs import BLOBS_KEY
from agentfold.errors import (
    BlobTooLarge,
    DuplicateEventId,
    EventsTrimmed,
    EventTooLarge,
    InvalidEventData,
    InvalidEventType,
    InvalidExpectedVersion,
    InvalidInput,
    InvalidStreamId,
    InvalidURL,
    StoreClosed,
    WrongExpectedVersion,
)
from agentfold.store import EventStore
from tests.backends import CONFORMANCE, CONFORMANCE_DURABLE, Backend, require_service


# The suite runs on every backend and on PostgreSQL's partitioned layout too (these override conftest's fixtures).
@pytest.fixture(params=CONFORMANCE, ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    require_service(chosen)
    return chosen


@pytest.fixture(params=CONFORMANCE_DURABLE, ids=lambda backend: backend.name)
def durable_backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    require_service(chosen)
    return chosen


def events(count: int, event_type: str = "Happened", **data: Any) -> list[NewEvent]:
    return [NewEvent(event_type, {"n": index, **data}) for index in range(count)]


async def stream_list(
    store: EventStore, stream_id: str, after_version: int = 0, *, blobs: bool = True
) -> list[agentfold.RecordedEvent]:
    if not blobs:
        return [event async for event in store.read_stream(stream_id, after_version=after_version, blobs=False)]
    return [event async for event in store.read_stream(stream_id, after_version=after_version)]


async def all_list(store: EventStore, **filters: Any) -> list[agentfold.RecordedEvent]:
    return [event async for event in store.read_all(**filters)]


# -- appending and reading ----------------------------------------------------------------------------------------


async def test_append_then_read_back(store: EventStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    new = [
        NewEvent("OrderPlaced", {"order_id": 42, "items": [{"sku": "a", "qty": 2}]}, {"agent_id": "intake"}),
        NewEvent("OrderPaid", {"amount": 12.5, "currency": "EUR", "note": "déjà vu ✓"}),
    ]
    result = await store.append("order-42", new, expected_version=NO_STREAM)
    assert result.version == 2
    assert result.position >= 2

    read = await stream_list(store, "order-42")
    assert [event.type for event in read] == ["OrderPlaced", "OrderPaid"]
    assert [event.version for event in read] == [1, 2]
    assert [event.id for event in read] == [event.id for event in new]
    assert read[0].data == {"order_id": 42, "items": [{"sku": "a", "qty": 2}]}
    assert read[0].metadata == {"agent_id": "intake"}
    assert read[1].metadata == {}
    assert read[1].data["note"] == "déjà vu ✓"
    assert read[1].position == result.position
    assert read[0].position < read[1].position
    assert all(event.stream_id == "order-42" for event in read)
    assert all(before <= event.recorded_at <= datetime.now(UTC) + timedelta(seconds=5) for event in read)
    assert read[0].recorded_at.tzinfo is not None
    assert await store.stream_version("order-42") == 2
    assert await store.head_position() == result.position


async def test_control_characters_commas_and_quotes_survive_concurrent_appends(store: EventStore) -> None:
    # Backends may pack a group of appends into joined strings or scripts; no character in data, metadata, names or
    # keys may split or merge events.
    awkward = "a\x1eb\x1fc\x00d,e;f\"g'h\\i\nj\u2028k"
    data = {awkward: awkward, "list": [awkward, ",", "\x1e"], "nested": {"\x1e": {"": ","}}}
    names = ["s,1", "s;2", 's"3', "s'4", "s 5", "s\\6"]
    results = await asyncio.gather(
        *(store.append(name, [NewEvent("T,y\"p'e", data, {awkward: name}), NewEvent("Two", {})]) for name in names)
    )
    assert len({result.position for result in results}) == len(names)
    for name in names:
        read = await stream_list(store, name)
        assert [(event.type, event.version) for event in read] == [("T,y\"p'e", 1), ("Two", 2)]
        assert read[0].data == data and read[0].metadata == {awkward: name}


async def test_missing_stream_has_version_zero_and_no_events(store: EventStore) -> None:
    assert await store.stream_version("nobody") == 0
    assert await stream_list(store, "nobody") == []
    assert await store.head_position() == 0
    assert await all_list(store) == []


async def test_read_stream_after_version_and_limit(store: EventStore) -> None:
    await store.append("s", events(10))
    assert [event.version for event in await stream_list(store, "s", after_version=7)] == [8, 9, 10]
    limited = [event.version async for event in store.read_stream("s", after_version=2, limit=3)]
    assert limited == [3, 4, 5]
    assert await stream_list(store, "s", after_version=10) == []


async def test_reads_page_through_long_streams(store: EventStore) -> None:
    store.page_size = 7
    await store.append("long", events(30))
    await store.append("other", events(5))
    await store.append("long", events(20))
    assert [event.version for event in await stream_list(store, "long")] == list(range(1, 51))
    positions = [event.position for event in await all_list(store)]
    assert len(positions) == 55
    assert positions == sorted(set(positions))
    pages = [page async for page in store.read_stream_pages("long")]
    assert all(len(page) <= 7 for page in pages)
    assert sum(len(page) for page in pages) == 50


@pytest.mark.parametrize("reads_ahead", [False, True])
async def test_paged_reads_with_and_without_read_ahead(store: EventStore, reads_ahead: bool) -> None:
    """Reading ahead changes when pages are asked for, never what a read returns: limits, a read abandoned after
    its first page (its page read ahead is dropped, not handed to a later read), and appends made after an
    abandoned read, which the next read sees."""
    store.reads_ahead = reads_ahead
    store.page_size = 4
    await store.append("long", events(18))
    assert [event.version for event in await stream_list(store, "long")] == list(range(1, 19))
    assert [event.version async for event in store.read_stream("long", after_version=3, limit=9)] == list(range(4, 13))
    assert [event.version async for event in store.read_stream("long", limit=8)] == list(range(1, 9))
    for _ in range(3):
        pages = store.read_stream_pages("long", after_version=12)
        async for page in pages:
            assert [event.version for event in page] == [13, 14, 15, 16]
            break
        await pages.aclose()
    await store.append("long", events(3))
    assert [event.version for event in await stream_list(store, "long", after_version=12)] == list(range(13, 22))
    assert [len(page) async for page in store.read_stream_pages("long")] == [4, 4, 4, 4, 4, 1]
    assert [len(page) async for page in store.read_stream_pages("long", limit=16)] == [4, 4, 4, 4]
    assert [len(page) async for page in store.read_stream_pages("long", after_version=1)] == [4, 4, 4, 4, 4]
    pages = store.read_stream_pages("long")
    async for page in pages:  # abandoned after more pages than a backend reads ahead
        if page[-1].version >= 20:
            break
    await pages.aclose()
    await store.append("long", events(2))
    assert [event.version for event in await stream_list(store, "long", after_version=16)] == list(range(17, 24))


async def test_read_stream_backwards_from_the_end(store: EventStore) -> None:
    """A backward read yields the newest events first; `limit` counts from the stream's end and `after_version`
    bounds it from below, across pages, with other streams interleaved."""
    store.page_size = 4
    await store.append("long", events(9))
    await store.append("other", events(3))
    await store.append("long", events(6))

    async def versions(**arguments: Any) -> list[int]:
        return [event.version async for event in store.read_stream("long", backwards=True, **arguments)]

    assert await versions() == list(range(15, 0, -1))
    assert await versions(limit=3) == [15, 14, 13]
    assert await versions(limit=9) == list(range(15, 6, -1))
    assert await versions(after_version=11) == [15, 14, 13, 12]
    assert await versions(after_version=10, limit=2) == [15, 14]
    assert await versions(after_version=15) == []
    assert await versions(limit=0) == []
    assert [len(page) async for page in store.read_stream_pages("long", backwards=True)] == [4, 4, 4, 3]
    assert [len(page) async for page in store.read_stream_pages("long", limit=6, backwards=True)] == [4, 2]
    newest = [event async for event in store.read_stream("long", limit=2, backwards=True)]
    assert [event.data["n"] for event in newest] == [5, 4]
    assert newest == (await stream_list(store, "long"))[-1:-3:-1]
    assert [event async for event in store.read_stream("nobody", backwards=True)] == []
    below = [event.version async for event in store.read_stream("long", backwards=True, before_version=11)]
    assert below == list(range(10, 0, -1))
    assert [e.version async for e in store.read_stream("long", 2, 3, backwards=True, before_version=8)] == [7, 6, 5]
    assert [e.version async for e in store.read_stream("long", backwards=True, before_version=1)] == []
    with pytest.raises(InvalidInput):
        store.read_stream_pages("long", before_version=3)
    with pytest.raises(InvalidInput):
        store.read_stream_pages("long", limit=-1, backwards=True)
    with pytest.raises(InvalidInput):
        store.read_stream_pages("long", backwards="yes")  # type: ignore[arg-type]


async def test_read_stream_backwards_stops_at_a_trimmed_prefix(store: EventStore) -> None:
    await store.append("s", events(10))
    assert await store.trim_stream("s", 7) == 6
    assert [event.version async for event in store.read_stream("s", backwards=True)] == [10, 9, 8, 7]
    assert [event.version async for event in store.read_stream("s", limit=2, backwards=True)] == [10, 9]


async def test_stream_records_decode_to_the_events_of_read_stream(store: EventStore) -> None:
    await store.append("s", events(5))
    await store.append("s", events(3))
    decoder = store.record_decoder
    decoded = [
        record if decoder is None else decoder.decode(record)
        async for page in store.read_stream_records("s", 2)
        for record in page
    ]
    # A page's records may come in any order; pages follow one another in version order.
    assert sorted(decoded, key=lambda event: event.version) == await stream_list(store, "s", after_version=2)
    with pytest.raises(InvalidInput):
        store.read_stream_records("s", -1)
    with pytest.raises(InvalidInput):
        await store.trim_stream("s", -1)
    assert await stream_list(store, "s") != []


async def test_read_all_in_global_order_with_filters(store: EventStore) -> None:
    await store.append("order-1", [NewEvent("OrderPlaced", {"n": 1})])
    await store.append("user-1", [NewEvent("UserJoined", {"n": 2})])
    await store.append("order-2", [NewEvent("OrderPlaced", {"n": 3}), NewEvent("OrderPaid", {"n": 4})])
    await store.append("order-1", [NewEvent("OrderPaid", {"n": 5})])

    everything = await all_list(store)
    assert [event.data["n"] for event in everything] == [1, 2, 3, 4, 5]
    assert [event.position for event in everything] == sorted(event.position for event in everything)

    paid = await all_list(store, types=["OrderPaid"])
    assert [event.data["n"] for event in paid] == [4, 5]
    orders = await all_list(store, stream_prefix="order-")
    assert [event.data["n"] for event in orders] == [1, 3, 4, 5]
    both = await all_list(store, types=["OrderPlaced"], stream_prefix="order-2")
    assert [event.data["n"] for event in both] == [3]
    after = await all_list(store, after_position=everything[2].position)
    assert [event.data["n"] for event in after] == [4, 5]
    limited = await all_list(store, limit=2)
    assert [event.data["n"] for event in limited] == [1, 2]


async def test_filtered_read_all_pages_past_many_non_matching_events(store: EventStore) -> None:
    store.page_size = 5
    await store.append("noise", events(23, "Noise"))
    await store.append("signal", [NewEvent("Signal", {"n": 1})])
    found = await all_list(store, types=["Signal"])
    assert [event.stream_id for event in found] == ["signal"]


FILTERS: list[dict[str, Any]] = [
    {"types": ["Paid"]},
    {"types": ["Placed", "Paid"]},
    {"types": ["Paid", "Paid"]},
    {"types": ["Rare", "Noise"]},
    {"types": []},
    {"types": ["Unknown"]},
    {"stream_prefix": "order-"},
    {"stream_prefix": "order-big-"},
    {"stream_prefix": "order-big-2"},
    {"stream_prefix": "ord"},
    {"stream_prefix": "plain"},
    {"stream_prefix": "noise-"},
    {"stream_prefix": "absent-"},
    {"types": ["Paid"], "stream_prefix": "order-big-"},
    {"types": ["Placed", "Rare"], "stream_prefix": "order-"},
    {"types": ["Noise"], "stream_prefix": "plain"},
    {"stream_prefix": "$worker-"},
    {"stream_prefix": "$worker-a"},
    {"stream_prefix": "$w"},
    {"types": ["Beat", "Stopped"], "stream_prefix": "$worker-"},
    {"types": ["Stopped"], "stream_prefix": "$worker-b"},
    {"stream_prefix": "$breaker-"},
]


def matches(event: agentfold.RecordedEvent, filters: dict[str, Any]) -> bool:
    types = filters.get("types")
    prefix = filters.get("stream_prefix")
    return (types is None or event.type in types) and (prefix is None or event.stream_id.startswith(prefix))


async def write_sparse_log(store: EventStore) -> list[agentfold.RecordedEvent]:
    """A log where most events match no filter: noise between a few orders, plain streams, a rare type, and
    streams of the categories agentfold's own bookkeeping uses (``$worker-``, which Redis indexes)."""
    for round_ in range(6):
        await store.append(f"noise-{round_}", events(40, "Noise"))
        await store.append(f"$worker-{'ab'[round_ % 2]}{round_ // 2}", [NewEvent("Beat", {"n": round_})])
        if round_ % 2:
            await store.append(f"$worker-b{round_ // 2}", [NewEvent("Stopped", {"n": round_})])
        await store.append(f"order-{round_}", [NewEvent("Placed", {"n": round_}), NewEvent("Paid", {"n": round_})])
        await store.append(f"order-big-{round_}", [NewEvent("Paid", {"n": round_})])
        await store.append("plain", [NewEvent("Noise", {"n": round_})])
        await store.append("plainer-x", events(3, "Noise"))
        if round_ % 3 == 0:
            await store.append("rare", [NewEvent("Rare", {"n": round_})])
    return await all_list(store)


@pytest.mark.parametrize("filters", FILTERS, ids=lambda filters: ",".join(f"{k}={v}" for k, v in filters.items()))
async def test_filtered_reads_among_many_non_matching_events_return_exactly_the_matches(
    store: EventStore, filters: dict[str, Any]
) -> None:
    everything = await write_sparse_log(store)
    head = await store.head_position()
    for page_size in (1, 4, 1000):
        store.page_size = page_size
        for after in (0, everything[len(everything) // 2].position):
            expected = [event for event in everything if event.position > after and matches(event, filters)]
            assert await all_list(store, after_position=after, **filters) == expected
    for limit in (1, 3, 50):
        after, collected = 0, []
        while True:
            page, scanned = await store.read_all_page(after, limit, filters.get("types"), filters.get("stream_prefix"))
            assert after <= scanned <= head
            assert len(page) <= limit
            assert all(after < event.position <= scanned for event in page)
            # the page holds every match up to the position scanned, in order
            assert page == [
                event for event in everything if after < event.position <= scanned and matches(event, filters)
            ]
            collected += page
            if scanned == after:
                break
            after = scanned
        assert after == head or not [event for event in everything if event.position > after]
        assert collected == [event for event in everything if matches(event, filters)]


async def test_nothing_appears_at_or_below_a_filtered_read_s_position_while_writers_append(store: EventStore) -> None:
    writers, appends = 8, 25
    seen: dict[str, list[agentfold.RecordedEvent]] = {"types": [], "category": [], "prefix": [], "own": []}
    queries: dict[str, dict[str, Any]] = {
        "types": {"types": ["Paid"], "stream_prefix": None},
        "category": {"types": None, "stream_prefix": "order-"},
        "prefix": {"types": None, "stream_prefix": "ord"},
        "own": {"types": ["Paid"], "stream_prefix": "$worker-"},
    }
    done = asyncio.Event()

    async def writer(task: int) -> None:
        for index in range(appends):
            await store.append(f"noise-{task}", events(3, "Noise"))
            await store.append(f"order-{task}", [NewEvent("Paid" if index % 2 else "Placed", {"n": index})])
            await store.append(f"$worker-{task}", [NewEvent("Paid" if index % 3 else "Beat", {"n": index})])

    async def follower(name: str) -> None:
        after = 0
        while True:
            finished = done.is_set()
            page, scanned = await store.read_all_page(after, 4, **queries[name])
            assert all(after < event.position <= scanned for event in page)
            seen[name] += page
            if finished and scanned == after:
                return
            after = scanned
            await asyncio.sleep(0)

    followers = [asyncio.create_task(follower(name)) for name in queries]
    await asyncio.gather(*(writer(task) for task in range(writers)))
    done.set()
    await asyncio.gather(*followers)
    everything = await all_list(store)
    for name, query in queries.items():
        filters = {key: value for key, value in query.items() if value is not None}
        assert seen[name] == [event for event in everything if matches(event, filters)], name


# -- expected version ---------------------------------------------------------------------------------------------


async def test_expected_version_no_stream(store: EventStore) -> None:
    await store.append("s", events(1), expected_version=NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as caught:
        await store.append("s", events(1), expected_version=NO_STREAM)
    assert caught.value.stream_id == "s"
    assert caught.value.expected is NO_STREAM
    assert caught.value.actual == 1
    assert await store.stream_version("s") == 1


async def test_expected_version_zero_means_no_stream(store: EventStore) -> None:
    await store.append("s", events(1), expected_version=0)
    with pytest.raises(WrongExpectedVersion):
        await store.append("s", events(1), expected_version=0)


async def test_expected_version_stream_exists(store: EventStore) -> None:
    with pytest.raises(WrongExpectedVersion) as caught:
        await store.append("s", events(1), expected_version=STREAM_EXISTS)
    assert caught.value.actual == 0
    assert await store.stream_version("s") == 0
    await store.append("s", events(1))
    result = await store.append("s", events(1), expected_version=STREAM_EXISTS)
    assert result.version == 2


async def test_expected_version_exact(store: EventStore) -> None:
    await store.append("s", events(3), expected_version=0)
    result = await store.append("s", events(2), expected_version=3)
    assert result.version == 5
    for wrong in (0, 3, 4, 6, 100):
        with pytest.raises(WrongExpectedVersion) as caught:
            await store.append("s", events(1), expected_version=wrong)
        assert (caught.value.expected, caught.value.actual) == (wrong, 5)
        assert "expected version" in str(caught.value)
    assert await store.stream_version("s") == 5
    assert len(await all_list(store)) == 5


async def test_expected_version_any(store: EventStore) -> None:
    await store.append("s", events(1), expected_version=ANY)
    result = await store.append("s", events(1), expected_version=ANY)
    assert result.version == 2


async def test_sixteen_tasks_racing_on_one_stream_with_exact_versions(store: EventStore) -> None:
    appends_per_task = 12
    conflicts = 0

    async def writer(task: int) -> None:
        nonlocal conflicts
        done = 0
        while done < appends_per_task:
            version = await store.stream_version("contended")
            try:
                await store.append(
                    "contended", [NewEvent("Wrote", {"task": task, "n": done})], expected_version=version
                )
            except WrongExpectedVersion:
                conflicts += 1
                continue
            done += 1

    await asyncio.gather(*(writer(task) for task in range(16)))
    read = await stream_list(store, "contended")
    assert [event.version for event in read] == list(range(1, 16 * appends_per_task + 1))
    written = sorted((event.data["task"], event.data["n"]) for event in read)
    assert written == sorted((task, n) for task in range(16) for n in range(appends_per_task))
    assert await store.stream_version("contended") == 16 * appends_per_task


async def test_concurrent_appends_to_many_streams_get_unique_positions(store: EventStore) -> None:
    results = await asyncio.gather(*(store.append(f"stream-{index % 8}", events(1 + index % 3)) for index in range(64)))
    everything = await all_list(store)
    positions = [event.position for event in everything]
    assert positions == sorted(set(positions))
    assert len(everything) == sum(1 + index % 3 for index in range(64))
    assert {result.position for result in results} <= set(positions)
    for stream in range(8):
        versions = [event.version for event in await stream_list(store, f"stream-{stream}")]
        assert versions == list(range(1, len(versions) + 1))


# -- atomic batches -----------------------------------------------------------------------------------------------


async def test_batch_is_atomic_when_one_event_is_bad(store: EventStore) -> None:
    await store.append("s", events(1))
    batch = [NewEvent("Ok", {"n": 1}), NewEvent("Ok", {"n": 2}), NewEvent("Bad", {"n": float("nan")})]
    with pytest.raises(InvalidEventData):
        await store.append("s", batch)
    assert await store.stream_version("s") == 1
    assert len(await all_list(store)) == 1


async def test_batch_is_atomic_on_version_conflict(store: EventStore) -> None:
    await store.append("s", events(2))
    with pytest.raises(WrongExpectedVersion):
        await store.append("s", events(50), expected_version=1)
    assert await store.stream_version("s") == 2
    assert len(await all_list(store)) == 2


async def test_large_batch_gets_consecutive_versions_and_positions(store: EventStore) -> None:
    result = await store.append("big", events(500))
    read = await stream_list(store, "big")
    assert result.version == 500
    assert [event.version for event in read] == list(range(1, 501))
    assert [event.position for event in read] == list(range(read[0].position, read[0].position + 500))


# -- idempotent retry ---------------------------------------------------------------------------------------------


async def test_retrying_the_same_batch_returns_the_original_result(store: EventStore) -> None:
    batch = events(3)
    first = await store.append("s", batch, expected_version=NO_STREAM)
    await store.append("other", events(2))
    await store.append("s", events(1))
    again = await store.append("s", batch, expected_version=NO_STREAM)
    assert again == first
    assert await store.stream_version("s") == 4
    assert len(await all_list(store)) == 6


async def test_retry_with_fresh_objects_carrying_the_same_ids(store: EventStore) -> None:
    ids = [uuid.uuid4() for _ in range(2)]
    first = await store.append("s", [NewEvent("A", {"n": 1}, id=ids[0]), NewEvent("B", {"n": 2}, id=ids[1])])
    again = await store.append("s", [NewEvent("A", {"n": 1}, id=str(ids[0])), NewEvent("B", {"n": 2}, id=ids[1])])
    assert again == first
    assert await store.stream_version("s") == 2


async def test_single_event_retry_in_the_middle_of_a_stream(store: EventStore) -> None:
    await store.append("s", events(2))
    middle = events(1)
    first = await store.append("s", middle)
    await store.append("s", events(2))
    assert await store.append("s", middle, expected_version=1) == first
    assert await store.stream_version("s") == 5


RETRY_CHANGES: dict[str, tuple[NewEvent, NewEvent]] = {
    "other data": (NewEvent("A", {"v": 1}), NewEvent("A", {"v": 2})),
    "other type": (NewEvent("A", {"v": 1}), NewEvent("B", {"v": 1})),
    "other metadata": (NewEvent("A", {}, {"m": 1}), NewEvent("A", {}, {"m": 2})),
    "metadata added": (NewEvent("A", {}), NewEvent("A", {}, {"m": 1})),
    "an int became a float": (NewEvent("A", {"v": 1}), NewEvent("A", {"v": 1.0})),
    "a bool became an int": (NewEvent("A", {"v": True}), NewEvent("A", {"v": 1})),
    "keys in another order": (NewEvent("A", {"a": 1, "b": 2}), NewEvent("A", {"b": 2, "a": 1})),
}


@pytest.mark.parametrize("change", list(RETRY_CHANGES))
async def test_a_retry_with_other_content_is_refused_naming_the_id(store: EventStore, change: str) -> None:
    original, changed = RETRY_CHANGES[change]
    event_id = uuid.uuid4()
    first = await store.append("s", [NewEvent(original.type, original.data, original.metadata, id=event_id)])
    with pytest.raises(DuplicateEventId) as caught:
        await store.append("s", [NewEvent(changed.type, changed.data, changed.metadata, id=event_id)])
    assert str(event_id) in str(caught.value)
    [kept] = await stream_list(store, "s")
    assert (kept.type, kept.data, kept.metadata, kept.version, kept.position) == (
        original.type,
        original.data,
        original.metadata or {},
        first.version,
        first.position,
    )


async def test_a_retry_from_another_trace_is_exact_and_other_metadata_beside_it_is_refused(store: EventStore) -> None:
    """Trace context (`traceparent`, `tracestate`) says where an append was made from, not what it wrote."""
    event_id = uuid.uuid4()
    trace_a = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    trace_b = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    first = await store.append("s", [NewEvent("A", {"n": 1}, {"by": "ann", "traceparent": trace_a}, id=event_id)])
    again = NewEvent("A", {"n": 1}, {"by": "ann", "traceparent": trace_b, "tracestate": "k=v"}, id=event_id)
    assert await store.append("s", [again]) == first
    assert await store.append("s", [NewEvent("A", {"n": 1}, {"by": "ann"}, id=event_id)]) == first
    with pytest.raises(DuplicateEventId):
        await store.append("s", [NewEvent("A", {"n": 1}, {"by": "bob", "traceparent": trace_a}, id=event_id)])
    [kept] = await stream_list(store, "s")
    assert kept.metadata == {"by": "ann", "traceparent": trace_a}


async def test_a_batch_retry_with_one_event_changed_is_refused(store: EventStore) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    first = await store.append("s", [NewEvent("A", {"n": n}, id=ids[n]) for n in range(3)])
    changed = [NewEvent("A", {"n": n if n != 2 else 9}, id=ids[n]) for n in range(3)]
    with pytest.raises(DuplicateEventId) as caught:
        await store.append("s", changed)
    assert str(ids[2]) in str(caught.value)
    assert await store.append("s", [NewEvent("A", {"n": n}, id=ids[n]) for n in range(3)]) == first
    assert await store.stream_version("s") == 3


async def test_an_exact_retry_with_empty_metadata_given_as_none_or_empty_is_the_same(store: EventStore) -> None:
    event_id = uuid.uuid4()
    first = await store.append("s", [NewEvent("A", {"x": [1, 2.5, "z", None]}, None, id=event_id)])
    assert await store.append("s", [NewEvent("A", {"x": [1, 2.5, "z", None]}, {}, id=event_id)]) == first
    assert await store.stream_version("s") == 1


async def test_a_retry_of_trimmed_events_cannot_be_checked_and_is_refused(store: EventStore) -> None:
    batch = events(2)
    await store.append("s", batch)
    await store.append("s", events(2))
    await store.trim_stream("s", 3)
    with pytest.raises(DuplicateEventId, match="trimmed"):
        await store.append("s", batch)
    assert await store.stream_version("s") == 4


async def test_id_reused_on_another_stream_is_refused(store: EventStore) -> None:
    batch = events(1)
    await store.append("s", batch)
    with pytest.raises(DuplicateEventId) as caught:
        await store.append("t", batch)
    assert caught.value.event_id == str(batch[0].id) or caught.value.event_id == batch[0].id
    assert await store.stream_version("t") == 0


async def test_partial_overlap_is_refused(store: EventStore) -> None:
    batch = events(3)
    await store.append("s", batch)
    with pytest.raises(DuplicateEventId):
        await store.append("s", [batch[0], *events(1)])
    with pytest.raises(DuplicateEventId):
        await store.append("s", [*events(1), batch[2]])
    with pytest.raises(DuplicateEventId):
        await store.append("s", batch[:2])
    with pytest.raises(DuplicateEventId):
        await store.append("s", batch[1:])
    with pytest.raises(DuplicateEventId):
        await store.append("s", [batch[1], batch[0], batch[2]])
    with pytest.raises(DuplicateEventId):
        await store.append("s", [*batch, *events(1)])
    assert await store.stream_version("s") == 3
    assert len(await all_list(store)) == 3


async def test_two_single_appends_are_not_one_batch(store: EventStore) -> None:
    first, second = events(1), events(1)
    await store.append("s", first)
    await store.append("s", second)
    with pytest.raises(DuplicateEventId):
        await store.append("s", [*first, *second])


async def test_repeated_id_within_one_batch_is_refused(store: EventStore) -> None:
    event = NewEvent("A", {})
    with pytest.raises(InvalidInput):
        await store.append("s", [event, event])
    assert await store.stream_version("s") == 0


async def test_concurrent_identical_retries_write_once(store: EventStore) -> None:
    batch = events(2)
    results = await asyncio.gather(
        *(store.append("s", batch, expected_version=NO_STREAM) for _ in range(8)), return_exceptions=True
    )
    successes = [result for result in results if not isinstance(result, BaseException)]
    assert successes, results
    assert all(result == successes[0] for result in successes)
    for failure in results:
        if isinstance(failure, BaseException):
            assert isinstance(failure, WrongExpectedVersion | DuplicateEventId), failure
    assert await store.stream_version("s") == 2


async def test_idempotency_and_data_survive_reopen(durable_url: str) -> None:
    batch = events(3)
    async with agentfold.connect(durable_url) as store:
        first = await store.append("s", batch, expected_version=NO_STREAM)
        await store.save_checkpoint("reader", 2)
    async with agentfold.connect(durable_url) as store:
        assert await store.append("s", batch, expected_version=NO_STREAM) == first
        assert await store.stream_version("s") == 3
        assert [event.data["n"] for event in await stream_list(store, "s")] == [0, 1, 2]
        assert await store.load_checkpoint("reader") == 2
        with pytest.raises(DuplicateEventId):
            await store.append("t", batch[:1])


# -- bad input ----------------------------------------------------------------------------------------------------


def _cyclic() -> dict[str, Any]:
    data: dict[str, Any] = {"a": []}
    data["a"].append(data)
    return data


def _deep(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    current = data
    for _ in range(levels):
        current["x"] = {}
        current = current["x"]
    return data


BAD_STREAM_IDS = ["", "x" * 201, "a\x00b", "a\nb", "tab\there", "\ud800", 42, None, b"bytes"]
BAD_TYPES = ["", "T" * 201, "A\x00", "line\nbreak", "\udcff", 7, None]
BAD_DATA: list[tuple[Any, type[Exception], str]] = [
    ({"x": float("nan")}, InvalidEventData, "data.x"),
    ({"x": [1, float("inf")]}, InvalidEventData, "data.x[1]"),
    ({"x": {"y": -float("inf")}}, InvalidEventData, "data.x.y"),
    ({"a": {"b": [1, object()]}}, InvalidEventData, "data.a.b[1]"),
    ({"when": datetime.now(UTC)}, InvalidEventData, "data.when"),
    ({"raw": b"bytes"}, InvalidEventData, "data.raw"),
    ({"s": {1, 2}}, InvalidEventData, "data.s"),
    ({1: "int key"}, InvalidEventData, "data"),
    ({"text": "bad \udc80 surrogate"}, InvalidEventData, "data.text"),
    (_cyclic(), InvalidEventData, "data.a[0]"),
    (_deep(10_000), InvalidEventData, "data.x.x"),
    (["not", "an", "object"], InvalidEventData, "data"),
    ("string", InvalidEventData, "data"),
    (None, InvalidEventData, "data"),
]


async def _assert_unchanged(store: EventStore, head: int) -> None:
    assert await store.head_position() == head
    assert await store.stream_version("victim") == 1


@pytest.fixture
async def seeded(store: EventStore) -> tuple[EventStore, int]:
    result = await store.append("victim", events(1))
    return store, result.position


@pytest.mark.parametrize("stream_id", BAD_STREAM_IDS, ids=repr)
async def test_bad_stream_ids_are_refused(seeded: tuple[EventStore, int], stream_id: Any) -> None:
    store, head = seeded
    with pytest.raises(InvalidStreamId) as caught:
        await store.append(stream_id, events(1))
    assert "stream id" in str(caught.value)
    with pytest.raises(InvalidStreamId):
        await stream_list(store, stream_id)
    await _assert_unchanged(store, head)


@pytest.mark.parametrize("event_type", BAD_TYPES, ids=repr)
async def test_bad_event_types_are_refused(seeded: tuple[EventStore, int], event_type: Any) -> None:
    store, head = seeded
    with pytest.raises(InvalidEventType) as caught:
        await store.append("victim", [NewEvent("Fine", {}), NewEvent(event_type, {})])
    assert "event type" in str(caught.value)
    await _assert_unchanged(store, head)


@pytest.mark.parametrize(("data", "error", "path"), BAD_DATA, ids=[path for _, _, path in BAD_DATA])
async def test_bad_data_is_refused_naming_the_path(
    seeded: tuple[EventStore, int], data: Any, error: type[Exception], path: str
) -> None:
    store, head = seeded
    with pytest.raises(error) as caught:
        await store.append("victim", [NewEvent("Fine", {}), NewEvent("Bad", data)])
    assert f"events[1].{path}" in str(caught.value)
    if data is not None:  # metadata=None means "no metadata"
        with pytest.raises(error):
            await store.append("victim", [NewEvent("Bad", {}, metadata=data)])
    await _assert_unchanged(store, head)


async def test_oversized_events_are_refused(seeded: tuple[EventStore, int]) -> None:
    """The limit counts the event without its blobs: many fields, each below the blob threshold, add up to more."""
    store, head = seeded
    fields = {f"f{index}": "x" * 30_000 for index in range(40)}  # 1.2 MB, no field of 64 KiB
    with pytest.raises(EventTooLarge) as caught:
        await store.append("victim", [NewEvent("Huge", fields)])
    assert caught.value.limit == 1024 * 1024
    assert not isinstance(caught.value, BlobTooLarge)
    with pytest.raises(EventTooLarge):  # metadata is never kept as a blob
        await store.append("victim", [NewEvent("Huge", {}, {"trace": "x" * (1024 * 1024 + 1)})])
    await _assert_unchanged(store, head)
    assert await store.blob_usage() == (0, 0)


async def test_event_size_limit_is_configurable(store_url: str) -> None:
    async with agentfold.connect(store_url, max_event_size=100) as store:
        await store.append("s", [NewEvent("Small", {"x": "y" * 50})])
        with pytest.raises(EventTooLarge):
            await store.append("s", [NewEvent("Big", {"x": "y" * 150})])
        assert await store.stream_version("s") == 1


@pytest.mark.parametrize("expected", [-1, "1", 1.5, True, None, 2**70, [1]], ids=repr)
async def test_bad_expected_versions_are_refused(seeded: tuple[EventStore, int], expected: Any) -> None:
    store, head = seeded
    with pytest.raises(InvalidExpectedVersion):
        await store.append("victim", events(1), expected_version=expected)
    await _assert_unchanged(store, head)


@pytest.mark.parametrize(
    "batch",
    [[], "text", NewEvent("A", {}), [{"type": "A", "data": {}}], [NewEvent("A", {}), None], None, 5],
    ids=["empty", "str", "bare-event", "dicts", "with-none", "none", "int"],
)
async def test_bad_batches_are_refused(seeded: tuple[EventStore, int], batch: Any) -> None:
    store, head = seeded
    with pytest.raises(InvalidInput):
        await store.append("victim", batch)
    await _assert_unchanged(store, head)


@pytest.mark.parametrize(
    "arguments",
    [{"after_position": -1}, {"after_position": "0"}, {"types": "OrderPaid"}, {"types": [""]}, {"limit": -5}],
    ids=repr,
)
async def test_bad_read_arguments_are_refused(seeded: tuple[EventStore, int], arguments: dict[str, Any]) -> None:
    store, head = seeded
    with pytest.raises(InvalidInput):
        await all_list(store, **arguments)
    with pytest.raises(InvalidInput):
        await stream_list(store, "victim", after_version=-1)
    await _assert_unchanged(store, head)


def test_event_ids_must_be_uuids() -> None:
    with pytest.raises(InvalidInput):
        NewEvent("A", {}, id="not-a-uuid")
    with pytest.raises(InvalidInput):
        NewEvent("A", {}, id=12345)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["mysql://root@localhost/db", "sqlite", "", "ftp://x", "memory:/"], ids=repr)
async def test_unknown_url_schemes_list_the_supported_ones(url: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        await agentfold.connect(url)
    assert "memory://" in str(caught.value)
    assert "sqlite://" in str(caught.value)


async def test_password_never_appears_in_url_errors() -> None:
    with pytest.raises(InvalidURL) as caught:
        await agentfold.connect("mysql://admin:hunter2@db.example/prod")
    assert "hunter2" not in str(caught.value)


async def test_closed_store_refuses_work(store_url: str) -> None:
    store = await agentfold.connect(store_url)
    await store.append("s", events(1))
    await store.close()
    await store.close()
    with pytest.raises(StoreClosed):
        await store.append("s", events(1))
    with pytest.raises(StoreClosed):
        await stream_list(store, "s")
    with pytest.raises(StoreClosed):
        await store.stream_version("s")


# -- records beside the log ---------------------------------------------------------------------------------------


async def test_snapshots_keep_the_newest(store: EventStore) -> None:
    assert await store.load_snapshot("s", "totals") is None
    await store.keep_snapshot(StreamSnapshot("s", "totals", 10, b'{"n":10}'))
    await store.keep_snapshot(StreamSnapshot("s", "totals", 5, b'{"n":5}'))
    assert await store.load_snapshot("s", "totals") == StreamSnapshot("s", "totals", 10, b'{"n":10}')
    await store.keep_snapshot(StreamSnapshot("s", "totals", 20, b'{"n":20}'))
    assert await store.load_snapshot("s", "totals") == StreamSnapshot("s", "totals", 20, b'{"n":20}')
    assert await store.load_snapshot("s", "other") is None
    assert await store.load_snapshot("t", "totals") is None
    assert await store.head_position() == 0


async def test_log_snapshots_keep_the_newest_position_apart_from_stream_snapshots(store: EventStore) -> None:
    assert await store.load_log_snapshot("registry") is None
    await store.keep_log_snapshot(LogSnapshot("registry", 40, b"at-40"))
    await store.keep_log_snapshot(LogSnapshot("registry", 7, b"at-7"))
    assert await store.load_log_snapshot("registry") == LogSnapshot("registry", 40, b"at-40")
    await store.keep_snapshot(StreamSnapshot("registry", "registry", 99, b"a stream's"))
    assert await store.load_log_snapshot("registry") == LogSnapshot("registry", 40, b"at-40")
    assert await store.load_log_snapshot("other") is None
    assert await store.head_position() == 0


async def test_bad_side_records_are_refused_before_any_write(store: EventStore) -> None:
    with pytest.raises(InvalidInput):
        await store.keep_snapshot(StreamSnapshot("s", "totals", -1, b"x"))
    with pytest.raises(InvalidInput):
        await store.keep_snapshot(StreamSnapshot("s", "", 1, b"x"))
    with pytest.raises(InvalidInput):
        await store.keep_log_snapshot(LogSnapshot("registry", 1, "not bytes"))  # type: ignore[arg-type]
    assert await store.load_snapshot("s", "totals") is None
    assert await store.load_log_snapshot("registry") is None


async def test_a_capped_stream_keeps_its_last_events_and_its_version(store: EventStore) -> None:
    for number in range(1, 11):
        result = await store.append_capped("beats", [NewEvent("Beat", {"n": number})], keep=3, trim_every=4)
        assert result.version == number
    kept = [event.data["n"] async for event in store.read_stream("beats")]
    assert kept == [6, 7, 8, 9, 10]  # trimmed at versions 4 and 8 to the last 3, then 9 and 10 added
    assert await store.stream_version("beats") == 10
    assert await store.head_position() == 10
    await store.append_capped("beats", events(2), keep=3, trim_every=4, keep_from=7)
    assert [event.version async for event in store.read_stream("beats")] == [7, 8, 9, 10, 11, 12]
    with pytest.raises(InvalidInput):
        await store.append_capped("beats", events(1), keep=0)
    assert await store.stream_version("beats") == 12


async def test_trimming_keeps_versions_and_positions(store: EventStore) -> None:
    await store.append("s", events(10))
    await store.append("t", events(3))
    head = await store.head_position()
    assert await store.trim_stream("s", 4) == 3
    assert await store.trim_stream("s", 4) == 0
    assert await store.stream_version("s") == 10
    assert [event.version for event in await stream_list(store, "s")] == list(range(4, 11))
    assert [event.version for event in await stream_list(store, "s", after_version=5)] == list(range(6, 11))
    assert len(await all_list(store)) == 10
    assert await store.head_position() == head
    result = await store.append("s", events(1), expected_version=10)
    assert result.version == 11
    assert result.position > head
    assert await store.trim_stream("nobody", 5) == 0


async def test_a_stream_trimmed_of_every_event_keeps_its_version(store: EventStore) -> None:
    await store.append("s", events(4))
    await store.append("s", events(2), expected_version=4)
    assert await store.trim_stream("s", 100) == 6
    assert await store.stream_version("s") == 6
    assert await stream_list(store, "s") == []
    with pytest.raises(WrongExpectedVersion):
        await store.append("s", events(1), NO_STREAM)
    assert (await store.append("s", events(1), expected_version=6)).version == 7
    assert await store.trim_stream("s", 8) == 1
    assert await store.stream_version("s") == 7
    assert (await store.append("s", events(2), expected_version=7)).version == 9
    assert [event.version for event in await stream_list(store, "s")] == [8, 9]


@pytest.mark.parametrize("prefix", ["$worker-", "$worker-a", "order-", "ord"])
async def test_filtered_reads_skip_trimmed_events_as_the_unfiltered_read_does(store: EventStore, prefix: str) -> None:
    """Heartbeat streams are trimmed as they grow (`append_capped`): a filtered read, whatever serves it (an index
    on Redis's ``$worker-`` category), holds exactly what the unfiltered read holds of the category."""
    store.page_size = 3
    for round_ in range(5):
        await store.append("$worker-a", events(4, "Beat", round=round_))
        await store.append("$worker-b", events(2, "Beat", round=round_))
        await store.append("order-1", events(3, "Paid", round=round_))
        await store.trim_stream("$worker-a", 4 * round_ + 3)
        await store.trim_stream("order-1", 3 * round_)
        everything = await all_list(store)
        for types in (None, ["Beat"], ["Paid"]):
            expected = [e for e in everything if e.stream_id.startswith(prefix) and (types is None or e.type in types)]
            assert await all_list(store, stream_prefix=prefix, types=types) == expected
    assert [event.version for event in await all_list(store, stream_prefix="$worker-a")] == list(range(19, 21))


async def test_checkpoints(store: EventStore) -> None:
    assert await store.load_checkpoint("emailer") is None
    await store.save_checkpoint("emailer", 5)
    await store.save_checkpoint("emailer", 9)
    await store.save_checkpoint("other", 1)
    assert await store.load_checkpoint("emailer") == 9
    assert await store.load_checkpoint("other") == 1


async def test_wait_for_append_returns_once_an_event_exists(store: EventStore) -> None:
    await store.wait_for_append(0, 0.01)
    head = await store.head_position()
    waiter = asyncio.create_task(store.wait_for_append(head, 30))
    await asyncio.sleep(0.05)
    await store.append("s", events(1))
    await asyncio.wait_for(waiter, 30)
    assert await store.head_position() > head


def test_event_ids_stay_unique_when_the_random_module_is_seeded() -> None:
    import random

    ids = set()
    for _ in range(100):
        random.seed(7)
        ids.add(NewEvent("A", {}).id)
    assert len(ids) == 100
    assert all(event_id.version == 7 for event_id in ids)


# -- large payloads: blobs ----------------------------------------------------------------------------------------

BIG = "p" * (5 * 1024 * 1024)  # a 5 MiB prompt: far above the 1 MiB event limit, kept as a blob
BIG_SIZE = len(BIG) + 2  # its JSON: the quotes too


async def test_a_5_mib_payload_round_trips_through_every_reader(store: EventStore) -> None:
    data = {"model": "m-1", "prompt": BIG, "tokens": 12}
    prompt = NewEvent("Prompted", data, {"agent_id": "writer"})
    result = await store.append("run-1", [NewEvent("Started", {}), prompt, NewEvent("Done", {"ok": True})])
    assert await store.blob_usage() == (1, BIG_SIZE)

    def check(event: agentfold.RecordedEvent) -> None:
        assert event.id == prompt.id and event.version == 2 and event.position == result.position - 1
        assert event.data == data and list(event.data) == ["model", "prompt", "tokens"]  # in place, in order
        assert event.metadata == {"agent_id": "writer"}

    check((await stream_list(store, "run-1"))[1])
    check([event async for event in store.read_stream("run-1", backwards=True)][1])
    check((await all_list(store))[1])
    check((await all_list(store, types=["Prompted"]))[0])
    page, _ = await store.read_all_page(0, 10)
    check(page[1])
    async with store.subscribe(types=["Prompted"]) as subscription:
        check(await anext(aiter(subscription)))

    stored = (await stream_list(store, "run-1", after_version=1, blobs=False))[0]  # as stored: a reference
    assert stored.data["prompt"] == {"$blob": stored.data["prompt"]["$blob"], "size": BIG_SIZE}
    assert stored.data["tokens"] == 12 and stored.metadata == {"agent_id": "writer", BLOBS_KEY: ["prompt"]}
    check((await store.load_blobs([stored]))[0])
    assert await store.head_position() == result.position


async def test_the_same_payload_is_stored_once_and_goes_with_its_last_event(store: EventStore) -> None:
    await store.append("a", [NewEvent("Prompted", {"prompt": BIG, "n": 1})])
    await store.append("b", [NewEvent("Prompted", {"prompt": BIG, "n": 2}), NewEvent("Prompted", {"prompt": BIG})])
    other = "q" * 200_000
    await store.append("a", [NewEvent("Answered", {"answer": other})])
    assert await store.blob_usage() == (2, BIG_SIZE + len(other) + 2)

    assert await store.trim_stream("a", 2) == 1  # one of three events referring to the prompt
    assert await store.blob_usage() == (2, BIG_SIZE + len(other) + 2)
    assert [event.data["prompt"] == BIG for event in await stream_list(store, "b")] == [True, True]
    assert await store.trim_stream("b", 3) == 2  # the last two
    assert await store.blob_usage() == (1, len(other) + 2)
    assert await stream_list(store, "b") == []
    assert (await stream_list(store, "a"))[0].data == {"answer": other}
    assert await store.trim_stream("a", 3) == 1
    assert await store.blob_usage() == (0, 0)
    assert await all_list(store) == []
    await store.append("c", [NewEvent("Prompted", {"prompt": BIG})])  # stored again after it went
    assert (await stream_list(store, "c"))[0].data["prompt"] == BIG
    assert await store.blob_usage() == (1, BIG_SIZE)


async def test_concurrent_appends_of_one_payload_store_it_once(store: EventStore) -> None:
    payload = "c" * 300_000
    results = await asyncio.gather(
        *(store.append(f"s{index}", [NewEvent("Prompted", {"prompt": payload, "n": index})]) for index in range(8))
    )
    assert len({result.position for result in results}) == 8
    assert await store.blob_usage() == (1, len(payload) + 2)
    assert [event.data for event in await all_list(store)] == [
        {"prompt": payload, "n": index} for index in sorted(range(8), key=lambda index: results[index].position)
    ]


async def test_a_retried_append_with_blobs_writes_nothing_twice(store: EventStore) -> None:
    batch = [NewEvent("Prompted", {"prompt": BIG}), NewEvent("Answered", {"answer": "a" * 100_000})]
    first = await store.append("s", batch)
    usage = await store.blob_usage()
    assert await store.append("s", batch) == first
    assert await asyncio.gather(*(store.append("s", batch) for _ in range(4))) == [first] * 4
    assert await store.head_position() == first.position
    assert await store.blob_usage() == usage
    changed = [NewEvent("Prompted", {"prompt": BIG + "!"}, id=batch[0].id), batch[1]]
    with pytest.raises(DuplicateEventId):
        await store.append("s", changed)
    medium = [NewEvent("Answered", {"answer": "m" * 200_000, "n": 1})]
    second = await store.append("t", medium)
    usage = await store.blob_usage()
    threshold = store.backend.blob_threshold
    store.backend.blob_threshold = 10**6  # the same event, no longer split: still the same append
    assert await store.append("t", medium) == second
    inline = [NewEvent("Answered", {"answer": "i" * 200_000})]
    third = await store.append("t", inline)
    store.backend.blob_threshold = threshold  # stored whole, retried split: still the same append
    assert await store.append("t", inline) == third
    assert await store.blob_usage() == usage
    assert await store.head_position() == third.position


async def test_a_blob_above_max_blob_size_is_refused_naming_the_field(store_url: str) -> None:
    async with agentfold.connect(store_url, max_blob_size=1024 * 1024) as store:
        await store.append("s", [NewEvent("Prompted", {"prompt": "p" * 1_000_000})])  # just below
        usage = await store.blob_usage()
        batch = [NewEvent("Fine", {}), NewEvent("ToolOutput", {"stdout": "o" * 2_000_000, "code": 0})]
        with pytest.raises(BlobTooLarge) as caught:
            await store.append("s", batch)
        assert caught.value.field == "stdout" and caught.value.path == "events[1].data.stdout"
        assert caught.value.size == 2_000_002 and caught.value.limit == 1024 * 1024
        assert "events[1].data.stdout" in str(caught.value) and "max_blob_size" in str(caught.value)
        assert isinstance(caught.value, EventTooLarge) and isinstance(caught.value, InvalidInput)
        assert await store.stream_version("s") == 1 and await store.blob_usage() == usage


async def test_the_blobs_key_is_agentfolds_own(seeded: tuple[EventStore, int]) -> None:
    store, head = seeded
    with pytest.raises(InvalidEventData) as caught:
        await store.append("victim", [NewEvent("Sneaky", {}, {BLOBS_KEY: ["x"]})])
    assert caught.value.path == f"events[0].metadata.{BLOBS_KEY}"
    await _assert_unchanged(store, head)


async def test_small_fields_stay_in_the_event(store: EventStore) -> None:
    await store.append("s", [NewEvent("Mixed", {"small": "s" * 60_000, "big": "b" * 70_000})])
    stored = (await stream_list(store, "s", blobs=False))[0]
    assert stored.data["small"] == "s" * 60_000 and stored.metadata == {BLOBS_KEY: ["big"]}
    assert await store.blob_usage() == (1, 70_002)


async def test_blobs_of_events_trimmed_after_they_were_read_are_not_handed_over(store: EventStore) -> None:
    await store.append("s", [NewEvent("Prompted", {"prompt": BIG}), NewEvent("Small", {})])
    read = await stream_list(store, "s", blobs=False)
    await store.trim_stream("s", 2)
    with pytest.raises(EventsTrimmed) as caught:
        await store.load_blobs(read)
    assert caught.value.retryable and caught.value.version == 1
    assert [event.version for event in await stream_list(store, "s")] == [2]  # a new read starts after the trim


class _Usage(agentfold.Projection[dict[str, int]]):
    """Reads the small fields of prompts (never their prompt) and the length of each answer."""

    name = "usage"

    def initial(self) -> dict[str, int]:
        return {"tokens": 0, "prompt_bytes": 0, "answer_chars": 0}

    @agentfold.handles("Prompted", blobs=False)
    def prompted(self, state: dict[str, int], event: agentfold.RecordedEvent) -> dict[str, int]:
        state["tokens"] += event.data["tokens"]
        state["prompt_bytes"] += event.data["prompt"]["size"]  # the reference says how big it is
        return state

    @agentfold.handles("Answered")
    def answered(self, state: dict[str, int], event: agentfold.RecordedEvent) -> dict[str, int]:
        state["answer_chars"] += len(event.data["answer"])
        return state


class _CountingStore(EventStore):
    """The store over the same backend, counting the events whose blobs it is asked to load."""

    loaded = 0

    async def load_blobs(self, events: Any) -> list[agentfold.RecordedEvent]:
        self.loaded += len(events)
        return await super().load_blobs(events)


async def test_a_fold_loads_the_blobs_of_the_events_whose_handler_wants_them_only(store: EventStore) -> None:
    answer = "a" * 100_000
    for index in range(3):
        await store.append(
            "chat",
            [
                NewEvent("Prompted", {"prompt": BIG, "tokens": 10 + index}),
                NewEvent("ToolOutput", {"stdout": "o" * 200_000}),  # no handler: skipped unread
                NewEvent("Answered", {"answer": answer}),
            ],
        )
    counting = _CountingStore(store.backend)  # not closed here: the fixture closes the backend
    folded = await agentfold.fold(counting, "chat", _Usage)
    assert folded.state == {"tokens": 33, "prompt_bytes": 3 * BIG_SIZE, "answer_chars": 3 * len(answer)}
    assert folded.events_read == 9
    assert counting.loaded == 3  # the answers; not one prompt, not one tool output


async def test_pages_of_large_events_are_loaded_in_batches(store: EventStore) -> None:
    """A page whose blobs add up to more than `blob_batch_bytes` comes in several lists (stream reads) or ends after
    the first batch (`read_all_page`, its scan position the batch's last event): nothing lost, repeated or reordered."""
    store.blob_batch_bytes = 250_000
    batch = [NewEvent("Small", {"n": 0})]
    batch += [NewEvent("Output", {"text": str(n) * 100_000, "n": n}) for n in range(1, 6)]
    batch += [NewEvent("Small", {"n": 6})]
    result = await store.append("s", batch)
    first = result.position - 6
    assert [[event.data["n"] for event in page] async for page in store.read_stream_pages("s")] == [
        [0, 1, 2],
        [3, 4],
        [5, 6],
    ]
    backwards = [[event.data["n"] for event in page] async for page in store.read_stream_pages("s", backwards=True)]
    assert backwards == [[6, 5, 4], [3, 2], [1, 0]]
    page, scanned = await store.read_all_page(0, 100)
    assert [event.data["n"] for event in page] == [0, 1, 2] and scanned == first + 2
    page, scanned = await store.read_all_page(scanned, 100, types=["Output"])
    assert [event.data["n"] for event in page] == [3, 4] and scanned == first + 4
    assert [event.data["n"] for event in await all_list(store)] == list(range(7))
    assert all(
        event.data["text"] == str(event.data["n"]) * 100_000 for event in await all_list(store, types=["Output"])
    )
    with pytest.raises(InvalidInput):
        store.blob_batch_bytes = 0
