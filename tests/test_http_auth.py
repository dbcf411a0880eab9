"""Who may do what over HTTP: a matrix of tokens and requests, on a real server, against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import agentfold
from agentfold import NewEvent
from agentfold.store import EventStore
from agentfold.tokens import TOKENS_STREAM, TokenRegistry, now_us
from agentfold.web.api import ApiSettings
from tests.api_server import SseReader, api_only_app, bearer, running, token_for


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'auth.db'}"


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[EventStore]:
    async with await agentfold.connect(db_url) as opened:
        yield opened


@pytest.fixture
async def base(store: EventStore) -> AsyncIterator[str]:
    async with running(api_only_app(store, ApiSettings(heartbeat_seconds=0.2))) as url:
        yield f"{url}/api/v1"


def append_body(event_type: str = "Noted") -> dict[str, object]:
    return {"events": [{"id": str(uuid.uuid4()), "type": event_type}]}


async def test_requests_without_a_valid_token_are_refused(store: EventStore, base: str) -> None:
    token = await token_for(store, "a", write=["agent-a-*"])
    token_id = token.split("_")[1]
    wrong_secret = f"aft_{token_id}_{'0' * 64}"
    headers_cases = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer {token.upper()}"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Bearer {wrong_secret}"},
        {"Authorization": f"Bearer aft_{'1' * 16}_{'0' * 64}"},
    ]
    async with httpx.AsyncClient(base_url=base) as http:
        for headers in headers_cases:
            for method, path in (("POST", "/streams/agent-a-1"), ("GET", "/streams/agent-a-1"), ("GET", "/events")):
                answer = await http.request(method, path, headers=headers, json=append_body())
                assert answer.status_code == 401, (headers, method, path, answer.text)
                assert answer.json()["type"] == "urn:agentfold:error:InvalidToken"
                assert answer.headers["www-authenticate"].startswith("Bearer")
        assert (await http.get("/openapi.json")).status_code == 200  # the document needs no token
    assert await store.stream_version("agent-a-1") == 0


async def test_scopes_hold_against_prefix_tricks_and_look_alikes(store: EventStore, base: str) -> None:
    exact = await token_for(store, "exact", write=["agent-a"])
    starred = await token_for(store, "starred", write=["agent-a-*"], read=["shared-*"])
    everything = await token_for(store, "root", write=["*"])
    await store.append("agent-b", [NewEvent("Private")])
    await store.append("agent-ab", [NewEvent("Private")])
    await store.append("shared-1", [NewEvent("Public")])
    refused_writes = [
        (exact, "agent-ab"),
        (exact, "agent-a-1"),
        (exact, "Agent-a"),
        (exact, "agent-a "),
        (starred, "agent-ab"),
        (starred, "agent-b"),
        (starred, "agent-%62"),  # agent-b, percent-encoded
        (starred, "agent%2Db"),
        (starred, "\u0430gent-a-1"),  # Cyrillic a
        (starred, "agent\u2010a-1"),  # Unicode hyphen
        (starred, "\uff41gent-a-1"),  # fullwidth a
        (starred, "shared-1"),  # readable, not writable
        (everything, TOKENS_STREAM),
        (everything, "$agentfold-anything"),
    ]
    async with httpx.AsyncClient(base_url=base) as http:
        for token, stream in refused_writes:
            answer = await http.post(f"/streams/{stream}", json=append_body(), headers=bearer(token))
            assert answer.status_code == 403, (stream, answer.text)
            assert answer.json()["type"] == "urn:agentfold:error:AccessDenied"
        for token, stream in [
            (exact, "agent-ab"),
            (starred, "agent-ab"),
            (starred, "agent-b"),
            (everything, TOKENS_STREAM),
        ]:
            answer = await http.get(f"/streams/{stream}", headers=bearer(token))
            assert answer.status_code == 403, (stream, answer.text)

        # Dot segments are part of a stream id, never a path: the write lands in the literal stream, in scope.
        dotted = await http.post("/streams/agent-a-1%2F..%2F..%2Fagent-b", json=append_body(), headers=bearer(starred))
        assert dotted.status_code == 200 and dotted.json()["stream_id"] == "agent-a-1/../../agent-b"
        raw = await http.post("/streams/agent-a-1/../agent-b", json=append_body(), headers=bearer(starred))
        assert raw.status_code in (200, 403), raw.text
        if raw.status_code == 200:
            assert raw.json()["stream_id"] == "agent-a-1/../agent-b"
        assert await store.stream_version("agent-b") == 1

        assert (await http.post("/streams/agent-a", json=append_body(), headers=bearer(exact))).status_code == 200
        assert (await http.post("/streams/agent-a-9", json=append_body(), headers=bearer(starred))).status_code == 200
        assert (await http.get("/streams/shared-1", headers=bearer(starred))).status_code == 200

        log = (await http.get("/events", headers=bearer(starred))).json()["events"]
        assert {event["stream_id"] for event in log} == {"shared-1", "agent-a-1/../../agent-b", "agent-a-9"} | (
            {"agent-a-1/../agent-b"} if raw.status_code == 200 else set()
        )
        root_log = (await http.get("/events", headers=bearer(everything))).json()["events"]
        assert all(not event["stream_id"].startswith("$agentfold-") for event in root_log)
        assert (await http.get("/events", params={"prefix": "$agentfold-"}, headers=bearer(everything))).json()[
            "events"
        ] == []


async def test_expired_and_revoked_tokens_are_refused_on_every_process(db_url: str, store: EventStore) -> None:
    expired = await token_for(store, "late", write=["agent-*"], expires_at_us=now_us() - 1)
    live = await token_for(store, "live", write=["agent-*"])
    async with await agentfold.connect(db_url) as other_store:  # a second serve process: its own connection
        async with running(api_only_app(store)) as first, running(api_only_app(other_store)) as second:
            async with httpx.AsyncClient() as http:
                answer = await http.get(f"{first}/api/v1/events", headers=bearer(expired))
                assert answer.status_code == 401 and answer.json()["type"] == "urn:agentfold:error:TokenExpired"
                for server in (first, second):
                    ok = await http.post(f"{server}/api/v1/streams/agent-1", json=append_body(), headers=bearer(live))
                    assert ok.status_code == 200
                await TokenRegistry(other_store).revoke("live")
                for server in (first, second):
                    refused = await http.post(
                        f"{server}/api/v1/streams/agent-1", json=append_body(), headers=bearer(live)
                    )
                    assert refused.status_code == 401 and refused.json()["type"] == "urn:agentfold:error:TokenRevoked"
    assert await store.stream_version("agent-1") == 2


async def test_an_append_checks_its_token_as_of_its_own_write(db_url: str, store: EventStore) -> None:
    """A server that already knows a token does not read the tokens before an append: the append is written only
    if no token was created or revoked since (on any process). A token revoked elsewhere is refused as such before
    any other answer (a bad body, a stream out of scope, an exact retry); a token created elsewhere
    moves the tokens stream, and an append by a token still valid is then written once."""
    live = await token_for(store, "live", write=["agent-*"])
    async with await agentfold.connect(db_url) as other_store:  # another serve process: its own connection
        async with running(api_only_app(store)) as server, httpx.AsyncClient(base_url=f"{server}/api/v1") as http:
            body = append_body()
            assert (await http.post("/streams/agent-1", json=body, headers=bearer(live))).status_code == 200
            await TokenRegistry(other_store).create("newcomer", write=["agent-*"])
            again = await http.post("/streams/agent-1", json=append_body(), headers=bearer(live))
            assert again.status_code == 200 and again.json()["version"] == 2
            retried = await http.post("/streams/agent-1", json=body, headers=bearer(live))
            assert retried.status_code == 200 and retried.json()["version"] == 1

            await TokenRegistry(other_store).revoke("live")
            requests = [
                ("/streams/agent-1", b'{"events": [{"type": 5}]}'),
                ("/streams/elsewhere-1", json.dumps(append_body()).encode()),
                ("/streams/agent-1", json.dumps(body).encode()),
                ("/streams/agent-1", json.dumps(append_body()).encode()),
            ]
            for path, content in requests:
                answer = await http.post(path, content=content, headers=bearer(live))
                assert answer.status_code == 401, (path, answer.text)
                assert answer.json()["type"] == "urn:agentfold:error:TokenRevoked"
    assert await store.stream_version("agent-1") == 2
    assert await store.stream_version("elsewhere-1") == 0


async def test_a_subscription_closes_when_its_token_is_revoked(store: EventStore, base: str) -> None:
    token = await token_for(store, "watcher", read=["order-*"])
    await store.append("order-1", [NewEvent("Placed")])
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        async with http.stream("GET", "/subscribe", headers=bearer(token)) as response:
            assert response.status_code == 200
            reader = SseReader(response)
            name, event_id, data = await reader.next_event()
            assert json.loads(data)["stream_id"] == "order-1" and event_id == str(json.loads(data)["position"])
            await TokenRegistry(store).revoke("watcher")
            name, _, data = await asyncio.wait_for(reader.next_event(), 10)
            assert name == "error" and json.loads(data)["type"] == "urn:agentfold:error:TokenRevoked"
            with pytest.raises(EOFError):
                await asyncio.wait_for(reader.next_event(), 10)


async def test_workflow_operations_need_their_permission(store: EventStore, base: str) -> None:
    reader = await token_for(store, "reader", write=["workflow-*", "signals-*"])
    async with httpx.AsyncClient(base_url=base) as http:
        start = await http.post("/workflows", json={"workflow": "w", "workflow_id": "w-1"}, headers=bearer(reader))
        assert start.status_code == 403
        signal = await http.post("/workflows/w-1/signals", json={"name": "go"}, headers=bearer(reader))
        assert signal.status_code == 403
    starter = await token_for(store, "starter", write=["agent-*"], workflows=["start", "signal"])
    async with httpx.AsyncClient(base_url=base) as http:
        start = await http.post("/workflows", json={"workflow": "w", "workflow_id": "w-1"}, headers=bearer(starter))
        assert start.status_code == 403 and start.json()["stream_id"] == "workflow-w-1"
        state = await http.get("/workflows/w-1", headers=bearer(starter))
        assert state.status_code == 403


async def test_rate_and_subscription_limits(store: EventStore) -> None:
    token = await token_for(store, "busy", read=["order-*"])
    other = await token_for(store, "calm", read=["order-*"])
    settings = ApiSettings(rate_per_second=0.5, burst=3, max_subscriptions_per_token=1)
    async with running(api_only_app(store, settings)) as url, httpx.AsyncClient(base_url=f"{url}/api/v1") as http:
        answers = [await http.get("/events", headers=bearer(token)) for _ in range(4)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
        assert int(answers[-1].headers["retry-after"]) >= 1
        assert answers[-1].json()["type"] == "urn:agentfold:error:RateLimited"
        assert (await http.get("/events", headers=bearer(other))).status_code == 200  # buckets are per token
        async with http.stream("GET", "/subscribe", headers=bearer(other)) as first:
            assert first.status_code == 200
            second = await http.get("/subscribe", headers=bearer(other))
            assert second.status_code == 429
