"""Actions a signed-in user may take on a run when the server allows them (``--allow-actions`` and a token):
send a signal (the approval a run waiting in ``wait_for`` needs), cancel, terminate, retry, restart from a step.

Each action goes through the runtime's client, which checks the run's state and writes one event; the event's
metadata names who did it (``{"actor": ..., "via": "agentfold serve", "remote_addr": ...}``), so the run's history
says who approved or stopped it. Before anything is written, every action checks that actions are enabled, the
form's CSRF token, and that the browser's ``Origin`` is this server. A refused action (`RunControlRefused`) writes
nothing and shows why.
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from agentfold.errors import InvalidInput
from agentfold.runtime import Runtime, WorkflowClient
from agentfold.runtime import history as h
from agentfold.store import EventStore
from agentfold.web.links import quote_path
from agentfold.web.security import CSRF_FIELD, csrf_matches, same_origin
from agentfold.web.settings import ServeSettings

ACTOR_FIELD: Final = "actor"
VIA: Final = "agentfold serve"
MAX_ACTOR_LENGTH: Final = 100
MAX_REASON_LENGTH: Final = 500


async def checked_form(request: Request) -> dict[str, str]:
    """The action's form, once actions are known to be allowed and the request is known to come from our page."""
    settings: ServeSettings = request.app.state.settings
    if not settings.actions_enabled:
        raise HTTPException(403, "actions are off: start the server with --allow-actions and a token")
    if not same_origin(request):
        raise HTTPException(403, "this action came from another site")
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    if not csrf_matches(settings, fields.get(CSRF_FIELD)):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
    return fields


def actor_of(request: Request, fields: dict[str, str]) -> dict[str, Any]:
    """Who did it: the name typed in the form (else ``web``), and from which address."""
    name = fields.get(ACTOR_FIELD, "").strip()[:MAX_ACTOR_LENGTH] or "web"
    client = request.client.host if request.client is not None else None
    return {"actor": name, "via": VIA, "remote_addr": client}


def client_of(request: Request) -> WorkflowClient:
    """A client without workflow code: enough to signal and control runs, which only append events."""
    store: EventStore = request.app.state.store
    return Runtime().client(store)


def _back_to(workflow_id: str) -> Response:
    return RedirectResponse(f"/runs/{quote_path(workflow_id)}", status_code=303)


async def send_signal(request: Request) -> Response:
    """Send a signal to a run; back to the run page."""
    fields = await checked_form(request)
    workflow_id = h.check_workflow_id(fields.get("id", ""))
    name = fields.get("name", "").strip()
    if not name:
        raise InvalidInput("a signal needs a name")
    raw_payload = fields.get("payload", "").strip() or "null"
    try:
        payload = json.loads(raw_payload)
    except ValueError as error:
        raise InvalidInput(f"the payload must be JSON: {error}") from None
    # The form's nonce makes a double submit (or a browser retry) one signal, not two.
    nonce = fields.get("nonce", "").strip() or None
    await client_of(request).signal(workflow_id, name, payload, signal_id=nonce, metadata=actor_of(request, fields))
    return _back_to(workflow_id)


async def control(request: Request) -> Response:
    """Cancel, terminate, retry or restart a run from a step; back to the run page."""
    fields = await checked_form(request)
    workflow_id = h.check_workflow_id(fields.get("id", ""))
    action = fields.get("action", "")
    reason = fields.get("reason", "").strip()[:MAX_REASON_LENGTH]
    metadata = actor_of(request, fields)
    client = client_of(request)
    if action == "cancel":
        await client.cancel(workflow_id, reason, metadata=metadata)
    elif action == "terminate":
        await client.terminate(workflow_id, reason, metadata=metadata)
    elif action == "retry":
        await client.retry(workflow_id, metadata=metadata)
    elif action == "restart":
        await client.restart(workflow_id, from_step=fields.get("from_step", "").strip(), metadata=metadata)
    else:
        raise InvalidInput(f"unknown action {action[:40]!r}; use cancel, terminate, retry or restart")
    return _back_to(workflow_id)


def routes() -> list[BaseRoute]:
    return [
        Route("/actions/signal", send_signal, methods=["POST"]),
        Route("/actions/control", control, methods=["POST"]),
    ]
