"""JSON encoding of what callers hand to `append`, after `agentfold.validation` checked it, and decoding of what
the stores give back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from agentfold.blobs import BLOBS_KEY, Blob, BlobPolicy, marked_metadata, split_data
from agentfold.errors import EventTooLarge, InvalidEventData, InvalidInput, StoreCorrupted
from agentfold.events import NewEvent
from agentfold.validation import (
    MAX_DEPTH,
    MAX_NAME_LENGTH,
    MAX_VERSION,
    check_event_id,
    check_event_type,
    check_event_types,
    check_events,
    check_expected_version,
    check_json_object,
    check_json_value,
    check_name,
    check_stream_id,
)

DEFAULT_MAX_EVENT_SIZE: Final = 1024 * 1024

_encoder = msgspec.json.Encoder()
_object_decoder = msgspec.json.Decoder(dict[str, Any])


class EncodedEvent(msgspec.Struct, frozen=True, gc=False):
    """A validated event ready for a backend: JSON already encoded, id as canonical text. With `blobs`, `data` holds
    references in place of some fields and `metadata` lists them (`agentfold.blobs`): the backend stores the blobs
    and the event in one step."""

    id: str
    type: str
    data: bytes
    metadata: bytes
    blobs: tuple[Blob, ...] = ()


def encode_events(
    events: Sequence[NewEvent], max_event_size: int = DEFAULT_MAX_EVENT_SIZE, blobs: BlobPolicy | None = None
) -> list[EncodedEvent]:
    """Validate and encode a batch for `append`; raise a typed error for the first bad event.

    With a `blobs` policy, large top-level data fields become blobs (`agentfold.blobs.split_data`) and
    `max_event_size` counts the event with its references in their place."""
    checked = check_events(events)
    encoded: list[EncodedEvent] = []
    seen_ids: set[str] = set()
    single = len(checked) == 1
    for index, event in enumerate(checked):
        event_type = check_event_type(event.type)
        data = check_json_object(event.data, f"events[{index}].data")
        metadata = event.metadata
        if metadata is not None:
            check_json_object(metadata, f"events[{index}].metadata")
            if BLOBS_KEY in metadata:
                raise InvalidEventData(
                    f"events[{index}].metadata: the key {BLOBS_KEY!r} is agentfold's own (it lists an event's blobs)",
                    f"events[{index}].metadata.{BLOBS_KEY}",
                )
        event_id = check_event_id(event.id, f"events[{index}].id")
        if not single:
            if event_id in seen_ids:
                raise InvalidInput(f"events[{index}] repeats event id {event_id} within one append")
            seen_ids.add(event_id)
        try:
            data_bytes = _encoder.encode(data)
            metadata_bytes = _encoder.encode(metadata) if metadata else b"{}"
        except (UnicodeEncodeError, ValueError, OverflowError):
            check_json_value(data, f"events[{index}].data")  # names what the encoder refused
            if metadata:
                check_json_value(metadata, f"events[{index}].metadata")
            raise
        split = None if blobs is None else split_data(data, data_bytes, blobs, event_type, f"events[{index}]")
        if split is not None:
            data_bytes, fields, kept = split
            metadata_bytes = marked_metadata(metadata, fields)
        size = len(data_bytes) + len(metadata_bytes) + len(event_type)
        if size > max_event_size:
            raise EventTooLarge(event_type, size, max_event_size)
        if split is None:
            encoded.append(EncodedEvent(event_id, event_type, data_bytes, metadata_bytes))
        else:
            encoded.append(EncodedEvent(event_id, event_type, data_bytes, metadata_bytes, kept))
    return encoded


def encode_json(value: Any) -> bytes:
    """Encode a checked JSON value."""
    return _encoder.encode(value)


def decode_object(raw: bytes | str | memoryview) -> dict[str, Any]:
    """Decode a stored JSON object; data agentfold did not write raises `StoreCorrupted`."""
    try:
        return _object_decoder.decode(raw)
    except (msgspec.DecodeError, TypeError) as error:
        raise StoreCorrupted(f"a stored event does not decode as a JSON object: {error}") from None


# The checks live in agentfold.validation; these names stay importable from here for code written before.
__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "MAX_DEPTH",
    "MAX_NAME_LENGTH",
    "MAX_VERSION",
    "EncodedEvent",
    "check_event_type",
    "check_event_types",
    "check_expected_version",
    "check_json_object",
    "check_name",
    "check_stream_id",
    "decode_object",
    "encode_events",
    "encode_json",
]
