"""A research team of LLM-style agents as durable workflows: a planner, researchers, a writer, a human approval.

- The **planner** asks the model for the questions a topic raises, hands each question to a **researcher** run and
  the notes to a **writer** run (hand-offs by name, under ids a person can read: ``<run>/research-1``,
  ``<run>/writer``), then waits for a person's **approval** (a signal), and **publishes** the report.
- A **researcher** searches a small library (a tool, read only) and asks the model to sum up what it found.
- The **writer** asks the model for the report.
- The model is scripted (``ScriptedModel``): the same prompt gets the same answer, and every call is counted, so
  the example runs without a network or a key. A real client goes in its place: each call is a step, recorded once,
  never asked again on replay.
- ``publish`` has a side effect (a file in ``outbox/``) and an idempotency key; after a crash between the write and
  its record, ``already_published`` is asked instead of publishing twice.

Run it twice (a worker runs in this process while the script runs)::

    python examples/research_team.py --topic "durable agents"      # plans, researches, drafts; waits for approval
    agentfold signal research-durable-agents approval --payload '{"by": "ann"}'
    python examples/research_team.py --topic "durable agents"      # resumes the run: publishes once, prints it

``--store URL`` (default ``sqlite:///research.db``) and ``--outbox DIR`` (default ``outbox``) choose where the
runs and the published reports go; ``agentfold worker research_team:runtime`` (run from ``examples/``) serves the
same workflows from a worker process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Final

import agentfold
from agentfold import NOT_APPLIED, WorkflowContext
from agentfold.runtime import signal_stream

RESEARCH_TIMEOUT_SECONDS: Final = 60.0
OUTBOX_ENV: Final = "RESEARCH_TEAM_OUTBOX"

runtime = agentfold.Runtime()


# -- the model: scripted, deterministic, counted --------------------------------------------------------------------

LIBRARY: Final = {
    "replay": "A durable workflow is replayed from its event log; recorded step results are reused.",
    "crash": "After a crash, a step left in doubt is reconciled with the provider instead of run blindly again.",
    "approval": "A run waiting for a person is durable: it survives restarts until the signal arrives.",
    "cost": "Model calls recorded as steps are paid once, however often the run is replayed.",
}


class ScriptedModel:
    """A stand-in for an LLM: answers from a script, keyed by the agent's role, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, role: str, prompt: str) -> str:
        self.calls += 1
        if role == "planner":
            aspects = ("replay", "crash", "cost")
            return "\n".join(
                f"{number}. How does {prompt} handle {aspect}?" for number, aspect in enumerate(aspects, 1)
            )
        if role == "researcher":
            return f"In short: {prompt}"
        if role == "writer":
            return f"# Report\n\n{prompt}\n\nConclusion: every effect happens once."
        raise ValueError(f"the script has no part for {role!r}")


model = ScriptedModel()


async def ask_model(role: str, prompt: str) -> str:
    """One model call (a step: recorded once, answered from the log on replay)."""
    return await model.complete(role, prompt)


# -- tools ----------------------------------------------------------------------------------------------------------


async def search_library(question: str) -> list[str]:
    """A read-only tool: the library's passages that share a word with the question."""
    words = set(re.findall(r"[a-z]+", question.lower()))
    return [text for key, text in LIBRARY.items() if key in words]


def outbox() -> Path:
    return Path(os.environ.get(OUTBOX_ENV, "outbox"))


def _report_path(idempotency_key: str) -> Path:
    return outbox() / (re.sub(r"[^A-Za-z0-9._-]+", "_", idempotency_key) + ".md")


async def publish(report: str, idempotency_key: str) -> str:
    """A tool with a side effect: writes the report to the outbox, once per key."""
    path = _report_path(idempotency_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report, encoding="utf-8")
    return str(path)


async def already_published(idempotency_key: str, report: str) -> Any:
    """Asked instead of publishing again when a crash left `publish` in doubt."""
    path = _report_path(idempotency_key)
    return str(path) if path.exists() else NOT_APPLIED


# -- the agents -----------------------------------------------------------------------------------------------------


