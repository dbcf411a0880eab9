"""Helpers shared by the consumer-group tests (the store's own groups and Redis-native ones)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from agentfold.events import RecordedEvent


async def until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll a condition that other tasks or processes make true (no event to wait on)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition still false after {timeout} s")
        await asyncio.sleep(0.02)


class PoisonJobs:
    """A handler that fails at every event whose data says `poison` and records the versions of the others."""

    def __init__(self) -> None:
        self.attempts: defaultdict[int, int] = defaultdict(int)
        self.done: list[int] = []

    async def __call__(self, event: RecordedEvent) -> None:
        self.attempts[event.version] += 1
        if event.data.get("poison"):
            raise ValueError("cannot parse this job")
        self.done.append(event.version)
