"""Projections on every backend: folding, time travel, snapshots, upcasting and trimming behind snapshots."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import msgspec
import pytest

from agentfold import (
    SCHEMA_VERSION,
    HandlerFailed,
    HistoryTrimmed,
    InvalidProjection,
    NewEvent,
    Projection,
    RecordedEvent,
    StreamSnapshot,
    TrimRefused,
    UnhandledEvent,
    Upcasters,
    UpcastFailed,
    fold,
    handles,
    project,
    save_snapshot,
    trim,
)
from agentfold.errors import InvalidInput, StoreCorrupted

# private: _fold_records is the one fold loop, driven here with pages no backend would hand out
from agentfold.projection import _fold_records, snapshot_name
from agentfold.store import EventStore


class Order(msgspec.Struct):
    items: dict[str, int] = {}
    total_cents: int = 0
    status: str = "open"
    notes: tuple[str, ...] = ()


class OrderProjection(Projection[Order]):
    name = "order"

    def initial(self) -> Order:
        return Order()

    @handles("ItemAdded")
    def item_added(self, state: Order, event: RecordedEvent) -> Order:
        sku = event.data["sku"]
        items = {**state.items, sku: state.items.get(sku, 0) + event.data["quantity"]}
        total = state.total_cents + event.data["quantity"] * event.data["price_cents"]
        return msgspec.structs.replace(state, items=items, total_cents=total)

    @handles("ItemRemoved")
    def item_removed(self, state: Order, event: RecordedEvent) -> Order:
        items = dict(state.items)
        items.pop(event.data["sku"], None)
        return msgspec.structs.replace(state, items=items, total_cents=state.total_cents - event.data["refund_cents"])

    @handles("NoteAdded")
    def note_added(self, state: Order, event: RecordedEvent) -> Order:
        return msgspec.structs.replace(state, notes=(*state.notes, event.data["text"]))

    @handles("OrderPlaced", "OrderShipped")
    def status_changed(self, state: Order, event: RecordedEvent) -> Order:
        return msgspec.structs.replace(state, status="placed" if event.type == "OrderPlaced" else "shipped")


class SnapshottingOrders(OrderProjection):
    snapshot_every = 3


class StrictOrders(OrderProjection):
    name = "order-strict"
    strict = True


def added(sku: str, quantity: int = 1, price_cents: int = 100) -> NewEvent:
    return NewEvent("ItemAdded", {"sku": sku, "quantity": quantity, "price_cents": price_cents})


def order_events() -> list[NewEvent]:
    """Seven events of one order (fresh ids on each call, so they can go to several streams)."""
    return [
        added("apple", 2, 50),
        added("pear", 1, 80),
        NewEvent("NoteAdded", {"text": "leave at the door"}),
        NewEvent("CouponViewed", {"code": "X"}),
        NewEvent("ItemRemoved", {"sku": "pear", "refund_cents": 80}),
        added("fig", 3, 120),
        NewEvent("OrderPlaced", {}),
    ]


def expected_order(count: int) -> Order:
    """The state after the first `count` of order_events(), computed by hand."""
    states = [
        Order(),
        Order({"apple": 2}, 100),
        Order({"apple": 2, "pear": 1}, 180),
        Order({"apple": 2, "pear": 1}, 180, notes=("leave at the door",)),
        Order({"apple": 2, "pear": 1}, 180, notes=("leave at the door",)),
        Order({"apple": 2}, 100, notes=("leave at the door",)),
        Order({"apple": 2, "fig": 3}, 460, notes=("leave at the door",)),
        Order({"apple": 2, "fig": 3}, 460, "placed", ("leave at the door",)),
    ]
    return states[count]


async def append_one_by_one(store: EventStore, stream_id: str, events: list[NewEvent]) -> list[RecordedEvent]:
    for event in events:
        await store.append(stream_id, [event])
    return [event async for event in store.read_stream(stream_id)]


async def all_events(store: EventStore) -> list[RecordedEvent]:
    return [event async for event in store.read_all()]


# -- folding ---------------------------------------------------------------------------------------------------------


async def test_project_returns_the_current_state(store: EventStore) -> None:
    await store.append("order-42", order_events())
    assert await project(store, "order-42", OrderProjection) == expected_order(7)
    assert await project(store, "order-42", OrderProjection()) == expected_order(7)


async def test_fold_reports_version_and_position(store: EventStore) -> None:
    await store.append("other", [added("x")])
    result = await store.append("order-1", order_events())
    folded = await fold(store, "order-1", OrderProjection)
    assert folded.state == expected_order(7)
    assert (folded.version, folded.position) == (7, result.position)
    assert (folded.snapshot_version, folded.events_read, folded.snapshot_saved) == (0, 7, False)


async def test_an_empty_stream_folds_to_the_initial_state(store: EventStore) -> None:
    folded = await fold(store, "nobody", OrderProjection)
    assert folded.state == Order()
    assert (folded.version, folded.position, folded.events_read) == (0, 0, 0)


async def test_a_stream_longer_than_one_page_folds_completely(store: EventStore) -> None:
    store.page_size = 7
    await store.append("long", [added(f"sku-{index % 5}", 1, index) for index in range(50)])
    state = await project(store, "long", OrderProjection)
    assert sum(state.items.values()) == 50
    assert state.total_cents == sum(range(50))


@pytest.mark.parametrize("reads_ahead", [False, True])
async def test_folds_page_alike_with_and_without_read_ahead(store: EventStore, reads_ahead: bool) -> None:
    """A fold over many pages, a fold bounded inside a page, and folds stopped midway by a failing handler leave
    the next fold of the same stream unaffected."""
    store.reads_ahead = reads_ahead
    store.page_size = 6
    await store.append("long", [added(f"sku-{index % 4}", 1, index) for index in range(40)])
    await store.append("long", [NewEvent("ItemAdded", {"sku": "broken"})])
    await store.append("long", [added("last", 1, 1000)])
    for _ in range(3):
        with pytest.raises(HandlerFailed) as raised:
            await project(store, "long", OrderProjection)
        assert raised.value.version == 41
    bounded = await fold(store, "long", OrderProjection, to_version=15)
    assert (bounded.version, bounded.events_read, bounded.state.total_cents) == (15, 15, sum(range(15)))
    assert (await fold(store, "long", OrderProjection, to_version=40)).state.total_cents == sum(range(40))


async def test_unknown_event_types_are_skipped_unless_strict(store: EventStore) -> None:
    await store.append("order-1", order_events())
    assert await project(store, "order-1", OrderProjection) == expected_order(7)
    with pytest.raises(UnhandledEvent) as raised:
        await project(store, "order-1", StrictOrders)
    assert (raised.value.stream_id, raised.value.version, raised.value.event_type) == ("order-1", 4, "CouponViewed")
    assert "CouponViewed" in str(raised.value) and "order-1" in str(raised.value)


async def test_a_failing_handler_names_the_event(store: EventStore) -> None:
    await store.append("order-1", [added("apple"), NewEvent("ItemAdded", {"sku": "bad"})])
    with pytest.raises(HandlerFailed) as raised:
        await project(store, "order-1", OrderProjection)
    error = raised.value
    assert (error.projection, error.stream_id, error.version, error.event_type) == ("order", "order-1", 2, "ItemAdded")
    assert isinstance(error.__cause__, KeyError)
    assert "version 2" in str(error) and "'order-1'" in str(error) and "'ItemAdded'" in str(error)


# -- time travel -----------------------------------------------------------------------------------------------------


async def test_to_version_returns_the_state_as_it_was(store: EventStore) -> None:
    await store.append("order-1", order_events()[:3])
    await store.append("order-1", order_events()[3:])
    for version in range(8):
        folded = await fold(store, "order-1", OrderProjection, to_version=version)
        assert folded.state == expected_order(version)
        assert folded.version == version
    assert await project(store, "order-1", OrderProjection, to_version=100) == expected_order(7)


async def test_at_position_returns_the_state_as_it_was(store: EventStore) -> None:
    await store.append("order-1", order_events()[:2])
    await store.append("elsewhere", [added("noise")])
    await store.append("order-1", order_events()[2:])
    events = [event async for event in store.read_stream("order-1")]
    noise = [event async for event in store.read_stream("elsewhere")].pop()
    assert await project(store, "order-1", OrderProjection, at_position=0) == Order()
    for count, event in enumerate(events, start=1):
        assert await project(store, "order-1", OrderProjection, at_position=event.position) == expected_order(count)
    assert await project(store, "order-1", OrderProjection, at_position=noise.position) == expected_order(2)


async def test_at_time_returns_the_state_as_it_was(store: EventStore) -> None:
    events = await append_one_by_one(store, "order-1", order_events())
    before_all = events[0].recorded_at - timedelta(seconds=1)
    assert await project(store, "order-1", OrderProjection, at=before_all) == Order()
    for event in events:
        # The state at a time holds the events before the first one recorded later than that time.
        included = next(
            (index for index, other in enumerate(events) if other.recorded_at_us > event.recorded_at_us),
            len(events),
        )
        assert await project(store, "order-1", OrderProjection, at=event.recorded_at) == expected_order(included)
    far_future = datetime.now(UTC) + timedelta(days=1)
    assert await project(store, "order-1", OrderProjection, at=far_future) == expected_order(7)
    in_another_zone = events[-1].recorded_at.astimezone(datetime.now().astimezone().tzinfo)
    assert await project(store, "order-1", OrderProjection, at=in_another_zone) == expected_order(7)


async def test_time_travel_never_saves_a_snapshot(store: EventStore) -> None:
    await store.append("order-1", order_events())
    for bounds in ({"to_version": 6}, {"at_position": 10**9}, {"at": datetime.now(UTC) + timedelta(days=1)}):
        folded = await fold(store, "order-1", SnapshottingOrders, **bounds)
        assert not folded.snapshot_saved
    assert await store.load_snapshot("order-1", snapshot_name(SnapshottingOrders)) is None


async def test_time_travel_uses_a_snapshot_only_inside_its_bound(store: EventStore) -> None:
    await store.append("order-1", order_events()[:4])
    assert (await fold(store, "order-1", SnapshottingOrders)).snapshot_saved
    await store.append("order-1", order_events()[4:])
    inside = await fold(store, "order-1", SnapshottingOrders, to_version=5)
    assert (inside.state, inside.snapshot_version, inside.events_read) == (expected_order(5), 4, 1)
    outside = await fold(store, "order-1", SnapshottingOrders, to_version=3)
    assert (outside.state, outside.snapshot_version, outside.events_read) == (expected_order(3), 0, 3)
    fourth = [event async for event in store.read_stream("order-1", 3, 1)].pop()
    by_position = await fold(store, "order-1", SnapshottingOrders, at_position=fourth.position)
    assert (by_position.state, by_position.snapshot_version) == (expected_order(4), 4)


async def test_time_travel_arguments_are_checked(store: EventStore) -> None:
    await store.append("order-1", order_events())
    with pytest.raises(InvalidInput, match="at most one"):
        await project(store, "order-1", OrderProjection, to_version=1, at_position=1)
    with pytest.raises(InvalidInput, match="timezone-aware"):
        await project(store, "order-1", OrderProjection, at=datetime(2030, 1, 1))
    with pytest.raises(InvalidInput, match="to_version"):
        await project(store, "order-1", OrderProjection, to_version=-1)
    with pytest.raises(InvalidInput, match="at_position"):
        await project(store, "order-1", OrderProjection, at_position=True)
    with pytest.raises(InvalidInput, match="stream id"):
        await project(store, "", OrderProjection)


# -- snapshots -------------------------------------------------------------------------------------------------------


async def test_a_snapshot_is_saved_every_n_events(store: EventStore) -> None:
    await store.append("order-1", order_events()[:2])
    first = await fold(store, "order-1", SnapshottingOrders)
    assert not first.snapshot_saved
    await store.append("order-1", order_events()[2:5])
    second = await fold(store, "order-1", SnapshottingOrders)
    assert second.snapshot_saved and second.version == 5
    assert await store.load_snapshot("order-1", "order:v1") is not None
    await store.append("order-1", order_events()[5:6])
    third = await fold(store, "order-1", SnapshottingOrders)
    assert (third.state, third.snapshot_version, third.events_read, third.snapshot_saved) == (
        expected_order(6),
        5,
        1,
        False,
    )
    await store.append("order-1", [*order_events()[6:], added("kiwi"), added("kiwi")])
    fourth = await fold(store, "order-1", SnapshottingOrders)
    assert (fourth.snapshot_version, fourth.events_read, fourth.snapshot_saved) == (5, 4, True)
    fifth = await fold(store, "order-1", SnapshottingOrders)
    assert (fifth.snapshot_version, fifth.events_read, fifth.state) == (9, 0, fourth.state)


async def test_snapshots_never_change_the_event_log(store: EventStore) -> None:
    await store.append("order-1", order_events())
    before = await all_events(store)
    version_before = await store.stream_version("order-1")
    await fold(store, "order-1", SnapshottingOrders)
    await save_snapshot(store, "order-1", OrderProjection)
    assert await all_events(store) == before
    assert await store.stream_version("order-1") == version_before


async def test_save_snapshot_on_demand(store: EventStore) -> None:
    empty = await save_snapshot(store, "order-1", OrderProjection)
    assert not empty.snapshot_saved
    await store.append("order-1", order_events()[:2])
    saved = await save_snapshot(store, "order-1", OrderProjection)
    assert saved.snapshot_saved and saved.version == 2
    again = await save_snapshot(store, "order-1", OrderProjection)
    assert not again.snapshot_saved and again.snapshot_version == 2
    await store.append("order-1", order_events()[2:])
    folded = await fold(store, "order-1", OrderProjection)
    assert (folded.state, folded.snapshot_version, folded.events_read) == (expected_order(7), 2, 5)


async def test_a_new_projection_version_ignores_older_snapshots(store: EventStore) -> None:
    await store.append("order-1", order_events())
    await save_snapshot(store, "order-1", OrderProjection)

    class OrderProjectionV2(OrderProjection):
        version = 2

        @handles("CouponViewed")
        def coupon_viewed(self, state: Order, event: RecordedEvent) -> Order:
            return msgspec.structs.replace(state, notes=(*state.notes, f"coupon {event.data['code']}"))

    folded = await fold(store, "order-1", OrderProjectionV2)
    assert folded.snapshot_version == 0 and folded.events_read == 7
    assert folded.state.notes == ("leave at the door", "coupon X")
    assert (await fold(store, "order-1", OrderProjection)).snapshot_version == 7


async def test_an_undecodable_snapshot_is_ignored(store: EventStore) -> None:
    await store.append("order-1", order_events())
    name = snapshot_name(OrderProjection)
    for garbage in (b"not json", b'[1,7,7,0,{"items":"wrong type"}]', b"[2,7,7,0,{}]"):
        await store.keep_snapshot(StreamSnapshot("order-1", name, 7, garbage))
        folded = await fold(store, "order-1", OrderProjection)
        assert (folded.state, folded.snapshot_version) == (expected_order(7), 0)


@dataclasses.dataclass
class Tally:
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    last_seen: list[int] = dataclasses.field(default_factory=list)


class TallyProjection(Projection[Tally]):
    """Counts events by type, mutating its dataclass state in place."""

    name = "tally"

    def initial(self) -> Tally:
        return Tally()

    @handles("ItemAdded", "ItemRemoved", "NoteAdded")
    def count(self, state: Tally, event: RecordedEvent) -> Tally:
        state.counts[event.type] = state.counts.get(event.type, 0) + 1
        state.last_seen = [*state.last_seen[-2:], event.version]
        return state


class TotalsProjection(Projection[dict[str, Any]]):
    """A plain dict state."""

    name = "totals"

    def initial(self) -> dict[str, Any]:
        return {"quantity": 0, "skus": []}

    @handles("ItemAdded")
    def add(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {"quantity": state["quantity"] + event.data["quantity"], "skus": [*state["skus"], event.data["sku"]]}


@pytest.mark.parametrize("projection", [OrderProjection, TallyProjection, TotalsProjection], ids=lambda p: p.name)
async def test_structs_dataclasses_and_dicts_survive_a_snapshot(
    store: EventStore, projection: type[Projection[Any]]
) -> None:
    await store.append("order-1", order_events()[:4])
    await save_snapshot(store, "order-1", projection)
    await store.append("order-1", order_events()[4:])
    from_snapshot = await fold(store, "order-1", projection)
    assert from_snapshot.snapshot_version == 4
    await store.append("order-2", order_events())
    assert from_snapshot.state == await project(store, "order-2", projection)


# -- upcasting -------------------------------------------------------------------------------------------------------


order_upcasters = Upcasters()


@order_upcasters.register("ItemAdded", 1)
def _price_in_cents(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had a decimal `price` string; schema 2 has integer `price_cents`."""
    upcast = {key: value for key, value in data.items() if key != "price"}
    upcast["price_cents"] = round(float(data["price"]) * 100)
    return upcast


