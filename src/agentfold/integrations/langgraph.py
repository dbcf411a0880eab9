"""A LangGraph checkpointer on agentfold: `AgentfoldSaver`.

Each thread's checkpoint namespace is one stream (`langgraph:<thread>` for the root namespace); a checkpoint is a
`CheckpointSaved` event and each `put_writes` call a `WritesSaved` event. What it guarantees beyond LangGraph's own
savers:

- One writer per thread: a checkpoint whose parent is not the thread's head is refused with `CheckpointConflict`
  and nothing is written (the head is checked and the checkpoint appended in one step, with the stream's expected
  version). A checkpoint without a parent starts a new root, as LangGraph defines; a checkpoint of source
  ``update`` or ``fork`` (``graph.update_state``) may branch from an older one on purpose.
- Storage grows with what changed: a checkpoint that extends the head stores only the channels it changed (a list
  channel that grew by appending as the appended items; a value that one of the head's pending writes holds
  already as a reference to that write) and its channel versions as changes to its parent's, compressed. A read of
  the head folds the events after the stream's snapshot (the head's whole state, kept beside the log); when they
  hold `snapshot_every` checkpoints or more and outweigh the snapshot (and the stream is longer than the one read
  of its last 32 events), it keeps the head as the new snapshot, so reading the head does not fold the thread from
  its start. An older checkpoint is folded from the stream's start.
- `put_writes` is idempotent: a retried call writes nothing twice (its event ids derive from the checkpoint, the
  task and the writes' content), and a write already stored for a (task, index) is kept.
- Deleting and pruning append markers; readers never see what a marker removed.

The sync methods run the same coroutines on the event loop the saver was created on, from another thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import uuid
import zlib
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec

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

from agentfold.errors import (  # noqa: E402
    CheckpointConflict,
    InvalidInput,
    StoreCorrupted,
    StoreReadOnly,
    WrongExpectedVersion,
)
from agentfold.events import ANY, NO_STREAM, NewEvent, RecordedEvent  # noqa: E402
from agentfold.log import StreamSnapshot  # noqa: E402
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
HEAD_SNAPSHOT: Final = "langgraph-head"
"""The name of the snapshot that holds a stream's head checkpoint, whole."""
_IDS: Final = uuid.UUID("6f1d1b8e-5b4a-4c1e-9a51-2f3a0c7d9e42")
_MAX_STREAM_ID: Final = 200
_APPEND_ATTEMPTS: Final = 20
_TAIL: Final = 32
"""A read of a stream's head reads this many events from its end first; a shorter stream is read in that one go."""
_VERSION_MAPS: Final = ("channel_versions", "versions_seen")
"""The keys of a checkpoint stored as changes to its parent's when it extends its parent."""
_WRITTEN_CHECKPOINTS: Final = 4
"""For how many checkpoints per stream the saver remembers the writes it appended (see `AgentfoldSaver._written`)."""
_PLAIN_METADATA: Final = ("source", "step", "run_id")
"""Metadata kept outside the serializer's payload, so the timeline reads it without the saver's serializer."""


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


# -- the stored form: one compressed body per event ------------------------------------------------------------------
#
# A `CheckpointSaved` event's data is {"checkpoint_id", "seq", "z"}, a `WritesSaved` event's {"checkpoint_id",
# "task_id", "z"}; "z" is the body: msgpack, deflated with the dictionary below, in base64. A checkpoint's body:
#   delta      True when it extends its parent, the stream's newest visible checkpoint before it (the one the
#              writer's append expected): channels absent from `values` keep the parent's value, and the keys
#              named in `changed` hold changes to the parent's ({"set": {...}, "del": [...]})
#   parent     without `delta`: the parent checkpoint's id, or None
#   checkpoint the checkpoint without its id and channel values, [type, bytes] from the saver's serializer
#   metadata   the same for the metadata, less the keys kept plain in `meta` (source, step, run_id)
#   updated    the channels that `new_versions` named
#   values     channel -> ["none"] (no value), ["set", type, bytes] (the value), ["add", type, bytes] (the parent's
#              list and these items), or ["set@"|"add@", back, n]: the same with the n-th write of the
#              `WritesSaved` event `back` versions before this one
# A writes body: {"path": task path, "writes": [[index, channel, type, bytes], ...]}.


