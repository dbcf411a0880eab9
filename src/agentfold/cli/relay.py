"""`agentfold relay`: copy a store's events into Redis Streams, in order, and keep following it."""

from __future__ import annotations

import asyncio
import signal

import click

import agentfold
from agentfold.cli import main
from agentfold.connect import redact
from agentfold.errors import AgentfoldError

# The relay's limits, repeated here so the CLI starts without importing the Redis driver (an optional extra);
# tests/test_relay.py checks they match agentfold.fanout.redis_relay.
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000
MAX_PARTITIONS = 1024


@main.command()
@click.option("--from", "source_url", required=True, help="The store to copy: sqlite:///…, postgresql://…, redis://….")
@click.option("--to", "target_url", required=True, help="Redis to copy into: redis://host:port/db?prefix=NAME.")
@click.option("--once", is_flag=True, help="Copy what the source holds now, then exit (default: keep following).")
@click.option("--name", default="relay", show_default=True, help="The relay's name: its checkpoint in Redis.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Events per Redis script call.",
)
@click.option(
    "--partitions",
    type=click.IntRange(0, MAX_PARTITIONS),
    default=0,
    show_default=True,
    help="Also write N partition streams for Redis-native consumer groups (fixed when the prefix is first filled).",
)
def relay(source_url: str, target_url: str, once: bool, name: str, batch_size: int, partitions: int) -> None:
    """Copy `read_all` of a store into Redis Streams: each event once, in order, resuming after a crash."""
    try:
        written, checkpoint = asyncio.run(_relay(source_url, target_url, once, name, batch_size, partitions))
    except AgentfoldError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"relayed {written} events to {redact(target_url)}; checkpoint {checkpoint}")


async def _relay(
    source_url: str, target_url: str, once: bool, name: str, batch_size: int, partitions: int
) -> tuple[int, int]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    async with agentfold.connect(source_url) as source:
        from agentfold.fanout.redis_relay import Relay

        worker = Relay(source, target_url, name=name, batch_size=batch_size, partitions=partitions)
        try:
            written = await worker.run(once=once, stop_event=stop)
            return written, await worker.checkpoint()
        finally:
            await worker.close()
