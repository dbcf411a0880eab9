"""`redis://host:port/db?prefix=NAME`: an event store in Redis Streams.

Layout 2 (every store created since it came), every key under ``{prefix}:`` and nothing else in the database
touched:

- ``{prefix}:s:{stream_id}``: a list of the stream's events, element i version i + 1 (trimmed ones empty strings);
- ``{prefix}:versions``: a hash, stream id -> the stream's version (trimming does not change it);
- ``{prefix}:all``: every event in global order, a Redis stream, entry id ``0-<position>``;
- ``{prefix}:head``: the global position counter;
- ``{prefix}:ids``: the string `LAYOUT_MARKER`; ``{prefix}:idx``: a hash, event id (the UUID's 16 bytes) ->
  ``"version batch_first batch_last position stream_id"``;
- ``{prefix}:trimmed``: a hash, stream id -> how many trimmed versions lead its list;
- ``{prefix}:snap:{stream_id}``: a hash, snapshot name -> ``"version " + state``;
- ``{prefix}:checkpoints``: a hash, subscriber name -> position;
- ``{prefix}:blobs``: a hash, digest -> a blob's content (`agentfold.blobs`); ``{prefix}:blobrefs``: digest -> how
  many events refer to it; ``{prefix}:blobbytes``: the bytes of all blobs; ``{prefix}:blobevents``: position -> the
  digests its event refers to, which the trim script reads to release them;
- ``{prefix}:runs``: a hash, workflow id -> its workflow, one field per open run (`agentfold.openruns`);
  ``{prefix}:holders``: workflow id -> the worker holding it; ``{prefix}:runsat``: the position both are as of;
- ``{prefix}:cat:{category}``: a category index, a Redis stream whose entry ids ``0-<position>`` are the positions of
  the category's events (`indexed_category`: agentfold's own ``$``-categories only); ``{prefix}:cats``: a set of
  the index keys; ``{prefix}:catsat``: the position the indexes are as of;
- ``{prefix}:type:{type}``: a type index, the same kind of Redis stream, of the positions of every event of the type;
  ``{prefix}:types``: a set of the index keys; ``{prefix}:typesat``: the position the indexes are as of.

Each event is the JSON array ``[version, position, recorded_at_us, stream_id, type, id, data, metadata]``, the same
bytes in its stream's list and in the global stream's entry (field ``e``). A read is one ``LRANGE`` (a stream) or
one ``XRANGE`` (the global log) per page, its reply taken as the parser gives it (hiredis, in C; no per-entry
conversion in Python), and the page's records are joined into one JSON array that one msgspec call decodes.

Layout 1, kept by stores created before layout 2: each stream is a Redis stream, entry id ``0-<version>``, with
the same JSON in field ``e`` and the blob digests in field ``b``; ``{prefix}:ids`` is the id hash, keyed by the id's
text. A Redis stream allocates 4 KB for its newest node, which every stream key kept (docs/redis.md, "Where the
bytes go"). Scripts and readers tell the layouts apart by the type of ``{prefix}:ids``.

Every append runs inside one Lua script (`APPEND_SCRIPT`): the id lookup, the expected-version check and all writes,
blobs and their reference counts and the open runs included, happen in one step no other client can interleave.
Concurrent appends from one process are sent together: the script takes several independent appends per call and
answers each on its own, so 16 writers cost one round trip.

The open runs are always `agentfold.openruns.fold` of the log up to ``{prefix}:runsat``. An older agentfold appends
without keeping them (only another type for ``{prefix}:head``, the one key of ours its script reads before it
writes, would make it refuse, and every older reader with it), and a store that had events before has no
``runsat``: appends then keep nothing until a reader folds the events after ``runsat`` on top and writes the rows
back (`RedisBackend.open_runs`, and `open_store` for a store that had events before).

The category indexes follow the same rules with ``{prefix}:catsat``: the append script adds positions only while
it is the head, a filtered read uses an index up to ``catsat`` and scans the global stream after it (exact either
way), and `open_store` and `agentfold reindex` catch them up from the log
(`RedisBackend.catch_up_category_indexes`). So do the type indexes with ``{prefix}:typesat``, by the same code
(`_IndexKind`): a read filtered by types merges the first positions of each type's index in one script
(`READ_TYPES_SCRIPT`), as SQLite's and PostgreSQL's type indexes serve it.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, cast
from urllib.parse import urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection as Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agentfold import openruns
from agentfold.appending import IdRecord, Outcome, find_retry, render_outcome_codes
from agentfold.backend import (
    DEFAULT_PAGE_SIZE,
    RecordDecoder,
    RecordPage,
    apply_then,
    prefix_category,
    read_pages,
    stream_category,
)
from agentfold.blobs import DEFAULT_BLOB_THRESHOLD, DEFAULT_MAX_BLOB_SIZE, BlobUsage
from agentfold.committer import GroupCommitter
from agentfold.encoding import EncodedEvent
from agentfold.errors import (
    AgentfoldError,
    InvalidURL,
    StoreCorrupted,
    StoreFull,
    StoreNotFound,
    StoreReadOnly,
    StoreTimeout,
    StoreUnavailable,
    WrongExpectedVersion,
)
from agentfold.events import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, ExpectedVersion, RecordedEvent
from agentfold.options import BLOB_THRESHOLD, MAX_BLOB_SIZE, MAX_EVENT_SIZE, Option, parse_options, redact, split_url
from agentfold.store import EventStore
from agentfold.validation import MAX_VERSION
from agentfold.wakeup import Broadcast

T = TypeVar("T")

Durability = Literal["server", "waitaof"]
DURABILITIES: Final = ("server", "waitaof")
DEFAULT_PREFIX: Final = "agentfold"
DEFAULT_TIMEOUT: Final = 10.0
WAITAOF_MIN_VERSION: Final = (7, 2)
MIN_VERSION: Final = (7, 0)
_PREFIX_PATTERN: Final = re.compile(r"[A-Za-z0-9_.{}\-]{1,100}")
OPTIONS: Final = (
    Option(
        "prefix",
        str,
        DEFAULT_PREFIX,
        pattern=_PREFIX_PATTERN,
        meaning="1 to 100 characters of letters, digits, '_', '.', '-', '{' or '}'",
    ),
    Option("durability", str, "server", choices=DURABILITIES),
    MAX_EVENT_SIZE,
    Option("timeout", float, DEFAULT_TIMEOUT, minimum=0.001, maximum=86400.0),
    BLOB_THRESHOLD,
    MAX_BLOB_SIZE,
)
"""What `redis://` accepts, in its query or as keywords (see `open_store`)."""

# How many appends, and how many events, one script call may carry: bounds the time the server spends in one call.
_MAX_APPENDS_PER_CALL: Final = 256
_MAX_EVENTS_PER_CALL: Final = 4096
_BLOB_WEIGHT: Final = 16384
"""Blob bytes that weigh as much as one event against `_MAX_EVENTS_PER_CALL`: about 64 MB of blobs per call."""
_TRIM_PAGE: Final = 1000
_FOLD_PAGE: Final = 1000
"""Entries of the global stream per read while folding the open runs from the log."""
_CATCH_UP_ROUNDS: Final = 8
"""At most how many times a catch-up of the open runs reads on when appends that did not keep them (an older
agentfold's, or any while the rows were behind) moved the head meanwhile; the next reader goes on from there."""
_SENDERS: Final = 2
_PACKED_STREAMS: Final = 4096
_WATCH_BLOCK_MS: Final = 1000
_WATCH_RETRY_SECONDS: Final = 0.1

# KEYS: head, all, ids, versions, blobs, blobrefs, blobbytes, idx, blobevents, runs, holders, runsat, catsat,
# cats, typesat, types, then each append's stream key, then each append's category index key (`indexed_category`;
# "" when the stream's category has none), then each event's type index key (``{prefix}:type:{type}``), the
# events of all appends in order.
# ARGV: number of appends, then for each append: stream id, expected version ("any", "no_stream", "exists" or a
# number), event count, then per event: its id packed (`packed_id`, the key in `idx`), its id as text (the key in
# the `ids` hash of a layout-1 store), the JSON tail of its entry (`stream_id,type,id,data,metadata]`) and the
# digests of its blobs (space-separated, empty when none), then the append's blob count and per blob: digest,
# content, then its open-run change count and per change (`run_change_arguments`): kind, workflow id, value.
# Reply, one line per append, led by its `Outcome` code: "0 version position" written; "1 current_version" wrong
# expected version (nothing written); "2" some id already recorded (nothing written), followed by one line per
# event: its record or "-" (the caller tells a retry from a duplicate). Record lines cannot hold a newline: stream
# ids are printable.
#
# The appends of one call are applied one after the other, each checked against the state the previous ones left
# (ids written earlier in the call are in `fresh`, versions in `versions`). Counters, versions and id records are
# read once and written once per call; only the two XADDs are per event. Nothing is written before every check of
# an append passed, and no command after the checks can fail on data agentfold wrote.
#
# The open runs (`agentfold.openruns`): the client computes each append's changes with `openruns.changes`; the
# script applies them (`_APPLY_RUN_CHANGES`) to `runs` and `holders` right after the append's events, in position
# order, only when the append is written and only while the rows are as of the head (`runsat` equals the head
# before the call: no older agentfold appended without keeping them). Then `runsat` moves with the head. The types
# of `runs` and `holders` are checked before anything is written, so applying a change cannot fail half-way.
#
# The category indexes (`indexed_category`): each written event of an indexed category has its position added to
# its category's index (``XADD <index> 0-<position>``) right after its global entry, only while the indexes are as
# of the head (`catsat` equals the head before the call); then `catsat` moves with the head, and each index key
# written is in `cats`. Their types are checked before anything is written, like those of the open runs. The type
# indexes follow the same rules with `typesat` and `types`: every written event's position is added to the index
# of its type (``XADD {prefix}:type:{type} 0-<position>``) while `typesat` equals the head before the call.
LAYOUT_MARKER: Final = "agentfold layout 2: streams are lists, event ids packed in idx"
"""What ``{prefix}:ids`` holds in a store created with layout 2 (streams as lists, packed ids): a string, which
older agentfold refuses (WRONGTYPE) before it writes anything."""


INDEXED_CATEGORY_LEAD: Final = "$"
"""The first character of the stream categories whose positions are indexed (`indexed_category`)."""


def indexed_category(category: str) -> bool:
    """Whether events of stream `category` (`agentfold.backend.stream_category`) have their positions kept in a
    category index, ``{prefix}:cat:{category}``, that filtered reads of that category read instead of the log.

    Only the categories of agentfold's own bookkeeping streams (``$worker-``, ``$breaker-``, ``$group-``...) are:
    they are few among the events and trimmed, so their index costs what they hold, and a worker's start reads the
    workers' streams (``$worker-``) through it instead of walking the whole log. Domain and ``workflow-`` streams,
    most of a log, have none: their index would cost a stream entry per event (docs/redis.md) for reads that return
    most of what they scan anyway, and each index key holds a stream's first node (about 4.7 KB) however few its
    entries, while a store's categories can be as many as its users (``user42-...``)."""
    return category.startswith(INDEXED_CATEGORY_LEAD) and category.endswith("-")


def packed_id(event_id: str) -> bytes:
    """The key of an event id in the ``idx`` hash: the UUID's 16 bytes (`EncodedEvent.id` is a UUID's canonical
    text), where the text takes 36 and a size class of Redis's allocator more."""
    return bytes.fromhex(event_id.replace("-", ""))


_APPLY_RUN_CHANGES: Final = """local function apply_run_changes(runs_key, holders_key, at)
  local count = tonumber(ARGV[at])
  for c = 1, count do
    local kind, run, value = ARGV[at + 3 * c - 2], ARGV[at + 3 * c - 1], ARGV[at + 3 * c]
    if kind == 'o' then
      redis.call('HSET', runs_key, run, value)
      redis.call('HDEL', holders_key, run)
    elseif kind == 'c' then
      redis.call('HDEL', runs_key, run)
      redis.call('HDEL', holders_key, run)
    elseif redis.call('HEXISTS', runs_key, run) == 1 then
      if kind == 'h' then redis.call('HSET', holders_key, run, value) else redis.call('HDEL', holders_key, run) end
    end
  end
  return at + 1 + 3 * count
end"""
"""Apply the open-run changes at ``ARGV[at]`` (a count, then per change: kind, workflow id, value; see
`run_change_arguments`) to the ``runs`` and ``holders`` hashes, in order; return the index after them. The rules
are `agentfold.openruns`'s, applied by the client's `changes`: this only carries out OPEN, CLOSE and HOLD."""

_CHECK_INDEX: Final = """local function wrong_type(key, wanted, what)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= wanted and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. kind .. ', not ' .. what), kind
  end
  return nil, kind
end
local function check_index(key, at)
  local refused, kind = wrong_type(key, 'stream', 'a position index')
  if refused or kind == 'none' then return refused, false end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' and tonumber(string.match(info[i + 1], '%-(%d+)$')) > at then
      return redis.error_reply('CORRUPTED ' .. key .. ' holds positions past the ones indexed, which agentfold ' ..
        'never writes: `agentfold reindex` builds it again'), true
    end
  end
  return nil, true
end"""
"""`wrong_type`: an error reply unless `key` is absent or of the Redis type `wanted` (and the type found), before a
script writes to it.
`check_index`: the check of a position index (a category's or a type's) before a script adds positions after `at`
to it: an error reply, or nil when the key is absent or a Redis stream whose ids all stayed at or below `at` (so
that the additions cannot fail); and whether the key exists (one that does is already in its set of index keys)."""

RUN_OPENED: Final = b"o"
RUN_CLOSED: Final = b"c"
RUN_HELD: Final = b"h"
RUN_FREED: Final = b"f"
_KINDS: Final = {openruns.OPEN: RUN_OPENED, openruns.CLOSE: RUN_CLOSED}


def run_change_arguments(found: Sequence[openruns.Change]) -> list[bytes]:
    """The script arguments of open-run changes: their count, then per change its kind (``o`` opened under the
    workflow in value, ``c`` closed, ``h`` held by the worker in value, ``f`` held by nobody), workflow id, value."""
    arguments = [b"%d" % len(found)]
    for change in found:
        if change.kind == openruns.HOLD:
            kind = RUN_FREED if change.owner is None else RUN_HELD
            value = (change.owner or "").encode()
        else:
            kind = _KINDS[change.kind]
            value = (change.workflow or "").encode() if change.kind == openruns.OPEN else b""
        arguments += (kind, change.workflow_id.encode(), value)
    return arguments


def rows_as_changes(runs: dict[str, openruns.OpenRun]) -> list[openruns.Change]:
    """The changes that build `runs` on empty rows: each run opened, then held by its holder if it has one."""
    found: list[openruns.Change] = []
    for run in runs.values():
        found.append(openruns.Change(openruns.OPEN, run.workflow_id, workflow=run.workflow))
        if run.owner is not None:
            found.append(openruns.Change(openruns.HOLD, run.workflow_id, owner=run.owner))
    return found


APPEND_SCRIPT: Final = (
    render_outcome_codes("""#!lua
local head_key, all_key, ids_key, versions_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local blobs_key, refs_key, bytes_key, packed_ids_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local blob_events_key, runs_key, holders_key, runs_at_key = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local index_at_key, index_keys_key, types_at_key, type_keys_key = KEYS[13], KEYS[14], KEYS[15], KEYS[16]
local fmt, unpack = string.format, unpack
local appends = tonumber(ARGV[1])
-- The layout: a store created before layout 2 has its id records in the `ids` hash under the text id and each
-- stream's events in a Redis stream; a store created since has the marker string in `ids` (which an older
-- script's HMGET refuses with WRONGTYPE before it writes anything), its id records in `idx` under the packed id,
-- each stream's events in a list (element i is version i + 1) and the digests of an event's blobs in
-- `blobevents` under its position.
local ids_type = redis.call('TYPE', ids_key)['ok']
local lists = ids_type ~= 'hash'
local records_key = lists and packed_ids_key or ids_key

local function hmget(key, fields)
  local values = {}
  for start = 1, #fields, 1000 do
    local found = redis.call('HMGET', key, unpack(fields, start, math.min(start + 999, #fields)))
    for i = 1, #found do values[start + i - 1] = found[i] end
  end
  return values
end

local function hset(key, pairs)
  for start = 1, #pairs, 1000 do
    redis.call('HSET', key, unpack(pairs, start, math.min(start + 999, #pairs)))
  end
end

{apply_run_changes}

{check_index}

local starts, stream_ids, ids = {}, {}, {}
local run_changes = false
local at = 2
for append = 1, appends do
  starts[append] = at
  stream_ids[append] = ARGV[at]
  local count = tonumber(ARGV[at + 2])
  for i = 1, count do
    ids[#ids + 1] = lists and ARGV[at + 4 * i - 1] or ARGV[at + 4 * i]
  end
  at = at + 3 + 4 * count
  at = at + 1 + 2 * tonumber(ARGV[at])
  if ARGV[at] ~= '0' then run_changes = true end
  at = at + 1 + 3 * tonumber(ARGV[at])
end
local known = hmget(records_key, ids)
local stored_versions = hmget(versions_key, stream_ids)
local versions = {}
for append = 1, appends do
  local stream_id = stream_ids[append]
  if versions[stream_id] == nil then versions[stream_id] = tonumber(stored_versions[append]) or 0 end
end

local clock = redis.call('TIME')
local now = clock[1] .. string.rep('0', 6 - #clock[2]) .. clock[2]
local head = tonumber(redis.call('GET', head_key) or '0')
local start_head = head
-- The open runs are kept only while they are as of the head: a store whose events an older agentfold appended
-- (or that had events before it kept them) is caught up by its readers from `runsat` on (`RedisBackend`).
local keep_runs = tonumber(redis.call('GET', runs_at_key) or '0') == head
if keep_runs and run_changes then
  for _, key in ipairs({runs_key, holders_key}) do
    local refused = wrong_type(key, 'hash', 'the open runs agentfold keeps')
    if refused then return refused end
  end
end
-- The position indexes likewise: the category indexes kept only while `catsat` is the head, the type indexes
-- while `typesat` is, their keys checked first. `indexed[key]` is true once the key is known to be in its set.
local keep_index = tonumber(redis.call('GET', index_at_key) or '0') == head
local keep_types = tonumber(redis.call('GET', types_at_key) or '0') == head
local type_base = 16 + 2 * appends
local indexed = {}
local function check_indexes(first, last, set_key)
  local added = false
  for k = first, last do
    local index_key = KEYS[k]
    if index_key ~= '' and indexed[index_key] == nil then
      local refused, exists = check_index(index_key, head)
      if refused then return refused end
      indexed[index_key] = exists
      if not exists then added = true end
    end
  end
  if added then return wrong_type(set_key, 'set', 'a set') end
  return nil
end
if keep_index then
  local refused = check_indexes(17 + appends, type_base, index_keys_key)
  if refused then return refused end
end
if keep_types then
  local refused = check_indexes(type_base + 1, #KEYS, type_keys_key)
  if refused then return refused end
end
local fresh, new_records, changed, replies = {}, {}, {}, {}
local id_at = 0
for append = 1, appends do
  local at, stream_id = starts[append], stream_ids[append]
  local expected, count = ARGV[at + 1], tonumber(ARGV[at + 2])
  local records = {}
  local seen = false
  for i = 1, count do
    local record = fresh[ids[id_at + i]] or known[id_at + i]
    records[i] = record or '-'
    if record then seen = true end
  end
  id_at = id_at + count
  if seen then
    replies[#replies + 1] = '{outcome.IDS_KNOWN}'
    for i = 1, count do replies[#replies + 1] = records[i] end
  else
    local current = versions[stream_id]
    local ok
    if expected == 'any' then ok = true
    elseif expected == 'no_stream' then ok = current == 0
    elseif expected == 'exists' then ok = current > 0
    else ok = current == tonumber(expected) end
    if not ok then
      replies[#replies + 1] = '{outcome.WRONG_EXPECTED_VERSION} ' .. fmt('%d', current)
    else
      local stream_key = KEYS[16 + append]
      local index_key = keep_index and KEYS[16 + appends + append] or ''
      local type_at = type_base + id_at - count
      local batch = ' ' .. fmt('%d', current + 1) .. ' ' .. fmt('%d', current + count) .. ' '
      local listed = {}
      for i = 1, count do
        local version = fmt('%d', current + i)
        local position = fmt('%d', head + i)
        local entry = '[' .. version .. ',' .. position .. ',' .. now .. ',' .. ARGV[at + 4 * i + 1]
        local digests = ARGV[at + 4 * i + 2]
        if lists then
          listed[i] = entry
          if digests ~= '' then redis.call('HSET', blob_events_key, position, digests) end
        elseif digests == '' then
          redis.call('XADD', stream_key, '0-' .. version, 'e', entry)
        else
          redis.call('XADD', stream_key, '0-' .. version, 'e', entry, 'b', digests)
        end
        for digest in string.gmatch(digests, '%x+') do redis.call('HINCRBY', refs_key, digest, 1) end
        redis.call('XADD', all_key, '0-' .. position, 'e', entry)
        if index_key ~= '' then redis.call('XADD', index_key, '0-' .. position, 'p', '') end
        if keep_types then
          local type_key = KEYS[type_at + i]
          redis.call('XADD', type_key, '0-' .. position, 'p', '')
          if not indexed[type_key] then
            redis.call('SADD', type_keys_key, type_key)
            indexed[type_key] = true
          end
        end
        local id = ids[id_at - count + i]
        local record = version .. batch .. position .. ' ' .. stream_id
        fresh[id] = record
        new_records[#new_records + 1] = id
        new_records[#new_records + 1] = record
      end
      for start = 1, #listed, 1000 do
        redis.call('RPUSH', stream_key, unpack(listed, start, math.min(start + 999, #listed)))
      end
      local blob_at = at + 3 + 4 * count
      for b = 1, tonumber(ARGV[blob_at]) do
        local content = ARGV[blob_at + 2 * b]
        if redis.call('HSETNX', blobs_key, ARGV[blob_at + 2 * b - 1], content) == 1 then
          redis.call('INCRBY', bytes_key, #content)
        end
      end
      if keep_runs then apply_run_changes(runs_key, holders_key, blob_at + 1 + 2 * tonumber(ARGV[blob_at])) end
      if index_key ~= '' and not indexed[index_key] then
        redis.call('SADD', index_keys_key, index_key)
        indexed[index_key] = true
      end
      versions[stream_id] = current + count
      changed[stream_id] = true
      head = head + count
      replies[#replies + 1] = '{outcome.WRITTEN} ' .. fmt('%d', current + count) .. ' ' .. fmt('%d', head)
    end
  end
end
if head ~= start_head then
  redis.call('SET', head_key, fmt('%d', head))
  local new_versions = {}
  for stream_id in pairs(changed) do
    new_versions[#new_versions + 1] = stream_id
    new_versions[#new_versions + 1] = fmt('%d', versions[stream_id])
  end
  hset(versions_key, new_versions)
  hset(records_key, new_records)
  if ids_type == 'none' then redis.call('SET', ids_key, '{layout_marker}') end
  if keep_runs then redis.call('SET', runs_at_key, fmt('%d', head)) end
  if keep_index then redis.call('SET', index_at_key, fmt('%d', head)) end
  if keep_types then redis.call('SET', types_at_key, fmt('%d', head)) end
end
return table.concat(replies, '\\n')
""")
    .replace("{layout_marker}", LAYOUT_MARKER)
    .replace("{apply_run_changes}", _APPLY_RUN_CHANGES)
    .replace("{check_index}", _CHECK_INDEX)
)

_RELEASE_BLOBS: Final = """local function release(digests)
  for digest in string.gmatch(digests, '%x+') do
    if redis.call('HINCRBY', KEYS[4], digest, -1) <= 0 then
      redis.call('HDEL', KEYS[4], digest)
      redis.call('DECRBY', KEYS[5], redis.call('HSTRLEN', KEYS[3], digest))
      redis.call('HDEL', KEYS[3], digest)
    end
  end
end"""
"""The trim scripts' release of a trimmed event's blobs (KEYS[3..5]: blobs, blobrefs, blobbytes; `digests` the
event's digests in hex): a blob goes with the last event that refers to it."""

_TYPE_INDEXES: Final = """local type_keys = {}
for k = first_type_key, #KEYS do type_keys[ARGV[first_type_arg + k - first_type_key]] = KEYS[k] end
local function closing_quote(record, at)
  while true do
    local found = string.find(record, '["\\\\]', at)
    if not found then return nil end
    if string.sub(record, found, found) == '"' then return found end
    at = found + 2
  end
end
local function type_key(record)
  local stream_start = string.find(record, '"', 1, true)
  local stream_end = stream_start and closing_quote(record, stream_start + 1)
  local type_start = stream_end and string.find(record, '"', stream_end + 1, true)
  local type_end = type_start and closing_quote(record, type_start + 1)
  if not type_end then return nil end
  return type_keys[cjson.decode(string.sub(record, type_start, type_end))]
end
local function unindex(keys, positions)
  local by_key = {}
  for i = 1, #keys do
    local listed = by_key[keys[i]]
    if not listed then listed = {}; by_key[keys[i]] = listed end
    listed[#listed + 1] = positions[i]
  end
  for key, listed in pairs(by_key) do redis.call('XDEL', key, unpack(listed)) end
end"""
"""The trim scripts' type indexes: KEYS from `first_type_key` on are the type index keys the caller expects, the
types they index at ARGV from `first_type_arg` on, in the same order. `type_key`: the index key of a record's type
(read from the record's fifth element, the type's JSON string), nil when the caller passed none (the script trims
no further: the caller reads the events again). `unindex`: removes each entry id in `positions` from the key at the
same place in `keys`."""

# KEYS: stream key, all, blobs, blobrefs, blobbytes, the stream's category index ("" when none), then the type
# indexes of the events the caller expects to trim. ARGV: last version to delete ("0-<version>"), at most how many,
# then the types of those indexes. Reply: how many went. A blob goes with the last event that refers to it, and a
# position leaves the category and type indexes with its entry, in the same script; the trim stops before an event
# whose type's index the caller did not pass.
TRIM_SCRIPT: Final = """#!lua
{release_blobs}
local first_type_key, first_type_arg = 7, 3
{type_indexes}
local entries = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', ARGV[2])
local own, global, keys = {}, {}, {}
for i, entry in ipairs(entries) do
  local key = type_key(entry[2][2])
  if not key then break end
  own[i] = entry[1]
  global[i] = '0-' .. string.match(entry[2][2], '^%[%d+,(%d+),')
  keys[i] = key
end
if #own == 0 then return 0 end
for i = 1, #own do
  if entries[i][2][3] == 'b' then release(entries[i][2][4]) end
end
redis.call('XDEL', KEYS[1], unpack(own))
redis.call('XDEL', KEYS[2], unpack(global))
if KEYS[6] ~= '' then redis.call('XDEL', KEYS[6], unpack(global)) end
unindex(keys, global)
return #own
""".replace("{release_blobs}", _RELEASE_BLOBS).replace("{type_indexes}", _TYPE_INDEXES)

# Layout 2. KEYS: stream key (a list), all, blobs, blobrefs, blobbytes, trimmed, blobevents, the stream's category
# index ("" when none), then the type indexes of the events the caller expects to trim. ARGV: stream id, the first
# version to keep, at most how many to trim, then the types of those indexes. Reply: how many went. Trimmed elements
# become empty strings, so that element i stays version i + 1; `trimmed` holds, per stream, how many lead the list.
# Trimmed positions leave the category and type indexes in the same script; the trim stops before an event whose
# type's index the caller did not pass.
TRIM_LIST_SCRIPT: Final = """#!lua
{release_blobs}
local first_type_key, first_type_arg = 9, 4
{type_indexes}
local stream_key, trimmed_key, events_key = KEYS[1], KEYS[6], KEYS[7]
local start = tonumber(redis.call('HGET', trimmed_key, ARGV[1]) or '0')
local last = math.min(tonumber(ARGV[2]) - 1, start + tonumber(ARGV[3]))
if last <= start then return 0 end
local listed = redis.call('LRANGE', stream_key, start, last - 1)
local records, global, positions, keys = {}, {}, {}, {}
for i = 1, #listed do
  local key = type_key(listed[i])
  if not key then break end
  records[i] = listed[i]
  positions[i] = string.match(records[i], '^%[%d+,(%d+),')
  global[i] = '0-' .. positions[i]
  keys[i] = key
end
if #records == 0 then return 0 end
local found = redis.call('HMGET', events_key, unpack(positions))
for i = 1, #records do
  if found[i] then
    release(found[i])
    redis.call('HDEL', events_key, positions[i])
  end
end
redis.call('XDEL', KEYS[2], unpack(global))
if KEYS[8] ~= '' then redis.call('XDEL', KEYS[8], unpack(global)) end
unindex(keys, global)
for i = start, start + #records - 1 do redis.call('LSET', stream_key, i, '') end
redis.call('HSET', trimmed_key, ARGV[1], start + #records)
return #records
""".replace("{release_blobs}", _RELEASE_BLOBS).replace("{type_indexes}", _TYPE_INDEXES)

# KEYS: the stream's snapshot hash. ARGV: name, version, "version state". Keeps the newest version.
# KEYS: head, runs, holders, runsat. ARGV: the position P the rows are as of, "force" or "ahead", then changes
# (`run_change_arguments`) that build the rows from nothing. Replaces the rows with them and sets `runsat` to P, in
# one step: a rebuild ("force") always, a catch-up ("ahead") unless the rows kept are already as of P or later.
# Reply: -1 nothing written; else 1 when the rows are now as of the head (appends keep them again), 0 when not yet.
WRITE_RUNS_SCRIPT: Final = """#!lua
{apply_run_changes}
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local at = tonumber(ARGV[1])
if ARGV[2] ~= 'force' and tonumber(redis.call('GET', KEYS[4]) or '0') >= at then return -1 end
redis.call('DEL', KEYS[2], KEYS[3])
apply_run_changes(KEYS[2], KEYS[3], 3)
redis.call('SET', KEYS[4], ARGV[1])
if head == at then return 1 end
return 0
""".replace("{apply_run_changes}", _APPLY_RUN_CHANGES)

SNAPSHOT_SCRIPT: Final = """#!lua
local kept = redis.call('HGET', KEYS[1], ARGV[1])
if kept and tonumber(string.match(kept, '^(%d+) ')) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: a category index, all, catsat. ARGV: the first entry id to read ("0-<after + 1>"), at most how many, after.
# Reply: {catsat, the position scanned, then the records of the index's entries from ARGV[1] up to catsat, at most
# ARGV[2] of them, in position order}, or {catsat} alone when the index covers nothing after `after`. The position
# scanned is the last entry's when the page is full, else catsat: every event of the category up to it is in the
# index (a position whose global entry was trimmed since its index entry was written is passed over). Reads only.
READ_INDEX_SCRIPT: Final = """#!lua flags=no-writes
local at = redis.call('GET', KEYS[3]) or '0'
if tonumber(at) <= tonumber(ARGV[3]) then return {at} end
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '0-' .. at, 'COUNT', ARGV[2])
local reply = {at, at}
for _, entry in ipairs(entries) do
  local found = redis.call('XRANGE', KEYS[2], entry[1], entry[1])
  if found[1] then reply[#reply + 1] = found[1][2][2] end
end
if #entries == tonumber(ARGV[2]) then reply[2] = string.sub(entries[#entries][1], 3) end
return reply
"""

# KEYS: all, typesat, then the type indexes of the types asked for (each once). ARGV: after, at most how many.
# Reply: {typesat, the position scanned, then the records of the page}, or {typesat} alone when the indexes cover
# nothing after `after`. Each index gives its first ARGV[2] positions after `after` up to typesat; every event of
# the types up to the lowest last position of an index that gave that many (else typesat) is among them. The page is
# the first ARGV[2] of those, in position order, and the position scanned the last of them when there are that many,
# else that bound (a position whose global entry was trimmed since is passed over). Reads only.
READ_TYPES_SCRIPT: Final = """#!lua flags=no-writes
local at = redis.call('GET', KEYS[2]) or '0'
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if tonumber(at) <= after then return {at} end
local first = '0-' .. string.format('%d', after + 1)
local bound = tonumber(at)
local found = {}
for k = 3, #KEYS do
  local entries = redis.call('XRANGE', KEYS[k], first, '0-' .. at, 'COUNT', limit)
  for _, entry in ipairs(entries) do found[#found + 1] = tonumber(string.sub(entry[1], 3)) end
  if #entries == limit then bound = math.min(bound, found[#found]) end
end
table.sort(found)
local reply = {at, string.format('%d', bound)}
local count = 0
for _, position in ipairs(found) do
  if position > bound or count == limit then break end
  count = count + 1
  local id = '0-' .. string.format('%d', position)
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  if entry[1] then reply[#reply + 1] = entry[1][2][2] end
  if count == limit then reply[2] = string.format('%d', position) end
end
return reply
"""

# KEYS: head, catsat, cats, then the category indexes written. ARGV: the position P the indexes are as of now, the
# position Q they are brought up to, then per event of an indexed category between them, in position order: the
# number of its index among KEYS (1 for the first after cats), its entry id "0-<position>". Adds the entries, the
# indexes to `cats`, and sets `catsat` to Q, in one step; nothing when `catsat` is no longer P (another reader
# caught up meanwhile). Reply: -1 nothing written; else 1 when the indexes are now as of the head (appends keep
# them again), 0 when not yet.
CATCH_UP_INDEX_SCRIPT: Final = """#!lua
{check_index}
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return -1 end
for k = 4, #KEYS do
  local refused = check_index(KEYS[k], tonumber(ARGV[1]))
  if refused then return refused end
end
local kind = redis.call('TYPE', KEYS[3])['ok']
if kind ~= 'set' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[3] .. ' holds a ' .. kind .. ', not a set')
end
for i = 3, #ARGV, 2 do redis.call('XADD', KEYS[3 + tonumber(ARGV[i])], ARGV[i + 1], 'p', '') end
for k = 4, #KEYS do redis.call('SADD', KEYS[3], KEYS[k]) end
redis.call('SET', KEYS[2], ARGV[2])
if tonumber(redis.call('GET', KEYS[1]) or '0') == tonumber(ARGV[2]) then return 1 end
return 0
""".replace("{check_index}", _CHECK_INDEX)

# KEYS: catsat, cats, then every index in cats. Deletes the indexes and `cats` and sets `catsat` to 0 (a catch-up
# then builds them from the log) in one step, unless `cats` names an index not among KEYS (one appeared since the
# caller read it). Reply: 1 done, 0 nothing written.
DROP_INDEX_SCRIPT: Final = """#!lua
if redis.call('SCARD', KEYS[2]) ~= #KEYS - 2 then return 0 end
for k = 3, #KEYS do
  if redis.call('SISMEMBER', KEYS[2], KEYS[k]) == 0 then return 0 end
  redis.call('DEL', KEYS[k])
end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], '0')
return 1
"""

SCRIPTS: Final = (
    APPEND_SCRIPT,
    TRIM_SCRIPT,
    TRIM_LIST_SCRIPT,
    SNAPSHOT_SCRIPT,
    WRITE_RUNS_SCRIPT,
    READ_INDEX_SCRIPT,
    READ_TYPES_SCRIPT,
    CATCH_UP_INDEX_SCRIPT,
    DROP_INDEX_SCRIPT,
)
"""Every script the store runs, loaded at connect."""

_WRITTEN: Final = b"%d" % Outcome.WRITTEN
_WRONG_EXPECTED_VERSION: Final = b"%d" % Outcome.WRONG_EXPECTED_VERSION
_IDS_KNOWN: Final = b"%d" % Outcome.IDS_KNOWN
_EXPECTED_ARGUMENT: Final = {ANY: b"any", NO_STREAM: b"no_stream", STREAM_EXISTS: b"exists"}


class _Entry(msgspec.Struct, array_like=True, gc=False):
    version: int
    position: int
    recorded_at_us: int
    stream_id: str
    type: str
    id: str
    data: dict[str, Any]
    metadata: dict[str, Any]


_page_decoder = msgspec.json.Decoder(list[_Entry])
_entry_decoder = msgspec.json.Decoder(_Entry)


def _decode_records(decoder: msgspec.json.Decoder[Any], records: list[bytes], where: str) -> list[Any]:
    """A page's records, joined and decoded in one call by `decoder` (of a list)."""
    if not records:
        return []
    try:
        decoded: list[Any] = decoder.decode(b"[" + b",".join(records) + b"]")
    except msgspec.DecodeError as error:
        raise StoreCorrupted(f"an entry of {where} was not written by agentfold: {error}") from None
    return decoded


