"""Redis-native consumer groups on relayed streams: competing members, each stream's events in order to one member.

The relay (`agentfold.fanout.redis_relay`, with ``partitions=N``) writes every event a second time to one of N
partition streams, ``{prefix}:partition:{k}`` with ``k = partition_of(stream_id, N)``, in the same script call that
writes the log and moves its checkpoint. All events of one stream are therefore in one partition stream, in stream
order, and a partition stream never has a gap. Members of a group then share the partitions:

- **Ownership.** A member owns a partition while it holds the lease ``{prefix}:group:{group}:owner:{k}`` (``SET
  member NX PX lease``, renewed by every heartbeat, deleted by a compare-and-delete script). Heartbeats also keep the
  member in ``{prefix}:group:{group}:members`` (a sorted set scored by expiry, judged by Redis's clock), so each
  member sees the live members and takes its fair share, ``ceil(N / live members)``: it claims free partitions when
  below it and hands partitions back when above it (a member joining or leaving therefore rebalances).
- **Delivery.** Each partition stream has a Redis consumer group named after the group (``XGROUP CREATE ... 0
  MKSTREAM``: a new group starts at the first relayed event). The owner reads it with ``XREADGROUP``, one partition
  at a time in one task, one entry after the other, and ``XACK``s each entry once its handler returned. Every read
  runs in a script that first checks the lease, so a member that lost a partition reads nothing more from it.
  The ``XACK`` is written to the partition's own connection before the next entry is handed over, but its reply is
  read only before the partition's next script call (every script call waits for them), so handling an entry costs
  no round trip: Redis runs a connection's commands in order, and what a member wrote before it died still
  arrives.
- **Order.** Within a partition, entries are handled strictly in entry order: an entry is acknowledged (or
  dead-lettered) before the next one is handed over, and a failed entry is retried before anything after it. A new
  owner first takes over the pending entries of earlier owners (``XAUTOCLAIM`` of the entries idle for at least
  ``min_idle_seconds``) and handles them, oldest first, before it reads new entries (``>``); while earlier owners
  hold entries not idle long enough, it waits. Since all of a stream's events are in one partition, each stream's
  events reach one member at a time, in stream order.
- **At least once.** An entry leaves the pending list only by ``XACK`` after its handler returned, or with its dead
  letter. A member that dies (SIGKILL) leaves its entries pending; its leases expire after ``lease_seconds``, and
  the next owner takes its pending entries over once they were idle for ``min_idle_seconds``. A member leaving
  cleanly finishes the entry in hand and marks its other pending entries idle, so its successor takes them at once.
  Events are delivered again only when they were not acknowledged: after a crash, a lost lease, or an ``XACK``
  that did not reach Redis.
- **Dead letters.** The pending list's delivery count is the number of handler calls: reading ``>`` sets it to 1,
  each retry after a failure (``XCLAIM`` to oneself) adds 1, and a new owner adds 1 to the oldest pending entry only
  (under strictly sequential handling, it is the only one a handler may have had). When a handler fails on its
  ``max_attempts``-th call, or an entry is due for call ``max_attempts + 1`` because the members handling it kept
  dying (a poison event that crashes its process), the entry goes to ``{prefix}:dead:{group}`` with its fields, the
  error and its traceback, and is acknowledged in the same script call; the partition moves on.

Limits: a member paused for longer than its lease (a stopped VM, a debugger), or whose handler runs longer than
``min_idle_seconds`` while it loses its lease, may finish the entry in hand after a new owner took it over, so
handlers should be idempotent, as at-least-once delivery demands anyway. A member dying between reading a batch and
handing over its first entry counts one delivery too many for that entry. Member ids must be unique among live
members.

**On a Redis Cluster** (a ``redis+cluster://`` URL, `agentfold.fanout.targets`) the same scripts run, each on the
keys of one partition: the partition stream, its lease and its own dead-letter stream ``{prefix}:dead:{group}:{<tag>}``
share the partition's hash tag, so each call runs on the master of that partition's slot, and the members read every
master. Heartbeats renew the leases one partition at a time; while one master fails over, the leases on the others
are still renewed, so only the failed master's partitions pause (and, if the members set is on it, rebalancing).
Members wake on the relay's wake-up stream ``{prefix}:wake`` instead of the log. Replication is asynchronous: a
master that fails may take with it acknowledgements, reads and entries its replica had not received, so after a
failover a group can be handed again events it had handled (the relay also writes again what was not confirmed).
Delivery stays at least once; the event's position (the entry id ``0-<position>``) is the key to drop repeats.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from agentfold.backends.redis import as_text, bulk_string, translate_errors
from agentfold.errors import AgentfoldError, InvalidInput, StoreCorrupted
from agentfold.events import RecordedEvent
from agentfold.fanout.redis_relay import decode_relayed, relay_settings
from agentfold.fanout.targets import FanoutKeys, disconnect_all, make_fanout_client, own_connection
from agentfold.groups import Handler
from agentfold.validation import check_integer, check_seconds, check_text
from agentfold.wakeup import Broadcast, wait_unless

logger = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS: Final = 10.0
DEFAULT_MIN_IDLE_SECONDS: Final = 30.0
DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_BATCH_SIZE: Final = 100
MAX_BATCH_SIZE: Final = 10_000
_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
_RELEASED_IDLE_MS: Final = 86_400_000
"""The idle time a member leaving gives its pending entries: more than any `min_idle_seconds`, so they go at once."""
_WATCH_BLOCK_MS: Final = 1000
_IDLE_POLL_SECONDS: Final = 1.0
_TRACEBACK_CHARS: Final = 4000

# KEYS: the members set. ARGV: member, lease ms. Reply: the live members, this one renewed among them.
MEMBERS_SCRIPT: Final = """#!lua
local members_key, me, lease = KEYS[1], ARGV[1], tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', members_key, '-inf', now)
redis.call('ZADD', members_key, now + lease, me)
redis.call('PEXPIRE', members_key, lease)
return redis.call('ZRANGE', members_key, 0, -1)
"""

# KEYS: owner keys (on a cluster one per call: each lives in its partition's slot). ARGV: member, lease ms.
# Reply: the owner of each ('' when free); renews the leases the member holds.
RENEW_SCRIPT: Final = """#!lua
local me, lease = ARGV[1], tonumber(ARGV[2])
local owners = {}
for i = 1, #KEYS do
  local owner = redis.call('GET', KEYS[i])
  if owner == me then redis.call('PEXPIRE', KEYS[i], lease) end
  owners[i] = owner or ''
