"""`agentfold token create / list / revoke`: the credentials agents use with the HTTP API.

`create` prints the token once; the store keeps only its hash. Scopes are stream-id globs (``*`` matches any run of
characters); a token may read what it may write.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

import click
from rich.table import Table

import agentfold
from agentfold.cli import main
from agentfold.cli.common import (
    format_time,
    json_option,
    output_console,
    print_json,
    run_with_store,
    store_option,
)
from agentfold.connect import scrub
from agentfold.errors import AgentfoldError, InvalidInput
from agentfold.store import EventStore
from agentfold.tokens import WORKFLOW_OPERATIONS, IssuedToken, TokenInfo, TokenRegistry, now_us

_DURATION: Final = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_Action = Callable[[EventStore], Awaitable[IssuedToken]]


def parse_expiry(text: str, at_us: int) -> int:
    """A duration (``90s``, ``45m``, ``12h``, ``30d``) from `at_us`, or an ISO 8601 time, as µs since the epoch."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return at_us + int(match.group(1)) * _UNIT_SECONDS[match.group(2)] * 1_000_000
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration (30d, 12h, 45m, 90s) nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def _operations(text: str | None) -> list[str]:
    if not text:
        return []
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in WORKFLOW_OPERATIONS]
    if unknown:
        raise click.BadParameter(f"unknown operation {unknown[0]!r}; use some of {','.join(WORKFLOW_OPERATIONS)}")
    return chosen


@main.group()
def token() -> None:
    """Create, list and revoke the tokens agents use with the HTTP API (`agentfold serve`)."""


@token.command("create")
@click.argument("name")
@click.option("--write", "write", multiple=True, metavar="GLOB", help="Streams the token may append to (and read).")
@click.option("--read", "read", multiple=True, metavar="GLOB", help="Streams the token may read.")
@click.option(
    "--workflows", "workflows", metavar="OPS", help=f"Workflow operations allowed: {','.join(WORKFLOW_OPERATIONS)}."
)
@click.option("--expires", "expires", metavar="WHEN", help="A duration (30d, 12h, 45m) or an ISO 8601 time.")
@store_option
@json_option
def create(
    name: str,
    write: tuple[str, ...],
    read: tuple[str, ...],
    workflows: str | None,
    expires: str | None,
    store_url: str,
    as_json: bool,
) -> None:
    """Create a token for the agent NAME and print it once (only its hash is kept)."""
    expires_at = None if expires is None else parse_expiry(expires, now_us())
    operations = _operations(workflows)

    async def issue(store: EventStore) -> IssuedToken:
        return await TokenRegistry(store).create(name, write, read, operations, expires_at)

    issued = _run_creating(store_url, issue)
    if as_json:
        print_json({"token": issued.token, **issued.info.to_json()})
        return
    click.echo(issued.token)
    click.echo(f"token {issued.info.token_id} for {name!r}; keep it now, it is not shown again", err=True)


def _run_creating(url: str, action: _Action) -> IssuedToken:
    """Like `run_with_store`, but a SQLite file that does not exist yet is created (a new store's first token)."""

    async def opened() -> IssuedToken:
        async with await agentfold.connect(url) as store:
            return await action(store)

    try:
        return asyncio.run(opened())
    except InvalidInput as error:
        raise click.UsageError(scrub(str(error), url)) from None
    except (AgentfoldError, OSError) as error:
        raise click.ClickException(scrub(str(error), url)) from None


@token.command("list")
@store_option
@json_option
def list_tokens(store_url: str, as_json: bool) -> None:
    """List every token: id, agent name, scope, expiry and status (never the secret)."""

    async def listing(store: EventStore) -> list[TokenInfo]:
        return await TokenRegistry(store).all()

    tokens = run_with_store(store_url, listing)
    if as_json:
        print_json([info.to_json() for info in tokens])
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("id", "name"):
        table.add_column(column, no_wrap=True)
    for column in ("write", "read", "workflows", "expires", "status"):
        table.add_column(column, overflow="fold")
    for info in tokens:
        scope = info.scope.to_json()
        table.add_row(
            info.token_id,
            info.name,
            "\n".join(scope["write"]),
            "\n".join(scope["read"]),
            ",".join(scope["workflows"]),
            "never" if info.expires_at_us is None else format_time(info.expires_at_us)[:16],
            info.status(),
        )
    output_console().print(table)


@token.command("revoke")
@click.argument("token_id_or_name")
@store_option
def revoke(token_id_or_name: str, store_url: str) -> None:
    """Revoke a token by id, or every active token of an agent by name; refused from the next request on."""

    async def revoking(store: EventStore) -> list[TokenInfo]:
        return await TokenRegistry(store).revoke(token_id_or_name)

    for info in run_with_store(store_url, revoking):
        click.echo(f"revoked {info.token_id} ({info.name})")
