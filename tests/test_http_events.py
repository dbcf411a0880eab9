"""The HTTP API's event endpoints on a real server: appends with expected versions and retries, reads, errors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

import agentfold
from agentfold.store import EventStore
from agentfold.web.api import ApiSettings
from tests.api_server import api_only_app, bearer, running, token_for

PROBLEM = "application/problem+json"


@pytest.fixture
async def sqlite_store(tmp_path) -> AsyncIterator[EventStore]:  # type: ignore[no-untyped-def]
    async with await agentfold.connect(f"sqlite:///{tmp_path / 'api.db'}") as store:
        yield store


@pytest.fixture
async def client(sqlite_store: EventStore) -> AsyncIterator[httpx.AsyncClient]:
    token = await token_for(sqlite_store, "researcher", write=["agent-researcher-*"], read=["order-*"])
    async with running(api_only_app(sqlite_store, ApiSettings(max_body_bytes=4096))) as base:
        async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=bearer(token)) as http:
            yield http


def event(event_type: str, **data: object) -> dict[str, object]:
    return {"id": str(uuid.uuid4()), "type": event_type, "data": data}


async def test_append_with_expected_versions_and_retry(client: httpx.AsyncClient, sqlite_store: EventStore) -> None:
    first = event("Noted", n=1)
    body = {"events": [first], "expected_version": "no_stream"}
    created = await client.post("/streams/agent-researcher-1", json=body)
    assert created.status_code == 200, created.text
    assert created.json() == {"stream_id": "agent-researcher-1", "version": 1, "position": created.json()["position"]}
    retried = await client.post("/streams/agent-researcher-1", json=body)
    assert retried.status_code == 200 and retried.json() == created.json()
    assert await sqlite_store.stream_version("agent-researcher-1") == 1

    stale = await client.post("/streams/agent-researcher-1", json={"events": [event("Noted")], "expected_version": 0})
    assert stale.status_code == 409 and stale.headers["content-type"] == PROBLEM
    assert stale.json()["type"] == "urn:agentfold:error:WrongExpectedVersion"
    assert stale.json()["actual_version"] == 1

    second = await client.post("/streams/agent-researcher-1", json={"events": [event("Noted")], "expected_version": 1})
    assert second.json()["version"] == 2
    exists = await client.post(
        "/streams/agent-researcher-2", json={"events": [event("Noted")], "expected_version": "stream_exists"}
    )
    assert exists.status_code == 409 and exists.json()["actual_version"] == 0

    reused = await client.post("/streams/agent-researcher-3", json={"events": [first]})
    assert reused.status_code == 409 and reused.json()["type"] == "urn:agentfold:error:DuplicateEventId"
    assert await sqlite_store.stream_version("agent-researcher-3") == 0


async def test_agent_id_comes_from_the_token(client: httpx.AsyncClient, sqlite_store: EventStore) -> None:
    forged = {"id": str(uuid.uuid4()), "type": "Noted", "metadata": {"agent_id": "admin", "trace": "t-1"}}
    assert (await client.post("/streams/agent-researcher-1", json={"events": [forged]})).status_code == 200
    stored = [e async for e in sqlite_store.read_stream("agent-researcher-1")]
    assert stored[0].metadata == {"agent_id": "researcher", "trace": "t-1"}


async def test_reads_page_and_filter(client: httpx.AsyncClient, sqlite_store: EventStore) -> None:
    types = ["A", "B", "A", "B", "A"]
    body = {"events": [event(t, i=i) for i, t in enumerate(types)]}
    assert (await client.post("/streams/agent-researcher-1", json=body)).status_code == 200
    await sqlite_store.append("order-1", [agentfold.NewEvent("Placed", {"n": 1})])
    await sqlite_store.append("secret-1", [agentfold.NewEvent("Hidden")])

    page = (await client.get("/streams/agent-researcher-1", params={"limit": 2})).json()
    assert [e["data"]["i"] for e in page["events"]] == [0, 1] and page["next_after_version"] == 2
    rest = (await client.get("/streams/agent-researcher-1", params={"after_version": 2, "type": "A"})).json()
    assert [e["data"]["i"] for e in rest["events"]] == [2, 4] and rest["version"] == 5

    log = (await client.get("/events")).json()
    assert [e["stream_id"] for e in log["events"]] == ["agent-researcher-1"] * 5 + ["order-1"]
    assert log["next_after_position"] == await sqlite_store.head_position()
    paged = (await client.get("/events", params={"limit": 3, "type": "A"})).json()
    assert [e["data"]["i"] for e in paged["events"]] == [0, 2, 4]
    orders = (await client.get("/events", params={"prefix": "order-"})).json()
    assert [e["stream_id"] for e in orders["events"]] == ["order-1"]
    assert (await client.get("/events", params={"prefix": "secret-"})).json()["events"] == []


async def test_errors_are_problems_naming_the_field(client: httpx.AsyncClient, sqlite_store: EventStore) -> None:
    missing = await client.get("/streams/order-404")
    assert missing.status_code == 404 and missing.json()["type"] == "urn:agentfold:error:StreamNotFound"
    cases = [
        ({"events": [{"type": 3}]}, "events[0].type"),
        ({"events": [{"data": {}}]}, "events[0].type"),
        ({"events": [{"type": ""}]}, "events[0].type"),
        ({"events": [{"type": "A", "id": "not-a-uuid"}]}, "events[0].id"),
        ({"events": [{"type": "A"}], "expected_version": "latest"}, "expected_version"),
        ({"events": [{"type": "A"}], "expected_version": -1}, "expected_version"),
        ({"events": []}, "events"),
        ({"events": [{"type": "A", "data": {"x": [1, _nested(120)]}}]}, "events[0].data.x[1]" + ".y" * 98),
        ({"evnts": []}, "evnts"),
    ]
    for body, field in cases:
        answer = await client.post("/streams/agent-researcher-1", content=_json(body))
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"] == PROBLEM
        assert answer.json()["field"] == field, (body, answer.json())
    bad_limit = await client.get("/streams/agent-researcher-1", params={"limit": "ten"})
    assert bad_limit.status_code == 422 and bad_limit.json()["field"] == "limit"
    not_json = await client.post("/streams/agent-researcher-1", content=b"{")
    assert not_json.status_code == 422 and not_json.json()["field"] == "body"
    assert await sqlite_store.stream_version("agent-researcher-1") == 0
    unknown = await client.get("/nowhere")
    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"y": value}
    return value


def _json(body: object) -> bytes:
    import json

    return json.dumps(body, allow_nan=True).encode()


async def test_large_bodies_are_refused_before_parsing(client: httpx.AsyncClient, sqlite_store: EventStore) -> None:
    big = b'{"events": [{"type": "A", "data": {"x": "' + b"x" * 5000 + b'"}}]}'
    declared = await client.post("/streams/agent-researcher-1", content=big)
    assert declared.status_code == 413 and declared.json()["type"] == "urn:agentfold:error:RequestTooLarge"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000  # no Content-Length: counted as it arrives

    chunked = await client.post("/streams/agent-researcher-1", content=chunks())
    assert chunked.status_code == 413
    assert await sqlite_store.stream_version("agent-researcher-1") == 0


async def test_an_event_with_a_field_above_the_event_limit_is_appended_as_a_blob(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with await agentfold.connect(f"sqlite:///{tmp_path / 'blobs.db'}") as store:
        token = await token_for(store, "writer", write=["agent-writer-*"], read=["agent-writer-*"])
        prompt = "p" * (2 * store.max_event_size)  # over the event limit: kept as a blob
        async with running(api_only_app(store)) as base:
            async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=bearer(token)) as http:
                body = {"events": [event("ModelCalled", prompt=prompt, tokens=12)]}
                appended = await http.post("/streams/agent-writer-1", json=body)
                assert appended.status_code == 200, appended.text
                read = await http.get("/streams/agent-writer-1")
                assert read.json()["events"][0]["data"] == {"prompt": prompt, "tokens": 12}
        assert (await store.blob_usage()).blobs == 1


async def test_the_served_app_hands_api_requests_straight_to_the_api(sqlite_store: EventStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from agentfold.web.api import api_mount
    from agentfold.web.app import DirectToMounts, create_app
    from agentfold.web.settings import ServeSettings

    token = await token_for(sqlite_store, "researcher", write=["agent-researcher-*"], read=["agent-researcher-*"])
    api = api_mount(sqlite_store)
    inspector = create_app(sqlite_store, ServeSettings(store_url=f"sqlite:///{tmp_path / 'api.db'}"), routes=[api])
    async with running(DirectToMounts(inspector, [api])) as base:
        async with httpx.AsyncClient(base_url=base, headers=bearer(token)) as http:
            appended = await http.post("/api/v1/streams/agent-researcher-1", json={"events": [event("Noted")]})
            assert appended.status_code == 200, appended.text
            assert appended.headers["x-content-type-options"] == "nosniff"  # the security headers still apply
            assert "content-security-policy" in appended.headers
            read = await http.get("/api/v1/streams/agent-researcher-1")
            assert [item["type"] for item in read.json()["events"]] == ["Noted"]
            unknown = await http.get("/api/v1/no-such-endpoint")
            assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM  # the API's own 404
            assert (await http.get("/static/inspector.css")).status_code == 200  # the rest goes to the inspector
            bare = await http.get("/api/v1")  # the bare prefix: the inspector's mount redirects it, as it always did
            assert bare.status_code == 307 and bare.headers["location"].endswith("/api/v1/")


async def test_appends_served_directly_and_through_the_router_share_checks_and_answers(
    sqlite_store: EventStore,
) -> None:
    """An append without a query string is served by `DirectAppend`; one with a query string by the Starlette app.
    Both spend the same rate-limit bucket and answer alike."""
    token = await token_for(sqlite_store, "writer", write=["agent-writer-*"], read=["agent-writer-*"])
    settings = ApiSettings(rate_per_second=0.01, burst=4)
    async with running(api_only_app(sqlite_store, settings)) as base:
        async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=bearer(token)) as http:
            direct = await http.post("/streams/agent-writer-1", json={"events": [event("Noted")]})
            assert direct.status_code == 200 and direct.headers["content-type"] == "application/json"
            assert direct.json() == {"stream_id": "agent-writer-1", "version": 1, "position": direct.json()["position"]}
            routed = await http.post("/streams/agent-writer-1?dry_run=1", json={"events": [event("Noted")]})
            assert routed.status_code == 422 and routed.json()["field"] == "dry_run"
            denied = await http.post("/streams/agent-other-1", json={"events": [event("Noted")]})
            assert denied.status_code == 403 and denied.json()["stream_id"] == "agent-other-1"
            conflict = await http.post(
                "/streams/agent-writer-1", json={"events": [event("Noted")], "expected_version": "no_stream"}
            )
            assert conflict.status_code == 409 and conflict.json()["actual_version"] == 1
            limited = await http.post("/streams/agent-writer-1", json={"events": [event("Noted")]})
            assert limited.status_code == 429 and limited.headers["content-type"] == PROBLEM
    assert await sqlite_store.stream_version("agent-writer-1") == 1
