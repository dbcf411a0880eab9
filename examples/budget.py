"""Five agents spend from one shared budget at once, with no locks; over-spend is found and reported the same way
by every reader, whatever order the events reach it in.

Each agent checks the remaining budget, "thinks" for a moment (as an agent waiting on a model call would), then
spends. Another agent may spend in between, so the budget can be exceeded: optimistic agents cannot prevent it
without a lock, but they can all agree afterwards on exactly which spends went over. The spends form a PN-counter;
ordering its operations by hybrid logical timestamp gives every reader the same sequence, and the spends whose
running total ends above the limit are the over-spends. The machines' clocks are deliberately skewed by minutes.

Run: ``python examples/budget.py [--url sqlite:///budget.db] [--seed 7]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
from dataclasses import dataclass, field

import agentfold
from agentfold.events import RecordedEvent
from agentfold.shared import SharedKind, SharedState, SharedStream, Timestamp, fold_events, system_wall_clock_ms

AGENTS = 5
LIMIT_CENTS = 2_000
STREAM = "budget/team-1"
SCHEMA = {"limit": SharedKind.REGISTER, "spent": SharedKind.COUNTER}


@dataclass(frozen=True)
class Spend:
    agent_id: str
    amount: int
    running_total: int
    timestamp: Timestamp


@dataclass(frozen=True)
class BudgetReport:
    """What every reader concludes from the same events, whatever order it received them in."""

    limit: int
    spent: int
    refunded: int
    over_budget: list[Spend] = field(default_factory=list)

    @property
    def balance(self) -> int:
        return self.limit - self.spent + self.refunded

    def lines(self) -> list[str]:
        lines = [
            f"limit {self.limit}, spent {self.spent}, refunded {self.refunded}, balance {self.balance}",
        ]
        if not self.over_budget:
            lines.append("no spend exceeded the budget")
        for spend in self.over_budget:
            lines.append(
                f"OVER BUDGET: {spend.agent_id} spent {spend.amount} at {spend.timestamp}, "
                f"running total {spend.running_total} > limit {self.limit}"
            )
        return lines


def budget_report(state: SharedState) -> BudgetReport:
    """Walk the spends in timestamp order; a spend that leaves the running total above the limit is an over-spend."""
    limit = state.register("limit").value
    if not isinstance(limit, int):
        raise ValueError("the budget has no limit yet")
    counter = state.counter("spent")
    running = 0
    over: list[Spend] = []
    for entry in counter.entries():
        running += entry.amount
        if entry.amount > 0 and running > limit:
            over.append(Spend(entry.timestamp.agent_id, entry.amount, running, entry.timestamp))
    return BudgetReport(limit, counter.increments, counter.decrements, over)


async def agent(store: agentfold.EventStore, agent_id: str, skew_ms: int, seed: int, start: asyncio.Barrier) -> None:
    """Spend in random amounts while the budget seems to allow it; sometimes refund part of a spend."""
    rng = random.Random(f"{seed}/{agent_id}")
    shared = SharedStream(store, STREAM, agent_id, SCHEMA, wall_clock=lambda: system_wall_clock_ms() + skew_ms)
    await start.wait()
    for _attempt in range(12):
        state = await shared.state()
        counter = state.counter("spent")
        remaining = state.register("limit").value - counter.value
        amount = rng.randint(50, 200)
        if amount > remaining:
            return
        await asyncio.sleep(rng.uniform(0, 0.003))  # thinking: the others keep spending meanwhile
        await shared.increment("spent", amount)
        if rng.random() < 0.15:
            await shared.decrement("spent", amount // 2)


async def run_budget(store: agentfold.EventStore, seed: int = 7) -> BudgetReport:
    """Set the limit, let the agents spend concurrently, and return the report the first agent computes."""
    coordinator = SharedStream(store, STREAM, "coordinator", SCHEMA)
    await coordinator.assign("limit", LIMIT_CENTS)
    start = asyncio.Barrier(AGENTS)
    skews = [(index - AGENTS // 2) * 90_000 for index in range(AGENTS)]  # clocks up to 3 minutes apart
    await asyncio.gather(*(agent(store, f"agent-{index}", skews[index], seed, start) for index in range(AGENTS)))
    return budget_report(await coordinator.state())


async def reports_in_other_orders(store: agentfold.EventStore, orders: int, seed: int) -> list[BudgetReport]:
    """Refold the stream's events shuffled and partly duplicated, as a reader receiving them out of order would."""
    events: list[RecordedEvent] = [event async for event in store.read_stream(STREAM)]
    rng = random.Random(seed)
    reports = []
    for _order in range(orders):
        delivered = events + rng.sample(events, k=len(events) // 3)
        rng.shuffle(delivered)
        reports.append(budget_report(fold_events(delivered, SCHEMA)))
    return reports


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default="memory://", help="store URL (default: memory://)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    async with agentfold.connect(args.url) as store:
        report = await run_budget(store, args.seed)
        for line in report.lines():
            print(line)
        others = await reports_in_other_orders(store, orders=20, seed=args.seed)
        same = all(other == report for other in others)
        print(f"the same report from {len(others)} shuffled, duplicated deliveries: {'yes' if same else 'NO'}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
