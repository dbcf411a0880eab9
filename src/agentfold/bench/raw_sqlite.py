"""What bare SQLite does on this machine, to put agentfold's SQLite figures in context.

Uses only `sqlite3` and `msgspec` on a fresh temporary file (in the directory the store URL points at, so both sit
on the same disk); none of agentfold's code runs here. Figures drift between runs, so compare within one run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import unquote

import msgspec

from agentfold.bench import event_payload_text

COMMIT_SECONDS: Final = 2.0
ROWS_PER_TRANSACTION: Final = 100
READ_EVENTS: Final = 10_000

_TABLE: Final = (
    "CREATE TABLE events (position INTEGER PRIMARY KEY AUTOINCREMENT, stream_id TEXT NOT NULL, "
    "version INTEGER NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL)"
)
_INSERT: Final = "INSERT INTO events (stream_id, version, type, data) VALUES (?, ?, ?, ?)"


async def measure_raw(url: str) -> dict[str, float]:
    """Measure the bare driver: single-row commits/s and rows/s in 100-row transactions (both WAL,
    `synchronous=FULL`). The bare fold that `fold_10k_ms` is compared with is `BareFold`, which the projection
    benchmark times in turns with its own fold."""
    return await asyncio.to_thread(_measure, _directory_of(url))


def _directory_of(url: str) -> str | None:
    """The directory of a `sqlite:///path` URL, when it exists; otherwise the system's temporary directory."""
    if not url.lower().startswith("sqlite:///"):
        return None
    path = unquote(url[len("sqlite:///") :].split("?", 1)[0])
    directory = os.path.dirname(os.path.abspath(path)) if path else ""
    return directory if directory and os.path.isdir(directory) else None


def _measure(directory: str | None) -> dict[str, float]:
    workdir = tempfile.mkdtemp(prefix="agentfold-raw-sqlite-", dir=directory)
    try:
        return {
            "raw_commits_per_s_1row": _rows_per_second(os.path.join(workdir, "one.db"), rows_per_commit=1),
            "raw_rows_per_s_100row_tx": _rows_per_second(
                os.path.join(workdir, "hundred.db"), rows_per_commit=ROWS_PER_TRANSACTION
            ),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _open(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute(_TABLE)
    return connection


def _rows_per_second(path: str, rows_per_commit: int) -> float:
    connection = _open(path)
    try:
        written = 0
        started = time.perf_counter()
        deadline = started + COMMIT_SECONDS
        while time.perf_counter() < deadline:
            rows = [
                ("stream-1", written + offset + 1, "Ticked", event_payload_text(written + offset))
                for offset in range(rows_per_commit)
            ]
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(_INSERT, rows)
            connection.execute("COMMIT")
            written += rows_per_commit
        return written / (time.perf_counter() - started)
    finally:
        connection.close()


class BareFold:
    """The bare-driver fold `fold_10k_ms` is compared with: fetch 10,000 ~200-byte events of one stream with
    `sqlite3`, decode each with msgspec and count them by type (summing `amount`), as `CountByType` does.

    The benchmark times one `run()` after each of its own folds, so both see the machine in the same state."""

    def __init__(self, url: str) -> None:
        self._workdir = tempfile.mkdtemp(prefix="agentfold-raw-sqlite-", dir=_directory_of(url))
        self._connection = _open(os.path.join(self._workdir, "read.db"))
        self._connection.execute("CREATE UNIQUE INDEX events_stream ON events (stream_id, version)")
        types = [f"Type{index % 5}" for index in range(READ_EVENTS)]
        self._connection.execute("BEGIN IMMEDIATE")
        self._connection.executemany(
            _INSERT, [("stream-1", index + 1, types[index], event_payload_text(index)) for index in range(READ_EVENTS)]
        )
        self._connection.execute(
            "INSERT INTO events (stream_id, version, type, data) VALUES (?, 1, 'Other', '{}')", (str(uuid.uuid4()),)
        )
        self._connection.execute("COMMIT")
        self._decode: Callable[[str], dict[str, Any]] = msgspec.json.Decoder(dict[str, Any]).decode

    async def run(self) -> float:
        """One fold, in ms (on the event loop's thread, as a caller of `sqlite3` would do it)."""
        decode = self._decode
        started = time.perf_counter()
        rows = self._connection.execute(
            "SELECT version, type, data FROM events WHERE stream_id = ? AND version > 0 ORDER BY version",
            ("stream-1",),
        ).fetchall()
        counts: dict[str, int] = {}
        amount = 0.0
        for _version, event_type, data in rows:
            counts[event_type] = counts.get(event_type, 0) + 1
            amount += decode(data).get("amount", 0.0)
        elapsed = time.perf_counter() - started
        if sum(counts.values()) != READ_EVENTS:
            raise RuntimeError(f"read {sum(counts.values())} events, wrote {READ_EVENTS}")
        return elapsed * 1000

    async def close(self) -> None:
        self._connection.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
