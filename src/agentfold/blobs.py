"""Large payloads: top-level fields of an event's data kept apart from the event, by content hash, as blobs.

When a store's backend keeps blobs (`agentfold.backend.BlobStorage`), `append` moves every top-level field of an
event's data whose JSON is at least `blob_threshold` bytes into a blob named by the SHA-256 of that JSON, and
stores the event with a reference in its place::

    data     {"prompt": {"$blob": "<sha256 hex>", "size": 5242880}, "model": "m-1"}
    metadata {..., "$blobs": ["prompt"]}

The backend writes the event, its blobs and one link per (event, blob) in the same step, and trimming an event
removes its links and every blob no event links to any more, in the same step: a reference never dangles, and a
blob shared by several events (the same content) is stored once. `max_event_size` counts the event with its
references; each blob may be up to `max_blob_size`. Readers get the fields back in place, with the ``$blobs`` key
gone, unless they ask not to; folds load an event's blobs only when a handler that wants them is about to run.

Everything here is pure (no I/O): splitting an encoded event, reading its references, putting contents back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import msgspec

from agentfold.errors import BlobTooLarge, StoreCorrupted
from agentfold.events import RecordedEvent

BLOBS_KEY: Final = "$blobs"
"""The metadata key listing which data fields of a stored event are blob references. A caller's metadata may not
use it (`InvalidEventData`)."""
BLOB_KEY: Final = "$blob"
"""The key of a reference: ``{"$blob": "<sha256 hex>", "size": <bytes>}`` stands in a field's place."""
DEFAULT_BLOB_THRESHOLD: Final = 64 * 1024
"""A top-level data field whose JSON is at least this many bytes is kept as a blob."""
DEFAULT_MAX_BLOB_SIZE: Final = 64 * 1024 * 1024
"""The largest blob (one field's JSON) `append` accepts."""
MAX_BLOB_SIZE_LIMIT: Final = 512 * 1024 * 1024
"""No store takes blobs above this (Redis's largest string)."""
READ_BATCH_BYTES: Final = 64 * 1024 * 1024
"""Readers load the blobs of a page in batches of about this many bytes (at least one event each), so a page of
large events is never held in memory whole (`EventLog.blob_batch_bytes`, settable per store)."""

_encoder: Final = msgspec.json.Encoder()
_value_decoder: Final = msgspec.json.Decoder()


class Blob(msgspec.Struct, frozen=True, gc=False):
    """One blob of an append: the JSON of a data field and the SHA-256 (hex) that names it."""

    digest: str
    content: bytes


class BlobRef(NamedTuple):
    """A reference found in a stored event: the field it stands for, the blob's digest and its size in bytes."""

    field: str
    digest: str
    size: int


class BlobUsage(NamedTuple):
    """What a store's blobs hold: how many there are and their bytes (each content once, however many events
    refer to it)."""

    blobs: int
    bytes: int


class BlobPolicy(NamedTuple):
    """When `append` makes blobs: fields of at least `threshold` bytes, each at most `max_size` bytes."""

    threshold: int
    max_size: int


def split_data(
    data: dict[str, Any], data_bytes: bytes, policy: BlobPolicy, event_type: str, where: str
) -> tuple[bytes, list[str], tuple[Blob, ...]] | None:
    """The event's data with its large fields replaced by references, the names of those fields, and their blobs
    (each content once); None when no field is large enough. `where` names the event in errors (``events[0]``)."""
    if len(data_bytes) < policy.threshold:
        return None
    stored: dict[str, Any] = {}
    fields: list[str] = []
    blobs: dict[str, Blob] = {}
    for key, value in data.items():
        encoded = _encoder.encode(value)
        size = len(encoded)
        if size < policy.threshold:
            stored[key] = msgspec.Raw(encoded)
            continue
        if size > policy.max_size:
            raise BlobTooLarge(event_type, key, f"{where}.data.{key}", size, policy.max_size)
        digest = hashlib.sha256(encoded).hexdigest()
        stored[key] = {BLOB_KEY: digest, "size": size}
        fields.append(key)
        blobs.setdefault(digest, Blob(digest, encoded))
    if not fields:
        return None
    return _encoder.encode(stored), fields, tuple(blobs.values())


def marked_metadata(metadata: dict[str, Any] | None, fields: list[str]) -> bytes:
    """The metadata stored with an event that has blobs: the caller's, then ``"$blobs": [fields]``."""
    marked = dict(metadata) if metadata else {}
    marked[BLOBS_KEY] = fields
    return _encoder.encode(marked)


def has_blobs(event: RecordedEvent) -> bool:
    """Whether the stored event refers to blobs (its fields are references until loaded)."""
    metadata = event.metadata
    return bool(metadata) and BLOBS_KEY in metadata


