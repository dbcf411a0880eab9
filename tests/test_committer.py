"""The group committer every backend commits through: order, limits, outcomes, cancellation and shutdown.

The commit function here keeps the groups it was given in a list and, like a backend, answers one outcome per
request; the backends' own suites (conformance, faults) run the same committer against real databases."""

from __future__ import annotations

import asyncio

import pytest

from agentfold.committer import GroupCommitter
from agentfold.errors import StoreClosed


class Ledger:
    """Commits a group by recording it; a request "fail" gets its own error, "boom" fails the whole group."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def commit(self, group: list[str]) -> list[str | BaseException]:
        await self.gate.wait()
        if "boom" in group:
            raise ConnectionError("the server went away")
        self.groups.append(list(group))
        return [ValueError(request) if request == "fail" else f"{request}:ok" for request in group]


async def test_requests_waiting_together_share_one_group_in_order() -> None:
    ledger = Ledger()
    committer = GroupCommitter(ledger.commit, max_group=100)
    outcomes = await asyncio.gather(*(committer.submit(f"r{n}") for n in range(10)))
    assert outcomes == [f"r{n}:ok" for n in range(10)]
    assert ledger.groups == [[f"r{n}" for n in range(10)]]
    await committer.close()


async def test_groups_respect_both_limits_and_keep_submission_order() -> None:
    ledger = Ledger()
    committer = GroupCommitter(ledger.commit, max_group=3, max_weight=5, weight=len, in_flight=1)
    requests = ["a", "bb", "c", "dddd", "e", "ffffff", "g"]
    assert await asyncio.gather(*map(committer.submit, requests)) == [f"{r}:ok" for r in requests]
    assert ledger.groups == [["a", "bb", "c"], ["dddd", "e"], ["ffffff"], ["g"]]  # an oversized one goes alone
    await committer.close()


async def test_each_request_gets_its_own_outcome_and_a_failed_commit_fails_its_whole_group() -> None:
    ledger = Ledger()
    committer = GroupCommitter(ledger.commit, max_group=10)
    results = await asyncio.gather(*map(committer.submit, ["a", "fail", "b"]), return_exceptions=True)
    assert results[0] == "a:ok" and results[2] == "b:ok"
    assert isinstance(results[1], ValueError)
    failed = await asyncio.gather(*map(committer.submit, ["c", "boom"]), return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in failed)
    assert await committer.submit("d") == "d:ok"  # the committer carries on after a failed group
    await committer.close()


async def test_a_caller_cancelled_before_its_group_formed_is_never_committed() -> None:
    ledger = Ledger()
    ledger.gate.clear()
    committer = GroupCommitter(ledger.commit, max_group=10, in_flight=1)
    first = asyncio.ensure_future(committer.submit("first"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first group is taken and waits on the gate
    dropped = asyncio.ensure_future(committer.submit("dropped"))
    kept = asyncio.ensure_future(committer.submit("kept"))
    await asyncio.sleep(0)
    dropped.cancel()
    ledger.gate.set()
    assert await first == "first:ok"
    assert await kept == "kept:ok"
    assert dropped.cancelled()
    assert ledger.groups == [["first"], ["kept"]]
    await committer.close()


async def test_two_groups_in_flight_are_committed_at_once() -> None:
    ledger = Ledger()
    ledger.gate.clear()
    committer = GroupCommitter(ledger.commit, max_group=10, in_flight=2)
    first = asyncio.ensure_future(committer.submit("first"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = [asyncio.ensure_future(committer.submit(name)) for name in ("second", "third")]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert committer.queued == 0  # the second group was taken while the first is still committing
    ledger.gate.set()
    assert await asyncio.gather(first, *second) == ["first:ok", "second:ok", "third:ok"]
    assert ledger.groups == [["first"], ["second", "third"]]
    await committer.close()


async def test_close_commits_what_was_queued_and_then_refuses() -> None:
    ledger = Ledger()
    ledger.gate.clear()
    committer = GroupCommitter(ledger.commit, max_group=2, name="test store")
    waiting = [asyncio.ensure_future(committer.submit(f"r{n}")) for n in range(5)]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(committer.close())
    await asyncio.sleep(0)
    with pytest.raises(StoreClosed, match="test store"):
        await committer.submit("late")
    ledger.gate.set()
    await closing
    assert [outcome.result() for outcome in waiting] == [f"r{n}:ok" for n in range(5)]
    assert ledger.groups == [["r0", "r1"], ["r2", "r3"], ["r4"]]


async def test_a_sender_cancelled_mid_commit_cancels_its_group_and_the_queue() -> None:
    ledger = Ledger()
    ledger.gate.clear()
    committer = GroupCommitter(ledger.commit, max_group=1, in_flight=1)
    waiting = [asyncio.ensure_future(committer.submit(f"r{n}")) for n in range(3)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # private: the sender tasks are what shutdown must end; nothing public names them
    for sender in list(committer._senders):  # the event loop shutting down cancels the sender task
        sender.cancel()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    assert committer.queued == 0
