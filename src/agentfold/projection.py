"""Projections: state as a deterministic fold over one stream's events, with snapshots, time travel and trimming.

A projection is pure code: an initial state and one handler per event type, declared with `@handles`::

    class OrderProjection(Projection[OrderState]):
        name = "order"
        version = 1               # bump when the handlers change: older snapshots are then ignored
        snapshot_every = 500      # save a snapshot once 500 events were folded past the last one

        def initial(self) -> OrderState:
            return OrderState()

        @handles("ItemAdded")
        def item_added(self, state: OrderState, event: RecordedEvent) -> OrderState:
            return msgspec.structs.replace(state, items=state.items + 1)

    state = await project(store, "order-42", OrderProjection)

Guarantees:

- Folding is deterministic: events are applied in version order, each exactly once, through the handler its type
  maps to. Types without a handler are skipped, or raise `UnhandledEvent` when the projection is `strict`.
- The result is the same whether the fold starts from the beginning or from a snapshot: a snapshot holds the state
  after a given version, stored under the projection's name and version, and is used only when it is valid for
  that code version and for the requested point in time. Snapshots live beside the log and never change it.
- Time travel (`to_version`, `at`, `at_position`) reads only: it never saves a snapshot.
- The log can be trimmed only behind a snapshot of every projection named (`trim`), and a fold that would need
  trimmed events raises `HistoryTrimmed` instead of returning a wrong state.
- Large payloads (`agentfold.blobs`) are loaded only for the events that reach a handler wanting them: an event
  without a handler, or whose handler is declared ``@handles(..., blobs=False)``, is folded without fetching its
  blobs (the handler then sees each large field as a reference, ``{"$blob": digest, "size": bytes}``).

Only the public API of `EventLog` is used (`read_stream_records`, snapshots, `trim_stream`), so all of this works
on every backend. Every fold, whatever its options, goes through one loop: one round trip per page of stored
records, each decoded just before its handler runs, then one dict lookup and one handler call per event.
"""

from __future__ import annotations

import abc
import bisect
import operator
import typing
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Generic, TypeVar

import msgspec

from agentfold.blobs import BLOBS_KEY
from agentfold.errors import (
    EventsTrimmed,
    HandlerFailed,
    HistoryTrimmed,
    InvalidInput,
    InvalidProjection,
    StoreCorrupted,
    TrimRefused,
    UnhandledEvent,
)
from agentfold.events import RecordedEvent
from agentfold.log import EventLog, RecordDecoder, StreamSnapshot
from agentfold.upcasting import Upcasters
from agentfold.validation import check_stream_id

S = TypeVar("S")
_F = TypeVar("_F", bound=Callable[..., Any])
_P = TypeVar("_P")

MAX_PROJECTION_NAME_LENGTH: Final = 150
_HANDLES_ATTRIBUTE: Final = "__agentfold_handles__"
_WITHOUT_BLOBS_ATTRIBUTE: Final = "__agentfold_without_blobs__"
_version_of = operator.attrgetter("version")


# -- declaring projections -----------------------------------------------------------------------------------------


def handles(*event_types: str, blobs: bool = True) -> Callable[[_F], _F]:
    """Declare the decorated method `(self, state, event) -> new state` as the handler of `event_types`.

    With `blobs=False` the handler does not read the large fields of these events' data (`agentfold.blobs`): the
    fold hands it the events as stored, each such field a reference ``{"$blob": digest, "size": bytes}``, and
    never fetches their blobs."""
    if not event_types:
        raise InvalidProjection("@handles needs at least one event type")
    for event_type in event_types:
        if not isinstance(event_type, str) or not event_type:
            raise InvalidProjection(f"@handles takes event type names, got {event_type!r}")
    if not isinstance(blobs, bool):
        raise InvalidProjection(f"@handles takes blobs=True or blobs=False, got {blobs!r}")

    def decorate(function: _F) -> _F:
        declared: tuple[str, ...] = getattr(function, _HANDLES_ATTRIBUTE, ())
        setattr(function, _HANDLES_ATTRIBUTE, (*declared, *event_types))
        if not blobs:
            without: tuple[str, ...] = getattr(function, _WITHOUT_BLOBS_ATTRIBUTE, ())
            setattr(function, _WITHOUT_BLOBS_ATTRIBUTE, (*without, *event_types))
        return function

    return decorate


