"""A LangGraph checkpointer on agentfold: `AgentfoldSaver`.

Each thread's checkpoint namespace is one stream (`langgraph:<thread>` for the root namespace); a checkpoint is a
`CheckpointSaved` event and each `put_writes` call a `WritesSaved` event. What it guarantees beyond LangGraph's own
savers:

- One writer per thread: a checkpoint whose parent is not the thread's head is refused with `CheckpointConflict`
  and nothing is written (the head is checked and the checkpoint appended in one step, with the stream's expected
  version). A checkpoint without a parent starts a new root, as LangGraph defines; a checkpoint of source
  ``update`` or ``fork`` (``graph.update_state``) may branch from an older one on purpose.
- Storage grows with what changed: a list channel that grew by appending is stored as the appended suffix, keyed
  to the version it extends, and folded back on read; every channel is stored whole again once its stored form
  lies `snapshot_every` checkpoints back, so reading the head reads a bounded tail of the stream.
- `put_writes` is idempotent: a retried call writes nothing twice (its event ids derive from the checkpoint, the
  task and the write indexes), and a write already stored for a (task, index) is kept.
- Deleting and pruning append markers; readers never see what a marker removed.

The sync methods run the same coroutines on the event loop the saver was created on, from another thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from agentfold.integrations import require

require("langgraph.checkpoint.base", "langgraph")

from langchain_core.runnables import RunnableConfig  # noqa: E402
from langgraph.checkpoint.base import (  # noqa: E402
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol  # noqa: E402

from agentfold.errors import CheckpointConflict, InvalidInput, WrongExpectedVersion  # noqa: E402
from agentfold.events import ANY, NO_STREAM, NewEvent, RecordedEvent  # noqa: E402
from agentfold.store import EventStore  # noqa: E402

T = TypeVar("T")

STREAM_PREFIX: Final = "langgraph:"
THREADS_STREAM: Final = "langgraph-threads"
NAMESPACES_PREFIX: Final = "langgraph-namespaces:"
CHECKPOINT_SAVED: Final = "CheckpointSaved"
WRITES_SAVED: Final = "WritesSaved"
CHECKPOINTS_DELETED: Final = "CheckpointsDeleted"
THREAD_PRUNED: Final = "ThreadPruned"
THREAD_DELETED: Final = "ThreadDeleted"
_IDS: Final = uuid.UUID("6f1d1b8e-5b4a-4c1e-9a51-2f3a0c7d9e42")
_MAX_STREAM_ID: Final = 200
_APPEND_ATTEMPTS: Final = 20
_FIRST_PAGE: Final = 32
_LAST_PAGE: Final = 1024
_MIN_CHAIN_BYTES: Final = 4096
"""Suffixes of a list channel may add up to this much before the whole value is stored again, however small it is."""


def stream_for(thread_id: str, checkpoint_ns: str = "") -> str:
    """The stream holding one thread's checkpoint namespace."""
    readable = STREAM_PREFIX + thread_id + (f"/{checkpoint_ns}" if checkpoint_ns else "")
    if "/" not in thread_id and len(readable) <= _MAX_STREAM_ID and readable.isprintable():
        return readable
    digest = hashlib.sha256(f"{thread_id}\x00{checkpoint_ns}".encode()).hexdigest()[:40]
    return f"{STREAM_PREFIX}#{digest}"


def _namespaces_stream(thread_id: str) -> str:
    readable = NAMESPACES_PREFIX + thread_id
    if len(readable) <= _MAX_STREAM_ID and readable.isprintable():
        return readable
    return NAMESPACES_PREFIX + "#" + hashlib.sha256(thread_id.encode()).hexdigest()[:40]


def _event_id(*parts: object) -> uuid.UUID:
    return uuid.uuid5(_IDS, "\x00".join(str(part) for part in parts))


def node_of(task_path: str) -> str:
    """The node name in a LangGraph task path (``~__pregel_pull, agent`` -> ``agent``), or the path itself."""
    if task_path.startswith("~__pregel_pull, "):
        return task_path.removeprefix("~__pregel_pull, ").split(",")[0]
    return task_path


# -- what a stream holds, folded ------------------------------------------------------------------------------------


@dataclass
class _Channel:
    """A channel's value as of a checkpoint, and where its stored form begins (for delta encoding)."""

    version: Any
    value: Any
    anchor_seq: int
    """The checkpoint (`seq`) whose event holds the whole value that the stored suffixes extend."""
    anchor_bytes: int = 0
    """The size of that whole value as stored."""
    chain_bytes: int = 0
    """The size of the suffixes stored since."""


