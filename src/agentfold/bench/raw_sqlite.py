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

from agentfold.bench import event_payload

COMMIT_SECONDS: Final = 2.0
ROWS_PER_TRANSACTION: Final = 100
READ_EVENTS: Final = 10_000
READ_ROUNDS: Final = 5

_TABLE: Final = (
    "CREATE TABLE events (position INTEGER PRIMARY KEY AUTOINCREMENT, stream_id TEXT NOT NULL, "
    "version INTEGER NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL)"
)
_INSERT: Final = "INSERT INTO events (stream_id, version, type, data) VALUES (?, ?, ?, ?)"


async def measure_raw(url: str) -> dict[str, float]:
    """Measure the bare driver: single-row commits/s, rows/s in 100-row transactions (both WAL,
    `synchronous=FULL`), and fetching + decoding + folding 10k ~200-byte events of one stream (ms, best of 5).

    The fold is the one `agentfold bench` times through `project()` (count events by type, sum `amount`), over
    events of the same shape, so the ratio between the two is agentfold's own overhead."""
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
            "raw_read_decode_fold_10k_ms": _read_decode_fold_ms(os.path.join(workdir, "read.db")),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _open(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute(_TABLE)
    return connection


def _payload(index: int) -> str:
    """The events `agentfold bench` writes and folds, as stored text: decoding cost depends on the shape (keys,
    nesting, numbers), not only on the size, so the baseline decodes the same thing."""
    return msgspec.json.encode(event_payload(index)).decode()


def _rows_per_second(path: str, rows_per_commit: int) -> float:
    connection = _open(path)
    try:
        written = 0
        started = time.perf_counter()
        deadline = started + COMMIT_SECONDS
        while time.perf_counter() < deadline:
            rows = [
                ("stream-1", written + offset + 1, "Ticked", _payload(written + offset))
                for offset in range(rows_per_commit)
            ]
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(_INSERT, rows)
            connection.execute("COMMIT")
            written += rows_per_commit
        return written / (time.perf_counter() - started)
    finally:
        connection.close()


def _read_decode_fold_ms(path: str) -> float:
    connection = _open(path)
    try:
        connection.execute("CREATE UNIQUE INDEX events_stream ON events (stream_id, version)")
        types = [f"Type{index % 5}" for index in range(READ_EVENTS)]
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            _INSERT, [("stream-1", index + 1, types[index], _payload(index)) for index in range(READ_EVENTS)]
        )
        connection.execute(
            "INSERT INTO events (stream_id, version, type, data) VALUES (?, 1, 'Other', '{}')", (str(uuid.uuid4()),)
        )
        connection.execute("COMMIT")
        decode: Callable[[str], dict[str, Any]] = msgspec.json.Decoder(dict[str, Any]).decode
        best = float("inf")
        for _ in range(READ_ROUNDS):
            started = time.perf_counter()
            rows = connection.execute(
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
            best = min(best, elapsed)
        return best * 1000
    finally:
        connection.close()
