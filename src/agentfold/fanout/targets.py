"""Where the fan-out layer writes: one Redis (``redis://``) or a Redis Cluster (``redis+cluster://``), and its keys.

A cluster spreads keys over 16,384 hash slots, each served by one master, and a script may only touch keys of one
slot. The fan-out layer therefore keeps everything a script touches for partition ``k`` in the slot of one hash tag,
``{k.s}`` (`partition_tag`), chosen so that the N partitions fall into N equal, consecutive ranges of slots: a cluster
whose masters own consecutive ranges (what ``redis-cli --cluster create`` and resharding by ranges produce) serves an
equal share of partitions from each master. The tag depends on ``k`` and N only, so every process computes the same
keys without asking the cluster.

On one Redis the layout is the one the relay has always written (`FanoutKeys`); on a cluster the keys a partition's
scripts touch carry its tag, and the keys shared by all partitions (the partition count, the relay's checkpoint, a
group's members, the wake-up stream) live wherever their own names hash.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from agentfold.backends.redis import RedisSettings, make_client, parse_url
from agentfold.errors import InvalidURL, StoreUnavailable
from agentfold.options import Option, parse_options, redact, split_url

CLUSTER_SCHEME: Final = "redis+cluster"
DEFAULT_REPLICAS: Final = 1
DEFAULT_REPLICA_TIMEOUT: Final = 2.0
_CLUSTER_PREFIX: Final = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
CLUSTER_OPTIONS: Final = (
    Option(
        "prefix",
        str,
        "agentfold",
        pattern=_CLUSTER_PREFIX,
        meaning="1 to 100 letters, digits, '_', '.' or '-' (no braces: a hash tag in the prefix would put every "
        "partition in one slot)",
    ),
    Option("timeout", float, 10.0, minimum=0.001, maximum=86400.0),
    Option("replicas", int, DEFAULT_REPLICAS, minimum=0, maximum=16),
    Option("replica_timeout", float, DEFAULT_REPLICA_TIMEOUT, minimum=0.001, maximum=3600.0),
)
"""What ``redis+cluster://`` accepts in its query."""


@dataclass(frozen=True)
class FanoutTarget:
    """A fan-out target URL, checked: one Redis, or a Redis Cluster reached through one of its nodes."""

    client_url: str
    """``redis://[credentials@]host:port/db`` for the driver (on a cluster: any node, database 0)."""
    prefix: str
    timeout: float
    cluster: bool
    replicas: int = 0
    """Cluster only: replicas of a partition's master that must confirm a relayed batch (``WAIT``) before the relay's
    checkpoint moves past it."""
    replica_timeout: float = 0.0
    """Cluster only: how long the relay waits for those confirmations before it writes the batch again."""
    node: RedisSettings | None = None
    """One Redis only: the settings the Redis store's checks take."""

    @property
    def shown_url(self) -> str:
        """The URL with any password hidden."""
        return redact(self.client_url)


def parse_target(url: str) -> FanoutTarget:
    """Check a fan-out target URL: ``redis://host:port/db?prefix=NAME&timeout=S`` or
    ``redis+cluster://host:port?prefix=NAME&timeout=S&replicas=R&replica_timeout=S``."""
    if isinstance(url, str) and url.lower().startswith(CLUSTER_SCHEME + "://"):
        return _parse_cluster(url)
    settings = parse_url(url, {})
    if settings.durability != "server":
        raise InvalidURL(
            "the relay takes no durability option: its copy can always be rebuilt from the source, and a Redis that "
            "loses recent entries loses their checkpoint with them, so the relay copies them again"
        )
    return FanoutTarget(settings.client_url, settings.prefix, settings.timeout, cluster=False, node=settings)


def _parse_cluster(url: str) -> FanoutTarget:
    parts = split_url(url, (CLUSTER_SCHEME,))
    shown = redact(url)
    if not parts.hostname:
        raise InvalidURL(f"{shown!r} names no host")
    if parts.path.strip("/") not in ("", "0"):
        raise InvalidURL(f"a Redis Cluster has only database 0; {shown!r} names {parts.path.strip('/')[:40]!r}")
    values = parse_options(url, CLUSTER_OPTIONS, {})
    return FanoutTarget(
        urlunsplit(("redis", parts.netloc, "/0", "", "")),
        cast(str, values["prefix"]),
        cast(float, values["timeout"]),
        cluster=True,
        replicas=cast(int, values["replicas"]),
        replica_timeout=cast(float, values["replica_timeout"]),
    )