class Projection(abc.ABC, Generic[S]):
    """State folded from a stream: `initial()` plus one `@handles` method per event type.

    Handlers must be pure: they read the state and the event and return the new state (returning the same,
    mutated object is fine as long as `initial()` returns a fresh one each call). Handlers must not mutate
    `event.data`. The state must survive a JSON round trip through `encode_state`/`decode_state` unchanged, which
    holds for msgspec Structs, dataclasses and dicts of JSON values (declare tuples and sets in a typed state, not
    in a plain dict).

    The settings below are class attributes; an instance may override them in `__init__`.
    """

    name: str = ""
    """Identifies the projection in snapshot names; 1 to 150 printable characters."""
    version: int = 1
    """The code version: snapshots saved under another version are ignored."""
    snapshot_every: int | None = None
    """Save a snapshot when a fold to the head has passed this many events since the last one (None: never)."""
    strict: bool = False
    """Raise `UnhandledEvent` for event types without a handler instead of skipping them."""
    upcasters: Upcasters | None = None
    """Upcasters applied to each event before its handler sees it."""
    state_type: ClassVar[Any] = None
    """The type `decode_state` decodes snapshots into; inferred from `Projection[StateType]` when not set."""

    @abc.abstractmethod
    def initial(self) -> S:
        """The state before any event."""

    def encode_state(self, state: S) -> bytes:
        """The state as JSON bytes for a snapshot. Override together with `decode_state` for custom types."""
        return _state_encoder.encode(state)

    def decode_state(self, raw: bytes | msgspec.Raw) -> S:
        """The state `encode_state` produced; a msgspec error when it does not fit (the snapshot is then ignored)."""
        decoder = _plan_of(type(self)).state_decoder
        if decoder is None:
            raise InvalidProjection(
                f"projection {type(self).__name__} cannot decode snapshots: subclass Projection[YourState] or set "
                "state_type"
            )
        state: S = decoder.decode(raw)
        return state


_state_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class _Plan:
    handler_names: dict[str, str]
    """event type -> name of the method handling it."""
    without_blobs: frozenset[str]
    """The event types whose handler is declared ``blobs=False``."""
    state_decoder: msgspec.json.Decoder[Any] | None


_plans: weakref.WeakKeyDictionary[type, _Plan] = weakref.WeakKeyDictionary()


def _plan_of(cls: type[Projection[Any]]) -> _Plan:
    plan = _plans.get(cls)
    if plan is None:
        plan = _plans[cls] = _build_plan(cls)
    return plan


def _build_plan(cls: type[Projection[Any]]) -> _Plan:
    handler_names: dict[str, str] = {}
    without_blobs: set[str] = set()
    for klass in reversed(cls.__mro__):
        declared_here: dict[str, str] = {}
        for attribute, value in vars(klass).items():
            function = getattr(value, "__func__", value)
            for event_type in getattr(function, _HANDLES_ATTRIBUTE, ()):
                if event_type in declared_here:
                    raise InvalidProjection(
                        f"projection {cls.__name__} handles {event_type!r} twice: in {declared_here[event_type]}() "
                        f"and {attribute}()"
                    )
                declared_here[event_type] = attribute
                without_blobs.discard(event_type)  # a subclass's handler decides anew
            without_blobs.update(getattr(function, _WITHOUT_BLOBS_ATTRIBUTE, ()))
        handler_names.update(declared_here)
    state_type = cls.state_type if cls.state_type is not None else _inferred_state_type(cls)
    decoder = msgspec.json.Decoder(state_type) if state_type is not None else None
    return _Plan(handler_names, frozenset(without_blobs), decoder)


def _inferred_state_type(cls: type) -> Any:
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Projection):
                arguments = typing.get_args(base)
                if arguments and not isinstance(arguments[0], TypeVar):
                    return arguments[0]
    return None


def _checked(projection: Projection[S] | type[Projection[S]]) -> Projection[S]:
    instance = projection() if isinstance(projection, type) else projection
    if not isinstance(instance, Projection):
        raise InvalidProjection(f"expected a Projection subclass or instance, got {type(projection).__name__}")
    name = instance.name
    if not isinstance(name, str) or not name or len(name) > MAX_PROJECTION_NAME_LENGTH or not name.isprintable():
        raise InvalidProjection(
            f"projection {type(instance).__name__} needs a name of 1 to {MAX_PROJECTION_NAME_LENGTH} printable "
            f"characters, got {name!r}"
        )
    version = instance.version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidProjection(f"projection {name!r}: version must be an int >= 1, got {version!r}")
    every = instance.snapshot_every
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise InvalidProjection(f"projection {name!r}: snapshot_every must be None or an int >= 1, got {every!r}")
    if not isinstance(instance.strict, bool):
        raise InvalidProjection(f"projection {name!r}: strict must be a bool, got {instance.strict!r}")
    if instance.upcasters is not None and not isinstance(instance.upcasters, Upcasters):
        raise InvalidProjection(f"projection {name!r}: upcasters must be an Upcasters registry or None")
    _plan_of(type(instance))
    return instance


