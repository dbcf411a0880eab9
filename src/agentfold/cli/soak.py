"""`agentfold soak`: run every kind of work on a store for a while and check the invariants (see agentfold.soak)."""

from __future__ import annotations

import asyncio
import json

import click

from agentfold.cli import main
from agentfold.connect import redact
from agentfold.errors import AgentfoldError
from agentfold.soak import run_soak


@main.command()
@click.option("--store", "store_url", required=True, metavar="URL", help="The store to soak (it gets soak-… streams).")
@click.option(
    "--seconds", type=click.FloatRange(0, 86400, min_open=True), default=180.0, show_default=True, help="How long."
)
@click.option("--seed", type=int, default=None, help="Seed the random choices, to repeat a run's shape.")
def soak(store_url: str, seconds: float, seed: int | None) -> None:
    """Append, retry, subscribe, run a consumer group and workflows with rotating workers for SECONDS, checking
    that nothing is lost, duplicated or reordered. Prints the report as JSON; exits 1 if an invariant broke."""
    try:
        report = asyncio.run(run_soak(store_url, seconds, seed=seed))
    except AgentfoldError as error:
        raise click.ClickException(f"{redact(store_url)}: {error}") from None
    click.echo(json.dumps(report, indent=2))
    if report["violations"]:
        raise SystemExit(1)
