"""Relay: copy a store's global log into Redis Streams, in order, each position at most once.

The SQL store stays the record; Redis Streams spread its events to many consumers. Layout under the target URL's
prefix (nothing else in the database is touched):

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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from redis import exceptions as redis_errors

from agentfold.backends.redis import (
    RedisSettings,
    as_text,
    bulk_string,
    check_server,
    exchange,
    make_client,
    parse_url,
    send_and_read,
    translate_errors,
    untimed_connection,
    warn_once,
)
from agentfold.errors import AgentfoldError, InvalidInput, InvalidURL, StoreCorrupted
from agentfold.events import RecordedEvent
from agentfold.groups import partition_of
from agentfold.store import EventStore

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE: Final = 500
MAX_BATCH_SIZE: Final = 10_000
MAX_PARTITIONS: Final = 1024
_FIELDS: Final = (b"stream_id", b"version", b"position", b"type", b"id", b"data", b"metadata", b"recorded_at_us")

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


def relay_settings(target_url: str) -> RedisSettings:
    """Check the target URL: a ``redis://`` URL whose options are ``prefix`` and ``timeout``."""
    settings = parse_url(target_url, {})
    if settings.durability != "server":
        raise InvalidURL(
            "the relay takes no durability option: its copy can always be rebuilt from the source, and a Redis that "
            "loses recent entries loses their checkpoint with them, so the relay copies them again"
        )
    return settings


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
        self.source = source
        self.partitions = partitions
        self.settings = relay_settings(target_url)
        self.name = name
        self.batch_size = batch_size
        prefix = self.settings.prefix
        self.checkpoint_key = f"{prefix}:relay:{name}".encode()
        self.log_key = f"{prefix}:log".encode()
        self.partitions_key = f"{prefix}:partitions".encode()
        self._category_prefix = f"{prefix}:category:".encode()
        self._partition_prefix = f"{prefix}:partition:".encode()
        self._client = make_client(self.settings, self.settings.timeout)
        self._script = self._client.register_script(RELAY_SCRIPT)
        # Batches go out on a connection of their own, packed here: the driver's generic packing of a batch's
        # ~10 arguments per event cost more CPU than everything else the relay does (it was 85% of `_write`).
        self._connection = untimed_connection(self._client)
        self._evalsha_head = bulk_string(b"EVALSHA") + bulk_string(self._script.sha.encode())
        self._checked = False

    async def close(self) -> None:
        """Close the connection to the target (the source stays open: it belongs to the caller)."""
        await self._connection.disconnect()
        await self._client.aclose()

    async def checkpoint(self) -> int:
        """The last position this relay wrote to the target, 0 before the first."""
        with translate_errors(f"read the relay checkpoint from Redis at {self.settings.shown_url}"):
            value = await self._client.get(self.checkpoint_key)
        return int(value) if value is not None else 0

    async def run(self, *, once: bool = False, stop_event: asyncio.Event | None = None) -> int:
        """Copy events until stopped and return how many were written.

        `once`: copy what the source holds now, then return. Otherwise follow the source until `stop_event` is
        set, waking on new appends; a retryable error (a store or Redis restarting) is logged and retried.
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
        _, persistence = await check_server(self.settings)
        warn_once(self.settings, persistence)
        await self._write([])  # checks the partition count, declares it on an empty prefix: groups can start now
        self._checked = True

    async def _read(self, after: int) -> tuple[list[RecordedEvent], int]:
        return await self.source.read_all_page(after, self.batch_size)

    async def _write(self, events: Sequence[RecordedEvent]) -> int:
        keys: list[bytes] = [self.checkpoint_key, self.log_key, self.partitions_key]
        for event in events:
            keys.append(self._category_prefix + category_of(event.stream_id).encode())
        if self.partitions:
            for event in events:
                keys.append(self._partition_prefix + str(partition_of(event.stream_id, self.partitions)).encode())
        encode = _encoder.encode
        parts = [
            bulk_string(b"%d" % len(keys)),
            *map(bulk_string, keys),
            bulk_string(b"%d" % len(events)),
            bulk_string(b"%d" % self.partitions),
        ]
        for event in events:
            position = bulk_string(b"%d" % event.position)
            parts += [
                position,
                bulk_string(event.stream_id.encode()),
                bulk_string(b"%d" % event.version),
                position,
                bulk_string(event.type.encode()),
                bulk_string(event.id_text.encode()),
                bulk_string(encode(event.data)),
                bulk_string(encode(event.metadata)),
                bulk_string(b"%d" % event.recorded_at_us),
            ]
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
            declared = int(reply[2])
            raise InvalidInput(
                f"relay {self.name!r}: the prefix {self.settings.prefix!r} at {self.settings.shown_url} was filled "
                + (f"with {declared} partition streams" if declared else "without partition streams")
                + f", not {self.partitions}: partitioning is chosen when a prefix is first filled (consumer groups "
                "would miss events otherwise). Relay into a new prefix to change it."
            )
        if int(reply[0]) < 0:
            raise RelayConflict(
                f"relay {self.name!r}: the log at {self.settings.shown_url} (prefix {self.settings.prefix!r}) holds "
                f"entry {as_text(reply[2])} beyond this relay's checkpoint {int(reply[1])}: another relay writes to "
                "this prefix. Give each source its own prefix, and each prefix one relay name."
            )
        return int(reply[0])

    async def _wait(self, after: int, stop_event: asyncio.Event | None) -> None:
        await self.source.wait_for_append(after, 5.0, until=stop_event)


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
