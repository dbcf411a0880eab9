"""Hostile input at every entry point, on every backend: a typed error, an unchanged store, no secret printed.

Stream ids holding SQL or Lua metacharacters that are valid ids (quotes, `;`, `--`) must round-trip exactly: the
backends pass them as parameters, never as code. Everything else here must be refused with an error from
`agentfold.errors` before anything is written; `head_position` and a digest of `read_all` are compared before and
after each case. URLs carrying a password must never show it, in errors, in logs or on the terminal.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner

import agentfold
from agentfold import NO_STREAM, NewEvent, RecordedEvent
from agentfold.cli import main as cli
from agentfold.errors import (
    AgentfoldError,
    BlobTooLarge,
    EventTooLarge,
    InvalidEventData,
    InvalidEventType,
    InvalidExpectedVersion,
    InvalidInput,
    InvalidStreamId,
    InvalidURL,
    StoreUnavailable,
    WrongExpectedVersion,
)
from agentfold.store import EventStore
from tests.backends import AVAILABLE, PG_URL, REDIS_URL, Backend, run
from tests.servers import digest
from tests.test_conformance import _cyclic, _deep

SERVER_BACKENDS = [backend for backend in AVAILABLE if backend.name in ("postgres", "redis")]

SECRET = "s3cret-Pw-7f1c"

VALID_HOSTILE_IDS = [
    "'; DROP TABLE events; --",
    "\"]]) redis.call('FLUSHALL') --[[",
    "');DELETE FROM events WHERE ('1'='1",
    "a\"b'c`d",
    "semi;colon -- dash",
    "%s %(x)s $1 ?1 :name {s}",
    "back\\slash\\",
    "key*glob?[x]",
    "{hash}tag",
    "0-1",
    "${jndi:ldap://x}",
    "ünïcødé ✓ 漢字 🙂",
    "x" * 200,
]


def _deep_list(levels: int) -> dict[str, Any]:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return {"x": value}


async def drain(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


async def first_of_subscription(store: EventStore, **arguments: Any) -> None:
    async with store.subscribe(**arguments) as subscription:
        async for _ in subscription:
            return


async def handler(event: RecordedEvent) -> None:
    return None


class _Dict(dict[str, Any]):
    """A dict subclass: JSON is checked by exact type, so this is refused rather than stored as something else."""


class _Str(str):
    __slots__ = ()


class _Int(int):
    __slots__ = ()


Case = tuple[str, Callable[[EventStore], Awaitable[Any]], type[Exception]]

ok = [NewEvent("Fine", {})]

CASES: list[Case] = [
    # append: stream ids
    ("append NUL stream id", lambda s: s.append("a\x00b", ok), InvalidStreamId),
    ("append newline stream id", lambda s: s.append("a\nDEL x", ok), InvalidStreamId),
    ("append very long stream id", lambda s: s.append("x" * 100_000, ok), InvalidStreamId),
    ("append surrogate stream id", lambda s: s.append("bad\ud800id", ok), InvalidStreamId),
    ("append bidi override stream id", lambda s: s.append("abc\u202edef", ok), InvalidStreamId),
    ("append empty stream id", lambda s: s.append("", ok), InvalidStreamId),
    ("append bytes stream id", lambda s: s.append(b"bytes", ok), InvalidStreamId),  # type: ignore[arg-type]
    ("append int stream id", lambda s: s.append(42, ok), InvalidStreamId),  # type: ignore[arg-type]
    ("append None stream id", lambda s: s.append(None, ok), InvalidStreamId),  # type: ignore[arg-type]
    ("append list stream id", lambda s: s.append(["a"], ok), InvalidStreamId),  # type: ignore[arg-type]
    # append: events and payloads
    (
        "append huge payload",  # 3 MB in fields below the blob threshold: the event itself is too large
        lambda s: s.append("s", [NewEvent("Big", {str(index): "y" * 1000 for index in range(3000)})]),
        EventTooLarge,
    ),
    (
        "append a field above the blob limit",
        lambda s: s.append("s", [NewEvent("Big", {"x": "y" * (64 * 1024 * 1024)})]),
        BlobTooLarge,
    ),
    ("append 10,000-level dict", lambda s: s.append("s", [NewEvent("Deep", _deep(10_000))]), InvalidEventData),
    ("append 10,000-level list", lambda s: s.append("s", [NewEvent("Deep", _deep_list(10_000))]), InvalidEventData),
    ("append cyclic payload", lambda s: s.append("s", [NewEvent("Loop", _cyclic())]), InvalidEventData),
    ("append NaN", lambda s: s.append("s", [NewEvent("N", {"x": math.nan})]), InvalidEventData),
    ("append -Infinity", lambda s: s.append("s", [NewEvent("N", {"x": [-math.inf]})]), InvalidEventData),
    ("append surrogate in data", lambda s: s.append("s", [NewEvent("U", {"x": "\udcff"})]), InvalidEventData),
    ("append surrogate key", lambda s: s.append("s", [NewEvent("U", {"\ud800": 1})]), InvalidEventData),
    ("append int key", lambda s: s.append("s", [NewEvent("K", {1: 1})]), InvalidEventData),  # type: ignore[dict-item]
    ("append bytes value", lambda s: s.append("s", [NewEvent("B", {"b": b"\x00"})]), InvalidEventData),
    ("append object value", lambda s: s.append("s", [NewEvent("O", {"o": object()})]), InvalidEventData),
    ("append list data", lambda s: s.append("s", [NewEvent("L", [1])]), InvalidEventData),  # type: ignore[arg-type]
    ("append str metadata", lambda s: s.append("s", [NewEvent("M", {}, "meta")]), InvalidEventData),  # type: ignore[arg-type]
    ("append NaN metadata", lambda s: s.append("s", [NewEvent("M", {}, {"m": math.nan})]), InvalidEventData),
    ("append NUL event type", lambda s: s.append("s", [NewEvent("T\x00", {})]), InvalidEventType),
    ("append None event type", lambda s: s.append("s", [NewEvent(None, {})]), InvalidEventType),  # type: ignore[arg-type]
    ("append long event type", lambda s: s.append("s", [NewEvent("T" * 5000, {})]), InvalidEventType),
    ("append events None", lambda s: s.append("s", None), InvalidInput),  # type: ignore[arg-type]
    ("append events str", lambda s: s.append("s", "events"), InvalidInput),  # type: ignore[arg-type]
    ("append events dict", lambda s: s.append("s", {"type": "A"}), InvalidInput),  # type: ignore[arg-type]
    ("append events of dicts", lambda s: s.append("s", [{"type": "A"}]), InvalidInput),  # type: ignore[list-item]
    ("append empty events", lambda s: s.append("s", []), InvalidInput),
    # append: expected versions
    ("append expected -1", lambda s: s.append("s", ok, expected_version=-1), InvalidExpectedVersion),
    ("append expected 2**63", lambda s: s.append("s", ok, expected_version=2**63), InvalidExpectedVersion),
    ("append expected 10**100", lambda s: s.append("s", ok, expected_version=10**100), InvalidExpectedVersion),
    ("append expected str", lambda s: s.append("s", ok, expected_version="0"), InvalidExpectedVersion),  # type: ignore[arg-type]
    ("append expected float", lambda s: s.append("s", ok, expected_version=1.0), InvalidExpectedVersion),  # type: ignore[arg-type]
    ("append expected NaN", lambda s: s.append("s", ok, expected_version=math.nan), InvalidExpectedVersion),  # type: ignore[arg-type]
    ("append expected bool", lambda s: s.append("s", ok, expected_version=True), InvalidExpectedVersion),
    ("append expected None", lambda s: s.append("s", ok, expected_version=None), InvalidExpectedVersion),  # type: ignore[arg-type]
    ("append absurd expected", lambda s: s.append("victim", ok, expected_version=2**62), WrongExpectedVersion),
    (
        "append NO_STREAM to existing",
        lambda s: s.append("victim", ok, expected_version=NO_STREAM),
        WrongExpectedVersion,
    ),
    # append: subclasses of JSON types, once stored changed or raised a raw TypeError
    (
        "append OrderedDict with NaN",
        lambda s: s.append("s", [NewEvent("A", OrderedDict(x=math.nan))]),
        InvalidEventData,
    ),
    ("append OrderedDict int key", lambda s: s.append("s", [NewEvent("A", OrderedDict({1: 2}))]), InvalidEventData),
    ("append OrderedDict set", lambda s: s.append("s", [NewEvent("A", OrderedDict(x={1, 2}))]), InvalidEventData),
    ("append OrderedDict object", lambda s: s.append("s", [NewEvent("A", OrderedDict(o=object()))]), InvalidEventData),
    ("append plain dict subclass", lambda s: s.append("s", [NewEvent("A", _Dict(x=1))]), InvalidEventData),
    ("append nested dict subclass", lambda s: s.append("s", [NewEvent("A", {"x": _Dict(y=1)})]), InvalidEventData),
    ("append str subclass value", lambda s: s.append("s", [NewEvent("A", {"x": _Str("v")})]), InvalidEventData),
    ("append int subclass value", lambda s: s.append("s", [NewEvent("A", {"x": _Int(1)})]), InvalidEventData),
    ("append tuple value", lambda s: s.append("s", [NewEvent("A", {"x": (1, 2)})]), InvalidEventData),
    ("append set value", lambda s: s.append("s", [NewEvent("A", {"x": {1}})]), InvalidEventData),
    ("append 5000-digit int", lambda s: s.append("s", [NewEvent("A", {"x": 10**5000})]), InvalidEventData),
    (
        "append OrderedDict metadata with NaN",
        lambda s: s.append("s", [NewEvent("A", {}, OrderedDict(x=math.nan))]),
        InvalidEventData,
    ),
    (
        "append OrderedDict metadata int key",
        lambda s: s.append("s", [NewEvent("A", {}, OrderedDict({1: 2}))]),
        InvalidEventData,
    ),
    (
        "append OrderedDict metadata set",
        lambda s: s.append("s", [NewEvent("A", {}, OrderedDict(x={1}))]),
        InvalidEventData,
    ),
    (
        "append OrderedDict metadata object",
        lambda s: s.append("s", [NewEvent("A", {}, OrderedDict(o=object()))]),
        InvalidEventData,
    ),
    ("append str subclass stream id", lambda s: s.append(_Str("s"), ok), InvalidStreamId),
    ("append int subclass expected", lambda s: s.append("s", ok, expected_version=_Int(0)), InvalidExpectedVersion),
    # stream_version: checked like read_stream
    ("stream_version surrogate", lambda s: s.stream_version("x\ud800"), InvalidStreamId),
    ("stream_version None", lambda s: s.stream_version(None), InvalidStreamId),  # type: ignore[arg-type]
    ("stream_version int", lambda s: s.stream_version(42), InvalidStreamId),  # type: ignore[arg-type]
    ("stream_version NUL", lambda s: s.stream_version("a\x00b"), InvalidStreamId),
    ("stream_version empty", lambda s: s.stream_version(""), InvalidStreamId),
    ("stream_version long", lambda s: s.stream_version("v" * 201), InvalidStreamId),
    # wait_for_append
    ("wait_for_append after -1", lambda s: s.wait_for_append(-1, 0.01), InvalidInput),
    ("wait_for_append timeout NaN", lambda s: s.wait_for_append(0, math.nan), InvalidInput),
    ("wait_for_append timeout str", lambda s: s.wait_for_append(0, "1"), InvalidInput),  # type: ignore[arg-type]
    # read_stream
    ("read_stream NUL id", lambda s: drain(s.read_stream("a\x00")), InvalidStreamId),
    ("read_stream long id", lambda s: drain(s.read_stream("y" * 10_000)), InvalidStreamId),
    ("read_stream int id", lambda s: drain(s.read_stream(7)), InvalidStreamId),  # type: ignore[arg-type]
    ("read_stream after -1", lambda s: drain(s.read_stream("victim", after_version=-1)), InvalidInput),
    ("read_stream after str", lambda s: drain(s.read_stream("victim", after_version="1")), InvalidInput),  # type: ignore[arg-type]
    ("read_stream after 2**64", lambda s: drain(s.read_stream("victim", after_version=2**64)), InvalidInput),
    ("read_stream limit -1", lambda s: drain(s.read_stream("victim", limit=-1)), InvalidInput),
    ("read_stream limit float", lambda s: drain(s.read_stream("victim", limit=1.5)), InvalidInput),  # type: ignore[arg-type]
    # read_all
    ("read_all after -5", lambda s: drain(s.read_all(after_position=-5)), InvalidInput),
    ("read_all after 2**64", lambda s: drain(s.read_all(after_position=2**64)), InvalidInput),
    ("read_all after None", lambda s: drain(s.read_all(after_position=None)), InvalidInput),  # type: ignore[arg-type]
    ("read_all types str", lambda s: drain(s.read_all(types="Fine")), InvalidInput),
    ("read_all types NUL", lambda s: drain(s.read_all(types=["A\x00"])), InvalidEventType),
    ("read_all types None item", lambda s: drain(s.read_all(types=[None])), InvalidEventType),  # type: ignore[list-item]
    ("read_all prefix NUL", lambda s: drain(s.read_all(stream_prefix="a\x00")), InvalidStreamId),
    ("read_all prefix int", lambda s: drain(s.read_all(stream_prefix=5)), InvalidStreamId),  # type: ignore[arg-type]
    ("read_all limit -1", lambda s: drain(s.read_all(limit=-1)), InvalidInput),
    # subscribe
    ("subscribe after -1", lambda s: first_of_subscription(s, after_position=-1), InvalidInput),
    ("subscribe after 2**64", lambda s: first_of_subscription(s, after_position=2**64), InvalidInput),
    ("subscribe types str", lambda s: first_of_subscription(s, types="Fine"), InvalidInput),
    ("subscribe name NUL", lambda s: first_of_subscription(s, name="n\x00"), InvalidInput),
    ("subscribe name empty", lambda s: first_of_subscription(s, name=""), InvalidInput),
    ("subscribe name int", lambda s: first_of_subscription(s, name=3), InvalidInput),
    ("subscribe page_size -1", lambda s: first_of_subscription(s, page_size=-1), InvalidInput),
    ("subscribe page_size str", lambda s: first_of_subscription(s, page_size="9"), InvalidInput),
    # checkpoints
    ("save_checkpoint -1", lambda s: s.save_checkpoint("c", -1), InvalidInput),
    ("save_checkpoint NUL name", lambda s: s.save_checkpoint("c\x00", 1), InvalidInput),
    ("load_checkpoint None", lambda s: s.load_checkpoint(None), InvalidInput),  # type: ignore[arg-type]
]


def _group(**settings: Any) -> Callable[[EventStore], Awaitable[Any]]:
    async def join(store: EventStore) -> None:
        options = dict(settings)
        name = options.pop("name", "g")
        member_handler = options.pop("handler", handler)
        async with store.consumer_group(name, member_handler, **options):
            pass

    return join


def _projector(name: Any = "p", update: Any = None, **options: Any) -> Callable[[EventStore], Awaitable[Any]]:
    async def project(store: EventStore) -> None:
        projector = store.projector(name, update or (lambda handle, events: None), **options)
        await projector.catch_up()

    return project


CASES += [
    ("group name empty", _group(name=""), InvalidInput),
    ("group name NUL", _group(name="g\x00"), InvalidInput),
    ("group name int", _group(name=5), InvalidInput),
    ("group handler None", _group(handler=None), InvalidInput),
    ("group partitions str", _group(partitions="8"), InvalidInput),
    ("group partitions 0", _group(partitions=0), InvalidInput),
    ("group partitions huge", _group(partitions=10**9), InvalidInput),
    ("group lease NaN", _group(lease_seconds=math.nan), InvalidInput),
    ("group lease str", _group(lease_seconds="10"), InvalidInput),
    ("group max_attempts None", _group(max_attempts=None), InvalidInput),
    ("group types str", _group(types="Fine"), InvalidInput),
    ("group prefix NUL", _group(stream_prefix="p\x00"), InvalidInput),
    ("group unknown setting", _group(partitons=8), InvalidInput),
    ("group member id NUL", _group(member_id="m\x00"), InvalidInput),
    ("projector name None", _projector(name=None), InvalidInput),
    ("projector name NUL", _projector(name="p\x00"), InvalidInput),
    ("projector update None", lambda s: s.projector("p", None).catch_up(), InvalidInput),  # type: ignore[arg-type]
    ("projector types str", _projector(types="Fine"), InvalidInput),
    ("projector prefix NUL", _projector(stream_prefix="x\x00"), InvalidInput),
    ("projector page_size 0", _projector(page_size=0), InvalidInput),
    ("projector page_size str", _projector(page_size="5"), InvalidInput),
]


@pytest.fixture
async def seeded(store: EventStore) -> EventStore:
    await store.append("victim", [NewEvent("Seeded", {"n": 1})])
    return store


@pytest.mark.parametrize(("name", "call", "error"), CASES, ids=[name for name, _, _ in CASES])
async def test_hostile_python_calls_are_refused_and_change_nothing(
    seeded: EventStore, name: str, call: Callable[[EventStore], Awaitable[Any]], error: type[Exception]
) -> None:
    before = await digest(seeded)
    with pytest.raises(error) as raised:
        await asyncio.wait_for(call(seeded), 60)
    assert isinstance(raised.value, AgentfoldError), f"{type(raised.value).__name__} is not an agentfold error"
    assert str(raised.value), "an error must say what was wrong"
    assert await digest(seeded) == before


async def test_metacharacters_that_are_valid_ids_round_trip_exactly(store: EventStore) -> None:
    data = {
        "'; DROP TABLE events; --": '\x00 NUL and "quotes" and \\ backslash',
        "lua": "\"]]) redis.call('FLUSHALL') --[[",
        "json": '{"position": -1}',
        "nested": {"$where": "1 == 1", "list": ["\u2028", "\ufeff", "🙂"]},
    }
    written: dict[str, list[str]] = {}
    for stream_id in VALID_HOSTILE_IDS:
        result = await store.append(stream_id, [NewEvent(stream_id[:200], data, {"m": stream_id})], NO_STREAM)
        assert result.version == 1
        written[stream_id] = [stream_id]
    assert await store.head_position() == len(VALID_HOSTILE_IDS)
    for stream_id in VALID_HOSTILE_IDS:
        [event] = await drain(store.read_stream(stream_id))
        assert (event.stream_id, event.type, event.data, event.metadata) == (
            stream_id,
            stream_id,
            data,
            {"m": stream_id},
        )
        assert await store.stream_version(stream_id) == 1
        assert [e.stream_id for e in await drain(store.read_all(stream_prefix=stream_id))][:1] == [stream_id]
    everything = await drain(store.read_all())
    assert [event.stream_id for event in everything] == VALID_HOSTILE_IDS
    assert [event.stream_id for event in await drain(store.read_all(types=[VALID_HOSTILE_IDS[1]]))] == [
        VALID_HOSTILE_IDS[1]
    ]
    await store.save_checkpoint(VALID_HOSTILE_IDS[0], 3)
    assert await store.load_checkpoint(VALID_HOSTILE_IDS[0]) == 3


# -- URLs ---------------------------------------------------------------------------------------------------------


def with_password(url: str) -> str:
    """The same store URL with a user and the secret password in it (SQLite URLs have no place for one)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"agent:{SECRET}@{host}", parts.path, parts.query, parts.fragment))


