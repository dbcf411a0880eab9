"""Group commit, written once for every backend: many appends (or other writes) waiting at once share one commit.

A backend hands `GroupCommitter` one function, "commit this group, return one outcome per request", and its
limits; the committer owns everything else:

- queueing: `submit` queues a request and waits for its outcome; requests are taken in the order they were
  submitted, and groups go to `commit` in that order;
- grouping: a group takes every request waiting when it is formed, up to `max_group` requests and `max_weight`
  (events, bytes: whatever `weight` counts), at least one; nothing waits for more to arrive, so the requests that
  arrive while a group commits form the next one;
- groups in flight: up to `in_flight` groups are committed at once (while one waits for its commit to reach disk,
  the next is prepared and sent); with `spread`, a group formed while another sender is free takes half of what
  waits, so both carry a share;
- resolving: each request's caller gets its own outcome (a result, or the exception that is its outcome); when
  `commit` itself raises, every request of the group gets that error;
- cancellation: a caller cancelled before its request was taken is dropped from the queue (nothing of it is
  written); cancelled after, its write stands (a retry finds it by event id), only the outcome goes unread; a
  sender cancelled mid-commit (its event loop shutting down) cancels every request of its group and of the queue;
- shutdown: `close` refuses new requests, commits every request queued before it, and returns when the last group
  is resolved.

All of it runs on one event loop; `commit` may hand the work to a thread or a server.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from agentfold.errors import StoreClosed

R = TypeVar("R")
T = TypeVar("T")

Commit = Callable[[list[R]], Awaitable[Sequence[T | BaseException]]]
"""Commit a group: one outcome per request, in the group's order (an exception is that request's outcome)."""


class GroupCommitter(Generic[R, T]):
    """Queues requests and commits them in groups through `commit`; see the module docstring for the guarantees."""

    def __init__(
        self,
        commit: Commit[R, T],
        *,
        max_group: int,
        max_weight: int | None = None,
        weight: Callable[[R], int] | None = None,
        in_flight: int = 1,
        spread: bool = False,
        name: str = "store",
    ) -> None:
        if max_group < 1 or in_flight < 1:
            raise ValueError("max_group and in_flight must be >= 1")
        if (max_weight is None) != (weight is None):
            raise ValueError("give max_weight and weight together")
        self._commit = commit
        self._max_group = max_group
        self._max_weight = max_weight
        self._weight = weight
        self._in_flight = in_flight
        self._spread = spread
        self._name = name
        self._queue: collections.deque[tuple[R, asyncio.Future[T]]] = collections.deque()
        self._senders: set[asyncio.Task[None]] = set()  # keeps the tasks referenced while they run
        self._running = 0
        """Senders alive: taking a group, or waiting for one to commit."""
        self._ready = 0
        """Senders that will take a group before they next wait: a new request needs no new sender then."""
        self._closed = False
        self.groups = 0
        """Groups handed to `commit` so far."""

    @property
    def queued(self) -> int:
        """Requests waiting to be taken into a group."""
        return len(self._queue)

    async def submit(self, request: R) -> T:
        """Queue `request`, wait for its group to commit, and return its outcome (or raise it)."""
        return await self.submit_nowait(request)

    def submit_nowait(self, request: R) -> asyncio.Future[T]:
        """Queue `request` now and return the future of its outcome. Raises `StoreClosed` once `close` began."""
        if self._closed:
            raise StoreClosed(f"the {self._name} is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        self._wake()
        return future

    async def close(self) -> None:
        """Refuse new requests, commit the queued ones, and return once every group is resolved."""
        self._closed = True
        while self._senders:
            await asyncio.gather(*list(self._senders), return_exceptions=True)

    def _wake(self) -> None:
        """Start a sender when none is about to take a group and fewer than `in_flight` are busy."""
        if self._ready == 0 and self._running < self._in_flight:
            self._running += 1
            self._ready += 1
            task = asyncio.get_running_loop().create_task(self._send(), name=f"agentfold-commit:{self._name}")
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _send(self) -> None:
        """Take a group, commit it, resolve it; again while requests wait."""
        try:
            while True:
                group = self._take()
                self._ready -= 1
                if not group:
                    return
                if self._queue:
                    self._wake()  # more than one group waits: another sender may take the next one meanwhile
                await self._commit_group(group)
                if not self._queue:
                    return
                self._ready += 1
        finally:
            self._running -= 1

    def _take(self) -> list[tuple[R, asyncio.Future[T]]]:
        queue = self._queue
        limit = self._max_group
        if self._spread and self._running < self._in_flight:
            limit = min(limit, (len(queue) + 1) // 2)
        weight = self._weight
        max_weight = self._max_weight
        group: list[tuple[R, asyncio.Future[T]]] = []
        total = 0
        while queue and len(group) < limit:
            request, future = queue[0]
            if future.done():  # the caller was cancelled before anything was written
                queue.popleft()
                continue
            if weight is not None:
                assert max_weight is not None
                size = weight(request)
                if group and total + size > max_weight:
                    break
                total += size
            group.append(queue.popleft())
        return group

    async def _commit_group(self, group: list[tuple[R, asyncio.Future[T]]]) -> None:
        self.groups += 1
        try:
            outcomes = await self._commit([request for request, _ in group])
        except Exception as error:  # the whole group failed (or a bug): nobody may be left waiting
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException:
            for _, future in [*group, *self._queue]:
                future.cancel()
            self._queue.clear()
            raise
        if len(outcomes) != len(group):
            mismatch = RuntimeError(f"the {self._name} committed {len(group)} requests and reported {len(outcomes)}")
            outcomes = [mismatch] * len(group)
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if future.done():
                continue  # the caller was cancelled; the write stands (a retry finds it by event id)
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


__all__ = ["Commit", "GroupCommitter"]
