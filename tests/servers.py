"""Private database servers for fault tests: PostgreSQL and Redis of a test's own, on free ports, in temp folders.

Fault tests restart, kill and reconfigure servers. They never touch the machine's shared services (5432, 6379),
which other tests use at the same time. PostgreSQL runs with `fsync=on` (and `synchronous_commit=on`), Redis with
the settings the test asks for, so what survives a restart here is what survives it in production.

When the tests run as root, PostgreSQL's tools run as the `postgres` OS user (the server refuses to run as root).
A server that cannot be started skips the test, except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from agentfold import NewEvent, RecordedEvent
from agentfold.errors import AgentfoldError, StoreTimeout, StoreUnavailable
from agentfold.store import EventStore
from agentfold.subscription import Subscription
from tests.backends import IN_CI

START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def unavailable(what: str) -> NoReturn:
    """Skip, or fail under CI=true, when a fault test cannot run here (no private server, no read-only mount...)."""
    if IN_CI:
        pytest.fail(f"{what}, and under CI=true fault tests never skip")
    pytest.skip(what)


# -- PostgreSQL ---------------------------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server binaries folder (Debian layout, or `pg_ctl` on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(path.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PrivatePostgres:
    """A PostgreSQL cluster in a temp folder on a free port; `restart(mode)` is `pg_ctl restart -m mode`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="agentfold-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = START_TIMEOUT) -> None:
        done = subprocess.run(
            [*self._as_user, *command], capture_output=True, text=True, timeout=timeout, cwd=self.folder
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}{log[-2000:]}")

    def init(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-instructions",
            "-E",
            "UTF8",
        )
        settings = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.folder}'",
            "fsync = on",
            "synchronous_commit = on",
            "full_page_writes = on",
            "max_connections = 60",
            "shared_buffers = 32MB",
        ]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")

    def start(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str) -> None:
        """`pg_ctl restart -m fast` (clean shutdown) or `-m immediate` (no checkpoint: crash recovery at start)."""
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "-t", "60",
            "restart",
        )  # fmt: skip

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started PostgreSQL cluster of this test's own (fsync on), removed afterwards."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        raise AssertionError("unreachable")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no `postgres` OS user to run the server as")
    server = PrivatePostgres(bin_dir)
    try:
        server.init()
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
        server.destroy()
        unavailable(f"a private PostgreSQL did not start: {error}")
    yield server
    server.destroy()


# -- Redis --------------------------------------------------------------------------------------------------------


def wait_until_redis_answers(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Return once the redis-server started as `process` on `port` answers PING (still loading its data does not
    count); RuntimeError with the end of its `log` if it exits, or if it does not answer within START_TIMEOUT."""
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.exceptions.BusyLoadingError:
                pass  # answering, but not yet serving: wait on
            except redis.exceptions.ConnectionError:
                if process.poll() is not None:
                    text = log.read_text()[-3000:] if log.exists() else ""
                    raise RuntimeError(f"redis-server exited: {text}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start within {START_TIMEOUT} s")
            time.sleep(0.02)
    finally:
        client.close()


class PrivateRedis:
    """A redis-server in a temp folder on a free port, with the given settings; `restart()` keeps its data dir."""

    def __init__(self, folder: Path, settings: dict[str, str], binary: str = "redis-server") -> None:
        self.folder = folder
        self.settings = settings
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:

        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--daemonize", "no", "--logfile", str(self.folder / "redis.log")]
        for name, value in self.settings.items():
            command += [f"--{name}", value]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_redis_answers(self.process, self.port, self.folder / "redis.log")

    def shutdown(self) -> None:
        """Stop the server the way an operator does (SIGTERM: it finishes writing the AOF first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: the server dies between two commands, with only what it already wrote to the AOF."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, *, hard: bool) -> None:
        if hard:
            self.kill()
        else:
            self.shutdown()
        self.start()


AOF_ALWAYS = {"appendonly": "yes", "appendfsync": "always", "save": ""}
WAITAOF_SERVER_SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "waitaof-server"


def _start_private_redis(tmp_path: Path, binary: str) -> Iterator[Callable[[dict[str, str]], PrivateRedis]]:
    servers: list[PrivateRedis] = []

    def start(settings: dict[str, str]) -> PrivateRedis:
        folder = tmp_path / f"redis-{len(servers)}"
        folder.mkdir()
        server = PrivateRedis(folder, settings, binary)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], PrivateRedis]]:
    """Start private redis-servers: ``private_redis({"appendonly": "yes", ...})``; all are killed afterwards."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    yield from _start_private_redis(tmp_path, "redis-server")


def waitaof_server_binary() -> str | None:
    """A server with WAITAOF (Redis >= 7.2 or Valkey): `AGENTFOLD_TEST_WAITAOF_SERVER`, else what
    `.ci/waitaof-server` finds or fetches (Valkey from Debian's bookworm-backports when the machine has Redis 7.0)."""
    configured = os.environ.get("AGENTFOLD_TEST_WAITAOF_SERVER")
    if configured:
        return configured
    try:
        found = subprocess.run(
            [str(WAITAOF_SERVER_SCRIPT)], capture_output=True, text=True, timeout=300, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    os.environ["AGENTFOLD_TEST_WAITAOF_SERVER"] = found  # once per test process
    return found


@pytest.fixture
def private_waitaof_redis(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], PrivateRedis]]:
    """Like `private_redis`, with a server that has WAITAOF (Redis >= 7.2 or Valkey)."""
    binary = waitaof_server_binary()
    if binary is None:
        unavailable("no server with WAITAOF (Redis >= 7.2 or Valkey) is installed or could be fetched")
        return
    yield from _start_private_redis(tmp_path, binary)


