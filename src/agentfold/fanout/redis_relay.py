"""Relay: copy a store's global log into Redis Streams, in order, each position at most once.

The SQL store stays the record; Redis Streams spread its events to many consumers. The target is one Redis
(``redis://``) or a Redis Cluster (``redis+cluster://``, `agentfold.fanout.targets`).

**One Redis.** Layout under the target URL's prefix (nothing else in the database is touched):

- ``{prefix}:log``: every relayed event, entry id ``0-<global position in the source>``;
- ``{prefix}:category:{category}``: the events of one category (the stream id up to its first ``-``, or the
  whole id), entry id ``0-<global position>``, for consumer groups that care about one kind of stream;
- ``{prefix}:partition:{k}``: only with ``partitions=N``: the events of every stream whose
  `agentfold.groups.partition_of` is ``k`` (0 <= k < N), entry id ``0-<global position>``, for Redis-native consumer
  groups (`agentfold.fanout.redis_groups`): every event of one stream is in one partition stream, in order;
- ``{prefix}:partitions``: the N the partition streams were cut with (absent: none are written);
- ``{prefix}:relay:{name}``: the relay's checkpoint, the last position it wrote.

Each entry holds the fields ``stream_id``, ``version``, ``position``, ``type``, ``id``, ``data`` and ``metadata``
(JSON objects) and ``recorded_at_us``; `decode_relayed` turns one back into a `RecordedEvent`.

One Lua script call writes a batch: it reads the checkpoint, skips every event at or below it, adds the rest to
the log, category and partition streams and moves the checkpoint, all in one step. A relay killed at any point
therefore leaves either the whole batch with its checkpoint or neither, and the next run resumes after the
checkpoint: no gap, no event twice. The same call checks the partition count against ``{prefix}:partitions``:
partition streams cut with another N, or a log filled before partitioning was asked for, would give consumer groups
a gap, so the relay refuses to start instead (partitioning is chosen when a prefix is first filled; relay into a
new prefix to change it).

**A Redis Cluster.** Only the partition streams are written (``partitions`` >= 1): a log or category stream is one
key, so one master would take every write. Partition ``k`` is ``{prefix}:partition:{<tag>}``, its hash tag chosen
so that the partitions spread evenly over the slots and so over the masters (`agentfold.fanout.targets`), beside
``{prefix}:partition:{<tag>}:relayed``, the last position written to it. A batch is written as one script call
per partition it touches, the calls for one master sent together on one connection and followed by ``WAIT
replicas replica_timeout``; the masters are written at the same time. Each call skips the events at or below the
partition's last entry (after checking that the entry at that position holds the same event id: a second relay
from another source into the prefix raises `RelayConflict`), adds the rest and sets the ``relayed`` key, a write
that every call makes, so that its ``WAIT`` covers everything the master holds for the partition, whichever
connection wrote it.

Redis replicates asynchronously: a master acknowledges entries before any replica has them, and a replica promoted
after the master failed lacks what had not reached it. The relay's checkpoint ``{prefix}:relay:{name}`` therefore
moves past a batch only once every master that took part of it answered its ``WAIT`` with at least ``replicas``
replicas. A batch not confirmed in time (a replica down or lagging, a master failing over) raises a retryable
`StoreUnavailable`; the relay writes the same batch again, and each partition takes only what it lacks. After a
failover the new master may lack entries the old one had acknowledged but not replicated; they were not confirmed,
so the relay writes them again. Deduplication on the way in is the relay's (by position, in the script); consumer
groups deliver at least once and may see an event again after a failover (see `agentfold.fanout.redis_groups`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode

from agentfold.backends.redis import (
    MIN_VERSION,
    as_text,
    bulk_string,
    check_server,
    exchange,
    send_and_read,
    translate_errors,
    untimed_connection,
    version_of,
    warn_once,
)
from agentfold.errors import AgentfoldError, InvalidInput, InvalidURL, StoreCorrupted, StoreUnavailable
from agentfold.events import RecordedEvent
from agentfold.fanout.targets import FanoutKeys, FanoutTarget, make_fanout_client, node_of, own_connection, parse_target
from agentfold.groups import partition_of
from agentfold.store import EventStore

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE: Final = 500
MAX_BATCH_SIZE: Final = 10_000
MAX_PARTITIONS: Final = 1024
_FIELDS: Final = (b"stream_id", b"version", b"position", b"type", b"id", b"data", b"metadata", b"recorded_at_us")
_WAKE_LENGTH: Final = 100

# KEYS: checkpoint, log, partitions key, then each event's category stream, then (with partitions) each event's
# partition stream. ARGV: event count, partition count (0: none), then per event: position followed by the values of
# the entry's fields in `_FIELDS` order (position again among them). Reply: {written, checkpoint};
# {-1, checkpoint, last log id} when the log already holds entries beyond the checkpoint (another writer);
# {-2, checkpoint, declared partitions} when the prefix was filled with another partition count.
# Called with no events, it only checks (and, on an empty prefix, declares) the partition count.
RELAY_SCRIPT: Final = """#!lua
local checkpoint_key, log_key, partitions_key = KEYS[1], KEYS[2], KEYS[3]
local checkpoint = tonumber(redis.call('GET', checkpoint_key) or '0')
local last = redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', 1)[1]
if last and tonumber(string.sub(last[1], 3)) > checkpoint then
  return {-1, checkpoint, last[1]}
