"""How `agentfold serve` was started: where it listens, the token that guards it, whether actions are allowed."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Final

from agentfold.connect import redact
from agentfold.errors import InvalidInput

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """The server's settings. A non-loopback `host` without a `token` is refused: the log would be open to anyone.

    With a token, every page asks for it (a ``Authorization: Bearer`` header, or a sign-in form that sets a
    cookie); actions also need `allow_actions`.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = field(default=None, repr=False)
    allow_actions: bool = False
    store_url: str = field(default="memory://", repr=False)
    """The store's URL: the runs index opens its own read connections to the same database."""
    page_size: int = DEFAULT_PAGE_SIZE
    session_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    """Signs the sign-in cookie and the CSRF tokens; new on every start, so a restart signs everyone out."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise InvalidInput(f"host must be a non-empty str, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InvalidInput(f"port must be an int from 0 to 65535, got {self.port!r}")
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 16):
            raise InvalidInput("the token must be a str of at least 16 characters")
        if not is_loopback(self.host) and self.token is None:
            raise InvalidInput(
                f"refusing to listen on {self.host}, which other machines can reach, without a token: "
                "pass --token (or AGENTFOLD_SERVE_TOKEN), or bind 127.0.0.1"
            )
        if self.allow_actions and self.token is None:
            raise InvalidInput("--allow-actions needs a token (--token or AGENTFOLD_SERVE_TOKEN): actions change runs")
        if (
            isinstance(self.page_size, bool)
            or not isinstance(self.page_size, int)
            or not 1 <= self.page_size <= MAX_PAGE_SIZE
        ):
            raise InvalidInput(f"page_size must be an int from 1 to {MAX_PAGE_SIZE}, got {self.page_size!r}")

    @property
    def store_label(self) -> str:
        """The store URL with its password removed, shown in the page header."""
        return redact(self.store_url)

    @property
    def actions_enabled(self) -> bool:
        """Actions are offered only with both `--allow-actions` and a token."""
        return self.allow_actions and self.token is not None