end
return owners
"""

# KEYS: owner key and partition stream of each candidate partition, in the order to try (on a cluster one candidate
# per call). ARGV: member, lease ms, group, how many to claim. Reply: the 1-based indexes of the candidates claimed.
# A claimed partition gets its Redis consumer group, and consumers holding nothing (members gone) are forgotten.
CLAIM_SCRIPT: Final = """#!lua
local me, lease, group, wanted = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local claimed = {}
for i = 1, #KEYS, 2 do
  if #claimed >= wanted then break end
  if redis.call('SET', KEYS[i], me, 'NX', 'PX', lease) then
    local stream = KEYS[i + 1]
    redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
      if consumer[4] == 0 and consumer[2] ~= me then
        redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer[2])
      end
    end
    claimed[#claimed + 1] = (i + 1) / 2
  end
end
return claimed
"""

# KEYS: partition stream, owner key. ARGV: group, member, batch size, min idle ms.
# Reply: {0} the lease is not ours; {1} earlier owners hold entries not idle long enough (wait);
# {2, {{id, delivery count, fields}...}} our pending entries, oldest first (taken over or left by an error);
# {3, {{id, fields}...}} new entries; {4} nothing to do.
FETCH_SCRIPT: Final = """#!lua
local key, owner_key = KEYS[1], KEYS[2]
local group, me, count, min_idle = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('GET', owner_key) ~= me then return {0} end
local function others_hold_entries()
  local consumers = redis.call('XPENDING', key, group)[4]
  if not consumers then return false end
  for _, consumer in ipairs(consumers) do
    if consumer[1] ~= me then return true end
  end
  return false
end
if others_hold_entries() then
  local cursor = '0-0'
  repeat
    cursor = redis.call('XAUTOCLAIM', key, group, me, min_idle, cursor, 'COUNT', 100, 'JUSTID')[1]
  until cursor == '0-0'
  if others_hold_entries() then return {1} end
end
local pending = redis.call('XPENDING', key, group, '-', '+', count, me)
if #pending > 0 then
  local entries = {}
  for i, entry in ipairs(pending) do
    local id, deliveries, claimed = entry[1], entry[4], nil
    if i == 1 then
      claimed = redis.call('XCLAIM', key, group, me, 0, id)
      deliveries = deliveries + 1
    else
      claimed = redis.call('XCLAIM', key, group, me, 0, id, 'RETRYCOUNT', deliveries)
    end
    if claimed[1] then entries[#entries + 1] = {id, deliveries, claimed[1][2]} end
  end
  return {2, entries}
end
local read = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', count, 'STREAMS', key, '>')
if read then return {3, read[1][2]} end
return {4}
"""

# KEYS: partition stream, owner key. ARGV: group, member, entry id. Reply: the entry's delivery count after this
# redelivery to ourselves, 0 when the lease is not ours or the entry is no longer pending.
RETRY_SCRIPT: Final = """#!lua
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
if not redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])[1] then return 0 end
return redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1][4]
"""

# KEYS: partition stream, owner key, dead-letter stream. ARGV: group, member, entry id, then the dead letter's fields
# and values. Reply: 1 written and acknowledged, 0 the lease is not ours (the next owner decides).
DEAD_LETTER_SCRIPT: Final = """#!lua
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: partition stream, owner key. ARGV: group, member, idle ms, the oldest entry read but never handed to the
# handler ('' if none), the delivery count to give it. Marks our pending entries idle so the next owner takes them at
# once, undoes the count of the entry never handled (the next owner adds it again), and deletes the lease.
RELEASE_SCRIPT: Final = """#!lua
local key, group, me = KEYS[1], ARGV[1], ARGV[2]
if redis.call('GET', KEYS[2]) ~= me then return 0 end
for _, entry in ipairs(redis.call('XPENDING', key, group, '-', '+', 100000, me)) do
  if entry[1] == ARGV[4] then
    redis.call('XCLAIM', key, group, me, 0, entry[1], 'IDLE', ARGV[3], 'RETRYCOUNT', ARGV[5], 'JUSTID')
  else
    redis.call('XCLAIM', key, group, me, 0, entry[1], 'IDLE', ARGV[3], 'JUSTID')
  end
end
redis.call('DEL', KEYS[2])
return 1
"""

