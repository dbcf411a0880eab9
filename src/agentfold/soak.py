"""A bounded soak run: every kind of work at once on one store, its invariants checked while it runs.

For `seconds`, in one process on the store at `url`:

- appenders write batches to streams of their own with exact expected versions, and now and then send an
  acknowledged batch again (an idempotent retry, which must return the original result and write nothing);
- catch-up subscriptions start at random points in the past, catch up and follow live for a while;
- a consumer group handles every appended event, while its members leave and new ones join;
- workflow runs with two recorded steps each are started continuously and served by workers that are stopped and
  replaced (their runs are taken over); every step's effect is counted per idempotency key.

A checker follows the log through a second connection the whole time. The invariants, checked continuously and
once more after the run, are: no acknowledged event is lost, positions strictly increase and no event appears
twice in the log; an acknowledged append is stored whole where its acknowledgement said; a subscription delivers
exactly the log after its start, in order, each event once; the group handles every event at least once and each
stream's events without a gap (repeats only after a member change: at least once); every workflow run completes
and every step effect happens exactly once.

`run_soak` returns a report (a JSON-ready dict) whose `violations` list is empty when every invariant held.
`agentfold soak --store URL --seconds N` prints it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import agentfold
from agentfold.errors import AgentfoldError, InvalidInput
from agentfold.events import AppendResult, NewEvent, RecordedEvent
from agentfold.groups import ConsumerGroupMember
from agentfold.runtime import NOT_APPLIED, RetryPolicy, Runtime, WorkflowContext
from agentfold.runtime.worker import Worker
from agentfold.store import EventStore

SOAK_PREFIX: Final = "soak-"
"""Streams the appenders write; the group and the subscription checks look at these only (other streams belong to
the group and the workflows and may be trimmed)."""
DRAIN_SECONDS: Final = 120.0
"""How long the run may take, after `seconds`, for the group and the workers to finish what was started."""
APPENDERS: Final = 4
STREAMS_PER_APPENDER: Final = 8
GROUP_MEMBERS: Final = 2
WORKERS: Final = 2
ROTATE_SECONDS: Final = 4.0
"""How often a group member and a worker are replaced."""


@dataclass
class _Acknowledged:
    stream_id: str
    ids: list[str]
    result: AppendResult
    batch: list[NewEvent]


@dataclass
class _State:
    """What the run has done and seen so far, shared by its tasks."""

    deadline: float
    violations: list[str] = field(default_factory=list)
    acknowledged: list[_Acknowledged] = field(default_factory=list)
    unchecked: list[_Acknowledged] = field(default_factory=list)
    """Acknowledged appends above the position the checker has read so far."""
    taken_for_checks: int = 0
    subscription_checks: list[tuple[int, int, list[tuple[int, str]]]] = field(default_factory=list)
    """(start, last position, soak events delivered) of subscriptions that ended beyond the checked position."""
    retries: int = 0
    retryable_errors: Counter[str] = field(default_factory=Counter)
    log_positions: list[int] = field(default_factory=list)
    """Positions of `soak-` events in the log, in order, as the checker read them."""
    log_ids: dict[int, str] = field(default_factory=dict)
    """Position -> event id of every `soak-` event the checker read."""
    all_ids: set[str] = field(default_factory=set)
    checked_to: int = 0
    events_read: int = 0
    subscriptions: int = 0
    subscription_deliveries: int = 0
    group_handled: Counter[str] = field(default_factory=Counter)
    group_last_version: dict[str, int] = field(default_factory=dict)
    group_members_started: int = 0
    workflows_started: list[str] = field(default_factory=list)
    workers_started: int = 0
    effects: Counter[str] = field(default_factory=Counter)

    @property
    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def violate(self, message: str) -> None:
        if len(self.violations) < 100:
            self.violations.append(message)


async def run_soak(url: str, seconds: float, *, seed: int | None = None) -> dict[str, Any]:
    """Run the soak for `seconds` on the store at `url` and return the report (see the module docstring).

    The store should be empty or hold only an earlier soak's streams of other names; the run writes streams named
    ``soak-…``, a consumer group ``soak`` and workflow runs ``soak-…``.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 24 * 3600:
        raise InvalidInput(f"seconds must be a number in (0, 86400], got {seconds!r}")
    chooser = random.Random(seed)
    started = time.monotonic()
    state = _State(deadline=started + seconds)
    async with agentfold.connect(url) as store:
        observer_context: contextlib.AbstractAsyncContextManager[EventStore]
        if url.startswith("memory:"):
            observer_context = contextlib.nullcontext(store)  # a second memory:// store would be another store
        else:
            observer_context = agentfold.connect(url)
        async with observer_context as observer:
            run_tag = f"{int(time.time() * 1000):x}{chooser.getrandbits(16):04x}"
            await _run(store, observer, state, chooser, run_tag)
            head = await observer.head_position()
    elapsed = time.monotonic() - started
    events = sum(len(ack.ids) for ack in state.acknowledged)
    effects_per_key = Counter(state.effects.values())
    return {
        "url_scheme": url.split("://", 1)[0],
        "seconds": round(elapsed, 1),
        "appends": len(state.acknowledged),
        "events_appended": events,
        "appends_per_second": round(len(state.acknowledged) / max(seconds, 1e-9), 1),
        "idempotent_retries": state.retries,
        "retryable_errors": dict(state.retryable_errors),
        "head_position": head,
        "events_checked": state.events_read,
        "subscriptions": state.subscriptions,
        "subscription_deliveries": state.subscription_deliveries,
        "group_members_started": state.group_members_started,
        "group_deliveries": sum(state.group_handled.values()),
        "group_redeliveries": sum(count - 1 for count in state.group_handled.values() if count > 1),
        "workflows_completed": len(state.workflows_started),
        "workers_started": state.workers_started,
        "step_effects": sum(state.effects.values()),
        "step_keys_with_more_than_one_effect": sum(n for k, n in effects_per_key.items() if k > 1),
        "violations": state.violations,
    }


