"""Consumer groups: competing consumers that share one subscription, partitioned by stream.

Every event belongs to one of the group's partitions by a stable hash of its stream id, so all events of a stream
go to the member that owns that partition, one at a time, in stream order (the "pinned" strategy of EventStoreDB and
Message DB's consumer groups). Ownership is a lease with a heartbeat; a member that dies stops renewing, its leases
expire after `lease_seconds`, and the others take its partitions over from the partition's last checkpoint, so
every event the dead member had not acknowledged is delivered again (at least once). Members joining or leaving
change the fair share (partitions / live members); a member above its share releases partitions at its next
heartbeat, after checkpointing them, so a rebalance repeats nothing that was acknowledged.

Leases, checkpoints and member heartbeats are ordinary events in the group's own streams (`$group-NAME-p3`,
`$group-NAME-members`), written with an exact expected version: that compare-and-set is what fences a member that
lost its lease (paused, partitioned) out of checkpointing. The same code therefore runs on every backend. Streams
whose id starts with `$` belong to agentfold and are never delivered to a group.

An event whose handler fails `max_attempts` times (default 5) is appended to `$group-NAME-dead-letters` with the
error, and the partition moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from agentfold import instrumentation
from agentfold.errors import DuplicateEventId, WrongExpectedVersion
from agentfold.events import NewEvent, RecordedEvent
from agentfold.validation import (
    check_event_types,
    check_integer,
    check_seconds,
    check_stream_id,
    check_stream_prefix,
)
from agentfold.wakeup import wait_event

if TYPE_CHECKING:
    from agentfold.log import EventLog

logger = logging.getLogger("agentfold.groups")

SYSTEM_PREFIX: Final = "$"
TRIM_EVERY: Final = 64
KEEP_MEMBER_EVENTS: Final = 200

Handler = Callable[[RecordedEvent], Awaitable[Any]]


def partition_of(stream_id: str, partitions: int) -> int:
    """The partition a stream belongs to: stable across processes, machines and Python versions."""
    return zlib.crc32(stream_id.encode("utf-8")) % partitions


@dataclass(frozen=True)
class GroupSettings:
    """How a group shares work. Every member of one group must use the same `partitions`."""

    name: str
    partitions: int = 16
    lease_seconds: float = 10.0
    """A member that has not renewed its lease for this long is presumed dead; its partitions are taken over."""
    max_attempts: int = 5
    """Failures of one event before it goes to the dead-letter stream."""
    retry_delay_seconds: float = 0.05
    checkpoint_every: int = 100
    """Acknowledged events between checkpoint writes (at most this many are delivered again after a crash)."""
    types: tuple[str, ...] | None = None
    stream_prefix: str | None = None
    page_size: int = 500

    def __post_init__(self) -> None:
        check_stream_id(self.name)
        check_integer(self.partitions, "partitions", 1, 1024)
        check_integer(self.max_attempts, "max_attempts", 1, 1_000_000)
        check_integer(self.checkpoint_every, "checkpoint_every", 1, 1_000_000)
        check_integer(self.page_size, "page_size", 1, 1_000_000)
        check_seconds(self.lease_seconds, "lease_seconds", minimum=0.001)
        check_seconds(self.retry_delay_seconds, "retry_delay_seconds")
        object.__setattr__(self, "types", check_event_types(self.types))
        check_stream_prefix(self.stream_prefix)

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3

    def partition_stream(self, partition: int) -> str:
        return f"$group-{self.name}-p{partition}"

    @property
    def members_stream(self) -> str:
        return f"$group-{self.name}-members"

    @property
    def dead_letter_stream(self) -> str:
        return f"$group-{self.name}-dead-letters"


@dataclass
class _Lease:
    """What this member knows of a partition it owns."""

    version: int
    """The partition stream's version after our last write: the expected version of our next one."""
    expires_at: float
    """Wall-clock time (seconds) our lease runs out unless renewed."""
    processed: int
    """Every event of the partition at or below this position has been handled."""
    checkpointed: int
    unacknowledged: int = 0


