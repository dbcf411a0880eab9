"""The inspector over HTTP: every page and its JSON twin on SQLite, PostgreSQL and Redis, the runs index behind the
listing (paging, filters, agreement with the CLI's fold), the live feed's resume, errors, sign-in and the safety
rules (headers, token, CSRF, escaping). The browser tests are in test_web_browser.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import agentfold
from agentfold.cli import main
from agentfold.errors import InvalidInput
from agentfold.events import NO_STREAM, NewEvent
from agentfold.runs_index import STALLED, RunsIndex, RunsQuery
from agentfold.runtime import history as h
from agentfold.runtime.inspect import list_runs
from agentfold.web.settings import ServeSettings
from tests.backends import BACKENDS, Backend
from tests.group_helpers import until
from tests.inspector_runs import XSS, seed
from tests.inspector_server import served

TOKEN = "http-test-token-0123456789"


def backend_named(name: str) -> Backend:
    return next(backend for backend in BACKENDS if backend.name == name)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'web.db'}"
    asyncio.run(seed(url))
    return url


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def seeded_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from backend_named(request.param).filled(tmp_path, seed)


def test_runs_and_run_pages_with_their_json_twins(seeded_store: str) -> None:
    with served(seeded_store) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        page = http.get("/runs")
        assert page.status_code == 200
        assert "doc-1" in page.text and "doc-2" in page.text
        listing = http.get("/runs.json").json()
        assert {run["workflow_id"]: run["status"] for run in listing["runs"]} == {
            "doc-1": "Completed",
            "doc-2": STALLED,  # waiting for approval, and the worker that held it stopped
        }
        assert listing["counts"]["Completed"] == 1 and listing["counts"][STALLED] == 1
        stalled = http.get("/runs.json", params={"status": STALLED}).json()
        assert [run["workflow_id"] for run in stalled["runs"]] == ["doc-2"]

        run = http.get("/runs/doc-1")
        assert run.status_code == 200 and "draft" in run.text
        detail = http.get("/runs/doc-1.json").json()
        assert detail["run"]["status"] == "Completed"
        assert detail["run"]["finished"]["result"] == "first: yes"
        assert [bar["name"] for bar in detail["chart"]["bars"]] == ["draft"]
        assert {point["kind"] for point in detail["chart"]["points"]} >= {"wait", "signal"}
        waiting = http.get("/runs/doc-2.json").json()
        assert waiting["run"]["waiting_for"] == ["approve"]

        event = http.get("/event.json", params={"id": "doc-1", "version": 1}).json()
        assert event["before"]["state"] == "Idle" and event["after"]["state"] == "Processing"
        assert {"path": "state", "kind": "changed", "before": "Idle", "after": "Processing"} in event["changes"]
        diff = http.get("/diff.json", params={"id": "doc-1", "from": 0}).json()
        assert {"path": "state", "kind": "changed", "before": "Idle", "after": "Completed"} in diff["changes"]

        streams = http.get("/streams.json").json()
        assert {"workflow-doc-1", "signals-doc-1", "notes-1"} <= {s["stream_id"] for s in streams["streams"]}
        stream = http.get("/stream.json", params={"id": "notes-1"}).json()
        assert stream["events"][0]["data"] == {"text": XSS}
        assert http.get("/tail", params={"prefix": "notes-"}).status_code == 200


async def index_and_fold(url: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Status per run from the index, from the index rebuilt from scratch, and from the CLI's own fold."""
    async with agentfold.connect(url) as store, RunsIndex(store, url) as index:
        await index.catch_up()
        first = await index.page(RunsQuery(limit=500))
        await index.rebuild()
        again = await index.page(RunsQuery(limit=500))
        folded = await list_runs(store)
    return (
        {row.workflow_id: row.status for row in first.runs},
        {row.workflow_id: row.status for row in again.runs},
        {run.workflow_id: run.status for run in folded},
    )


def test_the_index_agrees_with_the_fold_and_rebuilds_the_same(sqlite_store: str) -> None:
    indexed, rebuilt, folded = asyncio.run(index_and_fold(sqlite_store))
    assert indexed == rebuilt == folded == {"doc-1": "Completed", "doc-2": "AwaitingInput"}


async def follow_with_a_pause(url: str) -> list[str]:
    """Follow the store, pausing after each catch-up, while runs are started; stop in the middle of a pause."""
    async with agentfold.connect(url) as store, RunsIndex(store, url) as index:
        follower = asyncio.create_task(index.run(pause=0.05))
        for n in range(3):
            started = NewEvent(h.WORKFLOW_STARTED, {"workflow": "paused", "input": {"args": [n]}})
            result = await store.append(f"workflow-paused-{n}", [started], expected_version=NO_STREAM)
            await until(lambda position=result.position: index.position >= position)
        index.stop()
        await follower
        page = await index.page(RunsQuery(limit=10))
    return sorted(row.workflow_id for row in page.runs)