async def _run(store: EventStore, observer: EventStore, state: _State, chooser: random.Random, tag: str) -> None:
    appenders = [
        asyncio.create_task(_appender(store, state, index, chooser.randrange(2**32), tag)) for index in range(APPENDERS)
    ]
    appends_done = asyncio.Event()
    asyncio.gather(*appenders, return_exceptions=True).add_done_callback(lambda _: appends_done.set())
    tasks = [*appenders]
    tasks.append(asyncio.create_task(_subscriptions(observer, state, chooser.randrange(2**32), tag)))
    tasks.append(asyncio.create_task(_group(store, state, tag, appends_done)))
    tasks.append(asyncio.create_task(_workflows(store, state, tag)))
    checker_stop = asyncio.Event()
    checker = asyncio.create_task(_checker(observer, state, tag, checker_stop))
    try:
        async with asyncio.timeout(state.deadline - time.monotonic() + DRAIN_SECONDS):
            await asyncio.gather(*tasks)
            checker_stop.set()
            await checker
    except TimeoutError:
        state.violate(f"the run did not finish its work within {DRAIN_SECONDS} s after the deadline")
    finally:
        for task in [*tasks, checker]:
            task.cancel()
        await asyncio.gather(*tasks, checker, return_exceptions=True)
    _final_checks(state)


