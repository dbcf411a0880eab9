"""`agentfold worker module:runtime`: run an application's workflows from a store until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import click

import agentfold
from agentfold.cli import DEFAULT_STORE, main
from agentfold.connect import redact
from agentfold.errors import AgentfoldError, WorkerSuperseded
from agentfold.runtime import Runtime
from agentfold.runtime.identity import WORKER_ID_VARIABLE, default_worker_id
from agentfold.runtime.leases import DEFAULT_LEASE_TTL

SUPERSEDED_EXIT = 3
"""The exit status of a worker fenced out by a newer start of its id (a supervisor should not restart it)."""


def load_runtime(target: str) -> Runtime:
    """The `Runtime` named by ``package.module:attribute`` (imported with the current directory on the path)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{target!r} is not of the form package.module:attribute", param_hint="APP")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise click.BadParameter(f"cannot import {module_name!r}: {error}", param_hint="APP") from None
    found = getattr(module, attribute, None)
    if not isinstance(found, Runtime):
        raise click.BadParameter(
            f"{module_name}.{attribute} is {type(found).__name__}, not an agentfold Runtime", param_hint="APP"
        )
    return found


@main.command()
@click.argument("app", metavar="APP")
@click.option("--store", "store_url", envvar="AGENTFOLD_STORE", default=DEFAULT_STORE, show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=32, show_default=True, help="Runs held at once.")
@click.option(
    "--lease-ttl",
    type=click.FloatRange(0, min_open=True),
    default=DEFAULT_LEASE_TTL,
    show_default=True,
    help="Seconds without a heartbeat after which other workers take this worker's runs over.",
)
@click.option("--heartbeat", type=click.FloatRange(0, min_open=True), help="Seconds between heartbeats [TTL / 3].")
@click.option(
    "--stop-timeout",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="On SIGTERM, seconds to let running steps finish before cancelling them.",
)
@click.option(
    "--unserved-grace",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds a run of a workflow no live worker serves waits before it is failed with UnknownWorkflow.",
)
@click.option(
    "--worker-id",
    envvar=WORKER_ID_VARIABLE,
    help=(
        f"This worker's name in the store, kept across restarts [${WORKER_ID_VARIABLE}, else the Kubernetes pod "
        "name, else <host>-<unit> under a systemd service, else host-pid-random]. A relaunch under the same id "
        "resumes its runs at once; under a new id they wait out the lease TTL. Set one per worker when several "
        "workers share a pod or service unit, or when a supervisor relaunches workers with nothing stable to "
        "derive one from."
    ),
)
@click.option(
    "--take-over",
    is_flag=True,
    help=(
        "Start even while a worker with this id still heartbeats: it is fenced out (its appends are refused) and "
        "stops. Without it such a start is refused."
    ),
)
@click.option("--verbose", "-v", is_flag=True, help="Log takeovers and run interruptions.")
def worker(
    app: str,
    store_url: str,
    concurrency: int,
    lease_ttl: float,
    heartbeat: float | None,
    stop_timeout: float,
    unserved_grace: float,
    worker_id: str | None,
    take_over: bool,
    verbose: bool,
) -> None:
    """Run the workflows of APP (``package.module:runtime``) from the store, sharing them with other workers.

    Any number of workers may serve one store. SIGTERM or Ctrl-C stops gracefully: nothing new is started, running
    steps finish, and every run this worker held is handed to the others at once. A worker whose id a newer
    start took over (--take-over) stops serving and exits with status 3.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s")
    logging.captureWarnings(True)  # the store's warnings (a Redis that may lose appends) go to the log, dated
    runtime = load_runtime(app)
    chosen_id = worker_id or default_worker_id()
    try:
        asyncio.run(
            _serve(
                runtime,
                store_url,
                concurrency,
                lease_ttl,
                heartbeat,
                stop_timeout,
                unserved_grace,
                chosen_id,
                take_over,
            )
        )
    except WorkerSuperseded as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(SUPERSEDED_EXIT)
    except AgentfoldError as error:
        raise click.ClickException(str(error)) from None


async def _serve(
    runtime: Runtime,
    store_url: str,
    concurrency: int,
    lease_ttl: float,
    heartbeat: float | None,
    stop_timeout: float,
    unserved_grace: float,
    worker_id: str,
    take_over: bool,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Plain step functions run in the default executor: give every run a thread, so runs blocked in slow calls
    # cannot starve the others of threads.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=concurrency + 8, thread_name_prefix="agentfold-step"))
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    async with agentfold.connect(store_url) as store:
        running = runtime.worker(
            store,
            concurrency=concurrency,
            lease_ttl=lease_ttl,
            heartbeat=heartbeat,
            worker_id=worker_id,
            stop_timeout=stop_timeout,
            unserved_grace=unserved_grace,
            take_over=take_over,
        )
        async with running:
            click.echo(
                f"worker {running.worker_id} ready: {', '.join(runtime.names) or 'no workflows'} from "
                f"{redact(store_url)}, concurrency {concurrency}, lease TTL {running.lease.ttl} s, "
                f"incarnation {running.incarnation}",
                err=True,
            )
            stopping = asyncio.create_task(stop.wait())
            fenced = asyncio.create_task(running.wait_superseded())
            await asyncio.wait({stopping, fenced}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            fenced.cancel()
            if running.superseded is None:
                click.echo(f"worker {running.worker_id} stopping", err=True)
    if running.superseded is not None:
        raise running.superseded
    click.echo("worker stopped", err=True)
