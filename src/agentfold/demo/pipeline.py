"""The order pipeline: four agents, each a durable workflow, handing an order on through events.

::

    intake ──start──▶ payment ──start──▶ fulfilment ──start──▶ notification
      ▲                                                            │
      └──────────────── signal "customer_notified" ────────────────┘

- **intake** validates the order, starts the payment run, and waits (durably, `AwaitingInput`) for the signal that
  the customer was told; only then is the order done.
- **payment** charges the order at the payment provider with the step's idempotency key, confirms the charge, and
  starts fulfilment. The charge step has a `reconcile` callback: a worker resuming a charge whose outcome was never
  recorded asks the provider what became of that key instead of charging again.
- **fulfilment** creates the shipment and starts the notification run.
- **notification** records the message to the customer (an event in ``notifications-<order id>``) and signals intake.

Each hand-off starts the next run under a deterministic id (``<order id>-<agent>``), so a hand-off repeated after a
crash starts nothing new. Every run of one order therefore has a known id, and the whole order can be read back.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from agentfold.demo.provider import ProviderClient, ProviderError
from agentfold.errors import DuplicateEventId, WrongExpectedVersion
from agentfold.events import NO_STREAM, NewEvent
from agentfold.runtime import NOT_APPLIED, RecordHook, RetryPolicy, Runtime, WorkflowContext
from agentfold.store import EventStore

INTAKE: Final = "intake"
PAYMENT: Final = "payment"
FULFILMENT: Final = "fulfilment"
NOTIFICATION: Final = "notification"
AGENTS: Final = (INTAKE, PAYMENT, FULFILMENT, NOTIFICATION)

CHARGE_STEP: Final = "initiate_payment"
CONFIRM_STEP: Final = "confirm_payment"
NOTIFIED_SIGNAL: Final = "customer_notified"
NOTIFICATION_STREAM_PREFIX: Final = "notifications-"

_NOTIFICATION_NAMESPACE: Final = uuid.UUID("0b6f2f0e-3c1e-4f55-9a59-2d8f1c7a4e10")


class InvalidOrder(ValueError):
    """An order the intake agent refuses (no items, a non-positive quantity or price)."""


RETRY: Final = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=1.0, non_retryable=(InvalidOrder,))


@dataclass(frozen=True)
class LineItem:
    sku: str
    quantity: int
    price_cents: int


@dataclass(frozen=True)
class Order:
    """What a customer placed; the input of the intake run."""

    order_id: str
    customer: str
    items: list[LineItem]
    destination: str

    @property
    def amount_cents(self) -> int:
        return sum(item.quantity * item.price_cents for item in self.items)


@dataclass(frozen=True)
class Payment:
    """A charge at the provider, as the payment agent recorded it."""

    charge_id: str
    amount_cents: int
    status: str


@dataclass(frozen=True)
class Shipment:
    carrier: str
    tracking_number: str


@dataclass(frozen=True)
class PaidOrder:
    """What payment hands to fulfilment."""

    order: Order
    payment: Payment


@dataclass(frozen=True)
class ShippedOrder:
    """What fulfilment hands to notification."""

    order: Order
    payment: Payment
    shipment: Shipment


def run_id(order_id: str, agent: str) -> str:
    """The workflow id of one agent's run for one order."""
    return f"{order_id}-{agent}"


def split_run_id(workflow_id: str) -> tuple[str, str] | None:
    """(order id, agent) for a pipeline run id, else None."""
    order_id, _, agent = workflow_id.rpartition("-")
    return (order_id, agent) if order_id and agent in AGENTS else None


def validate_order(order: Order) -> Order:
    """The intake agent's check: an order with items, positive quantities and prices."""
    if not order.items:
        raise InvalidOrder(f"order {order.order_id!r} has no items")
    for item in order.items:
        if item.quantity <= 0 or item.price_cents <= 0:
            raise InvalidOrder(f"order {order.order_id!r}: {item.sku} needs a positive quantity and price")
    return order


CARRIERS: Final = ("parcelpost", "swiftship", "northfreight")