@order_upcasters.register("ItemAdded", 2)
def _quantity_defaults_to_one(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 could omit `quantity`; schema 3 always has it."""
    return {"quantity": 1, **data}


@order_upcasters.register("CommentAdded", 1, rename_to="NoteAdded")
def _comment_is_a_note(data: dict[str, Any]) -> dict[str, Any]:
    return {"text": data["comment"]}


class UpcastingOrders(OrderProjection):
    name = "order-upcast"
    upcasters = order_upcasters


async def test_upcasters_turn_old_shapes_into_new_ones(store: EventStore) -> None:
    old_and_new = [
        NewEvent("ItemAdded", {"sku": "apple", "quantity": 2, "price": "0.50"}),
        NewEvent("ItemAdded", {"sku": "pear", "price_cents": 80}, {SCHEMA_VERSION: 2}),
        NewEvent("CommentAdded", {"comment": "leave at the door"}),
        NewEvent("CouponViewed", {"code": "X"}),
        NewEvent("ItemRemoved", {"sku": "pear", "refund_cents": 80}),
        NewEvent("ItemAdded", {"sku": "fig", "quantity": 3, "price_cents": 120}, {SCHEMA_VERSION: 3}),
        NewEvent("OrderPlaced", {}),
    ]
    await store.append("order-1", old_and_new)
    before = await all_events(store)
    assert await project(store, "order-1", UpcastingOrders) == expected_order(7)
    assert await all_events(store) == before  # upcasting happens on read only
    with pytest.raises(HandlerFailed):
        await project(store, "order-1", OrderProjection)


def test_upcast_events_keep_their_identity() -> None:
    original = RecordedEvent(
        "order-1", 3, 17, "CommentAdded", {"comment": "hi"}, {"agent_id": "a"}, "0" * 32, 1_700_000_000_000_000
    )
    upcast = order_upcasters.upcast(original)
    assert (upcast.type, upcast.data, upcast.metadata) == (
        "NoteAdded",
        {"text": "hi"},
        {"agent_id": "a", SCHEMA_VERSION: 2},
    )
    assert (upcast.stream_id, upcast.version, upcast.position, upcast.id, upcast.recorded_at) == (
        original.stream_id,
        original.version,
        original.position,
        original.id,
        original.recorded_at,
    )
    assert original.data == {"comment": "hi"} and original.metadata == {"agent_id": "a"}
    current = msgspec.structs.replace(original, type="NoteAdded", data={"text": "hi"})
    assert order_upcasters.upcast(current) is current


async def test_a_failing_upcaster_names_the_event(store: EventStore) -> None:
    old_shape = NewEvent("ItemAdded", {"sku": "apple", "quantity": 1, "price": "1.00"})
    await store.append("order-1", [old_shape, NewEvent("ItemAdded", {"sku": "pear", "price": "cheap"})])
    with pytest.raises(UpcastFailed) as raised:
        await project(store, "order-1", UpcastingOrders)
    assert (raised.value.stream_id, raised.value.version, raised.value.event_type) == ("order-1", 2, "ItemAdded")
    await store.append("order-2", [NewEvent("ItemAdded", {"sku": "pear"}, {SCHEMA_VERSION: "two"})])
    with pytest.raises(UpcastFailed, match="schema_version"):
        await project(store, "order-2", UpcastingOrders)


def test_upcaster_registration_is_checked() -> None:
    upcasters = Upcasters()
    upcasters.add("ItemAdded", 1, lambda data: data)
    with pytest.raises(InvalidInput, match="already registered"):
        upcasters.add("ItemAdded", 1, lambda data: data)
    with pytest.raises(InvalidInput, match="from_version"):
        upcasters.add("ItemAdded", 0, lambda data: data)
    with pytest.raises(InvalidInput, match="event type"):
        upcasters.add("", 1, lambda data: data)
    looping = Upcasters()
    looping.add("A", 1, lambda data: data, rename_to="B")
    looping.add("B", 2, lambda data: data, rename_to="A")
    looping.add("A", 3, lambda data: {"done": True})
    event = RecordedEvent("s", 1, 1, "A", {}, {}, "0" * 32, 0)
    assert looping.upcast(event).data == {"done": True}


# -- retention -------------------------------------------------------------------------------------------------------


async def test_trim_without_a_snapshot_is_refused(store: EventStore) -> None:
    await store.append("order-1", order_events())
    before = await all_events(store)
    with pytest.raises(TrimRefused, match="no snapshot"):
        await trim(store, "order-1", OrderProjection)
    assert await all_events(store) == before


async def test_trim_past_the_newest_snapshot_is_refused(store: EventStore) -> None:
    await store.append("order-1", order_events()[:4])
    await save_snapshot(store, "order-1", OrderProjection)
    await store.append("order-1", order_events()[4:])
    before = await all_events(store)
    with pytest.raises(TrimRefused, match="covers only up to version 4"):
        await trim(store, "order-1", OrderProjection, before_version=6)
    await save_snapshot(store, "order-1", TallyProjection)
    with pytest.raises(TrimRefused, match="no snapshot"):
        await trim(store, "order-1", [OrderProjection, TotalsProjection])
    assert await all_events(store) == before


async def test_trim_behind_a_snapshot_keeps_the_state(store: EventStore) -> None:
    await store.append("elsewhere", [added("noise")])
    await store.append("order-1", order_events()[:5])
    await save_snapshot(store, "order-1", OrderProjection)
    await store.append("order-1", order_events()[5:])
    before_state = await project(store, "order-1", OrderProjection)
    positions_kept = [event.position for event in await all_events(store) if event.version > 5]

    archived: list[RecordedEvent] = []

    async def archive(page: list[RecordedEvent]) -> None:
        archived.extend(page)

    report = await trim(store, "order-1", OrderProjection, archive=archive)
    assert (report.stream_id, report.count, report.first_version, report.last_version) == ("order-1", 5, 1, 5)
    assert report.covered_by_snapshot == 5
    assert [event.version for event in archived] == [1, 2, 3, 4, 5]
    assert [event.version async for event in store.read_stream("order-1")] == [6, 7]
    assert [event.position async for event in store.read_stream("order-1")] == positions_kept
    assert await store.stream_version("order-1") == 7
    assert await project(store, "order-1", OrderProjection) == before_state
    assert await project(store, "order-1", OrderProjection, to_version=6) == expected_order(6)
    assert [event.version async for event in store.read_stream("elsewhere")] == [1]
    again = await trim(store, "order-1", OrderProjection)
    assert (again.count, again.first_version, again.last_version) == (0, None, None)


async def test_partial_trim_reports_the_range(store: EventStore) -> None:
    await store.append("order-1", order_events())
    await save_snapshot(store, "order-1", OrderProjection)
    await save_snapshot(store, "order-1", TallyProjection)
    first = await trim(store, "order-1", [OrderProjection, TallyProjection], before_version=3)
    assert (first.count, first.first_version, first.last_version) == (2, 1, 2)
    second = await trim(store, "order-1", [OrderProjection, TallyProjection], before_version=5)
    assert (second.count, second.first_version, second.last_version) == (2, 3, 4)
    assert await project(store, "order-1", OrderProjection) == expected_order(7)
    assert (await project(store, "order-1", TallyProjection)).counts == {
        "ItemAdded": 3,
        "NoteAdded": 1,
        "ItemRemoved": 1,
    }


async def test_folds_needing_trimmed_events_raise(store: EventStore) -> None:
    await store.append("order-1", order_events()[:4])
    await save_snapshot(store, "order-1", OrderProjection)
    await store.append("order-1", order_events()[4:])
    await trim(store, "order-1", OrderProjection)
    with pytest.raises(HistoryTrimmed) as raised:
        await project(store, "order-1", OrderProjection, to_version=2)
    assert (raised.value.stream_id, raised.value.needed_from, raised.value.available_from) == ("order-1", 1, 5)
    with pytest.raises(HistoryTrimmed):
        await project(store, "order-1", TallyProjection)

    await store.append("order-2", order_events()[:3])
    await save_snapshot(store, "order-2", OrderProjection)
    await trim(store, "order-2", OrderProjection)
    assert [event async for event in store.read_stream("order-2")] == []
    assert await project(store, "order-2", OrderProjection) == expected_order(3)
    with pytest.raises(HistoryTrimmed) as fully:
        await project(store, "order-2", TallyProjection)
    assert fully.value.available_from is None


# -- declaring projections -------------------------------------------------------------------------------------------


async def test_badly_declared_projections_are_refused(store: EventStore) -> None:
    class Nameless(OrderProjection):
        name = ""

    class BadVersion(OrderProjection):
        version = 0

    class BadInterval(OrderProjection):
        snapshot_every = 0

    class Twice(OrderProjection):
        name = "twice"

        @handles("X")
        def one(self, state: Order, event: RecordedEvent) -> Order:
            return state

        @handles("X")
        def two(self, state: Order, event: RecordedEvent) -> Order:
            return state

    for projection, message in ((Nameless, "name"), (BadVersion, "version"), (BadInterval, "snapshot_every")):
        with pytest.raises(InvalidProjection, match=message):
            await project(store, "order-1", projection)
    with pytest.raises(InvalidProjection, match="handles 'X' twice"):
        await project(store, "order-1", Twice)
    with pytest.raises(InvalidProjection):
        handles()
    with pytest.raises(InvalidProjection):
        await project(store, "order-1", object)  # type: ignore[arg-type]


async def test_a_subclass_may_override_a_handler(store: EventStore) -> None:
    class CountingNotes(OrderProjection):
        name = "counting-notes"
        seen: ClassVar[list[int]] = []

        @handles("NoteAdded")
        def note_added(self, state: Order, event: RecordedEvent) -> Order:
            return msgspec.structs.replace(state, notes=(*state.notes, "note"))

    await store.append("order-1", order_events())
    assert (await project(store, "order-1", CountingNotes)).notes == ("note",)


async def test_a_projection_without_a_state_type_can_fold_but_not_snapshot(store: EventStore) -> None:
    class Untyped(Projection):  # type: ignore[type-arg]
        name = "untyped"

        def initial(self) -> int:
            return 0

        @handles("ItemAdded")
        def count(self, state: int, event: RecordedEvent) -> int:
            return state + 1

    await store.append("order-1", order_events())
    assert await project(store, "order-1", Untyped) == 3
    with pytest.raises(InvalidProjection, match="state type"):
        await save_snapshot(store, "order-1", Untyped)

    class Typed(Untyped):
        state_type = int

    assert (await save_snapshot(store, "order-1", Typed)).snapshot_saved
    with pytest.raises(InvalidProjection, match="state_type"):
        await project(store, "order-1", Untyped)
    assert (await fold(store, "order-1", Typed)).snapshot_version == 7


async def test_an_instance_may_configure_its_projection(store: EventStore) -> None:
    class Configurable(OrderProjection):
        def __init__(self, name: str, snapshot_every: int | None) -> None:
            self.name = name
            self.snapshot_every = snapshot_every

    await store.append("order-1", order_events())
    assert not (await fold(store, "order-1", Configurable("order-a", None))).snapshot_saved
    assert (await fold(store, "order-1", Configurable("order-b", 2))).snapshot_saved
    assert await store.load_snapshot("order-1", "order-a:v1") is None
    assert await store.load_snapshot("order-1", "order-b:v1") is not None
    with pytest.raises(InvalidProjection, match="snapshot_every"):
        await fold(store, "order-1", Configurable("order-c", -1))


async def test_a_state_that_cannot_be_encoded_is_refused_for_snapshots(store: EventStore) -> None:
    class Opaque(Projection[Any]):
        name = "opaque"
        state_type = Any

        def initial(self) -> Any:
            return {"handle": object()}

    await store.append("order-1", order_events())
    assert "handle" in await project(store, "order-1", Opaque)
    with pytest.raises(InvalidProjection, match="cannot be encoded"):
        await save_snapshot(store, "order-1", Opaque)
    assert await store.load_snapshot("order-1", snapshot_name(Opaque)) is None


# -- folding stored records -------------------------------------------------------------------------------------


class SeenVersions(Projection[list[int]]):
    name = "seen-versions"

    def initial(self) -> list[int]:
        return []

    @handles("T")
    def seen(self, state: list[int], event: RecordedEvent) -> list[int]:
        return [*state, event.version]


def _stored_record(version: int) -> bytes:
    return (
        f'{{"stream_id":"s","version":{version},"position":{version},"type":"T","data":{{}},"metadata":{{}},'
        f'"_id":"01a21873-1900-7793-9638-93b74765257b","_recorded_at_us":1}}'
    ).encode()


async def _fold_stored(pages: list[list[int]], after: int = 0) -> tuple[list[int], int | None, int]:
    async def record_pages() -> AsyncIterator[list[bytes]]:
        for page in pages:
            yield [_stored_record(version) for version in page]

    projection = SeenVersions()
    state, last, read, _ = await _fold_records(
        record_pages(), msgspec.json.Decoder(RecordedEvent), [], {"T": projection.seen}.get, projection, "s", after
    )
    return state, None if last is None else last.version, read


@pytest.mark.parametrize(
    "pages", [[[1, 2, 3], [4, 5]], [[3, 1, 2], [5, 4]], [[1, 3, 2], [4, 5]], [[2, 1]], [[1, 2], [4, 3, 5]]]
)
async def test_records_of_a_page_in_any_order_fold_in_version_order(pages: list[list[int]]) -> None:
    """A backend may hand over a page's records in any order (SQLite does not promise group_concat's order)."""
    count = sum(map(len, pages))
    assert await _fold_stored(pages) == (list(range(1, count + 1)), count, count)


async def test_stored_records_are_checked_against_the_version_folded_from() -> None:
    with pytest.raises(HistoryTrimmed):
        await _fold_stored([[3, 2]])  # version 1 is gone
    with pytest.raises(StoreCorrupted):
        await _fold_stored([[3, 4]], after=3)  # a version at or below the one folded from
    assert await _fold_stored([[5, 4]], after=3) == ([4, 5], 5, 2)


# -- large payloads ------------------------------------------------------------------------------------------------


async def test_upcasters_get_the_blobs_of_the_events_they_take(store: EventStore) -> None:
    comment = "c" * 100_000  # a blob on every backend
    await store.append("order-blob", [NewEvent("CommentAdded", {"comment": comment})])
    state = await project(store, "order-blob", UpcastingOrders)
    assert state.notes == (comment,)


class Sizes(Projection[dict[str, Any]]):
    name = "sizes"

    def initial(self) -> dict[str, Any]:
        return {"seen": []}

    @handles("Prompted", blobs=False)
    def prompted(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        state["seen"].append(event.data["prompt"])
        return state


class FullSizes(Sizes):
    name = "full-sizes"

    @handles("Prompted")  # the subclass's handler reads the prompt: it decides anew
    def prompted(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        state["seen"].append(len(event.data["prompt"]))
        return state


async def test_a_handler_declared_without_blobs_gets_references_and_a_subclass_may_want_them(
    store: EventStore,
) -> None:
    await store.append("chat", [NewEvent("Prompted", {"prompt": "p" * 100_000})])
    reference = (await project(store, "chat", Sizes))["seen"][0]
    assert reference == {"$blob": reference["$blob"], "size": 100_002} and len(reference["$blob"]) == 64
    assert (await project(store, "chat", FullSizes))["seen"] == [100_000]


def test_handles_takes_blobs_as_a_bool() -> None:
    with pytest.raises(InvalidProjection, match="blobs"):
        handles("Prompted", blobs="no")  # type: ignore[arg-type]