async def _retrying(state: _State, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """Call until it returns; a retryable store error is counted and retried, anything else propagates."""
    while True:
        try:
            return await call()
        except AgentfoldError as error:
            _count_retryable(state, what, error)
            await asyncio.sleep(0.05)


def _count_retryable(state: _State, what: str, error: AgentfoldError) -> None:
    """Count a retryable store error under `what`; raise any other."""
    if not error.retryable:
        raise error
    state.retryable_errors[f"{what}: {type(error).__name__}"] += 1


# -- appends ------------------------------------------------------------------------------------------------------


async def _appender(store: EventStore, state: _State, index: int, seed: int, tag: str) -> None:
    chooser = random.Random(seed)
    versions: dict[str, int] = {}
    mine: list[_Acknowledged] = []
    while state.running:
        stream_id = f"{SOAK_PREFIX}{tag}-{index}-{chooser.randrange(STREAMS_PER_APPENDER)}"
        batch = [
            NewEvent("SoakWritten", {"appender": index, "k": k, "pad": "x" * chooser.randrange(200)})
            for k in range(chooser.randint(1, 5))
        ]
        expected = versions.get(stream_id, 0)
        result: AppendResult = await _retrying(
            state, "append", functools.partial(store.append, stream_id, batch, expected_version=expected)
        )
        if result.version != expected + len(batch):
            state.violate(f"{stream_id}: append at version {expected} of {len(batch)} events gave {result}")
        versions[stream_id] = result.version
        acknowledged = _Acknowledged(stream_id, [str(event.id) for event in batch], result, batch)
        state.acknowledged.append(acknowledged)
        mine.append(acknowledged)
        if chooser.random() < 0.1:  # send an acknowledged append again: an idempotent retry
            again = chooser.choice(mine)
            repeated = await _retrying(state, "retry", functools.partial(store.append, again.stream_id, again.batch))
            state.retries += 1
            if repeated != again.result:
                state.violate(f"{again.stream_id}: a retry returned {repeated}, the original append {again.result}")
        await asyncio.sleep(0.005)


# -- the checker: follows the whole log ---------------------------------------------------------------------------


async def _checker(store: EventStore, state: _State, tag: str, stop: asyncio.Event) -> None:
    prefix = f"{SOAK_PREFIX}{tag}-"
    after = 0
    last_seen = 0
    while True:
        stopping = stop.is_set()
        try:
            async for page in store.read_all_pages(after_position=after):
                for event in page:
                    if event.position <= last_seen:
                        state.violate(f"the log went back from position {last_seen} to {event.position}")
                    last_seen = event.position
                    state.events_read += 1
                    if event.stream_id.startswith(prefix):
                        event_id = str(event.id)
                        if event_id in state.all_ids:
                            state.violate(f"event {event_id} appears twice in the log")
                        state.all_ids.add(event_id)
                        state.log_positions.append(event.position)
                        state.log_ids[event.position] = event_id
                after = max(after, page[-1].position if page else after)
        except AgentfoldError as error:
            _count_retryable(state, "read_all", error)
        state.checked_to = after
        _check_acknowledged(state)
        if stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def _check_acknowledged(state: _State) -> None:
    """Every acknowledged append at or below the checked position is in the log, whole, where it was said to be."""
    state.unchecked.extend(state.acknowledged[state.taken_for_checks :])
    state.taken_for_checks = len(state.acknowledged)
    later: list[_Acknowledged] = []
    for ack in state.unchecked:
        if ack.result.position > state.checked_to:
            later.append(ack)
            continue
        first = ack.result.position - len(ack.ids) + 1
        stored = [state.log_ids.get(position) for position in range(first, ack.result.position + 1)]
        if stored != ack.ids:
            state.violate(f"{ack.stream_id}: the append acknowledged as {ack.result} is not in the log as sent")
    state.unchecked = later


# -- catch-up subscriptions ---------------------------------------------------------------------------------------


async def _subscriptions(store: EventStore, state: _State, seed: int, tag: str) -> None:
    chooser = random.Random(seed)
    running: set[asyncio.Task[None]] = set()
    while state.running:
        if len(running) < 3:
            head = await _retrying(state, "head_position", store.head_position)
            start = chooser.randint(max(0, head - 5000), head)
            task = asyncio.create_task(_subscription(store, state, start, chooser.uniform(0.5, 3.0), tag))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.sleep(chooser.uniform(0.2, 1.0))
    await asyncio.gather(*running)


async def _subscription(store: EventStore, state: _State, start: int, live_seconds: float, tag: str) -> None:
    """Catch up from `start` to the head at the start, follow live for `live_seconds`, then check what came."""
    prefix = f"{SOAK_PREFIX}{tag}-"
    state.subscriptions += 1
    head = await _retrying(state, "head_position", store.head_position)
    seen: list[tuple[int, str]] = []
    last = start
    stop_at: float | None = None
    subscription = store.subscribe(after_position=start)

    async def follow() -> None:
        nonlocal last, stop_at
        async for event in subscription:
            if event.position <= last:
                state.violate(f"a subscription from {start} delivered position {event.position} after {last}")
            last = event.position
            state.subscription_deliveries += 1
            if event.stream_id.startswith(prefix):
                seen.append((event.position, str(event.id)))
            if stop_at is None and event.position >= head:
                stop_at = time.monotonic() + live_seconds
            if stop_at is not None and time.monotonic() >= stop_at:
                return

    async def stop_when_idle() -> None:
        nonlocal stop_at
        while True:
            if stop_at is None and last >= head:
                stop_at = time.monotonic() + live_seconds
            if stop_at is not None and time.monotonic() >= stop_at:
                await subscription.close()
                return
            await asyncio.sleep(0.05)

    stopper = asyncio.create_task(stop_when_idle())
    try:
        await _retrying(state, "subscription", follow)
    finally:
        stopper.cancel()
        await subscription.close()
    if state.checked_to >= last:
        _check_subscription(state, start, last, seen)
    else:  # the checker has not read this far yet: checked after its last pass
        state.subscription_checks.append((start, last, seen))


def _check_subscription(state: _State, start: int, last: int, seen: list[tuple[int, str]]) -> None:
    low = bisect.bisect_right(state.log_positions, start)
    high = bisect.bisect_right(state.log_positions, last)
    expected = [(position, state.log_ids[position]) for position in state.log_positions[low:high]]
    if seen != expected:
        state.violate(
            f"a subscription from {start} to {last} delivered {len(seen)} soak events, the log holds {len(expected)}"
        )


# -- a consumer group with changing members -----------------------------------------------------------------------


async def _group(store: EventStore, state: _State, tag: str, appends_done: asyncio.Event) -> None:
    prefix = f"{SOAK_PREFIX}{tag}-"

    missing: set[str] = set()
    all_handled = asyncio.Event()

    async def handle(event: RecordedEvent) -> None:
        last = state.group_last_version.get(event.stream_id, 0)
        if event.version > last + 1:
            state.violate(f"the group skipped from version {last} to {event.version} of {event.stream_id}")
        state.group_last_version[event.stream_id] = max(last, event.version)
        state.group_handled[str(event.id)] += 1
        if missing:
            missing.discard(str(event.id))
            if not missing:
                all_handled.set()

    def member() -> ConsumerGroupMember:
        state.group_members_started += 1
        return store.consumer_group(
            f"soak-{tag}",
            handle,
            member_id=f"member-{state.group_members_started}",
            partitions=8,
            lease_seconds=3.0,
            stream_prefix=prefix,
            checkpoint_every=20,
        )

    current: list[ConsumerGroupMember] = []
    try:
        for _ in range(GROUP_MEMBERS):
            current.append(await member().__aenter__())
        while state.running:
            await asyncio.sleep(min(ROTATE_SECONDS, max(0.0, state.deadline - time.monotonic())))
            if not state.running:
                break
            await current.pop(0).stop()  # leaves cleanly: checkpoints and releases its partitions
            current.append(await member().__aenter__())
        # Everything appended (and acknowledged) must reach the group, up to the appenders' last append.
        await appends_done.wait()
        missing.update(event_id for ack in state.acknowledged for event_id in ack.ids)
        missing.difference_update(state.group_handled)
        if missing:
            await all_handled.wait()
    finally:
        for leaving in current:
            await leaving.stop()


# -- workflows with rotating workers ------------------------------------------------------------------------------


async def _workflows(store: EventStore, state: _State, tag: str) -> None:
    runtime = Runtime(default_retry=RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.1))

    async def effect(order: int, idempotency_key: str) -> str:
        state.effects[idempotency_key] += 1
        await asyncio.sleep(0.01)  # a call that takes a moment: workers get stopped in the middle of some
        return idempotency_key

    async def status(idempotency_key: str, order: int) -> Any:
        return idempotency_key if state.effects[idempotency_key] else NOT_APPLIED

    @runtime.workflow(name=f"soak-order-{tag}")
    async def order(ctx: WorkflowContext, number: int) -> list[str]:
        charged = await ctx.step("charge", effect, number, reconcile=status)
        shipped = await ctx.step("ship", effect, number, reconcile=status)
        return [str(charged), str(shipped)]

    client = runtime.client(store)

    async def worker() -> Worker:
        state.workers_started += 1
        started = runtime.worker(store, lease_ttl=3.0, worker_id=f"soak-{tag}-w{state.workers_started}")
        await started.start()
        return started

    current: list[Worker] = []
    try:
        for _ in range(WORKERS):
            current.append(await worker())
        rotate_at = time.monotonic() + ROTATE_SECONDS
        number = 0
        while state.running:
            workflow_id = f"soak-{tag}-{number}"
            start = functools.partial(client.start, order, number, workflow_id=workflow_id)
            await _retrying(state, "start workflow", start)
            state.workflows_started.append(workflow_id)
            number += 1
            if time.monotonic() >= rotate_at:
                await current.pop(0).stop()  # a graceful stop: the other workers take its runs over
                current.append(await worker())
                rotate_at = time.monotonic() + ROTATE_SECONDS
            await asyncio.sleep(0.05)
        for workflow_id in state.workflows_started:
            result = await _retrying(
                state, "workflow result", functools.partial(client.result, workflow_id, timeout=60)
            )
            if not isinstance(result, list) or len(result) != 2:
                state.violate(f"workflow {workflow_id} returned {result!r}")
    finally:
        for leaving in current:
            await leaving.stop()