def _decode_entries(records: list[bytes], where: str) -> list[_Entry]:
    """A page's records, joined and decoded in one call."""
    entries: list[_Entry] = _decode_records(_page_decoder, records, where)
    return entries


class _KeptEntry(msgspec.Struct, array_like=True, gc=False):
    """An entry with its id, data and metadata left undecoded: what a filtered read and a fold of the open runs
    need to choose the entries they keep."""

    version: int
    position: int
    recorded_at_us: int
    stream_id: str
    type: str
    id: msgspec.Raw
    data: msgspec.Raw
    metadata: msgspec.Raw


_kept_page_decoder = msgspec.json.Decoder(list[_KeptEntry])


def _decode_kept_entries(records: list[bytes], where: str) -> list[_KeptEntry]:
    """A page's records with their data and metadata left undecoded, joined and decoded in one call."""
    entries: list[_KeptEntry] = _decode_records(_kept_page_decoder, records, where)
    return entries


_KEPT_TYPES: Final = frozenset(openruns.KEPT_TYPES)


def _chosen(
    records: list[bytes],
    where: str,
    types: tuple[str, ...] | None,
    stream_prefix: str | None,
    scanned: list[_KeptEntry] | None = None,
) -> list[RecordedEvent]:
    """The events among `records` of one of `types` in a stream starting with `stream_prefix` (None: any). Every
    entry's stream and type are decoded (or taken from `scanned`, the records already decoded so), the data and
    metadata only of those kept."""
    if types is None and stream_prefix is None:
        return [_event(entry) for entry in _decode_entries(records, where)]
    kept = _decode_kept_entries(records, where) if scanned is None else scanned
    chosen = [
        record
        for record, entry in zip(records, kept, strict=True)
        if (types is None or entry.type in types)
        and (stream_prefix is None or entry.stream_id.startswith(stream_prefix))
    ]
    return [_event(entry) for entry in _decode_entries(chosen, where)]


