"""`agentfold start / signal / cancel / terminate / retry / restart`: run control from the command line.

Each command appends one event through the runtime's client, so the log stays the whole truth, and needs no
workflow code: the worker that registered the workflow runs it. An action the run's state forbids is refused with
exit code 2 and writes nothing.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import click

from agentfold.cli import main
from agentfold.cli.common import (
    STORE_ERROR_EXIT_CODE,
    json_option,
    print_json,
    resolve_workflow,
    run_with_store,
    store_option,
)
from agentfold.errors import RunControlRefused
from agentfold.runtime import Runtime, WorkflowClient
from agentfold.runtime import history as h
from agentfold.runtime.inspect import run_summary
from agentfold.store import EventStore


class ActionRefused(click.ClickException):
    """The run's state forbids the action; nothing was written (exit code 2)."""

    exit_code = STORE_ERROR_EXIT_CODE


def parse_json(text: str | None, option: str) -> Any:
    """The JSON value of an option, or a usage error naming the option and where the JSON broke."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint=option) from None


def control(
    url: str, workflow_id: str, action: Callable[[WorkflowClient, str], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Resolve the run, act on it through a client that needs no workflow code, and report its state after."""

    async def act(store: EventStore) -> dict[str, Any]:
        resolved = await resolve_workflow(store, workflow_id, url)
        client = Runtime().client(store)
        try:
            outcome = await action(client, resolved)
        except RunControlRefused as refused:
            raise ActionRefused(f"{refused} (nothing was written)") from None
        summary = await run_summary(store, resolved)
        return {"workflow_id": resolved, **outcome, "state": summary.status, "version": summary.version}

    return run_with_store(url, act)


def actor() -> dict[str, Any]:
    """Who acted, recorded with the event: the user and host the command ran as, and that it came from the CLI."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"actor": f"{user}@{socket.gethostname()}", "via": "cli"}


def report(result: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print_json(result)
    else:
        click.echo(f"{text} (now {result['state']})")


@main.command()
@click.argument("workflow")
@click.option("--input", "input_json", metavar="JSON", help="The run's input, as JSON (omit for none).")
@click.option("--id", "workflow_id", metavar="ID", help="The run's id [random]; starting it again starts nothing.")
@store_option
@json_option
def start(workflow: str, input_json: str | None, workflow_id: str | None, store_url: str, as_json: bool) -> None:
    """Start a run of WORKFLOW (its registered name); a worker serving that workflow runs it."""
    args = () if input_json is None else (parse_json(input_json, "--input"),)

    async def act(store: EventStore) -> dict[str, Any]:
        client = Runtime().client(store)
        before = 0
        if workflow_id is not None:
            before = await store.stream_version(h.workflow_stream(h.check_workflow_id(workflow_id)))
        handle = await client.start(workflow, *args, workflow_id=workflow_id)
        if await client.workers_serving(workflow) == []:
            click.echo(
                f"warning: no live worker serves workflow {workflow!r}; the run waits until one does "
                "(agentfold worker package.module:runtime)",
                err=True,
            )
        summary = await run_summary(store, handle.workflow_id)
        return {
            "workflow_id": handle.workflow_id,
            "workflow": workflow,
            "started": before == 0,
            "state": summary.status,
            "version": summary.version,
        }

    result = run_with_store(store_url, act)
    verb = "started" if result["started"] else "already started:"
    report(result, as_json, f"{verb} {result['workflow_id']} ({workflow})")


@main.command()
@click.argument("workflow_id", metavar="ID")
@click.argument("name")
@click.option("--payload", metavar="JSON", help="What the run's wait_for(NAME) returns, as JSON [null].")
@click.option("--signal-id", metavar="KEY", help="Deliver once however often it is sent with this key.")
@store_option
@json_option
def signal(
    workflow_id: str, name: str, payload: str | None, signal_id: str | None, store_url: str, as_json: bool
) -> None:
    """Send the signal NAME to run ID: its ctx.wait_for(NAME) returns the payload."""
    value = parse_json(payload, "--payload")

    async def act(client: WorkflowClient, resolved: str) -> dict[str, Any]:
        await client.signal(resolved, name, value, signal_id=signal_id, metadata=actor())
        return {"action": "signal", "signal": name, "written": True}

    report(control(store_url, workflow_id, act), as_json, f"sent {name!r} to {workflow_id}")


@main.command()
@click.argument("workflow_id", metavar="ID")
@click.option("--reason", default="", help="Why, recorded with the cancel.")
@store_option
@json_option
def cancel(workflow_id: str, reason: str, store_url: str, as_json: bool) -> None:
    """Cancel run ID: it stops at its next await, after its clean-up code, and ends Cancelled.

    A step already running finishes and its result is recorded. A worker serving the workflow delivers the cancel.
    """

    async def act(client: WorkflowClient, resolved: str) -> dict[str, Any]:
        return {"action": "cancel", "written": await client.cancel(resolved, reason, metadata=actor())}

    result = control(store_url, workflow_id, act)
    report(result, as_json, f"cancel {'requested' if result['written'] else 'already requested'} for {workflow_id}")


@main.command()
@click.argument("workflow_id", metavar="ID")
@click.option("--reason", default="", help="Why, recorded with the termination.")
@store_option
@json_option
def terminate(workflow_id: str, reason: str, store_url: str, as_json: bool) -> None:
    """Terminate run ID now: no clean-up, running step functions are cancelled. Needs no worker."""

    async def act(client: WorkflowClient, resolved: str) -> dict[str, Any]:
        await client.terminate(resolved, reason, metadata=actor())
        return {"action": "terminate", "written": True}

    report(control(store_url, workflow_id, act), as_json, f"terminated {workflow_id}")


@main.command()
@click.argument("workflow_id", metavar="ID")
@store_option
@json_option
def retry(workflow_id: str, store_url: str, as_json: bool) -> None:
    """Run the failed run ID again from its failed step, keeping the results recorded before it."""

    async def act(client: WorkflowClient, resolved: str) -> dict[str, Any]:
        return {"action": "retry", "written": True, "attempt": await client.retry(resolved, metadata=actor())}

    result = control(store_url, workflow_id, act)
    report(result, as_json, f"retrying {workflow_id}: attempt {result['attempt']}")


@main.command()
@click.argument("workflow_id", metavar="ID")
@click.option("--from-step", "from_step", required=True, metavar="NAME", help="The first step to run again.")
@store_option
@json_option
def restart(workflow_id: str, from_step: str, store_url: str, as_json: bool) -> None:
    """Start a new attempt of run ID that keeps the results recorded before step NAME and runs the rest again.

    For a run that has ended or is suspended; cancel or terminate a running one first.
    """

    async def act(client: WorkflowClient, resolved: str) -> dict[str, Any]:
        attempt = await client.restart(resolved, from_step=from_step, metadata=actor())
        return {"action": "restart", "from_step": from_step, "written": True, "attempt": attempt}

    result = control(store_url, workflow_id, act)
    report(result, as_json, f"restarted {workflow_id} from step {from_step!r}: attempt {result['attempt']}")