def create_shipment(order: Order, idempotency_key: str = "") -> Shipment:
    """A shipment whose tracking number derives from the step's key: the same on every attempt."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    carrier = CARRIERS[sum(map(ord, order.destination)) % len(CARRIERS)]
    return Shipment(carrier, "TRK" + digest[:10].upper())


class OrderPipeline:
    """The four workflows, bound to one store and one payment provider.

    `runtime` registers all four, so its `client` can start and signal any of them; `agent_runtime` builds the
    runtime of one agent's worker, which runs that agent's workflow only.
    """

    def __init__(self, store: EventStore, provider: ProviderClient) -> None:
        self.store = store
        self.provider = provider
        self.runtime = self.agent_runtime(*AGENTS)
        self.client = self.runtime.client(store)

    def workflows(self) -> Mapping[str, Callable[..., Any]]:
        return {
            INTAKE: self.intake,
            PAYMENT: self.payment,
            FULFILMENT: self.fulfilment,
            NOTIFICATION: self.notification,
        }

    def agent_runtime(self, *agents: str, hooks: Iterable[RecordHook] = ()) -> Runtime:
        """A runtime with the workflows of `agents` registered under the agents' names."""
        runtime = Runtime(default_retry=RETRY, hooks=hooks)
        workflows = self.workflows()
        for agent in agents:
            runtime.workflow(name=agent)(workflows[agent])
        return runtime

    async def place(self, order: Order) -> None:
        """Start the order's intake run (idempotent: placing the same order id again starts nothing)."""
        await self.client.start(INTAKE, order, workflow_id=run_id(order.order_id, INTAKE))

    # -- the agents ---------------------------------------------------------------------------------------------

    async def intake(self, ctx: WorkflowContext, order: Order) -> dict[str, Any]:
        accepted = await ctx.step("validate_order", validate_order, order)
        await ctx.step("hand_off_to_payment", self._hand_off, PAYMENT, accepted.order_id, accepted)
        notified = await ctx.wait_for(NOTIFIED_SIGNAL, timeout=timedelta(hours=1))
        return {"order_id": order.order_id, "status": "delivered", "tracking_number": notified["tracking_number"]}

    async def payment(self, ctx: WorkflowContext, order: Order) -> Payment:
        charged = await ctx.step(CHARGE_STEP, self._charge, order, reconcile=self._charge_status)
        confirmed: Payment = await ctx.step(CONFIRM_STEP, self._confirm, charged)
        await ctx.step(
            "hand_off_to_fulfilment", self._hand_off, FULFILMENT, order.order_id, PaidOrder(order, confirmed)
        )
        return confirmed

    async def fulfilment(self, ctx: WorkflowContext, paid: PaidOrder) -> Shipment:
        shipment: Shipment = await ctx.step("create_shipment", create_shipment, paid.order)
        shipped = ShippedOrder(paid.order, paid.payment, shipment)
        await ctx.step("hand_off_to_notification", self._hand_off, NOTIFICATION, paid.order.order_id, shipped)
        return shipment

    async def notification(self, ctx: WorkflowContext, shipped: ShippedOrder) -> str:
        message: str = await ctx.step("notify_customer", self._notify, shipped)
        await ctx.step("report_to_intake", self._report, shipped.order.order_id, shipped.shipment.tracking_number)
        return message

    # -- the steps ----------------------------------------------------------------------------------------------

    async def _hand_off(self, agent: str, order_id: str, payload: Any) -> str:
        """Start the next agent's run under its deterministic id; repeating it starts nothing new."""
        handle = await self.client.start(agent, payload, workflow_id=run_id(order_id, agent))
        return handle.workflow_id

    def _charge(self, order: Order, idempotency_key: str) -> Payment:
        charge = self.provider.charge(idempotency_key, order.order_id, order.amount_cents)
        return Payment(charge["charge_id"], charge["amount_cents"], charge["status"])

    def _charge_status(self, idempotency_key: str, order: Order) -> object:
        """What became of a charge whose outcome was never recorded: the provider's answer for its key."""
        charge = self.provider.charge_for_key(idempotency_key)
        if charge is None:
            return NOT_APPLIED
        return Payment(charge["charge_id"], charge["amount_cents"], charge["status"])

    def _confirm(self, charged: Payment) -> Payment:
        confirmed = self.provider.confirm(charged.charge_id)
        if confirmed["amount_cents"] != charged.amount_cents:
            raise ProviderError(f"charge {charged.charge_id} changed amount at the provider")
        return Payment(confirmed["charge_id"], confirmed["amount_cents"], confirmed["status"])

    async def _notify(self, shipped: ShippedOrder, idempotency_key: str = "") -> str:
        """Record the customer's message once: a repeated attempt finds it already written."""
        order, shipment = shipped.order, shipped.shipment
        message = (
            f"Hello {order.customer}, order {order.order_id} ({order.amount_cents / 100:.2f} EUR) is on its way "
            f"with {shipment.carrier}, tracking {shipment.tracking_number}."
        )
        event = NewEvent(
            "CustomerNotified",
            {"order_id": order.order_id, "message": message},
            {"agent_id": NOTIFICATION},
            id=uuid.uuid5(_NOTIFICATION_NAMESPACE, idempotency_key),
        )
        # Written by an earlier attempt whose outcome was lost.
        with contextlib.suppress(WrongExpectedVersion, DuplicateEventId):
            await self.store.append(NOTIFICATION_STREAM_PREFIX + order.order_id, [event], expected_version=NO_STREAM)
        return message

    async def _report(self, order_id: str, tracking_number: str) -> None:
        await self.client.signal(
            run_id(order_id, INTAKE),
            NOTIFIED_SIGNAL,
            {"tracking_number": tracking_number},
            signal_id=NOTIFIED_SIGNAL,
        )