class _RecordDecoder:
    """Turns one stored entry into the event readers get: what a fold decodes record by record."""

    __slots__ = ()

    def decode(self, record: bytes | str) -> RecordedEvent:
        return _event(_entry_decoder.decode(record))


_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class RedisSettings:
    """What a ``redis://`` URL and keyword options ask for, checked."""

    client_url: str
    """The URL for the driver: scheme, credentials, host, port and database, no agentfold options."""
    prefix: str
    durability: Durability
    max_event_size: int
    timeout: float
    blob_threshold: int = DEFAULT_BLOB_THRESHOLD
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE

    @property
    def shown_url(self) -> str:
        """The URL with any password hidden."""
        return redact(self.client_url)


def parse_url(url: str, options: dict[str, Any]) -> RedisSettings:
    """Check a ``redis://`` URL and its options; raise `InvalidURL` naming what is wrong (password never shown)."""
    parts = split_url(url, ("redis",))
    shown = redact(url)
    if not parts.hostname:
        raise InvalidURL(f"{shown!r} names no host")
    database = parts.path.lstrip("/") or "0"
    if not (database.isascii() and database.isdigit()) or len(database) > 10 or int(database) > 2**31 - 1:
        raise InvalidURL(f"the database in {shown!r} must be a number from 0 to {2**31 - 1}, got {database[:40]!r}")
    values = parse_options(url, OPTIONS, options)
    client_url = urlunsplit(("redis", parts.netloc, f"/{int(database)}", "", ""))
    return RedisSettings(
        client_url,
        cast(str, values["prefix"]),
        cast(Durability, values["durability"]),
        cast(int, values["max_event_size"]),
        cast(float, values["timeout"]),
        cast(int, values["blob_threshold"]),
        cast(int, values["max_blob_size"]),
    )


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn driver errors into agentfold errors: the one place this backend does so."""
    try:
        yield
    except redis_errors.BusyLoadingError as error:
        raise StoreUnavailable(f"{what}: Redis is loading its data set, retry shortly ({error})") from error
    except redis_errors.AuthenticationError as error:
        raise StoreUnavailable(f"{what}: Redis refused the credentials ({error})") from error
    except redis_errors.ConnectionError as error:
        raise StoreUnavailable(f"{what}: lost or could not open the connection to Redis ({error})") from error
    except (redis_errors.TimeoutError, TimeoutError) as error:
        raise StoreTimeout(f"{what}: Redis did not answer in time; a write may have been applied ({error})") from error
    except redis_errors.OutOfMemoryError as error:
        raise StoreFull(f"{what}: Redis is out of memory (maxmemory reached); nothing was written") from error
    except redis_errors.ReadOnlyError as error:
        raise StoreReadOnly(f"{what}: this Redis is a read-only replica; nothing was written") from error
    except (redis_errors.AskError, redis_errors.TryAgainError, redis_errors.ClusterError) as error:
        # Redis Cluster (the fan-out layer): a slot moved or is moving, a failover is under way, or the client ran
        # out of redirections. The command did not run where it was sent; the cluster settles, then a retry works.
        raise StoreUnavailable(f"{what}: the Redis Cluster is changing ({type(error).__name__}: {error})") from error
    except redis_errors.RedisClusterException as error:
        raise StoreUnavailable(f"{what}: the Redis Cluster client failed ({type(error).__name__}: {error})") from error
    except redis_errors.ResponseError as error:
        message = str(error)
        if message.startswith(("MISCONF", "LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY ")):
            raise StoreUnavailable(f"{what}: Redis cannot serve writes now ({message})") from error
        if "DB index is out of range" in message or "invalid DB index" in message:
            raise InvalidURL(f"{what}: this Redis has no such database ({message})") from None
        if message.startswith(("WRONGTYPE", "CORRUPTED")):
            raise StoreCorrupted(
                f"{what}: a key under the store's prefix is not what agentfold wrote ({message})"
            ) from error
        raise _refused(f"{what}: Redis refused the command ({message})") from error
    except redis_errors.RedisError as error:
        raise _refused(f"{what}: the Redis client failed ({type(error).__name__}: {error})") from error


def _refused(message: str) -> StoreUnavailable:
    """A refusal by the server or its client that repeating the same call will meet again: not retryable."""
    refused = StoreUnavailable(message)
    refused.retryable = False
    return refused


@dataclass(frozen=True)
class Persistence:
    """What the server promises about an acknowledged append, read from its settings at connect."""

    survives_crash: bool
    """True when an acknowledged append is on disk (AOF ``appendfsync always``, or ``durability="waitaof"``)."""
    description: str


def describe_persistence(config: dict[str, str], durability: Durability) -> Persistence:
    """Judge the server's persistence settings (``CONFIG GET appendonly appendfsync save``)."""
    if durability == "waitaof":
        return Persistence(True, "each append waits for WAITAOF: the server fsynced it to its append-only file")
    appendonly = config.get("appendonly")
    fsync = config.get("appendfsync")
    if appendonly is None:
        return Persistence(
            False, "the server does not show its persistence settings (CONFIG is disabled): assume appends can be lost"
        )
    if appendonly == "yes" and fsync == "always":
        return Persistence(True, "AOF with appendfsync always: every acknowledged append was fsynced")
    if appendonly == "yes" and fsync == "everysec":
        return Persistence(False, "AOF with appendfsync everysec: a crash can lose about the last second of appends")
    if appendonly == "yes":
        return Persistence(False, f"AOF with appendfsync {fsync}: the OS decides when appends reach the disk")
    if config.get("save"):
        return Persistence(False, "no AOF, only RDB snapshots: a crash loses every append since the last snapshot")
    return Persistence(False, "no persistence at all (no AOF, no RDB): a restart loses every event")


