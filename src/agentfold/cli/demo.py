"""`agentfold demo`: a short walk through the store on a SQLite file in a temporary folder."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

import agentfold
from agentfold import NO_STREAM, NewEvent
from agentfold.cli import main
from agentfold.errors import WrongExpectedVersion


async def _walk_through(path: Path, console: Console) -> None:
    url = f"sqlite:///{path}"
    console.print(f"[bold]Store[/bold] {url}")
    async with agentfold.connect(url) as store:
        placed = NewEvent("OrderPlaced", {"order_id": 42, "total": 99.5}, {"agent_id": "intake"})
        result = await store.append("order-42", [placed], expected_version=NO_STREAM)
        console.print(f"intake agent appended OrderPlaced -> version {result.version}, position {result.position}")
        try:
            await store.append("order-42", [NewEvent("OrderPlaced", {"order_id": 42})], expected_version=NO_STREAM)
        except WrongExpectedVersion as error:
            console.print(f"a second intake agent is refused: [yellow]{error}[/yellow]")
        paid = NewEvent("OrderPaid", {"order_id": 42, "amount": 99.5}, {"agent_id": "payment"})
        await store.append("order-42", [paid], expected_version=1)
        retry = await store.append("order-42", [paid], expected_version=1)
        console.print(f"the payment agent retries its append: same result {retry}, nothing written twice")

    console.print("the process closes the store; a new one opens the same file:")
    async with agentfold.connect(url) as store:
        table = Table(title="order-42")
        for column in ("version", "position", "type", "agent", "data"):
            table.add_column(column)
        async for event in store.read_stream("order-42"):
            table.add_row(
                str(event.version),
                str(event.position),
                event.type,
                str(event.metadata.get("agent_id", "")),
                str(event.data),
            )
        console.print(table)


@main.command()
def demo() -> None:
    """Show what agentfold guarantees, on a throw-away SQLite store."""
    console = Console()
    with tempfile.TemporaryDirectory(prefix="agentfold-demo-") as folder:
        asyncio.run(_walk_through(Path(folder) / "demo.db", console))
