"""`agentfold serve`: the web inspector over a store (see `agentfold.web`)."""

from __future__ import annotations

import asyncio
from typing import Final

import click

from agentfold.cli import main
from agentfold.cli.common import INTERRUPTED_EXIT_CODE, StoreError, open_store, scrub, store_option
from agentfold.connect import redact
from agentfold.errors import AgentfoldError, InvalidInput
from agentfold.web.settings import DEFAULT_HOST, DEFAULT_PORT, ServeSettings

TOKEN_ENV: Final = "AGENTFOLD_SERVE_TOKEN"


async def serve(settings: ServeSettings) -> None:
    """Open the store and serve until interrupted; the store is closed on the way out."""
    import uvicorn

    from agentfold.web.app import create_app

    store = await open_store(settings.store_url)
    try:
        app = create_app(store, settings)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level="warning", access_log=False, lifespan="on"
        )
        server = uvicorn.Server(config)
        shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
        click.echo(f"agentfold serve: http://{shown_host}:{settings.port}/ over {redact(settings.store_url)}")
        if settings.actions_enabled:
            click.echo("actions are on: signed-in users can signal runs")
        await server.serve()
    finally:
        await store.close()


@main.command("serve")
@store_option
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port to listen on (0: any free).")
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    default=None,
    help="Ask for this token (16+ characters) before showing anything; needed off loopback and for actions.",
)
@click.option("--allow-actions", is_flag=True, help="Let signed-in users signal runs (needs --token).")
def serve_command(store_url: str, host: str, port: int, token: str | None, allow_actions: bool) -> None:
    """Serve a web inspector of the runs and streams in the store."""
    try:
        settings = ServeSettings(host=host, port=port, token=token, allow_actions=allow_actions, store_url=store_url)
    except InvalidInput as error:
        raise click.UsageError(str(error)) from None
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        raise click.exceptions.Exit(INTERRUPTED_EXIT_CODE) from None
    except StoreError:
        raise
    except (AgentfoldError, OSError) as error:
        raise StoreError(scrub(str(error), store_url)) from None
