"""Which worker holds which run: leases kept alive by one heartbeat per worker, fenced by exact expected versions.

Each worker appends a `WorkerHeartbeat` (with its TTL) to its own stream ``$worker-<id>`` every `heartbeat`
seconds, and a `WorkerStopped` when it shuts down; the stream is trimmed behind. The cost is one append per worker
per heartbeat, whatever the number of runs it holds.

A worker holds a run from the first append it makes to the run's stream: that append names it in the metadata
(``{"worker": id}``) and is written at the exact expected version, so of several workers racing for a new run the
first one wins and the others get `WrongExpectedVersion`. The run stays held while its holder's heartbeat is fresh
(the last heartbeat's `recorded_at` plus the TTL it declared is in the future).

When the holder's heartbeat expires, another worker takes the run over by appending `WorkflowClaimed` (naming the
previous holder) to the run's stream at the exact version it folded. That append is the fence: the previous holder,
if it was only paused or cut off, fails its next append with `WrongExpectedVersion`, sees the new holder, and stops
the run (`LeaseLost`). Every effect is preceded by an intent append at an exact version, so a fenced worker cannot
start another one. A run whose holder stopped cleanly (`WorkerStopped`) or gave it back (`WorkflowReleased`) is
taken with the next append of the new holder: nothing else can still be running it.

Each start of a worker id is a new incarnation, numbered by the version of the id's stream its first heartbeat
(``started: true``) lands at; every heartbeat names its incarnation and is appended at the exact version the
incarnation last wrote, so one incarnation writes to the id's stream at a time. A start is refused
(`WorkerIdInUse`) while the id's last heartbeat is fresh and its process still runs, unless it takes the id over;
the newest incarnation then claims each run the id held (a `WorkflowClaimed` at the run's exact version), which
fences the older one out of those runs, and the older one stops serving when its next heartbeat is refused or its
follower sees the newer start, whichever comes first (`WorkerSuperseded`).

Workers find runs to take over in memory: they follow the global log for heartbeats, claims and run starts and
ends, and look at least once per heartbeat for runs whose holder expired, so a run is taken over within the TTL
plus one heartbeat of its holder's last sign of life. Clocks of workers (and of the PostgreSQL server, which stamps
events there) must agree to well within the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from agentfold import runrows
from agentfold.errors import InvalidInput, WorkerIdInUse, WorkerSuperseded, WrongExpectedVersion
from agentfold.events import NewEvent, RecordedEvent
from agentfold.runtime import history as h
from agentfold.runtime.identity import DEAD, RUNNING, ProcessIdentity, process_state, running_here, this_process
from agentfold.runtime.identity import new_worker_id as new_worker_id
from agentfold.runtime.retry import seconds
from agentfold.store import EventStore
from agentfold.validation import check_stream_id, check_text

logger = logging.getLogger("agentfold.runtime")

DEFAULT_LEASE_TTL: Final = 10.0
WORKER_STREAM_PREFIX: Final = runrows.WORKER_STREAM_PREFIX
WORKER_HEARTBEAT: Final = runrows.WORKER_HEARTBEAT
WORKER_STOPPED: Final = runrows.WORKER_STOPPED
LIVENESS_TYPES: Final = (WORKER_HEARTBEAT, WORKER_STOPPED)
TRIM_EVERY: Final = 64
"""Heartbeats between trims of a worker's stream."""
KEEP_HEARTBEATS: Final = 5
"""Heartbeats a trim leaves in a worker's stream: its liveness is read from the last one."""
START_ATTEMPTS: Final = 20
"""Reads of the id's stream a starting worker makes at most while others append to it (a start racing its own)."""
WATCH_POLL_SECONDS: Final = 0.05
"""How often a starting worker looks for another heartbeat from the id's earlier incarnation it cannot see."""
OVERDUE_HEARTBEATS: Final = 2
"""Heartbeat intervals after which an incarnation that has not heartbeated again is taken as no longer heartbeating."""

ALIVE: Final = "alive"
EXPIRED: Final = "expired"
STOPPED: Final = "stopped"
UNKNOWN: Final = "unknown"
SUPERSEDED: Final = "superseded"
"""How a run's claim names its previous holder when that was an earlier incarnation of the claiming worker's id."""


def worker_stream(worker_id: str) -> str:
    """The stream a worker heartbeats to."""
    return f"{WORKER_STREAM_PREFIX}{worker_id}"