def snapshot_name(projection: Projection[Any] | type[Projection[Any]]) -> str:
    """The name snapshots of this projection version are stored under: ``<name>:v<version>``."""
    instance = _checked(projection)
    return f"{instance.name}:v{instance.version}"


# -- results -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Folded(Generic[S]):
    """A projection's state and where in the stream it stands."""

    state: S
    version: int
    """The version of the last event the state includes (0: none). Use it as `expected_version` to append."""
    position: int
    """The global position of that event (0: none)."""
    snapshot_version: int
    """The version of the snapshot the fold started from (0: it started from `initial()`)."""
    events_read: int
    """Events read after the snapshot (handled or skipped)."""
    snapshot_saved: bool
    """Whether this fold saved a snapshot of the returned state."""


class TrimReport(msgspec.Struct, frozen=True):
    """What `trim` removed: `count` events, versions `first_version` to `last_version` (None when none went)."""

    stream_id: str
    count: int
    first_version: int | None
    last_version: int | None
    covered_by_snapshot: int
    """The snapshot version the trim was checked against: every trimmed event is at or below it."""


class _SnapshotEnvelope(msgspec.Struct, array_like=True, frozen=True):
    """What a snapshot stores: the projection version, the point it covers, and the encoded state."""

    projection_version: int
    version: int
    position: int
    recorded_until_us: int
    """The latest `recorded_at` among the covered events (clocks may step back, so not always the last's)."""
    state: msgspec.Raw


_envelope_decoder = msgspec.json.Decoder(_SnapshotEnvelope)


@dataclass(frozen=True, slots=True)
class _Bound:
    """Where a time-travelling fold stops; all None: at the head."""

    to_version: int | None = None
    at_us: int | None = None
    at_position: int | None = None

    @property
    def unbounded(self) -> bool:
        return self.to_version is None and self.at_us is None and self.at_position is None

    @property
    def inside(self) -> Callable[[RecordedEvent], bool] | None:
        """Whether an event is inside the bound, for a fold reading in version order (None: every event is). A bound
        on the version needs none: the read stops there."""
        if self.at_position is not None:
            cut_position = self.at_position
            return lambda event: event.position <= cut_position
        if self.at_us is not None:
            cut_us = self.at_us
            return lambda event: event._recorded_at_us <= cut_us
        return None

    def admits(self, envelope: _SnapshotEnvelope) -> bool:
        """Whether every event the snapshot covers is inside the bound."""
        if self.to_version is not None:
            return envelope.version <= self.to_version
        if self.at_position is not None:
            return envelope.position <= self.at_position
        if self.at_us is not None:
            return envelope.recorded_until_us <= self.at_us
        return True