def references(event: RecordedEvent) -> list[BlobRef]:
    """The blob references of a stored event (none when it has no ``$blobs`` key); `StoreCorrupted` when the key
    and the fields it names are not what `append` writes."""
    fields = event.metadata.get(BLOBS_KEY) if event.metadata else None
    if fields is None:
        return []
    if type(fields) is not list or not fields:
        raise _corrupted(event, f"its metadata {BLOBS_KEY!r} is not a list of field names")
    found: list[BlobRef] = []
    for field in fields:
        reference = event.data.get(field) if type(field) is str else None
        if type(reference) is not dict or reference.keys() != {BLOB_KEY, "size"}:
            raise _corrupted(event, f"its data field {field!r} is not a blob reference")
        digest, size = reference[BLOB_KEY], reference["size"]
        if type(digest) is not str or len(digest) != 64 or type(size) is not int or size < 0:
            raise _corrupted(event, f"its data field {field!r} is not a blob reference")
        found.append(BlobRef(field, digest, size))
    return found


def blob_bytes(events: Iterable[RecordedEvent]) -> int:
    """The bytes of the blobs the stored events refer to (as their references say)."""
    return sum(reference.size for event in events for reference in references(event))


def digests_of(events: Iterable[RecordedEvent]) -> list[str]:
    """The distinct digests the stored events refer to, in order of first reference."""
    return list(dict.fromkeys(reference.digest for event in events for reference in references(event)))


def with_contents(event: RecordedEvent, contents: Mapping[str, bytes]) -> RecordedEvent | None:
    """The event with each reference replaced by its blob's value and the ``$blobs`` key gone; None when a blob it
    refers to is not among `contents`."""
    found = references(event)
    if not found:
        return event
    data = dict(event.data)
    for reference in found:
        content = contents.get(reference.digest)
        if content is None:
            return None
        if len(content) != reference.size:
            raise _corrupted(event, f"its blob {reference.digest} holds {len(content)} bytes, not {reference.size}")
        try:
            data[reference.field] = _value_decoder.decode(content)
        except msgspec.DecodeError as error:
            raise _corrupted(event, f"its blob {reference.digest} is not JSON ({error})") from None
    metadata = {key: value for key, value in event.metadata.items() if key != BLOBS_KEY}
    return msgspec.structs.replace(event, data=data, metadata=metadata)


def joined(data: bytes, metadata: bytes, blobs: Sequence[Blob]) -> tuple[bytes, bytes]:
    """An encoded event's data and metadata as the caller gave them: the references in `data` replaced by the
    blobs' JSON and the ``$blobs`` key taken out of `metadata` (to compare a retry with what was stored)."""
    marked = msgspec.json.decode(metadata, type=dict[str, msgspec.Raw])
    fields = marked.pop(BLOBS_KEY, None)
    if fields is None:
        return data, metadata
    contents = {blob.digest: blob.content for blob in blobs}
    stored = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    for field in msgspec.json.decode(fields, type=list[str]):
        reference = msgspec.json.decode(stored[field], type=dict[str, Any])
        stored[field] = msgspec.Raw(contents[reference[BLOB_KEY]])
    return _encoder.encode(stored), _encoder.encode(marked)


def batches(events: list[RecordedEvent], limit: int = READ_BATCH_BYTES) -> list[list[RecordedEvent]]:
    """`events` cut into runs whose blobs add up to at most `limit` bytes (a run holds at least one event)."""
    runs: list[list[RecordedEvent]] = []
    current: list[RecordedEvent] = []
    size = 0
    for event in events:
        weight = blob_bytes([event])
        if current and size + weight > limit:
            runs.append(current)
            current, size = [], 0
        current.append(event)
        size += weight
    if current:
        runs.append(current)
    return runs


def _corrupted(event: RecordedEvent, what: str) -> StoreCorrupted:
    return StoreCorrupted(
        f"the stored event at version {event.version} of stream {event.stream_id!r} (position {event.position}) "
        f"refers to blobs agentfold did not write: {what}"
    )


__all__ = [
    "BLOBS_KEY",
    "BLOB_KEY",
    "DEFAULT_BLOB_THRESHOLD",
    "DEFAULT_MAX_BLOB_SIZE",
    "MAX_BLOB_SIZE_LIMIT",
    "READ_BATCH_BYTES",
    "Blob",
    "BlobPolicy",
    "BlobRef",
    "BlobUsage",
    "batches",
    "blob_bytes",
    "digests_of",
    "has_blobs",
    "joined",
    "marked_metadata",
    "references",
    "split_data",
    "with_contents",
]