def test_the_index_follows_the_store_with_a_pause_between_catch_ups() -> None:
    """Where the index lives in the reader's memory (memory and Redis stores; SQL stores keep it with each append)."""
    assert asyncio.run(follow_with_a_pause("memory://"))[-3:] == ["paused-0", "paused-1", "paused-2"]


async def many_runs(url: str, count: int) -> None:
    async with agentfold.connect(url) as store:
        for index in range(count):
            workflow = "even" if index % 2 == 0 else "odd"
            started = NewEvent(h.WORKFLOW_STARTED, {"workflow": workflow, "input": {"args": [index]}})
            finished = NewEvent(h.WORKFLOW_COMPLETED, {"result": index})
            await store.append(f"workflow-run-{index:03d}", [started, finished], expected_version=NO_STREAM)


def test_keyset_paging_and_filters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'paging.db'}"
    asyncio.run(many_runs(url, 25))
    with served(url) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            params = {"limit": "10", **({"after": cursor} if cursor else {})}
            page = http.get("/runs.json", params=params).json()
            seen += [run["workflow_id"] for run in page["runs"]]
            assert page["counts"]["Completed"] == 25
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"run-{index:03d}" for index in reversed(range(25))]
        odd = http.get("/runs.json", params={"workflow": "odd"}).json()["runs"]
        assert len(odd) == 12 and {run["workflow"] for run in odd} == {"odd"}
        prefixed = http.get("/runs.json", params={"id_prefix": "run-01"}).json()["runs"]
        assert sorted(run["workflow_id"] for run in prefixed) == [f"run-{index:03d}" for index in range(10, 20)]
        middle = seen[12]
        started = http.get(f"/runs/{middle}.json").json()["run"]["started_at"]
        later = http.get("/runs.json", params={"from": started}).json()["runs"]
        assert [run["workflow_id"] for run in later][-1] == middle
        earlier = http.get("/runs.json", params={"until": started}).json()["runs"]
        assert middle not in [run["workflow_id"] for run in earlier]
        assert http.get("/runs.json", params={"after": "not a cursor"}).status_code == 400
        assert http.get("/runs.json", params={"from": "yesterday"}).status_code == 400


def test_live_feed_resumes_after_the_last_event_id(sqlite_store: str) -> None:
    with served(sqlite_store) as inspector, httpx.Client(base_url=inspector.base_url, timeout=10) as http:
        with http.stream("GET", "/live", params={"prefix": "workflow-doc-1", "after": 0}) as feed:
            ids = []
            for line in feed.iter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                if len(ids) == 3:
                    break
        headers = {"Last-Event-ID": str(ids[1])}
        with http.stream("GET", "/live", params={"prefix": "workflow-doc-1", "after": 0}, headers=headers) as feed:
            resumed = next(int(line[4:]) for line in feed.iter_lines() if line.startswith("id: "))
        assert resumed == ids[2]


def test_values_from_the_log_are_escaped(sqlite_store: str) -> None:
    with served(sqlite_store) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        for path in ("/runs/doc-2", "/stream?id=notes-1", "/runs"):
            body = http.get(path).text
            assert "<script>alert" not in body and "<img src=x" not in body
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in http.get("/stream?id=notes-1").text


