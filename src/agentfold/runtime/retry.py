"""Retry policies for workflow steps, and the one way durations are given."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from agentfold.errors import InvalidInput


def seconds(value: timedelta | float | int, what: str) -> float:
    """`value` (a timedelta or a number of seconds) as seconds >= 0, else `InvalidInput` naming `what`."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise InvalidInput(f"{what} must be a timedelta or a number of seconds, got {type(value).__name__}")
    if not math.isfinite(result) or result < 0:
        raise InvalidInput(f"{what} must be finite and >= 0, got {value!r}")
    return result


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is tried and how long to wait in between.

    `max_attempts` counts attempts that ended with an exception (or a timeout). An attempt cut short by a crash
    has no outcome and does not count: it is reconciled or re-run. The wait before retry n (n = 1, 2, …) is
    ``min(initial_backoff * multiplier ** (n - 1), max_backoff)``, recorded in the `StepFailed` event so a resumed
    run waits out the remainder instead of starting over. Exceptions of a `non_retryable` type fail the step at once.
    """

    max_attempts: int = 3
    initial_backoff: timedelta | float = 1.0
    multiplier: float = 2.0
    max_backoff: timedelta | float = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidInput(f"RetryPolicy.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        seconds(self.initial_backoff, "RetryPolicy.initial_backoff")
        seconds(self.max_backoff, "RetryPolicy.max_backoff")
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, int | float) or self.multiplier < 1:
            raise InvalidInput(f"RetryPolicy.multiplier must be a number >= 1, got {self.multiplier!r}")
        if not isinstance(self.non_retryable, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in self.non_retryable
        ):
            raise InvalidInput("RetryPolicy.non_retryable must be a tuple of exception types")

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt."""
        initial = seconds(self.initial_backoff, "initial_backoff")
        ceiling = seconds(self.max_backoff, "max_backoff")
        try:
            delay = initial * self.multiplier ** (failures - 1)
        except OverflowError:
            return ceiling
        return min(delay, ceiling)

    def should_retry(self, error: BaseException, failures: int) -> bool:
        """May another attempt follow the `failures`-th failed one, which raised `error`?"""
        if isinstance(error, self.non_retryable):
            return False
        return failures < self.max_attempts


NO_RETRY = RetryPolicy(max_attempts=1)
"""One attempt; the first exception fails the step."""
