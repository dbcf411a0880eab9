"""The fan-out layer on a real Redis Cluster: partition streams spread over three masters, consumer groups across
them, and a master failing over during delivery with nothing acknowledged lost.

The cluster (three masters, three replicas, `tests.redis_cluster`) is started once per test process; every test
writes under a prefix of its own. The failover test runs last: it leaves the cluster with a master and a replica
swapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

import agentfold
from agentfold import NewEvent, RecordedEvent
from agentfold.errors import InvalidInput, InvalidURL, StoreUnavailable
from agentfold.fanout.redis_groups import RedisConsumerGroupMember, dead_letters, redis_consumer_group
from agentfold.fanout.redis_relay import Relay, RelayConflict, decode_relayed, relay
from agentfold.fanout.targets import FanoutKeys, parse_target
from agentfold.groups import partition_of
from agentfold.options import redact
from agentfold.store import EventStore
from tests.backends import REDIS_URL, require_tool
from tests.group_helpers import until
from tests.redis_cluster import LocalCluster, Node, cluster_tools_installed

PARTITIONS = 12
MEMBER_OPTIONS = {"lease_seconds": 1.5, "min_idle_seconds": 1.0, "retry_delay_seconds": 0.001}


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters and three replicas on free loopback ports, for the whole test process."""
    require_tool(cluster_tools_installed, "redis-server and redis-cli of Redis >= 7.0 (a local Redis Cluster)")
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    yield cluster
    cluster.destroy()


@pytest.fixture
def target(redis_cluster: LocalCluster) -> Iterator[str]:
    """A fan-out URL on the cluster under a fresh prefix, its keys deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield f"redis+cluster://{redis_cluster.seed.address}?prefix={prefix}"
    redis_cluster.delete_prefix(prefix)


@pytest.fixture
async def client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    connection = RedisCluster(host="127.0.0.1", port=redis_cluster.seed.port)
    yield connection
    await connection.aclose()


def keys_of(target: str) -> FanoutKeys:
    return FanoutKeys(parse_target(target).prefix, cluster=True)


async def partition(client: RedisCluster, target: str, number: int) -> list[RecordedEvent]:
    key = keys_of(target).partition(number, PARTITIONS)
    return [decode_relayed(entry_id, fields) for entry_id, fields in await client.xrange(key)]


async def feed(source: EventStore, streams: int, per_stream: int, first: int = 0) -> list[RecordedEvent]:
    """Append `per_stream` events to each of `streams` streams, interleaved; return them."""
    written = await source.head_position()
    for number in range(first, first + per_stream):
        for stream in range(streams):
            await source.append(f"job-{stream}", [NewEvent("JobQueued", {"stream": stream, "n": number})])
    return [event async for event in source.read_all(written)]


def first_seen_in_stream_order(events: list[RecordedEvent]) -> None:
    """Each stream's events, taken at their first delivery, come in version order."""
    seen: set[int] = set()
    by_stream: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if event.position not in seen:
            seen.add(event.position)
            by_stream[event.stream_id].append(event.version)
    for stream, versions in by_stream.items():
        assert versions == sorted(versions), f"{stream} handled out of order: {versions}"


async def pending(client: RedisCluster, target: str, group: str) -> int:
    total = 0
    for number in range(PARTITIONS):
        key = keys_of(target).partition(number, PARTITIONS)
        if await client.exists(key):
            groups = {info["name"] for info in await client.xinfo_groups(key)}
            if group.encode() in groups:
                total += (await client.xpending(key, group))["pending"]
    return total


# -- the relay -----------------------------------------------------------------------------------------------------


