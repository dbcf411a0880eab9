"""The `agentfold` command. Each sub-command lives in its own module and registers itself on `main`."""

from __future__ import annotations

import importlib
import warnings

import click

DEFAULT_STORE = "sqlite:///agentfold.db"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentfold")
def main() -> None:
    """Durable, event-sourced state for multi-agent systems."""
    warnings.formatwarning = format_warning


def format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning as the command prints it: one line saying what is wrong, without Python's file and source line."""
    return f"warning: {message}\n"


# Sub-command modules, imported for their registration on `main`.
COMMANDS = (
    "agentfold.cli.bench",
    "agentfold.cli.control",
    "agentfold.cli.demo",
    "agentfold.cli.inspect",
    "agentfold.cli.relay",
    "agentfold.cli.serve",
    "agentfold.cli.soak",
    "agentfold.cli.token",
    "agentfold.cli.worker",
)
for _module in COMMANDS:
    importlib.import_module(_module)
