"""A backend as a third party would write one, for `tests/test_backend.py` to run the conformance suite on through
``AGENTFOLD_TEST_BACKENDS``: the memory backend with each stream page's records newest first, which the `Backend`
protocol allows (the store puts them in version order). It uses only public names."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from agentfold import EventStore, RecordedEvent
from agentfold.backends.memory import MemoryBackend
from agentfold.connect import BACKENDS
from agentfold.errors import InvalidURL
from agentfold.options import BLOB_OPTIONS, MAX_EVENT_SIZE, parse_options, redact, split_url


class ReversedPages(MemoryBackend):
    """The memory backend, each page of `read_stream_records` reversed."""

    scheme = "reversed"

    async def read_stream_records(
        self, stream_id: str, after_version: int, limit: int | None
    ) -> AsyncGenerator[Sequence[RecordedEvent], None]:
        async for page in super().read_stream_records(stream_id, after_version, limit):
            yield list(reversed(page))


async def open_store(url: str, *, create: bool = True, **options: Any) -> EventStore:
    """What `agentfold.connect("reversed://...")` calls: a fresh store. Like memory://, it takes `max_event_size`,
    `blob_threshold` and `max_blob_size` and refuses any other option (`agentfold.options` declares and checks
    them)."""
    parts = split_url(url, ("reversed",))
    if parts.netloc or parts.path not in ("", "/") or parts.fragment:
        raise InvalidURL(f"{redact(url)!r}: a reversed:// URL takes options only")
    values = parse_options(url, (MAX_EVENT_SIZE, *BLOB_OPTIONS), options)
    return EventStore(ReversedPages(values["max_event_size"], values["blob_threshold"], values["max_blob_size"]))


BACKENDS["reversed"] = f"{__name__}:open_store"


def conformance_url(tmp_path: Path) -> str:
    return "reversed://"
