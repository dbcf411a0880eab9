"""SQLite faults: a full disk, a read-only file system or file, another process holding the write lock.

Each fault must surface as a clear typed error naming the file, leave the store intact and readable, and let later
appends (retries of the very same events) succeed once the condition clears, each written exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentfold
from agentfold import NewEvent
from agentfold.backends.sqlite import SQLiteStore
from agentfold.errors import AgentfoldError, StoreFull, StoreReadOnly, StoreTimeout, StoreUnavailable
from agentfold.store import EventStore
from tests.servers import digest, unavailable

ROOT = Path(__file__).resolve().parent.parent


async def open_sqlite(path: Path, query: str = "") -> SQLiteStore:
    store = await agentfold.connect(f"sqlite:///{path}{query}")
    assert isinstance(store, SQLiteStore)
    return store


def batch(count: int, size: int = 0, **data: object) -> list[NewEvent]:
    return [NewEvent("Filled", {"n": index, "pad": "x" * size, **data}) for index in range(count)]


def run(*command: str) -> bool:
    """Run a system command; False when it is not allowed here (not root, no such tool, no support)."""
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# -- disk full ----------------------------------------------------------------------------------------------------


class SmallDisk:
    """A folder whose capacity a test can fill and then raise.

    As root this is a real 1 MiB tmpfs mount (`mount -t tmpfs -o size=1m`), which the kernel fills with ENOSPC, and
    `grow()` remounts it at 64 MiB. Without the right to mount, the same limit is SQLite's `PRAGMA max_page_count`
    set on the store's own writer connection, which fails writes with SQLITE_FULL the same way.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.mounted = run("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(folder))

    async def limit(self, store: SQLiteStore) -> None:
        if not self.mounted:
            # private: runs SQL on the store's writer connection (no public API runs arbitrary SQL)
            # private: a disk-full fault is staged with a PRAGMA on the writer's own connection
            await store.backend._write(lambda connection: connection.execute("PRAGMA max_page_count = 300"))

    async def grow(self, store: SQLiteStore) -> None:
        if self.mounted:
            assert run("mount", "-o", "remount,size=64m", str(self.folder))
        else:
            # private: runs SQL on the store's writer connection (no public API runs arbitrary SQL)
            # private: the fault is lifted on the same connection
            await store.backend._write(lambda connection: connection.execute("PRAGMA max_page_count = 1073741823"))

    def remove(self) -> None:
        if self.mounted:
            run("umount", "-l", str(self.folder))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "small")
    yield disk
    disk.remove()


async def test_a_full_disk_refuses_whole_appends_and_recovers_when_space_returns(small_disk: SmallDisk) -> None:
    path = small_disk.folder / "full.db"
    store = await open_sqlite(path)
    try:
        await small_disk.limit(store)
        acknowledged: list[list[NewEvent]] = []
        refused: list[NewEvent] | None = None
        for number in range(10_000):
            attempt = batch(4, size=2000, batch=number)
            try:
                await store.append(f"fill-{number % 7}", attempt)
            except StoreFull as error:
                assert str(path) in str(error) and "full" in str(error)
                assert not error.retryable
                refused = attempt
                break
            acknowledged.append(attempt)
        assert refused is not None, "the disk never filled up"
        assert acknowledged, "not even one append fitted"

        before = await digest(store)
        with pytest.raises(StoreFull):  # still full: refused again, whole
            await store.append("fill-0", refused)
        assert await digest(store) == before, "a refused append changed the log"
        assert [event.id async for event in store.read_all()] == [event.id for chunk in acknowledged for event in chunk]

        await small_disk.grow(store)
        await store.append("fill-0", refused)
        assert await store.append("fill-0", refused) == await store.append("fill-0", refused)  # a retry, not a copy
    finally:
        await store.close()
    reopened = await open_sqlite(path)
    try:
        ids = [event.id async for event in reopened.read_all()]
        assert ids == [event.id for chunk in [*acknowledged, refused] for event in chunk]
        assert await reopened.head_position() == len(ids)
    finally:
        await reopened.close()


