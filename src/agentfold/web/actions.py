"""Actions a signed-in user may take on a run when the server allows them (``--allow-actions`` and a token).

Each action is an ordinary event appended through the store's interface, naming who did it in its metadata
(``{"actor": ..., "via": "agentfold serve"}``), so the run's history says who approved or stopped it. Every action
checks, before writing anything: actions are enabled, the form's CSRF token, and that the browser's ``Origin`` is
this server.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from agentfold.errors import InvalidInput, WorkflowNotFound
from agentfold.events import ANY, NewEvent
from agentfold.runtime import history as h
from agentfold.store import EventStore
from agentfold.web.security import CSRF_FIELD, csrf_matches, same_origin
from agentfold.web.settings import ServeSettings

ACTOR_FIELD: Final = "actor"
VIA: Final = "agentfold serve"
MAX_ACTOR_LENGTH: Final = 100
FORM_NAMESPACE: Final = uuid.UUID("5d1f3c2a-8b7e-4f0a-9c61-3e2b7a9d4c10")


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


async def send_signal(request: Request) -> Response:
    """Send a signal to a run (the approval a run waiting in `wait_for` needs); back to the run page."""
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
    store: EventStore = request.app.state.store
    if await store.stream_version(h.workflow_stream(workflow_id)) == 0:
        raise WorkflowNotFound(workflow_id)
    # The form's nonce makes a double submit (or a browser retry) one signal, not two.
    nonce = fields.get("nonce", "").strip()
    event_id = uuid.uuid5(FORM_NAMESPACE, f"{workflow_id}/{nonce}") if nonce else uuid.uuid4()
    event = NewEvent(h.SIGNAL_SENT, {"name": name, "payload": payload}, metadata=actor_of(request, fields), id=event_id)
    await store.append(h.signal_stream(workflow_id), [event], expected_version=ANY)
    return RedirectResponse(f"/runs/{workflow_id}", status_code=303)


def routes() -> list[BaseRoute]:
    return [Route("/actions/signal", send_signal, methods=["POST"])]
