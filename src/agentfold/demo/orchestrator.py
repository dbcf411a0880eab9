"""The demo's story, told on screen: start the provider and the agents' workers, place orders, kill the payment
worker between a charge and its record, resume it, show the order's timeline, and check the outcome.

Every child process is killed and reaped before `run_demo` returns, whatever happens (Ctrl-C included); the
provider's socket is closed. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

import agentfold
from agentfold.connect import redact
from agentfold.demo.check import SHOWN_PROBLEMS, PipelineCheck, check_pipeline
from agentfold.demo.pipeline import (
    AGENTS,
    CHARGE_STEP,
    INTAKE,
    NOTIFICATION,
    NOTIFICATION_STREAM_PREFIX,
    PAYMENT,
    LineItem,
    Order,
    OrderPipeline,
    run_id,
    split_run_id,
)
from agentfold.demo.provider import PaymentProvider, ProviderClient
from agentfold.demo.worker import PAUSED, READY
from agentfold.errors import StoreTimeout, StoreUnavailable
from agentfold.events import RecordedEvent
from agentfold.runtime import COMPLETED, FAILED, IDLE, history, signal_stream, workflow_stream
from agentfold.runtime.statemachine import DEFAULT_LIFECYCLE
from agentfold.store import EventStore
from agentfold.subscription import Subscription

LINE_TIMEOUT_SECONDS: Final = 60.0
COMPLETION_TIMEOUT_SECONDS: Final = 120.0
STOP_TIMEOUT_SECONDS: Final = 5.0
RESUBSCRIBE_PAUSE_SECONDS: Final = 0.2
PACKAGE_ROOT: Final = Path(__file__).resolve().parents[2]

CUSTOMERS: Final = ("Ada", "Grace", "Edsger", "Barbara", "Ken", "Frances", "Niklaus", "Radia", "Leslie", "Margaret")
CATALOGUE: Final = (("keyboard", 8900), ("mouse", 2900), ("monitor", 21900), ("dock", 14900), ("cable", 900))
CITIES: Final = ("Lisbon", "Oslo", "Tallinn", "Dublin", "Vienna", "Porto", "Ghent")


class DemoError(Exception):
    """The demo could not run (a worker died, the store failed); the message says which and why."""


@dataclass(frozen=True)
class DemoSettings:
    store_url: str
    orders: int = 20
    order_interval_seconds: float = 0.12
    """Orders are placed one after the other at this pace, so the pipeline is visibly busy."""
    provider_latency_seconds: float = 0.05
    pause_hold_seconds: float = 1.0
    """How long the frozen payment worker is left on screen before it is killed."""


@dataclass(frozen=True)
class DemoResult:
    check: PipelineCheck
    chosen_order: str
    elapsed_seconds: float


def make_orders(tag: str, count: int) -> list[Order]:
    """`count` orders with ids unique to this run (``order-<tag>-001`` ...)."""
    chooser = random.Random(tag)
    orders = []
    for number in range(1, count + 1):
        items = [
            LineItem(sku, chooser.randint(1, 3), price)
            for sku, price in chooser.sample(CATALOGUE, chooser.randint(1, 3))
        ]
        orders.append(Order(f"order-{tag}-{number:03d}", chooser.choice(CUSTOMERS), items, chooser.choice(CITIES)))
    return orders


# -- worker processes ---------------------------------------------------------------------------------------------


class WorkerProcess:
    """One agent's worker, a separate OS process; its stderr goes to a log file shown if it fails."""

    def __init__(self, agent: str, process: asyncio.subprocess.Process, log_path: Path, log: IO[bytes]) -> None:
        self.agent = agent
        self.process = process
        self.log_path = log_path
        self._log = log
        self.killed = False
        self.frozen = False
        """It said PAUSED: its event loop is blocked, so only SIGKILL stops it."""

    @classmethod
    async def spawn(
        cls, agent: str, store_url: str, provider_url: str, log_dir: Path, pause_after_charge: str | None = None
    ) -> WorkerProcess:
        command = [
            sys.executable,
            "-m",
            "agentfold.demo.worker",
            "--store",
            store_url,
            "--provider",
            provider_url,
            "--agent",
            agent,
        ]
        if pause_after_charge is not None:
            command += ["--pause-after-charge", pause_after_charge]
        path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        log_path = log_dir / f"{agent}-{time.monotonic_ns()}.log"
        log = log_path.open("wb")
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONPATH": path},
                # Out of the terminal's process group: Ctrl-C reaches the demo only, which stops its workers itself.
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        return cls(agent, process, log_path, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    async def expect(self, prefix: str, timeout: float = LINE_TIMEOUT_SECONDS) -> list[str]:
        """Read stdout until a line starting with `prefix`; return that line's words."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(self.process.stdout.readline(), max(remaining, 0.001))
            except TimeoutError:
                raise DemoError(
                    f"the {self.agent} worker (pid {self.pid}) did not say {prefix} within {timeout:.0f} s\n"
                    + self.log_tail()
                ) from None
            if not raw:
                await self.process.wait()
                raise DemoError(
                    f"the {self.agent} worker (pid {self.pid}) exited with code {self.process.returncode} before "
                    f"saying {prefix}\n" + self.log_tail()
                )
            words = raw.decode(errors="replace").split()
            if words and words[0] == prefix:
                return words

    async def kill(self) -> None:
        """SIGKILL: the process gets no chance to record anything more."""
        self.killed = True
        if not self.exited:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """Ask it to stop (SIGTERM), SIGKILL it if it has not within a few seconds, and reap it."""
        if self.frozen:
            await self.kill()
        if not self.exited:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                await self.kill()
        if self.process.stdin is not None:
            self.process.stdin.close()
        await self.process.wait()
        self._log.close()


@contextlib.asynccontextmanager
async def worker_pool() -> AsyncIterator[list[WorkerProcess]]:
    """Every worker spawned into the yielded list is stopped and reaped on exit, also on error or Ctrl-C."""
    workers: list[WorkerProcess] = []
    try:
        yield workers
    finally:
        results = await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
        for worker, result in zip(workers, results, strict=True):
            if isinstance(result, BaseException) and not worker.exited:
                worker.process.kill()
                await worker.process.wait()


# -- what the screen shows while it runs --------------------------------------------------------------------------


@dataclass
class PipelineView:
    """The runs of this demo's orders, folded from the store as their events arrive, and the story so far."""

    orders: int
    started_at: float = field(default_factory=time.monotonic)
    states: dict[str, str] = field(default_factory=dict)
    workers: dict[str, str] = field(default_factory=dict)
    notes: list[tuple[float, Text]] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    paused_key: str | None = None
    """The idempotency key of the charge that was made and not recorded when the payment worker was killed."""
    killed_after_version: int | None = None
    """The version of the chosen payment run's stream when its worker was killed."""

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def note(self, message: str, style: str = "") -> None:
        self.notes.append((self.elapsed(), Text(message, style=style)))

    def apply(self, event: RecordedEvent) -> None:
        workflow_id = event.stream_id[len(history.WORKFLOW_STREAM_PREFIX) :]
        if split_run_id(workflow_id) is None:
            return
        state = self.states.get(workflow_id, IDLE)
        self.states[workflow_id] = DEFAULT_LIFECYCLE.next_state(
            state, event.type, event.data, workflow_id, check_guard=False
        )
        if event.type == history.WORKFLOW_FAILED:
            error = event.data.get("error", {})
            self.note(f"{workflow_id} failed: {error.get('type')}: {error.get('message')}", "red")
        if event.type == history.STEP_COMPLETED and event.data.get("reconciled"):
            self.note(
                f"{workflow_id}: the fresh worker asked the provider about key {workflow_id}/{event.data['seq']}/"
                f"{event.data['name']}: charged. Recorded as the step's result (reconciled), not charged again.",
                "green",
            )
        if self.done():
            self.finished.set()

    def counts(self, agent: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for workflow_id, state in self.states.items():
            parsed = split_run_id(workflow_id)
            if parsed is not None and parsed[1] == agent:
                counts[state] = counts.get(state, 0) + 1
        return counts

    def done(self) -> bool:
        finished = sum(1 for state in self.states.values() if state in (COMPLETED, FAILED))
        failed = any(state == FAILED for state in self.states.values())
        return failed or finished == self.orders * len(AGENTS)

    def __rich__(self) -> Group:
        table = Table(title=f"order pipeline · {self.orders} orders · {self.elapsed():.1f} s", title_justify="left")
        table.add_column("agent")
        table.add_column("worker")
        table.add_column("started", justify="right")
        table.add_column("Processing", justify="right")
        table.add_column("AwaitingInput", justify="right")
        table.add_column("Completed", justify="right")
        table.add_column("Failed", justify="right")
        table.add_column("done", min_width=20)
        for agent in AGENTS:
            counts = self.counts(agent)
            started = sum(counts.values())
            completed = counts.get(COMPLETED, 0)
            table.add_row(
                agent,
                self.workers.get(agent, ""),
                str(started),
                str(counts.get("Processing", 0)),
                str(counts.get("AwaitingInput", 0)),
                str(completed),
                Text(str(counts.get(FAILED, 0)), style="red" if counts.get(FAILED) else ""),
                ProgressBar(total=self.orders, completed=completed, width=20),
            )
        lines = [Text.assemble((f"{at:5.1f} s  ", "dim"), message) for at, message in self.notes]
        return Group(table, *lines)


class Follower:
    """Folds every event of this demo's runs into the view, live, until closed; it survives a dropped connection
    by subscribing again after the last event it saw."""

    def __init__(self, store: EventStore, after: int, prefix: str, view: PipelineView) -> None:
        self.store = store
        self.position = after
        self.prefix = history.WORKFLOW_STREAM_PREFIX + prefix
        self.view = view
        self._closed = False
        self._subscription: Subscription | None = None

    async def run(self) -> None:
        while not self._closed:
            self._subscription = self.store.subscribe(self.position, stream_prefix=self.prefix)
            try:
                async with self._subscription:
                    async for event in self._subscription:
                        self.view.apply(event)
                        self.position = event.position
            except (StoreUnavailable, StoreTimeout) as error:
                if self._closed:
                    return
                self.view.note(f"following the store: {error}; subscribing again", "dim")
                await asyncio.sleep(RESUBSCRIBE_PAUSE_SECONDS)

    async def close(self) -> None:
        """Stop following; the subscription's wait for new events ends at once."""
        self._closed = True
        if self._subscription is not None:
            await self._subscription.close()


# -- the story ----------------------------------------------------------------------------------------------------


async def run_demo(settings: DemoSettings, console: Console) -> DemoResult:
    """Tell the whole story on `console`; return the check (the caller turns it into the exit code)."""
    tag = secrets.token_hex(3)
    orders = make_orders(tag, settings.orders)
    chosen = orders[len(orders) // 2]
    chosen_payment = run_id(chosen.order_id, PAYMENT)
    view = PipelineView(settings.orders)
    console.print(
        f"[bold]agentfold demo[/bold]: {settings.orders} orders through intake → payment → fulfilment → "
        f"notification, on {redact(settings.store_url)}"
    )
    with (
        tempfile.TemporaryDirectory(prefix="agentfold-demo-logs-") as log_dir,
        PaymentProvider(settings.provider_latency_seconds) as provider,
    ):
        async with agentfold.connect(settings.store_url) as store, worker_pool() as workers:
            pipeline = OrderPipeline(store, ProviderClient(provider.url))
            start = await store.head_position()
            follower = Follower(store, start, f"order-{tag}-", view)
            following = asyncio.create_task(follower.run())
            try:
                with Live(view, console=console, refresh_per_second=8):
                    await _tell(settings, store, pipeline, provider.url, Path(log_dir), workers, orders, chosen, view)
            finally:
                await follower.close()
                await asyncio.wait({following}, timeout=STOP_TIMEOUT_SECONDS)
                following.cancel()
            await asyncio.gather(*(worker.stop() for worker in workers))
            console.print()
            console.print(await order_timeline(store, chosen.order_id, view))
            runs = [run_id(order.order_id, agent) for order in orders for agent in AGENTS]
            states = {workflow_id: await pipeline.client.state(workflow_id) for workflow_id in runs}
        ledger = provider.ledger()
    key = view.paused_key
    check = check_pipeline(
        [order.order_id for order in orders],
        states,
        ledger.charges_per_order(),
        ledger.charge_requests,
        [key] if key else [],
    )
    if key:
        console.print(
            f"provider, key {key}: {ledger.charge_requests.get(key, 0)} charge request, "
            f"{ledger.status_queries.get(key, 0)} status query (the fresh worker's reconcile)"
        )
    for problem in check.problems[:SHOWN_PROBLEMS]:
        console.print(f"  [red]✗[/red] {problem}")
    console.print(Text(check.summary(), style="bold green" if check.ok else "bold red"))
    return DemoResult(check, chosen_payment, view.elapsed())


async def _tell(
    settings: DemoSettings,
    store: EventStore,
    pipeline: OrderPipeline,
    provider_url: str,
    log_dir: Path,
    workers: list[WorkerProcess],
    orders: Sequence[Order],
    chosen: Order,
    view: PipelineView,
) -> None:
    chosen_payment = run_id(chosen.order_id, PAYMENT)
    view.note(f"payment provider listening on {provider_url}: honours idempotency keys, counts every charge")
    spawned = await asyncio.gather(
        *(
            WorkerProcess.spawn(
                agent, settings.store_url, provider_url, log_dir, chosen_payment if agent == PAYMENT else None
            )
            for agent in AGENTS
        )
    )
    workers.extend(spawned)
    await asyncio.gather(*(worker.expect(READY) for worker in spawned))
    for worker in spawned:
        view.workers[worker.agent] = f"pid {worker.pid}"
    view.note(
        "worker processes ready: "
        + ", ".join(f"{worker.agent} (pid {worker.pid})" for worker in spawned)
        + f"; the payment worker will freeze right after charging {chosen.order_id}"
    )
    doomed = spawned[AGENTS.index(PAYMENT)]
    paused = asyncio.create_task(doomed.expect(PAUSED))
    placing = asyncio.create_task(_place_all(pipeline, orders, settings.order_interval_seconds, view))
    try:
        failed = asyncio.create_task(view.finished.wait())
        try:
            await asyncio.wait({paused, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
        if not paused.done():
            view.note("runs failed before the payment worker reached the kill point; nothing was killed", "red")
            return
        words = paused.result()
        doomed.frozen = True
        view.paused_key = words[2]
        view.workers[PAYMENT] = f"pid {doomed.pid} [yellow]frozen[/yellow]"
        view.note(
            f"{chosen_payment}: StepStarted '{CHARGE_STEP}' recorded (payment initiated, key {words[2]}); the "
            "provider charged it and answered; StepCompleted not recorded yet",
            "yellow",
        )
        await asyncio.sleep(settings.pause_hold_seconds)
        view.killed_after_version = await store.stream_version(workflow_stream(chosen_payment))
        await doomed.kill()
        view.workers[PAYMENT] = f"[red]pid {doomed.pid} killed[/red]"
        view.note(f"SIGKILL → payment worker pid {doomed.pid}: the charge is made, its outcome never recorded", "red")
        fresh = await WorkerProcess.spawn(PAYMENT, settings.store_url, provider_url, log_dir)
        workers.append(fresh)
        await fresh.expect(READY)
        view.workers[PAYMENT] = f"pid {fresh.pid} (fresh; {doomed.pid} killed)"
        view.note(f"fresh payment worker pid {fresh.pid} resumes every unfinished payment run from the store")
        await placing
    finally:
        placing.cancel()
        paused.cancel()
    await _until_finished(view, workers)


async def _place_all(pipeline: OrderPipeline, orders: Sequence[Order], interval: float, view: PipelineView) -> None:
    for order in orders:
        await pipeline.place(order)
        await asyncio.sleep(interval)
    view.note(f"all {len(orders)} orders placed")


async def _until_finished(view: PipelineView, workers: Sequence[WorkerProcess]) -> None:
    """Wait until every run finished; a worker that exits on its own meanwhile ends the demo with its log."""
    finished = asyncio.create_task(view.finished.wait())
    exits = {asyncio.create_task(worker.process.wait()): worker for worker in workers if not worker.killed}
    try:
        done, _ = await asyncio.wait(
            {finished, *exits}, timeout=COMPLETION_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (finished, *exits):
            task.cancel()
    if finished in done:
        view.note("every run of every order has finished")
        return
    if not done:
        view.note(f"not every run finished within {COMPLETION_TIMEOUT_SECONDS:.0f} s", "red")
        return
    worker = exits[next(iter(done))]
    raise DemoError(
        f"the {worker.agent} worker (pid {worker.pid}) exited with code {worker.process.returncode}\n"
        + worker.log_tail()
    )


# -- the timeline of one order ------------------------------------------------------------------------------------


def _agent_of(stream_id: str) -> str:
    if stream_id.startswith(history.SIGNAL_STREAM_PREFIX):
        return f"{INTAKE} inbox"
    if stream_id.startswith(NOTIFICATION_STREAM_PREFIX):
        return f"{NOTIFICATION} outbox"
    parsed = split_run_id(stream_id[len(history.WORKFLOW_STREAM_PREFIX) :])
    return parsed[1] if parsed else stream_id


def _short(value: object, limit: int = 56) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": ")) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(event: RecordedEvent) -> str:
    data = event.data
    kind = event.type
    if kind == history.STEP_STARTED:
        if data.get("name") == CHARGE_STEP:
            return f"payment initiated: intent recorded before the charge, key {data.get('idempotency_key')}"
        return "" if data.get("attempt") == 1 else f"attempt {data.get('attempt')}"
    if kind == history.STEP_COMPLETED:
        result = data.get("result")
        prefix = "reconciled with the provider: " if data.get("reconciled") else ""
        if isinstance(result, dict) and "charge_id" in result:
            return f"{prefix}{result['charge_id']} {result.get('status')} ({result.get('amount_cents', 0) / 100:.2f})"
        return prefix + ("" if result is None else _short(result))
    if kind == history.WAIT_STARTED:
        return f"waiting for signal {data.get('name')!r}"
    if kind in (history.SIGNAL_SENT, history.SIGNAL_RECEIVED):
        return _short(data.get("payload"))
    if kind == "CustomerNotified":
        return str(data.get("message", ""))
    if kind == history.WORKFLOW_COMPLETED:
        return _short(data.get("result"))
    if kind == history.WORKFLOW_FAILED:
        return _short(data.get("error"))
    return ""


async def order_timeline(store: EventStore, order_id: str, view: PipelineView) -> Table:
    """Every event of one order, from its four runs, the intake inbox and the notification outbox, in the
    store's global order; the moment the payment worker was killed is marked."""
    streams = [workflow_stream(run_id(order_id, agent)) for agent in AGENTS]
    streams += [signal_stream(run_id(order_id, INTAKE)), NOTIFICATION_STREAM_PREFIX + order_id]
    events: list[RecordedEvent] = []
    for stream in streams:
        events += [event async for event in store.read_stream(stream)]
    events.sort(key=lambda event: event.position)
    table = Table(title=f"timeline of {order_id}", title_justify="left")
    for name, justify in (("time", "right"), ("agent", "left"), ("v", "right"), ("event", "left"), ("step", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("what happened", overflow="fold", ratio=1)
    first = events[0].recorded_at_us if events else 0
    killed_stream = workflow_stream(run_id(order_id, PAYMENT))
    for event in events:
        style = ""
        if event.type == history.STEP_STARTED and event.data.get("name") == CHARGE_STEP:
            style = "yellow"
        elif event.type == history.STEP_COMPLETED and event.data.get("reconciled"):
            style = "bold green"
        name = event.data.get("name", "") if event.type != "CustomerNotified" else ""
        table.add_row(
            f"+{(event.recorded_at_us - first) / 1e6:.3f} s",
            _agent_of(event.stream_id),
            str(event.version),
            event.type,
            str(name),
            _describe(event),
            style=style,
        )
        if event.stream_id == killed_stream and event.version == view.killed_after_version:
            killed = "the payment worker is killed here; a fresh one resumes"
            table.add_row("", PAYMENT, "", "SIGKILL", "", killed, style="bold red")
    return table