class RedisDurabilityWarning(UserWarning):
    """The Redis server may lose an append it acknowledged."""


_warned: set[tuple[str, str]] = set()


def warn_once(settings: RedisSettings, persistence: Persistence) -> None:
    """Warn, once per server and setting per process, when acknowledged appends may be lost."""
    if persistence.survives_crash:
        return
    key = (settings.shown_url, persistence.description)
    if key in _warned:
        return
    _warned.add(key)
    message = (
        f"Redis at {settings.shown_url}: {persistence.description}. Use AOF with appendfsync always, "
        "or durability=waitaof on Redis >= 7.2, for appends that survive a crash."
    )
    # A warning, not also a log record: both would print the message twice where logging is not configured.
    # Applications that want it in their logs call `logging.captureWarnings(True)` (`agentfold worker` does).
    warnings.warn(message, RedisDurabilityWarning, stacklevel=3)


def make_client(settings: RedisSettings, timeout: float | None) -> aioredis.Redis:
    """A client that never retries on its own: errors reach the caller, who may retry (appends are idempotent)."""
    client = aioredis.Redis.from_url(
        settings.client_url,
        socket_timeout=timeout,
        socket_connect_timeout=settings.timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    client.set_response_callback("XREAD", _raw)
    return client


def untimed_connection(client: aioredis.Redis) -> Connection:
    """A connection of its own, outside `client`'s pool, with no per-operation socket timeout: its user times a
    whole exchange (`asyncio.timeout`) instead, since the driver's timed socket operations start a task per write."""
    pool = client.connection_pool
    return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})