end
local count, partitions = tonumber(ARGV[1]), tonumber(ARGV[2])
local declared = tonumber(redis.call('GET', partitions_key) or '0')
if declared ~= partitions then
  if declared ~= 0 or last then return {-2, checkpoint, declared} end
  redis.call('SET', partitions_key, ARGV[2])
end
local written, top, top_text = 0, checkpoint, nil
for i = 0, count - 1 do
  local at = 3 + i * 9
  local position = tonumber(ARGV[at])
  if position > top then
    local id = '0-' .. ARGV[at]
    local fields = {'stream_id', ARGV[at + 1], 'version', ARGV[at + 2], 'position', ARGV[at + 3], 'type', ARGV[at + 4],
      'id', ARGV[at + 5], 'data', ARGV[at + 6], 'metadata', ARGV[at + 7], 'recorded_at_us', ARGV[at + 8]}
    redis.call('XADD', log_key, id, unpack(fields))
    redis.call('XADD', KEYS[4 + i], id, unpack(fields))
    if partitions > 0 then redis.call('XADD', KEYS[4 + count + i], id, unpack(fields)) end
    written = written + 1
    top = position
    top_text = ARGV[at]
  end
end
if top_text then redis.call('SET', checkpoint_key, top_text) end
return {written, top}
"""

_encoder = msgspec.json.Encoder()
_object_decoder = msgspec.json.Decoder(dict[str, Any])


# One partition of a Redis Cluster. KEYS: the partition stream, its `relayed` key (same slot). ARGV: event count, then
# per event its position and the values of the entry's fields in `_FIELDS` order, as for `RELAY_SCRIPT`.
# Reply: {written, last position in the partition}; {-1, position, event id found there} when the partition holds
# another event at a position of this batch; {-2, position} when it lacks one below its last entry (another relay).
CLUSTER_RELAY_SCRIPT: Final = """#!lua
local key, relayed_key = KEYS[1], KEYS[2]
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
local top, top_text = 0, '0'
if last then top_text = string.sub(last[1], 3); top = tonumber(top_text) end
local first = nil
local written = 0
for i = 0, tonumber(ARGV[1]) - 1 do
  local at = 2 + i * 9
  local position = tonumber(ARGV[at])
  local id = '0-' .. ARGV[at]
  if position > top then
    redis.call('XADD', key, id, 'stream_id', ARGV[at + 1], 'version', ARGV[at + 2], 'position', ARGV[at + 3],
      'type', ARGV[at + 4], 'id', ARGV[at + 5], 'data', ARGV[at + 6], 'metadata', ARGV[at + 7],
      'recorded_at_us', ARGV[at + 8])
    written = written + 1
    top, top_text = position, ARGV[at]
  else
    local found = redis.call('XRANGE', key, id, id)[1]
    if found then
      if found[2][10] ~= ARGV[at + 5] then return {-1, ARGV[at], found[2][10]} end
    else
      first = first or redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
      if first and position > tonumber(string.sub(first[1], 3)) then return {-2, ARGV[at]} end
    end
  end
