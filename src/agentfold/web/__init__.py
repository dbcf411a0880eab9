"""`agentfold serve`: a web inspector over any store, server-rendered, every page with a JSON twin.

Pages read through the store's public interface and the inspection logic the command line uses
(`agentfold.runtime.inspect`); nothing here runs workflow code. Actions (sending a signal, ...) are off unless the
server was started with `--allow-actions` and a token, and each one is an event naming who did it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    """`create_app` and `ServeSettings` on first use: the `agentfold` command imports this package's settings
    without the web extra (starlette, uvicorn, jinja2) installed."""
    if name == "create_app":
        from agentfold.web.app import create_app

        return create_app
    if name == "ServeSettings":
        from agentfold.web.settings import ServeSettings

        return ServeSettings
    raise AttributeError(f"module 'agentfold.web' has no attribute {name!r}")