async def eventually(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll a condition that other tasks make true without an event to wait on."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def digest(store: EventStore) -> tuple[int, str]:
    """The head position and a hash of every event as read: equal digests mean an unchanged log."""
    hasher = hashlib.sha256()
    async for event in store.read_all():
        hasher.update(repr((event.stream_id, event.version, event.position, event.type, event.data, event.id)).encode())
    return await store.head_position(), hasher.hexdigest()


# -- a workload to run around a fault -----------------------------------------------------------------------------


@dataclass
class Acknowledged:
    stream_id: str
    ids: list[str]
    version: int
    position: int


@dataclass
class FaultWorkload:
    """Writers appending batches and subscribers following `read_all` while a test breaks the server underneath.

    A writer that gets an error checks it is a typed retryable one (`StoreUnavailable` / `StoreTimeout`) and
    retries the very same `NewEvent` objects until acknowledged: appends are idempotent by event id. A subscriber
    that gets a retryable error keeps iterating the same subscription, which resumes after the last event it handed
    out. `check` then proves that nothing acknowledged was lost, nothing was written twice, and both subscribers saw
    exactly the log.
    """

    store: EventStore
    writers: int = 8
    subscribers: int = 2
    batch_size: int = 3
    acknowledged: list[Acknowledged] = field(default_factory=list)
    retryable_errors: list[AgentfoldError] = field(default_factory=list)
    other_errors: list[BaseException] = field(default_factory=list)
    seen: list[list[RecordedEvent]] = field(default_factory=list)
    subscriber_errors: list[AgentfoldError] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _subscriptions: list[Subscription] = field(default_factory=list)

    async def __aenter__(self) -> FaultWorkload:
        for index in range(self.subscribers):
            self.seen.append([])
            subscription = self.store.subscribe()
            self._subscriptions.append(subscription)
            self._tasks.append(asyncio.create_task(self._follow(subscription, self.seen[index])))
        self._writer_tasks = [asyncio.create_task(self._write(index)) for index in range(self.writers)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        for subscription in self._subscriptions:
            await subscription.close()
        for task in [*self._writer_tasks, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._writer_tasks, *self._tasks, return_exceptions=True)

    async def _write(self, writer: int) -> None:
        stream_id = f"writer-{writer}"
        count = 0
        while not self._stop.is_set():
            batch = [NewEvent("Wrote", {"writer": writer, "n": count, "k": k}) for k in range(self.batch_size)]
            while True:
                try:
                    result = await self.store.append(stream_id, batch)
                except (StoreUnavailable, StoreTimeout) as error:
                    self.retryable_errors.append(error)
                    if not error.retryable:
                        self.other_errors.append(error)
                    await asyncio.sleep(0.02)
                    continue
                except Exception as error:  # anything else is a finding, reported by check()
                    self.other_errors.append(error)
                    await asyncio.sleep(0.02)
                    continue
                break
            self.acknowledged.append(
                Acknowledged(stream_id, [str(event.id) for event in batch], result.version, result.position)
            )
            count += 1
            await asyncio.sleep(0)

    async def _follow(self, subscription: Subscription, seen: list[RecordedEvent]) -> None:
        while True:
            try:
                async for event in subscription:
                    seen.append(event)
                return
            except AgentfoldError as error:
                self.subscriber_errors.append(error)
                await asyncio.sleep(0.02)

    async def until_acknowledged(self, count: int, timeout: float = 60) -> None:
        """Wait until `count` more appends than now were acknowledged."""
        target = len(self.acknowledged) + count
        async with asyncio.timeout(timeout):
            while len(self.acknowledged) < target:
                if self.other_errors:
                    raise AssertionError(f"a writer got an unexpected error: {self.other_errors[0]!r}")
                await asyncio.sleep(0.01)

    async def finish(self, timeout: float = 60) -> list[RecordedEvent]:
        """Stop the writers, let the subscribers catch up with the head, and return the whole log."""
        self._stop.set()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self._writer_tasks)
            while True:
                try:
                    head = await self.store.head_position()
                    break
                except (StoreUnavailable, StoreTimeout):
                    await asyncio.sleep(0.05)
            await eventually(lambda: all((seen[-1].position if seen else 0) >= head for seen in self.seen))
        for subscription in self._subscriptions:
            await subscription.close()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self._tasks)
        return [event async for event in self.store.read_all()]

    def check(self, log: list[RecordedEvent]) -> None:
        """Every acknowledged append is in `log` exactly once, in one piece, where its acknowledgement said."""
        assert not self.other_errors, f"writers got errors that are not typed retryable ones: {self.other_errors!r}"
        assert all(error.retryable for error in self.subscriber_errors), self.subscriber_errors
        positions = [event.position for event in log]
        assert positions == sorted(set(positions)), "positions must strictly increase"
        ids = [str(event.id) for event in log]
        assert len(ids) == len(set(ids)), "an event was written twice"
        acknowledged_ids = {event_id for ack in self.acknowledged for event_id in ack.ids}
        assert set(ids) == acknowledged_ids, "the log is not the set of acknowledged appends"
        by_place = {(event.stream_id, event.version): event for event in log}
        for ack in self.acknowledged:
            first = ack.version - len(ack.ids) + 1
            stored = [by_place[(ack.stream_id, version)] for version in range(first, ack.version + 1)]
            assert [str(event.id) for event in stored] == ack.ids, f"append to {ack.stream_id} not in one piece"
            assert stored[-1].position == ack.position
        for stream_id in {event.stream_id for event in log}:
            versions = [event.version for event in log if event.stream_id == stream_id]
            assert versions == list(range(1, len(versions) + 1))
        for seen in self.seen:
            assert [str(event.id) for event in seen] == ids, "a subscriber lost, repeated or reordered events"