async def exchange(connection: Connection, timeout: float, talk: Awaitable[T]) -> T:
    """Await `talk`, a request and its replies on an `untimed_connection`, within `timeout`. Unless Redis answered
    with an error, a failure drops the connection: a reply may still be on its way, out of step with the next request.
    """
    try:
        async with asyncio.timeout(timeout):
            return await talk
    except redis_errors.ResponseError:
        raise
    except BaseException:
        await connection.disconnect(nowait=True)
        raise


async def send_and_read(connection: Connection, packed: bytes) -> Any:
    """Send one packed command and read its reply."""
    await connection.send_packed_command(packed, check_health=False)
    return await connection.read_response()


async def _execute(client: aioredis.Redis, *arguments: Any) -> Any:
    """A command whose reply the store parses itself."""
    return await client.execute_command(*arguments)  # type: ignore[no-untyped-call]


def _raw(response: Any, **options: Any) -> Any:
    return response


def bulk_string(value: bytes) -> bytes:
    """`value` as one RESP bulk string, for callers that pack their own commands (the relay and the Redis-native
    consumer groups do)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _split_replies(reply: bytes, group: list[_PendingAppend]) -> list[list[bytes]]:
    """The script's answer, one line per outcome (and per record after a ``1``), cut into one list per append."""
    lines = reply.split(b"\n")
    replies: list[list[bytes]] = []
    at = 0
    for pending in group:
        if lines[at] == _IDS_KNOWN:
            size = 1 + len(pending.events)
            replies.append(lines[at : at + size])
            at += size
        else:
            replies.append([lines[at]])
            at += 1
    return replies


def _answer(pending: _PendingAppend, reply: list[bytes]) -> AppendResult:
    outcome, *numbers = reply[0].split(b" ")
    if outcome == _WRITTEN:
        return AppendResult(int(numbers[0]), int(numbers[1]))
    if outcome == _WRONG_EXPECTED_VERSION:
        raise WrongExpectedVersion(pending.stream_id, pending.expected, int(numbers[0]))
    retry = find_retry(pending.stream_id, pending.events, [_parse_id_record(raw) for raw in reply[1:]])
    assert retry is not None, "the script answers with id records only when an id is known"
    return retry


async def server_version(client: aioredis.Redis) -> tuple[int, ...]:
    """The server's version as numbers, from ``INFO server``."""
    return version_of(await client.info("server"))


def version_of(info: dict[str, Any]) -> tuple[int, ...]:
    """The version in an ``INFO server`` reply, as numbers."""
    return tuple(int(part) for part in str(info["redis_version"]).split(".")[:3] if part.isdigit())


async def read_persistence_config(client: aioredis.Redis) -> dict[str, str]:
    """``appendonly``, ``appendfsync`` and ``save``; empty when the server hides ``CONFIG``."""
    try:
        raw = await client.config_get("append*")
        raw.update(await client.config_get("save"))
    except redis_errors.ResponseError:
        return {}
    return {as_text(key): as_text(value) for key, value in raw.items()}


def as_text(value: bytes | str | None) -> str:
    """A reply value as text: bytes decoded as UTF-8, None as the empty string."""
    return value.decode() if isinstance(value, bytes) else str(value or "")


@dataclass(slots=True)
class _PendingAppend:
    """An append waiting for its script call, its key and arguments already packed as RESP bulk strings."""

    stream_id: str
    events: list[EncodedEvent]
    expected: ExpectedVersion
    packed_key: bytes
    packed_index_key: bytes
    packed_type_keys: bytes
    """The type index key of each event, in order."""
    packed_arguments: bytes
    argument_count: int
    blob_bytes: int


@dataclass(frozen=True)
class _IndexKind:
    """A kind of position index the append script keeps (see the module docstring): the category indexes or the
    type indexes. Both are kept, caught up, dropped and rebuilt by the same code and scripts."""

    what: str
    """``"category"`` or ``"type"``, for messages."""
    at_key: bytes
    """The position the indexes are as of (``catsat``, ``typesat``)."""
    keys_key: bytes
    """The set of the index keys (``cats``, ``types``)."""
    key_of: Callable[[str, str], bytes]
    """The index key of an event, from its stream id and type; ``b""`` when it has none."""


def _event_count(pending: _PendingAppend) -> int:
    return len(pending.events) + pending.blob_bytes // _BLOB_WEIGHT


