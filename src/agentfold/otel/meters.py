"""The metrics this process records while instrumented: appends (the count of their latency histogram), the events
they wrote and their latency by backend, consumers' lag, runs
finished by outcome, lease takeovers and reconciles. What the whole store holds (runs by state, stalled runs,
breakers) is read from the log by `agentfold.otel.StoreGauges`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics

APPEND_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Append latency buckets, in seconds: appends take from a tenth of a millisecond (memory) to seconds (a busy
server), so the default buckets (from 5 ms) would put every in-process append in the first one."""


class Meters:
    """The instruments, made once per observer."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.events = meter.create_counter(
            "agentfold.appended_events", unit="{event}", description="Events written by appends"
        )
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="How long appends took, whatever their outcome (its count is the number of appends)",
            explicit_bucket_boundaries_advisory=list(APPEND_BUCKETS),
        )
        self.consumer_lag = meter.create_gauge(
            "agentfold.consumer.lag",
            unit="{position}",
            description="Positions between the head of the log and where a subscriber or group member read from",
        )
        self.runs_finished = meter.create_counter(
            "agentfold.runs.finished", unit="{run}", description="Runs this process recorded as finished, by outcome"
        )
        self.takeovers = meter.create_counter(
            "agentfold.lease.takeovers", unit="{run}", description="Runs taken over from a worker whose lease expired"
        )
        self.reconciles = meter.create_counter(
            "agentfold.step.reconciles", unit="{step}", description="Steps in doubt asked of their `reconcile`"
        )
        self._append_attributes: dict[str, dict[str, str]] = {}

    def appended(self, system: str, events: int, seconds: float, error_type: str) -> None:
        attributes = self._append_attributes.get(system)
        if attributes is None:
            attributes = self._append_attributes[system] = {"db.system.name": system, "db.operation.name": "append"}
        if error_type:
            self.duration.record(seconds, {**attributes, "error.type": error_type})
            return
        self.duration.record(seconds, attributes)
        self.events.add(events, attributes)

    def lag(self, consumer: str, kind: str, behind: int) -> None:
        self.consumer_lag.set(behind, {"agentfold.consumer.name": consumer, "agentfold.consumer.kind": kind})

    def run_finished(self, outcome: str) -> None:
        self.runs_finished.add(1, {"agentfold.run.outcome": outcome})

    def happened(self, what: str, attributes: Mapping[str, Any]) -> None:
        counter = self.takeovers if what == "takeover" else self.reconciles if what == "reconcile" else None
        if counter is not None:
            counter.add(1, dict(attributes))
