"""`agentfold serve`: the web inspector over a store (see `agentfold.web`) and the HTTP API for agents at `/api/v1`
(see `agentfold.web.api`), in one process."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable
from typing import Final

import click

from agentfold.cli import main
from agentfold.cli.common import INTERRUPTED_EXIT_CODE, StoreError, open_store, store_option
from agentfold.connect import redact, scrub
from agentfold.errors import AgentfoldError, InvalidInput
from agentfold.web.api.settings import ApiSettings
from agentfold.web.settings import DEFAULT_HOST, DEFAULT_PORT, ServeSettings

TOKEN_ENV: Final = "AGENTFOLD_SERVE_TOKEN"
YOUNG_COLLECTION_THRESHOLD: Final = 7000
"""Container allocations (net of frees) between passes of the garbage collector over its youngest generation, in
the serve process (Python's default: 700); see `settle_collector`."""


async def serve(
    settings: ServeSettings, api_settings: ApiSettings | None = None, max_connections: int | None = None
) -> None:
    """Open the store and serve until interrupted; the store is closed on the way out."""
    import uvicorn

    from agentfold.web.api import api_mount
    from agentfold.web.app import DirectToMounts, create_app

    store = await open_store(settings.store_url)
    try:
        api = api_mount(store, api_settings)
        app = DirectToMounts(create_app(store, settings, routes=[api]), [api])
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # uvicorn answers 503 once the connections open, the new one included, reach its limit
            limit_concurrency=None if max_connections is None else max_connections + 1,
        )
        server = uvicorn.Server(config)
        listener = tcp_listener(settings.host.strip("[]"), settings.port)
        port = listener.getsockname()[1]  # the port chosen, when --port 0 asked for any free one
        shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
        settle_collector()
        click.echo(f"agentfold serve: http://{shown_host}:{port}/ over {redact(settings.store_url)}")
        if settings.actions_enabled:
            click.echo("actions are on: signed-in users can signal runs")
        await server.serve(sockets=[listener])
    finally:
        await store.close()


def settle_collector() -> None:
    """Leave what the server built before serving out of the cyclic garbage collector's passes, and let the youngest
    generation grow tenfold before a pass.

    Each request allocates and frees a few dozen containers; with the default threshold (700) the collector passed
    over the young objects about every fifty requests, promoting the requests then in flight, and so often went
    through every object of the process (the imported modules, the app, its templates: about 47,000) to free none:
    about 3% of the event loop's time, in pauses of up to tens of milliseconds during which no request moves
    (docs/measurements.md). Reference counting frees a request's objects as before; only cycles wait longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (the web extra installs it, except on Windows), else asyncio's own.

    A small API request spends most of the server's time in the event loop and its transports, which uvloop runs in
    C (docs/measurements.md)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose accepted connections send at once (TCP_NODELAY).

    asyncio turns Nagle's algorithm off only for sockets that name their protocol (``IPPROTO_TCP``); accepted
    sockets inherit the listener's, and `socket.create_server` names none. Without it a keep-alive client waits for
    its delayed acknowledgement (tens of milliseconds) whenever a response leaves in two writes (headers, body).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(socket.SOMAXCONN)
    except OSError:
        listener.close()
        raise
    return listener


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
@click.option(
    "--runtime",
    "runtime_target",
    metavar="MODULE:ATTR",
    default=None,
    help="A Runtime whose workflows POST /api/v1/workflows starts with typed inputs (others start by name).",
)
@click.option(
    "--rate-limit", default=ApiSettings.rate_per_second, show_default=True, help="API requests per second per token."
)
@click.option("--burst", default=ApiSettings.burst, show_default=True, help="API requests a token may make at once.")
@click.option(
    "--max-connections",
    default=1000,
    show_default=True,
    help="Open connections at most; more are answered 503 at once.",
)
@click.option(
    "--max-subscriptions",
    default=ApiSettings.max_subscriptions_per_token,
    show_default=True,
    help="Open event subscriptions per API token at most.",
)
def serve_command(
    store_url: str,
    host: str,
    port: int,
    token: str | None,
    allow_actions: bool,
    runtime_target: str | None,
    rate_limit: float,
    burst: int,
    max_connections: int,
    max_subscriptions: int,
) -> None:
    """Serve a web inspector of the runs and streams in the store, and the HTTP API for agents at /api/v1."""
    try:
        settings = ServeSettings(host=host, port=port, token=token, allow_actions=allow_actions, store_url=store_url)
    except InvalidInput as error:
        raise click.UsageError(str(error)) from None
    if rate_limit <= 0 or burst < 1 or max_connections < 1 or max_subscriptions < 1:
        raise click.UsageError("--rate-limit must be > 0; --burst, --max-connections and --max-subscriptions >= 1")
    runtime = None
    if runtime_target is not None:
        from agentfold.cli.worker import load_runtime

        runtime = load_runtime(runtime_target)
    api_settings = ApiSettings(
        rate_per_second=rate_limit, burst=burst, max_subscriptions_per_token=max_subscriptions, runtime=runtime
    )
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(settings, api_settings, max_connections))
    except KeyboardInterrupt:
        raise click.exceptions.Exit(INTERRUPTED_EXIT_CODE) from None
    except StoreError:
        raise
    except (AgentfoldError, OSError) as error:
        raise StoreError(scrub(str(error), store_url)) from None
