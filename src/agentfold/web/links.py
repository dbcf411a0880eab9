"""Links between the inspector's pages: how a run id travels in a URL path."""

from __future__ import annotations

from urllib.parse import quote


def quote_path(value: str) -> str:
    """A run id as a URL path: ``/`` kept (ids of child runs hold it), everything else that needs it escaped."""
    return quote(value, safe="/:@-._~")
