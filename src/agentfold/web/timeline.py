"""A run's timeline as a chart: one bar per step attempt, from its StepStarted to its outcome, and points for
signals, timers and waits, all on one time axis.

Built from `agentfold.runtime.inspect.timeline` (the rows `agentfold show` prints), so the page and the command line
agree on what each event means. Positions are fractions of the run's span, so the page scales them to any width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from agentfold.runtime import history as h
from agentfold.runtime.inspect import (
    FLAG_ATTEMPT_FAILED,
    FLAG_FAILED,
    FLAG_IN_DOUBT,
    FLAG_RECONCILED,
    FLAG_RETRY,
    INBOX,
    Timeline,
    TimelineRow,
)

COMPLETED: Final = "completed"
FAILED: Final = "failed"
ATTEMPT_FAILED: Final = "attempt-failed"
IN_DOUBT: Final = "in-doubt"
RECONCILED: Final = "reconciled"
RUNNING: Final = "running"

POINT_TYPES: Final = {
    h.WAIT_STARTED: "wait",
    h.SIGNAL_RECEIVED: "signal",
    h.WAIT_TIMED_OUT: "timeout",
    h.TIMER_STARTED: "timer",
    h.TIMER_FIRED: "timer",
    h.SIGNAL_SENT: "signal",
    h.WORKFLOW_CLAIMED: "takeover",
    h.WORKFLOW_CANCEL_REQUESTED: "control",
    h.WORKFLOW_RESTARTED: "control",
}
MIN_BAR: Final = 0.004
"""Narrowest bar, as a fraction of the axis, so an instant step still shows."""


@dataclass(frozen=True)
class Bar:
    """One attempt of one step."""

    seq: int
    name: str
    attempt: int
    outcome: str
    """`completed`, `failed`, `attempt-failed`, `in-doubt`, `reconciled` or `running`."""
    marks: tuple[str, ...]
    """Flags worth a symbol on the bar: `retry`, `reconciled`, `in doubt`."""
    start: float
    width: float
    started_version: int
    ended_version: int | None
    took_us: int | None

    @property
    def left_pct(self) -> str:
        return f"{self.start * 100:.3f}%"

    @property
    def width_pct(self) -> str:
        return f"{self.width * 100:.3f}%"

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "name": self.name,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "marks": list(self.marks),
            "start": self.start,
            "width": self.width,
            "started_version": self.started_version,
            "ended_version": self.ended_version,
            "took_s": None if self.took_us is None else self.took_us / 1e6,
        }


@dataclass(frozen=True)
class Point:
    """A signal, timer, wait, takeover by another worker or run control (cancel, restart) at one moment."""

    kind: str
    event_type: str
    name: str
    at: float
    version: int
    stream: str

    @property
    def at_pct(self) -> str:
        return f"{self.at * 100:.3f}%"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "event": self.event_type,
            "name": self.name,
            "at": self.at,
            "version": self.version,
            "stream": self.stream,
        }


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    points: list[Point]
    start_us: int
    end_us: int

    def to_json(self) -> dict[str, Any]:
        return {
            "bars": [bar.to_json() for bar in self.bars],
            "points": [point.to_json() for point in self.points],
            "span_s": (self.end_us - self.start_us) / 1e6,
        }


def _outcome_of(row: TimelineRow) -> str:
    if row.event_type == h.STEP_COMPLETED:
        return RECONCILED if row.flag == FLAG_RECONCILED else COMPLETED
    if row.flag == FLAG_FAILED:
        return FAILED
    if row.flag == FLAG_ATTEMPT_FAILED:
        return ATTEMPT_FAILED
    return COMPLETED


def chart(timeline: Timeline, now_us: int) -> Chart:
    """Bars and points for the run, scaled to its span (to `now_us` while it runs)."""
    rows = timeline.rows
    if not rows:
        return Chart([], [], now_us, now_us)
    start = rows[0].recorded_at_us
    finished = timeline.run.finished_at_us
    end = max(finished if finished is not None else now_us, rows[-1].recorded_at_us)
    span = max(end - start, 1)

    def fraction(at_us: int) -> float:
        return min(1.0, max(0.0, (at_us - start) / span))

    open_attempts: dict[tuple[int, int], TimelineRow] = {}
    bars: list[Bar] = []
    points: list[Point] = []
    reconciled: set[tuple[int, int]] = set()
    for row in rows:
        if row.stream != INBOX and row.event_type == h.STEP_STARTED and row.seq is not None:
            open_attempts[(row.seq, row.attempt or 0)] = row
        elif row.event_type == h.STEP_RECONCILED and row.seq is not None:
            reconciled.add((row.seq, row.attempt or 0))
        elif row.event_type in (h.STEP_COMPLETED, h.STEP_FAILED) and row.seq is not None:
            key = (row.seq, row.attempt or 0)
            began = open_attempts.pop(key, None)
            if began is None:
                continue
            bars.append(_bar(began, row, _outcome_of(row), key in reconciled, fraction))
        elif row.event_type in POINT_TYPES:
            kind = POINT_TYPES[row.event_type]
            points.append(Point(kind, row.event_type, row.name, fraction(row.recorded_at_us), row.version, row.stream))
    for began in open_attempts.values():
        outcome = IN_DOUBT if began.flag == FLAG_IN_DOUBT else RUNNING
        bars.append(_bar(began, None, outcome, False, fraction, end_us=end))
    bars.sort(key=lambda bar: (bar.start, bar.seq, bar.attempt))
    return Chart(bars, points, start, end)


def _bar(
    began: TimelineRow,
    ended: TimelineRow | None,
    outcome: str,
    reconciled: bool,
    fraction: Any,
    end_us: int | None = None,
) -> Bar:
    left = fraction(began.recorded_at_us)
    right = fraction(ended.recorded_at_us if ended is not None else end_us)
    marks: list[str] = []
    if began.flag == FLAG_RETRY or (began.attempt or 0) > 1:
        marks.append(FLAG_RETRY)
    if reconciled or outcome == RECONCILED:
        marks.append(FLAG_RECONCILED)
    if outcome == IN_DOUBT:
        marks.append(FLAG_IN_DOUBT)
    width = max(right - left, MIN_BAR)
    return Bar(
        seq=began.seq or 0,
        name=began.name,
        attempt=began.attempt or 0,
        outcome=outcome,
        marks=tuple(marks),
        start=min(left, 1.0 - width),
        width=width,
        started_version=began.version,
        ended_version=None if ended is None else ended.version,
        took_us=None if ended is None else ended.took_us,
    )