def _dictionary() -> bytes:
    """Deflate's preset dictionary: what most events repeat (a checkpoint's keys, LangChain messages as LangGraph's
    serializer writes them, the bodies' own keys), without any text. Part of the stored form: never change it, add
    another under a new body key instead."""
    base = {"content": "", "additional_kwargs": {}, "response_metadata": {}}
    message = {**base, "type": "", "name": None, "id": None}
    parts: list[Any] = [
        ["langchain_core.messages.system", "SystemMessage", {**message, "type": "system"}, "model_validate_json"],
        [
            "langchain_core.messages.tool",
            "ToolMessage",
            {**message, "type": "tool", "tool_call_id": "", "artifact": None, "status": "success"},
            "model_validate_json",
        ],
        {"name": "", "args": {}, "id": "", "type": "tool_call"},
        {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        {"source": "input", "step": -1, "parents": {}, "run_id": ""},
        {
            "v": 4,
            "ts": "",
            "channel_versions": {"__start__": 1, "messages": 1, "branch:to:": 1},
            "versions_seen": {"__input__": {}, "__start__": {"__start__": 1}},
            "updated_channels": ["messages"],
        },
        {"path": "~__pregel_pull, ", "writes": [[0, "messages", "msgpack", b""]]},
        {
            "parent": "",
            "delta": True,
            "changed": list(_VERSION_MAPS),
            "checkpoint": ["msgpack", b""],
            "metadata": ["msgpack", b""],
            "meta": {"source": "loop", "step": 1},
            "updated": ["messages"],
            "values": {"messages": ["add@", 1, 0]},
        },
        [
            "langchain_core.messages.ai",
            "AIMessage",
            {**message, "type": "ai", "tool_calls": [], "invalid_tool_calls": [], "usage_metadata": None},
            "model_validate_json",
        ],
        ["langchain_core.messages.human", "HumanMessage", {**message, "type": "human"}, "model_validate_json"],
    ]
    return b"".join(msgspec.msgpack.encode(part) for part in parts)


_DICTIONARY: Final = _dictionary()
_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder()


def _deflate(value: Any) -> bytes:
    compressor = zlib.compressobj(wbits=-15, zdict=_DICTIONARY)
    return compressor.compress(_encoder.encode(value)) + compressor.flush()


def _inflate(packed: bytes) -> Any:
    try:
        decompressor = zlib.decompressobj(wbits=-15, zdict=_DICTIONARY)
        return _decoder.decode(decompressor.decompress(packed) + decompressor.flush())
    except (zlib.error, msgspec.DecodeError) as error:
        raise StoreCorrupted(f"a LangGraph checkpoint body does not decode: {error}") from None


def body_of(event: RecordedEvent) -> dict[str, Any]:
    """What a `CheckpointSaved` or `WritesSaved` event stores, decoded (the layout above); the serializer's payloads in
    it stay as they were stored."""
    body: dict[str, Any] = _unpack(event.data["z"])
    return body


def _pack(value: Any) -> str:
    return base64.b64encode(_deflate(value)).decode("ascii")


def _unpack(text: str) -> Any:
    return _inflate(base64.b64decode(text))


def _identical(left: Any, right: Any) -> bool:
    """Equal and of the same types all the way down (1, 1.0 and True are not identical)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_identical(value, right[key]) for key, value in left.items())
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(map(_identical, left, right))
    return bool(left == right)


def _changes(old: Any, new: Any) -> dict[str, Any] | None:
    """`new` as changes to `old` (both dicts), or None when they are not both dicts."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    return {
        "set": {key: value for key, value in new.items() if key not in old or not _identical(old[key], value)},
        "del": [key for key in old if key not in new],
    }


