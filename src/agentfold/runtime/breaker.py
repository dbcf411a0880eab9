"""Circuit breakers shared by every worker on one store: ``ctx.step(..., breaker="payments-api")``.

A breaker guards one dependency. Closed, calls go through, and each failure or timeout is recorded. When
`failure_threshold` failures fall within `window`, it opens: calls fail fast with `CircuitOpen` (the step's retry
policy decides what happens next) until `cool_down` has passed. Then one call, the probe, is let through
(half-open): its success closes the breaker, its failure opens it again. A probe that never reports back (its
worker died) is replaced after `probe_timeout`.

The state is the fold of the stream ``$breaker-<name>``, so every worker on the store sees the same breaker and
every change shows in a trace: `BreakerFailureRecorded`, `BreakerOpened`, `BreakerHalfOpened`, `BreakerClosed`.
Changes of state are appended at the exact version the writer folded, so two workers cannot both open it, or both
win the probe; the loser folds again and follows. The stream is trimmed now and then, keeping at least the last
`KEEP_EVENTS` events and never the last change of state, so a fresh reader folds the same state.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

from agentfold.errors import CircuitOpen, InvalidInput, WrongExpectedVersion
from agentfold.events import NewEvent, RecordedEvent
from agentfold.runtime.retry import seconds
from agentfold.store import EventStore
from agentfold.validation import check_stream_id, check_text

BREAKER_STREAM_PREFIX: Final = "$breaker-"
BREAKER_FAILURE_RECORDED: Final = "BreakerFailureRecorded"
BREAKER_OPENED: Final = "BreakerOpened"
BREAKER_HALF_OPENED: Final = "BreakerHalfOpened"
BREAKER_CLOSED: Final = "BreakerClosed"
BREAKER_TYPES: Final = (BREAKER_FAILURE_RECORDED, BREAKER_OPENED, BREAKER_HALF_OPENED, BREAKER_CLOSED)

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

WRITE_RETRIES: Final = 8
TRIM_EVERY: Final = 256
KEEP_EVENTS: Final = 128


def breaker_stream(name: str) -> str:
    """The stream holding the breaker's history."""
    return f"{BREAKER_STREAM_PREFIX}{name}"


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class BreakerSettings:
    """When a breaker opens and how it recovers. Every worker should use the same settings for one name."""

    failure_threshold: int = 5
    """Failures (exceptions or timeouts) within `window` that open the breaker."""
    window: timedelta | float = 60.0
    cool_down: timedelta | float = 30.0
    """How long an opened breaker fails calls fast before letting one probe through."""
    probe_timeout: timedelta | float | None = None
    """After this long without an answer, a probe is presumed lost and another call probes (default: `cool_down`)."""
    ignore: tuple[type[BaseException], ...] = ()
    """Exceptions that say nothing about the dependency's health (e.g. a declined card): not counted."""

    def __post_init__(self) -> None:
        threshold = self.failure_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise InvalidInput(f"BreakerSettings.failure_threshold must be an int >= 1, got {threshold!r}")
        seconds(self.window, "BreakerSettings.window")
        seconds(self.cool_down, "BreakerSettings.cool_down")
        if self.probe_timeout is not None:
            seconds(self.probe_timeout, "BreakerSettings.probe_timeout")
        if not isinstance(self.ignore, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in self.ignore
        ):
            raise InvalidInput("BreakerSettings.ignore must be a tuple of exception types")

    @property
    def window_us(self) -> int:
        return int(seconds(self.window, "window") * 1e6)

    @property
    def cool_down_us(self) -> int:
        return int(seconds(self.cool_down, "cool_down") * 1e6)

    @property
    def probe_timeout_us(self) -> int:
        chosen = self.cool_down if self.probe_timeout is None else self.probe_timeout
        return int(seconds(chosen, "probe_timeout") * 1e6)


def check_breaker_name(name: object) -> str:
    """`name` if it makes a valid breaker stream id, else `InvalidInput` naming it."""
    check_stream_id(breaker_stream(check_text(name, "breaker name")))
    return str(name)