end
redis.call('SET', relayed_key, top_text)
return {written, top_text}
"""


class RelayConflict(AgentfoldError):
    """The target's log holds events beyond this relay's checkpoint: another relay writes to the same prefix."""


def category_of(stream_id: str) -> str:
    """The category of a stream: its id up to the first ``-`` (``order-42`` -> ``order``), or the whole id."""
    return stream_id.split("-", 1)[0]


def decode_relayed(entry_id: bytes | str, fields: dict[bytes, bytes]) -> RecordedEvent:
    """A relayed stream entry (as ``XRANGE``/``XREADGROUP`` return it, bytes keys) as the event it copies."""
    try:
        return RecordedEvent(
            fields[b"stream_id"].decode(),
            int(fields[b"version"]),
            int(fields[b"position"]),
            fields[b"type"].decode(),
            _object_decoder.decode(fields[b"data"]),
            _object_decoder.decode(fields[b"metadata"]),
            fields[b"id"].decode(),
            int(fields[b"recorded_at_us"]),
        )
    except (KeyError, ValueError, msgspec.DecodeError) as error:
        raise StoreCorrupted(f"relayed entry {entry_id!r} was not written by the agentfold relay: {error}") from None


def relay_settings(target_url: str) -> FanoutTarget:
    """Check the target URL: ``redis://`` with the options ``prefix`` and ``timeout``, or ``redis+cluster://``
    (`agentfold.fanout.targets.parse_target`)."""
    return parse_target(target_url)


def _packed_fields(event: RecordedEvent) -> list[bytes]:
    """An event's script arguments: its position, then the values of its entry's fields in `_FIELDS` order."""
    position = bulk_string(b"%d" % event.position)
    return [
        position,
        bulk_string(event.stream_id.encode()),
        bulk_string(b"%d" % event.version),
        position,
        bulk_string(event.type.encode()),
        bulk_string(event.id_text.encode()),
        bulk_string(_encoder.encode(event.data)),
        bulk_string(_encoder.encode(event.metadata)),
        bulk_string(b"%d" % event.recorded_at_us),
    ]


class Relay:
    """Copies `source.read_all` into Redis Streams under the target's prefix; see the module docstring."""

    def __init__(
        self,
        source: EventStore,
        target_url: str,
        *,
        name: str = "relay",
        batch_size: int = DEFAULT_BATCH_SIZE,
        partitions: int = 0,
    ) -> None:
        if not isinstance(name, str) or not name or not name.isprintable() or len(name) > 200:
            raise InvalidInput(f"relay name must be 1 to 200 printable characters, got {name!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise InvalidInput(f"batch_size must be an int in 1..{MAX_BATCH_SIZE}, got {batch_size!r}")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or not 0 <= partitions <= MAX_PARTITIONS:
            raise InvalidInput(
                f"partitions must be an int in 0..{MAX_PARTITIONS} (0: no partition streams), got {partitions!r}"
            )
        self.settings = relay_settings(target_url)
        if self.settings.cluster and partitions == 0:
            raise InvalidInput(
                "a Redis Cluster target needs partitions >= 1: on a cluster the relay writes partition streams only "
                "(a log or category stream is one key, so one master would take every write)"
            )
        self.source = source
        self.partitions = partitions
        self.name = name
        self.batch_size = batch_size
        keys = FanoutKeys(self.settings.prefix, self.settings.cluster)
        self.checkpoint_key = keys.checkpoint(name)
        self.log_key = keys.log
        self.partitions_key = keys.partitions
        self._category_prefix = f"{self.settings.prefix}:category:".encode()
        self._partition_prefix = f"{self.settings.prefix}:partition:".encode()
        self._client = make_fanout_client(self.settings, self.settings.timeout)
        self._cluster = _ClusterWriter(self, keys) if self.settings.cluster else None
        self._checked = False
        if self._cluster is None:
            self._script = self._client.register_script(RELAY_SCRIPT)
            # Batches go out on a connection of their own, packed here: the driver's generic packing of a batch's
            # ~10 arguments per event cost more CPU than everything else the relay does (it was 85% of `_write`).
            self._connection = untimed_connection(self._client)
            self._evalsha_head = bulk_string(b"EVALSHA") + bulk_string(self._script.sha.encode())

    async def close(self) -> None:
        """Close the connections to the target (the source stays open: it belongs to the caller)."""
        if self._cluster is not None:
            await self._cluster.close()
        else:
            await self._connection.disconnect()
        await self._client.aclose()

    async def checkpoint(self) -> int:
        """The last position this relay wrote to the target (on a cluster: and saw confirmed), 0 before the first."""
        with translate_errors(f"read the relay checkpoint from Redis at {self.settings.shown_url}"):
            value = await self._client.get(self.checkpoint_key)
        return int(value) if value is not None else 0

    async def run(self, *, once: bool = False, stop_event: asyncio.Event | None = None) -> int:
        """Copy events until stopped and return how many were written.

        `once`: copy what the source holds now, then return. Otherwise follow the source until `stop_event` is
        set, waking on new appends; a retryable error (a store or Redis restarting, a cluster failing over, a batch
        its replicas did not confirm in time) is logged and the batch written again.
        """
        await self._check_target()
        written = 0
        scanned = await self.checkpoint()
        end = await self.source.head_position() if once else None
        delay = 0.1
        ahead: asyncio.Future[tuple[list[RecordedEvent], int]] | None = None
        """The read of the batch after the one being written: the source prepares it while Redis runs the script.
        Positions the source shows are final, so reading past what is not yet written misses nothing; after an
        error the read ahead is dropped and reading starts again after the last batch written."""
        try:
            while not (stop_event is not None and stop_event.is_set()):
                if end is not None and scanned >= end:
                    return written
                try:
                    if ahead is not None:
                        events, scanned_to = await ahead
                        ahead = None
                    else:
                        events, scanned_to = await self._read(scanned)
                    if events:
                        if scanned_to > scanned and (end is None or scanned_to < end):
                            ahead = asyncio.ensure_future(self._read(scanned_to))
                        written += await self._write(events)
                    if scanned_to <= scanned and end is None:
                        await self._wait(scanned, stop_event)
                except AgentfoldError as error:
                    _dropped(ahead)
                    ahead = None
                    if once or not error.retryable:
                        raise
                    logger.warning("relay %r: %s; retrying in %.1f s", self.name, error, delay)
                    await _sleep_or_stop(delay, stop_event)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.1
                if scanned_to > scanned:
                    scanned = scanned_to
                elif end is not None:
                    return written  # nothing above `scanned` any more: the rest up to the head was trimmed
            return written
        finally:
            _dropped(ahead)

    async def _check_target(self) -> None:
        if self._checked:
            return
        if self._cluster is not None:
            await self._cluster.check()
        else:
            assert self.settings.node is not None, "a single Redis has node settings"
            _, persistence = await check_server(self.settings.node)
            warn_once(self.settings.node, persistence)
            await self._write([])  # checks the partition count, declares it on an empty prefix: groups can start now
        self._checked = True

    async def _read(self, after: int) -> tuple[list[RecordedEvent], int]:
        return await self.source.read_all_page(after, self.batch_size)

    async def _write(self, events: Sequence[RecordedEvent]) -> int:
        if self._cluster is not None:
            return await self._cluster.write(events)
        keys: list[bytes] = [self.checkpoint_key, self.log_key, self.partitions_key]
        for event in events:
            keys.append(self._category_prefix + category_of(event.stream_id).encode())
        if self.partitions:
            for event in events:
                keys.append(self._partition_prefix + str(partition_of(event.stream_id, self.partitions)).encode())
        parts = [
            bulk_string(b"%d" % len(keys)),
            *map(bulk_string, keys),
            bulk_string(b"%d" % len(events)),
            bulk_string(b"%d" % self.partitions),
        ]
        for event in events:
            parts += _packed_fields(event)
        packed = b"*%d\r\n" % (2 + len(parts)) + self._evalsha_head + b"".join(parts)
        timeout = self.settings.timeout
        with translate_errors(f"relay events to Redis at {self.settings.shown_url}"):
            try:
                reply = await exchange(self._connection, timeout, send_and_read(self._connection, packed))
            except redis_errors.NoScriptError:
                # The server restarted or flushed its scripts. The script did not run: sending it again is safe.
                await self._client.script_load(RELAY_SCRIPT)
                reply = await exchange(self._connection, timeout, send_and_read(self._connection, packed))
        if int(reply[0]) == -2:
            raise self._mismatch(int(reply[2]))
        if int(reply[0]) < 0:
            raise RelayConflict(
                f"relay {self.name!r}: the log at {self.settings.shown_url} (prefix {self.settings.prefix!r}) holds "
                f"entry {as_text(reply[2])} beyond this relay's checkpoint {int(reply[1])}: another relay writes to "
                "this prefix. Give each source its own prefix, and each prefix one relay name."
            )
        return int(reply[0])

    def _mismatch(self, declared: int) -> InvalidInput:
        return InvalidInput(
            f"relay {self.name!r}: the prefix {self.settings.prefix!r} at {self.settings.shown_url} was filled "
            + (f"with {declared} partition streams" if declared else "without partition streams")
            + f", not {self.partitions}: partitioning is chosen when a prefix is first filled (consumer groups "
            "would miss events otherwise). Relay into a new prefix to change it."
        )

    async def _wait(self, after: int, stop_event: asyncio.Event | None) -> None:
        await self.source.wait_for_append(after, 5.0, until=stop_event)


class _ClusterWriter:
    """Writes the relay's batches to the partition streams of a Redis Cluster; see the module docstring."""

    def __init__(self, relay: Relay, keys: FanoutKeys) -> None:
        self._relay = relay
        self._target = relay.settings
        self._client = relay._client
        count = relay.partitions
        self._keys = keys
        self._partition_keys = [keys.partition(number, count) for number in range(count)]
        self._relayed_keys = [bulk_string(keys.relayed(number, count)) for number in range(count)]
        sha = hashlib.sha1(CLUSTER_RELAY_SCRIPT.encode()).hexdigest().encode()
        self._evalsha_head = bulk_string(b"EVALSHA") + bulk_string(sha) + bulk_string(b"2")
        self._load = b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n" + bulk_string(CLUSTER_RELAY_SCRIPT.encode())
        wait_ms = b"%d" % max(1, round(self._target.replica_timeout * 1000))
        self._wait = (
            b"*3\r\n" + bulk_string(b"WAIT") + bulk_string(b"%d" % self._target.replicas) + bulk_string(wait_ms)
            if self._target.replicas
            else b""
        )
        self._links: dict[str, Any] = {}
        """A connection of our own per master, by node name: a master's calls and their WAIT share one."""
        self._stale = False
        """The cluster's layout may have changed (an error, a redirection): read it again before the next batch."""

    async def check(self) -> None:
        """Reach the cluster, refuse masters older than Redis 7.0, and declare (or check) the partition count."""
        what = f"connect to the Redis Cluster at {self._target.shown_url}"
        with translate_errors(what):
            await self._client.initialize()
            for node in self._client.get_primaries():
                version = version_of(await self._client.info("server", target_nodes=node))
                if version < MIN_VERSION:
                    shown = ".".join(str(part) for part in version)
                    raise InvalidURL(f"the Redis Cluster master {node.name} runs {shown}; agentfold needs Redis >= 7.0")
            await self._client.set(self._keys.partitions, self._relay.partitions, nx=True)
            declared = int(await self._client.get(self._keys.partitions) or 0)
        if declared != self._relay.partitions:
            raise self._relay._mismatch(declared)

    async def close(self) -> None:
        for link in self._links.values():
            await link.disconnect()
        self._links.clear()

    async def write(self, events: Sequence[RecordedEvent]) -> int:
        if not events:
            return 0
        if self._stale:
            with translate_errors(f"read the layout of the Redis Cluster at {self._target.shown_url}"):
                await self._client.nodes_manager.initialize()
        self._stale = True  # until the batch is through: any error may come from a change of layout
        count = self._relay.partitions
        by_partition: dict[int, list[bytes]] = {}
        sizes: dict[int, int] = {}
        for event in events:
            number = partition_of(event.stream_id, count)
            by_partition.setdefault(number, []).extend(_packed_fields(event))
            sizes[number] = sizes.get(number, 0) + 1
        by_node: dict[str, tuple[ClusterNode, list[tuple[int, bytes]]]] = {}
        for number, fields in by_partition.items():
            key = self._partition_keys[number]
            call = b"".join(
                [
                    b"*%d\r\n" % (6 + len(fields)),
                    self._evalsha_head,
                    bulk_string(key),
                    self._relayed_keys[number],
                    bulk_string(b"%d" % sizes[number]),
                    *fields,
                ]
            )
            node = node_of(self._client, key)
            by_node.setdefault(node.name, (node, []))[1].append((number, call))
        outcomes = await asyncio.gather(
            *(self._send(node, calls) for node, calls in by_node.values()), return_exceptions=True
        )
        written = 0
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            written += outcome
        top = b"%d" % events[-1].position
        with translate_errors(f"move the relay checkpoint at {self._target.shown_url}"):
            await self._client.set(self._relay.checkpoint_key, top)
            await self._client.xadd(self._keys.wake, {b"position": top}, maxlen=_WAKE_LENGTH, approximate=True)
        self._stale = False
        return written

    async def _send(self, node: ClusterNode, calls: list[tuple[int, bytes]]) -> int:
        """Run one master's share of a batch, then WAIT for its replicas; return how many entries were added."""
        link = self._links.get(node.name)
        if link is None:
            link = self._links[node.name] = own_connection(self._client, self._partition_keys[calls[0][0]])
        packed = b"".join(call for _, call in calls) + self._wait
        expected = len(calls) + (1 if self._wait else 0)
        timeout = self._target.timeout + self._target.replica_timeout
        with translate_errors(f"relay events to the Redis Cluster master {node.name}"):
            replies = await exchange(link, timeout, _send_and_read_all(link, packed, expected))
            if any(isinstance(reply, redis_errors.NoScriptError) for reply in replies):
                # A master new to this relay (a failover) or one that flushed its scripts. The calls that met NOSCRIPT
                # did not run, and the others skip what they wrote: sending them all again is safe.
                await exchange(link, timeout, send_and_read(link, self._load))
                replies = await exchange(link, timeout, _send_and_read_all(link, packed, expected))
            for reply in replies:
                if isinstance(reply, redis_errors.ResponseError):
                    raise reply
        written = 0
        for (number, _), reply in zip(calls, replies, strict=False):
            if int(reply[0]) < 0:
                found = f"event {as_text(reply[2])}" if int(reply[0]) == -1 else "no event"
                raise RelayConflict(
                    f"relay {self._relay.name!r}: partition {number} at {self._target.shown_url} (prefix "
                    f"{self._target.prefix!r}) holds {found} at position {as_text(reply[1])}, where this relay's "
                    "source has another: another relay writes to this prefix. Give each source its own prefix."
                )
            written += int(reply[0])
        if self._wait and int(replies[-1]) < self._target.replicas:
            raise StoreUnavailable(
                f"relay {self._relay.name!r}: {int(replies[-1])} of {self._target.replicas} replicas of the Redis "
                f"Cluster master {node.name} confirmed the batch within {self._target.replica_timeout} s; it is not "
                "acknowledged, and the relay writes it again (partitions skip what they hold)"
            )
        return written


async def _send_and_read_all(connection: Any, packed: bytes, count: int) -> list[Any]:
    """Send pipelined commands and read `count` replies, an error reply as its exception (the others still read)."""
    await connection.send_packed_command(packed, check_health=False)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except redis_errors.ResponseError as error:
            replies.append(error)
    return replies


def _dropped(read: asyncio.Future[Any] | None) -> None:
    """Stop a read ahead nobody will take, and retrieve its outcome so an error is not reported as unhandled."""
    if read is not None:
        read.cancel()
        read.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _sleep_or_stop(delay: float, stop_event: asyncio.Event | None) -> None:
    if stop_event is None:
        await asyncio.sleep(delay)
        return
    try:
        await asyncio.wait_for(stop_event.wait(), delay)
    except TimeoutError:
        return


async def relay(
    source: EventStore,
    target_url: str,
    *,
    name: str = "relay",
    batch_size: int = DEFAULT_BATCH_SIZE,
    partitions: int = 0,
    once: bool = False,
    stop_event: asyncio.Event | None = None,
) -> int:
    """Copy `source`'s events into Redis Streams at `target_url`; return how many were written. See `Relay.run`."""
    worker = Relay(source, target_url, name=name, batch_size=batch_size, partitions=partitions)
    try:
        return await worker.run(once=once, stop_event=stop_event)
    finally:
        await worker.close()
