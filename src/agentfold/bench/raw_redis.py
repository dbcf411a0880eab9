"""The bare-driver baseline for Redis: plain ``XADD`` through redis-py on the same server, in the same run.

The store does more per append (an id lookup, a version check, two stream entries, in one script), so the ratio
between its figure and these shows what that costs, and what grouping concurrent appends wins back.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Final

import msgspec
import redis.asyncio as aioredis

from agentfold.backends.redis import parse_url
from agentfold.bench import event_payload

CLIENTS: Final = 16
PIPELINE_DEPTH: Final = 1000


async def measure_raw(url: str, seconds: float = 2.0) -> dict[str, float]:
    """``XADD`` per second from 16 concurrent clients (one command per round trip), and pipelined from one.

    Entries go to streams under a temporary prefix, deleted afterwards; nothing else in the database is touched.
    """
    settings = parse_url(url, {})
    prefix = f"{settings.prefix}-raw{uuid.uuid4().hex[:8]}"
    entry = msgspec.json.encode(event_payload(1))
    client = aioredis.Redis.from_url(settings.client_url, max_connections=CLIENTS + 1)
    try:
        figures = {
            "raw_xadd_per_s_16clients": await _concurrent(client, prefix, entry, seconds),
            "raw_xadd_per_s_pipelined": await _pipelined(client, prefix, entry, seconds),
        }
    finally:
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    return figures


async def _concurrent(client: aioredis.Redis, prefix: str, entry: bytes, seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def writer(number: int) -> None:
        nonlocal count
        key = f"{prefix}:clients-{number}"
        while time.perf_counter() < deadline:
            await client.xadd(key, {"e": entry})
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(number) for number in range(CLIENTS)))
    return count / (time.perf_counter() - started)


async def _pipelined(client: aioredis.Redis, prefix: str, entry: bytes, seconds: float) -> float:
    count = 0
    key = f"{prefix}:pipelined"
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(PIPELINE_DEPTH):
                pipe.xadd(key, {"e": entry})
            await pipe.execute()
        count += PIPELINE_DEPTH
    return count / (time.perf_counter() - started)
