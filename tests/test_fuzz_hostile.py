"""Every public entry point, called with hostile values of every kind, on every backend.

Each call must succeed or raise an error from `agentfold.errors` (never another type), must return within a bound
(never hang), and a refused call must leave the store's log as it was. The values are wrong types, subclasses of the
right types, surrogates, NUL and control characters, huge and deeply nested values, non-finite floats, non-string
keys, negative, huge and boolean numbers, and malformed URLs and options.

`make test` runs a bounded number of examples per entry point; set AGENTFOLD_FUZZ_EXAMPLES (e.g. 5000) to run
longer.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentfold
from agentfold import NewEvent
from agentfold.errors import AgentfoldError
from agentfold.events import ANY, NO_STREAM, STREAM_EXISTS
from agentfold.runtime import Runtime, WorkflowContext
from agentfold.shared import SharedStream
from agentfold.store import EventStore
from tests.servers import digest

EXAMPLES = int(os.environ.get("AGENTFOLD_FUZZ_EXAMPLES", "12"))
CALL_BOUND_SECONDS = 20.0

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 12,  # the bounded run is the same every time; longer runs explore
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


class SubDict(dict[str, Any]):
    pass


class SubStr(str):
    __slots__ = ()


class SubInt(int):
    __slots__ = ()


class SubFloat(float):
    __slots__ = ()


class SubList(list[Any]):
    pass


class Opaque:
    """An object no JSON encoder knows."""


def _deep(levels: int, leaf: Any) -> Any:
    value = leaf
    for index in range(levels):
        value = {"d": value} if index % 2 else [value]
    return value


hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "x\ud800",
            "\udcff",
            "\n",
            "\u202e",
            "\ufeff",
            " ",
            "x" * 201,
            "'; DROP TABLE events; --",
            "\"]]) redis.call('FLUSHALL') --[[",
            "%00",
            "{s}",
        ]
    ),
    st.builds(SubStr, st.text(min_size=1, max_size=10)),
    st.builds(str.__mul__, st.just("y"), st.just(100_000)),
)

hostile_numbers = st.one_of(
    st.sampled_from([0, 1, -1, 2**31, 2**62, 2**62 + 1, 2**63, 2**64, -(2**63), 10**100, True, False]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1.5, 1e308]),
    st.builds(SubInt, st.integers(0, 10)),
    st.builds(SubFloat, st.floats(allow_nan=False)),
)

hostile_scalars = st.one_of(
    st.none(),
    hostile_numbers,
    hostile_text,
    st.binary(max_size=10),
    st.sampled_from([object(), Opaque(), uuid.uuid4(), ANY, NO_STREAM, Ellipsis, print]),
    st.builds(pow, st.just(10), st.just(5000)),  # too long to turn into text
    st.builds(set, st.lists(st.integers(), max_size=3)),
    st.builds(tuple, st.lists(st.integers(), max_size=3)),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(max_size=8), hostile_text, st.integers(), st.none(), st.booleans(), st.floats())
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
        st.dictionaries(keys, children, max_size=3),
        st.builds(OrderedDict, st.dictionaries(keys, children, max_size=3)),
        st.builds(SubDict, st.dictionaries(st.text(max_size=5), children, max_size=3)),
        st.builds(SubList, st.lists(children, max_size=3)),
        st.builds(lambda d: defaultdict(int, d), st.dictionaries(st.text(max_size=5), children, max_size=3)),
    )


hostile_values = st.recursive(hostile_scalars, _containers, max_leaves=12)

hostile_json = st.one_of(
    hostile_values,
    st.builds(_deep, st.sampled_from([99, 100, 101, 5000]), hostile_scalars),
    st.builds(lambda value: {"nested": value}, hostile_values),
)

hostile_ids = st.one_of(hostile_text, hostile_scalars, st.just("fuzzed"), st.just("victim"))
hostile_counts = st.one_of(hostile_numbers, hostile_scalars)
hostile_types = st.one_of(
    st.none(), hostile_text, st.lists(hostile_ids, max_size=3), st.builds(tuple, st.lists(hostile_text, max_size=2))
)


@st.composite
def hostile_new_event(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["event", "event", "event", "other"]))
    if kind == "other":
        return draw(hostile_values)
    arguments: dict[str, Any] = {
        "type": draw(st.one_of(st.just("Fuzzed"), hostile_ids)),
        "data": draw(st.one_of(st.just({}), hostile_json)),
        "metadata": draw(st.one_of(st.none(), hostile_json)),
    }
    if draw(st.booleans()):
        arguments["id"] = draw(st.one_of(st.uuids(), hostile_scalars))
    try:
        return NewEvent(**arguments)
    except AgentfoldError:
        return NewEvent("Fuzzed", {"made": "after a refused id"})


hostile_events = st.one_of(
    st.lists(hostile_new_event(), max_size=3),
    st.builds(tuple, st.lists(hostile_new_event(), max_size=2)),
    hostile_scalars,
    hostile_new_event(),
)
hostile_expected = st.one_of(st.sampled_from([ANY, NO_STREAM, STREAM_EXISTS]), hostile_counts)


async def _drain(iterator: Any) -> None:
    async for _ in iterator:
        pass


async def _handler(event: Any) -> None:
    return None


def _update(handle: Any, events: Any) -> None:
    return None


EntryPoint = Callable[[EventStore, st.DataObject], Awaitable[Any]]


async def call_append(store: EventStore, data: st.DataObject) -> Any:
    return await store.append(data.draw(hostile_ids), data.draw(hostile_events), data.draw(hostile_expected))


async def call_read_stream(store: EventStore, data: st.DataObject) -> Any:
    await _drain(store.read_stream(data.draw(hostile_ids), data.draw(hostile_counts), data.draw(hostile_counts)))


async def call_read_stream_pages(store: EventStore, data: st.DataObject) -> Any:
    await _drain(store.read_stream_pages(data.draw(hostile_ids), data.draw(hostile_counts), data.draw(hostile_counts)))


async def call_read_all(store: EventStore, data: st.DataObject) -> Any:
    await _drain(
        store.read_all(
            data.draw(hostile_counts), data.draw(hostile_types), data.draw(hostile_ids), data.draw(hostile_counts)
        )
    )


async def call_stream_version(store: EventStore, data: st.DataObject) -> Any:
    return await store.stream_version(data.draw(hostile_ids))


async def call_subscribe(store: EventStore, data: st.DataObject) -> Any:
    subscription = store.subscribe(
        data.draw(hostile_counts),
        data.draw(hostile_types),
        data.draw(hostile_ids),
        data.draw(st.one_of(st.none(), hostile_ids)),
        data.draw(st.one_of(st.none(), hostile_counts)),
    )
    await subscription.close()


async def call_consumer_group(store: EventStore, data: st.DataObject) -> Any:
    setting_names = st.sampled_from(
        ["partitions", "lease_seconds", "max_attempts", "types", "stream_prefix", "page_size", "bogus"]
    )
    settings_given = data.draw(st.dictionaries(setting_names, hostile_values, max_size=3))
    store.consumer_group(
        data.draw(hostile_ids),
        data.draw(st.one_of(st.just(_handler), hostile_scalars)),
        data.draw(st.one_of(st.none(), hostile_ids)),
        **settings_given,
    )


async def call_projector(store: EventStore, data: st.DataObject) -> Any:
    store.projector(
        data.draw(hostile_ids),
        data.draw(st.one_of(st.just(_update), hostile_scalars)),
        data.draw(hostile_types),
        data.draw(st.one_of(st.none(), hostile_ids)),
        data.draw(hostile_counts),
    )


async def call_checkpoints(store: EventStore, data: st.DataObject) -> Any:
    name = data.draw(hostile_ids)
    if data.draw(st.booleans()):
        return await store.load_checkpoint(name)
    return await store.save_checkpoint(name, data.draw(hostile_counts))


async def call_wait_for_append(store: EventStore, data: st.DataObject) -> Any:
    # Valid timeouts are kept short: a long valid wait is no hang, only slow.
    timeout = data.draw(st.one_of(hostile_scalars, st.floats(-1, 0.05), st.sampled_from([math.nan, math.inf, -1])))
    if type(timeout) in (int, float) and timeout > 0.05:
        timeout = 0.05
    return await store.wait_for_append(data.draw(hostile_counts), timeout)


async def call_shared_stream(store: EventStore, data: st.DataObject) -> Any:
    shared = SharedStream(
        store, data.draw(st.one_of(st.just("shared"), hostile_ids)), data.draw(st.one_of(st.just("a"), hostile_ids))
    )
    key = data.draw(st.one_of(st.just("k"), hostile_ids))
    op_id = data.draw(st.one_of(st.none(), st.uuids(), hostile_scalars))
    method = data.draw(st.sampled_from(["increment", "decrement", "assign", "put", "delete", "add", "write"]))
    if method in ("increment", "decrement"):
        return await getattr(shared, method)(key, data.draw(hostile_counts), op_id)
    if method in ("put", "delete"):
        field = data.draw(st.one_of(st.just("f"), hostile_ids))
        if method == "delete":
            return await shared.delete(key, field, op_id)
        return await shared.put(key, field, data.draw(hostile_json), op_id)
    return await getattr(shared, method)(key, data.draw(hostile_json), op_id)


_RUNTIME = Runtime()


@_RUNTIME.workflow
async def fuzzed_workflow(ctx: WorkflowContext, value: Any = None) -> Any:
    return value


async def call_runtime_client(store: EventStore, data: st.DataObject) -> Any:
    client = _RUNTIME.client(store)
    workflow_id = data.draw(st.one_of(st.just("run-1"), hostile_ids))
    action = data.draw(st.sampled_from(["start", "signal", "state", "cancel", "history"]))
    if action == "start":
        workflow = data.draw(st.one_of(st.just(fuzzed_workflow), st.just("fuzzed_workflow"), hostile_ids))
        arguments = data.draw(st.lists(hostile_json, max_size=2))
        return await client.start(workflow, *arguments, workflow_id=workflow_id)
    if action == "signal":
        signal_id = data.draw(st.one_of(st.none(), hostile_scalars))
        return await client.signal(workflow_id, data.draw(hostile_ids), data.draw(hostile_json), signal_id=signal_id)
    if action == "cancel":
        return await client.cancel(workflow_id, data.draw(hostile_text))
    return await getattr(client, action)(workflow_id)


ENTRY_POINTS: dict[str, EntryPoint] = {
    "append": call_append,
    "read_stream": call_read_stream,
    "read_stream_pages": call_read_stream_pages,
    "read_all": call_read_all,
    "stream_version": call_stream_version,
    "subscribe": call_subscribe,
    "consumer_group": call_consumer_group,
    "projector": call_projector,
    "checkpoints": call_checkpoints,
    "wait_for_append": call_wait_for_append,
    "shared_stream": call_shared_stream,
    "runtime_client": call_runtime_client,
}


async def assert_typed_and_unchanged_on_refusal(store: EventStore, call: Callable[[], Awaitable[Any]]) -> None:
    before = await digest(store)
    try:
        await asyncio.wait_for(call(), CALL_BOUND_SECONDS)
    except AgentfoldError:
        assert await digest(store) == before, "a refused call changed the log"
    except TimeoutError:
        pytest.fail(f"the call did not return within {CALL_BOUND_SECONDS} s")


@pytest.fixture
async def seeded(store: EventStore) -> EventStore:
    await store.append("victim", [NewEvent("Seeded", {"n": 1})])
    return store


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
@FUZZ_SETTINGS
@given(data=st.data())
async def test_hostile_calls_raise_agentfold_errors_and_refusals_change_nothing(
    seeded: EventStore, entry_point: str, data: st.DataObject
) -> None:
    await assert_typed_and_unchanged_on_refusal(seeded, lambda: ENTRY_POINTS[entry_point](seeded, data))


# -- URLs and options ---------------------------------------------------------------------------------------------

OPTION_NAMES = [
    "max_event_size",
    "synchronous",
    "busy_timeout",
    "read_cache_mb",
    "write_cache_mb",
    "timeout",
    "durability",
    "pool_max",
    "lock_timeout",
    "statement_timeout",
    "connect_timeout",
    "pool_timeout",
    "sslmode",
    "application_name",
    "bogus",
    "max_event_sise",
]

# "schema" and "prefix" are never fuzzed: the test's own stays in every URL, and a fuzzed valid name would create one.
hostile_option_values = st.one_of(hostile_values, st.builds(str, hostile_numbers))


@st.composite
def hostile_urls(draw: st.DrawFn, store_url: str) -> str:
    """`store_url` with a hostile piece in it; hosts stay on the loopback address, so nothing leaves the machine."""
    scheme, _, rest = store_url.partition("://")
    piece = draw(st.one_of(hostile_text, st.builds(str, hostile_numbers)))
    if scheme == "sqlite":  # a fuzzed file name stays in the test's own directory
        piece = piece.replace("/", "_").replace("\\", "_").replace("..", "__")
    quoted = quote(piece, safe="", errors="surrogatepass") if draw(st.booleans()) else piece
    choice = draw(st.sampled_from(["query", "path", "port", "bracket", "scheme", "whole", "percent"]))
    if choice == "query":
        name = draw(st.sampled_from(OPTION_NAMES))
        return f"{store_url}&{name}={quoted}" if "?" in store_url else f"{store_url}?{name}={quoted}"
    if choice == "path":
        base, _, query = rest.partition("?")
        head = base.rsplit("/", 1)[0]
        return f"{scheme}://{head}/{quoted}{'?' + query if query else ''}"
    if choice == "port":
        return f"{scheme}://127.0.0.1:{quoted}/x"
    if choice == "bracket":
        return f"{scheme}://[::1{quoted}/0"
    if choice == "scheme":
        return f"{piece}://{rest}"
    if choice == "percent":
        return f"{store_url.split('?')[0]}%00{quoted}"
    return piece


async def _open_and_close(url: Any, options: dict[str, Any]) -> None:
    store = await agentfold.connect(url, **options)
    await store.close()


@FUZZ_SETTINGS
@given(data=st.data())
async def test_hostile_urls_and_options_are_refused_with_agentfold_errors(
    store_url: str, data: st.DataObject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative sqlite:/// path lands here
    url = data.draw(st.one_of(hostile_urls(store_url), st.just(store_url), hostile_scalars))
    options = data.draw(st.dictionaries(st.sampled_from(OPTION_NAMES), hostile_option_values, max_size=3))
    if isinstance(url, str) and url.startswith("postgres"):
        options["connect_timeout"] = 2  # a fuzzed database or port fails fast
    try:
        await asyncio.wait_for(_open_and_close(url, options), CALL_BOUND_SECONDS)
    except AgentfoldError:
        pass
    except TimeoutError:
        pytest.fail(f"connect({url!r}, {options!r}) did not return within {CALL_BOUND_SECONDS} s")