@dataclass
class BreakerState:
    """The fold of a breaker's stream."""

    state: str = CLOSED
    version: int = 0
    failures: deque[int] = field(default_factory=deque)
    """When each failure since the last change of state happened (µs)."""
    open_until_us: int = 0
    probe: str | None = None
    probe_until_us: int = 0
    last_change_version: int = 0
    """The version of the last `BreakerOpened`, `BreakerHalfOpened` or `BreakerClosed`: never trimmed away."""

    def apply(self, event: RecordedEvent) -> None:
        data = event.data
        if event.type == BREAKER_FAILURE_RECORDED:
            self.failures.append(int(data["at_us"]))
        elif event.type == BREAKER_OPENED:
            self.state, self.open_until_us, self.probe = OPEN, int(data["until_us"]), None
            self.failures.clear()
        elif event.type == BREAKER_HALF_OPENED:
            self.state, self.probe, self.probe_until_us = HALF_OPEN, str(data["probe"]), int(data["until_us"])
        elif event.type == BREAKER_CLOSED:
            self.state, self.probe = CLOSED, None
            self.failures.clear()
        if event.type != BREAKER_FAILURE_RECORDED:
            self.last_change_version = event.version
        self.version = event.version

    def failures_since(self, since_us: int) -> int:
        while self.failures and self.failures[0] < since_us:
            self.failures.popleft()
        return len(self.failures)


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; a probe's outcome decides the breaker's next state."""

    probe: str | None = None


class CircuitBreaker:
    """One breaker as this process sees it: folded from its stream before every decision."""

    def __init__(self, store: EventStore, name: str, settings: BreakerSettings) -> None:
        self.store = store
        self.name = check_breaker_name(name)
        self.stream_id = breaker_stream(name)
        self.settings = settings
        self.folded = BreakerState()

    async def refresh(self) -> BreakerState:
        """Fold what was appended since the last look."""
        async for page in self.store.read_stream_pages(self.stream_id, self.folded.version):
            for event in page:
                self.folded.apply(event)
        return self.folded

    async def state(self) -> str:
        """`closed`, `open` or `half_open`, as the store holds it now."""
        return (await self.refresh()).state

    async def acquire(self, caller: str) -> Permit:
        """Leave to call the dependency, or `CircuitOpen` while it is open or another caller's probe is out."""
        for _ in range(WRITE_RETRIES):
            folded = await self.refresh()
            now = _now_us()
            if folded.state == CLOSED:
                return Permit()
            if folded.state == OPEN and now < folded.open_until_us:
                raise CircuitOpen(self.name, folded.open_until_us)
            if folded.state == HALF_OPEN and now < folded.probe_until_us:
                raise CircuitOpen(self.name, folded.probe_until_us)
            probe = {"probe": caller, "until_us": now + self.settings.probe_timeout_us}
            if await self._write([NewEvent(BREAKER_HALF_OPENED, probe)]):
                return Permit(probe=caller)
        raise CircuitOpen(self.name, self.folded.probe_until_us)

    async def succeeded(self, permit: Permit) -> None:
        """The call went through: a probe's success closes the breaker."""
        if permit.probe is None:
            return
        for _ in range(WRITE_RETRIES):
            folded = await self.refresh()
            if folded.state != HALF_OPEN or folded.probe != permit.probe:
                return
            if await self._write([NewEvent(BREAKER_CLOSED, {"probe": permit.probe})]):
                return

    async def failed(self, permit: Permit, error: BaseException, caller: str) -> None:
        """The call failed or timed out: counted, and the breaker opens at the threshold (or a probe failed)."""
        if isinstance(error, self.settings.ignore) or isinstance(error, CircuitOpen):
            return
        description = f"{type(error).__name__}: {error}"[:500]
        for _ in range(WRITE_RETRIES):
            folded = await self.refresh()
            now = _now_us()
            opened = NewEvent(
                BREAKER_OPENED,
                {"until_us": now + self.settings.cool_down_us, "by": caller, "error": description},
            )
            if permit.probe is not None:
                if folded.state != HALF_OPEN or folded.probe != permit.probe:
                    return
                if await self._write([opened]):
                    return
                continue
            if folded.state != CLOSED:
                return  # it opened meanwhile; this failure changes nothing
            failure = NewEvent(BREAKER_FAILURE_RECORDED, {"at_us": now, "by": caller, "error": description})
            recent = folded.failures_since(now - self.settings.window_us) + 1
            if recent >= self.settings.failure_threshold:
                if await self._write([failure, opened]):
                    return
            elif await self._write([failure]):
                return

    async def _write(self, events: list[NewEvent]) -> bool:
        """Append at the folded version; False when another writer got there first (fold again and decide)."""
        try:
            # The trim never reaches the last change of state: the breaker's state is folded from it on.
            await self.store.append_capped(
                self.stream_id,
                events,
                expected_version=self.folded.version,
                keep=KEEP_EVENTS + 1,
                trim_every=TRIM_EVERY,
                keep_from=self.folded.last_change_version or None,
            )
        except WrongExpectedVersion:
            return False
        return True


class BreakerBoard:
    """The breakers of one store as this process uses them, with the settings the runtime registered."""

    def __init__(self, store: EventStore, settings: dict[str, BreakerSettings] | None = None) -> None:
        self.store = store
        self.settings = settings if settings is not None else {}
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            chosen = self.settings.get(name) or BreakerSettings()
            breaker = self._breakers[name] = CircuitBreaker(self.store, name, chosen)
        return breaker


async def breaker_state(store: EventStore, name: str, settings: Any = None) -> BreakerState:
    """A breaker's state folded from the store (for inspection and tests)."""
    breaker = CircuitBreaker(store, name, settings or BreakerSettings())
    return await breaker.refresh()