class ConsumerGroupMember:
    """One member of a consumer group: claims partitions, hands their events to `handler`, checkpoints them.

    Use as ``async with ConsumerGroupMember(store, settings, handler) as member: await member.run_until(...)``, or
    ``await member.run()`` in a task. Delivery is at least once; events of one stream arrive in stream order.
    """

    def __init__(
        self,
        store: EventLog,
        settings: GroupSettings,
        handler: Handler,
        member_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.handler = handler
        self.member_id = member_id or f"member-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._leases: dict[int, _Lease] = {}
        self._next_heartbeat = 0.0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.handled = 0
        self.dead_lettered = 0

    @property
    def partitions(self) -> list[int]:
        """The partitions this member owns now."""
        return sorted(self._leases)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name=f"group {self.settings.name} {self.member_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Leave the group: checkpoint and release every partition so others take over at once."""
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def run(self) -> None:
        """Work until `stop()`; always leaves the group cleanly when it returns."""
        try:
            while not self._stopping.is_set():
                if self._clock() >= self._next_heartbeat:
                    await self._heartbeat()
                worked = await self._work_once() if self._leases else False
                if not worked:
                    await self._idle()
        finally:
            await self._release_all()

    # -- leases --------------------------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        settings = self.settings
        now = self._clock()
        self._next_heartbeat = now + settings.heartbeat_seconds
        await self.store.append_capped(
            settings.members_stream,
            [NewEvent("MemberAlive", {"member": self.member_id, "until": now + settings.lease_seconds})],
            keep=KEEP_MEMBER_EVENTS,
            trim_every=KEEP_MEMBER_EVENTS,
        )
        live = await self._live_members(now)
        share = -(-settings.partitions // max(1, len(live)))
        for partition in sorted(self._leases, reverse=True):
            if len(self._leases) <= share:
                break
            await self._release(partition)
        await _all_done(self._renew(partition) for partition in list(self._leases))
        candidates = [partition for partition in self._claim_order(live) if partition not in self._leases]
        while len(self._leases) < share and candidates:
            wanted = share - len(self._leases)
            await _all_done(self._try_claim(partition, now) for partition in candidates[:wanted])
            candidates = candidates[wanted:]

    def _claim_order(self, live: list[str]) -> list[int]:
        """Start with the partitions a round-robin assignment would give us, so members rarely race."""
        partitions = range(self.settings.partitions)
        index = live.index(self.member_id) if self.member_id in live else 0
        mine = [p for p in partitions if p % max(1, len(live)) == index]
        return mine + [p for p in partitions if p not in mine]

    async def _live_members(self, now: float) -> list[str]:
        stream = self.settings.members_stream
        version = await self.store.stream_version(stream)
        recent = [
            event async for event in self.store.read_stream(stream, after_version=max(0, version - KEEP_MEMBER_EVENTS))
        ]
        until: dict[str, float] = {}
        for event in recent:  # a member's last word counts: a `MemberLeft` ends the lease its heartbeats gave
            until[event.data["member"]] = event.data["until"]
        alive = {member for member, expires in until.items() if expires > now}
        alive.add(self.member_id)
        return sorted(alive)

    async def _latest(self, partition: int) -> tuple[int, RecordedEvent | None]:
        stream = self.settings.partition_stream(partition)
        version = await self.store.stream_version(stream)
        if version == 0:
            return 0, None
        last = [event async for event in self.store.read_stream(stream, after_version=version - 1)]
        return version, last[-1] if last else None

    async def _try_claim(self, partition: int, now: float) -> None:
        version, last = await self._latest(partition)
        position = 0
        if last is not None:
            position = last.data["position"]
            owner = last.data.get("member")
            if owner and owner != self.member_id and last.type != "PartitionReleased" and last.data["until"] > now:
                return
        until = now + self.settings.lease_seconds
        try:
            result = await self.store.append(
                self.settings.partition_stream(partition),
                [NewEvent("PartitionClaimed", {"member": self.member_id, "until": until, "position": position})],
                expected_version=version,
            )
        except WrongExpectedVersion:
            return
        self._leases[partition] = _Lease(result.version, until, position, position)
        logger.debug("%s claimed partition %d of %s at %d", self.member_id, partition, self.settings.name, position)

    async def _write(self, partition: int, event_type: str, lease: _Lease, until: float) -> bool:
        """Append a lease event with our expected version; False (and the lease dropped) when we were fenced out."""
        stream = self.settings.partition_stream(partition)
        try:
            # Only the last lease event counts: the partition's owner and position are read from it.
            result = await self.store.append_capped(
                stream,
                [NewEvent(event_type, {"member": self.member_id, "until": until, "position": lease.processed})],
                expected_version=lease.version,
                keep=1,
                trim_every=TRIM_EVERY,
            )
        except WrongExpectedVersion:
            logger.warning("%s lost partition %d of %s", self.member_id, partition, self.settings.name)
            self._leases.pop(partition, None)
            return False
        lease.version = result.version
        lease.expires_at = until
        lease.checkpointed = lease.processed
        lease.unacknowledged = 0
        return True

    async def _renew(self, partition: int) -> None:
        lease = self._leases[partition]
        await self._write(partition, "PartitionRenewed", lease, self._clock() + self.settings.lease_seconds)

    async def _release(self, partition: int) -> None:
        lease = self._leases.get(partition)
        if lease is not None and await self._write(partition, "PartitionReleased", lease, 0.0):
            del self._leases[partition]

    async def _release_all(self) -> None:
        async def release(partition: int) -> None:
            try:
                await self._release(partition)
            except Exception:  # the store may be gone; the lease then simply expires
                logger.exception("could not release partition %d of %s", partition, self.settings.name)
                self._leases.pop(partition, None)

        await _all_done(release(partition) for partition in list(self._leases))
        try:
            # Counted as gone at once, not when its last heartbeat runs out: a member that joins meanwhile
            # (a worker restarted under a new id) takes every partition instead of its share of two.
            await self.store.append_capped(
                self.settings.members_stream,
                [NewEvent("MemberLeft", {"member": self.member_id, "until": 0.0})],
                keep=KEEP_MEMBER_EVENTS,
                trim_every=KEEP_MEMBER_EVENTS,
            )
        except Exception:  # the store may be gone; the heartbeat then simply runs out
            logger.exception("could not record that %s left %s", self.member_id, self.settings.name)

    # -- delivery ------------------------------------------------------------------------------------------------

    async def _work_once(self) -> bool:
        """Handle one page of events for the owned partitions; True when there was something to read."""
        settings = self.settings
        after = min(lease.processed for lease in self._leases.values())
        page, scanned_to = await self.store.read_all_page(
            after, settings.page_size, settings.types, settings.stream_prefix
        )
        observer = instrumentation.observer
        if observer is not None:
            observer.lag(settings.name, "group", max(0, await self.store.head_position() - after))
        for event in page:
            if self._stopping.is_set() or self._clock() >= self._next_heartbeat:
                return True  # lease upkeep first; the page is read again from `processed`
            if event.stream_id.startswith(SYSTEM_PREFIX):
                continue
            if settings.stream_prefix is not None and not event.stream_id.startswith(settings.stream_prefix):
                continue
            partition = partition_of(event.stream_id, settings.partitions)
            lease = self._leases.get(partition)
            if lease is None or event.position <= lease.processed:
                continue
            if lease.expires_at - self._clock() < settings.heartbeat_seconds:
                await self._renew(partition)
                if partition not in self._leases:
                    continue
            await self._deliver(event)
            lease.processed = event.position
            lease.unacknowledged += 1
            if lease.unacknowledged >= settings.checkpoint_every:
                await self._renew(partition)
        for lease in self._leases.values():
            if lease.processed < scanned_to:
                lease.processed = scanned_to
        return scanned_to > after

    async def _deliver(self, event: RecordedEvent) -> None:
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                observer = instrumentation.observer
                if observer is None:
                    await self.handler(event)
                else:
                    with observer.deliver(self.settings.name, "group", event):
                        await self.handler(event)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if attempt == attempts:
                    await self._dead_letter(event, error, attempt)
                    return
                await asyncio.sleep(self.settings.retry_delay_seconds * attempt)
            else:
                self.handled += 1
                return

    async def _dead_letter(self, event: RecordedEvent, error: Exception, attempts: int) -> None:
        self.dead_lettered += 1
        logger.error("%s: event %s dead-lettered after %d attempts: %r", self.settings.name, event.id, attempts, error)
        # Another member may have dead-lettered this event first, with its own error text: the first one stays.
        with contextlib.suppress(DuplicateEventId):
            await self._append_dead_letter(event, error, attempts)

    async def _append_dead_letter(self, event: RecordedEvent, error: Exception, attempts: int) -> None:
        await self.store.append(
            self.settings.dead_letter_stream,
            [
                NewEvent(
                    "EventDeadLettered",
                    {
                        "event_id": str(event.id),
                        "stream_id": event.stream_id,
                        "version": event.version,
                        "position": event.position,
                        "type": event.type,
                        "attempts": attempts,
                        "member": self.member_id,
                        "error": repr(error),
                        "traceback": "".join(traceback.format_exception(error))[-4000:],
                    },
                    # one dead letter per event and group, even if two members get there
                    id=uuid.uuid5(uuid.NAMESPACE_URL, f"agentfold-dead-letter:{self.settings.name}:{event.id}"),
                )
            ],
        )

    async def _idle(self) -> None:
        wait = max(0.0, min(self._next_heartbeat - self._clock(), self.settings.heartbeat_seconds))
        if not self._leases:
            await wait_event(self._stopping, wait)
            return
        after = min(lease.processed for lease in self._leases.values())
        await self.store.wait_for_append(after, wait, until=self._stopping)


async def _all_done(upkeep: Iterable[Awaitable[None]]) -> None:
    """Run the lease writes of several partitions at once, each to its own stream, so that the backend commits
    them together (one group commit) where one after another each waited for its own; every one has finished
    before this returns, and the first failure is raised then."""
    outcomes = await asyncio.gather(*upkeep, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def dead_letters(store: EventLog, group: str) -> list[RecordedEvent]:
    """The events a group gave up on, with the error of their last attempt."""
    return [event async for event in store.read_stream(GroupSettings(group).dead_letter_stream)]
