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
    "agentfold.cli.reindex",
    "agentfold.cli.relay",
    "agentfold.cli.serve",
    "agentfold.cli.soak",
    "agentfold.cli.token",
    "agentfold.cli.worker",
)
# Commands that need an extra: without it, the command is still listed and says what to install.
EXTRAS: dict[str, tuple[str, str, frozenset[str]]] = {
    "agentfold.cli.serve": (
        "serve",
        "web",
        frozenset({"starlette", "uvicorn", "jinja2", "sse_starlette", "multipart"}),
    ),
}


def _needs_extra(command: str, extra: str, missing: str) -> None:
    @main.command(
        name=command,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
        help=f"(needs the {extra} extra: pip install 'agentfold[{extra}]')",
    )
    def needs_extra() -> None:
        raise click.ClickException(
            f"agentfold {command} needs the {extra} extra ({missing} is not installed): "
            f"pip install 'agentfold[{extra}]'"
        )


for _module in COMMANDS:
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as missing:
        command, extra, packages = EXTRAS.get(_module, ("", "", frozenset()))
        if (missing.name or "").split(".")[0] not in packages:
            raise
        _needs_extra(command, extra, missing.name or extra)
