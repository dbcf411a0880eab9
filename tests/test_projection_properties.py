"""Properties of folds, checked with generated event sequences on every backend.

- Folding in one go equals folding from any snapshot plus the tail (also after trimming behind that snapshot).
- Time travel to version k equals folding the first k events.
- Upcast-then-fold equals folding the same events written in the new shape.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfold import (
    SCHEMA_VERSION,
    NewEvent,
    Projection,
    RecordedEvent,
    Upcasters,
    fold,
    handles,
    project,
    save_snapshot,
    trim,
)
from agentfold.store import EventStore

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Ledger(msgspec.Struct):
    balance_cents: int = 0
    owner: str = ""
    history: list[int] = []
    tags: tuple[str, ...] = ()
    rate: float = 0.0


class LedgerProjection(Projection[Ledger]):
    """Handlers whose results depend on order, so a dropped, repeated or reordered event changes the state."""

    name = "ledger"

    def initial(self) -> Ledger:
        return Ledger()

    @handles("Deposited")
    def deposited(self, state: Ledger, event: RecordedEvent) -> Ledger:
        amount = event.data["amount_cents"]
        return msgspec.structs.replace(
            state, balance_cents=state.balance_cents + amount, history=[*state.history[-4:], amount]
        )

    @handles("Withdrawn")
    def withdrawn(self, state: Ledger, event: RecordedEvent) -> Ledger:
        amount = min(event.data["amount_cents"], state.balance_cents)
        return msgspec.structs.replace(state, balance_cents=state.balance_cents - amount)

    @handles("OwnerRenamed")
    def owner_renamed(self, state: Ledger, event: RecordedEvent) -> Ledger:
        return msgspec.structs.replace(state, owner=event.data["name"], tags=(*state.tags, event.data["name"][:3]))

    @handles("RateChanged")
    def rate_changed(self, state: Ledger, event: RecordedEvent) -> Ledger:
        return msgspec.structs.replace(state, rate=state.rate * 0.5 + event.data["rate"])


# A logical event: (kind, value). Written either in the current shape or in the old one.
logical_events = st.lists(
    st.one_of(
        st.tuples(st.just("Deposited"), st.integers(0, 10**9)),
        st.tuples(st.just("Withdrawn"), st.integers(0, 10**9)),
        st.tuples(st.just("OwnerRenamed"), st.text(min_size=0, max_size=12)),
        st.tuples(st.just("RateChanged"), st.floats(-1e6, 1e6, allow_nan=False)),
        st.tuples(st.just("Ignored"), st.integers()),
    ),
    max_size=40,
)


def current_shape(kind: str, value: Any) -> NewEvent:
    if kind in ("Deposited", "Withdrawn"):
        return NewEvent(kind, {"amount_cents": value}, {SCHEMA_VERSION: 2})
    if kind == "OwnerRenamed":
        return NewEvent(kind, {"name": value}, {SCHEMA_VERSION: 2})
    if kind == "RateChanged":
        return NewEvent(kind, {"rate": value})
    return NewEvent(kind, {"value": value})


def old_shape(kind: str, value: Any) -> NewEvent:
    """Schema 1: amounts as {"units", "cents"} and renames as "OwnerChanged" with a "new_owner" field."""
    if kind in ("Deposited", "Withdrawn"):
        return NewEvent(kind, {"amount": {"units": value // 100, "cents": value % 100}})
    if kind == "OwnerRenamed":
        return NewEvent("OwnerChanged", {"new_owner": value})
    return current_shape(kind, value)


ledger_upcasters = Upcasters()


def _amount_in_cents(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount_cents": data["amount"]["units"] * 100 + data["amount"]["cents"]}


ledger_upcasters.add("Deposited", 1, _amount_in_cents)
ledger_upcasters.add("Withdrawn", 1, _amount_in_cents)
ledger_upcasters.add("OwnerChanged", 1, lambda data: {"name": data["new_owner"]}, rename_to="OwnerRenamed")


class UpcastingLedger(LedgerProjection):
    upcasters = ledger_upcasters


def reference_fold(events: list[tuple[str, Any]]) -> Ledger:
    """The state computed without any store, snapshot or upcaster."""
    projection = LedgerProjection()
    handlers = {"Deposited": projection.deposited, "Withdrawn": projection.withdrawn}
    handlers |= {"OwnerRenamed": projection.owner_renamed, "RateChanged": projection.rate_changed}
    state = projection.initial()
    for version, (kind, value) in enumerate(events, start=1):
        if kind in handlers:
            event = current_shape(kind, value)
            recorded = RecordedEvent("reference", version, version, kind, event.data, {}, str(event.id), 0)
            state = handlers[kind](state, recorded)
    return state


def fresh_stream() -> str:
    return f"ledger-{uuid.uuid4().hex}"


async def append_in_batches(store: EventStore, stream_id: str, events: list[NewEvent]) -> None:
    for start in range(0, len(events), 7):
        await store.append(stream_id, events[start : start + 7])


@PROPERTY_SETTINGS
@given(events=logical_events, data=st.data())
async def test_fold_in_one_go_equals_snapshot_plus_tail(
    store: EventStore, events: list[tuple[str, Any]], data: st.DataObject
) -> None:
    split = data.draw(st.integers(0, len(events)), label="snapshot after")
    stream_id = fresh_stream()
    written = [current_shape(kind, value) for kind, value in events]
    await append_in_batches(store, stream_id, written[:split])
    snapshot = await save_snapshot(store, stream_id, LedgerProjection)
    await append_in_batches(store, stream_id, written[split:])

    expected = reference_fold(events)
    from_snapshot = await fold(store, stream_id, LedgerProjection)
    assert from_snapshot.state == expected
    assert from_snapshot.snapshot_version == (split if snapshot.snapshot_saved else 0)
    assert from_snapshot.events_read == len(events) - from_snapshot.snapshot_version

    class FromScratch(LedgerProjection):
        name = "ledger-no-snapshot"

    assert await project(store, stream_id, FromScratch) == expected

    if snapshot.snapshot_saved:
        await trim(store, stream_id, LedgerProjection)
        assert await project(store, stream_id, LedgerProjection) == expected


@PROPERTY_SETTINGS
@given(events=logical_events, every=st.integers(1, 10), data=st.data())
async def test_periodic_snapshots_and_time_travel_match_the_reference(
    store: EventStore, events: list[tuple[str, Any]], every: int, data: st.DataObject
) -> None:
    class Periodic(LedgerProjection):
        name = f"ledger-every-{every}"
        snapshot_every = every

    stream_id = fresh_stream()
    written = [current_shape(kind, value) for kind, value in events]
    cut_points = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4), label="fold after"))
    done = 0
    for cut in [*cut_points, len(events)]:
        await append_in_batches(store, stream_id, written[done:cut])
        done = max(done, cut)
        assert await project(store, stream_id, Periodic) == reference_fold(events[:done])
    version = data.draw(st.integers(0, len(events)), label="to_version")
    assert await project(store, stream_id, Periodic, to_version=version) == reference_fold(events[:version])


@PROPERTY_SETTINGS
@given(events=logical_events, data=st.data())
async def test_upcast_then_fold_equals_fold_of_the_new_shape(
    store: EventStore, events: list[tuple[str, Any]], data: st.DataObject
) -> None:
    old_or_new = data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)), label="old shape")
    mixed = [
        old_shape(kind, value) if use_old else current_shape(kind, value)
        for (kind, value), use_old in zip(events, old_or_new, strict=True)
    ]
    new = [current_shape(kind, value) for kind, value in events]
    old_stream, new_stream = fresh_stream(), fresh_stream()
    await append_in_batches(store, old_stream, mixed)
    await append_in_batches(store, new_stream, new)
    upcast_state = await project(store, old_stream, UpcastingLedger)
    assert upcast_state == await project(store, new_stream, LedgerProjection)
    assert upcast_state == reference_fold(events)