# -- read-only ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only_view(folder: Path, view: Path) -> Iterator[bool]:
    """`view` shows `folder` read-only: a read-only bind mount as root (root ignores file modes), else file modes."""
    view.mkdir()
    if run("mount", "--bind", str(folder), str(view)) and run("mount", "-o", "remount,bind,ro", str(view)):
        try:
            yield True
        finally:
            run("umount", "-l", str(view))
        return
    run("umount", "-l", str(view))
    view.rmdir()
    view.symlink_to(folder)
    modes = {path: path.stat().st_mode for path in [folder, *folder.iterdir()]}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield False
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


async def test_a_store_on_a_read_only_file_system_is_refused_as_read_only(tmp_path: Path) -> None:
    """A store whose folder became read-only (a read-only mount as root, file modes otherwise) cannot be opened for
    writing: `StoreReadOnly`, not retryable, naming the file. The data is intact and readable through a writable
    path, and appends work again there."""
    folder = tmp_path / "data"
    folder.mkdir()
    async with agentfold.connect(f"sqlite:///{folder / 'ro.db'}") as store:
        await store.append("kept", batch(3))
        before = await digest(store)
    with read_only_view(folder, tmp_path / "view") as mounted:
        if not mounted and os.geteuid() == 0:
            unavailable("root ignores file modes and this machine does not allow a read-only bind mount")
        with pytest.raises(StoreReadOnly) as raised:
            await agentfold.connect(f"sqlite:///{tmp_path / 'view' / 'ro.db'}")
        assert "ro.db" in str(raised.value) and "read-only" in str(raised.value)
        assert not raised.value.retryable
    async with agentfold.connect(f"sqlite:///{folder / 'ro.db'}") as store:
        assert await digest(store) == before
        assert (await store.append("kept", batch(1), expected_version=3)).version == 4


async def test_a_read_only_mount_while_another_process_has_the_store_open(tmp_path: Path) -> None:
    """While a writer elsewhere keeps the WAL open, a store opened through a read-only view reads everything and
    refuses appends with `StoreReadOnly`, writing nothing."""
    folder = tmp_path / "data"
    folder.mkdir()
    async with agentfold.connect(f"sqlite:///{folder / 'shared.db'}") as writer:
        await writer.append("kept", batch(5))
        with read_only_view(folder, tmp_path / "view") as mounted:
            if not mounted:
                unavailable("needs a read-only bind mount: file modes do not stop a store that is already open")
            reader = await agentfold.connect(f"sqlite:///{tmp_path / 'view' / 'shared.db'}")
            try:
                before = await digest(reader)
                with pytest.raises(StoreReadOnly) as raised:
                    await reader.append("kept", batch(1))
                assert not raised.value.retryable
                assert await digest(reader) == before == await digest(writer)
            finally:
                await reader.close()
        assert (await writer.append("kept", batch(1), expected_version=5)).version == 6


async def test_an_immutable_file_under_an_open_store_fails_appends_and_recovers(tmp_path: Path) -> None:
    """`chattr +i` on the database and its WAL while the store is open (writes fail with EPERM, even for root): a
    typed error naming the file, no partial append, reads keep working; once cleared, the retry writes once."""
    path = tmp_path / "immutable.db"
    store = await open_sqlite(path)
    files = [str(path), f"{path}-wal"]  # not the -shm: it is memory-mapped, and a write fault there kills the process
    try:
        await store.append("s", batch(3))
        if not run("chattr", "+i", *files):
            unavailable("chattr +i is not allowed here (needs root and a file system with the immutable flag)")
        try:
            before = await digest(store)
            attempt = batch(2, size=10_000)
            with pytest.raises(AgentfoldError) as raised:
                await store.append("s", attempt)
            assert isinstance(raised.value, StoreUnavailable | StoreReadOnly | StoreFull), raised.value
            assert str(path) in str(raised.value)
            assert await digest(store) == before
        finally:
            assert run("chattr", "-i", *files)
        result = await store.append("s", attempt)
        assert result.version == 5
        assert await store.append("s", attempt) == result
    finally:
        await store.close()