class RedisBackend:
    """Events in Redis Streams; see the module docstring for the key layout and the append script."""

    scheme = "redis"
    page_size = DEFAULT_PAGE_SIZE
    reads_ahead = False
    record_decoder: RecordDecoder | None = _RecordDecoder()  # folds decode the records one by one

    def __init__(self, settings: RedisSettings, persistence: Persistence, version: tuple[int, ...]) -> None:
        self._closed = False
        self.settings = settings
        self.persistence = persistence
        self.server_version = version
        self.max_event_size = settings.max_event_size
        self.blob_threshold = settings.blob_threshold
        self.max_blob_size = settings.max_blob_size
        self.prefix = settings.prefix
        self._client = make_client(settings, settings.timeout)
        self._waiter = make_client(settings, None)  # blocking XREAD, kept off the connections appends use
        self._append_script = self._client.register_script(APPEND_SCRIPT)
        self._trim_script = self._client.register_script(TRIM_SCRIPT)
        self._trim_list_script = self._client.register_script(TRIM_LIST_SCRIPT)
        # Pages are read with plain XRANGE, whose reply the store takes apart itself (see `_read_records`).
        self._client.set_response_callback("XRANGE", _raw)
        self._client.set_response_callback("XREVRANGE", _raw)
        self._snapshot_script = self._client.register_script(SNAPSHOT_SCRIPT)
        base = settings.prefix.encode()
        self._head_key = base + b":head"
        self._all_key = base + b":all"
        self._ids_key = base + b":ids"
        self._checkpoints_key = base + b":checkpoints"
        self._prefix_bytes = base
        self._versions_key = base + b":versions"
        self._blobs_key = base + b":blobs"
        self._blob_refs_key = base + b":blobrefs"
        self._blob_bytes_key = base + b":blobbytes"
        self._blob_keys = [self._blobs_key, self._blob_refs_key, self._blob_bytes_key]
        self._packed_ids_key = base + b":idx"
        self._blob_events_key = base + b":blobevents"
        self._trimmed_key = base + b":trimmed"
        self._runs_key = base + b":runs"
        self._holders_key = base + b":holders"
        self._runs_at_key = base + b":runsat"
        self._index_at_key = base + b":catsat"
        self._index_keys_key = base + b":cats"
        self._types_at_key = base + b":typesat"
        self._type_keys_key = base + b":types"
        self._write_runs_script = self._client.register_script(WRITE_RUNS_SCRIPT)
        self._read_index_script = self._client.register_script(READ_INDEX_SCRIPT)
        self._read_types_script = self._client.register_script(READ_TYPES_SCRIPT)
        self._catch_up_index_script = self._client.register_script(CATCH_UP_INDEX_SCRIPT)
        self._drop_index_script = self._client.register_script(DROP_INDEX_SCRIPT)
        fixed = (
            self._head_key,
            self._all_key,
            self._ids_key,
            self._versions_key,
            *self._blob_keys,
            self._packed_ids_key,
            self._blob_events_key,
            self._runs_key,
            self._holders_key,
            self._runs_at_key,
            self._index_at_key,
            self._index_keys_key,
            self._types_at_key,
            self._type_keys_key,
        )
        self._lists: bool | None = None  # whether streams are lists (layout 2); None until a first append
        self._fixed_keys = b"".join(bulk_string(key) for key in fixed)
        self._evalsha_head = bulk_string(b"EVALSHA") + bulk_string(self._append_script.sha.encode())
        timeout_ms = b"%d" % int(settings.timeout * 1000)
        self._waitaof_command = b"*4\r\n" + b"".join(bulk_string(part) for part in (b"WAITAOF", b"1", b"0", timeout_ms))
        self._idle_connections: list[Connection] = [untimed_connection(self._client) for _ in range(_SENDERS)]
        self._all_connections = list(self._idle_connections)
        # Up to `_SENDERS` script calls in flight, each on its own connection: while the server runs one, this
        # process prepares the next; a group formed while a connection is idle leaves it half of the waiting appends.
        self._committer: GroupCommitter[_PendingAppend, list[bytes]] = GroupCommitter(
            self._commit_group,
            max_group=_MAX_APPENDS_PER_CALL,
            max_weight=_MAX_EVENTS_PER_CALL,
            weight=_event_count,
            in_flight=_SENDERS,
            spread=True,
            name="redis store",
        )
        self._packed_streams: dict[str, tuple[bytes, bytes, bytes, bytes]] = {}
        self._packed_type_keys: dict[str, bytes] = {}
        self._category_indexes = _IndexKind(
            "category", self._index_at_key, self._index_keys_key, lambda stream_id, _: self.index_key(stream_id)
        )
        self._type_indexes = _IndexKind(
            "type", self._types_at_key, self._type_keys_key, lambda _, event_type: self.type_index_key(event_type)
        )
        self._watcher: asyncio.Task[None] | None = None
        self._seen_head = 0
        self._head_changed = Broadcast()

    def key(self, kind: str, stream_id: str | None = None) -> bytes:
        """The key of a record kind (``s``, ``v``, ``snap``, ``all``, ...), for one stream when given."""
        name = f"{self.prefix}:{kind}" if stream_id is None else f"{self.prefix}:{kind}:{stream_id}"
        return name.encode()

    def index_key(self, stream_id: str) -> bytes:
        """The key of the category index that holds the stream's positions (`indexed_category`); ``b""`` when its
        category has none."""
        category = stream_category(stream_id)
        return self.key("cat", category) if indexed_category(category) else b""

    def type_index_key(self, event_type: str) -> bytes:
        """The key of the type index that holds the positions of the events of `event_type`."""
        return self.key("type", event_type)

    def _packed_type_key(self, event_type: str) -> bytes:
        """`type_index_key` as a RESP bulk string, kept for the types met (bounded like `_packed_streams`)."""
        packed = self._packed_type_keys.get(event_type)
        if packed is None:
            if len(self._packed_type_keys) >= _PACKED_STREAMS:
                self._packed_type_keys.clear()
            packed = self._packed_type_keys[event_type] = bulk_string(self.type_index_key(event_type))
        return packed

    # -- appending -----------------------------------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: list[EncodedEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        packed = self._packed_streams.get(stream_id)
        if packed is None:
            packed = self._pack_stream(stream_id)
        packed_key, packed_index_key, packed_stream_id, stream_json = packed
        if expected_version is ANY:
            expected = b"$3\r\nany\r\n"
        else:
            expected = bulk_string(
                b"%d" % expected_version if isinstance(expected_version, int) else _EXPECTED_ARGUMENT[expected_version]
            )
        parts = [packed_stream_id, expected, bulk_string(b"%d" % len(events))]
        blobs: dict[str, bytes] = {}
        for event in events:
            event_id = event.id.encode()
            tail = b'%s,%s,"%s",%s,%s]' % (
                stream_json,
                _encoder.encode(event.type),
                event_id,
                event.data,
                event.metadata,
            )
            parts.append(
                b"$16\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (packed_id(event.id), len(event_id), event_id, len(tail), tail)
            )
            if event.blobs:
                parts.append(bulk_string(" ".join(blob.digest for blob in event.blobs).encode()))
                blobs.update((blob.digest, blob.content) for blob in event.blobs)
            else:
                parts.append(b"$0\r\n\r\n")
        parts.append(bulk_string(b"%d" % len(blobs)))
        for digest, content in blobs.items():
            parts += (bulk_string(digest.encode()), bulk_string(content))
        found = openruns.changes(stream_id, ((event.type, event.data) for event in events))
        if found:
            parts += map(bulk_string, run_change_arguments(found))
        else:
            parts.append(b"$1\r\n0\r\n")
        pending = _PendingAppend(
            stream_id,
            events,
            expected_version,
            packed_key,
            packed_index_key,
            b"".join([self._packed_type_key(event.type) for event in events]),
            b"".join(parts),
            5 + 4 * len(events) + 2 * len(blobs) + 3 * len(found),
            sum(map(len, blobs.values())),
        )
        return _answer(pending, await self._committer.submit(pending))

    def _pack_stream(self, stream_id: str) -> tuple[bytes, bytes, bytes, bytes]:
        """A stream's key, category index key and id as RESP bulk strings, and its id as JSON; kept for the most
        recent streams."""
        stream_bytes = stream_id.encode()
        packed = (
            bulk_string(self._prefix_bytes + b":s:" + stream_bytes),
            bulk_string(self.index_key(stream_id)),
            bulk_string(stream_bytes),
            _encoder.encode(stream_id),
        )
        if len(self._packed_streams) >= _PACKED_STREAMS:
            self._packed_streams.clear()
        self._packed_streams[stream_id] = packed
        return packed

    async def _commit_group(self, group: list[_PendingAppend]) -> list[list[bytes]]:
        """One script call for the group, on a connection no other call uses meanwhile (the committer keeps at
        most `_SENDERS` groups in flight); one reply per append."""
        connection = self._idle_connections.pop()
        try:
            return await self._run_append_script(connection, group)
        finally:
            self._idle_connections.append(connection)

    async def _run_append_script(self, connection: Connection, group: list[_PendingAppend]) -> list[list[bytes]]:
        """One ``EVALSHA`` for the group, packed here (the driver's generic packing costs more than the script)."""
        key_count = 16 + 2 * len(group) + sum(len(pending.events) for pending in group)
        argument_count = 1 + sum(pending.argument_count for pending in group)
        payload = [
            b"*%d\r\n" % (3 + key_count + argument_count),
            self._evalsha_head,
            bulk_string(b"%d" % key_count),
            self._fixed_keys,
            *(pending.packed_key for pending in group),
            *(pending.packed_index_key for pending in group),
            *(pending.packed_type_keys for pending in group),
            bulk_string(b"%d" % len(group)),
            *(pending.packed_arguments for pending in group),
        ]
        if self.settings.durability == "waitaof":
            payload.append(self._waitaof_command)
        packed = b"".join(payload)
        with translate_errors(f"append to Redis at {self.settings.shown_url}"):
            try:
                reply = await exchange(connection, self.settings.timeout, self._send_and_read(connection, packed))
            except redis_errors.NoScriptError:
                # The server restarted or flushed its scripts. The script did not run: sending it again is safe.
                await self._client.script_load(APPEND_SCRIPT)
                reply = await exchange(connection, self.settings.timeout, self._send_and_read(connection, packed))
        return _split_replies(reply, group)

    async def _send_and_read(self, connection: Connection, packed: bytes) -> bytes:
        if self.settings.durability != "waitaof":
            return cast(bytes, await send_and_read(connection, packed))
        await connection.send_packed_command(packed, check_health=False)
        # WAITAOF covers what this connection wrote: read both replies, even when the script failed.
        try:
            reply = cast(bytes, await connection.read_response())
        finally:
            try:
                fsynced = await connection.read_response()
            except redis_errors.ResponseError as error:  # e.g. the append-only file was turned off since connect
                raise StoreUnavailable(
                    f"append to Redis at {self.settings.shown_url}: the server cannot confirm the fsync ({error}); "
                    "the append may be written, and retrying it is safe"
                ) from error
        if int(fsynced[0]) < 1:
            raise StoreTimeout(
                f"append to Redis at {self.settings.shown_url}: the server did not confirm the fsync within "
                f"{self.settings.timeout} s; the append may be written, and retrying it is safe"
            )
        return reply

    # -- reading -------------------------------------------------------------------------------------------------

    def read_stream_records(
        self, stream_id: str, after_version: int, limit: int | None
    ) -> AsyncGenerator[Sequence[Any], None]:
        return read_pages(self._fetch_page, stream_id, after_version, limit, self.page_size, self.reads_ahead)

    async def _fetch_page(self, stream_id: str, after_version: int, limit: int) -> RecordPage:
        lists = await self._streams_are_lists()
        if lists is None:
            return RecordPage([], 0, after_version)
        if lists:
            records, last_version = await self._read_list(stream_id, after_version, limit)
        else:
            records, last_version = await self._read_records(self.key("s", stream_id), after_version, limit)
        return RecordPage(records, len(records), last_version)

    async def _streams_are_lists(self) -> bool | None:
        """Whether the store's streams are lists (layout 2, ``{prefix}:ids`` a string) or Redis streams (a hash);
        None while nothing was ever appended. A store keeps the layout it was created with."""
        if self._lists is None:
            with translate_errors("read the layout of the store in Redis"):
                kind = await self._client.type(self._ids_key)
            if kind in (b"string", b"hash"):
                self._lists = kind == b"string"
        return self._lists

    async def _read_list(self, stream_id: str, after: int, limit: int) -> tuple[list[bytes], int]:
        """Layout 2: the records of versions ``after + 1`` to ``after + limit`` (one ``LRANGE``: element i is
        version i + 1), and the last version read. Trimmed versions lead the list as empty strings: a read that
        meets one starts again after them."""
        key = self.key("s", stream_id)
        while True:
            with translate_errors(f"read {key.decode()!r} from Redis"):
                records = cast(list[bytes], await _execute(self._client, "LRANGE", key, after, after + limit - 1))
            if not records or records[0]:
                return records, after + len(records)
            with translate_errors(f"read {key.decode()!r} from Redis"):
                trimmed = int(await self._client.hget(self._trimmed_key, stream_id) or 0)
            if trimmed <= after:
                raise StoreCorrupted(f"{key.decode()!r} holds an empty element that no trim left: not agentfold's")
            after = trimmed

    async def read_stream_backwards(
        self, stream_id: str, before_version: int, after_version: int, limit: int
    ) -> list[RecordedEvent]:
        if before_version - 1 <= after_version:
            return []
        key = self.key("s", stream_id)
        lists = await self._streams_are_lists()
        if lists is None:
            return []
        if lists:
            return await self._read_list_backwards(key, before_version, after_version, limit)
        with translate_errors(f"read {key.decode()!r} from Redis"):
            entries = await _execute(
                self._client,
                "XREVRANGE",
                key,
                b"0-%d" % (before_version - 1),
                b"0-%d" % (after_version + 1),
                b"COUNT",
                limit,
            )
        try:
            records = [entry[1][1] for entry in entries]
        except (IndexError, TypeError) as error:
            raise StoreCorrupted(f"an entry of {key.decode()!r} was not written by agentfold: {error}") from None
        return [_event(entry) for entry in _decode_entries(records, "a stream")]

    async def _read_list_backwards(
        self, key: bytes, before_version: int, after_version: int, limit: int
    ) -> list[RecordedEvent]:
        """Layout 2's backward read, one ``LRANGE``: of the versions below `before_version` when the list reaches
        it; otherwise of the list's last `limit` elements, those above `after_version` kept."""
        low = max(after_version, before_version - 1 - limit)
        found: list[bytes] = []
        with translate_errors(f"read {key.decode()!r} from Redis"):
            if before_version <= MAX_VERSION:
                found = cast(list[bytes], await _execute(self._client, "LRANGE", key, low, before_version - 2))
            if len(found) < before_version - 1 - low:  # the list ends below `before_version`: read its end
                found = cast(list[bytes], await _execute(self._client, "LRANGE", key, -limit, -1))
        entries = _decode_entries([record for record in reversed(found) if record], "a stream")
        return [_event(entry) for entry in entries if entry.version > after_version]

    async def read_all_page(
        self,
        after_position: int,
        limit: int,
        types: tuple[str, ...] | None,
        stream_prefix: str | None,
    ) -> tuple[list[RecordedEvent], int]:
        where = repr(self._all_key.decode())
        category = None if stream_prefix is None else prefix_category(stream_prefix)
        if category is not None and indexed_category(category):
            indexed = await self._read_index(self.key("cat", category), after_position, limit)
            if indexed is not None:
                records, position = indexed
                return _chosen(records, where, types, stream_prefix), position
        if types is not None:
            indexed = await self._read_types(types, after_position, limit)
            if indexed is not None:
                records, position = indexed
                return _chosen(records, where, None, stream_prefix), position
        records, _ = await self._read_records(self._all_key, after_position, limit)
        if types is None and stream_prefix is None:
            entries = _decode_entries(records, where)
            return [_event(entry) for entry in entries], entries[-1].position if entries else after_position
        # A filtered page: every entry's stream and type are decoded, the data and metadata only of those kept.
        scanned = _decode_kept_entries(records, where)
        if not scanned:
            return [], after_position
        return _chosen(records, where, types, stream_prefix, scanned), scanned[-1].position

    async def _read_index(self, key: bytes, after: int, limit: int) -> tuple[list[bytes], int] | None:
        """The records of a category index's next `limit` positions after `after`, and the position up to which
        they are every event of the category (`READ_INDEX_SCRIPT`, one call); None when the index covers nothing
        after `after` (appends that kept no index since: the log is scanned from there)."""
        arguments: list[bytes | int] = [b"0-%d" % (after + 1), limit, after]
        keys = [key, self._all_key, self._index_at_key]
        with translate_errors(f"read {key.decode()!r} from Redis"):
            reply = cast(list[bytes], await self._read_index_script(keys=keys, args=arguments))
        if len(reply) < 2:
            return None
        return reply[2:], int(reply[1])

    async def _read_types(self, types: tuple[str, ...], after: int, limit: int) -> tuple[list[bytes], int] | None:
        """The records of the next events of `types` after `after` through the type indexes, at most `limit`, and
        the position up to which they are every such event (`READ_TYPES_SCRIPT`, one call); None when the indexes
        cover nothing after `after` (appends that kept no index since: the log is scanned from there)."""
        keys = [self._all_key, self._types_at_key, *map(self.type_index_key, dict.fromkeys(types))]
        with translate_errors(f"read the type indexes {types!r} from Redis"):
            reply = cast(list[bytes], await self._read_types_script(keys=keys, args=[after, limit]))
        if len(reply) < 2:
            return None
        return reply[2:], int(reply[1])

    async def _read_records(self, key: bytes, after: int, limit: int) -> tuple[list[bytes], int]:
        """One ``XRANGE`` after entry id ``0-<after>``: the entries' JSON records, and the sequence number of the last
        entry's id (``0-<version>`` in a stream's key, ``0-<position>`` in the global one; `after` if none).

        Entries come back as ``[id, [b"e", json]]``, parsed by hiredis. Only the records are kept: the reply's two
        lists per entry, alive as long as a decoded page, made a 10k-event fold run 73 young garbage collections
        and every second fold a full one. A Lua script joining the page on the server was slower: it spends its
        time turning entries into Lua tables (docs/measurements.md)."""
        with translate_errors(f"read {key.decode()!r} from Redis"):
            entries = await _execute(self._client, "XRANGE", key, b"0-%d" % (after + 1), b"+", b"COUNT", limit)
        if not entries:
            return [], after
        try:
            return [entry[1][1] for entry in entries], int(entries[-1][0].partition(b"-")[2])
        except (IndexError, TypeError, ValueError) as error:
            raise StoreCorrupted(f"an entry of {key.decode()!r} was not written by agentfold: {error}") from None

    async def stream_version(self, stream_id: str) -> int:
        with translate_errors(f"read the version of stream {stream_id!r} from Redis"):
            value = await self._client.hget(self._versions_key, stream_id)
        return int(value) if value is not None else 0

    async def head_position(self) -> int:
        with translate_errors("read the head position from Redis"):
            value = await self._client.get(self._head_key)
        return int(value) if value is not None else 0

    async def wait_for_append(self, after_position: int, timeout: float) -> None:
        """Wait for the store's one watcher (a blocking ``XREAD`` loop) to see the head move; a hint only.

        Waiters share one event instead of holding a blocking connection each, so any number of subscribers costs
        one connection, and cancelling a waiter never interrupts a command on a socket.
        """
        if timeout <= 0 or self._seen_head > after_position:
            return
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name=f"agentfold redis watcher {self.prefix}")
        changed = self._head_changed.ticket()
        if await self.head_position() > after_position:
            return
        await Broadcast.wait(changed, timeout)

    def _wake_waiters(self) -> None:
        self._head_changed.wake()

    async def _watch(self) -> None:
        """Block on the global stream after the last head seen; wake every waiter when something arrives."""
        last = 0
        while not self._closed:
            try:
                with translate_errors("watch for appends in Redis"):
                    if last == 0 or self._seen_head == 0:
                        last = await self.head_position()
                        self._seen_head = last
                        self._wake_waiters()  # anything appended before the watch began: re-read
                    reply = await _execute(
                        self._waiter,
                        "XREAD",
                        "COUNT",
                        1,
                        "BLOCK",
                        _WATCH_BLOCK_MS,
                        "STREAMS",
                        self._all_key,
                        f"0-{last}",
                    )
                    if reply:
                        last = max(last + 1, await self.head_position())
                        self._seen_head = last
                        self._wake_waiters()
            except asyncio.CancelledError:
                raise
            except AgentfoldError:
                if self._closed:
                    return
                self._wake_waiters()  # waiters re-read and meet the error themselves, or find data
                await asyncio.sleep(_WATCH_RETRY_SECONDS)

    # -- records beside the log ----------------------------------------------------------------------------------

    async def load_snapshot(self, owner: str, name: str) -> tuple[int, bytes] | None:
        with translate_errors(f"load snapshot {name!r} of {owner!r} from Redis"):
            value = await self._client.hget(self.key("snap", owner), name)
        if value is None:
            return None
        version, _, state = cast(bytes, value).partition(b" ")
        return int(version), state

    async def save_snapshot(self, owner: str, name: str, mark: int, state: bytes) -> None:
        with translate_errors(f"save snapshot {name!r} of {owner!r} in Redis"):
            await self._snapshot_script(keys=[self.key("snap", owner)], args=[name, mark, b"%d " % mark + state])

    async def trim_stream(self, stream_id: str, before_version: int) -> int:
        if before_version <= 1:
            return 0
        removed = 0
        lists = await self._streams_are_lists()
        if lists is None:
            return 0
        stream_key = self.key("s", stream_id)
        keys = [stream_key, self._all_key, *self._blob_keys]
        index_key = self.index_key(stream_id)
        idle = 0
        while True:
            # The events of the next page, read first: the script is passed the index keys of their types (a script
            # touches only the keys it is given), and trims no further than the first event of another type.
            with translate_errors(f"trim stream {stream_id!r} in Redis"):
                if lists:
                    start = int(await self._client.hget(self._trimmed_key, stream_id) or 0)
                    last = min(before_version - 1, start + _TRIM_PAGE)
                    found = cast(list[bytes], await _execute(self._client, "LRANGE", stream_key, start, last - 1))
                    records = [record for record in found if record] if last > start else []
                else:
                    entries = await _execute(
                        self._client, "XRANGE", stream_key, b"-", b"0-%d" % (before_version - 1), b"COUNT", _TRIM_PAGE
                    )
                    records = [entry[1][1] for entry in entries]
                if not records:
                    return removed
                types = list(dict.fromkeys(entry.type for entry in _decode_kept_entries(records, repr(stream_key))))
                type_keys = [self.type_index_key(event_type) for event_type in types]
                if lists:
                    arguments: list[str | int] = [stream_id, before_version, _TRIM_PAGE, *types]
                    keys_2 = [*keys, self._trimmed_key, self._blob_events_key, index_key, *type_keys]
                    count = int(await self._trim_list_script(keys=keys_2, args=arguments))
                else:
                    keys_1 = [*keys, index_key, *type_keys]
                    arguments = [f"0-{before_version - 1}", _TRIM_PAGE, *types]
                    count = int(await self._trim_script(keys=keys_1, args=arguments))
            removed += count
            idle = idle + 1 if count == 0 else 0
            if idle > _CATCH_UP_ROUNDS:
                raise StoreCorrupted(f"trim stream {stream_id!r} in Redis: the script cannot read its events' types")

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        if not digests:
            return {}
        with translate_errors("read blobs from Redis"):
            contents = await self._client.hmget(self._blobs_key, list(digests))
        found = zip(digests, contents, strict=True)
        return {digest: cast(bytes, content) for digest, content in found if content is not None}

    async def blob_usage(self) -> BlobUsage:
        with translate_errors("count the blobs in Redis"):
            count = await self._client.hlen(self._blobs_key)
            size = await self._client.get(self._blob_bytes_key)
        return BlobUsage(int(count), int(size or 0))

    async def load_checkpoint(self, name: str) -> int | None:
        with translate_errors(f"load checkpoint {name!r} from Redis"):
            value = await self._client.hget(self._checkpoints_key, name)
        return int(value) if value is not None else None

    async def save_checkpoint(self, name: str, position: int, apply: Callable[[Any], Any] | None = None) -> None:
        await apply_then(apply)  # no transaction spans a read model and the checkpoint: at least once
        with translate_errors(f"save checkpoint {name!r} in Redis"):
            await self._client.hset(self._checkpoints_key, name, position)

    # -- open runs -----------------------------------------------------------------------------------------------
    #
    # `runs` (workflow id -> workflow) and `holders` (workflow id -> the worker holding it) are `openruns.fold` of
    # the log up to `runsat`, always: the append script applies an append's changes only while `runsat` is the
    # head, and every other write replaces both hashes and `runsat` in one script. An append that keeps nothing
    # (an older agentfold's, or one while the rows are behind) leaves `runsat` behind the head; a reader then folds
    # the events after `runsat` on top of the rows, and writes the result back so that appends keep them again.

    async def open_runs(self) -> tuple[int, list[openruns.OpenRun]]:
        head, at, runs = await self._read_open_runs()
        if at < head:
            await self._fold_runs(runs, at, head)
            await self._write_runs(head, runs, force=False, quiet=True)
        return head, list(runs.values())

    async def rebuild_open_runs(self) -> int:
        """Fold the whole log up to the head, then replace the rows with it in one script (`WRITE_RUNS_SCRIPT`):
        appends written meanwhile are after the rows' position and are folded on top by the catch-up that follows
        (or by the next reader)."""
        head = await self.head_position()
        runs: dict[str, openruns.OpenRun] = {}
        await self._fold_runs(runs, 0, head)
        await self._write_runs(head, runs, force=True, quiet=False)
        caught_up = await self.catch_up_open_runs()
        await self.rebuild_category_indexes()
        await self.rebuild_type_indexes()
        return len(runs) if caught_up is None else caught_up

    async def catch_up_open_runs(self) -> int | None:
        """Bring the rows up to the head where appends left them behind (a store that had events before this
        agentfold kept the open runs, or that an older agentfold appended to), so that appends keep them again;
        how many runs are open then, or None when appends kept moving the head past every round. Done when a
        store is opened; a write the server refuses (a read-only replica) leaves the catch-up to later readers."""
        for _ in range(_CATCH_UP_ROUNDS):
            head, at, runs = await self._read_open_runs()
            if at >= head:
                return len(runs)
            await self._fold_runs(runs, at, head)
            if await self._write_runs(head, runs, force=False, quiet=True) == 1:
                return len(runs)
        return None

    async def _read_open_runs(self) -> tuple[int, int, dict[str, openruns.OpenRun]]:
        """(the head, the position the rows are as of, the rows), read in one ``MULTI``/``EXEC``."""
        with translate_errors("read the open runs from Redis"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(self._head_key)
                pipe.get(self._runs_at_key)
                pipe.hgetall(self._runs_key)
                pipe.hgetall(self._holders_key)
                head, at, workflows, holders = await pipe.execute()
        runs: dict[str, openruns.OpenRun] = {}
        for raw_id, workflow in cast(dict[bytes, bytes], workflows).items():
            holder = cast(dict[bytes, bytes], holders).get(raw_id)
            workflow_id = raw_id.decode()
            runs[workflow_id] = openruns.OpenRun(
                workflow_id, workflow.decode(), None if holder is None else holder.decode()
            )
        head_position = int(head or 0)
        return head_position, int(at) if at is not None else (0 if head_position == 0 else -1), runs

    async def _fold_runs(self, runs: dict[str, openruns.OpenRun], after: int, until: int) -> None:
        """Apply to `runs` what the events at positions ``after + 1`` to `until` do to the open runs
        (`openruns.change_of`), read from the global stream a page at a time; only kept types have their data
        decoded."""
        after = max(after, 0)
        while after < until:
            with translate_errors(f"read {self._all_key.decode()!r} from Redis"):
                entries = await _execute(
                    self._client, "XRANGE", self._all_key, b"0-%d" % (after + 1), b"0-%d" % until, b"COUNT", _FOLD_PAGE
                )
            if not entries:
                return
            try:
                page = _decode_kept_entries([entry[1][1] for entry in entries], repr(self._all_key.decode()))
                for entry in page:
                    if entry.type in _KEPT_TYPES:
                        change = openruns.change_of(entry.stream_id, entry.type, bytes(entry.data))
                        if change is not None:
                            openruns.apply(runs, [change])
            except (IndexError, TypeError, msgspec.DecodeError) as error:
                where = self._all_key.decode()
                raise StoreCorrupted(f"an entry of {where!r} was not written by agentfold: {error}") from None
            after = page[-1].position

    async def _write_runs(self, position: int, runs: dict[str, openruns.OpenRun], *, force: bool, quiet: bool) -> int:
        """Replace the rows with `runs`, as of `position` (`WRITE_RUNS_SCRIPT`); its reply. `quiet`: a write the
        server refuses is left to the next reader (-1)."""
        arguments = [b"%d" % position, b"force" if force else b"ahead", *run_change_arguments(rows_as_changes(runs))]
        keys = [self._head_key, self._runs_key, self._holders_key, self._runs_at_key]
        try:
            with translate_errors("write the open runs in Redis"):
                return int(await self._write_runs_script(keys=keys, args=arguments))
        except AgentfoldError:
            if not quiet:
                raise
            return -1

    # -- position indexes ----------------------------------------------------------------------------------------
    #
    # `cat:<category>` (a Redis stream of empty entries, id 0-<position>) holds the positions of the events of an
    # indexed category (`indexed_category`) up to `catsat`, always: the append script adds an append's positions
    # only while `catsat` is the head, and the catch-up adds the positions after `catsat` in order and moves it on,
    # in one script per page. An append that keeps nothing (an older agentfold's, or one while the indexes are
    # behind) leaves `catsat` behind the head; filtered reads then use the indexes up to `catsat` and scan the log
    # after it, and the next catch-up brings them up to the head. `type:<type>` holds the positions of every event
    # of the type up to `typesat`, by the same rules and the same code (`_IndexKind`).

    async def catch_up_category_indexes(self, *, quiet: bool = True) -> bool:
        """Bring the category indexes up to the head where appends left them behind (a store written before this
        agentfold kept them, one an older agentfold appended to, or one whose indexes were just dropped), so that
        appends keep them again; whether they are as of the head now (False when appends kept moving the head past
        every round). Done when a store is opened. `quiet`: a write the server refuses (a read-only replica, a full
        memory) leaves the catch-up to later readers (False) instead of raising."""
        return await self._catch_up_indexes(self._category_indexes, quiet=quiet)

    async def catch_up_type_indexes(self, *, quiet: bool = True) -> bool:
        """`catch_up_category_indexes` for the type indexes (``{prefix}:type:*``, as of ``{prefix}:typesat``)."""
        return await self._catch_up_indexes(self._type_indexes, quiet=quiet)

    async def rebuild_category_indexes(self) -> bool:
        """Drop the category indexes and build them again from the log (`DROP_INDEX_SCRIPT`, then the catch-up):
        filtered reads scan the log meanwhile, and appends keep the indexes again once the catch-up reached the
        head. Whether it did (see `catch_up_category_indexes`)."""
        return await self._rebuild_indexes(self._category_indexes)

    async def rebuild_type_indexes(self) -> bool:
        """`rebuild_category_indexes` for the type indexes."""
        return await self._rebuild_indexes(self._type_indexes)

    async def _catch_up_indexes(self, kind: _IndexKind, *, quiet: bool) -> bool:
        for _ in range(_CATCH_UP_ROUNDS):
            with translate_errors(f"read the {kind.what} indexes' position from Redis"):
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.get(self._head_key)
                    pipe.get(kind.at_key)
                    head_value, at_value = await pipe.execute()
            head, at = int(head_value or 0), int(at_value or 0)
            if at >= head:
                return True
            while at < head:
                try:
                    reached, written = await self._index_page(kind, at, head)
                except AgentfoldError:
                    if quiet:
                        return False
                    raise
                if written < 0:
                    break  # another reader moved the mark meanwhile: read where it stands
                if written == 1:
                    return True
                at = reached
        return False

    async def _index_page(self, kind: _IndexKind, after: int, until: int) -> tuple[int, int]:
        """Add to the indexes of `kind` the positions of the events after `after` that have one, up to `until` at
        most one page of the global stream (`CATCH_UP_INDEX_SCRIPT`); the position the indexes are then as of, and
        the script's reply (-1 nothing written, 1 as of the head, 0 not yet)."""
        with translate_errors(f"read {self._all_key.decode()!r} from Redis"):
            entries = await _execute(
                self._client, "XRANGE", self._all_key, b"0-%d" % (after + 1), b"0-%d" % until, b"COUNT", _FOLD_PAGE
            )
        reached = until
        keys: dict[bytes, int] = {}
        arguments: list[bytes] = []
        if entries:
            try:
                page = _decode_kept_entries([entry[1][1] for entry in entries], repr(self._all_key.decode()))
            except (IndexError, TypeError) as error:
                where = self._all_key.decode()
                raise StoreCorrupted(f"an entry of {where!r} was not written by agentfold: {error}") from None
            if len(entries) == _FOLD_PAGE:
                reached = page[-1].position
            for entry in page:
                key = kind.key_of(entry.stream_id, entry.type)
                if key:
                    number = keys.setdefault(key, len(keys) + 1)
                    arguments += (b"%d" % number, b"0-%d" % entry.position)
        script_keys = [self._head_key, kind.at_key, kind.keys_key, *keys]
        with translate_errors(f"write the {kind.what} indexes in Redis"):
            written = int(await self._catch_up_index_script(keys=script_keys, args=[after, reached, *arguments]))
        return reached, written

    async def _rebuild_indexes(self, kind: _IndexKind) -> bool:
        for _ in range(_CATCH_UP_ROUNDS):
            with translate_errors(f"read the {kind.what} indexes' keys from Redis"):
                members = cast(set[bytes], await self._client.smembers(kind.keys_key))
            keys = [kind.at_key, kind.keys_key, *sorted(members)]
            with translate_errors(f"drop the {kind.what} indexes in Redis"):
                if int(await self._drop_index_script(keys=keys, args=[])) == 1:
                    return await self._catch_up_indexes(kind, quiet=False)
        raise StoreUnavailable(
            f"drop the {kind.what} indexes in Redis: appends kept adding {kind.what}s for {_CATCH_UP_ROUNDS} "
            "rounds; retry"
        )

    async def close(self) -> None:
        self._closed = True
        await self._committer.close()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher], timeout=2)
        self._wake_waiters()
        for connection in self._all_connections:
            await connection.disconnect()
        await self._client.aclose()
        await self._waiter.aclose()


