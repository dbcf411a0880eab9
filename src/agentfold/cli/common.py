"""What the inspection commands share: the `--store` option, opening the store with clear errors, and output helpers.

Errors reach the user as one line on stderr, never a traceback: a store that cannot be opened or fails while being
read exits with code 2 and names the URL with its password replaced by ``***``; a workflow id that does not exist
names the closest ids there are.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import agentfold
from agentfold.cli import DEFAULT_STORE
from agentfold.connect import redact, scrub
from agentfold.errors import (
    AgentfoldError,
    InvalidInput,
    StoreClosed,
    StoreCorrupted,
    StoreNotFound,
    StoreTimeout,
    StoreUnavailable,
)
from agentfold.runtime import history as h
from agentfold.runtime.inspect import close_matches, list_workflow_ids
from agentfold.store import EventStore

STORE_ENV: Final = "AGENTFOLD_STORE"
STORE_ERROR_EXIT_CODE: Final = 2
INTERRUPTED_EXIT_CODE: Final = 130

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class StoreError(click.ClickException):
    """The store could not be opened or failed while being read (exit code 2)."""

    exit_code = STORE_ERROR_EXIT_CODE


class UnknownRun(click.ClickException):
    """The workflow id names no run in the store (exit code 1)."""


def store_option(command: F) -> F:
    """The `--store URL` option: env AGENTFOLD_STORE, default ``sqlite:///agentfold.db``."""
    option = click.option(
        "--store",
        "store_url",
        envvar=STORE_ENV,
        show_envvar=True,
        default=DEFAULT_STORE,
        show_default=True,
        metavar="URL",
        help="The store to read: sqlite:///path.db, postgresql://user@host/db, redis://host:port/0.",
    )
    return option(command)


def json_option(command: F) -> F:
    """The `--json` flag: print JSON for scripts instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(command)


def wide_option(command: F) -> F:
    """The `--wide` flag: every column at its full width, whatever the terminal's width."""
    return click.option(
        "--wide", is_flag=True, help="Show every column at its full width (lines may be wider than the terminal)."
    )(command)


CREATE_HINT: Final = (
    "; a store is created by the first program that opens it to write (a worker, or agentfold.connect(URL) in "
    f"your app); to read another, pass --store URL or set {STORE_ENV}"
)


async def open_store(url: str) -> EventStore:
    """Open the store at `url` for reading, or raise `StoreError` saying which store and why.

    Nothing is created or upgraded (`connect(url, create=False)`): a missing SQLite file, PostgreSQL schema or
    Redis prefix is an error naming it, so a typo in the URL cannot leave an empty store behind.
    """
    shown = redact(url)
    try:
        return await agentfold.connect(url, create=False)
    except StoreNotFound as error:
        raise StoreError(scrub(str(error), url) + CREATE_HINT) from None
    except InvalidInput as error:
        raise StoreError(f"cannot use the store URL {shown}: {scrub(str(error), url)}") from None
    except (AgentfoldError, OSError) as error:
        reason = scrub(str(error), url)
        raise StoreError(reason if shown in reason else f"cannot open the store at {shown}: {reason}") from None


def run_with_store(url: str, action: Callable[[EventStore], Awaitable[T]]) -> T:
    """Open the store, run `action` on it, close it; turn every failure into a one-line error for the user."""

    async def opened() -> T:
        store = await open_store(url)
        try:
            return await action(store)
        finally:
            await store.close()

    shown = redact(url)
    try:
        return asyncio.run(opened())
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        raise click.exceptions.Exit(INTERRUPTED_EXIT_CODE) from None
    except (StoreUnavailable, StoreTimeout, StoreCorrupted, StoreClosed, OSError) as error:
        raise StoreError(f"the store at {shown} failed: {scrub(str(error), url)}") from None
    except InvalidInput as error:
        raise click.UsageError(scrub(str(error), url)) from None
    except AgentfoldError as error:
        raise click.ClickException(scrub(str(error), url)) from None


async def resolve_workflow(store: EventStore, wanted: str, url: str) -> str:
    """The workflow id the user meant: `wanted`, or `wanted` without a ``workflow-`` prefix (the stream's name).

    Otherwise `UnknownRun` naming the closest ids in the store.
    """
    h.check_workflow_id(wanted)
    if await store.stream_version(h.workflow_stream(wanted)) > 0:
        return wanted
    prefix = h.WORKFLOW_STREAM_PREFIX
    if wanted.startswith(prefix) and len(wanted) > len(prefix):
        stripped = wanted[len(prefix) :]
        if await store.stream_version(h.workflow_stream(stripped)) > 0:
            return stripped
    known = await list_workflow_ids(store)
    matches = close_matches(wanted, known)
    message = f"no workflow {wanted!r} in {redact(url)}"
    if matches:
        message += "; did you mean " + ", ".join(repr(match) for match in matches) + "?"
    elif known:
        message += f" ({len(known)} runs there; `agentfold workflows` lists them)"
    else:
        message += " (no workflow runs there)"
    raise UnknownRun(message)


# -- output --------------------------------------------------------------------------------------------------------


def output_console() -> Console:
    """Where tables go (stdout); wide as the terminal, or $COLUMNS when piped."""
    return Console(highlight=False)


def status_console() -> Console:
    """Where progress goes (stderr), so stdout stays clean for pipes."""
    return Console(stderr=True, highlight=False)


def print_json(value: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def print_json_line(value: Any) -> None:
    """One JSON object on one line of stdout, flushed at once (for followers such as `tail`)."""
    click.echo(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for a read of `total` units; yields `update(done)`. Shown only on a terminal."""
    console = status_console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=max(total, 1))

        def update(done: int) -> None:
            progress.update(task, completed=min(done, total))

        yield update


def format_time(timestamp_us: int | None) -> str:
    """An event time for a table: UTC, to the millisecond."""
    if timestamp_us is None:
        return ""
    moment = datetime.fromtimestamp(timestamp_us / 1_000_000, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_size(size: int) -> str:
    """Bytes in the largest unit that keeps the number below 1024."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
