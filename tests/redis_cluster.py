"""A Redis Cluster of the tests' own: three masters and three replicas on free loopback ports, in a temp folder.

Each node is a ``redis-server --cluster-enabled yes`` process with its own folder (its ``nodes.conf``), started by
`LocalCluster.start`, joined by ``redis-cli --cluster create ... --cluster-replicas 1``, and killed by
`LocalCluster.destroy`. Nodes give up on a silent peer after 2 s (``cluster-node-timeout``), so a failover takes a
few seconds; a replica may take over whatever the age of its data (``cluster-replica-validity-factor 0``), as a test
that pauses it needs. There is no persistence: a killed node comes back empty and resyncs from its master.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.servers import START_TIMEOUT, free_port, wait_until_redis_answers

NODE_TIMEOUT_MS = 2000
PORT_ATTEMPTS = 3


def cluster_tools_installed() -> bool:
    """redis-server and redis-cli of Redis >= 7.0 (``cluster-port`` and the scripts' ``#!lua`` line need it)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return False
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=30).stdout
    version = out.split("v=", 1)[1].split()[0] if "v=" in out else "0"
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) >= (7, 0)


@dataclass(eq=False)
class Node:
    """One redis-server of the cluster (compared by identity)."""

    folder: Path
    port: int = field(default_factory=free_port)
    bus_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    answered: bool = False
    """Whether the node ever answered (then its address is the cluster's, and it is not moved to other ports)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=2, socket_timeout=10)

    def start(self) -> None:
        """Start the node. Its ports were free when chosen; one that another process took before the node bound it
        (tests run in parallel) is chosen again, before the cluster knows the node's address."""
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "redis.log"
        for attempt in range(1, PORT_ATTEMPTS + 1):
            command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
            command += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)]
            command += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
            command += ["--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0"]
            command += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", log.name]
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until_redis_answers(self.process, self.port, log)
                self.answered = True
                return
            except RuntimeError as error:
                taken = "Address already in use" in str(error)
                if not taken or self.answered or attempt == PORT_ATTEMPTS:
                    raise  # a node that answered once keeps the address the cluster knows
                for left in (log, self.folder / "nodes.conf"):
                    left.unlink(missing_ok=True)
                self.port, self.bus_port = free_port(), free_port()

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node dies with whatever its replicas had not received yet."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the node stops answering, to its clients, its master and its peers alike."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class LocalCluster:
    """Three masters with one replica each (`start`), and the faults a test inflicts on them."""

    def __init__(self, folder: Path, masters: int = 3) -> None:
        self.folder = folder
        self.nodes = [Node(folder / f"node-{index}") for index in range(masters * 2)]
        self.masters = masters

    @property
    def seed(self) -> Node:
        """The node clients are pointed at: the first node, a master at creation."""
        return self.nodes[0]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [node.address for node in self.nodes]
        done = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        self.wait_until_ready()

    def destroy(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.resume()  # a stopped process ignores nothing but SIGKILL, and this is SIGKILL anyway
            node.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def wait_until_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until every live node says ``cluster_state:ok`` and sees the same masters, each with a synced replica."""
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            problem = self._not_ready()
            if not problem:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the cluster is not ready after {timeout} s: {problem}")

    def _not_ready(self) -> str:
        views: set[tuple[str, ...]] = set()
        for node in self.nodes:
            if not node.alive():
                continue
            client = node.client()
            try:
                info = client.execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info:
                    return f"{node.address} is not ok"
                lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()
                replication = client.info("replication")
            except redis.exceptions.RedisError as error:
                return f"{node.address}: {error}"
            finally:
                client.close()
            masters = sorted(
                line.split()[1].split("@")[0]
                for line in lines
                if "master" in line.split()[2] and "fail" not in line.split()[2] and len(line.split()) > 8
            )
            views.add(tuple(masters))
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return f"{node.address} is not synced with its master"
            replicas = [value for name, value in replication.items() if name.startswith("slave") and name[5:].isdigit()]
            if replication["role"] == "master" and not any(value.get("state") == "online" for value in replicas):
                return f"{node.address} has no replica online"
        if len(views) != 1 or len(next(iter(views))) != self.masters:
            return f"the nodes do not agree on {self.masters} masters: {views}"
        return ""

    def node_at(self, address: str) -> Node:
        return next(node for node in self.nodes if node.address == address)

    def master_of(self, key: bytes) -> Node:
        """The live master serving `key`'s slot, as the seed (or any live node) sees it."""
        slot = key_slot(key)
        for node in self.nodes:
            if not node.alive():
                continue
            client = node.client()
            try:
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return self.node_at(f"{master[0].decode()}:{master[1]}")
            finally:
                client.close()
        raise RuntimeError(f"no node serves slot {slot}")

    def replica_of(self, master: Node) -> Node:
        for node in self.nodes:
            if node is master or not node.alive():
                continue
            client = node.client()
            try:
                replication = client.info("replication")
            finally:
                client.close()
            if replication["role"] == "slave" and int(replication["master_port"]) == master.port:
                return node
        raise RuntimeError(f"{master.address} has no replica")

    def cut_off(self, master: Node, replica: Node) -> None:
        """Pause `replica` and close its replication link on `master`: what the master writes from now on reaches
        no replica (the replica, paused, cannot connect again), exactly as if the link had been cut before the data
        left. Pausing alone is not enough: what the master sends lands in the paused replica's socket buffer."""
        replica.pause()
        client = master.client()
        try:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
            deadline = time.monotonic() + START_TIMEOUT
            while int(client.info("replication")["connected_slaves"]) != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{master.address} kept its replica after CLIENT KILL")
                time.sleep(0.01)
        finally:
            client.close()

    def role(self, node: Node) -> str:
        client = node.client()
        try:
            return str(client.info("replication")["role"])
        finally:
            client.close()

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix:` on every master."""
        for node in self.nodes:
            if not node.alive() or self.role(node) != "master":
                continue
            client = node.client()
            try:
                for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
                    client.delete(key)
            finally:
                client.close()