_LOST, _WAIT, _PENDING, _NEW, _NOTHING = 0, 1, 2, 3, 4


@dataclass
class _Partition:
    """A partition this member owns, and what its task was asked to do."""

    number: int
    key: bytes
    owner_key: bytes
    valid_until: float
    """Monotonic time the lease runs out unless renewed, counted from when the renewal was sent (never late)."""
    release: bool = False
    lost: bool = False
    task: asyncio.Task[None] | None = None
    acks: _Acknowledgements | None = None
    client: Any = None
    """The client for this partition's script calls: on a cluster one of its own (see `_work`)."""


class _Acknowledgements:
    """``XACK``s of one partition, written at once and answered later, on a connection of their own.

    `send` returns when the command is in the socket, before Redis answered; `settle` reads the answers. The owner
    settles before every script call on the partition, so a script never sees an entry whose acknowledgement is
    still on its way. The connection has no per-operation socket timeout (the driver starts a task for each timed
    write); `settle` bounds the whole wait instead.
    """

    def __init__(self, client: Any, key: bytes, group: str, timeout: float, shown_url: str) -> None:
        self._connection = own_connection(client, key)  # on a cluster: to the master of the partition's slot
        self._head = b"*4\r\n$4\r\nXACK\r\n" + bulk_string(key) + bulk_string(group.encode())
        self._timeout = timeout
        self._what = f"acknowledge entries of {as_text(key)} in group {group!r} at {shown_url}"
        self._unanswered = 0

    async def send(self, entry_id: bytes) -> None:
        with translate_errors(self._what):
            try:
                async with asyncio.timeout(self._timeout):
                    await self._connection.send_packed_command(self._head + bulk_string(entry_id), check_health=False)
            except BaseException:
                await self._reset()
                raise
        self._unanswered += 1

    async def settle(self) -> None:
        if not self._unanswered:
            return
        with translate_errors(self._what):
            try:
                async with asyncio.timeout(self._timeout):
                    while self._unanswered:
                        await self._connection.read_response()
                        self._unanswered -= 1
            except BaseException:
                await self._reset()
                raise

    async def close(self) -> None:
        try:
            await self.settle()
        finally:
            await self._connection.disconnect()

    async def _reset(self) -> None:
        """After an error the answers are lost with the connection; an entry not acknowledged is delivered again."""
        self._unanswered = 0
        await self._connection.disconnect(nowait=True)


@dataclass(frozen=True)
class DeadLetter:
    """An entry a group gave up on, as `dead_letters` reads it from ``{prefix}:dead:{group}``."""

    entry_id: str
    event: RecordedEvent | None
    """The event, or None when the entry could not be decoded (it was not written by the relay)."""
    error: str
    traceback: str
    attempts: int
    member: str
    partition: int


