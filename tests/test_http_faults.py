"""The HTTP API when its store fails: a PostgreSQL of the test's own is stopped under it and started again."""

from __future__ import annotations

import asyncio
import uuid

import httpx

import agentfold
from tests.api_server import api_only_app, bearer, running, token_for
from tests.servers import PrivatePostgres, private_postgres

__all__ = ["private_postgres"]


async def test_an_unreachable_store_answers_503_with_retry_after_then_recovers(
    private_postgres: PrivatePostgres,
) -> None:
    async with await agentfold.connect(private_postgres.url) as store:
        token = await token_for(store, "agent", write=["agent-*"])
        async with running(api_only_app(store)) as url:
            async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=bearer(token), timeout=60) as http:
                body = {"events": [{"id": str(uuid.uuid4()), "type": "Noted"}]}
                assert (await http.post("/streams/agent-1", json=body)).status_code == 200
                private_postgres.stop("fast")
                down = await http.post("/streams/agent-1", json={"events": [{"id": str(uuid.uuid4()), "type": "N"}]})
                assert down.status_code == 503, down.text
                assert down.headers["content-type"] == "application/problem+json"
                assert down.json()["type"] in (
                    "urn:agentfold:error:StoreUnavailable",
                    "urn:agentfold:error:StoreTimeout",
                )
                assert down.json()["retryable"] is True and int(down.headers["retry-after"]) >= 1
                private_postgres.start()
                answers: list[int] = []

                async def append_again() -> bool:
                    answers.append((await http.post("/streams/agent-1", json=body)).status_code)
                    return answers[-1] == 200

                for _ in range(120):
                    if await append_again():
                        break
                    await asyncio.sleep(0.5)
                assert answers[-1] == 200, answers
                assert (await http.post("/streams/agent-1", json=body)).json()[
                    "version"
                ] == 1  # the retry wrote nothing
