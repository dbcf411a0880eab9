"""Hybrid logical clocks: timestamps that follow causality even when machine clocks disagree.

A timestamp is (wall milliseconds, logical counter, agent id), compared in that order. The wall part stays close to
real time; the logical counter takes over whenever the wall clock stands still, runs backwards, or lags behind a
timestamp already seen. Because a clock that *observes* a timestamp never issues a smaller one afterwards, a write
made after reading another write always carries the larger timestamp, whatever the two machines' clocks say. The
agent id makes every timestamp unique between agents, so comparisons never tie across agents.

Pure: no I/O. The wall clock is a function the caller passes, which is how tests simulate skew.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from agentfold.errors import InvalidInput
from agentfold.validation import check_integer, check_text, describe

WallClock = Callable[[], int]
"""Returns the current wall time in milliseconds since the Unix epoch."""

MAX_AGENT_ID_LENGTH: Final = 200


def system_wall_clock_ms() -> int:
    """The machine's wall clock in milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, order=True, slots=True)
class Timestamp:
    """A hybrid logical timestamp. Ordered by (wall_ms, logical, agent_id): a total order with no ties across agents."""

    wall_ms: int
    logical: int
    agent_id: str

    def to_json(self) -> list[Any]:
        """The JSON form stored in events: ``[wall_ms, logical, agent_id]``."""
        return [self.wall_ms, self.logical, self.agent_id]

    @classmethod
    def from_json(cls, value: object) -> Timestamp:
        """Parse the JSON form; raise `InvalidInput` naming what is wrong."""
        if not isinstance(value, list) or len(value) != 3:
            raise InvalidInput(f"a timestamp must be [wall_ms, logical, agent_id], got {describe(value)}")
        wall_ms, logical, agent_id = value
        return cls(_check_count(wall_ms, "wall_ms"), _check_count(logical, "logical"), check_agent_id(agent_id))

    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.logical}@{self.agent_id}"


class HybridLogicalClock:
    """Issues strictly increasing timestamps for one agent and absorbs the timestamps it observes.

    Guarantees: every `now()` is larger than every earlier `now()` of this clock and every timestamp passed to
    `observe()` before it, even if `wall_clock` jumps backwards or is hours behind the other agents' clocks.
    """

    __slots__ = ("_agent_id", "_last_logical", "_last_wall_ms", "_wall_clock")

    def __init__(self, agent_id: str, wall_clock: WallClock = system_wall_clock_ms) -> None:
        self._agent_id = check_agent_id(agent_id)
        if not callable(wall_clock):
            raise InvalidInput(f"wall_clock must be a function returning milliseconds, got {wall_clock!r}")
        self._wall_clock = wall_clock
        self._last_wall_ms = 0
        self._last_logical = 0

    @property
    def agent_id(self) -> str:
        return self._agent_id

    @property
    def last(self) -> Timestamp:
        """The largest timestamp issued or observed so far (as if issued by this agent)."""
        return Timestamp(self._last_wall_ms, self._last_logical, self._agent_id)

    def now(self) -> Timestamp:
        """A new timestamp for a local write, larger than everything issued or observed before."""
        wall_ms = _check_count(self._wall_clock(), "wall_clock()")
        if wall_ms > self._last_wall_ms:
            self._last_wall_ms = wall_ms
            self._last_logical = 0
        else:
            self._last_logical += 1
        return Timestamp(self._last_wall_ms, self._last_logical, self._agent_id)

    def observe(self, remote: Timestamp) -> None:
        """Take in a timestamp read from another agent (or this one), so later `now()` calls exceed it."""
        if (remote.wall_ms, remote.logical) > (self._last_wall_ms, self._last_logical):
            self._last_wall_ms = remote.wall_ms
            self._last_logical = remote.logical


def check_agent_id(agent_id: object) -> str:
    """Return `agent_id` if it is 1 to 200 printable characters, else raise `InvalidInput`."""
    return check_text(agent_id, "agent id", max_length=MAX_AGENT_ID_LENGTH)


def _check_count(value: object, name: str) -> int:
    return check_integer(value, name)
