"""Subscriptions over server-sent events on a real server: history then live, resume by Last-Event-ID, heartbeats,
and the drop-and-resume rule for a client that stops reading."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import agentfold
from agentfold import NewEvent
from agentfold.store import EventStore
from agentfold.web.api import ApiSettings
from tests.api_server import SseReader, api_only_app, bearer, running, token_for


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    async with await agentfold.connect(f"sqlite:///{tmp_path / 'sse.db'}?synchronous=NORMAL") as opened:
        yield opened


async def test_history_then_live_then_resume(store: EventStore) -> None:
    token = await token_for(store, "watcher", read=["order-*"])
    for n in range(3):
        await store.append(f"order-{n}", [NewEvent("Placed", {"n": n})])
        await store.append(f"private-{n}", [NewEvent("Hidden")])
    settings = ApiSettings(heartbeat_seconds=0.2)
    async with running(api_only_app(store, settings)) as url, httpx.AsyncClient(base_url=f"{url}/api/v1") as http:
        seen: list[tuple[str | None, dict[str, object]]] = []
        async with http.stream("GET", "/subscribe", params={"type": "Placed"}, headers=bearer(token)) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = SseReader(response)
            for _ in range(3):
                _, event_id, data = await asyncio.wait_for(reader.next_event(), 10)
                seen.append((event_id, json.loads(data)))
            await store.append("order-9", [NewEvent("Placed", {"n": 9})])
            await store.append("private-9", [NewEvent("Placed", {"n": -1})])
            _, event_id, data = await asyncio.wait_for(reader.next_event(), 10)
            seen.append((event_id, json.loads(data)))
            await asyncio.sleep(0.5)
            await store.append("order-10", [NewEvent("Placed", {"n": 10})])
            await asyncio.wait_for(reader.next_event(), 10)
            assert "heartbeat" in reader.comments
        assert [event["data"] for _, event in seen] == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 9}]
        assert all(event_id == str(event["position"]) for event_id, event in seen)

        resume_from = seen[1][0]
        assert resume_from is not None
        headers = {**bearer(token), "Last-Event-ID": resume_from}
        async with http.stream("GET", "/subscribe", params={"after_position": 0}, headers=headers) as response:
            reader = SseReader(response)
            resumed = [json.loads((await asyncio.wait_for(reader.next_event(), 10))[2])["data"] for _ in range(3)]
        assert resumed == [{"n": 2}, {"n": 9}, {"n": 10}]


async def _raw_subscribe(
    url: str, token: str, last_event_id: str | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host_port = url.removeprefix("http://")
    host, port = host_port.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # a small fixed window: the server stalls soon
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    writer.write(
        f"GET /api/v1/subscribe HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {token}\r\n{extra}"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


def _complete_ids(raw: bytes) -> list[int]:
    body = raw.split(b"\r\n\r\n", 1)[1].decode()
    ids: list[int] = []
    for block in body.replace("\r\n", "\n").split("\n\n")[:-1]:  # the last block may be cut short
        for line in block.split("\n"):
            if line.startswith("id:"):
                ids.append(int(line[3:].strip()))
    return ids


TOTAL = 50


async def test_a_client_that_stops_reading_is_dropped_and_resumes_without_loss(store: EventStore) -> None:
    token = await token_for(store, "slow", read=["big-*"])
    payload = "x" * 200_000
    for start in range(0, TOTAL, 10):  # about 10 MB: more than the sockets between server and client hold
        await store.append("big-1", [NewEvent("Chunk", {"n": n, "pad": payload}) for n in range(start, start + 10)])
    settings = ApiSettings(send_timeout_seconds=0.5, subscription_page_size=10)
    async with running(api_only_app(store, settings)) as url:
        reader, writer = await _raw_subscribe(url, token, None)
        await asyncio.sleep(3)  # not reading: the server's writes stall, and it drops this client
        first = await asyncio.wait_for(reader.read(), 30)  # the server closed the connection
        writer.close()
        got = _complete_ids(first)
        assert 0 < len(got) < TOTAL
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=30) as http:
            headers = {**bearer(token), "Last-Event-ID": str(got[-1])}
            async with http.stream("GET", "/subscribe", headers=headers) as response:
                resumed = SseReader(response)
                rest = [int((await resumed.next_event())[1] or 0) for _ in range(TOTAL - len(got))]
    positions = [event.position async for event in store.read_stream("big-1")]
    assert got + rest == positions