def check_worker_id(worker_id: object) -> str:
    """`worker_id` if it makes a valid stream id, else `InvalidInput` naming it."""
    check_stream_id(worker_stream(check_text(worker_id, "worker id")))
    return str(worker_id)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class LeaseSettings:
    """How long a worker's leases last without a heartbeat, and how often it renews them."""

    ttl: float = DEFAULT_LEASE_TTL
    heartbeat: float = DEFAULT_LEASE_TTL / 3

    @classmethod
    def of(cls, ttl: timedelta | float, heartbeat: timedelta | float | None = None) -> LeaseSettings:
        """Validated settings; `heartbeat` defaults to a third of `ttl` and must be shorter than it."""
        chosen_ttl = seconds(ttl, "lease_ttl")
        if chosen_ttl <= 0:
            raise InvalidInput(f"lease_ttl must be positive, got {ttl!r}")
        chosen_heartbeat = chosen_ttl / 3 if heartbeat is None else seconds(heartbeat, "heartbeat")
        if not 0 < chosen_heartbeat < chosen_ttl:
            raise InvalidInput(
                f"heartbeat must be positive and shorter than lease_ttl ({chosen_ttl} s), got {heartbeat!r}"
            )
        return cls(chosen_ttl, chosen_heartbeat)

    @property
    def ttl_us(self) -> int:
        return int(self.ttl * 1e6)


class Liveness:
    """What the heartbeats of the log say about each worker: until when it holds its leases, or that it stopped."""

    def __init__(self) -> None:
        self._expires_us: dict[str, int] = {}
        self._stopped: set[str] = set()
        self._serves: dict[str, frozenset[str] | None] = {}
        """The workflows each worker's latest heartbeat says it runs (None: its heartbeat does not say)."""

    def observe(self, event: RecordedEvent) -> None:
        """Fold a `WorkerHeartbeat` or `WorkerStopped` event (others are ignored)."""
        worker = event.data.get("worker")
        if not isinstance(worker, str):
            return
        if event.type == WORKER_HEARTBEAT:
            expires = event.recorded_at_us + int(event.data.get("ttl_us", 0))
            if expires > self._expires_us.get(worker, 0):
                self._expires_us[worker] = expires
                names = event.data.get("workflows")
                self._serves[worker] = frozenset(map(str, names)) if isinstance(names, list) else None
            self._stopped.discard(worker)
        elif event.type == WORKER_STOPPED:
            self._stopped.add(worker)

    def state(self, worker: str, at_us: int | None = None) -> str:
        """`alive`, `expired`, `stopped` or `unknown` (no heartbeat seen)."""
        if worker in self._stopped:
            return STOPPED
        expires = self._expires_us.get(worker)
        if expires is None:
            return UNKNOWN
        return ALIVE if expires > (now_us() if at_us is None else at_us) else EXPIRED

    def expires_us(self, worker: str) -> int | None:
        """When the worker's leases run out unless it heartbeats again (None: no heartbeat seen)."""
        return self._expires_us.get(worker)

    def serving(self, workflow: str, at_us: int | None = None) -> list[str] | None:
        """The live workers that run `workflow`, sorted; None when a live worker does not say what it runs."""
        found = []
        for worker in self.alive(at_us):
            serves = self._serves.get(worker)
            if serves is None:
                return None
            if workflow in serves:
                found.append(worker)
        return found

    def served(self, at_us: int | None = None) -> set[str] | None:
        """Every workflow some live worker runs; None when a live worker does not say what it runs."""
        names: set[str] = set()
        for worker in self.alive(at_us):
            serves = self._serves.get(worker)
            if serves is None:
                return None
            names |= serves
        return names

    def to_json(self) -> dict[str, Any]:
        """What `from_json` needs to restore this view (kept in the workers' registry snapshot).

        What workers serve is kept under its own key, so a worker of an earlier release still reads the rest.
        """
        workers = set(self._expires_us) | self._stopped
        return {worker: [self._expires_us.get(worker), worker in self._stopped] for worker in sorted(workers)}

    def serves_to_json(self) -> dict[str, list[str] | None]:
        """What each worker said it serves, for `from_json`."""
        return {worker: None if names is None else sorted(names) for worker, names in sorted(self._serves.items())}

    @classmethod
    def from_json(cls, saved: dict[str, list[Any]], serves: dict[str, list[str] | None] | None = None) -> Liveness:
        liveness = cls()
        for worker, (expires, stopped) in saved.items():
            if expires is not None:
                liveness._expires_us[worker] = int(expires)
            if stopped:
                liveness._stopped.add(worker)
        for worker, names in (serves or {}).items():
            liveness._serves[worker] = None if names is None else frozenset(names)
        return liveness

    def alive(self, at_us: int | None = None) -> list[str]:
        """The workers whose leases are fresh, sorted."""
        moment = now_us() if at_us is None else at_us
        return sorted(w for w, expires in self._expires_us.items() if expires > moment and w not in self._stopped)

    async def refresh(self, store: EventStore, worker: str) -> str:
        """Read the worker's own stream (the authority, whatever the follower has seen) and return its state."""
        stream = worker_stream(worker)
        version = await store.stream_version(stream)
        async for event in store.read_stream(stream, after_version=max(0, version - 1)):
            self.observe(event)
        return self.state(worker)


