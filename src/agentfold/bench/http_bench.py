"""HTTP appends through `agentfold serve` beside in-process appends to the same kind of store, in one run.

The server runs in a process of its own, as in production; the writers speak plain HTTP/1.1 over one keep-alive
connection each, so the figure is the server's and not a client library's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import msgspec

from agentfold.bench import Figures, event_payload, measure_appends, scratch_store
from agentfold.errors import StoreUnavailable
from agentfold.events import new_event_id
from agentfold.tokens import TokenRegistry

WRITERS: Final = 32
START_TIMEOUT_SECONDS: Final = 60.0
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class ServedProcess:
    """A running ``agentfold serve`` child process: where it listens and its process id."""

    base_url: str
    pid: int


@contextlib.asynccontextmanager
async def serve_process(store_url: str, *options: str, cwd: str | None = None) -> AsyncIterator[str]:
    """Run ``agentfold serve`` over `store_url` on a free loopback port in a child process (in the folder `cwd`);
    yield its base URL."""
    async with served(store_url, *options, cwd=cwd) as server:
        yield server.base_url


@contextlib.asynccontextmanager
async def served(store_url: str, *options: str, cwd: str | None = None) -> AsyncIterator[ServedProcess]:
    """`serve_process`, yielding the child's process id as well."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentfold",
        "serve",
        "--store",
        store_url,
        "--port",
        "0",
        *options,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=cwd,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_SECONDS)
        if not line:
            raise StoreUnavailable(f"agentfold serve exited with {await process.wait()} before listening")
        base = line.decode().split("http://", 1)[1].split("/", 1)[0]
        yield ServedProcess(f"http://{base}", process.pid)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


def cpu_seconds(pid: int) -> float | None:
    """The CPU time (user and system, every thread) the process `pid` has used so far; None where ``/proc`` does not
    tell (other systems than Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads its whole response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        host = base_url.removeprefix("http://").rstrip("/")
        name, port = host.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(name, int(port))
        return cls(reader, writer, host)

    async def request(self, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        try:
            response_head = await self.reader.readuntil(b"\r\n\r\n")  # the status line and headers at once
        except asyncio.IncompleteReadError as error:
            raise ConnectionError("the server closed the connection before answering") from error
        status_line, *header_lines = response_head[:-4].split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        for line in header_lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def measure_http_appends(base_url: str, token: str, writers: int, seconds: float) -> float:
    """One-event appends over HTTP from `writers` connections for about `seconds`; acknowledged events per second."""
    count, elapsed = await http_appends(base_url, token, writers, seconds)
    return count / elapsed


async def http_appends(base_url: str, token: str, writers: int, seconds: float) -> tuple[int, float]:
    """One-event appends over HTTP from `writers` connections for about `seconds`: (acknowledged events, seconds
    taken).

    Each event carries its own id, as docs/http.md asks of a client that may retry, made as the store makes the ids
    of the in-process writers it is compared with (time-ordered, `agentfold.events.new_event_id`): random ids
    (version 4) land all over the index of event ids, and SQLite then writes about a page of it per append, which
    would measure the ids and not the HTTP path (docs/measurements.md)."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def writer(task: int) -> None:
        nonlocal count
        connection = await Connection.open(base_url)
        try:
            index = 0
            while time.perf_counter() < deadline:
                event = {"id": str(new_event_id()), "type": "OrderUpdated", "data": event_payload(index)}
                body = _encoder.encode({"events": [event]})
                status, answer = await connection.request("POST", f"/api/v1/streams/bench-{task}", token, body)
                if status != 200:
                    raise StoreUnavailable(f"an HTTP append answered {status}: {answer[:200]!r}")
                index += 1
                count += 1
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(writer(task) for task in range(writers)))
    return count, time.perf_counter() - started


async def measure_http(backend: str, base_url: str | None, seconds: float) -> Figures:
    """HTTP appends per second from 32 writers, the same load in process on a fresh store, and their ratio; and the
    server's CPU time per HTTP append (every thread of the serve process; Linux only), which other work on the
    machine disturbs less than the rates."""
    figures: Figures = {}
    async with scratch_store(backend, base_url) as (url, store):
        token = (await TokenRegistry(store).create("bench", write=["bench-*"])).token
        limits = ("--rate-limit", "1e9", "--burst", "1000000000", "--max-connections", "10000")
        async with served(url, *limits) as server:
            cpu_before = cpu_seconds(server.pid)
            count, elapsed = await http_appends(server.base_url, token, WRITERS, seconds)
            cpu_after = cpu_seconds(server.pid)
        figures["http_append_32_writers_events_per_s"] = count / elapsed
        if cpu_before is not None and cpu_after is not None and count:
            figures["http_server_cpu_us_per_append"] = (cpu_after - cpu_before) * 1e6 / count
    async with scratch_store(backend, base_url) as (_, store):
        figures["append_32_writers_events_per_s"] = await measure_appends(store, WRITERS, seconds)
    if figures["append_32_writers_events_per_s"]:
        figures["http_vs_in_process_append_32_writers"] = (
            figures["http_append_32_writers_events_per_s"] / figures["append_32_writers_events_per_s"]
        )
    return figures
