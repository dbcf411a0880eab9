"""PostgreSQL's append function and Redis's append script answer with the same `Outcome` codes.

Each is called directly, as its backend calls it, in the three situations an append can be in: written, wrong
expected version, ids already known. The function and the script are reached through their module constants and a
raw driver, since no public API shows a wire code (that is the point of the table).
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis.asyncio as aioredis

import agentfold
from agentfold.appending import Outcome
from agentfold.backends.redis import APPEND_SCRIPT, packed_id
from tests.backends import PG_URL, REDIS_URL

SITUATIONS = ("written", "wrong expected version", "ids known")


async def postgres_outcomes() -> list[int]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"
    async with agentfold.connect(url):  # creates the schema and its append_group() function
        pass
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    def call(expected: int, event_id: str) -> int:
        row = connection.execute(
            f'SELECT outcome FROM "{schema}".append_group(%s, %s, %s, %s::uuid[], %s, %s, %s, %s)',
            (["s"], [expected], [1], [event_id], ["Done"], ["{}"], ["{}"], f"{schema}_test"),
        ).fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as connection:
        try:
            # -1: any version; 5: exactly version 5 (the stream is at 1)
            return [call(-1, first), call(5, second), call(-1, first)]
        finally:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def redis_outcomes() -> list[int]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    names = ("head", "all", "ids", "versions", "blobs", "blobrefs", "blobbytes", "idx", "blobevents")
    names += ("runs", "holders", "runsat", "catsat", "cats", "typesat", "types", "s:s")
    # the stream "s" has no category index; its one event's type index
    keys = [f"{prefix}:{name}" for name in names] + ["", f"{prefix}:type:Done"]
    client = aioredis.Redis.from_url(REDIS_URL)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    async def call(expected: str, event_id: str) -> int:
        tail = f'"s","Done","{event_id}",{{}},{{}}]'
        # one append of one event without blobs: no digests for the event, no blob, no open-run change
        arguments = ("1", "s", expected, "1", packed_id(event_id), event_id, tail, "", "0", "0")
        reply = await client.eval(APPEND_SCRIPT, len(keys), *keys, *arguments)
        return int(reply.split(b"\n")[0].split(b" ")[0])

    try:
        return [await call("any", first), await call("5", second), await call("any", first)]
    finally:
        await client.delete(*keys)
        await client.aclose()


@pytest.mark.parametrize("backend", ["postgres", "redis"])
async def test_each_backend_answers_with_the_outcome_table(backend: str) -> None:
    outcomes = await (postgres_outcomes() if backend == "postgres" else redis_outcomes())
    expected = [Outcome.WRITTEN, Outcome.WRONG_EXPECTED_VERSION, Outcome.IDS_KNOWN]
    assert dict(zip(SITUATIONS, outcomes, strict=True)) == dict(zip(SITUATIONS, expected, strict=True))


async def test_postgres_and_redis_codes_agree() -> None:
    assert await postgres_outcomes() == await redis_outcomes()
