"""The checks every public entry point applies to its arguments, written once: bad input is refused with a typed
error from `agentfold.errors` naming what was wrong, before any I/O, and is never silently changed.

JSON is checked by exact type: only `dict` with `str` keys, `list`, `str`, `int`, finite `float`, `bool` and `None`
are JSON here. A subclass of one of them (an `OrderedDict`, a `str` enum, a `defaultdict`) is refused, as are
tuples, sets and every other object, so nothing is stored differently from what the caller handed over.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any, Final

from agentfold.errors import (
    InvalidEventData,
    InvalidEventType,
    InvalidExpectedVersion,
    InvalidInput,
    InvalidStreamId,
)
from agentfold.events import ExpectedVersion, NewEvent, StreamState

MAX_NAME_LENGTH: Final = 200
"""Stream ids, event types and subscriber names are 1 to this many printable characters."""
MAX_DEPTH: Final = 100
"""How deeply JSON objects and lists may nest."""
MAX_VERSION: Final = 2**62
"""No version or position a store can hold is above this."""
MAX_INT_BITS: Final = 13_300
"""JSON integers up to about 4000 digits: Python converts no longer ones to text."""


def check_text(
    value: object, what: str, error: type[InvalidInput] = InvalidInput, max_length: int = MAX_NAME_LENGTH
) -> str:
    """Return `value` if it is a `str` of 1 to `max_length` printable characters (valid UTF-8, no NUL, no control
    or format characters), else raise `error` calling it `what`."""
    if type(value) is not str:
        if isinstance(value, str):
            raise error(f"{what} must be a plain str, got the str subclass {type(value).__name__}")
        raise error(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise error(f"{what} is empty")
    if len(value) > max_length:
        raise error(f"{what} {value[:40]!r}... is {len(value)} characters long; the limit is {max_length}")
    if not value.isprintable():  # NUL, newlines, bidi controls and lone surrogates are not printable
        raise error(f"{what} {value[:60]!r} holds non-printable characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise error(f"{what} {value[:60]!r} is not valid UTF-8 text") from None
    return value


def check_name(value: object, what: str) -> str:
    """Return `value` if it follows the stream-id rules, else raise `InvalidInput` calling it `what`."""
    return check_text(value, what)


def check_required_name(value: object, what: str = "subscriber name") -> str:
    """Like `check_name`, saying that the name is required when it is None."""
    if value is None:
        raise InvalidInput(f"a {what} is required")
    return check_text(value, what)


def check_optional_name(value: object, what: str) -> str | None:
    """None, or a name following the stream-id rules."""
    return None if value is None else check_text(value, what)


def check_stream_id(stream_id: object) -> str:
    """Return `stream_id` if it is 1 to 200 printable characters, else raise `InvalidStreamId`."""
    return check_text(stream_id, "stream id", InvalidStreamId)


def check_event_type(event_type: object) -> str:
    """Return `event_type` if it is 1 to 200 printable characters, else raise `InvalidEventType`."""
    return check_text(event_type, "event type", InvalidEventType)


def check_event_types(types: object) -> tuple[str, ...] | None:
    """Return a type filter as a tuple of checked event types (None: no filter); a bare str is refused."""
    if types is None:
        return None
    if isinstance(types, str | bytes) or not isinstance(types, Sequence | set | frozenset):
        raise InvalidInput(f"types must be a list of event types, got {type(types).__name__}")
    return tuple(check_event_type(event_type) for event_type in types)


def check_stream_prefix(prefix: object) -> str | None:
    """None for no prefix (None or ""), else the prefix checked as a stream id."""
    if prefix is None or (type(prefix) is str and prefix == ""):
        return None
    return check_stream_id(prefix)


def check_integer(
    value: object, what: str, minimum: int = 0, maximum: int = MAX_VERSION, error: type[InvalidInput] = InvalidInput
) -> int:
    """Return `value` if it is an `int` (not a bool) in [`minimum`, `maximum`], else raise `error` naming `what`."""
    if type(value) is not int:
        raise error(f"{what} must be an int, got {type(value).__name__} {_short(value)}")
    if value < minimum:
        raise error(f"{what} must be >= {minimum}, got {_short(value)}")
    if value > maximum:
        raise error(f"{what} {_short(value)} is above {maximum}, the largest it may be")
    return value


def check_counter(value: object, what: str) -> int:
    """A version or a global position: an int in [0, 2**62]."""
    return check_integer(value, what, 0, MAX_VERSION)


def check_limit(value: object, what: str = "limit") -> int | None:
    """None (no limit) or an int in [0, 2**62]."""
    if value is None:
        return None
    return check_integer(value, what, 0, MAX_VERSION)


def check_seconds(value: object, what: str, minimum: float = 0.0, maximum: float = 10**9) -> float:
    """Return `value` as a float if it is a finite int or float (not a bool) in [`minimum`, `maximum`]."""
    if type(value) is not int and type(value) is not float:
        raise InvalidInput(f"{what} must be a number of seconds, got {type(value).__name__} {_short(value)}")
    if not minimum <= value <= maximum:  # also refuses NaN
        raise InvalidInput(f"{what} must be a finite number of seconds in [{minimum}, {maximum}], got {_short(value)}")
    return float(value)


def check_callable(value: object, what: str) -> Any:
    """Return `value` if it can be called, else raise `InvalidInput`."""
    if not callable(value):
        raise InvalidInput(f"{what} must be a function, got {type(value).__name__}")
    return value


def check_expected_version(expected_version: object) -> ExpectedVersion:
    """Return `expected_version` if it is a `StreamState` or an int in [0, 2**62], else raise."""
    if isinstance(expected_version, StreamState):
        return expected_version
    if type(expected_version) is not int:
        raise InvalidExpectedVersion(
            f"expected_version must be ANY, NO_STREAM, STREAM_EXISTS or an int, got {type(expected_version).__name__}"
        )
    if not 0 <= expected_version <= MAX_VERSION:
        raise InvalidExpectedVersion(f"expected_version {_short(expected_version)} is out of range [0, {MAX_VERSION}]")
    return expected_version


def check_events(events: object) -> list[NewEvent]:
    """Return `events` as a list if it is a non-empty list or tuple of `NewEvent`s with distinct ids."""
    if type(events) is not list:
        if type(events) is not tuple:
            raise InvalidInput(f"events must be a list of NewEvent, got {type(events).__name__}")
        events = list(events)
    if not events:
        raise InvalidInput("events is empty: an append needs at least one event")
    for index, event in enumerate(events):
        if not isinstance(event, NewEvent):
            raise InvalidInput(f"events[{index}] must be a NewEvent, got {type(event).__name__}")
    return events


def check_event_id(event_id: object, where: str) -> str:
    """The canonical text of an event id (a `uuid.UUID`), else `InvalidInput`."""
    if type(event_id) is uuid.UUID:
        return str(event_id)
    if isinstance(event_id, uuid.UUID):
        return str(uuid.UUID(int=event_id.int))  # a subclass's own __str__ is not trusted
    raise InvalidInput(f"{where} must be a UUID, got {type(event_id).__name__}")


def check_json_object(value: object, path: str) -> dict[str, Any]:
    """Return `value` if it is a JSON object (a plain `dict`) of JSON values, else raise `InvalidEventData` naming
    the path of the first offending value."""
    if type(value) is not dict:
        kind = "the dict subclass " + type(value).__name__ if isinstance(value, dict) else type(value).__name__
        raise InvalidEventData(f"{path} must be a plain dict (a JSON object), got {kind}", path)
    if not _is_json(value, 0):
        _check_json(value, path, 0, set())  # the slow walk names the offending path
    return value


def check_json_value(value: object, path: str) -> Any:
    """Return `value` if it is a JSON value (see the module's docstring), else raise `InvalidEventData`. The full
    walk: it also checks that every string is valid UTF-8."""
    _check_json(value, path, 0, set())
    return value


def _is_json(value: dict[Any, Any] | list[Any], depth: int) -> bool:
    """The fast check: `value` is exactly a dict or a list. No paths, no cycle set (a cycle fails the depth limit),
    no UTF-8 check (the encoder refuses surrogates, and the caller then runs the slow walk for the path)."""
    if depth >= MAX_DEPTH:
        return False
    items: Any
    if type(value) is dict:
        for key in value:
            if type(key) is not str:
                return False
        items = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float:
            if item - item != 0.0:  # NaN and +-Infinity
                return False
            continue
        if (kind is dict or kind is list) and _is_json(item, depth + 1):
            continue
        return False
    return True


def _check_json(value: object, path: str, depth: int, on_path: set[int]) -> None:
    if value is None or value is True or value is False:
        return
    kind = type(value)
    if kind is str:
        try:
            value.encode("utf-8")  # type: ignore[attr-defined]
        except UnicodeEncodeError:
            raise InvalidEventData(f"{path} is a string that is not valid UTF-8", path) from None
        return
    if kind is int:
        if value.bit_length() > MAX_INT_BITS:  # type: ignore[attr-defined]
            raise InvalidEventData(f"{path} is an integer of more than 4000 digits; JSON text cannot hold it", path)
        return
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidEventData(f"{path} is {value}; JSON has no NaN or Infinity", path)
        return
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            raise InvalidEventData(f"{path} is nested deeper than {MAX_DEPTH} levels", path)
        marker = id(value)
        if marker in on_path:
            raise InvalidEventData(f"{path} refers back to itself (a cycle)", path)
        on_path.add(marker)
        if kind is dict:
            for key, item in value.items():  # type: ignore[attr-defined]
                if type(key) is not str:
                    raise InvalidEventData(f"{path} has a key {_short(key)} that is not a str", path)
                _check_json(key, f"{path} key {key!r}", depth + 1, on_path)
                _check_json(item, f"{path}.{key}", depth + 1, on_path)
        else:
            for index, item in enumerate(value):  # type: ignore[arg-type]
                _check_json(item, f"{path}[{index}]", depth + 1, on_path)
        on_path.discard(marker)
        return
    if isinstance(value, dict | list | str | int | float):
        raise InvalidEventData(
            f"{path} is a {kind.__name__}, a subclass of a JSON type; pass the plain type so it is stored as given",
            path,
        )
    raise InvalidEventData(f"{path} is a {kind.__name__}, which is not JSON", path)


def describe(value: object) -> str:
    """`repr(value)` cut to 60 characters for an error message; never fails, whatever the value (an int too long
    to turn into text, an object whose repr raises)."""
    return _short(value)


def _short(value: object) -> str:
    if type(value) is int:
        text = str(value) if value.bit_length() < 200 else f"an int of {value.bit_length()} bits"
        return text
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__: the type name says enough
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "MAX_DEPTH",
    "MAX_NAME_LENGTH",
    "MAX_VERSION",
    "check_callable",
    "check_counter",
    "check_event_id",
    "check_event_type",
    "check_event_types",
    "check_events",
    "check_expected_version",
    "check_integer",
    "check_json_object",
    "check_json_value",
    "check_limit",
    "check_name",
    "check_optional_name",
    "check_required_name",
    "check_seconds",
    "check_stream_id",
    "check_stream_prefix",
    "check_text",
    "describe",
]