async def test_relay_spreads_partitions_over_the_masters_each_stream_in_order(
    redis_cluster: LocalCluster, target: str, client: RedisCluster
) -> None:
    async with agentfold.connect("memory://") as source:
        expected = await feed(source, streams=30, per_stream=3)
        assert await relay(source, target, once=True, partitions=PARTITIONS, batch_size=17) == 90
        for number in range(PARTITIONS):
            assert await partition(client, target, number) == [
                event for event in expected if partition_of(event.stream_id, PARTITIONS) == number
            ]
        keys = keys_of(target)
        masters = [redis_cluster.master_of(keys.partition(number, PARTITIONS)) for number in range(PARTITIONS)]
        assert sorted(masters.count(master) for master in set(masters)) == [4, 4, 4], "4 partitions per master"
        assert [redis_cluster.master_of(keys.relayed(number, PARTITIONS)) for number in range(PARTITIONS)] == masters

        worker = Relay(source, target, partitions=PARTITIONS)
        try:
            assert await worker.checkpoint() == await source.head_position()
            # private: the write step alone, as after a lost reply or a failover: what a partition holds is skipped
            await worker._check_target()
            assert await worker._write(expected[:40]) == 0
        finally:
            await worker.close()
        assert await relay(source, target, once=True, partitions=PARTITIONS) == 0
        more = await feed(source, streams=5, per_stream=1, first=3)
        assert await relay(source, target, once=True, partitions=PARTITIONS) == 5
        for number in range(PARTITIONS):
            assert await partition(client, target, number) == [
                event for event in expected + more if partition_of(event.stream_id, PARTITIONS) == number
            ]


async def test_relay_refuses_what_a_cluster_cannot_keep(target: str) -> None:
    async with agentfold.connect("memory://") as source, agentfold.connect("memory://") as other:
        with pytest.raises(InvalidInput, match="partitions >= 1"):
            Relay(source, target)
        await feed(source, streams=3, per_stream=2)
        await relay(source, target, once=True, partitions=PARTITIONS)
        with pytest.raises(InvalidInput, match="with 12 partition streams, not 4"):
            await relay(source, target, once=True, partitions=4)
        await feed(other, streams=3, per_stream=2)  # the same positions, other events
        with pytest.raises(RelayConflict, match="another relay"):
            await relay(other, target, name="other", once=True, partitions=PARTITIONS)


def test_cluster_urls_are_checked() -> None:
    for bad, message in (
        ("redis+cluster://127.0.0.1:7000?prefix={app}", "prefix"),
        ("redis+cluster://127.0.0.1:7000/3?prefix=app", "database 0"),
        ("redis+cluster://127.0.0.1:7000?prefix=app&replicas=-1", "replicas"),
        ("redis+cluster://127.0.0.1:7000?prefix=app&durability=waitaof", "unknown option"),
        ("redis+cluster://:hunter2@127.0.0.1:7000?colour=red", "colour"),
        ("redis+cluster:///?prefix=app", "no host"),
    ):
        with pytest.raises(InvalidURL, match=message) as raised:
            parse_target(bad)
        assert "hunter2" not in str(raised.value)
    target = parse_target("redis+cluster://:pw@127.0.0.1:7000?prefix=app&replicas=2&replica_timeout=0.25")
    assert (target.cluster, target.prefix, target.replicas, target.replica_timeout) == (True, "app", 2, 0.25)
    assert target.shown_url == "redis://:***@127.0.0.1:7000/0"


# -- consumer groups across the masters ----------------------------------------------------------------------------