def add_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


INJECTED_OPTIONS = [
    "schema=x;drop schema public cascade",
    "schema=x%22;drop%20table%20events;--",
    "prefix=a*",
    "prefix=a:b%0d%0aFLUSHALL",
    "options=-c%20statement_timeout%3D0",
    "options=-c%20default_transaction_read_only%3Doff",
    "unknown_option=1",
    "max_event_size=-1",
    "max_event_size=NaN",
    "busy_timeout=1e999",
    "synchronous=OFF",
    "timeout=inf",
    "pool_max=0",
    "mode=ro",
    "durability=none",
]


@pytest.mark.parametrize("query", INJECTED_OPTIONS)
async def test_urls_with_injected_options_are_refused_without_the_password(
    durable_url: str, query: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    store_url = durable_url  # memory:// takes no options
    caplog.set_level(logging.DEBUG)
    url = with_password(add_query(store_url, query))
    key = query.split("=", 1)[0]
    try:
        async with agentfold.connect(url) as opened:
            # A few options are valid for some backends; then the value must have been accepted as a value only.
            assert key in {"schema", "prefix", "max_event_size", "busy_timeout", "timeout", "pool_max", "synchronous"}
            await opened.append("s", ok)
            pytest.fail(f"{query!r} was accepted by {opened!r}")
    except (InvalidURL, InvalidInput) as error:
        shown = f"{error}\n{error!r}\n{''.join(traceback.format_exception(error))}"
        assert SECRET not in shown
    captured = capsys.readouterr()
    assert SECRET not in caplog.text + captured.out + captured.err


@pytest.mark.parametrize(
    "url", [None, 42, b"sqlite:///x.db", "", "sqlite", "://", "mysql://root@localhost/db"], ids=repr
)
async def test_urls_of_the_wrong_kind_are_refused(url: Any) -> None:
    with pytest.raises(InvalidURL):
        await agentfold.connect(url)


# Each (url, keyword options, the option or part the error must name) was once accepted, silently changed, or raised
# a driver's own exception.
REFUSED_URLS: list[tuple[str, dict[str, Any], str]] = [
    ("memory://?max_event_sise=10", {}, "max_event_sise"),
    ("memory://?max_event_size=-1", {}, "max_event_size"),
    ("memory://?max_event_size=abc", {}, "max_event_size"),
    ("memory://?max_event_size=1.5", {}, "max_event_size"),
    ("memory://", {"max_event_size": 1.5}, "max_event_size"),
    ("memory://", {"max_event_size": None}, "max_event_size"),
    ("memory://", {"max_event_size": True}, "max_event_size"),
    ("memory://", {"max_event_size": 10**30}, "max_event_size"),
    ("memory://somewhere", {}, "memory://"),
    (f"{REDIS_URL.split('?')[0].rsplit('/', 1)[0]}/99", {}, "database"),
    (f"{REDIS_URL.split('?')[0].rsplit('/', 1)[0]}/12345678901234567890", {}, "database"),
    ("redis://[::1/0", {}, "malformed"),
    ("redis://127.0.0.1:6379/0", {"prefix": None}, "prefix"),
    ("redis://127.0.0.1:6379/0", {"max_event_size": 1.5}, "max_event_size"),
    ("redis://127.0.0.1:6379/0", {"max_event_size": -1}, "max_event_size"),
    ("redis://127.0.0.1:6379/0", {"timeout": "soon"}, "timeout"),
    ("postgresql://postgres@[::1/postgres", {}, "malformed"),
    (f"{PG_URL.split('?')[0].rsplit('/', 1)[0]}/te%00st", {}, "NUL"),
    (PG_URL, {"max_event_size": 1.5}, "max_event_size"),
    (PG_URL, {"max_event_size": "abc"}, "max_event_size"),
    (PG_URL, {"schema": None}, "schema"),
    (PG_URL, {"pool_max": 10**6}, "pool_max"),
    (PG_URL, {"sslmode": None}, "sslmode"),
    ("sqlite:///x.db", {"max_event_size": "1.5"}, "max_event_size"),
    ("sqlite:///x.db", {"busy_timeout": 2**40}, "busy_timeout"),
    ("sqlite:///x.db", {"synchronous": None}, "synchronous"),
    ("sqlite:///x%00.db", {}, "NUL"),
]


@pytest.mark.parametrize(("url", "options", "named"), REFUSED_URLS, ids=[f"{u} {o}" for u, o, _ in REFUSED_URLS])
async def test_bad_urls_and_options_are_refused_naming_what_is_wrong(
    url: str, options: dict[str, Any], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a sqlite:/// URL that were accepted would create its file here
    with pytest.raises(InvalidURL, match=re.escape(named)):
        await agentfold.connect(url, **options)
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


@pytest.mark.parametrize("server_backend", SERVER_BACKENDS, ids=lambda backend: backend.name)
async def test_an_unreachable_server_never_shows_the_password(
    server_backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = urlsplit(server_backend.make_url(tmp_path))  # only server URLs carry a password
    caplog.set_level(logging.DEBUG)
    url = urlunsplit((parts.scheme, f"agent:{SECRET}@127.0.0.1:1", parts.path, parts.query, ""))
    with pytest.raises(StoreUnavailable) as raised:
        await agentfold.connect(
            add_query(url, "connect_timeout=2" if parts.scheme.startswith("postgres") else "timeout=2")
        )
    shown = f"{raised.value}\n{raised.value!r}\n{''.join(traceback.format_exception(raised.value))}"
    assert SECRET not in shown
    captured = capsys.readouterr()
    assert SECRET not in caplog.text + captured.out + captured.err


# -- the command line ---------------------------------------------------------------------------------------------


def cli_cases(store_url: str) -> list[tuple[str, list[str], int]]:
    """(name, arguments, exit code): 2 for a usage error (bad arguments, refused by click or by the store's
    checks) or a store that cannot be used, 1 for a run that does not exist or a failed command."""
    bad_secret_url = with_password(add_query(store_url, "prefix=a*&schema=x;drop&unknown=1"))
    unreachable = f"postgresql://agent:{SECRET}@127.0.0.1:1/db?connect_timeout=2"
    return [
        ("show hostile id", ["show", "--store", store_url, "'; DROP TABLE events; --"], 1),
        ("show NUL id", ["show", "--store", store_url, "wf\x00"], 2),
        ("show long id", ["show", "--store", store_url, "w" * 10_000], 2),
        ("show lua id", ["show", "--store", store_url, "\"]]) redis.call('FLUSHALL')"], 1),
        ("show bad url", ["show", "--store", bad_secret_url, "wf"], 2),
        ("show unreachable", ["show", "--store", unreachable, "wf"], 2),
        ("replay negative to", ["replay", "--store", store_url, "--to", "-5", "wf"], 2),
        ("replay absurd to", ["replay", "--store", store_url, "--to", str(2**70), "victim"], 1),
        ("replay hostile id", ["replay", "--store", store_url, "x'); DROP TABLE events; --"], 1),
        ("export bad format", ["export", "--store", store_url, "--format", "xml", "wf"], 2),
        ("export NUL id", ["export", "--store", store_url, "\x00"], 2),
        ("export bad url", ["export", "--store", bad_secret_url, "wf"], 2),
        ("tail negative after", ["tail", "--store", store_url, "--after", "-1"], 2),
        ("tail NUL type", ["tail", "--store", store_url, "--type", "A\x00"], 2),
        ("tail NUL prefix", ["tail", "--store", store_url, "--stream-prefix", "p\x00"], 2),
        ("tail absurd after", ["tail", "--store", store_url, "--after", str(2**70)], 2),
        ("tail bad url", ["tail", "--store", bad_secret_url], 2),
        ("stats bad url", ["stats", "--store", bad_secret_url], 2),
        ("stats unreachable", ["stats", "--store", unreachable], 2),
        ("stats unknown scheme", ["stats", "--store", f"mysql://root:{SECRET}@db/x"], 2),
        ("relay bad target", ["relay", "--from", store_url, "--to", bad_secret_url, "--once"], 1),
        ("relay bad source", ["relay", "--from", bad_secret_url, "--to", "redis://127.0.0.1:1/0", "--once"], 1),
        ("relay zero batch", ["relay", "--from", store_url, "--to", "redis://x", "--batch-size", "0"], 2),
        ("bench unknown backend", ["bench", "--backend", "oracle"], 2),
        ("bench bad url", ["bench", "--backend", "postgres", "--quick", "--url", unreachable], 1),
    ]


def test_hostile_command_lines_fail_cleanly_and_change_nothing(
    durable_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store_url = durable_url  # a memory:// store lives in one process: each command would see an empty one
    caplog.set_level(logging.DEBUG)

    async def seed_and_digest() -> tuple[int, str]:
        async with agentfold.connect(store_url) as store:
            if await store.head_position() == 0:
                await store.append("victim", [NewEvent("Seeded", {})])
            return await digest(store)

    before = run(seed_and_digest())
    runner = CliRunner()
    failures: list[str] = []
    for name, arguments, code in cli_cases(store_url):
        result = runner.invoke(cli, arguments, catch_exceptions=True)
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            formatted = "".join(traceback.format_exception(result.exception))
            failures.append(f"{name}: raised {type(result.exception).__name__}: {formatted[-1500:]}")
            continue
        if result.exit_code != code:
            failures.append(f"{name}: exit {result.exit_code}, expected {code}: {output[-500:]!r}")
        if "Traceback" in output:
            failures.append(f"{name}: printed a traceback")
        if SECRET in output:
            failures.append(f"{name}: printed the password")
    assert SECRET not in caplog.text
    assert not failures, "\n".join(failures)
    assert run(seed_and_digest()) == before
