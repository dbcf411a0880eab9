"""What the bare driver gets out of a PostgreSQL server, to set the store's own figures beside.

Every figure is measured on the server at `url` in a temporary schema that is dropped afterwards, so a benchmark run
can report the store's rates as ratios of the raw rates of the same machine at the same moment.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql

from agentfold.bench import event_payload_text
from agentfold.connect import redact

RAW_CLIENTS: Final = 8
RAW_SECONDS: Final = 2.0
MULTIROW_ROWS: Final = 100
REPLAY_EVENTS: Final = 10_000

_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


def _bare_conninfo(url: str) -> str:
    """The URL without agentfold's query options, which libpq would refuse."""
    return url.split("?", 1)[0].replace("postgres://", "postgresql://", 1)


async def measure_raw(url: str) -> dict[str, float]:
    """Raw rates of the server at `url` with psycopg alone.

    - ``raw_tx_per_s_8clients_1row``: 8 connections, each committing one-row INSERT transactions for ~2 s.
    - ``raw_rows_per_s_multirow``: 8 connections, each committing 100-row multi-row INSERTs for ~2 s.

    The bare fold that `fold_10k_ms` is compared with is `BareFold`, which the projection benchmark times in turns
    with its own fold.
    """
    conninfo = _bare_conninfo(url)
    schema = f"agentfold_raw_{uuid.uuid4().hex[:10]}"
    table = sql.Identifier(schema, "events")
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
            await _create_table(admin, schema)
            results = {
                "raw_tx_per_s_8clients_1row": await _insert_rate(conninfo, table, rows_per_statement=1),
                "raw_rows_per_s_multirow": await _insert_rate(conninfo, table, rows_per_statement=MULTIROW_ROWS),
            }
            return results
    except psycopg.Error as error:
        raise RuntimeError(f"raw PostgreSQL measurement on {redact(url)} failed: {error}") from error
    finally:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as cleanup:
            await cleanup.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def _create_table(connection: psycopg.AsyncConnection[Any], schema: str) -> None:
    """The bare table in a schema of its own: the columns and unique constraints an event log needs."""
    await connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    await connection.execute(
        sql.SQL(
            "CREATE TABLE {} (position bigserial PRIMARY KEY, stream_id text NOT NULL, version bigint NOT NULL,"
            " type text NOT NULL, data text NOT NULL, id uuid NOT NULL UNIQUE, UNIQUE (stream_id, version))"
        ).format(sql.Identifier(schema, "events"))
    )


async def _insert_rate(conninfo: str, table: sql.Identifier, rows_per_statement: int) -> float:
    """Rows per second committed by RAW_CLIENTS connections, each one statement (one transaction) at a time."""
    row = sql.SQL("(%s, %s, 'Raw', %s, %s)")
    statement = sql.SQL("INSERT INTO {} (stream_id, version, type, data, id) VALUES {}").format(
        table, sql.SQL(", ").join([row] * rows_per_statement)
    )
    connections = [await psycopg.AsyncConnection.connect(conninfo, autocommit=True) for _ in range(RAW_CLIENTS)]
    try:
        rendered = statement.as_string(connections[0])
        deadline = time.perf_counter() + RAW_SECONDS

        async def client(connection: psycopg.AsyncConnection[Any], client_number: int) -> int:
            stream = f"raw-{rows_per_statement}-{client_number}-{uuid.uuid4().hex[:6]}"
            version = 0
            while time.perf_counter() < deadline:
                params: list[Any] = []
                for _ in range(rows_per_statement):
                    version += 1
                    params += [stream, version, event_payload_text(version), uuid.uuid4()]
                await connection.execute(rendered.encode(), params)
            return version

        started = time.perf_counter()
        counts = await asyncio.gather(*(client(c, n) for n, c in enumerate(connections)))
        return sum(counts) / (time.perf_counter() - started)
    finally:
        for connection in connections:
            await connection.close()


class BareFold:
    """The bare-driver fold `fold_10k_ms` is compared with: one SELECT of 10,000 ~200-byte events of one stream
    with psycopg, each decoded with msgspec and counted by type (summing `amount`), as `CountByType` does.

    Open with `await BareFold.open(url)`; the benchmark times one `run()` after each of its own folds, so both see
    the machine in the same state. `close()` drops the temporary schema."""

    def __init__(self, connection: psycopg.AsyncConnection[Any], schema: str, stream: str) -> None:
        self._connection = connection
        self._schema = schema
        self._stream = stream
        self._query = sql.SQL(
            "SELECT stream_id, version, position, type, data, id::text FROM {} WHERE stream_id = %s ORDER BY version"
        ).format(sql.Identifier(schema, "events"))

    @classmethod
    async def open(cls, url: str) -> BareFold:
        connection = await psycopg.AsyncConnection.connect(_bare_conninfo(url), autocommit=True)
        schema = f"agentfold_raw_{uuid.uuid4().hex[:10]}"
        table = sql.Identifier(schema, "events")
        stream = f"replay-{uuid.uuid4().hex[:6]}"
        try:
            await _create_table(connection, schema)
            async with connection.cursor() as cursor:
                await cursor.executemany(
                    sql.SQL("INSERT INTO {} (stream_id, version, type, data, id) VALUES (%s, %s, %s, %s, %s)").format(
                        table
                    ),
                    [
                        (stream, number, f"Type{number % 5}", event_payload_text(number), uuid.uuid4())
                        for number in range(1, REPLAY_EVENTS + 1)
                    ],
                )
            await connection.execute(sql.SQL("ANALYZE {}").format(table))
        except BaseException:
            await connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            await connection.close()
            raise
        return cls(connection, schema, stream)

    async def run(self) -> float:
        """One fold, in ms."""
        started = time.perf_counter()
        cursor = await self._connection.execute(self._query, (self._stream,))
        counts: dict[str, int] = {}
        amount = 0.0
        for _stream_id, _version, _position, event_type, data, _event_id in await cursor.fetchall():
            counts[event_type] = counts.get(event_type, 0) + 1
            amount += _decode_object(data).get("amount", 0.0)
        elapsed = time.perf_counter() - started
        if sum(counts.values()) != REPLAY_EVENTS:
            raise RuntimeError(f"the raw replay folded {sum(counts.values())} events, not {REPLAY_EVENTS}")
        return elapsed * 1000

    async def close(self) -> None:
        drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self._schema))
        try:
            await self._connection.execute(drop)
        finally:
            await self._connection.close()