# -- a write lock held by another process -------------------------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
connection.execute("INSERT INTO checkpoints (name, position) VALUES ('held', 1)")
print("LOCKED", flush=True)
command = sys.stdin.readline().strip()
connection.execute(command)
print("DONE", flush=True)
"""


def hold_write_lock(path: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "LOCKED"
    return process


@pytest.mark.parametrize("release", ["commit", "sigkill"])
async def test_a_write_lock_held_by_another_process_beyond_the_busy_timeout(tmp_path: Path, release: str) -> None:
    """Another process holds `BEGIN IMMEDIATE` longer than the busy timeout: concurrent appends fail with a
    retryable `StoreTimeout`, readers are not blocked (WAL), and once the lock goes (the holder commits, or is
    SIGKILLed and its transaction vanishes) the same appends succeed, each once."""
    path = tmp_path / "locked.db"
    store = await open_sqlite(path, "?busy_timeout=200")
    try:
        await store.append("s-0", batch(2))
        before = await digest(store)
        holder = hold_write_lock(path)
        try:
            attempts = {f"s-{number}": batch(3, attempt=number) for number in range(8)}
            outcomes = await gather_outcomes(store, attempts)
            assert all(isinstance(outcome, StoreTimeout) for outcome in outcomes.values()), outcomes
            assert all(outcome.retryable for outcome in outcomes.values() if isinstance(outcome, AgentfoldError))
            assert "locked" in str(outcomes["s-0"])
            assert await digest(store) == before
        finally:
            if release == "commit":
                assert holder.stdin is not None and holder.stdout is not None
                holder.stdin.write("COMMIT\n")
                holder.stdin.flush()
                assert holder.stdout.readline().strip() == "DONE"
            else:
                holder.kill()
            holder.wait(timeout=30)
            for stream in (holder.stdin, holder.stdout):
                if stream is not None:
                    stream.close()
        outcomes = await gather_outcomes(store, attempts)
        assert not any(isinstance(outcome, BaseException) for outcome in outcomes.values()), outcomes
        assert await gather_outcomes(store, attempts) == outcomes
        assert await store.head_position() == 2 + 8 * 3
        assert await store.load_checkpoint("held") == (1 if release == "commit" else None)
    finally:
        await store.close()


async def gather_outcomes(store: EventStore, attempts: dict[str, list[NewEvent]]) -> dict[str, object]:
    results = await asyncio.gather(
        *(store.append(stream, events) for stream, events in attempts.items()), return_exceptions=True
    )
    return dict(zip(attempts, results, strict=True))


# -- a writer killed in the middle of large batches ---------------------------------------------------------------


async def test_a_writer_sigkilled_mid_large_batches_leaves_a_sound_file(tmp_path: Path) -> None:
    """Batches of 300 events make the kill land inside a transaction's writes: the file passes SQLite's
    `integrity_check`, holds whole batches only, every acknowledged one among them, and takes appends again.
    (Acknowledged-append survival for small batches on every backend: tests/test_processes.py.)"""
    path = tmp_path / "killed.db"
    url = f"sqlite:///{path}"
    async with agentfold.connect(url):
        pass
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.procs", "writer", url, "big", "0", "300", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    acknowledged: list[tuple[str, int, int]] = []
    for line in process.stdout:
        parts = line.split()
        if parts[0] == "ACK":
            acknowledged.append((parts[1], int(parts[2]), int(parts[3])))
            if len(acknowledged) >= 20:
                break
    process.kill()
    process.wait(timeout=30)
    process.stdout.close()

    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    async with agentfold.connect(url) as store:
        events = [event async for event in store.read_all()]
        stored = {(event.stream_id, event.version): event.position for event in events}
        for stream_id, version, position in acknowledged:
            assert stored[(stream_id, version)] == position
        for stream_id in {event.stream_id for event in events}:
            versions = [event.version for event in events if event.stream_id == stream_id]
            assert versions == list(range(1, len(versions) + 1))
            assert len(versions) % 300 == 0, f"a partial batch is stored on {stream_id}"
            assert await store.stream_version(stream_id) == len(versions)
        result = await store.append("big-0", batch(1), expected_version=await store.stream_version("big-0"))
        assert result.position == len(events) + 1