# -- after the run ------------------------------------------------------------------------------------------------


def _final_checks(state: _State) -> None:
    _check_acknowledged(state)
    if state.unchecked:
        state.violate(f"{len(state.unchecked)} acknowledged appends lie beyond the last position the checker read")
    for start, last, seen in state.subscription_checks:
        _check_subscription(state, start, last, seen)
    acknowledged_ids = {event_id for ack in state.acknowledged for event_id in ack.ids}
    lost = acknowledged_ids - state.all_ids
    if lost:
        state.violate(f"{len(lost)} acknowledged events are missing from the log")
    unacknowledged = state.all_ids - acknowledged_ids
    if unacknowledged:
        state.violate(f"{len(unacknowledged)} events in the log were never acknowledged to a writer")
    not_handled = acknowledged_ids - state.group_handled.keys()
    if not_handled:
        state.violate(f"the consumer group never handled {len(not_handled)} events")
    repeated = {key: count for key, count in state.effects.items() if count > 1}
    if repeated:
        state.violate(f"{len(repeated)} step effects happened more than once, e.g. {next(iter(repeated.items()))}")
    by_stream: defaultdict[str, list[int]] = defaultdict(list)
    for ack in state.acknowledged:
        by_stream[ack.stream_id].append(ack.result.version)
    for stream_id, versions in by_stream.items():
        if versions != sorted(versions):
            state.violate(f"{stream_id}: acknowledged versions are not increasing")