def _bound(to_version: int | None, at: datetime | None, at_position: int | None) -> _Bound:
    given = [
        name
        for name, value in (("to_version", to_version), ("at", at), ("at_position", at_position))
        if value is not None
    ]
    if len(given) > 1:
        raise InvalidInput(f"give at most one of to_version, at and at_position, got {' and '.join(given)}")
    for name, value in (("to_version", to_version), ("at_position", at_position)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidInput(f"{name} must be None or an int >= 0, got {value!r}")
    at_us: int | None = None
    if at is not None:
        if not isinstance(at, datetime):
            raise InvalidInput(f"at must be a datetime, got {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise InvalidInput(f"at must be timezone-aware (e.g. datetime.now(UTC)), got naive {at.isoformat()}")
        # Whole microseconds since the epoch, computed exactly (a float timestamp can be off by one).
        at_us = (at - _EPOCH) // _ONE_MICROSECOND
    return _Bound(to_version, at_us, at_position)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND: Final = timedelta(microseconds=1)


# -- folding -------------------------------------------------------------------------------------------------------


async def project(
    store: EventLog,
    stream_id: str,
    projection: Projection[S] | type[Projection[S]],
    *,
    to_version: int | None = None,
    at: datetime | None = None,
    at_position: int | None = None,
) -> S:
    """The projection's state for `stream_id`: at the head, or as it was (time travel).

    `to_version=N`: after the stream's events up to version N. `at_position=P`: after its events at global
    positions up to P. `at=datetime`: after the events before the first one recorded later than `at`. At most one
    may be given; time travel never saves snapshots. See `fold` for the state together with its version.
    """
    folded = await fold(store, stream_id, projection, to_version=to_version, at=at, at_position=at_position)
    return folded.state


async def fold(
    store: EventLog,
    stream_id: str,
    projection: Projection[S] | type[Projection[S]],
    *,
    to_version: int | None = None,
    at: datetime | None = None,
    at_position: int | None = None,
) -> Folded[S]:
    """Like `project`, returning the state with its version, position and how it was reached."""
    return await _fold(store, stream_id, _checked(projection), _bound(to_version, at, at_position), force=False)


async def save_snapshot(store: EventLog, stream_id: str, projection: Projection[S] | type[Projection[S]]) -> Folded[S]:
    """Fold to the head and keep a snapshot there (unless the newest snapshot is already there).

    The event log is not touched. An empty stream has nothing to snapshot: `snapshot_saved` is then False.
    """
    return await _fold(store, stream_id, _checked(projection), _Bound(), force=True)


async def _fold(store: EventLog, stream_id: str, projection: Projection[S], bound: _Bound, *, force: bool) -> Folded[S]:
    check_stream_id(stream_id)
    store.check_open()
    plan = _plan_of(type(projection))
    name = f"{projection.name}:v{projection.version}"
    every = projection.snapshot_every
    may_save = bound.unbounded and (force or every is not None)

    if may_save and plan.state_decoder is None and type(projection).decode_state is Projection.decode_state:
        raise InvalidProjection(
            f"projection {projection.name!r} cannot snapshot: its state type is unknown, so a snapshot could not be "
            "read back (subclass Projection[YourState], set state_type, or override decode_state)"
        )
    state: S
    after = version = position = snapshot_version = 0
    recorded_until: int | None = 0
    envelope = await _load_envelope(store, stream_id, name, projection.version)
    start_state: S | None = None
    if envelope is not None and bound.admits(envelope):
        try:
            start_state = projection.decode_state(envelope.state)
        except InvalidProjection:
            raise
        except (msgspec.MsgspecError, ValueError, TypeError):
            start_state = None  # a state that no longer decodes: fold from the beginning instead
    if envelope is not None and start_state is not None:
        state = start_state
        after = version = snapshot_version = envelope.version
        position = envelope.position
        recorded_until = envelope.recorded_until_us
    else:
        state = projection.initial()

    handler_of = {event_type: getattr(projection, method) for event_type, method in plan.handler_names.items()}
    get_handler = handler_of.get
    upcasters = projection.upcasters
    limit = None if bound.to_version is None else max(0, bound.to_version - after)
    blobs_for: frozenset[str] | None = None
    if store.keeps_blobs:
        # Upcasters may read any field, so an event they take has its blobs loaded before they run.
        blobs_for = frozenset(handler_of.keys() - plan.without_blobs) | (upcasters.event_types if upcasters else set())

    records = store.read_stream_records(stream_id, after, limit)
    async with _closing(records):
        state, last, events_read, recorded_until = await _fold_records(
            records,
            store.record_decoder,
            state,
            get_handler,
            projection,
            stream_id,
            after,
            inside=bound.inside,
            upcast=upcasters.upcast if upcasters else None,
            recorded_until=recorded_until if may_save else None,
            load_blobs=None if blobs_for is None else (blobs_for, store.load_blobs),
        )
    saw_page = last is not None
    if last is not None:
        version = last.version
        position = last.position

    if not saw_page and (bound.to_version is None or bound.to_version > after):
        await _check_not_trimmed(store, stream_id, projection.name, after)

    saved = False
    if may_save and events_read and (force or (every is not None and version - snapshot_version >= every)):
        try:
            encoded_state = projection.encode_state(state)
        except (msgspec.MsgspecError, TypeError, ValueError) as error:
            raise InvalidProjection(
                f"projection {projection.name!r}: the state after version {version} of stream {stream_id!r} cannot "
                f"be encoded for a snapshot ({type(error).__name__}: {error}); override encode_state and decode_state"
            ) from error
        encoded = _SnapshotEnvelope(
            projection.version, version, position, recorded_until or 0, msgspec.Raw(encoded_state)
        )
        await store.keep_snapshot(StreamSnapshot(stream_id, name, version, _state_encoder.encode(encoded)))
        saved = True
    return Folded(state, version, position, snapshot_version, events_read, saved)


@asynccontextmanager
async def _closing(pages: AsyncIterator[_P]) -> AsyncIterator[AsyncIterator[_P]]:
    """Close the page reader when the fold stops early, so a backend cursor is not left open until collected."""
    try:
        yield pages
    finally:
        close = getattr(pages, "aclose", None)
        if close is not None:
            await close()


async def _fold_records(
    pages: AsyncIterator[Sequence[Any]],
    decoder: RecordDecoder | None,
    state: S,
    get_handler: Callable[[str], Callable[[S, RecordedEvent], S] | None],
    projection: Projection[S],
    stream_id: str,
    after: int,
    *,
    inside: Callable[[RecordedEvent], bool] | None = None,
    upcast: Callable[[RecordedEvent], RecordedEvent] | None = None,
    recorded_until: int | None = None,
    load_blobs: tuple[frozenset[str], Callable[[list[RecordedEvent]], Awaitable[list[RecordedEvent]]]] | None = None,
) -> tuple[S, RecordedEvent | None, int, int | None]:
    """The fold loop, the one every option goes through: each stored record is decoded just before its handler
    runs (`decoder`; None when the records are events already), its blobs loaded when its type is among the types
    `load_blobs` names (by the function beside them), and upcast (`upcast`). Other events never have their blobs
    fetched. The fold stops at the first event for which `inside` (the time bound, as a predicate) is false.
    Returns the state, the last event folded (None if none), how many events were folded, and, when
    `recorded_until` was given (the fold may keep a snapshot), the latest `recorded_at_us` among them and it.

    A page's records may come in any order (SQLite does not promise the order in which it joins them): as long as
    each event is the one after the last, it is folded at once; otherwise the rest of the page is decoded and
    folded in version order, the first event read still checked against `after`."""
    strict = projection.strict
    track = recorded_until is not None
    watch = track or inside is not None
    until = recorded_until or 0
    last: RecordedEvent | None = None
    next_version = after + 1
    events_read = 0
    stopped = False
    blob_types, load = load_blobs if load_blobs is not None else (frozenset[str](), None)
    async for records in pages:
        events: Iterator[RecordedEvent] = iter(records) if decoder is None else map(decoder.decode, records)
        try:
            while True:  # once, or again from the sorted rest of an out-of-order page
                for event in events:
                    if event.version != next_version:
                        rest = sorted([event, *events], key=_version_of)
                        if last is None:
                            _check_first_version(projection.name, stream_id, after, rest[0].version)
                        next_version = rest[0].version
                        events = iter(rest)
                        break
                    if watch:  # one test per event when the fold has neither a time bound nor a snapshot to keep
                        if inside is not None and not inside(event):
                            stopped = True
                            break
                        if track and event._recorded_at_us > until:
                            until = event._recorded_at_us
                    # The stored event's `$blobs` key says it has blobs (agentfold.blobs.has_blobs, inlined).
                    if BLOBS_KEY in event.metadata and load is not None and event.type in blob_types:
                        try:
                            event = (await load([event]))[0]
                        except EventsTrimmed:
                            raise HistoryTrimmed(projection.name, stream_id, event.version, None) from None
                    if upcast is not None:
                        event = upcast(event)
                    handler = get_handler(event.type)
                    if handler is not None:
                        try:
                            state = handler(state, event)
                        except UnhandledEvent:
                            raise
                        except Exception as error:
                            raise HandlerFailed(projection.name, event, error) from error
                    elif strict:
                        raise UnhandledEvent(projection.name, event)
                    last = event
                    next_version += 1
                else:
                    break
                if stopped:
                    break
            # Every record of the page was folded, except, when the bound stopped the fold, the event that
            # crossed it and those left in `events`.
            events_read += len(records) - (1 + sum(1 for _ in events) if stopped else 0)
        except msgspec.DecodeError as error:
            raise StoreCorrupted(f"a stored event of stream {stream_id!r} does not decode: {error}") from None
        if stopped:
            break
    return state, last, events_read, until if track else None


def _check_first_version(projection: str, stream_id: str, after: int, version: int) -> None:
    """The first event a fold reads must follow `after`; a later one means the events between were trimmed."""
    if version > after + 1:
        raise HistoryTrimmed(projection, stream_id, after + 1, version)
    if version <= after:
        raise StoreCorrupted(f"stream {stream_id!r} holds version {version} after version {after}")


async def _check_not_trimmed(store: EventLog, stream_id: str, projection: str, after: int) -> None:
    """Nothing was read after `after`: make sure that is because nothing is there, not because it was trimmed."""
    if await store.stream_version(stream_id) <= after:
        return
    # Either an append landed since the read (fine: the state is the one as of the read) or the events are gone.
    async with _closing(store.read_stream_pages(stream_id, after, 1)) as probe:
        async for page in probe:
            if page[0].version == after + 1:
                return
            raise HistoryTrimmed(projection, stream_id, after + 1, page[0].version)
    raise HistoryTrimmed(projection, stream_id, after + 1, None)


async def _load_envelope(
    store: EventLog, stream_id: str, name: str, projection_version: int
) -> _SnapshotEnvelope | None:
    """The newest snapshot under `name`, if it decodes and belongs to `projection_version`."""
    kept = await store.load_snapshot(stream_id, name)
    if kept is None:
        return None
    version = kept.version
    try:
        envelope = _envelope_decoder.decode(kept.state)
    except msgspec.MsgspecError:
        return None
    if envelope.projection_version != projection_version or envelope.version != version or version < 1:
        return None
    return envelope


# -- retention -----------------------------------------------------------------------------------------------------

Archive = Callable[[list[RecordedEvent]], Awaitable[None]]
"""Receives the events about to be trimmed, one page at a time, before they are deleted."""


async def trim(
    store: EventLog,
    stream_id: str,
    projections: Projection[Any] | type[Projection[Any]] | Sequence[Projection[Any] | type[Projection[Any]]],
    *,
    before_version: int | None = None,
    archive: Archive | None = None,
) -> TrimReport:
    """Delete the stream's events below `before_version` (default: every event the snapshots cover).

    Every projection named must have a valid snapshot of its current version, and the trim may not go past the
    oldest of them: otherwise `TrimRefused` is raised and nothing is deleted. Folding these projections afterwards
    gives the same state (snapshot plus tail). Other projections of the stream, and new versions of these, can no
    longer fold from the beginning: pass `archive` to hand the events elsewhere first (it is awaited for each page
    before anything is deleted; after a crash between the two, a retried trim archives those events again, so make
    the archive idempotent by event id). The stream's version and every global position stay as they were.
    """
    check_stream_id(stream_id)
    chosen = [projections] if isinstance(projections, Projection | type) else list(projections)
    if not chosen:
        raise InvalidInput("trim needs at least one projection whose snapshot covers the trimmed events")
    instances = [_checked(projection) for projection in chosen]
    if before_version is not None and (
        isinstance(before_version, bool) or not isinstance(before_version, int) or before_version < 1
    ):
        raise InvalidInput(f"before_version must be None or an int >= 1, got {before_version!r}")
    store.check_open()

    covered: int | None = None
    for instance in instances:
        name = f"{instance.name}:v{instance.version}"
        envelope = await _load_envelope(store, stream_id, name, instance.version)
        if envelope is None:
            raise TrimRefused(
                f"cannot trim stream {stream_id!r}: projection {instance.name!r} version {instance.version} has no "
                "snapshot on it (save one first with save_snapshot)"
            )
        covered = envelope.version if covered is None else min(covered, envelope.version)
    assert covered is not None
    if before_version is None:
        before_version = covered + 1
    elif before_version > covered + 1:
        raise TrimRefused(
            f"cannot trim stream {stream_id!r} below version {before_version}: the newest snapshot covers only up "
            f"to version {covered}, so at most versions below {covered + 1} may go"
        )

    if archive is not None:
        async with _closing(store.read_stream_pages(stream_id, 0, before_version - 1)) as pages:
            async for page in pages:
                below = page[: bisect.bisect_left(page, before_version, key=_version_of)]
                if below:
                    await archive(below)
                if len(below) < len(page):
                    break
    count = await store.trim_stream(stream_id, before_version)
    if count == 0:
        return TrimReport(stream_id, 0, None, None, covered)
    return TrimReport(stream_id, count, before_version - count, before_version - 1, covered)