def _check_name(value: object, what: str) -> str:
    """A name that becomes part of Redis keys: the general text rules, then the narrower key alphabet."""
    name = check_text(value, what)
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"{what} must be 1 to 100 letters, digits, '_', '.' or '-', got {name!r}")
    return name


def _check_seconds(value: object, what: str, minimum: float) -> float:
    return check_seconds(value, what, minimum)


def _check_count(value: object, what: str, maximum: int) -> int:
    return check_integer(value, what, 1, maximum)


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[index]: flat[index + 1] for index in range(0, len(flat), 2)}


class RedisConsumerGroupMember:
    """One member of a Redis-native consumer group on relayed partition streams; see the module docstring.

    ``async with RedisConsumerGroupMember(url, "mailer", handler) as member:`` joins the group and works in the
    background until the block ends, when it finishes the entries in hand and hands its partitions back.
    """

    def __init__(
        self,
        url: str,
        group: str,
        handler: Handler,
        *,
        member_id: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        min_idle_seconds: float = DEFAULT_MIN_IDLE_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_delay_seconds: float = 0.05,
    ) -> None:
        self.group = _check_name(group, "group")
        self.member_id = _check_name(member_id or f"member-{uuid.uuid4().hex[:12]}", "member_id")
        if not callable(handler):
            raise InvalidInput(f"handler must be an async callable taking a RecordedEvent, got {handler!r}")
        self.handler = handler
        self.lease_seconds = _check_seconds(lease_seconds, "lease_seconds", 0.1)
        self.min_idle_seconds = _check_seconds(min_idle_seconds, "min_idle_seconds", 0.0)
        self.retry_delay_seconds = _check_seconds(retry_delay_seconds, "retry_delay_seconds", 0.0)
        self.max_attempts = _check_count(max_attempts, "max_attempts", 1_000_000)
        self.batch_size = _check_count(batch_size, "batch_size", MAX_BATCH_SIZE)
        self.settings = relay_settings(url)
        prefix = self.settings.prefix
        self._keys = FanoutKeys(prefix, self.settings.cluster)
        self._members_key = self._keys.members(self.group)
        self._partitions_key = self._keys.partitions
        self._watched_key = self._keys.wake if self.settings.cluster else self._keys.log
        """What the relay writes after every batch: the log on one Redis, the wake-up stream on a cluster."""
        self._lease_ms = max(1, round(self.lease_seconds * 1000))
        self._heartbeat_seconds = self.lease_seconds / 3
        self._partition_count: int | None = None
        self._owned: dict[int, _Partition] = {}
        self._partition_tasks: set[asyncio.Task[None]] = set()
        """Every partition task still running, including those handing their partition back (no longer owned)."""
        self._finishing: set[int] = set()
        """Partitions whose task is acknowledging and handing back (no longer owned, lease not yet deleted)."""
        self._wakes = Broadcast()
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._waiting_logged = False
        self.handled = 0
        """Entries whose handler returned and whose acknowledgement was sent."""
        self.dead_lettered = 0

    # -- life cycle ---------------------------------------------------------------------------------------------

    @property
    def partitions(self) -> list[int]:
        """The partitions this member owns now and works on (not those it is handing back)."""
        return sorted(number for number, state in self._owned.items() if not state.release and not state.lost)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Join the group: start heartbeats, claim partitions and handle their entries in the background."""
        if self._task is not None:
            raise InvalidInput(f"member {self.member_id!r} of group {self.group!r} was started already")
        client = make_fanout_client(self.settings, self.settings.timeout)
        self._client = client
        for name, source in (
            ("members", MEMBERS_SCRIPT),
            ("renew", RENEW_SCRIPT),
            ("claim", CLAIM_SCRIPT),
            ("fetch", FETCH_SCRIPT),
            ("retry", RETRY_SCRIPT),
            ("dead_letter", DEAD_LETTER_SCRIPT),
            ("release", RELEASE_SCRIPT),
        ):
            self._scripts[name] = client.register_script(source)
        self._task = asyncio.create_task(self._run(), name=f"redis group {self.group} {self.member_id}")

    async def stop(self) -> None:
        """Leave the group: finish the entries in hand, hand every partition back, and raise what made it fail."""
        self._stopping.set()
        self._wakes.wake()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        watch_client = make_fanout_client(self.settings, self.settings.timeout + _WATCH_BLOCK_MS / 1000)
        watcher = asyncio.create_task(self._watch(watch_client), name=f"redis group {self.group} {self.member_id} log")
        try:
            while not self._stopping.is_set():
                try:
                    await self._heartbeat()
                except AgentfoldError as error:
                    if not error.retryable:
                        raise
                    logger.warning("group %r member %r: heartbeat failed: %s", self.group, self.member_id, error)
                await wait_unless(asyncio.sleep(self._heartbeat_seconds), self._stopping)
        finally:
            self._stopping.set()
            await self._leave()
            # redis-py finishes a blocked read before it honours a cancel: closing the socket ends it at once.
            await disconnect_all(watch_client)
            await asyncio.wait([watcher], timeout=self.settings.timeout)
            if not watcher.done():
                watcher.cancel()
            await watch_client.aclose()
            if self._client is not None:
                await self._client.aclose()
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: BaseException) -> None:
        """A partition task met an error retrying cannot fix: the member stops and `stop()` raises it."""
        if self._failure is None:
            self._failure = error
        self._stopping.set()
        self._wakes.wake()

    async def _leave(self) -> None:
        for state in self._owned.values():
            state.release = True
        self._wakes.wake()
        # Also the tasks still handing a partition back after a rebalance: the client closes once they are done.
        await asyncio.gather(*self._partition_tasks, return_exceptions=True)
        try:
            with translate_errors(f"leave group {self.group!r} at {self.settings.shown_url}"):
                await self._redis.zrem(self._members_key, self.member_id)
        except AgentfoldError as error:  # our entry in the members set expires after one lease anyway
            logger.warning("group %r member %r: could not leave cleanly: %s", self.group, self.member_id, error)

    @property
    def _redis(self) -> aioredis.Redis:
        assert self._client is not None, "start() creates the client"
        return self._client

    async def _call(
        self, script: str, keys: Sequence[bytes | str], args: Sequence[bytes | str | int], client: Any = None
    ) -> Any:
        with translate_errors(f"group {self.group!r} at {self.settings.shown_url}: {script}"):
            return await self._scripts[script](keys=list(keys), args=list(args), client=client or self._redis)

    # -- membership and leases ----------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        count = await self._layout()
        if count is None:
            return
        owner_keys = [self._owner_key(number) for number in range(count)]
        live: list[str] | None = None
        try:
            live_raw = await self._call("members", [self._members_key], [self.member_id, self._lease_ms])
            live = sorted(as_text(member) for member in live_raw)
        except AgentfoldError as error:
            if not (self.settings.cluster and error.retryable):
                raise
            # The members set is on one master of the cluster: while it fails over, the leases on the other masters
            # are still renewed (their partitions keep flowing); only the rebalancing waits.
            logger.warning("group %r member %r: members set unreachable: %s", self.group, self.member_id, error)
        sent = time.monotonic()
        owners = await self._renew(owner_keys)
        for number, owner in enumerate(owners):
            if owner is None:
                continue  # its master did not answer: the lease is neither renewed nor known to be lost
            state = self._owned.get(number)
            if owner == self.member_id:
                if state is not None:
                    state.valid_until = sent + self.lease_seconds
                elif number not in self._finishing:
                    self._start_partition(number, sent)  # ours, but its task ended (an error, a lease run out)
            elif state is not None and not state.lost:
                logger.warning("group %r member %r lost partition %d", self.group, self.member_id, number)
                state.lost = True
                self._wakes.wake()
        if live is None:
            return
        share = -(-count // max(1, len(live)))
        mine = self.partitions
        if len(mine) > share:
            for number in self._preferred(live, count)[::-1]:
                if len(mine) <= share:
                    break
                if number in mine:
                    self._owned[number].release = True
                    mine.remove(number)
            self._wakes.wake()
        elif len(mine) < share and not self._stopping.is_set():
            candidates = [
                number
                for number in self._preferred(live, count)
                if owners[number] == "" and number not in self._owned and number not in self._finishing
            ]
            if candidates:
                await self._claim(candidates, share - len(mine))

    async def _renew(self, owner_keys: list[bytes]) -> list[str | None]:
        """Renew this member's leases; the owner of every partition ('' when free; on a cluster, None when the
        partition's master did not answer)."""
        arguments: list[bytes | str | int] = [self.member_id, self._lease_ms]
        if not self.settings.cluster:
            return [as_text(owner) for owner in await self._call("renew", owner_keys, arguments)]
        owners: list[str | None] = []
        for key in owner_keys:  # one after the other: see `_work` on sharing a cluster client between tasks
            try:
                owners.append(as_text((await self._call("renew", [key], arguments))[0]))
            except AgentfoldError as error:
                if not error.retryable:
                    raise
                logger.warning("group %r member %r: lease renewal failed: %s", self.group, self.member_id, error)
                owners.append(None)
        return owners

    async def _claim(self, candidates: list[int], wanted: int) -> None:
        """Claim up to `wanted` of the free `candidates`, in order, and start working on those claimed."""
        arguments: list[bytes | str | int] = [self.member_id, self._lease_ms, self.group]
        if not self.settings.cluster:
            keys: list[bytes] = []
            for number in candidates:
                keys += [self._owner_key(number), self._partition_key(number)]
            sent = time.monotonic()
            claimed = await self._call("claim", keys, [*arguments, wanted])
            for index in claimed:
                self._start_partition(candidates[int(index) - 1], sent)
            return
        for number in candidates:  # on a cluster each partition's keys are in a slot of their own: one call each
            if wanted <= 0 or self._stopping.is_set():
                return
            sent = time.monotonic()
            if await self._call("claim", [self._owner_key(number), self._partition_key(number)], [*arguments, 1]):
                self._start_partition(number, sent)
                wanted -= 1

    async def _layout(self) -> int | None:
        """The relay's partition count, read once; None until a relay with partitions has declared it."""
        if self._partition_count is None:
            with translate_errors(f"read the partition count at {self.settings.shown_url}"):
                value = await self._redis.get(self._partitions_key)
            if value is None or int(value) == 0:
                if not self._waiting_logged:
                    logger.warning(
                        "group %r: %s (prefix %r) has no partition streams yet; waiting for `agentfold relay "
                        "--partitions N` to declare them",
                        self.group,
                        self.settings.shown_url,
                        self.settings.prefix,
                    )
                    self._waiting_logged = True
                return None
            self._partition_count = int(value)
        return self._partition_count

    def _preferred(self, live: list[str], count: int) -> list[int]:
        """Round-robin partitions of this member first, so members rarely race for the same ones."""
        index = live.index(self.member_id) if self.member_id in live else 0
        members = max(1, len(live))
        mine = [number for number in range(count) if number % members == index]
        return mine + [number for number in range(count) if number % members != index]

    def _partition_key(self, number: int) -> bytes:
        assert self._partition_count is not None, "partitions are known before any is worked on"
        return self._keys.partition(number, self._partition_count)

    def _owner_key(self, number: int) -> bytes:
        assert self._partition_count is not None, "partitions are known before any is worked on"
        return self._keys.owner(self.group, number, self._partition_count)

    def _dead_key(self, number: int) -> bytes:
        assert self._partition_count is not None, "partitions are known before any is worked on"
        return self._keys.dead(self.group, number, self._partition_count)

    def _start_partition(self, number: int, sent: float) -> None:
        state = _Partition(number, self._partition_key(number), self._owner_key(number), sent + self.lease_seconds)
        self._owned[number] = state
        state.task = asyncio.create_task(self._work(state), name=f"redis group {self.group} partition {number}")
        self._partition_tasks.add(state.task)
        state.task.add_done_callback(self._partition_tasks.discard)
        logger.debug("group %r member %r took partition %d", self.group, self.member_id, number)

    # -- delivery -----------------------------------------------------------------------------------------------

    def _must_stop(self, state: _Partition) -> bool:
        return state.release or state.lost or self._stopping.is_set() or time.monotonic() >= state.valid_until

    async def _work(self, state: _Partition) -> None:
        """Handle one partition's entries, one after the other, until it is lost or handed back."""
        unhandled: tuple[bytes, int] | None = None
        try:
            # On a cluster each partition's task has a client of its own: redis-py's cluster client answers a
            # CLUSTERDOWN (a failover under way) by closing all its connections, those other tasks are using
            # included, and a command caught connecting then fails with an error of the driver's own
            # (AttributeError), not a connection error. Calls made one after the other on a client are safe.
            if self.settings.cluster:
                state.client = make_fanout_client(self.settings, self.settings.timeout)
                with translate_errors(f"group {self.group!r}: reach the Redis Cluster at {self.settings.shown_url}"):
                    await state.client.initialize()
            state.acks = _Acknowledgements(
                state.client or self._redis, state.key, self.group, self.settings.timeout, self.settings.shown_url
            )
            while not self._must_stop(state):
                ticket = self._wakes.ticket()
                await state.acks.settle()
                reply = await self._call(
                    "fetch",
                    [state.key, state.owner_key],
                    [self.group, self.member_id, self.batch_size, round(self.min_idle_seconds * 1000)],
                    state.client,
                )
                kind = int(reply[0])
                if kind == _LOST:
                    state.lost = True
                elif kind == _WAIT:
                    await Broadcast.wait(ticket, min(_IDLE_POLL_SECONDS, max(0.05, self.min_idle_seconds / 10)))
                elif kind == _NOTHING:
                    await Broadcast.wait(ticket, min(_IDLE_POLL_SECONDS, self._heartbeat_seconds))
                else:
                    entries = (
                        [(entry[0], int(entry[1]), entry[2]) for entry in reply[1]]
                        if kind == _PENDING
                        else [(entry[0], 1, entry[1]) for entry in reply[1]]
                    )
                    for entry_id, deliveries, flat in entries:
                        if self._must_stop(state):
                            unhandled = (entry_id, deliveries)
                            break
                        if not await self._deliver(state, entry_id, deliveries, _fields(flat)):
                            break
        except AgentfoldError as error:
            if not error.retryable:
                self._fail(error)
            else:  # the next heartbeat resumes the partition if the lease is still ours
                logger.warning("group %r partition %d: %s", self.group, state.number, error)
                await wait_unless(asyncio.sleep(self._heartbeat_seconds), self._stopping)
        except Exception as error:
            self._fail(error)
        finally:
            if self._owned.get(state.number) is state:
                del self._owned[state.number]
            # Until the release below has deleted the lease, a heartbeat still finds the partition ours: it must
            # not start a second task for it, whose lease the release would then delete.
            self._finishing.add(state.number)
            try:
                try:
                    if state.acks is not None:
                        await state.acks.close()
                except AgentfoldError as error:  # those entries are delivered again: at least once
                    logger.warning("group %r partition %d: %s", self.group, state.number, error)
                if not state.lost and (state.release or self._stopping.is_set()):
                    await self._release(state, unhandled)
            finally:
                self._finishing.discard(state.number)
                if state.client is not None:
                    await state.client.aclose()

    async def _release(self, state: _Partition, unhandled: tuple[bytes, int] | None) -> None:
        entry_id, deliveries = unhandled if unhandled is not None else (b"", 1)
        try:
            await self._call(
                "release",
                [state.key, state.owner_key],
                [self.group, self.member_id, _RELEASED_IDLE_MS, entry_id, deliveries - 1],
                state.client,
            )
        except AgentfoldError as error:  # the lease expires on its own; the next owner then waits for min idle
            logger.warning("group %r: could not hand partition %d back: %s", self.group, state.number, error)

    async def _deliver(self, state: _Partition, entry_id: bytes, deliveries: int, fields: dict[bytes, bytes]) -> bool:
        """Handle one entry until acknowledged or dead-lettered (True), or until told to stop (False)."""
        try:
            event = decode_relayed(entry_id, fields)
        except StoreCorrupted as error:
            return await self._dead_letter(state, entry_id, fields, deliveries, error)
        attempt = deliveries
        while True:
            if attempt > self.max_attempts:
                abandoned = RuntimeError(
                    f"handed to a handler {attempt - 1} times without being acknowledged: the members handling it "
                    "stopped or lost the partition before they finished"
                )
                return await self._dead_letter(state, entry_id, fields, attempt - 1, abandoned)
            try:
                await self.handler(event)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if attempt >= self.max_attempts:
                    return await self._dead_letter(state, entry_id, fields, attempt, error)
                logger.warning(
                    "group %r: handler failed on %s (attempt %d of %d): %r",
                    self.group,
                    as_text(entry_id),
                    attempt,
                    self.max_attempts,
                    error,
                )
                await wait_unless(asyncio.sleep(self.retry_delay_seconds * attempt), self._stopping)
                if self._must_stop(state):
                    return False
                assert state.acks is not None, "_work sets up the acknowledgements"
                await state.acks.settle()
                attempt = int(
                    await self._call(
                        "retry", [state.key, state.owner_key], [self.group, self.member_id, entry_id], state.client
                    )
                )
                if attempt == 0:
                    state.lost = True
                    return False
            else:
                assert state.acks is not None, "_work sets up the acknowledgements"
                await state.acks.send(entry_id)
                self.handled += 1
                return True

    async def _dead_letter(
        self, state: _Partition, entry_id: bytes, fields: dict[bytes, bytes], attempts: int, error: BaseException
    ) -> bool:
        logger.error(
            "group %r: entry %s of partition %d dead-lettered after %d attempts: %r",
            self.group,
            as_text(entry_id),
            state.number,
            attempts,
            error,
        )
        letter: list[bytes | str | int] = []
        for name, value in fields.items():
            letter += [name, value]
        letter += [
            "error",
            repr(error),
            "traceback",
            "".join(traceback.format_exception(error))[-_TRACEBACK_CHARS:],
            "attempts",
            attempts,
            "member",
            self.member_id,
            "partition",
            state.number,
            "entry_id",
            entry_id,
        ]
        if state.acks is not None:
            await state.acks.settle()
        written = await self._call(
            "dead_letter",
            [state.key, state.owner_key, self._dead_key(state.number)],
            [self.group, self.member_id, entry_id, *letter],
            state.client,
        )
        if not int(written):
            state.lost = True
            return False
        self.dead_lettered += 1
        return True

    async def _watch(self, client: Any) -> None:
        """Wake idle partitions when the relay writes: one blocking read of the log per member, not per partition.

        The relay writes the log and the partition streams in one script call, so an entry of a partition stream is
        in the log too. The watcher takes the log's last id before it wakes the partitions, so whatever a partition
        finds missing when it looks after a wake is above that id, and the next blocking read returns for it. On a
        cluster there is no log: the watcher reads the wake-up stream, which the relay writes after the partition
        streams of every batch.
        """
        last: bytes | None = None
        while not self._stopping.is_set():
            try:
                with translate_errors(f"watch the log at {self.settings.shown_url}"):
                    if last is None:
                        last = await self._last_log_id(client)
                    reply = await client.xread({self._watched_key: last}, count=1, block=_WATCH_BLOCK_MS)
                    if reply:
                        last = await self._last_log_id(client)
                        self._wakes.wake()
            except AgentfoldError as error:  # only a hint: partitions also look on their own every second
                if self._stopping.is_set():
                    return
                logger.debug("group %r: watching the log failed: %s", self.group, error)
                await wait_unless(asyncio.sleep(_IDLE_POLL_SECONDS), self._stopping)

    async def _last_log_id(self, client: Any) -> bytes:
        with translate_errors(f"read the log at {self.settings.shown_url}"):
            newest = cast(list[tuple[bytes, Any]], await client.xrevrange(self._watched_key, count=1))
        return newest[0][0] if newest else b"0-0"


