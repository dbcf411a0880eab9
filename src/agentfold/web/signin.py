"""The sign-in form for a server started with a token: the token is checked once, the browser keeps a cookie that
proves it (an HMAC, not the token), ``HttpOnly`` and ``SameSite=Strict``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from agentfold.web.security import SESSION_COOKIE, session_cookie_value, token_matches
from agentfold.web.settings import ServeSettings


def _safe_next(raw: object) -> str:
    """Only a path on this server (never ``//host`` or a full URL) is followed after signing in."""
    if isinstance(raw, str) and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/runs"


def _form(request: Request, next_path: str, failed: bool, status: int = 200) -> Response:
    settings: ServeSettings = request.app.state.settings
    template = request.app.state.templates.get_template("login.html")
    html = template.render(request=request, settings=settings, next=next_path, failed=failed)
    return HTMLResponse(html, status_code=status)


async def login_form(request: Request) -> Response:
    return _form(request, _safe_next(request.query_params.get("next")), failed=False)


async def login(request: Request) -> Response:
    settings: ServeSettings = request.app.state.settings
    form = await request.form()
    next_path = _safe_next(form.get("next"))
    offered = form.get("token")
    if settings.token is None or not token_matches(settings, offered if isinstance(offered, str) else None):
        return _form(request, next_path, failed=True, status=401)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_cookie_value(settings),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


def routes() -> list[BaseRoute]:
    return [Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"])]