@dataclass
class _Head:
    """The newest checkpoint of a stream as this saver last saw it, with the stream's version then."""

    checkpoint_id: str | None
    seq: int
    stream_version: int
    channels: dict[str, _Channel] = field(default_factory=dict)


@dataclass
class _Folded:
    """The visible checkpoints of a stream (newest first), their writes, and the stored channel values."""

    checkpoints: list[RecordedEvent] = field(default_factory=list)
    writes: dict[str, list[RecordedEvent]] = field(default_factory=dict)
    blobs: dict[tuple[str, Any], dict[str, Any]] = field(default_factory=dict)
    stream_version: int = 0
    last_seq: int = 0
    complete: bool = False
    """The scan reached the stream's start or a deletion marker: there is nothing older to find."""


class _Scan:
    """A backward scan of a stream that stops as soon as it has what the caller needs."""

    def __init__(self) -> None:
        self.folded = _Folded()
        self.deleted: set[str] = set()
        self.kept_after_prune: str | None = None
        self.pruned = False
        self.seen_first = False

    def take(self, event: RecordedEvent) -> bool:
        """Fold one event (newest first); False once nothing older matters."""
        folded = self.folded
        if not self.seen_first:
            folded.stream_version = event.version
            self.seen_first = True
        data = event.data
        if event.type == THREAD_DELETED:
            folded.complete = True
            return False
        if event.type == CHECKPOINTS_DELETED:
            self.deleted.update(data["checkpoint_ids"])
        elif event.type == THREAD_PRUNED:
            if not self.pruned:
                self.pruned, self.kept_after_prune = True, data.get("keep")
        elif event.type == WRITES_SAVED:
            if self._visible(data["checkpoint_id"]):
                folded.writes.setdefault(data["checkpoint_id"], []).append(event)
        elif event.type == CHECKPOINT_SAVED:
            folded.last_seq = max(folded.last_seq, data["seq"])
            for record in data["values"]:
                folded.blobs.setdefault((record["channel"], _version_key(record["version"])), record)
            if self._visible(data["checkpoint_id"]):
                folded.checkpoints.append(event)
        return True

    def _visible(self, checkpoint_id: str) -> bool:
        if checkpoint_id in self.deleted:
            return False
        return not self.pruned or checkpoint_id == self.kept_after_prune


def _version_key(version: Any) -> Any:
    """Versions compare by value across int, float and str forms that JSON may hand back."""
    if isinstance(version, float) and version.is_integer():
        return int(version)
    return version


# -- the saver --------------------------------------------------------------------------------------------------------