@runtime.workflow(name="researcher")
async def researcher(ctx: WorkflowContext, question: str) -> dict[str, Any]:
    passages = await ctx.step("search_library", search_library, question)
    summary = await ctx.step("summarise", ask_model, "researcher", " ".join(passages) or "nothing found")
    return {"question": question, "summary": summary}


@runtime.workflow(name="writer")
async def writer(ctx: WorkflowContext, topic: str, notes: list[dict[str, Any]]) -> str:
    body = "\n".join(f"- {note['question']} {note['summary']}" for note in notes)
    report: str = await ctx.step("draft", ask_model, "writer", f"{topic}\n\n{body}")
    return report


@runtime.workflow(name="planner")
async def planner(ctx: WorkflowContext, topic: str) -> dict[str, Any]:
    plan = await ctx.step("plan", ask_model, "planner", topic)
    questions = [line.split(". ", 1)[1] for line in plan.splitlines() if ". " in line]
    researchers = [
        await ctx.start_child("researcher", question, workflow_id=f"{ctx.workflow_id}/research-{number}")
        for number, question in enumerate(questions, start=1)
    ]
    notes = [await ctx.child_result(run_id, timeout=RESEARCH_TIMEOUT_SECONDS) for run_id in researchers]
    drafting = await ctx.start_child("writer", topic, notes, workflow_id=f"{ctx.workflow_id}/writer")
    report = await ctx.child_result(drafting, timeout=RESEARCH_TIMEOUT_SECONDS)
    approval = await ctx.wait_for("approval")  # a person reads the draft (`agentfold show`) and signals
    if not approval.get("approved", True):
        return {"topic": topic, "published": None, "rejected_by": approval.get("by")}
    where = await ctx.step("publish", publish, report, reconcile=already_published)
    return {"topic": topic, "published": where, "approved_by": approval.get("by")}


# -- running it -----------------------------------------------------------------------------------------------------


def run_id_for(topic: str) -> str:
    return "research-" + (re.sub(r"[^a-z0-9]+", "-", topic.lower()).strip("-") or "topic")


def cli_command() -> str:
    """How to run `agentfold` from this shell: beside this Python when PATH does not find it."""
    script = Path(sys.executable).parent / "agentfold"
    return shlex.quote(str(script)) if script.exists() else "agentfold"


async def run(store_url: str, topic: str) -> int:
    run_id = run_id_for(topic)
    async with agentfold.connect(store_url) as store, runtime.worker(store):
        client = runtime.client(store)
        await client.start(planner, topic, workflow_id=run_id)  # idempotent: a second run finds the first
        while True:
            # Signals sent are counted first, then the run is read once: its state and the signals it consumed
            # come from the same fold, so a signal sent before this look is either consumed or still on its way.
            sent = await store.stream_version(signal_stream(run_id))
            history = await client.history(run_id)
            state, delivered = history.state, len(history.consumed_signals)
            if state in ("Completed", "Failed", "Cancelled", "Terminated"):
                break
            if state == "AwaitingInput" and sent == delivered:  # waiting, and no approval on its way
                store_option = f" --store {shlex.quote(store_url)}"
                print(f"{run_id} waits for approval; read the draft, then approve it:")
                print(f"  {cli_command()} show {run_id}/writer{store_option}")
                payload = shlex.quote('{"by": "ann"}')
                print(f"  {cli_command()} signal {run_id} approval --payload {payload}{store_option}")
                print("and run this script again to publish.")
                print(f"model calls in this process: {model.calls}")
                return 0
            await asyncio.sleep(0.05)
        if state != "Completed":
            print(f"{run_id} ended {state}")
            return 1
        print(f"{run_id}: {await client.result(run_id, timeout=RESEARCH_TIMEOUT_SECONDS)}")
        print(f"model calls in this process: {model.calls} (a resumed run reads its earlier answers from the log)")
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--store", default="sqlite:///research.db", help="the store URL [sqlite:///research.db]")
    parser.add_argument("--topic", default="durable agents", help="what to research [durable agents]")
    parser.add_argument("--outbox", default=None, help="where reports are published [outbox]")
    arguments = parser.parse_args()
    if arguments.outbox is not None:
        os.environ[OUTBOX_ENV] = arguments.outbox
    sys.exit(asyncio.run(run(arguments.store, arguments.topic)))


if __name__ == "__main__":
    main()
