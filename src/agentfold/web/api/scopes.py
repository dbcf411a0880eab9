"""What a token's scope lets a request touch, decided before the store is asked anything."""

from __future__ import annotations

from agentfold.errors import AccessDenied
from agentfold.tokens import TokenInfo


def require_write(info: TokenInfo, stream_id: str) -> None:
    """`AccessDenied` unless the token may append to `stream_id`."""
    if not info.scope.can_write(stream_id):
        raise AccessDenied(f"token {info.token_id} ({info.name}) may not write stream {stream_id!r}", stream_id)


def require_read(info: TokenInfo, stream_id: str) -> None:
    """`AccessDenied` unless the token may read `stream_id`."""
    if not info.scope.can_read(stream_id):
        raise AccessDenied(f"token {info.token_id} ({info.name}) may not read stream {stream_id!r}", stream_id)


def require_operation(info: TokenInfo, operation: str) -> None:
    """`AccessDenied` unless the token's ``--workflows`` allows `operation`."""
    if operation not in info.scope.workflows:
        raise AccessDenied(f"token {info.token_id} ({info.name}) may not {operation} workflows")


def store_prefix(info: TokenInfo, requested: str | None) -> tuple[bool, str | None]:
    """(whether any readable stream can start with `requested`, the narrowest prefix to ask the store for).

    The store filters by one prefix; events from other streams it returns are dropped by `can_read` afterwards.
    """
    narrowed: set[str] = set()
    for prefix in info.scope.read_prefixes():
        if requested is None or requested.startswith(prefix):
            narrowed.add(requested or prefix)
        elif prefix.startswith(requested):
            narrowed.add(prefix)
    if not narrowed:
        return False, requested
    if len(narrowed) == 1:
        only = narrowed.pop()
        return True, only or None
    return True, requested
