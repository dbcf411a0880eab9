"""Integrations of agent frameworks with agentfold; each module needs its framework's extra installed.

Each is imported on its own (`agentfold.integrations.langgraph`, `agentfold.integrations.openai_agents`, ...), so a
framework is needed only by the code that uses it; a missing one raises `ImportError` naming the extra to install.
"""

from __future__ import annotations

import importlib


def require(module: str, extra: str) -> None:
    """Import `module` or raise `ImportError` naming the agentfold extra that installs it."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this integration needs {module!r}, which is not installed: pip install 'agentfold[{extra}]'"
        ) from error
