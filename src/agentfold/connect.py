"""Open a store from a URL. Backends are looked up by scheme and imported only when used."""

from __future__ import annotations

import importlib
from collections.abc import Generator
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

from agentfold.errors import InvalidURL
from agentfold.options import redact
from agentfold.store import EventStore

# scheme -> "module:factory". The factory is `async def open(url: str, *, create: bool, **options) -> EventStore`.
BACKENDS: Final[dict[str, str]] = {
    "memory": "agentfold.backends.memory:open_store",
    "sqlite": "agentfold.backends.sqlite:open_store",
    "postgresql": "agentfold.backends.postgres:open_store",
    "postgres": "agentfold.backends.postgres:open_store",
    "redis": "agentfold.backends.redis:open_store",
}


async def _open(url: str, create: bool, **options: Any) -> EventStore:
    if type(url) is not str:
        raise InvalidURL(f"a store URL must be a str, got {type(url).__name__}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    target = BACKENDS.get(scheme)
    if target is None:
        supported = ", ".join(f"{name}://" for name in BACKENDS)
        raise InvalidURL(f"unknown store URL {redact(url)!r}: supported schemes are {supported}")
    module_name, factory_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        extra = "postgres" if scheme.startswith("postgres") else scheme
        raise InvalidURL(
            f"the {scheme}:// backend needs an extra: pip install 'agentfold[{extra}]' ({error})"
        ) from None
    factory = getattr(module, factory_name)
    store: EventStore = await factory(url, create=create, **options)
    return store


class _Connecting:
    """What `connect` returns: await it for a store, or use it as `async with` to close the store afterwards."""

    def __init__(self, url: str, create: bool, options: dict[str, Any]) -> None:
        self._url = url
        self._create = create
        self._options = options
        self._store: EventStore | None = None

    def __await__(self) -> Generator[Any, None, EventStore]:
        return _open(self._url, self._create, **self._options).__await__()

    async def __aenter__(self) -> EventStore:
        self._store = await _open(self._url, self._create, **self._options)
        return self._store

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._store is not None:
            await self._store.close()


def connect(url: str, *, create: bool = True, **options: Any) -> _Connecting:
    """Open the store at `url`: ``memory://``, ``sqlite:///path``, ``postgresql://…``, ``redis://…``.

    Keyword options override URL query options (e.g. ``max_event_size=…``, ``synchronous="NORMAL"``).
    By default a missing store is created (a SQLite file, a PostgreSQL schema and its tables) and an older one is
    upgraded. With ``create=False`` nothing is created or upgraded: a missing SQLite file, a PostgreSQL schema
    without a store, a Redis prefix no event was ever appended under, or a store that needs an upgrade raise
    `StoreNotFound` naming what was looked for (``memory://`` is new and empty either way).
    """
    return _Connecting(url, create, options)


def scrub(text: str, url: str) -> str:
    """`text` with the URL's password removed wherever it appears, redacted or not."""
    cleaned = text.replace(url, redact(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        cleaned = cleaned.replace(password, "***")
    return redact(cleaned)


__all__ = ["BACKENDS", "connect", "redact", "scrub"]
