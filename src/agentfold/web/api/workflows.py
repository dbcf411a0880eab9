"""Workflow runs over HTTP: start (idempotent by workflow id), signal, cancel, state, result (long-poll), list.

A run's operations are checked twice: the token's ``--workflows`` must allow the operation, and the streams it
touches must be in scope like any other stream (starting and cancelling write ``workflow-<id>``, signalling writes
``signals-<id>``, reading a state or result reads ``workflow-<id>``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentfold.errors import InvalidInput, RunControlRefused, WorkflowCancelled, WorkflowFailed, WorkflowTerminated
from agentfold.runtime import history as h
from agentfold.runtime.inspect import RunFilter, list_runs, run_summary
from agentfold.runtime.runtime import Runtime
from agentfold.runtime.statemachine import CANCELLED
from agentfold.store import EventStore
from agentfold.web.api.events import json_response
from agentfold.web.api.guard import principal
from agentfold.web.api.inputs import float_param, int_param, json_body, naming, only_params, text_param
from agentfold.web.api.scopes import require_operation, require_read, require_write
from agentfold.web.api.settings import DEFAULT_RESULT_WAIT_SECONDS, ApiSettings


class StartIn(msgspec.Struct, forbid_unknown_fields=True):
    """Start a run of the registered workflow `workflow` with `args`, under `workflow_id`."""

    workflow: str
    workflow_id: str
    args: list[Any] = msgspec.field(default_factory=list)


class CancelIn(msgspec.Struct, forbid_unknown_fields=True):
    """Ask a running run to stop, saying why."""

    reason: str = ""


class SignalIn(msgspec.Struct, forbid_unknown_fields=True):
    """Send the signal `name` with `payload`; the same `signal_id` is delivered once however often it is sent."""

    name: str
    payload: Any = None
    signal_id: str | None = None


def _workflow_id(request: Request) -> str:
    workflow_id: str = request.path_params["workflow_id"]
    try:
        return h.check_workflow_id(workflow_id)
    except InvalidInput as error:
        raise naming(error, "workflow_id") from None


class WorkflowRoutes:
    """The endpoints over workflow runs."""

    def __init__(self, store: EventStore, settings: ApiSettings) -> None:
        self.store = store
        self.settings = settings
        self.client = (settings.runtime or Runtime()).client(store)

    def routes(self) -> list[Route]:
        return [
            Route("/workflows", self.runs_or_start, methods=["GET", "POST"]),
            Route("/workflows/{workflow_id:path}/signals", self.signal, methods=["POST"]),
            Route("/workflows/{workflow_id:path}/result", self.result, methods=["GET"]),
            Route("/workflows/{workflow_id:path}/cancel", self.cancel, methods=["POST"]),
            Route("/workflows/{workflow_id:path}", self.state, methods=["GET"]),
        ]

    async def runs_or_start(self, request: Request) -> Response:
        """One route per path, so a 405 names every method the path has in its Allow header."""
        return await (self.start(request) if request.method == "POST" else self.runs(request))

    async def runs(self, request: Request) -> Response:
        """The runs whose streams the token may read, oldest first, optionally of one status."""
        info = principal(request)
        only_params(request, "status", "limit")
        limit = int_param(request, "limit", 100, minimum=1, maximum=self.settings.max_page_limit)
        try:
            run_filter = RunFilter(text_param(request, "status"))
        except InvalidInput as error:
            raise naming(error, "status") from None
        runs = [
            run
            for run in await list_runs(self.store, run_filter)
            if info.scope.can_read(h.workflow_stream(run.workflow_id))
        ]
        return json_response({"runs": [run.to_json() for run in runs[:limit]]})

    async def start(self, request: Request) -> Response:
        """Start a run, or find the one already started under this workflow id (same answer either way)."""
        info = principal(request)
        only_params(request)
        require_operation(info, "start")
        body = await json_body(request, StartIn)
        try:
            workflow_id = h.check_workflow_id(body.workflow_id)
        except InvalidInput as error:
            raise naming(error, "workflow_id") from None
        require_write(info, h.workflow_stream(workflow_id))
        try:
            h.check_workflow_name(body.workflow)
        except InvalidInput as error:
            raise naming(error, "workflow") from None
        try:
            await self.client.start(body.workflow, *body.args, workflow_id=workflow_id)
        except InvalidInput as error:
            raise naming(error, "args") from None
        return json_response({"workflow_id": workflow_id, "workflow": body.workflow})

    async def signal(self, request: Request) -> Response:
        """Send a signal to a run (idempotent by `signal_id`)."""
        info = principal(request)
        only_params(request)
        workflow_id = _workflow_id(request)
        require_operation(info, "signal")
        require_write(info, h.signal_stream(workflow_id))
        body = await json_body(request, SignalIn)
        if not body.name:
            raise naming(InvalidInput("a signal name must not be empty"), "name")
        try:
            await self.client.signal(workflow_id, body.name, body.payload, signal_id=body.signal_id)
        except InvalidInput as error:
            raise naming(error, "payload") from None
        return json_response({"workflow_id": workflow_id, "name": body.name, "signal_id": body.signal_id})

    async def cancel(self, request: Request) -> Response:
        """Ask a run to stop at its next await (asking again, even after it ended cancelled, changes nothing); 409 for
        a run that ended otherwise."""
        info = principal(request)
        only_params(request)
        workflow_id = _workflow_id(request)
        require_operation(info, "cancel")
        require_write(info, h.workflow_stream(workflow_id))
        body = await json_body(request, CancelIn) if await request.body() else CancelIn()
        try:
            await self.client.cancel(workflow_id, body.reason)
        except InvalidInput as error:
            raise naming(error, "reason") from None
        except RunControlRefused as refused:
            if refused.state != CANCELLED:  # a retry after the run ended cancelled gets the first answer again
                raise
        return json_response({"workflow_id": workflow_id, "cancel_requested": True})

    async def state(self, request: Request) -> Response:
        """The run's summary: lifecycle state, status, times and counts."""
        info = principal(request)
        only_params(request)
        workflow_id = _workflow_id(request)
        require_read(info, h.workflow_stream(workflow_id))
        return json_response((await run_summary(self.store, workflow_id)).to_json())

    async def result(self, request: Request) -> Response:
        """Wait up to `timeout` seconds for the run to end: 200 with how it ended, 202 if it is still going."""
        info = principal(request)
        only_params(request, "timeout")
        workflow_id = _workflow_id(request)
        require_read(info, h.workflow_stream(workflow_id))
        timeout = float_param(
            request,
            "timeout",
            min(DEFAULT_RESULT_WAIT_SECONDS, self.settings.max_result_wait_seconds),
            self.settings.max_result_wait_seconds,
        )
        try:
            result = await self.client.result(workflow_id, timeout=timeout)
        except WorkflowFailed as failure:
            error = {"type": failure.error_type, "message": failure.error_message}
            return json_response({"workflow_id": workflow_id, "status": "failed", "error": error})
        except (WorkflowCancelled, WorkflowTerminated) as stopped:
            status = "cancelled" if isinstance(stopped, WorkflowCancelled) else "terminated"
            return json_response({"workflow_id": workflow_id, "status": status, "reason": stopped.reason})
        except TimeoutError:
            state = await self.client.state(workflow_id)
            return json_response({"workflow_id": workflow_id, "status": state}, status=202)
        return json_response({"workflow_id": workflow_id, "status": "completed", "result": msgspec.to_builtins(result)})
