"""A payment workflow against a fake provider, run in a worker process the crash tests SIGKILL.

`python -m tests.workflow_apps.payments STORE_URL PROVIDER_DB [KILL_AT]` runs a worker until killed. `KILL_AT`
(``before|after:EventType:step-or-signal``) names an append: when the worker reaches it, it prints
``PAUSED <KILL_AT>`` and freezes, so the parent can SIGKILL it at exactly that point.

The provider is a SQLite file with one row per idempotency key: `calls` counts how often the effect was executed,
so a test sees any effect that ran twice.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import agentfold
from agentfold.events import AppendResult, NewEvent
from agentfold.runtime import NOT_APPLIED, RecordHook, RetryPolicy, Runtime

runtime = Runtime(default_retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))

PROVIDER: dict[str, Path] = {}


class Provider:
    """The external system: applies effects and answers status queries by idempotency key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, kind TEXT NOT NULL, calls INTEGER NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def apply(self, kind: str, key: str) -> None:
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO effects (key, kind, calls) VALUES (?, ?, 1) "
                "ON CONFLICT (key) DO UPDATE SET calls = calls + 1",
                (key, kind),
            )

    def applied(self, key: str) -> bool:
        with self._connect() as connection:
            return connection.execute("SELECT 1 FROM effects WHERE key = ?", (key,)).fetchone() is not None

    def calls(self) -> dict[str, tuple[str, int]]:
        with self._connect() as connection:
            rows = connection.execute("SELECT key, kind, calls FROM effects").fetchall()
        return {key: (kind, calls) for key, kind, calls in rows}


def provider() -> Provider:
    return Provider(PROVIDER["path"])


def initiate_payment(invoice: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    provider().apply("initiate_payment", idempotency_key)
    return {"id": f"pay-{invoice['number']}"}


def payment_status(idempotency_key: str, invoice: dict[str, Any]) -> Any:
    if provider().applied(idempotency_key):
        return {"id": f"pay-{invoice['number']}"}
    return NOT_APPLIED


def confirm_payment(payment_id: str, idempotency_key: str) -> dict[str, Any]:
    provider().apply("confirm_payment", idempotency_key)
    return {"receipt": f"receipt-{payment_id}"}


@runtime.workflow
async def pay_invoice(ctx: Any, invoice: dict[str, Any]) -> dict[str, Any]:
    payment = await ctx.step("initiate_payment", initiate_payment, invoice, reconcile=payment_status)
    approval = await ctx.wait_for("approval", timeout=timedelta(minutes=10))
    confirmation = await ctx.step("confirm_payment", confirm_payment, payment["id"])
    return {"paid": payment["id"], "approved_by": approval["by"], **confirmation}


class KillPoint(RecordHook):
    """Freezes the process at one append so the parent can SIGKILL it there."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.moment, self.event_type, self.name = spec.split(":")

    def _matches(self, events: Sequence[NewEvent]) -> bool:
        return any(event.type == self.event_type and event.data.get("name") == self.name for event in events)

    def _freeze(self, workflow_id: str) -> None:
        print(f"PAUSED {self.spec} {workflow_id}", flush=True)
        sys.stdin.readline()  # blocks the whole process (event loop included) until it is killed
        raise SystemExit("the kill point was released instead of killed")

    def before_append(self, workflow_id: str, events: Sequence[NewEvent]) -> None:
        if self.moment == "before" and self._matches(events):
            self._freeze(workflow_id)

    def after_append(self, workflow_id: str, events: Sequence[NewEvent], result: AppendResult) -> None:
        if self.moment == "after" and self._matches(events):
            self._freeze(workflow_id)


async def serve(url: str) -> None:
    async with agentfold.connect(url) as store, runtime.worker(store, lease_ttl=1.0):
        print("READY", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    url, provider_path, *kill_at = sys.argv[1:]
    PROVIDER["path"] = Path(provider_path)
    Provider(PROVIDER["path"])
    if kill_at:
        runtime.hooks.append(KillPoint(kill_at[0]))
    asyncio.run(serve(url))


if __name__ == "__main__":
    main()
