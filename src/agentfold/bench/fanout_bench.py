"""Fan-out figures: the relay and a Redis-native group on one Redis beside the same on a Redis Cluster.

Every target gets the same work, in turns, in the same run: `events` events over 60 streams, in a `memory://`
source (so the source costs next to nothing), relayed into 12 partition streams under a fresh prefix. Two figures
per target and turn:

- ``relay_events_per_s``: the relay copying the whole source into an empty prefix (``once``, batches of 2,000);
- ``group_events_per_s``: three members of one group in this process settle their shares of the 12 partitions on
  an empty prefix; then the source is relayed and the clock runs from the start of the relay to the last event
  handled (the figure `agentfold bench --backend redis` calls ``redis_native_group_events_per_s``).

On a cluster the relay waits for ``replicas`` replicas per master and batch (``WAIT``), so the cluster is measured
twice: with ``replicas=1`` (what the relay guarantees by default) and with ``replicas=0`` (no waiting), which shows
what the confirmation costs. Each figure is the median of the turns; the JSON keeps every turn.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import agentfold
from agentfold import NewEvent
from agentfold.bench import event_payload
from agentfold.bench.delivery import native_group_rate
from agentfold.fanout.redis_relay import relay
from agentfold.fanout.targets import make_fanout_client, parse_target
from agentfold.options import redact
from agentfold.store import EventStore

PARTITIONS = 12
STREAMS = 60
Progress = Callable[[str], None]


def targets(urls: list[str]) -> dict[str, str]:
    """The targets to measure, by name: each ``redis://`` URL, and each ``redis+cluster://`` URL with the relay
    waiting for one replica and for none."""
    named: dict[str, str] = {}
    for url in urls:
        if parse_target(url).cluster:
            joined = "&" if "?" in url else "?"
            named[f"{redact(url)} replicas=1"] = f"{url}{joined}replicas=1"
            named[f"{redact(url)} replicas=0"] = f"{url}{joined}replicas=0"
        else:
            named[redact(url)] = url
    return named


def _with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


async def _drop(url: str) -> None:
    """Delete every key under the URL's prefix (on a cluster, on every master)."""
    target = parse_target(url)
    client = make_fanout_client(target, target.timeout)
    try:
        keys = [key async for key in client.scan_iter(match=f"{target.prefix}:*", count=1000)]
        for key in keys:
            await client.delete(key)
    finally:
        await client.aclose()


async def _relay_rate(source: EventStore, url: str, events: int) -> float:
    started = time.perf_counter()
    written = await relay(source, url, once=True, partitions=PARTITIONS, batch_size=2000)
    elapsed = time.perf_counter() - started
    assert written == events, f"relayed {written} of {events}"
    return events / elapsed


async def _group_rate(source: EventStore, url: str, events: int) -> float:
    return await native_group_rate(source, url, events, PARTITIONS)


async def measure_fanout(urls: list[str], events: int, turns: int, progress: Progress = print) -> dict[str, Any]:
    """Relay and group rates per target; see the module docstring."""
    named = targets(urls)
    turns_by_target: dict[str, dict[str, list[float]]] = {
        name: {"relay_events_per_s": [], "group_events_per_s": []} for name in named
    }
    async with agentfold.connect("memory://") as source:
        for start in range(0, events, 500):
            await asyncio.gather(
                *(
                    source.append(f"work-{index % STREAMS}", [NewEvent("Job", event_payload(index))])
                    for index in range(start, min(start + 500, events))
                )
            )
        for turn in range(turns):
            for name, url in named.items():
                for figure, measure in (("relay_events_per_s", _relay_rate), ("group_events_per_s", _group_rate)):
                    progress(f"turn {turn + 1}/{turns}: {name}: {figure}")
                    scratch = _with_prefix(url, f"bench_{uuid.uuid4().hex[:10]}")
                    try:
                        turns_by_target[name][figure].append(await measure(source, scratch, events))
                    finally:
                        await _drop(scratch)
    return {
        "events": events,
        "partitions": PARTITIONS,
        "turns": turns_by_target,
        "figures": {
            name: {figure: statistics.median(values) for figure, values in figures.items()}
            for name, figures in turns_by_target.items()
        },
    }
