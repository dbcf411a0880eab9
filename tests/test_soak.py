"""The soak run on every durable backend, bounded: AGENTFOLD_SOAK_SECONDS (default 10) seconds each.

The run mixes appends with idempotent retries, catch-up subscriptions, a consumer group whose members change, and
workflow runs whose workers are replaced, and checks its invariants while it runs (`agentfold.soak`). The long run
is ``agentfold soak --store URL --seconds 180``; its figures are in docs/guarantees.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import agentfold
from agentfold.soak import run_soak

SOAK_SECONDS = float(os.environ.get("AGENTFOLD_SOAK_SECONDS", "10"))


async def test_the_soak_run_breaks_no_invariant(durable_url: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shared Redis runs without persistence; durability is not tested here
        report = await run_soak(durable_url, SOAK_SECONDS, seed=7)
    assert report["violations"] == []
    assert report["appends"] > 0 and report["idempotent_retries"] > 0
    assert report["subscriptions"] > 0 and report["subscription_deliveries"] > 0
    assert report["group_deliveries"] >= report["events_appended"]
    assert report["workflows_completed"] > 0
    assert report["step_effects"] == 2 * report["workflows_completed"]
    assert report["step_keys_with_more_than_one_effect"] == 0
    async with agentfold.connect(durable_url) as store:
        assert await store.head_position() == report["head_position"]


def test_the_soak_command_prints_a_report(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/soak.db"
    done = subprocess.run(
        [sys.executable, "-m", "agentfold", "soak", "--store", url, "--seconds", "1", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["violations"] == [] and report["appends"] > 0


def test_the_soak_command_refuses_a_bad_store_without_showing_the_password() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentfold",
            "soak",
            "--store",
            "redis://:hunter2@127.0.0.1:1/0?bogus=1",
            "--seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "hunter2" not in done.stdout + done.stderr
    assert "bogus" in done.stderr