def test_security_headers_and_sign_in(sqlite_store: str) -> None:
    with served(sqlite_store, token=TOKEN) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        page = http.get("/runs")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert http.get("/runs.json").status_code == 401
        headers = http.get("/login").headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        wrong = http.post("/login", data={"token": "not-the-token-at-all", "next": "/runs"})
        assert wrong.status_code == 401 and "session" not in str(wrong.cookies)
        bearer = http.get("/runs.json", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200
        signed = http.post("/login", data={"token": TOKEN, "next": "//elsewhere.example/"})
        assert signed.status_code == 303 and signed.headers["location"] == "/runs"
        cookie = signed.headers["set-cookie"]
        assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert http.get("/runs").status_code == 200  # the cookie signs the browser in


def test_actions_need_the_flag_a_csrf_token_and_our_origin(sqlite_store: str) -> None:
    form = {"id": "doc-2", "name": "approve", "payload": '"ok"', "actor": "bob"}
    with served(sqlite_store, token=TOKEN) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        http.post("/login", data={"token": TOKEN})
        assert http.post("/actions/signal", data=form).status_code == 403  # actions are off
    with served(sqlite_store, token=TOKEN, allow_actions=True) as inspector:
        from agentfold.web.security import csrf_token

        with httpx.Client(base_url=inspector.base_url) as http:
            http.post("/login", data={"token": TOKEN})
            assert http.post("/actions/signal", data=form).status_code == 403  # no CSRF token
            good = {**form, "csrf_token": csrf_token(inspector.settings)}
            other_site = {"Origin": "http://evil.example"}
            assert http.post("/actions/signal", data=good, headers=other_site).status_code == 403
            assert http.post("/actions/signal", data={**good, "payload": "{not json"}).status_code == 400
            sent = http.post("/actions/signal", data=good, headers={"Origin": inspector.base_url})
            assert sent.status_code == 303 and sent.headers["location"] == "/runs/doc-2"
            refused = http.post(
                "/actions/control", data={"id": "doc-1", "action": "cancel", "csrf_token": good["csrf_token"]}
            )
            assert refused.status_code == 409 and "Completed" in refused.text
            stop = {"id": "doc-2", "action": "terminate", "reason": "no longer needed", "actor": "carol"}
            stopped = http.post("/actions/control", data={**stop, "csrf_token": good["csrf_token"]})
            assert stopped.status_code == 303
            assert http.get("/runs/doc-2.json").json()["run"]["status"] == "Terminated"
            last = http.get("/stream.json", params={"id": "workflow-doc-2"}).json()["events"][-1]
            assert (last["type"], last["data"]["reason"], last["metadata"]["actor"]) == (
                "WorkflowTerminated",
                "no longer needed",
                "carol",
            )
            events = http.get("/stream.json", params={"id": "signals-doc-2"}).json()["events"]
    assert [(event["data"], event["metadata"]["actor"]) for event in events] == [
        ({"name": "approve", "payload": "ok"}, "bob")
    ]


def test_settings_refuse_an_open_bind_without_a_token() -> None:
    with pytest.raises(InvalidInput, match="without a token"):
        ServeSettings(host="0.0.0.0")
    with pytest.raises(InvalidInput, match="needs a token"):
        ServeSettings(allow_actions=True)
    assert ServeSettings(host="0.0.0.0", token=TOKEN).host == "0.0.0.0"
    result = CliRunner().invoke(main, ["serve", "--store", "memory://", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "without a token" in result.output


def test_a_store_error_shows_a_clear_page(sqlite_store: str) -> None:
    with served(sqlite_store) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        path = sqlite_store.removeprefix("sqlite:///")
        with sqlite3.connect(path) as connection:
            connection.execute("DROP TABLE events")
        page = http.get("/runs/doc-1")
        assert page.status_code == 503
        assert "The store is not answering" in page.text and "Traceback" not in page.text
        assert http.get("/runs/doc-1.json").json()["title"] == "The store is not answering"
        missing = http.get("/runs/no-such-run")
        assert missing.status_code in (404, 503)


async def crafted_run(url: str) -> None:
    """A run with a retried step, two steps in parallel, and a step left in doubt, written event by event."""

    def step(kind: str, seq: int, attempt: int, **data: object) -> NewEvent:
        return NewEvent(kind, {"seq": seq, "name": f"step-{seq}", "attempt": attempt, **data})

    error = {"type": "TimeoutError", "message": "slow"}
    events = [
        NewEvent(h.WORKFLOW_STARTED, {"workflow": "crafted", "input": {"args": []}}),
        step(h.STEP_STARTED, 1, 1),
        step(h.STEP_FAILED, 1, 1, error=error, final=False),
        step(h.STEP_STARTED, 1, 2),
        step(h.STEP_COMPLETED, 1, 2, result=1),
        step(h.STEP_STARTED, 2, 1),
        step(h.STEP_STARTED, 3, 1),
        step(h.STEP_COMPLETED, 2, 1, result=2),
        step(h.STEP_COMPLETED, 3, 1, result=3),
        step(h.STEP_STARTED, 4, 1),
    ]
    async with agentfold.connect(url) as store:
        for event in events:
            await store.append("workflow-crafted", [event])


def test_timeline_bars_mark_retries_parallel_steps_and_doubt(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crafted.db'}"
    asyncio.run(crafted_run(url))
    with served(url) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        bars = http.get("/runs/crafted.json").json()["chart"]["bars"]
        page = http.get("/runs/crafted").text
    outcomes = [(bar["name"], bar["attempt"], bar["outcome"], bar["marks"]) for bar in bars]
    assert outcomes == [
        ("step-1", 1, "attempt-failed", []),
        ("step-1", 2, "completed", ["retry"]),
        ("step-2", 1, "completed", []),
        ("step-3", 1, "completed", []),
        ("step-4", 1, "in-doubt", ["in doubt"]),
    ]
    second, third = bars[2], bars[3]
    assert third["start"] < second["start"] + second["width"]  # started before the other ended: they overlap
    assert 'data-outcome="in-doubt"' in page and 'data-mark="retry"' in page


async def two_indexes_at_once(url: str) -> list[tuple[int, int, str]]:
    async with agentfold.connect(url) as store, RunsIndex(store, url) as first, RunsIndex(store, url) as second:
        await asyncio.gather(first.catch_up(), second.catch_up(), first.catch_up())
        rows = await first.runs(["crafted"])
    return [(row.retries, row.version, row.status) for row in rows.values()]


def test_pages_applied_twice_change_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    asyncio.run(crafted_run(url))
    assert asyncio.run(two_indexes_at_once(url)) == [(1, 10, "Processing")]
