"""`agentfold bench --partitions`: a PostgreSQL store in one events table beside one in hash partitions, both filled
to the same large size, measured in the same run.

The fill writes rows with SQL (`generate_series`) in the format `append_group()` writes, for speed: each event is
valid and readable through the store (the run reads some back and checks them). Streams are interleaved, as in a
store many agents write to: position p belongs to stream p mod S, where S = events / 100.
"""

from __future__ import annotations

import random
import re
import statistics
import time
import uuid
from typing import Any

import agentfold
from agentfold.bench import DEFAULT_PG, Figures, Progress, event_payload, event_payload_text, measure_appends
from agentfold.events import NewEvent

FILL_CHUNK = 500_000
EVENTS_PER_STREAM = 100
PAGE = 500
SAMPLES = 200

_FILL = """
INSERT INTO {s}.events (position, version, recorded_at_us, batch_index, batch_size, id, stream_id, type, data, metadata)
SELECT p, (p - 1) / %(streams)s + 1, %(now_us)s, 0, 1, md5(%(tag)s || p)::uuid,
       'filled-' || ((p - 1) %% %(streams)s), 'Filled', %(payload)s::json, '{{}}'::json
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS p
"""

_BIGGEST_INDEX = """
SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind = 'r' AND (c.relname LIKE 'events%%' OR c.relname LIKE 'event_ids%%')
ORDER BY 2 DESC
"""


async def measure_partitions(
    base_url: str | None, events: int, partitions: int, quick: bool, progress: Progress
) -> dict[str, Figures]:
    """Per layout ("unpartitioned", "partitions=N"): fill rate, appends, reads and index sizes at `events` events."""
    root = base_url or DEFAULT_PG
    results: dict[str, Figures] = {}
    for layout, count in (("unpartitioned", 0), (f"partitions={partitions}", partitions)):
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        url = f"{root}{'&' if '?' in root else '?'}schema={schema}&partitions={count}"
        try:
            results[layout] = await _measure_layout(url, schema, events, quick, progress, layout)
        finally:
            await _drop(root, schema)
    return results


async def _measure_layout(url: str, schema: str, events: int, quick: bool, progress: Progress, layout: str) -> Figures:
    import psycopg

    streams = max(1, events // EVENTS_PER_STREAM)
    figures: Figures = {"events": float(events)}
    async with agentfold.connect(url) as store:
        root = url.split("?")[0]
        async with await psycopg.AsyncConnection.connect(root, autocommit=True) as connection:
            quoted = f'"{schema}"'
            started = time.perf_counter()
            for first in range(1, events + 1, FILL_CHUNK):
                last = min(events, first + FILL_CHUNK - 1)
                progress(f"{layout}: filling {first - 1:,}/{events:,} events")
                await connection.execute(
                    _FILL.format(s=quoted).encode(),
                    {
                        "streams": streams,
                        "tag": schema,
                        "now_us": int(time.time() * 1_000_000),
                        "payload": event_payload_text(0),
                        "first": first,
                        "last": last,
                    },
                )
            if layout != "unpartitioned":  # the head a partitioned store's appends go on from (migration 6)
                await connection.execute(f"UPDATE {quoted}.head SET position = %s".encode(), (events,))
            figures["fill_per_s"] = events / (time.perf_counter() - started)
            progress(f"{layout}: ANALYZE")
            await connection.execute(f"ANALYZE {quoted}.events".encode())
            cursor = await connection.execute(
                f"EXPLAIN SELECT data::text, position FROM {quoted}.events WHERE position > 1000 "
                "ORDER BY position LIMIT 500".encode()
            )
            plan = "\n".join(str(row[0]) for row in await cursor.fetchall())
            # 0: the page is read from position indexes in order (a Merge Append's "Sort Key" is no sort)
            figures["read_all_plan_sorts"] = float(re.search(r"(^|->\s+)Sort\s+\(", plan, re.MULTILINE) is not None)
            cursor = await connection.execute(_BIGGEST_INDEX.encode(), (schema,))
            sizes = await cursor.fetchall()
            figures["biggest_index_mb"] = sizes[0][1] / 2**20
            figures["all_indexes_mb"] = sum(size for _, size in sizes) / 2**20
            cursor = await connection.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                (schema,),
            )
            row = await cursor.fetchone()
            figures["total_mb"] = float(row[0] if row else 0) / 2**20
        assert await store.head_position() == events
        rng = random.Random(7)
        progress(f"{layout}: reads")
        page_ms: list[float] = []
        for _ in range(SAMPLES):
            after = rng.randrange(0, max(1, events - PAGE))
            started = time.perf_counter()
            page, _ = await store.backend.read_all_page(after, PAGE, None, None)
            page_ms.append((time.perf_counter() - started) * 1000)
            assert page[0].position == after + 1 and len(page) == min(PAGE, events - after)
        figures["read_all_page_500_ms_p50"] = statistics.median(page_ms)
        stream_ms: list[float] = []
        for _ in range(SAMPLES):
            stream_id = f"filled-{rng.randrange(streams)}"
            started = time.perf_counter()
            read = [event async for event in store.read_stream(stream_id)]
            stream_ms.append((time.perf_counter() - started) * 1000)
            assert read and read[0].version == 1 and read[-1].version == len(read)
        figures["read_stream_100_ms_p50"] = statistics.median(stream_ms)
        progress(f"{layout}: one-event appends to existing streams")
        append_ms: list[float] = []
        for index in range(200 if quick else 1000):
            stream_id = f"filled-{rng.randrange(streams)}"
            started = time.perf_counter()
            await store.append(stream_id, [NewEvent("OrderUpdated", event_payload(index))])
            append_ms.append((time.perf_counter() - started) * 1000)
        append_ms.sort()
        figures["append_ms_p50"] = statistics.median(append_ms)
        figures["append_ms_p99"] = append_ms[int(len(append_ms) * 0.99) - 1]
        progress(f"{layout}: 16 writers")
        figures["append_16_writers_per_s"] = await measure_appends(store, 16, 3.0 if quick else 10.0)
        retry = [NewEvent("OrderUpdated", event_payload(0))]
        written = await store.append("retried", retry)
        started = time.perf_counter()
        for _ in range(SAMPLES):
            assert await store.append("retried", retry) == written
        figures["idempotent_retry_ms"] = (time.perf_counter() - started) * 1000 / SAMPLES
    return figures


async def _drop(root: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(root.split("?")[0], autocommit=True) as connection:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The figures per layout, with the partitioned one's ratio to the unpartitioned one per figure."""
    layouts = list(results)
    if len(layouts) == 2:
        plain, split = (results[name] for name in layouts)
        results = {
            **results,
            "ratio": {key: split[key] / plain[key] for key in plain if plain[key] and key in split},
        }
    return results
