"""Who may see and change what: the token check, the sign-in cookie, CSRF tokens and the security headers.

The token is compared with `hmac.compare_digest` (constant time) and never written anywhere: the cookie holds an
HMAC of a per-process secret, not the token, and no log line names either. An action needs, besides a signed-in
browser, a CSRF token bound to that sign-in in its form, and an ``Origin`` (when the browser sends one) naming this
server; the cookie is ``SameSite=Strict`` as well.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentfold.web.settings import ServeSettings

SESSION_COOKIE: Final = "agentfold_session"
CSRF_FIELD: Final = "csrf_token"

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

PUBLIC_PATHS: Final = ("/login", "/static/", "/api/v1/")
"""Paths served without a sign-in: the sign-in form and the style sheet and script it uses, and the HTTP API, which
checks every request against its own per-agent tokens (`agentfold token create`)."""


def _sign(settings: ServeSettings, purpose: str) -> str:
    return hmac.new(settings.session_secret, purpose.encode(), hashlib.sha256).hexdigest()


def token_matches(settings: ServeSettings, offered: str | None) -> bool:
    """True when `offered` is the server's token; constant time whatever the input."""
    if settings.token is None or offered is None:
        return False
    return hmac.compare_digest(offered.encode(), settings.token.encode())


def session_cookie_value(settings: ServeSettings) -> str:
    """What the sign-in cookie holds: proof the token was given, not the token."""
    return _sign(settings, "session")


def is_signed_in(settings: ServeSettings, connection: HTTPConnection) -> bool:
    """True without a token, or with the token as a bearer header, or with a valid sign-in cookie."""
    if settings.token is None:
        return True
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer ") and token_matches(settings, header[7:].strip()):
        return True
    cookie = connection.cookies.get(SESSION_COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), session_cookie_value(settings).encode())


def csrf_token(settings: ServeSettings) -> str:
    """The token every action form carries, bound to this server's sign-in secret."""
    return _sign(settings, "csrf")


def csrf_matches(settings: ServeSettings, offered: str | None) -> bool:
    return offered is not None and hmac.compare_digest(offered.encode(), csrf_token(settings).encode())


def same_origin(connection: HTTPConnection) -> bool:
    """False when the browser says the request came from another site (``Origin`` not this host)."""
    origin = connection.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = connection.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


class SecurityHeaders:
    """Adds the security headers to every response, whatever produced it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {bytes(name).lower() for name, _ in headers}
                headers.extend(header for header in SECURITY_HEADERS if header[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