def redis_consumer_group(url: str, group: str, handler: Handler, **options: Any) -> RedisConsumerGroupMember:
    """A member of `group` on the partition streams relayed to `url`; use with ``async with``.

    `url` is the relay's target (``redis://host:port/db?prefix=NAME``, relayed with ``--partitions N``); the
    partition count is read from there. `options` are those of `RedisConsumerGroupMember`: `member_id`;
    `lease_seconds`: how long a silent member keeps its partitions; `min_idle_seconds`: how long an entry delivered
    to another member must sit untouched before this one takes it over; `max_attempts`: handler calls before an
    entry is dead-lettered; `batch_size`; `retry_delay_seconds`. See the module docstring for guarantees.
    """
    return RedisConsumerGroupMember(url, group, handler, **options)


async def dead_letters(url: str, group: str) -> list[DeadLetter]:
    """The entries `group` gave up on, oldest first, with the error of their last attempt."""
    settings = relay_settings(url)
    name = _check_name(group, "group")
    keys = FanoutKeys(settings.prefix, settings.cluster)
    client = make_fanout_client(settings, settings.timeout)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    try:
        with translate_errors(f"read the dead letters of {group!r} at {settings.shown_url}"):
            count = int(await client.get(keys.partitions) or 0)
            for key in keys.dead_streams(name, count):  # on a cluster, one stream per partition
                entries += cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(key))
    finally:
        await client.aclose()
    entries.sort(key=lambda entry: tuple(int(part) for part in entry[0].split(b"-")))
    letters = []
    for entry_id, fields in entries:
        try:
            event: RecordedEvent | None = decode_relayed(entry_id, fields)
        except StoreCorrupted:
            event = None
        letters.append(
            DeadLetter(
                as_text(entry_id),
                event,
                as_text(fields[b"error"]),
                as_text(fields[b"traceback"]),
                int(fields[b"attempts"]),
                as_text(fields[b"member"]),
                int(fields[b"partition"]),
            )
        )
    return letters


__all__ = ["DeadLetter", "RedisConsumerGroupMember", "dead_letters", "redis_consumer_group"]
