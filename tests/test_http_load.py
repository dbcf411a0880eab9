"""A bounded load on loopback: 32 concurrent HTTP writers against `agentfold serve` for a few seconds, some of them
dropping connections before the answer and retrying; afterwards no acknowledged event is lost or written twice."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import Counter
from pathlib import Path

import msgspec

import agentfold
from agentfold.bench.http_bench import Connection, serve_process
from agentfold.cli.serve import tcp_listener
from agentfold.tokens import TokenRegistry

WRITERS = 32
SECONDS = 3.0
SHARED_WRITERS = 8  # the last 8 writers share one stream (expected_version any); the others own one each


async def test_32_writers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'load.db'}"
    sent: set[str] = set()
    acknowledged: dict[str, list[str]] = {}
    retries = 0
    async with await agentfold.connect(url) as store:
        token = (await TokenRegistry(store).create("loader", write=["load-*"])).token
        limits = ("--rate-limit", "1e9", "--burst", "1000000000")
        async with serve_process(url, *limits) as base:
            deadline = time.monotonic() + SECONDS

            async def writer(number: int) -> None:
                nonlocal retries
                shared = number >= WRITERS - SHARED_WRITERS
                stream = "load-shared" if shared else f"load-{number}"
                path = f"/api/v1/streams/{stream}"
                connection = await Connection.open(base)
                version = 0
                count = 0
                try:
                    while time.monotonic() < deadline:
                        ids = [str(uuid.uuid4()) for _ in range(1 + count % 3)]
                        sent.update(ids)
                        expected: str | int = "any" if shared else version
                        body = msgspec.json.encode(
                            {"expected_version": expected, "events": [{"id": i, "type": "Tick"} for i in ids]}
                        )
                        if count % 10 == 9:  # the answer is lost: send, hang up, reconnect, send the same again
                            connection.writer.write(
                                f"POST {path} HTTP/1.1\r\nHost: {connection.host}\r\nAuthorization: Bearer {token}\r\n"
                                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                                + body
                            )
                            await connection.writer.drain()
                            await connection.close()
                            connection = await Connection.open(base)
                            retries += 1
                        status, answer = await connection.request("POST", path, token, body)
                        assert status == 200, answer
                        result = msgspec.json.decode(answer)
                        if count % 7 == 3:  # an ordinary retry: the same answer, nothing written
                            status, again = await connection.request("POST", path, token, body)
                            assert status == 200 and msgspec.json.decode(again) == result
                        if not shared:
                            assert result["version"] == version + len(ids)
                            version = result["version"]
                        acknowledged.setdefault(stream, []).extend(ids)
                        count += 1
                finally:
                    await connection.close()

            await asyncio.gather(*(writer(number) for number in range(WRITERS)))
        stored: dict[str, list[str]] = {}
        async for event in store.read_all(stream_prefix="load-"):
            stored.setdefault(event.stream_id, []).append(str(event.id))
    all_stored = [event_id for ids in stored.values() for event_id in ids]
    assert [item for item, times in Counter(all_stored).items() if times > 1] == []
    for stream, ids in acknowledged.items():
        assert set(ids) <= set(stored[stream]), f"acknowledged events of {stream} are missing"
        if stream != "load-shared":
            assert stored[stream] == ids  # a writer's own stream holds exactly its acknowledged events, in order
    assert set(all_stored) <= sent
    assert retries > 0 and sum(len(ids) for ids in acknowledged.values()) > WRITERS


async def test_connections_over_the_limit_are_refused_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'limit.db'}"
    async with await agentfold.connect(url) as store:
        token = (await TokenRegistry(store).create("watcher", read=["x-*"])).token
    async with serve_process(url, "--max-connections", "2") as base:
        held = [await Connection.open(base) for _ in range(2)]
        for connection in held:  # two subscriptions that stay open
            connection.writer.write(
                f"GET /api/v1/subscribe HTTP/1.1\r\nHost: {connection.host}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            assert (await connection.reader.readline()).startswith(b"HTTP/1.1 200")
        extra = await Connection.open(base)
        status, _ = await extra.request("GET", "/api/v1/events", token)
        assert status == 503
        for connection in [*held, extra]:
            await connection.close()


async def test_served_connections_send_at_once_without_nagle() -> None:
    """`agentfold serve`'s listener makes asyncio turn Nagle's algorithm off on every connection it accepts, so a
    keep-alive client never waits for a delayed acknowledgement between a response's headers and its body."""
    seen: list[int] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    listener = tcp_listener("127.0.0.1", 0)
    server = await asyncio.start_server(accepted, sock=listener)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        for _ in range(500):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
    assert seen and seen[0] != 0
