"""`agentfold demo` end to end, as a user runs it: real worker processes, a real HTTP provider, a real SIGKILL.

The demo runs as a subprocess on SQLite, PostgreSQL and Redis; each run must end with the passing check line, leave
no worker process behind, and have recorded the reconciliation of the charge that was in doubt. The check itself
is tested on doctored figures (a double charge must fail it), and the provider on its idempotency rules.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentfold
from agentfold.demo.check import check_pipeline
from agentfold.demo.pipeline import AGENTS, CHARGE_STEP, run_id
from agentfold.demo.provider import PaymentProvider, ProviderClient, ProviderError
from tests.backends import BACKENDS, Backend, require_service

ROOT = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT_SECONDS = 180
ORDERS = 5


def demo_command(store_url: str, orders: int = ORDERS) -> list[str]:
    return [sys.executable, "-m", "agentfold.cli", "demo", "--orders", str(orders), "--store", store_url]


def worker_processes(marker: str) -> list[int]:
    """Pids of live demo worker processes whose command line mentions `marker` (their store URL)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "agentfold.demo.worker" in command and marker in command and "State:\tZ" not in status:
            pids.append(int(entry.name))
    return pids


async def reconciled_charges(store_url: str) -> list[dict[str, object]]:
    async with agentfold.connect(store_url) as store:
        return [
            event.data
            async for event in store.read_all(types=["StepCompleted"], stream_prefix="workflow-order-")
            if event.data.get("name") == CHARGE_STEP and event.data.get("reconciled")
        ]


def backend_named(name: str) -> Backend:
    return next(backend for backend in BACKENDS if backend.name == name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'demo.db'}"


@pytest.fixture(params=["postgres", "redis"])
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend = backend_named(request.param)
    require_service(backend)
    url = backend.make_url(tmp_path)
    yield url
    backend.cleanup(url)


def run_demo_and_check(store_url: str, marker: str) -> None:
    run = subprocess.run(
        demo_command(store_url), cwd=ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT_SECONDS
    )
    assert run.returncode == 0, run.stdout + run.stderr
    expected = f"check passed: {ORDERS} of {ORDERS} orders Completed, {ORDERS} of {ORDERS} charged exactly once"
    assert expected in run.stdout, run.stdout
    assert "SIGKILL" in run.stdout
    assert "timeline of order-" in run.stdout
    assert worker_processes(marker) == []
    reconciled = asyncio.run(reconciled_charges(store_url))
    assert reconciled, "the charge made before the SIGKILL was recorded by asking the provider"


def test_demo_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    run_demo_and_check(sqlite_url, str(tmp_path))


def test_demo_on_a_server(server_url: str) -> None:
    run_demo_and_check(server_url, server_url.rsplit("=", 1)[1])


def test_demo_runs_again_on_the_same_store(sqlite_url: str, tmp_path: Path) -> None:
    """Order ids are unique per run, so a second demo on the same store checks only its own orders."""
    for _ in range(2):
        run = subprocess.run(
            demo_command(sqlite_url, orders=2), cwd=ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT_SECONDS
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "check passed: 2 of 2 orders Completed" in run.stdout
    assert worker_processes(str(tmp_path)) == []


def test_ctrl_c_stops_every_worker(sqlite_url: str, tmp_path: Path) -> None:
    demo = subprocess.Popen(
        demo_command(sqlite_url, orders=200), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while len(worker_processes(str(tmp_path))) < len(AGENTS):
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline, "the demo did not start its workers"
            time.sleep(0.05)
        demo.send_signal(signal.SIGINT)
        stdout, stderr = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, stdout + stderr
    assert worker_processes(str(tmp_path)) == []


# -- the check ------------------------------------------------------------------------------------------------------


ORDER_IDS = ["order-a-001", "order-a-002"]


def all_completed() -> dict[str, str]:
    return {run_id(order_id, agent): "Completed" for order_id in ORDER_IDS for agent in AGENTS}


def test_check_passes_when_every_order_completed_with_one_charge() -> None:
    check = check_pipeline(ORDER_IDS, all_completed(), {"order-a-001": 1, "order-a-002": 1}, {"k": 1}, ["k"])
    assert check.ok
    assert check.summary() == (
        "check passed: 2 of 2 orders Completed, 2 of 2 charged exactly once (2 charges at the provider)"
    )


def test_check_fails_on_a_double_charge() -> None:
    check = check_pipeline(ORDER_IDS, all_completed(), {"order-a-001": 2, "order-a-002": 1})
    assert not check.ok
    assert check.summary().startswith("check FAILED: 2 of 2 orders Completed, 1 of 2 charged exactly once")
    assert check.problems == ("order order-a-001 was charged 2 times at the provider",)


def test_check_fails_on_a_missing_charge_an_unfinished_run_and_a_stray_charge() -> None:
    states = all_completed()
    states[run_id("order-a-002", "payment")] = "Processing"
    del states[run_id("order-a-002", "notification")]
    check = check_pipeline(ORDER_IDS, states, {"order-a-001": 1, "order-b-009": 1})
    assert not check.ok
    assert check.completed == 1
    assert check.problems == (
        "order order-a-002 not Completed: payment is Processing, notification is never started",
        "order order-a-002 was charged 0 times at the provider",
        "the provider charged order-b-009, which is not one of the orders placed (1 charges)",
    )


def test_check_fails_when_the_in_doubt_charge_was_sent_again() -> None:
    check = check_pipeline(ORDER_IDS, all_completed(), {"order-a-001": 1, "order-a-002": 1}, {"k": 2}, ["k"])
    assert check.problems == ("the charge with key k was sent 2 times; it should have been reconciled",)


# -- the provider ---------------------------------------------------------------------------------------------------


def test_provider_charges_once_per_idempotency_key() -> None:
    with PaymentProvider() as provider:
        client = ProviderClient(provider.url)
        assert client.charge_for_key("order-1/1/charge") is None
        first = client.charge("order-1/1/charge", "order-1", 1500)
        again = client.charge("order-1/1/charge", "order-1", 1500)
        assert again == first
        assert client.charge_for_key("order-1/1/charge") == first
        with pytest.raises(ProviderError, match="used for another charge"):
            client.charge("order-1/1/charge", "order-1", 9900)
        client.charge("order-1/2/charge", "order-1", 1500)  # a new key is a new charge: the double charge
        assert client.confirm(first["charge_id"])["status"] == "confirmed"
        with pytest.raises(ProviderError, match="no charge"):
            client.confirm("ch_missing")
        ledger = client.ledger()
    assert ledger.charges_per_order() == {"order-1": 2}
    assert ledger.charge_requests == {"order-1/1/charge": 3, "order-1/2/charge": 1}
    assert ledger.status_queries == {"order-1/1/charge": 2}
    assert provider.ledger().to_json() == ledger.to_json()


def test_provider_listens_on_loopback_only() -> None:
    with PaymentProvider() as provider:
        assert provider.url.startswith("http://127.0.0.1:")
    with pytest.raises(ProviderError, match="cannot be reached"):
        ProviderClient(provider.url).ledger()


def test_worker_refuses_an_unknown_agent() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "agentfold.demo.worker", "--store", "memory://", "--provider", "x", "--agent", "cook"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert run.returncode == 2
    assert "invalid choice: 'cook'" in run.stderr


def test_demo_refuses_a_memory_store() -> None:
    run = subprocess.run(demo_command("memory://"), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "memory:// lives inside one process" in run.stderr
