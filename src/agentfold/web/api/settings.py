"""The HTTP API's limits and options, with the defaults `agentfold serve` uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from agentfold.runtime.runtime import Runtime

DEFAULT_RESULT_WAIT_SECONDS: Final = 30.0
"""How long a result long-poll waits when the request names no timeout (never more than the server's maximum)."""


@dataclass(frozen=True)
class ApiSettings:
    """Limits per token and per request. Each is a protection of the server, documented in docs/http.md."""

    rate_per_second: float = 200.0
    """Requests each token may make per second, on average (a token bucket per token and per process)."""
    burst: int = 400
    """Requests a token may make at once after being idle (the bucket's size)."""
    max_body_bytes: int | None = None
    """The largest request body accepted; None: the store's event size limit, plus its blob size limit where the
    store keeps blobs (docs/payloads.md). Larger bodies get 413 unread."""
    heartbeat_seconds: float = 15.0
    """A subscription sends a comment line this often when idle, and checks its token again at least this often."""
    send_timeout_seconds: float = 30.0
    """A subscription whose client has not taken an event for this long is ended; the client resumes with
    Last-Event-ID (the drop-and-resume rule)."""
    subscription_page_size: int = 100
    """Events a subscription holds in memory at most, read ahead of its client."""
    max_subscriptions_per_token: int = 8
    """Open subscriptions one token may hold on one process; more get 429."""
    max_result_wait_seconds: float = 60.0
    """The longest a workflow result long-poll waits."""
    max_page_limit: int = 1000
    """The largest `limit` a read accepts."""
    runtime: Runtime | None = None
    """Workflows whose inputs `POST /workflows` checks and encodes as their code declares; a name it does not register
    starts a run by name (JSON inputs), run by whichever worker serves that name."""
