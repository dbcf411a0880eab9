"""The inspector in a real headless Chromium (Debian's, driven by Playwright), end to end.

The demo's order pipeline (real worker processes, a real SIGKILL, a reconciled charge) runs into a store; the
browser opens the runs page, filters it, opens the reconciled payment run and checks its timeline, clicks an event
to see the state before and after it, approves a waiting run through the form and watches it complete without a
reload, follows a tail, checks that an XSS payload from the log shows as text, and looks at pages at 1280x800 and
at a phone's 390x844. Screenshots are kept under the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

import agentfold
from agentfold.demo.pipeline import CHARGE_STEP
from agentfold.events import NewEvent
from tests.backends import BACKENDS, Backend, require_service
from tests.inspector_runs import XSS, approval_runtime, seed
from tests.inspector_server import served, worker_thread

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TOKEN = "browser-test-token-0123456789"
DEMO_TIMEOUT_SECONDS = 180
LIVE_TIMEOUT_MS = 30_000
PAGE_TIMEOUT_MS = 30_000
"""Generous waits: the whole suite runs two workers on two shared cores, and a page may wait its turn."""

expect.set_options(timeout=PAGE_TIMEOUT_MS)


def off_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end in a thread of its own: Playwright's sync API keeps an event loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def backend_named(name: str) -> Backend:
    return next(backend for backend in BACKENDS if backend.name == name)


def run_demo(store_url: str) -> None:
    command = [sys.executable, "-m", "agentfold.cli", "demo", "--orders", "2", "--store", store_url]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=DEMO_TIMEOUT_SECONDS)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]


async def reconciled_payment_run(store_url: str) -> str:
    async with agentfold.connect(store_url) as store:
        async for event in store.read_all(types=["StepCompleted"], stream_prefix="workflow-order-"):
            if event.data.get("name") == CHARGE_STEP and event.data.get("reconciled"):
                return event.stream_id[len("workflow-") :]
    raise AssertionError("the demo recorded no reconciled charge")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def demo_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A store holding the demo's runs, the approval runs and the XSS payload."""
    backend = backend_named(request.param)
    require_service(backend)
    url = backend.make_url(tmp_path_factory.mktemp(backend.name))
    run_demo(url)
    off_loop(seed(url, waiting=("doc-2", "doc-wait")))
    yield url
    backend.cleanup(url)


def new_page(browser: Browser, viewport: dict[str, int], dialogs: list[str]) -> Page:
    """A page whose JavaScript dialogs (an ``alert`` an XSS payload would open) are recorded in `dialogs`."""
    page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    return page


def sign_in(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base_url}/runs")


def fits_width(page: Page) -> bool:
    width: Any = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    return bool(width)


