"""Processes the cross-process tests start and kill: `python -m tests.procs writer|reader ...`.

Each prints one line per fact the parent needs, flushed at once, so a SIGKILL loses nothing the parent was told.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import agentfold
from agentfold import ANY, NewEvent


def say(line: str) -> None:
    """Write one whole line in one system call, so a SIGKILL never leaves half a line for the parent to parse."""
    os.write(1, (line + "\n").encode())


async def writer(url: str, name: str, appends: int, batch_size: int, tasks: int) -> None:
    """`tasks` concurrent appenders, `appends` appends each (0: until killed), to streams `{name}-{task}`.

    Before each append: `SEND stream [[id, data], ...]`; after its acknowledgement: `ACK stream version position`.
    """
    async with agentfold.connect(url) as store:

        async def run(task: int) -> None:
            stream_id = f"{name}-{task}"
            count = 0
            while appends == 0 or count < appends:
                batch = [
                    NewEvent("Wrote", {"writer": name, "task": task, "n": count, "k": k}) for k in range(batch_size)
                ]
                say(f"SEND {stream_id} {json.dumps([[str(event.id), event.data] for event in batch])}")
                result = await store.append(stream_id, batch, expected_version=ANY)
                say(f"ACK {stream_id} {result.version} {result.position}")
                count += 1

        await asyncio.gather(*(run(task) for task in range(tasks)))
    print("DONE", flush=True)


async def reader(url: str, expected: int, deadline_seconds: float) -> None:
    """Tail `read_all` from position 0 until `expected` events were seen; print every position as JSON."""
    positions: list[int] = []
    deadline = time.monotonic() + deadline_seconds
    async with agentfold.connect(url) as store:
        print("READY", flush=True)
        after = 0
        while len(positions) < expected and time.monotonic() < deadline:
            got = False
            async for page in store.read_all_pages(after_position=after):
                for event in page:
                    if event.position <= after:
                        raise AssertionError(f"position {event.position} seen after {after}")
                    positions.append(event.position)
                    after = event.position
                    got = True
            if not got:
                await store.wait_for_append(after, 0.2)
    say(f"POSITIONS {json.dumps(positions)}")


async def group_member(url: str, group: str, member: str, lease_seconds: float) -> None:
    """Join `group` and print `HANDLED position stream version` for every event handled, until killed."""
    async with agentfold.connect(url) as store:

        async def handle(event: agentfold.RecordedEvent) -> None:
            say(f"HANDLED {event.position} {event.stream_id} {event.version}")

        async with store.consumer_group(group, handle, member_id=member, lease_seconds=lease_seconds, partitions=8):
            print("JOINED", flush=True)
            await asyncio.Event().wait()


async def redis_group_member(url: str, group: str, member: str, hold_after: int) -> None:
    """Join a Redis-native group on relayed streams; print `HANDLED position stream version` per event handled.

    With `hold_after` > 0, the handler never finishes the event after the first `hold_after`: it prints `HOLDING
    position stream version` and waits until the process is killed, so that entry stays unacknowledged.
    """
    from agentfold.fanout.redis_groups import redis_consumer_group

    handled = 0

    async def handle(event: agentfold.RecordedEvent) -> None:
        nonlocal handled
        if hold_after and handled >= hold_after:
            say(f"HOLDING {event.position} {event.stream_id} {event.version}")
            await asyncio.Event().wait()
        handled += 1
        say(f"HANDLED {event.position} {event.stream_id} {event.version}")

    async with redis_consumer_group(url, group, handle, member_id=member, lease_seconds=1.5, min_idle_seconds=1.0):
        say("JOINED")
        await asyncio.Event().wait()


async def projector(url: str) -> None:
    """Count Deposited events per stream into a `totals` table of the store's own database, 20 events a page.

    Prints `APPLIED position` after each page, and `TOTAL stream count` lines once caught up.
    """
    async with agentfold.connect(url) as store:
        if url.startswith("sqlite"):

            def create(connection: Any) -> None:
                connection.execute("CREATE TABLE IF NOT EXISTS totals (stream TEXT PRIMARY KEY, n INTEGER NOT NULL)")

            # private: DDL for the test's read model on the store's writer connection (no public API runs SQL)
            # private: the test's own SQL table beside the log, written through the backend's connection
            await store.backend._write(create)  # type: ignore[attr-defined]

            def update(connection: Any, events: list[agentfold.RecordedEvent]) -> None:
                connection.executemany(
                    "INSERT INTO totals (stream, n) VALUES (?, 1) ON CONFLICT (stream) DO UPDATE SET n = n + 1",
                    [(event.stream_id,) for event in events],
                )
                say(f"APPLIED {events[-1].position}")

            projector = store.projector("totals", update, page_size=20)
            await projector.catch_up()
            # private: reads the read model back on a store reader connection (no public API runs SQL)
            backend: Any = store.backend
            # private: the test's own SQL table beside the log, read through the backend's connection
            rows = await backend._read(lambda connection: connection.execute("SELECT stream, n FROM totals").fetchall())
        else:
            schema = url.rsplit("schema=", 1)[1].split("&")[0]
            table = f'"{schema}".totals'
            # private: the read model's table lives in the store's database, reached through its pool
            # private: the test's own SQL table beside the log, on a pooled connection
            async with store.backend._pool.connection() as connection:  # type: ignore[attr-defined]
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (stream TEXT PRIMARY KEY, n INT NOT NULL)"
                )

            async def update_pg(connection: Any, events: list[agentfold.RecordedEvent]) -> None:
                async with connection.cursor() as cursor:
                    await cursor.executemany(
                        f"INSERT INTO {table} AS t (stream, n) VALUES (%s, 1) "
                        "ON CONFLICT (stream) DO UPDATE SET n = t.n + 1",
                        [(event.stream_id,) for event in events],
                    )
                say(f"APPLIED {events[-1].position}")

            projector = store.projector("totals", update_pg, page_size=20)
            await projector.catch_up()
            # private: the test's own SQL table beside the log, on a pooled connection
            async with store.backend._pool.connection() as connection:  # type: ignore[attr-defined]
                rows = await (await connection.execute(f"SELECT stream, n FROM {table}")).fetchall()
        for stream, count in rows:
            say(f"TOTAL {stream} {count}")


def big_payload(task: int, count: int) -> dict[str, Any]:
    """A 2 MiB prompt, the same for every fourth append of a task (so blobs are shared), and a small field."""
    return {"prompt": f"{task}:{count % 4}:" + "p" * (2 * 1024 * 1024), "n": count}


async def blob_writer(url: str, tasks: int) -> None:
    """`tasks` concurrent appenders of events with a 2 MiB blob each, to streams `blobs-{task}`, trimming each stream
    down to its last two events after every append, until killed. Prints `ACK stream version position`."""
    async with agentfold.connect(url) as store:

        async def run(task: int) -> None:
            stream_id = f"blobs-{task}"
            count = 0
            while True:
                result = await store.append(stream_id, [NewEvent("Prompted", big_payload(task, count))])
                say(f"ACK {stream_id} {result.version} {result.position}")
                await store.trim_stream(stream_id, result.version - 1)
                count += 1

        await asyncio.gather(*(run(task) for task in range(tasks)))


def main() -> None:
    command, url, *rest = sys.argv[1:]
    if command == "writer":
        name, appends, batch_size, tasks = rest
        asyncio.run(writer(url, name, int(appends), int(batch_size), int(tasks)))
    elif command == "blob-writer":
        asyncio.run(blob_writer(url, int(rest[0])))
    elif command == "reader":
        expected, deadline = rest
        asyncio.run(reader(url, int(expected), float(deadline)))
    elif command == "projector":
        asyncio.run(projector(url))
    elif command == "group":
        group, member, lease_seconds = rest
        asyncio.run(group_member(url, group, member, float(lease_seconds)))
    elif command == "redis-group":
        group, member, hold_after = rest
        asyncio.run(redis_group_member(url, group, member, int(hold_after)))
    else:
        raise SystemExit(
            f"unknown command {command!r}; use writer, blob-writer, reader, projector, group or redis-group"
        )


if __name__ == "__main__":
    main()