async def test_groups_deliver_every_event_once_per_group_in_stream_order(target: str, client: RedisCluster) -> None:
    handled: dict[str, list[RecordedEvent]] = {"mail": [], "audit": []}

    def handler_for(group: str) -> Callable[[RecordedEvent], Awaitable[None]]:
        async def handle(event: RecordedEvent) -> None:
            if group == "audit" and event.data.get("poison"):
                raise ValueError("cannot audit this event")
            handled[group].append(event)

        return handle

    members = [
        redis_consumer_group(
            target, group, handler_for(group), member_id=f"{group}-{index}", max_attempts=2, **MEMBER_OPTIONS
        )
        for group in ("mail", "audit")
        for index in range(2)
    ]
    async with agentfold.connect("memory://") as source:
        stop = asyncio.Event()
        relaying = asyncio.create_task(relay(source, target, partitions=PARTITIONS, stop_event=stop))
        try:
            async with members[0], members[1], members[2], members[3]:
                await until(lambda: all(len(member.partitions) == PARTITIONS // 2 for member in members))
                expected = await feed(source, streams=24, per_stream=4)
                await source.append("job-5", [NewEvent("JobQueued", {"poison": True})])
                expected += await feed(source, streams=24, per_stream=1, first=4)
                await until(lambda: len(handled["mail"]) >= len(expected) + 1)
                await until(lambda: len(handled["audit"]) >= len(expected))
                await until(lambda: sum(member.dead_lettered for member in members) == 1)
        finally:
            stop.set()
            await relaying
        everything = [event async for event in source.read_all()]
    poison = next(event for event in everything if event.data.get("poison"))
    assert sorted(event.position for event in handled["mail"]) == [event.position for event in everything]
    assert sorted(event.position for event in handled["audit"]) == [
        event.position for event in everything if event.position != poison.position
    ]
    for group in ("mail", "audit"):
        first_seen_in_stream_order(handled[group])
        assert await pending(client, target, group) == 0
    assert all(member.handled > 0 for member in members), "both members of each group took part"
    [letter] = await dead_letters(target, "audit")
    assert letter.event is not None and letter.event.position == poison.position
    assert letter.partition == partition_of("job-5", PARTITIONS)
    assert letter.attempts == 2 and "cannot audit" in letter.error
    assert await dead_letters(target, "mail") == []


async def test_fanout_bench_measures_one_redis_beside_the_cluster(
    redis_cluster: LocalCluster, redis_service: None
) -> None:
    from agentfold.bench.fanout_bench import measure_fanout

    cluster_url = f"redis+cluster://{redis_cluster.seed.address}"
    results = await measure_fanout([REDIS_URL, cluster_url], events=300, turns=1, progress=lambda text: None)
    assert set(results["figures"]) == {redact(REDIS_URL), f"{cluster_url} replicas=1", f"{cluster_url} replicas=0"}
    for figures in results["figures"].values():
        assert set(figures) == {"relay_events_per_s", "group_events_per_s"}
        assert all(value > 0 for value in figures.values())


# -- a master fails over during delivery (keep last: it swaps a master and its replica) -----------------------------


async def test_a_master_failing_over_during_delivery_loses_nothing_acknowledged(
    redis_cluster: LocalCluster, target: str, client: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """One master's replication link is cut, so its newest entries reach no replica; the master is killed and its
    replica, which lacks them, takes over. The relay never counted them as acknowledged (no replica answered its
    WAIT), so it writes them again from its checkpoint. A group that was reading throughout handles every event,
    some twice (at least once: the position is the key to drop repeats), and a group that starts afterwards handles
    every event once; each stream in order, nothing lost."""
    caplog.set_level(logging.WARNING, logger="agentfold.fanout")
    keys = keys_of(target)
    masters = [redis_cluster.master_of(keys.partition(number, PARTITIONS)) for number in range(PARTITIONS)]
    victim = next(master for master in masters if master is not redis_cluster.seed)
    victim_partitions = [number for number in range(PARTITIONS) if masters[number] is victim]
    replica = redis_cluster.replica_of(victim)
    unconfirmed = f"0 of 1 replicas of the Redis Cluster master {victim.address} confirmed"
    handled: dict[str, list[RecordedEvent]] = {"billing": [], "reports": []}

    def handler_for(group: str) -> Callable[[RecordedEvent], Awaitable[None]]:
        async def handle(event: RecordedEvent) -> None:
            handled[group].append(event)

        return handle

    def member(group: str, index: int) -> RedisConsumerGroupMember:
        return redis_consumer_group(target, group, handler_for(group), member_id=f"{group}-{index}", **MEMBER_OPTIONS)

    def positions_held(node: Node, events: list[RecordedEvent]) -> set[int]:
        """Which of `events` the partition streams on `node` hold (READONLY: the node may be a replica)."""
        node_client = node.client()
        try:
            node_client.execute_command("READONLY")
            held: set[int] = set()
            for number in victim_partitions:
                key = keys.partition(number, PARTITIONS)
                held |= {int(entry_id.split(b"-")[1]) for entry_id, _ in node_client.xrange(key)}
            return held & {event.position for event in events}
        finally:
            node_client.close()

    def relay_warnings(text: str) -> int:
        return sum(text in record.getMessage() for record in caplog.records if record.name.endswith("redis_relay"))

    def handled_all(group: str, events: list[RecordedEvent]) -> bool:
        return {event.position for event in handled[group]} >= {event.position for event in events}

    async with agentfold.connect("memory://") as source:
        reader = Relay(source, target, partitions=PARTITIONS)
        stop = asyncio.Event()
        relaying = asyncio.create_task(relay(source, target, partitions=PARTITIONS, stop_event=stop))
        try:
            async with member("billing", 0), member("billing", 1):
                before = await feed(source, streams=24, per_stream=2)
                await until(lambda: handled_all("billing", before))

                redis_cluster.cut_off(victim, replica)
                during = await feed(source, streams=24, per_stream=2, first=2)
                on_victim = [
                    event for event in during if partition_of(event.stream_id, PARTITIONS) in victim_partitions
                ]
                await until(lambda: positions_held(victim, on_victim) == {event.position for event in on_victim})
                await until(lambda: relay_warnings(unconfirmed) > 0)
                # The victim holds them and no replica does: the relay has not counted them as acknowledged.
                assert await reader.checkpoint() < on_victim[0].position

                victim.kill()  # the relay, retrying, now finds the master gone
                # With a master dead and its replica paused, the cluster is down: the relay keeps retrying.
                await until(lambda: relay_warnings("connection") + relay_warnings("The cluster is down") > 0)
                stop.set()  # stopped while the master is down: what follows shows the loss before anyone repairs it
                await relaying
                replica.resume()
                await until(lambda: redis_cluster.role(replica) == "master")
                assert positions_held(replica, on_victim) == set(), "the new master lacks the unreplicated entries"
                victim.start()  # empty (no persistence): it may only come back once its replica took over
                await asyncio.to_thread(redis_cluster.wait_until_ready)

                stop = asyncio.Event()  # a relay again, resuming from its checkpoint, during delivery
                relaying = asyncio.create_task(relay(source, target, partitions=PARTITIONS, stop_event=stop))
                after = await feed(source, streams=24, per_stream=2, first=4)
                everything = before + during + after
                await until(lambda: handled_all("billing", everything), 120)
            async with member("reports", 0), member("reports", 1):  # a group that starts after the failover
                await until(lambda: handled_all("reports", everything))
            head = await source.head_position()
            for _ in range(1200):  # moved once the batch's WAITs were answered, maybe after the handlers saw it
                with contextlib.suppress(StoreUnavailable):  # a connection to the killed master, found dead
                    if await reader.checkpoint() == head:
                        break
                await asyncio.sleep(0.05)
            assert await reader.checkpoint() == head
        finally:
            stop.set()
            await relaying
            await reader.close()
    expected = sorted(event.position for event in everything)
    billing = [event.position for event in handled["billing"]]
    assert sorted(set(billing)) == expected, "every event handled: none lost"
    repeated = {position for position in billing if billing.count(position) > 1}
    assert repeated <= {
        event.position for event in everything if partition_of(event.stream_id, PARTITIONS) in victim_partitions
    }, "only the failed master's partitions deliver an event again"
    assert sorted(event.position for event in handled["reports"]) == expected, "once each, to a group that came later"
    for group in ("billing", "reports"):
        first_seen_in_stream_order(handled[group])
        assert await pending(client, target, group) == 0
