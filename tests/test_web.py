"""The inspector over HTTP: every page and its JSON twin, the runs index behind the listing, errors, sign-in and
the safety rules (headers, token, CSRF, escaping). The browser tests are in test_web_browser.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.inspector_runs import seed
from tests.inspector_server import served


@pytest.fixture
def sqlite_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'web.db'}"
    asyncio.run(seed(url))
    return url


def test_runs_page_and_its_json_twin(sqlite_store: str) -> None:
    with served(sqlite_store) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        page = http.get("/runs")
        assert page.status_code == 200
        assert "doc-1" in page.text and "doc-2" in page.text
        listing = http.get("/runs.json").json()
        assert {run["workflow_id"]: run["status"] for run in listing["runs"]} == {
            "doc-1": "Completed",
            "doc-2": "Stalled",
        }
        assert listing["counts"]["Completed"] == 1
        waiting = http.get("/runs.json", params={"status": "Stalled"}).json()
        assert [run["workflow_id"] for run in waiting["runs"]] == ["doc-2"]
