"""The API's gate: every request names a valid token (Bearer), stays within its rate, and a body within the limit.

It runs before routing, so nothing is read from the store for a request it refuses, and a body over the limit is
refused from its Content-Length (or, when chunked, as soon as it grows past the limit) before anything parses it.
The scope check needs the stream a request touches; endpoints make it with `principal(request)` before any read or
write.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentfold.appending import Watched
from agentfold.errors import AgentfoldError, InvalidInput, RequestTooLarge
from agentfold.tokens import TOKENS_STREAM, TokenInfo, TokenRegistry
from agentfold.web.api.problems import error_response
from agentfold.web.api.ratelimit import RateLimiter

PUBLIC_PATHS: Final = frozenset({"/openapi.json"})
PRINCIPAL_KEY: Final = "agentfold_principal"


class ApiGate:
    """The checks every API request but the public ones passes first: a valid token, within its rate, a declared body
    within the limit. One gate per API app, so every way a request is served spends the same rate-limit buckets and
    shares the same token reads."""

    def __init__(self, tokens: TokenRegistry, limiter: RateLimiter, max_body_bytes: int) -> None:
        self.tokens = tokens
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes

    async def admit(self, scope: Scope) -> TokenInfo:
        """The token of the request `scope`; `InvalidToken`, `TokenExpired`, `TokenRevoked`, `RateLimited`, or
        `RequestTooLarge` (from its Content-Length) otherwise."""
        info = await self.tokens.authenticate(_bearer(scope))
        self.within_limits(scope, info)
        return info

    def known(self, scope: Scope) -> tuple[TokenInfo, Watched] | None:
        """The token of the request `scope` as far as the tokens this process folded tell, without reading the
        store, and the condition on the tokens stream under which that holds; None when only `admit` can tell.

        An append made on it carries the condition (`EventLog.append_watching`): it is written only if no token
        was created or revoked since, on any process, so it stands for a check as of its own transaction. Any other
        answer waits for `tokens.recheck` first, so a revoked token is refused as such before anything else."""
        found = self.tokens.known(_bearer(scope))
        if found is None:
            return None
        info, version = found
        return info, Watched(TOKENS_STREAM, version)

    def within_limits(self, scope: Scope, info: TokenInfo) -> None:
        """`RateLimited` once `info`'s token is over its rate (spending one request otherwise), `RequestTooLarge`
        for a declared body over the limit."""
        self.limiter.take(info.token_id)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            raise RequestTooLarge(declared, self.max_body_bytes)


class ApiGuard:
    """ASGI middleware in front of the API's routes: the gate (authentication, rate limit, body size)."""

    def __init__(self, app: ASGIApp, gate: ApiGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or local_path(scope) in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            info = await self.gate.admit(scope)
        except AgentfoldError as error:
            await error_response(error)(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL_KEY] = info
        await self.app(scope, limited(receive, self.gate.max_body_bytes), send)


def principal(request: Request) -> TokenInfo:
    """The token the guard accepted for this request."""
    info: TokenInfo = request.scope["state"][PRINCIPAL_KEY]
    return info


def local_path(scope: Scope) -> str:
    """The request's path below where the API is mounted."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _bearer(scope: Scope) -> str | None:
    raw = _header(scope, b"authorization")
    if raw is None:
        return None
    scheme, _, credentials = raw.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return credentials.strip()


def _content_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput("the Content-Length header is not a number") from None


def limited(receive: Receive, limit: int) -> Receive:
    """`receive` that raises `RequestTooLarge` as soon as the body read so far is over `limit`."""
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise RequestTooLarge(None, limit)
        return message

    return limited_receive
