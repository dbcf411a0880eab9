"""LangGraph checkpoint storage, `AgentfoldSaver` beside LangGraph's own savers, in one run.

A chat graph adds two messages per step (a question and an answer of about 200 characters each) for `steps` steps.
For each saver: the bytes its storage holds after the run and one read of the thread's head by a fresh saver (the
read that resumes a thread; `AgentfoldSaver` keeps its snapshot then), and what the thread added to the storage of a
saver that holds nothing yet (SQLite: the database file and its write-ahead log after a checkpoint of the log;
PostgreSQL: the total size of its tables, with their indexes and TOAST tables). Then the median time of `aput` and
of `aget_tuple` (the thread's head) at step 10 and at the last step, beside the time LangGraph's serializer takes to
decode that head's channel values (which every saver pays, and which grows with the thread). The times are taken
in rounds that open each saver once and visit the savers in turn, so the drift of a shared machine falls on all
alike.
"""

import importlib.metadata
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

from agentfold.errors import InvalidInput

PACKAGES = ("langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres")
EARLY_STEP = 10
DEFAULT_STEPS = 200
QUICK_STEPS = 60
READS = 9
ROUNDS = 3
WORDS = (
    "the order refund shipping address customer agent tool weather report summary invoice delivery warehouse "
    "payment card account password reset schedule meeting calendar flight hotel booking cancel confirm change "
    "price discount coupon product review rating question answer policy return exchange damaged missing late "
    "tracking number email phone support ticket escalate manager approve reject pending status update"
).split()


def _text(seed: int) -> str:
    """About 200 characters of chat-like text, different for every message (so storage cannot just compress
    repetition away)."""
    chooser = random.Random(seed)
    return " ".join(chooser.choice(WORDS) for _ in range(32))[:200]


