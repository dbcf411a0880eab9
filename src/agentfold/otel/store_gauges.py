"""Gauges of what the whole store holds, read from the log: runs by state (stalled runs among them) and the state of
each circuit breaker. One process of the fleet runs them (beside `agentfold serve`, or in one worker): they describe
the store, not the process, so every process reporting them would count each run once per process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Final, Self

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from agentfold.errors import AgentfoldError, InvalidInput
from agentfold.runs_index import STALLED, RunsIndex, RunsQuery
from agentfold.runtime.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker, check_breaker_name
from agentfold.runtime.registry import WorkflowRegistry
from agentfold.store import EventStore

logger = logging.getLogger("agentfold.otel")

BREAKER_LEVELS: Final = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
"""`agentfold.breaker.state`'s value per state: higher is worse, so one alert rule (``> 0``) covers both."""
REFRESH_SECONDS: Final = 15.0


class StoreGauges:
    """Reports `agentfold.runs` (runs per state; a run no live worker holds counts as ``Stalled``),
    `agentfold.runs.stalled` and `agentfold.breaker.state` (0 closed, 1 half-open, 2 open) per breaker.

    Use as ``async with StoreGauges(store, url, runtime=runtime):``. It keeps a runs index current (the one
    `agentfold serve` keeps, in the store's own database on SQL backends) and reads it and the breakers every
    `interval` seconds; the gauges report the last reading. `refresh()` reads now.
    """

    def __init__(
        self,
        store: EventStore,
        url: str,
        *,
        runtime: WorkflowRegistry | None = None,
        breakers: Iterable[str] = (),
        interval: float = REFRESH_SECONDS,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
            raise InvalidInput(f"interval must be a number of seconds > 0, got {interval!r}")
        self.store = store
        self.interval = float(interval)
        settings: dict[str, BreakerSettings] = dict(runtime.breakers) if runtime is not None else {}
        for name in breakers:
            settings.setdefault(check_breaker_name(name), BreakerSettings())
        self._breakers = [CircuitBreaker(store, name, chosen) for name, chosen in sorted(settings.items())]
        self._index = RunsIndex(store, url)
        self.runs: dict[str, int] = {}
        """Runs per state at the last reading."""
        self.breaker_states: dict[str, str] = {}
        """Each breaker's state at the last reading."""
        self._open = False
        self._refreshing: asyncio.Task[None] | None = None
        meter = metrics.get_meter("agentfold", meter_provider=meter_provider)
        meter.create_observable_gauge(
            "agentfold.runs", [self._observe_runs], unit="{run}", description="Runs in the store per state"
        )
        meter.create_observable_gauge(
            "agentfold.runs.stalled",
            [self._observe_stalled],
            unit="{run}",
            description="Unfinished runs no live worker holds",
        )
        meter.create_observable_gauge(
            "agentfold.breaker.state",
            [self._observe_breakers],
            description="Each circuit breaker's state: 0 closed, 1 half-open, 2 open",
        )

    async def __aenter__(self) -> Self:
        await self._index.__aenter__()
        self._open = True
        await self.refresh()
        self._refreshing = asyncio.create_task(self._refresh_every_interval(), name="agentfold-otel-store-gauges")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing
            self._refreshing = None
        await self._index.__aexit__(exc_type, exc, tb)

    async def refresh(self) -> None:
        """Read the runs per state and the breakers' states now."""
        await self._index.catch_up()
        self.runs = dict((await self._index.page(RunsQuery(limit=1))).counts)
        self.breaker_states = {breaker.name: await breaker.state() for breaker in self._breakers}

    async def _refresh_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except AgentfoldError as error:  # the store may be down for a while: report the last reading
                logger.warning("could not read the store's runs and breakers: %r", error)

    def _observe_runs(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self._open:
            return []
        return [Observation(count, {"agentfold.run.state": state}) for state, count in self.runs.items()]

    def _observe_stalled(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.runs.get(STALLED, 0))] if self._open else []

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self._open:
            return []
        return [
            Observation(BREAKER_LEVELS.get(state, 0), {"agentfold.breaker.name": name})
            for name, state in self.breaker_states.items()
        ]