def preferred_worker(workflow_id: str, workers: Iterable[str]) -> str | None:
    """The worker a new run should go to first (rendezvous hashing): every worker computes the same answer."""
    return max(workers, key=lambda worker: zlib.crc32(f"{workflow_id}\0{worker}".encode()), default=None)


def heartbeat_incarnation(event: RecordedEvent) -> int | None:
    """The incarnation a worker's record names (None for records of workers that did not number them)."""
    number = event.data.get("incarnation")
    return number if isinstance(number, int) and not isinstance(number, bool) else None


class Heartbeat:
    """Keeps one incarnation of a worker id alive: a `WorkerHeartbeat` every `settings.heartbeat` seconds.

    `start` opens the incarnation (or raises `WorkerIdInUse`, writing nothing). Every later record is appended at
    the exact version this incarnation last wrote, so once a newer incarnation of the id has started, the next one
    is refused: `on_superseded` is called (with the newer incarnation's number, when known) and the beating stops.
    `on_out_of_touch` is called when no heartbeat could be written for a whole TTL: other workers may have taken
    the runs over, so the worker should stop them.
    """

    def __init__(
        self,
        store: EventStore,
        worker_id: str,
        settings: LeaseSettings,
        describe: Callable[[], dict[str, Any]],
        on_out_of_touch: Callable[[], None],
        on_superseded: Callable[[int | None], None] | None = None,
        take_over: bool = False,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.stream_id = worker_stream(worker_id)
        self.settings = settings
        self.take_over = take_over
        self._describe = describe
        self._on_out_of_touch = on_out_of_touch
        self._on_superseded = on_superseded
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.last_success = 0.0
        self.beats = 0
        self.incarnation: int | None = None
        """This start's number: the version of the id's stream its first heartbeat landed at."""
        self.previous: dict[str, Any] = {}
        """The incarnation this one followed, and how it was found (stopped, expired, dead, silent, taken over)."""
        self.superseded = False
        self._version = 0
        self._identity: ProcessIdentity | None = None
        self._confirming = asyncio.Lock()
        self._appending = asyncio.Lock()

    async def start(self) -> None:
        """Open a new incarnation (before the worker claims anything), then keep beating in a task."""
        self._stopping = False
        nonce = uuid.uuid4().hex[:12]
        self._identity = this_process(nonce)
        await self._open()
        running_here(nonce, True)
        self._task = asyncio.create_task(self._loop(), name=f"agentfold-heartbeat-{self.worker_id}")

    def _data(self, **extra: Any) -> dict[str, Any]:
        assert self._identity is not None
        return {
            "worker": self.worker_id,
            "incarnation": self.incarnation,
            "ttl_us": self.settings.ttl_us,
            "heartbeat_us": int(self.settings.heartbeat * 1e6),
            **self._describe(),
            "process": self._identity.to_json(),
            **extra,
        }

    async def _open(self) -> None:
        """Append this incarnation's first heartbeat once the id is free (or taken over), at the exact version read."""
        seen: dict[int, int] = {}
        for _ in range(START_ATTEMPTS):
            version = await self.store.stream_version(self.stream_id)
            last = None
            if version > 0:
                last = [event async for event in self.store.read_stream(self.stream_id, after_version=version - 1)][-1]
            previous_state = "none" if last is None else await self._previous_state(last, version, seen)
            if previous_state is None:
                continue  # the id's stream moved on while we watched it: read it again
            self.incarnation = version + 1
            self.previous = {
                "incarnation": None if last is None else heartbeat_incarnation(last),
                "state": previous_state,
            }
            started = NewEvent(WORKER_HEARTBEAT, self._data(started=True, previous=self.previous))
            try:
                await self._append(started, version)
            except WrongExpectedVersion:
                continue
            self.last_success = time.monotonic()
            self.beats += 1
            return
        raise WorkerIdInUse(self.worker_id, version, "another worker keeps starting under it", 0.0)

    async def _previous_state(self, last: RecordedEvent, version: int, seen: dict[int, int]) -> str | None:
        """How the id's latest incarnation left it (`stopped`, `expired`, `dead`, `silent`, `taken_over`); None
        when its stream moved on while this start watched it. Raises `WorkerIdInUse` while it still heartbeats."""
        if last.type != WORKER_HEARTBEAT:
            return STOPPED
        ttl_us = int(last.data.get("ttl_us", 0))
        expires = last.recorded_at_us + ttl_us
        if expires <= now_us():
            return EXPIRED
        if self.take_over:
            return "taken_over"
        incarnation = heartbeat_incarnation(last) or 0
        identity = ProcessIdentity.from_json(last.data.get("process"))
        holder = "an unknown process" if identity is None else f"pid {identity.pid} on {identity.host}"
        if seen.get(incarnation, last.version) < last.version:
            raise WorkerIdInUse(self.worker_id, incarnation, holder, (now_us() - last.recorded_at_us) / 1e6)
        seen[incarnation] = last.version
        state = process_state(identity)
        if state == DEAD:
            return DEAD
        if state == RUNNING:
            raise WorkerIdInUse(self.worker_id, incarnation, holder, (now_us() - last.recorded_at_us) / 1e6)
        # Another machine or namespace, or a paused process: wait for its next heartbeat, until it is overdue.
        interval_us = int(last.data.get("heartbeat_us", ttl_us // 3))
        deadline = min(expires, last.recorded_at_us + OVERDUE_HEARTBEATS * interval_us)
        while (left := deadline - now_us()) > 0:
            await asyncio.sleep(min(WATCH_POLL_SECONDS, left / 1e6))
            if await self.store.stream_version(self.stream_id) != version:
                return None
        return "silent"

    async def _append(self, event: NewEvent, expected: int) -> None:
        result = await self.store.append_capped(
            self.stream_id, [event], expected_version=expected, keep=KEEP_HEARTBEATS, trim_every=TRIM_EVERY
        )
        self._version = result.version

    async def _append_own(self, event: NewEvent) -> None:
        """Append at the version this incarnation last wrote; `WorkerSuperseded` if a newer one wrote since."""
        async with self._appending:  # the heartbeat task and `confirm` never race each other for a version
            if self.superseded:
                raise WorkerSuperseded(self.worker_id, self.incarnation or 0, None)
            expected = self._version
            try:
                await self._append(event, expected)
            except WrongExpectedVersion as error:
                since = [event async for event in self.store.read_stream(self.stream_id, after_version=expected)]
                others = [event for event in since if heartbeat_incarnation(event) != self.incarnation]
                if others or not since:
                    newer = heartbeat_incarnation(others[0]) if others else None
                    self._supersede(newer)
                    raise WorkerSuperseded(self.worker_id, self.incarnation or 0, newer) from error
                # Our own earlier append landed although its answer was lost: carry on after it.
                await self._append(event, since[-1].version)

    def _supersede(self, newer: int | None) -> None:
        if self.superseded:
            return
        self.superseded = True
        self._stopping = True
        if self._identity is not None:
            running_here(self._identity.nonce, False)
        if self._on_superseded is not None:
            self._on_superseded(newer)

    async def beat(self) -> None:
        await self._append_own(NewEvent(WORKER_HEARTBEAT, self._data()))
        self.last_success = time.monotonic()
        self.beats += 1

    async def _loop(self) -> None:
        while not self._stopping:  # not only cancellation: a driver may swallow one (redis-py can, mid-command)
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except WorkerSuperseded:
                return
            except Exception as error:
                logger.warning("worker %s could not heartbeat: %r", self.worker_id, error)
                if time.monotonic() - self.last_success >= self.settings.ttl:
                    self._on_out_of_touch()

    async def confirm(self) -> None:
        """Heartbeat now if the last heartbeat is overdue (this process was paused, or the store slow), so an
        incarnation that a newer one superseded meanwhile learns it (`WorkerSuperseded`) before it starts more."""
        if time.monotonic() - self.last_success < self.settings.heartbeat * OVERDUE_HEARTBEATS:
            return
        async with self._confirming:
            if time.monotonic() - self.last_success >= self.settings.heartbeat * OVERDUE_HEARTBEATS:
                await self.beat()

    def superseded_by(self, newer: int | None) -> None:
        """A newer incarnation of the id was seen elsewhere (the worker's follower): stop beating, write nothing."""
        self._supersede(newer)
        if self._task is not None:
            self._task.cancel()

    async def stop(self, reason: str = "shutdown") -> None:
        """Stop beating and record `WorkerStopped`: every run this incarnation held is free at once.

        A superseded incarnation records nothing: the id and its runs belong to the newer one.
        """
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self.settings.ttl)
            self._task = None
        if self._identity is not None:
            running_here(self._identity.nonce, False)
        if self.superseded:
            return
        stopped = {"worker": self.worker_id, "incarnation": self.incarnation, "reason": reason}
        try:
            await self._append_own(NewEvent(WORKER_STOPPED, stopped))
        except WorkerSuperseded:
            return


# -- inspection ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLease:
    """Who holds an unfinished run, and whether that holder is still alive."""

    workflow_id: str
    workflow: str
    state: str
    """The run's lifecycle state."""
    owner: str | None
    """The worker that last claimed it (None: never run, or given back)."""
    owner_state: str
    """`alive`, `expired`, `stopped`, `unknown`, or `none` without an owner."""
    lease_expires_at_us: int | None
    """When the owner's lease runs out unless it heartbeats again."""
    last_event_at_us: int
    version: int

    @property
    def stalled(self) -> bool:
        """Unfinished and nobody alive holds it: it waits for a worker to take it over."""
        return self.owner_state != ALIVE

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "workflow": self.workflow,
            "state": self.state,
            "owner": self.owner,
            "owner_state": self.owner_state,
            "lease_expires_at_us": self.lease_expires_at_us,
            "last_event_at_us": self.last_event_at_us,
            "version": self.version,
            "stalled": self.stalled,
        }


async def worker_liveness(store: EventStore) -> Liveness:
    """The liveness of every worker that heartbeats to `store`, folded from their (trimmed) streams."""
    liveness = Liveness()
    async for page in store.read_all_pages(types=LIVENESS_TYPES, stream_prefix=WORKER_STREAM_PREFIX):
        for event in page:
            liveness.observe(event)
    return liveness


async def run_leases(store: EventStore, at_us: int | None = None) -> list[RunLease]:
    """Every unfinished run (oldest first) with its holder and the holder's liveness."""
    unfinished: dict[str, None] = {}
    types = [h.WORKFLOW_STARTED, h.WORKFLOW_RESTARTED, *h.FINISHED_TYPES]
    async for page in store.read_all_pages(types=types, stream_prefix=h.WORKFLOW_STREAM_PREFIX):
        for event in page:
            workflow_id = event.stream_id[len(h.WORKFLOW_STREAM_PREFIX) :]
            if event.type in (h.WORKFLOW_STARTED, h.WORKFLOW_RESTARTED):
                unfinished[workflow_id] = None
            else:
                unfinished.pop(workflow_id, None)
    liveness = await worker_liveness(store)
    moment = now_us() if at_us is None else at_us
    leases = []
    for workflow_id in unfinished:
        history = h.History(workflow_id)
        last_at = 0
        async for page in store.read_stream_pages(h.workflow_stream(workflow_id)):
            for event in page:
                history.apply_recorded(event)
                last_at = event.recorded_at_us
            history.version = page[-1].version
        if history.finished is not None or history.version == 0:
            continue
        owner_state = "none" if history.owner is None else liveness.state(history.owner, moment)
        expires = None if history.owner is None else liveness.expires_us(history.owner)
        leases.append(
            RunLease(
                workflow_id,
                history.workflow,
                history.state,
                history.owner,
                owner_state,
                expires,
                last_at,
                history.version,
            )
        )
    return leases


async def stalled_runs(store: EventStore, at_us: int | None = None) -> list[RunLease]:
    """Unfinished runs that no live worker holds: their holder's lease expired, it stopped, or none ever ran them.

    A healthy deployment takes them over within one TTL plus one heartbeat; a run listed for longer means no
    worker can run it (its workflow is not registered anywhere, or every worker is down).
    """
    return [lease for lease in await run_leases(store, at_us) if lease.stalled]