def test_inspector_end_to_end(browser: Browser, demo_store: str, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    payment_run = off_loop(reconciled_payment_run(demo_store))
    with served(demo_store, token=TOKEN, allow_actions=True) as inspector:
        base = inspector.base_url
        dialogs: list[str] = []
        page = new_page(browser, DESKTOP, dialogs)
        page.goto(f"{base}/runs")
        expect(page).to_have_url(f"{base}/login?next=/runs")  # the token guards every page
        sign_in(page, base)

        # The runs page: every run, counts per state, filters.
        expect(page.locator("table.runs tbody tr")).to_have_count(2 * 4 + 3)
        expect(page.locator(".count[data-status=Completed]")).to_have_text("9")
        page.screenshot(path=str(shots / "runs-desktop.png"), full_page=True)
        page.select_option("select[name=workflow]", "payment")
        page.click(".filters button[type=submit]")
        expect(page.locator("table.runs tbody tr")).to_have_count(2)
        for cell in page.locator("table.runs tbody tr td:nth-child(2)").all_inner_texts():
            assert cell == "payment"
        page.fill("input[name=id_prefix]", payment_run)
        page.click(".filters button[type=submit]")
        expect(page.locator("table.runs tbody tr")).to_have_count(1)

        # The reconciled payment run: its timeline has one bar per attempt, the reconciled charge marked.
        page.click(f"table.runs a:text-is('{payment_run}')")
        expect(page.locator("h1")).to_contain_text(payment_run)
        bars = page.locator("rect.bar")
        assert bars.count() >= 3
        reconciled = page.locator("rect.bar[data-marks*=reconciled]")
        expect(reconciled).to_have_count(1)
        assert reconciled.get_attribute("data-outcome") == "reconciled"
        expect(page.locator(".mark[data-mark=reconciled]")).to_have_count(1)
        assert page.locator("rect.bar[data-outcome=completed]").count() >= 2
        expect(page.locator("tr.reconciled")).not_to_have_count(0)
        expect(page.locator(".tree a", has_text=payment_run.replace("-payment", "-fulfilment"))).to_have_count(1)
        page.screenshot(path=str(shots / "run-desktop.png"), full_page=True)

        # Click an event: the state before and after it, and what changed.
        page.locator("tr.reconciled a.event-link").first.click()
        expect(page.locator("h1")).to_contain_text("StepCompleted")
        expect(page.locator("table.changes tbody tr")).not_to_have_count(0)
        expect(page.locator("table.changes td.path", has_text="commands.")).not_to_have_count(0)
        before = json.loads(page.locator("#state-before").inner_text())
        after = json.loads(page.locator("#state-after").inner_text())
        assert before != after
        page.screenshot(path=str(shots / "event-desktop.png"), full_page=True)

        # Two versions diffed.
        page.goto(f"{base}/runs/{payment_run}")
        page.fill(".diff-form input[name=from]", "1")
        page.click(".diff-form button")
        expect(page.locator("h1")).to_contain_text("version 1 →")
        expect(page.locator("table.changes tbody tr")).not_to_have_count(0)

        # Approve a waiting run through the form; it completes live, without a reload.
        runtime = approval_runtime()
        with worker_thread(demo_store, runtime):
            page.goto(f"{base}/runs/doc-wait")
            expect(page.locator("#run-status")).to_have_text("AwaitingInput")
            page.fill(".signal-form textarea[name=payload]", '"approved"')
            page.fill(".signal-form input[name=actor]", "alice")
            page.click(".signal-form button")
            expect(page).to_have_url(f"{base}/runs/doc-wait")
            page.evaluate("window.stayedOnPage = true")
            expect(page.locator("#run-status")).to_have_text("Completed", timeout=LIVE_TIMEOUT_MS)
            assert page.evaluate("window.stayedOnPage") is True
            expect(page.locator("#run-outcome")).to_contain_text("doc-wait: approved")
        signals = page.request.get(f"{base}/stream.json?id=signals-doc-wait").json()
        assert signals["events"][0]["metadata"]["actor"] == "alice"

        # The runs page's counts follow new runs live, without a reload.
        page.goto(f"{base}/runs")
        completed = int(page.locator(".count[data-status=Completed]").inner_text())
        page.evaluate("window.stayedOnPage = true")
        off_loop(append_finished_run(demo_store, "doc-live"))
        expect(page.locator(".count[data-status=Completed]")).to_have_text(str(completed + 1), timeout=LIVE_TIMEOUT_MS)
        expect(page.locator("table.runs a", has_text="doc-live")).to_have_count(1)
        assert page.evaluate("window.stayedOnPage") is True

        # The tail follows new events live.
        page.goto(f"{base}/tail?prefix=notes-")
        off_loop(append_note(demo_store, "notes-live", "hello"))
        expect(page.locator("#tail tbody tr", has_text="notes-live")).to_have_count(1, timeout=LIVE_TIMEOUT_MS)

        # An XSS payload from the log is text, wherever it shows.
        for path in ("/runs/doc-2", "/stream?id=notes-1", "/tail?prefix=notes-"):
            page.goto(f"{base}{path}")
            expect(page.locator("main")).to_contain_text("<script>alert('x')</script>")
            assert page.locator("main script, main img").count() == 0
        off_loop(append_note(demo_store, "notes-live", XSS))
        live_xss = page.locator("#tail tbody tr", has_text="notes-live").filter(has_text="<script>")
        expect(live_xss).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
        assert page.locator("main script, main img").count() == 0
        assert dialogs == []

        # A phone's width: nothing runs off the side of the page.
        phone = new_page(browser, PHONE, dialogs)
        phone.context.add_cookies(page.context.cookies())
        for name, path in (("runs", "/runs"), ("run", f"/runs/{payment_run}"), ("event", "/runs/doc-1")):
            phone.goto(f"{base}{path}")
            expect(phone.locator("h1")).to_be_visible()
            assert fits_width(phone), path
            phone.screenshot(path=str(shots / f"{name}-phone.png"), full_page=True)
        page.goto(f"{base}/runs/{payment_run}")
        assert fits_width(page)
    assert sorted(path.name for path in shots.iterdir()) == [
        "event-desktop.png",
        "event-phone.png",
        "run-desktop.png",
        "run-phone.png",
        "runs-desktop.png",
        "runs-phone.png",
    ]


async def append_note(store_url: str, stream_id: str, text: str) -> None:
    async with agentfold.connect(store_url) as store:
        await store.append(stream_id, [NewEvent("Noted", {"text": text})])


async def append_finished_run(store_url: str, workflow_id: str) -> None:
    async with agentfold.connect(store_url) as store:
        started = NewEvent("WorkflowStarted", {"workflow": "approval", "input": {"args": ["live"]}})
        finished = NewEvent("WorkflowCompleted", {"result": "done"})
        await store.append(f"workflow-{workflow_id}", [started, finished])
