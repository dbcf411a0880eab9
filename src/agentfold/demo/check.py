"""The demo's verdict, computed from the store and the provider: every order Completed, one charge per order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from agentfold.demo.pipeline import AGENTS, run_id
from agentfold.runtime import COMPLETED

SHOWN_PROBLEMS: Final = 10


@dataclass(frozen=True)
class PipelineCheck:
    """What the check found; `ok` only when there is no problem at all."""

    orders: int
    completed: int
    """Orders whose four runs (intake, payment, fulfilment, notification) are all Completed."""
    charged_once: int
    """Orders the provider charged exactly once."""
    charges: int
    """Charges the provider made, in total."""
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: the verdict and the figures behind it."""
        figures = (
            f"{self.completed} of {self.orders} orders Completed, {self.charged_once} of {self.orders} charged exactly "
            f"once ({self.charges} charges at the provider)"
        )
        if self.ok:
            return f"check passed: {figures}"
        return f"check FAILED: {figures}; {len(self.problems)} problems"


def check_pipeline(
    order_ids: Sequence[str],
    run_states: Mapping[str, str],
    charges_per_order: Mapping[str, int],
    charge_requests: Mapping[str, int] | None = None,
    reconciled_keys: Sequence[str] = (),
) -> PipelineCheck:
    """Check the outcome of the orders `order_ids`.

    `run_states` maps each workflow id to its lifecycle state as folded from the store (a run missing from it was
    never started); `charges_per_order` is the provider's count of distinct charges per order id. With
    `charge_requests` (the provider's count of charge requests per idempotency key), each key in `reconciled_keys`
    must have been sent exactly once: the charge that was in doubt after the crash was reconciled by asking the
    provider, not by charging again.
    """
    problems: list[str] = []
    completed = 0
    charged_once = 0
    for order_id in order_ids:
        unfinished = [
            f"{agent} is {run_states.get(run_id(order_id, agent), 'never started')}"
            for agent in AGENTS
            if run_states.get(run_id(order_id, agent)) != COMPLETED
        ]
        if unfinished:
            problems.append(f"order {order_id} not Completed: " + ", ".join(unfinished))
        else:
            completed += 1
        charges = charges_per_order.get(order_id, 0)
        if charges == 1:
            charged_once += 1
        else:
            problems.append(f"order {order_id} was charged {charges} times at the provider")
    known = set(order_ids)
    for order_id, charges in sorted(charges_per_order.items()):
        if order_id not in known:
            problems.append(
                f"the provider charged {order_id}, which is not one of the orders placed ({charges} charges)"
            )
    if charge_requests is not None:
        for key in reconciled_keys:
            sent = charge_requests.get(key, 0)
            if sent != 1:
                problems.append(f"the charge with key {key} was sent {sent} times; it should have been reconciled")
    return PipelineCheck(
        orders=len(order_ids),
        completed=completed,
        charged_once=charged_once,
        charges=sum(charges_per_order.values()),
        problems=tuple(problems),
    )
