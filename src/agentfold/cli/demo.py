"""`agentfold demo` (run by `make demo`): the order pipeline, a payment worker killed mid-charge, and the check."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Final

import click
from rich.console import Console

from agentfold.cli import main
from agentfold.cli.common import INTERRUPTED_EXIT_CODE
from agentfold.connect import redact, scrub
from agentfold.errors import AgentfoldError
from agentfold.web.settings import DEFAULT_HOST, DEFAULT_PORT

CHECK_FAILED_EXIT_CODE: Final = 1
DEMO_ERROR_EXIT_CODE: Final = 2
WIDTH_WHEN_PIPED: Final = 140


@main.command()
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="Run on this store (postgresql://…, redis://…, sqlite:///…). Default: a SQLite file in a temporary folder.",
)
@click.option(
    "--orders", type=click.IntRange(min=1, max=1000), default=20, show_default=True, help="How many orders to place."
)
def demo(store_url: str | None, orders: int) -> None:
    """Four agents process orders as durable workflows; the payment worker is SIGKILLed between a charge and its
    record, a fresh one reconciles with the provider, and a check proves every order completed with one charge.

    Exits non-zero if the check fails.
    """
    from agentfold.demo.orchestrator import DemoError, DemoSettings, run_demo

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=WIDTH_WHEN_PIPED)
    if store_url is not None and store_url.lower().startswith("memory:"):
        raise click.BadParameter(
            "memory:// lives inside one process, and the demo's workers are separate processes; "
            "use sqlite://, postgresql:// or redis://",
            param_hint="--store",
        )
    kept_store = store_url is None
    if store_url is None:
        folder = Path(tempfile.mkdtemp(prefix="agentfold-demo-"))
        store_url = f"sqlite:///{folder / 'demo.db'}"
    settings = DemoSettings(store_url=store_url, orders=orders)
    try:
        result = asyncio.run(run_demo(settings, console))
    except KeyboardInterrupt:
        console.print()
        console.print("[yellow]interrupted; every worker process was stopped[/yellow]")
        raise click.exceptions.Exit(INTERRUPTED_EXIT_CODE) from None
    except DemoError as error:
        console.print()
        console.print(f"[red]the demo could not finish:[/red] {error}")
        raise click.exceptions.Exit(DEMO_ERROR_EXIT_CODE) from None
    except (AgentfoldError, OSError) as error:
        console.print()
        console.print(f"[red]the store at {redact(store_url)} failed:[/red] {scrub(str(error), store_url)}")
        raise click.exceptions.Exit(DEMO_ERROR_EXIT_CODE) from None
    console.print(f"finished in {result.elapsed_seconds:.1f} s")
    command = agentfold_command()
    store = shlex.quote(store_url if kept_store else redact(store_url))
    if kept_store:
        console.print("look inside (the store is kept):")
        # One command per line, never wrapped, so it can be copied as it is.
        for line in (
            f"{command} show {shlex.quote(result.chosen_order)} --store {store}",
            f"{command} workflows --store {store}",
        ):
            console.print(f"  {line}", soft_wrap=True, markup=False)
    console.print(f"watch the same runs in a browser (then open http://{DEFAULT_HOST}:{DEFAULT_PORT}/runs):")
    console.print(f"  {command} serve --store {store}", soft_wrap=True, markup=False)
    if not result.check.ok:
        raise click.exceptions.Exit(CHECK_FAILED_EXIT_CODE)


def agentfold_command() -> str:
    """How to run the `agentfold` command of this installation from the current shell: its name when PATH finds
    this installation, else its path (relative when under the current folder, as `.venv/bin/agentfold` is after
    `make demo`), else this Python with ``-m agentfold.cli``."""
    script = Path(sys.executable).parent / "agentfold"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m agentfold.cli"
    on_path = shutil.which("agentfold")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "agentfold"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))