def default_pg_url() -> str:
    """The PostgreSQL server measured unless told otherwise (the same as the other benchmarks)."""
    return os.environ.get("AGENTFOLD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _require() -> None:
    try:
        import langgraph.checkpoint.postgres.aio
        import langgraph.checkpoint.sqlite.aio
        import langgraph.graph  # noqa: F401
    except ImportError as error:
        raise InvalidInput(
            "the LangGraph storage benchmark needs langgraph, langgraph-checkpoint-sqlite and "
            f"langgraph-checkpoint-postgres: pip install 'agentfold[dev]' ({error})"
        ) from None


def _chat_graph(saver: Any) -> Any:
    from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
    from langgraph.graph import END, START, StateGraph
    from langgraph.graph.message import add_messages

    class Chat(TypedDict):  # annotations evaluated here (no postponed evaluation in this module)
        messages: Annotated[list[AnyMessage], add_messages]
        steps: int
        until: int

    def talk(state: Any) -> dict[str, Any]:
        step = state.get("steps", 0) + 1
        return {
            "messages": [
                HumanMessage(_text(2 * step), id=f"q{step}"),
                AIMessage(_text(2 * step + 1), id=f"a{step}"),
            ],
            "steps": step,
        }

    def more(state: Any) -> str:
        return "talk" if state["steps"] < state["until"] else END

    builder = StateGraph(Chat)
    builder.add_node("talk", talk)
    builder.add_edge(START, "talk")
    builder.add_conditional_edges("talk", more, ["talk", END])
    return builder.compile(checkpointer=saver)


async def _median_put_ms(saver: Any, thread: dict[str, Any]) -> float:
    """The median time of `aput` for a checkpoint that adds 2 messages to the thread's current ones.

    The puts go to a thread of their own that starts from a copy of the thread's head, so the graph's thread is
    left as it was, and only the saver's work is timed (not the graph's)."""
    from langchain_core.messages import AIMessage, HumanMessage
    from langgraph.checkpoint.base.id import uuid6

    head = await saver.aget_tuple(thread)
    values = dict(head.checkpoint["channel_values"])
    versions = dict(head.checkpoint["channel_versions"])

    def checkpoint() -> dict[str, Any]:
        return {
            **head.checkpoint,
            "id": str(uuid6(clock_seq=-1)),
            "channel_values": dict(values),
            "channel_versions": dict(versions),
        }

    config: dict[str, Any] = {"configurable": {"thread_id": f"put-{uuid.uuid4().hex[:8]}", "checkpoint_ns": ""}}
    config = await saver.aput(config, checkpoint(), {"source": "fork", "step": 0}, dict(versions))
    times = []
    for index in range(READS):
        values["messages"] = [
            *values["messages"],
            HumanMessage(_text(-2 * index), id=f"pq{index}"),
            AIMessage(_text(-2 * index - 1), id=f"pa{index}"),
        ]
        versions["messages"] = saver.get_next_version(versions["messages"], None)
        started = time.perf_counter()
        config = await saver.aput(
            config, checkpoint(), {"source": "loop", "step": index + 1}, {"messages": versions["messages"]}
        )
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _median_read_ms(saver: Any, thread: dict[str, Any]) -> float:
    """The median time of `aget_tuple` for the thread's head, after as many reads that are not timed (a driver
    prepares a statement it runs often: the figure is that of an application that keeps its connection open)."""
    times = []
    for timed in (False, True):
        for _ in range(READS):
            started = time.perf_counter()
            found = await saver.aget_tuple(thread)
            if timed:
                times.append((time.perf_counter() - started) * 1000)
            assert found is not None
    return statistics.median(times)


async def _median_decode_ms(saver: Any, thread: dict[str, Any]) -> float:
    """The median time LangGraph's serializer takes to decode the thread head's channel values, stored one payload
    per channel as LangGraph's own savers store them: the part of reading a head that grows with the conversation,
    whatever the saver."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = JsonPlusSerializer()
    head = await saver.aget_tuple(thread)
    stored = [serde.dumps_typed(value) for value in head.checkpoint["channel_values"].values()]
    times = []
    for _ in range(READS):
        started = time.perf_counter()
        for payload in stored:
            serde.loads_typed(payload)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@dataclass
class _Saver:
    """One saver under measure: how to open it, how big its storage is, its two threads and its figures."""

    name: str
    opened: Callable[[], AbstractAsyncContextManager[Any]]
    size: Callable[[], Awaitable[int]]
    steps: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    figures: dict[str, Any] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)

    @property
    def long_thread(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": f"chat-{self.tag}"}, "recursion_limit": self.steps * 2 + 10}

    @property
    def next_thread(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": f"next-{self.tag}"}, "recursion_limit": self.steps * 2 + 10}

    @property
    def short_thread(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": f"short-{self.tag}"}, "recursion_limit": EARLY_STEP * 2 + 10}


async def _fill(saver: _Saver) -> None:
    """The bytes of storage that holds nothing yet, and after one thread of `steps` steps read once; then a thread
    of `EARLY_STEP` steps beside it, and what one more thread of `steps` steps adds to storage already in use (what
    each thread costs a store that holds many, without what a saver's tables cost once)."""
    async with saver.opened() as opened:  # a saver creates its tables on first use
        assert (
            await opened.aget_tuple({"configurable": {"thread_id": f"none-{saver.tag}", "checkpoint_ns": ""}}) is None
        )
    empty = await saver.size()
    await _write_and_read(saver, saver.long_thread)
    after = await saver.size()  # one thread of `steps` steps, read once, before anything else is added
    saver.figures.update({"saver": saver.name, "bytes": after, "thread_bytes": after - empty})
    async with saver.opened() as opened:
        await _chat_graph(opened).ainvoke({"until": EARLY_STEP}, saver.short_thread, durability="sync")
    before = await saver.size()
    await _write_and_read(saver, saver.next_thread)
    saver.figures["next_thread_bytes"] = await saver.size() - before


async def _write_and_read(saver: _Saver, thread: dict[str, Any]) -> None:
    """A thread of `steps` steps, then one read of its state by a fresh saver (checked against what was put)."""
    async with saver.opened() as opened:
        await _chat_graph(opened).ainvoke({"until": saver.steps}, thread, durability="sync")
    async with saver.opened() as opened:
        state = await _chat_graph(opened).aget_state(thread)
        assert len(state.values["messages"]) == 2 * saver.steps, "the saver did not return what was put"


async def _time(saver: _Saver) -> None:
    """One round of `aput`, decoding and `aget_tuple` on the saver's two threads."""
    async with saver.opened() as opened:
        for call, measure in (("put", _median_put_ms), ("decode", _median_decode_ms), ("read", _median_read_ms)):
            for length, thread in (("short", saver.short_thread), ("long", saver.long_thread)):
                saver.times.setdefault(f"{call}_{length}", []).append(await measure(opened, thread))


def _figures(saver: _Saver) -> dict[str, Any]:
    median = {key: statistics.median(values) for key, values in saver.times.items()}
    return {
        **saver.figures,
        **{
            f"{figure}_ms_step_{step}": median[f"{call}_{length}"]
            for figure, call in (("aput", "put"), ("decode", "decode"), ("aget_tuple", "read"))
            for step, length in ((EARLY_STEP, "short"), (saver.steps, "long"))
        },
    }


def _sqlite_bytes(path: Path) -> int:
    import sqlite3

    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return sum(candidate.stat().st_size for candidate in (path, Path(f"{path}-wal")) if candidate.exists())


async def _pg_bytes(url: str, schema: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT coalesce(sum(pg_total_relation_size(format('%%I.%%I', schemaname, tablename))), 0) "
            "FROM pg_tables WHERE schemaname = %s",
            (schema,),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0


async def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def run_langgraph_storage(
    workdir: Path, pg_url: str, steps: int = DEFAULT_STEPS, progress: Callable[[str], None] = lambda text: None
) -> dict[str, Any]:
    """Fill every saver, then time them in turns; return the figures and the versions of the packages measured."""
    _require()
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    import agentfold
    from agentfold.integrations.langgraph import AgentfoldSaver

    if steps <= EARLY_STEP:
        raise InvalidInput(f"steps must be above {EARLY_STEP}, got {steps}")
    _prepare(workdir)
    tag = uuid.uuid4().hex[:8]

    def agentfold_saver(url: str) -> Callable[[], AbstractAsyncContextManager[Any]]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[Any]:
            async with agentfold.connect(url) as store:
                yield AgentfoldSaver(store)

        return opened

    af_sqlite, lg_sqlite = workdir / f"agentfold-{tag}.db", workdir / f"langgraph-{tag}.db"

    @asynccontextmanager
    async def sqlite_saver() -> AsyncIterator[Any]:
        async with AsyncSqliteSaver.from_conn_string(str(lg_sqlite)) as saver:
            yield saver

    af_schema, lg_schema = f"bench_af_{tag}", f"bench_lg_{tag}"
    separator = "&" if "?" in pg_url else "?"
    lg_pg_url = f"{pg_url}{separator}options=-csearch_path%3D{lg_schema}"

    @asynccontextmanager
    async def pg_saver() -> AsyncIterator[Any]:
        async with AsyncPostgresSaver.from_conn_string(lg_pg_url) as saver:
            await saver.setup()
            yield saver

    savers = [
        _Saver(
            "agentfold sqlite",
            agentfold_saver(f"sqlite:///{af_sqlite}"),
            _async(lambda: _sqlite_bytes(af_sqlite)),
            steps,
        ),
        _Saver("langgraph sqlite", sqlite_saver, _async(lambda: _sqlite_bytes(lg_sqlite)), steps),
        _Saver(
            "agentfold postgres",
            agentfold_saver(f"{pg_url}{separator}schema={af_schema}"),
            lambda: _pg_bytes(pg_url, af_schema),
            steps,
        ),
        _Saver("langgraph postgres", pg_saver, lambda: _pg_bytes(pg_url, lg_schema), steps),
    ]
    try:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as connection:
            await connection.execute(f'CREATE SCHEMA "{lg_schema}"')
        for saver in savers:
            progress(f"{saver.name}: {steps} steps")
            await _fill(saver)
        for round_number in range(1, ROUNDS + 1):  # the savers in turns, so that the machine's drift falls on all
            for saver in savers:
                progress(f"{saver.name}: timing, round {round_number} of {ROUNDS}")
                await _time(saver)
    finally:
        await _drop_schema(pg_url, af_schema)
        await _drop_schema(pg_url, lg_schema)
        _remove(workdir, tag)
    results = [_figures(saver) for saver in savers]
    by_name = {result["saver"]: result for result in results}
    ratios = {
        f"{backend}_{figure}_vs_langgraph": by_name[f"agentfold {backend}"][figure]
        / by_name[f"langgraph {backend}"][figure]
        for backend in ("sqlite", "postgres")
        for figure in ("bytes", "thread_bytes", "next_thread_bytes")
    }
    return {
        "steps": steps,
        "early_step": EARLY_STEP,
        "messages_per_step": 2,
        "savers": results,
        "ratios": ratios,
        "versions": {"agentfold": _version("agentfold"), **{name: _version(name) for name in PACKAGES}},
    }


def _prepare(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)


def _remove(workdir: Path, tag: str) -> None:
    for path in workdir.glob(f"*-{tag}.db*"):
        os.unlink(path)


def _async(function: Callable[[], int]) -> Callable[[], Any]:
    async def call() -> int:
        return function()

    return call


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