def make_fanout_client(target: FanoutTarget, timeout: float | None) -> Any:
    """A client that never retries on its own (errors reach the caller, who may retry): a `redis.asyncio.Redis`, or
    on a cluster a `RedisCluster`, which routes each command to the master of its key's slot. Typed `Any`: the two
    answer the same commands, and the fan-out layer uses only those."""
    if target.node is not None:
        return make_client(target.node, timeout)
    client = RedisCluster.from_url(
        target.client_url,
        socket_timeout=timeout,
        socket_connect_timeout=target.timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        require_full_coverage=True,
    )
    client.set_response_callback("XREAD", lambda response, **options: response)
    return client


def own_connection(client: Any, key: bytes) -> Any:
    """A connection of its own, outside the client's pools and with no per-operation socket timeout, to the server
    that holds `key` (on a cluster: the master of its slot, as the client last saw the cluster)."""
    if isinstance(client, RedisCluster):
        node = node_of(client, key)
        return node.connection_class(**{**node.connection_kwargs, "socket_timeout": None})
    pool = cast(aioredis.Redis, client).connection_pool
    return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})


async def disconnect_all(client: Any) -> None:
    """Close every connection of `client`, those blocked in a read included (which then fail at once)."""
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await cast(aioredis.Redis, client).connection_pool.disconnect()


def node_of(client: RedisCluster, key: bytes) -> ClusterNode:
    """The master of `key`'s slot, as the client last saw the cluster."""
    node = client.get_node_from_key(key.decode())
    if node is None:
        raise StoreUnavailable(f"no master of the Redis Cluster serves the slot of {key.decode()!r} now")
    return node


@functools.cache
def partition_tag(number: int, count: int) -> str:
    """The hash tag of partition `number` of `count`: ``k.s`` with the least ``s`` whose slot lies in the
    partition's share of the slots, ``[k * 16384 / count, (k + 1) * 16384 / count)``."""
    suffix = 0
    while True:
        tag = f"{number}.{suffix}"
        if key_slot(tag.encode()) * count // REDIS_CLUSTER_HASH_SLOTS == number:
            return tag
        suffix += 1


class FanoutKeys:
    """The key names under one prefix, on one Redis or on a cluster (`cluster`: partition keys carry hash tags)."""

    def __init__(self, prefix: str, cluster: bool) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self.log = f"{prefix}:log".encode()
        self.partitions = f"{prefix}:partitions".encode()
        self.wake = f"{prefix}:wake".encode()

    def _part(self, number: int, count: int) -> str:
        return f"{{{partition_tag(number, count)}}}" if self.cluster else str(number)

    def partition(self, number: int, count: int) -> bytes:
        """The partition stream: ``prefix:partition:{k}``; on a cluster, ``prefix:partition:{<tag>}``."""
        return f"{self.prefix}:partition:{self._part(number, count)}".encode()

    def relayed(self, number: int, count: int) -> bytes:
        """Cluster only: the last position the relay wrote to the partition, in the partition's slot."""
        return f"{self.prefix}:partition:{self._part(number, count)}:relayed".encode()

    def checkpoint(self, relay_name: str) -> bytes:
        return f"{self.prefix}:relay:{relay_name}".encode()

    def category(self, category: str) -> bytes:
        return f"{self.prefix}:category:{category}".encode()

    def owner(self, group: str, number: int, count: int) -> bytes:
        return f"{self.prefix}:group:{group}:owner:{self._part(number, count)}".encode()

    def members(self, group: str) -> bytes:
        return f"{self.prefix}:group:{group}:members".encode()

    def dead(self, group: str, number: int, count: int) -> bytes:
        """A group's dead letters: one stream on one Redis; on a cluster one per partition, in the partition's slot."""
        if self.cluster:
            return f"{self.prefix}:dead:{group}:{self._part(number, count)}".encode()
        return f"{self.prefix}:dead:{group}".encode()

    def dead_streams(self, group: str, count: int) -> list[bytes]:
        """Every stream that holds the group's dead letters."""
        if self.cluster:
            return [self.dead(group, number, count) for number in range(count)]
        return [self.dead(group, 0, count)]


__all__ = [
    "CLUSTER_OPTIONS",
    "CLUSTER_SCHEME",
    "FanoutKeys",
    "FanoutTarget",
    "disconnect_all",
    "make_fanout_client",
    "node_of",
    "own_connection",
    "parse_target",
    "partition_tag",
]