class RedisStore(EventStore):
    """An event store in Redis (what ``connect("redis://...")`` returns); the I/O is its `RedisBackend`."""

    backend: RedisBackend

    @property
    def settings(self) -> RedisSettings:
        """The options the store was opened with."""
        return self.backend.settings

    @property
    def persistence(self) -> Persistence:
        """How durable the server's settings make an acknowledged append, judged at connect."""
        return self.backend.persistence

    @property
    def server_version(self) -> tuple[int, ...]:
        """The Redis server's version."""
        return self.backend.server_version

    @property
    def prefix(self) -> str:
        """The prefix of every key of this store."""
        return self.backend.prefix

    def key(self, kind: str, stream_id: str | None = None) -> bytes:
        """The key of a record kind (``s``, ``v``, ``snap``, ``all``, ...), for one stream when given."""
        return self.backend.key(kind, stream_id)


def _event(entry: _Entry) -> RecordedEvent:
    return RecordedEvent(
        entry.stream_id,
        entry.version,
        entry.position,
        entry.type,
        entry.data,
        entry.metadata,
        entry.id,
        entry.recorded_at_us,
    )


def _parse_id_record(raw: bytes) -> IdRecord | None:
    """An id record as the append script keeps it: ``version first last position stream``, or ``-``."""
    if raw == b"-":
        return None
    version, first, last, position, stream_id = bytes(raw).decode().split(" ", 4)
    return IdRecord(stream_id, int(version), int(first), int(last), int(position))