def _changed(old: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    gone = set(changes["del"])
    return {**{key: value for key, value in old.items() if key not in gone}, **changes["set"]}


def _copied(value: Any) -> Any:
    """A copy of the dicts and lists in `value` (the objects in them are shared)."""
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return value


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Final = _Absent()


class _Missing(Exception):
    """A fold that starts at a snapshot lacks what a checkpoint refers to: fold the stream from its start."""


# -- what a stream holds, folded --------------------------------------------------------------------------------------


class _Saved:
    """One `CheckpointSaved` event of a fold; its checkpoint and values are resolved on demand, and kept."""

    def __init__(self, event: RecordedEvent) -> None:
        self.id: str = event.data["checkpoint_id"]
        self.seq: int = event.data["seq"]
        self.version = event.version
        self.recorded_at_us = event.recorded_at_us
        self.body = body_of(event)
        self.parent: str | None = self.body.get("parent")
        """The parent checkpoint's id; a checkpoint that extends its parent names it through the fold."""
        self.stored: dict[str, Any] | None = None
        """The checkpoint without its id and channel values."""
        self.values: dict[str, Any] = {}
        """Channel -> value (`_ABSENT` for none), as resolved so far."""


class _Fold:
    """A stream's events folded in order: all of them, or those from a snapshot's checkpoint on (`seeded`)."""

    def __init__(self) -> None:
        self.saved: dict[str, _Saved] = {}
        """Every checkpoint since the thread was last deleted, hidden or not: later ones may extend them."""
        self.visible: dict[str, _Saved] = {}
        """The checkpoints readers see, in stream order."""
        self.writes: dict[str, list[tuple[str, dict[str, Any], int]]] = {}
        """Checkpoint id -> (task id, writes body, stream version), oldest first. A task's writes may precede its
        checkpoint's event in the stream (LangGraph saves both in the background with its default durability)."""
        self.write_bodies: dict[int, dict[str, Any]] = {}
        """Stream version -> writes body: what `set@` and `add@` records refer to."""
        self.stream_version = 0
        self.last_seq = 0
        self.snapshot_seq = 0
        """The seq of the checkpoint the fold started from (0 when it started at the stream's start)."""
        self.snapshot_version = 0
        """The stream version of the stream's snapshot, whether the fold started there or not (0: none)."""
        self.snapshot_bytes = 0
        """The size of that snapshot."""
        self.folded_bytes = 0
        """The size of the bodies folded since the checkpoint the fold started from."""
        self.seeded = False
        self.marked = False
        """A deletion or pruning marker came after the snapshot: what it hid lies before the fold began."""
        self.reset = False
        """The thread was deleted after the snapshot: nothing before the fold matters."""
        self.short = False
        """The whole stream came in the one read of its tail: a snapshot would not make reading it shorter."""

    def apply(self, event: RecordedEvent) -> None:
        self.stream_version = event.version
        data = event.data
        self.folded_bytes += len(data.get("z", ""))
        if event.type == CHECKPOINT_SAVED:
            saved = _Saved(event)
            if saved.body["delta"]:
                head = self.head()
                saved.parent = None if head is None else head.id
            self.saved[saved.id] = saved
            self.visible.pop(saved.id, None)
            self.visible[saved.id] = saved
            self.last_seq = max(self.last_seq, saved.seq)
        elif event.type == WRITES_SAVED:
            body = body_of(event)
            self.write_bodies[event.version] = body
            self.writes.setdefault(data["checkpoint_id"], []).append((data["task_id"], body, event.version))
        elif event.type == THREAD_DELETED:
            self.saved, self.visible, self.writes, self.write_bodies = {}, {}, {}, {}
            self.last_seq = self.snapshot_seq = 0
            self.reset = True
        elif event.type == CHECKPOINTS_DELETED:
            self.marked = True
            for checkpoint_id in data["checkpoint_ids"]:
                self.visible.pop(checkpoint_id, None)
                self.writes.pop(checkpoint_id, None)
        elif event.type == THREAD_PRUNED:
            self.marked = True
            keep = data.get("keep")
            self.visible = {key: saved for key, saved in self.visible.items() if key == keep}
            self.writes = {key: writes for key, writes in self.writes.items() if key == keep}

    def seed(self, event: RecordedEvent, state: dict[str, Any], serde: SerializerProtocol) -> bool:
        """Start at the snapshot's checkpoint (`event`, its values and the writes stored before it from `state`);
        False if they do not match."""
        if event.type != CHECKPOINT_SAVED or event.data["checkpoint_id"] != state["id"]:
            return False
        self.apply(event)
        saved = self.saved[state["id"]]
        saved.parent = state["parent"]
        saved.stored = serde.loads_typed(tuple(state["checkpoint"]))
        saved.values = {
            channel: _ABSENT if stored is None else serde.loads_typed(tuple(stored))
            for channel, stored in state["values"].items()
        }
        for version, checkpoint_id, task_id, body in state["writes"]:
            self.write_bodies[version] = body
            self.writes.setdefault(checkpoint_id, []).append((task_id, body, version))
        self.seeded, self.snapshot_seq, self.snapshot_version = True, saved.seq, event.version
        self.folded_bytes = 0
        return True

    def head(self) -> _Saved | None:
        return next(reversed(self.visible.values()), None)

    def find(self, checkpoint_id: str | None) -> _Saved | None:
        return self.head() if checkpoint_id is None else self.visible.get(checkpoint_id)

    def trusted(self, found: _Saved | None) -> bool:
        """Whether a seeded fold's answer stands (no marker may have hidden what lies before it)."""
        return not self.seeded or (not self.marked and (found is not None or self.reset))

    def parent(self, saved: _Saved) -> _Saved:
        parent = self.saved.get(saved.parent or "")
        if parent is None:
            if self.seeded:
                raise _Missing
            raise StoreCorrupted(f"checkpoint {saved.id!r} extends {saved.parent!r}, which is not stored")
        return parent

    def write(self, saved: _Saved, back: int, n: int) -> tuple[str, bytes]:
        body = self.write_bodies.get(saved.version - back)
        if body is None:
            if self.seeded:
                raise _Missing
            raise StoreCorrupted(f"checkpoint {saved.id!r} refers to writes that are not stored")
        _, _, kind, payload = body["writes"][n]
        return kind, payload


@dataclass
class _Head:
    """The newest checkpoint of a stream as this saver last saw it, with the stream's version then."""

    checkpoint_id: str | None
    seq: int
    stream_version: int
    stored: dict[str, Any] = field(default_factory=dict)
    """The checkpoint without its id and channel values."""
    values: dict[str, Any] = field(default_factory=dict)
    """Channel -> value (`_ABSENT` for none)."""


# -- the saver --------------------------------------------------------------------------------------------------------


class AgentfoldSaver(BaseCheckpointSaver[int]):
    """LangGraph's `BaseCheckpointSaver` over an agentfold `EventStore` (any backend).

    Create it inside the event loop that opened `store`; the sync methods may then be called from other threads.
    `snapshot_every`: a read of the head that folded this many checkpoints past the stream's snapshot (and more bytes
    than the snapshot holds) keeps a new one.
    """

    def __init__(self, store: EventStore, *, serde: SerializerProtocol | None = None, snapshot_every: int = 20) -> None:
        super().__init__(serde=serde)
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise InvalidInput(f"snapshot_every must be an int >= 1, got {snapshot_every!r}")
        self.store = store
        self.snapshot_every = snapshot_every
        self._heads: dict[str, _Head] = {}
        self._written: dict[str, dict[str, list[tuple[int, int, str, tuple[str, bytes]]]]] = {}
        """Stream -> checkpoint id -> the pending writes this saver appended for it, newest checkpoints only:
        (stream version, n, channel, serialized value), for a checkpoint to refer to rather than repeat."""
        self._writing: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        """(stream, checkpoint id) -> the `aput_writes` calls under way for it: a checkpoint put while its parent's
        writes are still being appended waits for them, to refer to them rather than repeat them."""
        self._registered: set[str] = set()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    # -- encoding ------------------------------------------------------------------------------------------------

    def _dump(self, value: Any) -> tuple[str, bytes]:
        kind, payload = self.serde.dumps_typed(value)
        return kind, payload

    def _load(self, stored: Sequence[Any]) -> Any:
        return self.serde.loads_typed((stored[0], stored[1]))

    # -- reading -------------------------------------------------------------------------------------------------

    async def _fold(self, stream: str, events: Sequence[RecordedEvent] | None = None) -> _Fold:
        """Every event of the stream (`events`, when they are all of them), folded."""
        fold = _Fold()
        if events is not None:
            for event in events:
                fold.apply(event)
            return fold
        async for page in self.store.read_stream_pages(stream):
            for event in page:
                fold.apply(event)
        return fold

    async def _seeded(self, stream: str, snapshot: StreamSnapshot, tail: list[RecordedEvent]) -> _Fold | None:
        """The stream folded from the snapshot's checkpoint on (`tail`: its last events, in order), or None when the
        snapshot does not match it."""
        if snapshot.version >= tail[0].version:
            events = [event for event in tail if event.version >= snapshot.version]
        else:
            gap = tail[0].version - snapshot.version
            events = [e async for e in self.store.read_stream(stream, after_version=snapshot.version - 1, limit=gap)]
            events += tail
        if not events or not (fold := _Fold()).seed(events[0], _inflate(snapshot.state), self.serde):
            return None
        fold.snapshot_bytes = len(snapshot.state)
        for event in events[1:]:
            fold.apply(event)
        return fold

    async def _read(self, stream: str, checkpoint_id: str | None) -> tuple[_Fold, _Saved | None]:
        """A fold holding checkpoint `checkpoint_id` (the head when None), resolved. The stream's last events are
        read first: when they are all of it, they are folded; else the fold starts at the stream's snapshot when
        that suffices, and at the stream's start when not."""
        tail = [event async for event in self.store.read_stream(stream, backwards=True, limit=_TAIL)][::-1]
        if not tail or tail[0].version == 1:
            fold = await self._fold(stream, tail)
            fold.short = True
        else:
            snapshot = await self.store.load_snapshot(stream, HEAD_SNAPSHOT)
            seeded = None if snapshot is None else await self._seeded(stream, snapshot, tail)
            if seeded is not None:
                found = seeded.find(checkpoint_id)
                if seeded.trusted(found) and (found is None or self._resolves(seeded, found)):
                    return seeded, found
            fold = await self._fold(stream)
            if snapshot is not None:
                fold.snapshot_version, fold.snapshot_bytes = snapshot.version, len(snapshot.state)
        found = fold.find(checkpoint_id)
        if found is not None:
            self._resolve(fold, found)
        return fold, found

    def _resolves(self, fold: _Fold, saved: _Saved) -> bool:
        """Resolve `saved` within `fold`; False when a value it needs lies before the fold's start (a fold seeded
        from a snapshot), so the caller folds the stream from its beginning instead."""
        try:
            self._resolve(fold, saved)
        except _Missing:
            return False
        return True

    def _resolve(self, fold: _Fold, saved: _Saved) -> None:
        for channel in self._stored(fold, saved)["channel_versions"]:
            self._value(fold, saved, channel)

    def _stored(self, fold: _Fold, saved: _Saved) -> dict[str, Any]:
        """The checkpoint without its id and channel values, its version maps rebuilt from its parents'."""
        chain: list[_Saved] = []
        node = saved
        while node.stored is None:
            chain.append(node)
            if not node.body.get("changed"):
                break
            node = fold.parent(node)
        for node in reversed(chain):
            stored: dict[str, Any] = self._load(node.body["checkpoint"])
            if node.body.get("changed"):
                parent = fold.parent(node).stored
                assert parent is not None
                for key in node.body["changed"]:
                    stored[key] = _changed(parent[key], stored[key])
            node.stored = stored
        assert saved.stored is not None
        return saved.stored

    def _value(self, fold: _Fold, saved: _Saved, channel: str) -> Any:
        """The channel's value at checkpoint `saved` (`_ABSENT` when it has none), from the nearest checkpoint up
        its parents that stored the channel, plus the items appended since."""
        chain: list[tuple[_Saved, list[Any] | None]] = []
        node = saved
        value: Any = _ABSENT
        while True:
            if channel in node.values:
                value = node.values[channel]
                break
            record: list[Any] | None = node.body["values"].get(channel)
            chain.append((node, record))
            if record is None:
                if not node.body["delta"]:
                    break  # stored without this channel: no value
                node = fold.parent(node)
                continue
            if record[0] in ("set", "set@", "none"):
                break
            node = fold.parent(node)  # an "add": the parent's list, and more
        for node, record in reversed(chain):
            if record is not None and record[0] != "none":
                kind = record[0]
                stored = fold.write(node, record[1], record[2]) if kind.endswith("@") else record[1:]
                loaded = self._load(stored)
                if kind.startswith("set"):
                    value = loaded
                elif value is not _ABSENT:
                    value = [*value, *loaded]
            elif record is not None:
                value = _ABSENT
            node.values[channel] = value
        return value

    def _tuple(self, thread_id: str, ns: str, fold: _Fold, saved: _Saved) -> CheckpointTuple:
        stored = self._stored(fold, saved)
        values: dict[str, Any] = {}
        for channel in stored["channel_versions"]:
            value = self._value(fold, saved, channel)
            if value is not _ABSENT:
                values[channel] = list(value) if isinstance(value, list) else value
        checkpoint: Checkpoint = {**_copied(stored), "id": saved.id, "channel_values": values}  # type: ignore[typeddict-item]
        metadata = self._metadata(saved)
        pending: dict[tuple[str, int], tuple[str, str, str, Any]] = {}
        for task_id, body, _ in fold.writes.get(saved.id, []):
            for index, channel, kind, payload in body["writes"]:
                if index >= 0 and (task_id, index) in pending:
                    continue  # a write already stored for this task and index is kept
                pending[(task_id, index)] = (body["path"], task_id, channel, (kind, payload))
        ordered = sorted(pending.items(), key=lambda item: writes_sort_key(item[1][0], item[0][0], item[0][1]))
        pending_writes: list[PendingWrite] = [
            (task_id, channel, self._load(stored_value)) for _, (_, task_id, channel, stored_value) in ordered
        ]
        parent_id = saved.parent
        return CheckpointTuple(
            config=_config(thread_id, ns, saved.id),
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=_config(thread_id, ns, parent_id) if parent_id else None,
            pending_writes=pending_writes,
        )

    def _metadata(self, saved: _Saved) -> CheckpointMetadata:
        return {**self._load(saved.body["metadata"]), **saved.body["meta"]}  # type: ignore[typeddict-item]

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint `config` names (the thread's newest when it names none), with its pending writes."""
        thread_id, ns = _thread_and_ns(config)
        stream = stream_for(thread_id, ns)
        fold, found = await self._read(stream, get_checkpoint_id(config))
        if found is None:
            return None
        if found is fold.head():
            await self._took_head(stream, fold, found)
        return self._tuple(thread_id, ns, fold, found)

    async def _took_head(self, stream: str, fold: _Fold, saved: _Saved) -> _Head:
        """Keep the head just read, so the next `aput` on the stream can store only what changed; and keep it whole
        beside the log (the stream's snapshot) when the read folded `snapshot_every` checkpoints or more past the
        snapshot, so the next read starts there."""
        stored = self._stored(fold, saved)
        values = {channel: self._value(fold, saved, channel) for channel in stored["channel_versions"]}
        head = _Head(saved.id, fold.last_seq, fold.stream_version, stored, values)
        self._heads[stream] = head
        # A new snapshot replaces the old one only once the events folded past it outweigh it: what snapshots write
        # (and, on PostgreSQL, leave behind as dead rows until a vacuum) never exceeds what the log grew by.
        due = saved.seq - fold.snapshot_seq >= self.snapshot_every and saved.version > fold.snapshot_version
        if due and fold.folded_bytes >= fold.snapshot_bytes and not fold.short:
            state = {
                "id": saved.id,
                "parent": saved.parent,
                "seq": saved.seq,
                "checkpoint": self._dump(stored),
                "values": {
                    channel: None if value is _ABSENT else self._dump(value) for channel, value in values.items()
                },
                "writes": [
                    [version, checkpoint_id, task_id, body]
                    for checkpoint_id, writes in fold.writes.items()
                    if checkpoint_id == saved.id or checkpoint_id not in fold.saved
                    for task_id, body, version in writes
                    if version < saved.version
                ],
            }
            snapshot = StreamSnapshot(stream, HEAD_SNAPSHOT, saved.version, _deflate(state))
            with contextlib.suppress(StoreReadOnly):  # a read-only store (a replica) is read without one
                await self.store.keep_snapshot(snapshot)
        return head

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
                fold = await self._fold(stream_for(thread_id, ns))
                for saved in sorted(fold.visible.values(), key=lambda saved: saved.id, reverse=True):
                    if wanted_id and saved.id != wanted_id:
                        continue
                    if before_id and saved.id >= before_id:
                        continue
                    if filter and not all(self._metadata(saved).get(key) == value for key, value in filter.items()):
                        continue
                    if remaining is not None:
                        if remaining <= 0:
                            return
                        remaining -= 1
                    yield self._tuple(thread_id, ns, fold, saved)

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
        fold, found = await self._read(stream, None)
        if found is None:
            head = _Head(None, fold.last_seq, fold.stream_version)
            self._heads[stream] = head
            return head
        return await self._took_head(stream, fold, found)

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
        writing = self._writing.get((stream, parent_id or ""))
        if writing:
            await asyncio.wait(list(writing))
        for _ in range(_APPEND_ATTEMPTS):
            head = await self._head(stream)
            if head.checkpoint_id == checkpoint_id:
                return _config(thread_id, ns, checkpoint_id)  # a retry of a put that was saved
            if parent_id is not None and head.checkpoint_id != parent_id:
                if stored_metadata.get("source") not in ("update", "fork"):
                    raise CheckpointConflict(thread_id, ns, parent_id, head.checkpoint_id)
            # Extending the head stores what changed; a new root or a deliberate branch stores every value.
            base = head if parent_id is not None and head.checkpoint_id == parent_id else None
            event, saved = self._checkpoint_event(
                stream, checkpoint, stored_metadata, new_versions, parent_id, head, base
            )
            expected = head.stream_version if head.stream_version else NO_STREAM
            try:
                result = await self.store.append(stream, [event], expected_version=expected)
            except WrongExpectedVersion:
                await self._catch_up(stream, head)  # someone appended meanwhile: look again
                continue
            saved.stream_version = result.version
            self._heads[stream] = saved
            return _config(thread_id, ns, checkpoint_id)
        raise CheckpointConflict(thread_id, ns, parent_id, None)

    def _checkpoint_event(
        self,
        stream: str,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
        parent_id: str | None,
        head: _Head,
        base: _Head | None,
    ) -> tuple[NewEvent, _Head]:
        """The event that saves `checkpoint` (at the stream version after `head`'s), and the head it makes."""
        version = head.stream_version + 1
        given: dict[str, Any] = checkpoint["channel_values"]
        stored: dict[str, Any] = _copied(
            {key: value for key, value in checkpoint.items() if key not in ("id", "channel_values")}
        )  # a copy: the graph may change its checkpoint's maps after the put
        values: dict[str, Any] = {}
        records: dict[str, list[Any]] = {}
        for channel, channel_version in checkpoint["channel_versions"].items():
            if (
                base is not None
                and channel not in new_versions
                and channel in base.values
                and _identical(base.stored["channel_versions"].get(channel), channel_version)
            ):
                values[channel] = base.values[channel]  # unchanged: the parent's value
                continue
            value = given.get(channel, _ABSENT)
            values[channel] = list(value) if isinstance(value, list) else value
            before = base.values.get(channel, _ABSENT) if base is not None else _ABSENT
            records[channel] = self._record(stream, channel, value, before, parent_id if base else None, version)
        body_checkpoint = dict(stored)
        changed = []
        if base is not None:
            for key in _VERSION_MAPS:
                changes = _changes(base.stored.get(key), stored.get(key))
                if changes is not None:
                    body_checkpoint[key] = changes
                    changed.append(key)
        plain = {
            key: metadata[key]
            for key in _PLAIN_METADATA
            if key in metadata and type(metadata[key]) in (int, str, type(None))
        }
        body = {
            "delta": base is not None,
            **({} if base is not None else {"parent": parent_id}),
            "changed": changed,
            "checkpoint": self._dump(body_checkpoint),
            "metadata": self._dump({key: value for key, value in metadata.items() if key not in plain}),
            "meta": plain,
            "updated": sorted(new_versions),
            "values": records,
        }
        data = {"checkpoint_id": checkpoint["id"], "seq": head.seq + 1, "z": _pack(body)}
        event = NewEvent(CHECKPOINT_SAVED, data, id=_event_id(stream, checkpoint["id"]))
        return event, _Head(checkpoint["id"], head.seq + 1, version, stored, values)

    def _record(
        self, stream: str, channel: str, value: Any, before: Any, parent_id: str | None, version: int
    ) -> list[Any]:
        """How a changed channel is stored: nothing, the appended items, or the value; by reference to one of the
        parent's pending writes when one holds exactly that."""
        if value is _ABSENT:
            return ["none"]
        if (
            isinstance(value, list)
            and isinstance(before, list)
            and len(value) >= len(before)
            and value[: len(before)] == before
        ):
            kind, dumped = "add", self._dump(value[len(before) :])
        else:
            kind, dumped = "set", self._dump(value)
        written_for_parent = self._written.get(stream, {}).get(parent_id or "", [])
        for write_version, n, written_channel, written in written_for_parent:
            if written_channel == channel and written == dumped:
                return [f"{kind}@", version - write_version, n]
        return [kind, *dumped]

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
        dumped = [(channel, self._dump(value)) for channel, value in writes]
        if not dumped:
            return
        indexed = [
            [WRITES_IDX_MAP.get(channel, n), channel, kind, payload]
            for n, (channel, (kind, payload)) in enumerate(dumped)
        ]
        data = {"checkpoint_id": checkpoint_id, "task_id": task_id, "z": _pack({"path": task_path, "writes": indexed})}
        # The id covers the writes' content: a retried call is an exact retry (stored once), and a task that writes
        # again with other values (an error on a second attempt) is a new event, not a refused retry.
        content = hashlib.sha256(repr(indexed).encode()).hexdigest()
        event = NewEvent(WRITES_SAVED, data, id=_event_id(stream, checkpoint_id, task_id, content))
        key = (stream, checkpoint_id)
        under_way: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writing.setdefault(key, []).append(under_way)
        try:
            result = await self.store.append(stream, [event], expected_version=ANY)
        finally:
            under_way.set_result(None)
            self._writing[key].remove(under_way)
            if not self._writing[key]:
                del self._writing[key]
        written = self._written.setdefault(stream, {})
        written.setdefault(checkpoint_id, []).extend(
            (result.version, n, channel, stored) for n, (channel, stored) in enumerate(dumped)
        )
        while len(written) > _WRITTEN_CHECKPOINTS:
            del written[next(iter(written))]
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
                fold = await self._fold(stream_for(thread_id, ns))
                doomed = [saved.id for saved in fold.visible.values() if self._metadata(saved).get("run_id") in wanted]
                if doomed:
                    await self._mark(thread_id, ns, CHECKPOINTS_DELETED, {"checkpoint_ids": doomed})

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every namespace of a thread, checkpoints and writes, to another thread (one append per namespace)."""
        for ns in await self._namespaces(source_thread_id):
            source = stream_for(source_thread_id, ns)
            target = stream_for(target_thread_id, ns)
            copied = [
                NewEvent(event.type, event.data, event.metadata, id=_event_id("copy", target, event.id))
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
    fold = _Fold()
    nodes: dict[str, list[str]] = {}
    interrupted: set[str] = set()
    checkpoints: list[_Saved] = []
    for event in events:
        fold.apply(event)
        if event.type == WRITES_SAVED:
            checkpoint_id, body = event.data["checkpoint_id"], fold.write_bodies[event.version]
            node = node_of(body["path"])
            if node and node not in nodes.setdefault(checkpoint_id, []):
                nodes[checkpoint_id].append(node)
            if any(channel == "__interrupt__" for _, channel, _, _ in body["writes"]):
                interrupted.add(checkpoint_id)
        elif event.type == CHECKPOINT_SAVED:
            checkpoints.append(fold.saved[event.data["checkpoint_id"]])
    return [
        TimelineEntry(
            seq=saved.seq,
            step=saved.body["meta"].get("step"),
            source=saved.body["meta"].get("source"),
            checkpoint_id=saved.id,
            parent_id=saved.parent,
            recorded_at_us=saved.recorded_at_us,
            nodes=nodes.get(saved.parent or "", []),
            updated=saved.body["updated"],
            interrupted=saved.id in interrupted,
            visible=fold.visible.get(saved.id) is saved,
        )
        for saved in checkpoints
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