class AgentfoldSaver(BaseCheckpointSaver[int]):
    """LangGraph's `BaseCheckpointSaver` over an agentfold `EventStore` (any backend).

    Create it inside the event loop that opened `store`; the sync methods may then be called from other threads.
    """

    def __init__(self, store: EventStore, *, serde: SerializerProtocol | None = None, snapshot_every: int = 20) -> None:
        super().__init__(serde=serde)
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise InvalidInput(f"snapshot_every must be an int >= 1, got {snapshot_every!r}")
        self.store = store
        self.snapshot_every = snapshot_every
        self._heads: dict[str, _Head] = {}
        self._registered: set[str] = set()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    # -- encoding ------------------------------------------------------------------------------------------------

    def _dump(self, value: Any) -> list[str]:
        kind, payload = self.serde.dumps_typed(value)
        return [kind, base64.b64encode(payload).decode("ascii")]

    def _load(self, stored: list[str]) -> Any:
        return self.serde.loads_typed((stored[0], base64.b64decode(stored[1])))

    # -- reading -------------------------------------------------------------------------------------------------

    async def _scan(self, stream: str, *, until: str | None = None, everything: bool = False) -> _Folded:
        """Read `stream` backwards until the checkpoint `until` (the newest visible one if None) and every stored
        value it needs are found, or to the start when `everything`."""
        scan = _Scan()
        target: RecordedEvent | None = None
        missing: set[tuple[str, Any]] = set()
        async for page in self._pages_backwards(stream, everything):
            for event in page:
                if not scan.take(event):
                    return scan.folded
                if everything:
                    continue
                if target is None and scan.folded.checkpoints:
                    newest = scan.folded.checkpoints[-1]
                    if until is None or newest.data["checkpoint_id"] == until:
                        target = newest
                        missing = self._needed(newest.data)
                if target is not None:
                    missing = self._still_missing(scan.folded, missing)
                    if not missing:
                        return scan.folded
        scan.folded.complete = True
        return scan.folded

    async def _pages_backwards(self, stream: str, everything: bool) -> AsyncIterator[list[RecordedEvent]]:
        """The stream newest first, in pages that start small and double: a read that needs only the tail reads
        little more than the tail."""
        if everything:
            async for page in self.store.read_stream_pages(stream, backwards=True):
                yield page
            return
        size, before = _FIRST_PAGE, None
        while True:
            page = [
                event
                async for event in self.store.read_stream(stream, limit=size, backwards=True, before_version=before)
            ]
            if page:
                yield page
            if len(page) < size or page[-1].version <= 1:
                return
            size, before = min(size * 2, _LAST_PAGE), page[-1].version

    def _needed(self, data: dict[str, Any]) -> set[tuple[str, Any]]:
        versions: dict[str, Any] = data["channel_versions"]
        return {(channel, _version_key(version)) for channel, version in versions.items()}

    def _still_missing(self, folded: _Folded, missing: set[tuple[str, Any]]) -> set[tuple[str, Any]]:
        left: set[tuple[str, Any]] = set()
        for key in missing:
            record = folded.blobs.get(key)
            if record is None:
                left.add(key)
            elif "base" in record:
                left |= self._still_missing(folded, {(key[0], _version_key(record["base"]))})
        return left

    def _value(self, folded: _Folded, channel: str, version: Any, memo: dict[tuple[str, Any], Any]) -> Any:
        """The channel's value at `version` (a sentinel `_ABSENT` when it was stored empty or is not stored)."""
        key = (channel, _version_key(version))
        if key in memo:
            return memo[key]
        record = folded.blobs.get(key)
        value: Any
        if record is None or record.get("empty"):
            value = _ABSENT
        elif "base" in record:
            base = self._value(folded, channel, record["base"], memo)
            value = _ABSENT if base is _ABSENT else [*base, *self._load(record["suffix"])]
        else:
            value = self._load(record["full"])
        memo[key] = value
        return value

    def _tuple(
        self, thread_id: str, ns: str, folded: _Folded, event: RecordedEvent, memo: dict[tuple[str, Any], Any]
    ) -> CheckpointTuple:
        data = event.data
        checkpoint: Checkpoint = self._load(data["checkpoint"])
        values: dict[str, Any] = {}
        for channel, version in checkpoint["channel_versions"].items():
            value = self._value(folded, channel, version, memo)
            if value is not _ABSENT:
                values[channel] = list(value) if isinstance(value, list) else value
        checkpoint["channel_values"] = values
        checkpoint_id = data["checkpoint_id"]
        pending: dict[tuple[str, int], tuple[str, str, str, Any]] = {}
        for writes_event in reversed(folded.writes.get(checkpoint_id, [])):  # oldest first
            task_id, task_path = writes_event.data["task_id"], writes_event.data["task_path"]
            for index, channel, stored in writes_event.data["writes"]:
                if index >= 0 and (task_id, index) in pending:
                    continue  # a write already stored for this task and index is kept
                pending[(task_id, index)] = (task_path, task_id, channel, stored)
        ordered = sorted(pending.items(), key=lambda item: writes_sort_key(item[1][0], item[0][0], item[0][1]))
        pending_writes: list[PendingWrite] = [
            (task_id, channel, self._load(stored)) for _, (_, task_id, channel, stored) in ordered
        ]
        parent_id = data.get("parent_id")
        return CheckpointTuple(
            config=_config(thread_id, ns, checkpoint_id),
            checkpoint=checkpoint,
            metadata=self._load(data["metadata"]),
            parent_config=_config(thread_id, ns, parent_id) if parent_id else None,
            pending_writes=pending_writes,
        )

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint `config` names (the thread's newest when it names none), with its pending writes."""
        thread_id, ns = _thread_and_ns(config)
        wanted = get_checkpoint_id(config)
        stream = stream_for(thread_id, ns)
        folded = await self._scan(stream, until=wanted)
        for event in folded.checkpoints:
            if wanted is None or event.data["checkpoint_id"] == wanted:
                memo: dict[tuple[str, Any], Any] = {}
                found = self._tuple(thread_id, ns, folded, event, memo)
                if event is folded.checkpoints[0]:
                    self._remember(stream, folded, event, found)
                return found
        return None

    def _remember(self, stream: str, folded: _Folded, event: RecordedEvent, found: CheckpointTuple) -> None:
        """Keep the head just read, so the next `aput` on the stream can store only what changed."""
        if event.data["checkpoint_id"] != folded.checkpoints[0].data["checkpoint_id"]:
            return
        anchors: dict[str, list[int]] = event.data.get("anchors", {})
        channels = {
            channel: _Channel(
                version, found.checkpoint["channel_values"].get(channel, _ABSENT), *anchors.get(channel, [0, 0, 0])
            )
            for channel, version in found.checkpoint["channel_versions"].items()
        }
        self._heads[stream] = _Head(event.data["checkpoint_id"], folded.last_seq, folded.stream_version, channels)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first per namespace, filtered by metadata, older than `before`, at most `limit`."""
        if config is None:
            threads = await self._threads()
            wanted_ns: str | None = None
            wanted_id = None
        else:
            thread_id, _ = _thread_and_ns(config)
            threads = [thread_id]
            wanted_ns = config["configurable"].get("checkpoint_ns")
            wanted_id = get_checkpoint_id(config)
        before_id = get_checkpoint_id(before) if before else None
        remaining = limit
        for thread_id in threads:
            namespaces = [wanted_ns] if wanted_ns is not None else await self._namespaces(thread_id)
            for ns in namespaces:
                folded = await self._scan(stream_for(thread_id, ns), everything=True)
                memo: dict[tuple[str, Any], Any] = {}
                for event in sorted(folded.checkpoints, key=lambda e: e.data["checkpoint_id"], reverse=True):
                    checkpoint_id = event.data["checkpoint_id"]
                    if wanted_id and checkpoint_id != wanted_id:
                        continue
                    if before_id and checkpoint_id >= before_id:
                        continue
                    if filter:
                        metadata = self._load(event.data["metadata"])
                        if not all(metadata.get(key) == value for key, value in filter.items()):
                            continue
                    if remaining is not None:
                        if remaining <= 0:
                            return
                        remaining -= 1
                    yield self._tuple(thread_id, ns, folded, event, memo)

    async def _threads(self) -> list[str]:
        return list(dict.fromkeys([event.data["thread_id"] async for event in self.store.read_stream(THREADS_STREAM)]))

    async def _namespaces(self, thread_id: str) -> list[str]:
        stream = _namespaces_stream(thread_id)
        return list(dict.fromkeys([event.data["checkpoint_ns"] async for event in self.store.read_stream(stream)]))

    # -- writing -------------------------------------------------------------------------------------------------

    async def _register(self, thread_id: str, ns: str) -> None:
        """Record the thread and namespace so that listing, copying and deleting find them; idempotent."""
        key = f"{thread_id}\x00{ns}"
        if key in self._registered:
            return
        await self.store.append(
            THREADS_STREAM, [NewEvent("ThreadOpened", {"thread_id": thread_id}, id=_event_id("thread", thread_id))]
        )
        await self.store.append(
            _namespaces_stream(thread_id),
            [
                NewEvent(
                    "NamespaceOpened",
                    {"checkpoint_ns": ns, "stream": stream_for(thread_id, ns)},
                    id=_event_id("namespace", thread_id, ns),
                )
            ],
        )
        self._registered.add(key)

    async def _head(self, stream: str) -> _Head:
        head = self._heads.get(stream)
        if head is not None:
            return head
        folded = await self._scan(stream)
        if not folded.checkpoints:
            head = _Head(None, folded.last_seq, folded.stream_version)
            self._heads[stream] = head
            return head
        thread_id, ns = folded.checkpoints[0].data["thread_id"], folded.checkpoints[0].data["checkpoint_ns"]
        found = self._tuple(thread_id, ns, folded, folded.checkpoints[0], {})
        self._remember(stream, folded, folded.checkpoints[0], found)
        return self._heads[stream]

    async def _catch_up(self, stream: str, head: _Head) -> None:
        """Take in what others appended after `head`: pending writes only move its version; anything else (a
        checkpoint, a deletion) makes the next look read the head again."""
        newer = [event async for event in self.store.read_stream(stream, after_version=head.stream_version)]
        if all(event.type == WRITES_SAVED for event in newer):
            if newer:
                head.stream_version = newer[-1].version
        else:
            self._heads.pop(stream, None)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Save `checkpoint` as the new head of its thread; `CheckpointConflict` if its parent is not the head."""
        thread_id, ns = _thread_and_ns(config)
        parent_id = config["configurable"].get("checkpoint_id")
        stream = stream_for(thread_id, ns)
        checkpoint_id = checkpoint["id"]
        stored_metadata = get_checkpoint_metadata(config, metadata)
        await self._register(thread_id, ns)
        for _ in range(_APPEND_ATTEMPTS):
            head = await self._head(stream)
            if head.checkpoint_id == checkpoint_id:
                return _config(thread_id, ns, checkpoint_id)  # a retry of a put that was saved
            base: _Head | None = head
            if parent_id is None:
                base = None  # a new root: stores every value whole
            elif head.checkpoint_id != parent_id:
                if stored_metadata.get("source") not in ("update", "fork"):
                    raise CheckpointConflict(thread_id, ns, parent_id, head.checkpoint_id)
                base = None  # a deliberate branch from an older checkpoint
            event, channels = self._checkpoint_event(
                thread_id, ns, checkpoint, stored_metadata, new_versions, parent_id, head.seq + 1, base
            )
            expected = head.stream_version if head.stream_version else NO_STREAM
            try:
                result = await self.store.append(stream, [event], expected_version=expected)
            except WrongExpectedVersion:
                await self._catch_up(stream, head)  # someone appended meanwhile: look again
                continue
            self._heads[stream] = _Head(checkpoint_id, head.seq + 1, result.version, channels)
            return _config(thread_id, ns, checkpoint_id)
        raise CheckpointConflict(thread_id, ns, parent_id, None)

    def _checkpoint_event(
        self,
        thread_id: str,
        ns: str,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
        parent_id: str | None,
        seq: int,
        base: _Head | None,
    ) -> tuple[NewEvent, dict[str, _Channel]]:
        values: dict[str, Any] = checkpoint["channel_values"]
        stored: dict[str, Any] = {key: value for key, value in checkpoint.items() if key != "channel_values"}
        records: list[dict[str, Any]] = []
        channels: dict[str, _Channel] = {}
        old_enough = seq - self.snapshot_every

        def whole(channel: str, version: Any, value: Any) -> None:
            if value is _ABSENT:
                records.append({"channel": channel, "version": version, "empty": True})
                channels[channel] = _Channel(version, _ABSENT, seq)
                return
            dumped = self._dump(value)
            records.append({"channel": channel, "version": version, "full": dumped})
            channels[channel] = _Channel(
                version, list(value) if isinstance(value, list) else value, seq, len(dumped[1])
            )

        for channel, version in checkpoint["channel_versions"].items():
            before = base.channels.get(channel) if base is not None else None
            if channel in new_versions:
                value = values.get(channel, _ABSENT)
                if (
                    before is not None
                    and isinstance(value, list)
                    and isinstance(before.value, list)
                    and len(value) >= len(before.value)
                    and value[: len(before.value)] == before.value
                ):
                    suffix = self._dump(value[len(before.value) :])
                    chain = before.chain_bytes + len(suffix[1])
                    if chain <= max(before.anchor_bytes, _MIN_CHAIN_BYTES):
                        records.append(
                            {"channel": channel, "version": version, "base": before.version, "suffix": suffix}
                        )
                        channels[channel] = _Channel(
                            version, list(value), before.anchor_seq, before.anchor_bytes, chain
                        )
                        continue
                whole(channel, version, value)
            elif before is not None and _version_key(before.version) == _version_key(version):
                if before.anchor_seq <= old_enough and before.chain_bytes == 0:
                    whole(channel, version, before.value)  # stored too far back: store it whole again
                else:
                    channels[channel] = before
        data = {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint["id"],
            "parent_id": parent_id,
            "seq": seq,
            "step": metadata.get("step"),
            "source": metadata.get("source"),
            "run_id": metadata.get("run_id"),
            "channel_versions": dict(checkpoint["channel_versions"]),
            "updated": sorted(new_versions),
            "anchors": {
                channel: [state.anchor_seq, state.anchor_bytes, state.chain_bytes]
                for channel, state in channels.items()
            },
            "checkpoint": self._dump(stored),
            "metadata": self._dump(metadata),
            "values": records,
        }
        event = NewEvent(CHECKPOINT_SAVED, data, id=_event_id(stream_for(thread_id, ns), checkpoint["id"]))
        return event, channels

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Save a task's writes against a checkpoint; a retried call writes nothing twice."""
        thread_id, ns = _thread_and_ns(config)
        checkpoint_id = config["configurable"]["checkpoint_id"]
        stream = stream_for(thread_id, ns)
        indexed = [
            [WRITES_IDX_MAP.get(channel, index), channel, self._dump(value)]
            for index, (channel, value) in enumerate(writes)
        ]
        if not indexed:
            return
        data = {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
            "task_id": task_id,
            "task_path": task_path,
            "node": node_of(task_path),
            "writes": indexed,
        }
        # The id covers the writes' content: a retried call is an exact retry (stored once), and a task that writes
        # again with other values (an error on a second attempt) is a new event, not a refused retry.
        content = hashlib.sha256(repr(indexed).encode()).hexdigest()
        event = NewEvent(WRITES_SAVED, data, id=_event_id(stream, checkpoint_id, task_id, content))
        result = await self.store.append(stream, [event], expected_version=ANY)
        head = self._heads.get(stream)
        if head is not None and result.version == head.stream_version + 1:
            head.stream_version = result.version  # otherwise the next `aput` catches up

    # -- deleting, copying, pruning ------------------------------------------------------------------------------

    async def _mark(self, thread_id: str, ns: str, event_type: str, data: dict[str, Any]) -> None:
        stream = stream_for(thread_id, ns)
        self._heads.pop(stream, None)
        if await self.store.stream_version(stream):
            await self.store.append(stream, [NewEvent(event_type, data)])

    async def adelete_thread(self, thread_id: str) -> None:
        """Remove every checkpoint and write of the thread, in every namespace, from what readers see."""
        for ns in await self._namespaces(thread_id):
            await self._mark(thread_id, ns, THREAD_DELETED, {"thread_id": thread_id})

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Remove the checkpoints (and their writes) that the given runs saved, in every thread."""
        wanted = set(run_ids)
        if not wanted:
            return
        for thread_id in await self._threads():
            for ns in await self._namespaces(thread_id):
                folded = await self._scan(stream_for(thread_id, ns), everything=True)
                doomed = [e.data["checkpoint_id"] for e in folded.checkpoints if e.data.get("run_id") in wanted]
                if doomed:
                    await self._mark(thread_id, ns, CHECKPOINTS_DELETED, {"checkpoint_ids": doomed})

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every namespace of a thread, checkpoints and writes, to another thread (one append per namespace)."""
        for ns in await self._namespaces(source_thread_id):
            source = stream_for(source_thread_id, ns)
            target = stream_for(target_thread_id, ns)
            copied = [
                NewEvent(
                    event.type,
                    {**event.data, "thread_id": target_thread_id} if "thread_id" in event.data else event.data,
                    event.metadata,
                    id=_event_id("copy", target, event.id),
                )
                async for event in self.store.read_stream(source)
            ]
            if copied:
                await self._register(target_thread_id, ns)
                self._heads.pop(target, None)
                await self.store.append(target, copied)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Keep only each namespace's newest checkpoint (``keep_latest``) or none (``delete``)."""
        if strategy not in ("keep_latest", "delete"):
            raise InvalidInput(f"strategy must be 'keep_latest' or 'delete', got {strategy!r}")
        for thread_id in thread_ids:
            for ns in await self._namespaces(thread_id):
                if strategy == "delete":
                    await self._mark(thread_id, ns, THREAD_DELETED, {"thread_id": thread_id})
                    continue
                head = await self._head(stream_for(thread_id, ns))
                if head.checkpoint_id is not None:
                    await self._mark(thread_id, ns, THREAD_PRUNED, {"keep": head.checkpoint_id})

    # -- the sync twins: the same coroutines, run on the saver's loop --------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            coroutine.close()
            raise InvalidInput("the sync methods need the saver to be created inside the event loop of its store")
        if _in_loop(loop):
            coroutine.close()
            raise InvalidInput("a sync method was called on the saver's own event loop; use the async method")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [item async for item in self.alist(config, filter=filter, before=before, limit=limit)]

        return iter(self._run(collect()))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._run(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self._run(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._run(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._run(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._run(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._run(self.aprune(thread_ids, strategy=strategy))

    def get_next_version(self, current: int | None, channel: None) -> int:
        """Versions are small ints: they cost a few bytes in every checkpoint."""
        return 1 if current is None else int(str(current).split(".")[0]) + 1


# -- inspection: what `agentfold show` and `agentfold replay` display -------------------------------------------------


@dataclass(frozen=True)
class TimelineEntry:
    """One checkpoint of a thread, as a timeline shows it."""

    seq: int
    step: int | None
    source: str | None
    checkpoint_id: str
    parent_id: str | None
    recorded_at_us: int
    nodes: list[str]
    """The nodes whose writes made this checkpoint (the tasks that ran from its parent)."""
    updated: list[str]
    """The channels this checkpoint changed."""
    interrupted: bool
    """A task stopped at an `interrupt()` on this checkpoint: the thread waits for input here."""
    visible: bool
    """False once deleted or pruned (the events stay in the log)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "step": self.step,
            "source": self.source,
            "checkpoint_id": self.checkpoint_id,
            "parent_id": self.parent_id,
            "recorded_at_us": self.recorded_at_us,
            "nodes": self.nodes,
            "updated": self.updated,
            "interrupted": self.interrupted,
            "visible": self.visible,
        }


def parse_thread(target: str) -> tuple[str, str]:
    """(thread id, namespace) of ``langgraph:<thread id>[/<namespace>]``."""
    rest = target.removeprefix(STREAM_PREFIX)
    thread_id, _, ns = rest.partition("/")
    if not thread_id:
        raise InvalidInput(f"{target!r} names no LangGraph thread: use langgraph:<thread id>")
    return thread_id, ns


async def thread_timeline(store: EventStore, thread_id: str, checkpoint_ns: str = "") -> list[TimelineEntry]:
    """Every checkpoint of a thread's namespace, oldest first, with the nodes that made it."""
    stream = stream_for(thread_id, checkpoint_ns)
    events = [event async for event in store.read_stream(stream)]
    if not events:
        raise InvalidInput(f"no LangGraph thread {thread_id!r} in this store (stream {stream!r} is empty)")
    scan = _Scan()
    for event in reversed(events):
        if not scan.take(event):
            break
    visible = {event.data["checkpoint_id"] for event in scan.folded.checkpoints}
    nodes: dict[str, list[str]] = {}
    interrupted: set[str] = set()
    for event in events:
        if event.type == WRITES_SAVED:
            checkpoint_id = event.data["checkpoint_id"]
            node = event.data["node"]
            if node and node not in nodes.setdefault(checkpoint_id, []):
                nodes[checkpoint_id].append(node)
            if any(channel == "__interrupt__" for _, channel, _ in event.data["writes"]):
                interrupted.add(checkpoint_id)
    return [
        TimelineEntry(
            seq=event.data["seq"],
            step=event.data.get("step"),
            source=event.data.get("source"),
            checkpoint_id=event.data["checkpoint_id"],
            parent_id=event.data.get("parent_id"),
            recorded_at_us=event.recorded_at_us,
            nodes=nodes.get(event.data.get("parent_id") or "", []),
            updated=event.data.get("updated", []),
            interrupted=event.data["checkpoint_id"] in interrupted,
            visible=event.data["checkpoint_id"] in visible,
        )
        for event in events
        if event.type == CHECKPOINT_SAVED
    ]


def plain(value: Any) -> Any:
    """A channel value as JSON: LangChain messages as their type, content and tool calls; other objects as text."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "type") and hasattr(value, "content"):
        shown: dict[str, Any] = {"type": value.type, "content": plain(value.content)}
        if getattr(value, "tool_calls", None):
            shown["tool_calls"] = plain(value.tool_calls)
        return shown
    return repr(value)


async def channel_values_at(
    store: EventStore, thread_id: str, checkpoint_ns: str = "", checkpoint_id: str | None = None
) -> CheckpointTuple | None:
    """The checkpoint (the newest when `checkpoint_id` is None) with its channel values, read without running a
    node."""
    saver = AgentfoldSaver(store)
    configurable: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return await saver.aget_tuple({"configurable": configurable})


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Final = _Absent()


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _thread_and_ns(config: RunnableConfig) -> tuple[str, str]:
    configurable = config.get("configurable") or {}
    thread_id = configurable.get("thread_id")
    if thread_id is None or thread_id == "":
        raise InvalidInput("a LangGraph config needs configurable.thread_id")
    return str(thread_id), str(configurable.get("checkpoint_ns", "") or "")


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}