@asynccontextmanager
async def connected(settings: RedisSettings) -> AsyncIterator[aioredis.Redis]:
    """A short-lived client for checks at connect."""
    client = make_client(settings, settings.timeout)
    try:
        yield client
    finally:
        await client.aclose()


async def check_server(settings: RedisSettings) -> tuple[tuple[int, ...], Persistence]:
    """Reach the server, refuse what it cannot give, load the scripts, and judge its persistence."""
    async with connected(settings) as client:
        with translate_errors(f"connect to Redis at {settings.shown_url}"):
            version = await server_version(client)
            shown_version = ".".join(str(part) for part in version)
            if version < MIN_VERSION:
                raise InvalidURL(f"Redis at {settings.shown_url} runs {shown_version}; agentfold needs Redis >= 7.0")
            config = await read_persistence_config(client)
            if settings.durability == "waitaof":
                if version < WAITAOF_MIN_VERSION:
                    raise InvalidURL(
                        f"durability=waitaof needs WAITAOF, which Redis >= 7.2 has; the server at "
                        f"{settings.shown_url} runs {shown_version}. Use durability=server with AOF "
                        "appendfsync always instead."
                    )
                if config.get("appendonly") == "no":
                    raise InvalidURL(
                        f"durability=waitaof needs the append-only file, which is off at {settings.shown_url} "
                        "(appendonly no)"
                    )
            for script in SCRIPTS:
                await client.script_load(script)
    return version, describe_persistence(config, settings.durability)


async def require_store(settings: RedisSettings) -> None:
    """Raise `StoreNotFound` unless an event was ever appended under the prefix (its position counter exists)."""
    async with connected(settings) as client:
        with translate_errors(f"connect to Redis at {settings.shown_url}"):
            found = await client.exists(f"{settings.prefix}:head")
    if not found:
        raise StoreNotFound(
            f"no agentfold store under prefix {settings.prefix!r} at {settings.shown_url}: no event was ever "
            f"appended there (no key {settings.prefix + ':head'!r})"
        )


async def open_store(url: str, *, create: bool = True, **options: Any) -> RedisStore:
    """Open the Redis store at `url` (options: prefix, durability, max_event_size, timeout).

    A store's keys appear with its first append. With `create=False` a prefix that has none raises `StoreNotFound`.
    """
    settings = parse_url(url, options)
    if not create:
        await require_store(settings)
    version, persistence = await check_server(settings)
    warn_once(settings, persistence)
    backend = RedisBackend(settings, persistence, version)
    try:
        await backend.catch_up_open_runs()  # a store that had events before it kept the open runs: folded once
        await backend.catch_up_category_indexes()  # likewise its category indexes
        await backend.catch_up_type_indexes()  # and its type indexes
    except BaseException:
        await backend.close()
        raise
    return RedisStore(backend)
