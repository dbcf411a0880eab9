"""The one serialisation hook of the runtime: what a workflow may pass, return, and receive as a signal.

Workflow inputs, step results, signal payloads and workflow results are stored as JSON values inside events. The
default `Serializer` accepts JSON values (None, bool, int, finite float, str, list/tuple, dict with str keys) and
typed models: dataclasses and msgspec Structs (through msgspec), and pydantic models (anything with
``model_dump``/``model_validate``). Anything else raises `NotSerializable` naming the path, at the call that handed it
over, before anything is written.

Decoding uses the type the code declares (a parameter annotation, a step function's return annotation, or
``wait_for(..., as_type=...)``); without one the plain JSON value comes back. Step results go through the same
encode/decode round trip on the first run as on a replay, so the workflow sees the same value either way.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Protocol

import msgspec

from agentfold.errors import NotSerializable
from agentfold.validation import describe

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


class Serializer(Protocol):
    """Turns values into JSON values and back. Pass your own to `Runtime(serializer=...)`."""

    def to_json(self, value: Any, path: str) -> JsonValue:
        """A JSON value for `value`, or `NotSerializable` naming `path`."""
        ...

    def from_json(self, value: JsonValue, annotation: Any) -> Any:
        """`value` as the declared type `annotation` (`typing.Any` or None: the JSON value itself)."""
        ...


class DefaultSerializer:
    """JSON values, dataclasses, msgspec Structs and pydantic models; nothing else."""

    max_depth = 100

    def to_json(self, value: Any, path: str) -> JsonValue:
        return self._convert(value, path, 0)

    def _convert(self, value: Any, path: str, depth: int) -> JsonValue:
        if value is None or value is True or value is False:
            return value
        kind = type(value)
        if kind is str or kind is int:
            return value  # type: ignore[no-any-return]
        if kind is float:
            if not math.isfinite(value):
                raise NotSerializable(f"{path} is {value}; JSON has no NaN or Infinity", path)
            return value  # type: ignore[no-any-return]
        if depth >= self.max_depth:
            raise NotSerializable(f"{path} is nested deeper than {self.max_depth} levels", path)
        if kind is list or kind is tuple:
            return [self._convert(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
        if kind is dict:
            converted: dict[str, JsonValue] = {}
            for key, item in value.items():
                if type(key) is not str:
                    raise NotSerializable(f"{path} has a key {describe(key)} that is not a str", path)
                converted[key] = self._convert(item, f"{path}.{key}", depth + 1)
            return converted
        if isinstance(value, msgspec.Struct) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            try:
                builtins = msgspec.to_builtins(value)
            except (TypeError, msgspec.EncodeError) as error:
                raise NotSerializable(f"{path} ({kind.__name__}) cannot be encoded: {error}", path) from None
            return self._convert(builtins, path, depth)
        dump = getattr(value, "model_dump", None)
        if callable(dump) and hasattr(kind, "model_validate"):
            return self._convert(dump(mode="json"), path, depth)
        raise NotSerializable(
            f"{path} is a {kind.__name__}, which is not a JSON value, dataclass, msgspec Struct or pydantic model",
            path,
        )

    def from_json(self, value: JsonValue, annotation: Any) -> Any:
        if annotation is None or annotation is Any or annotation is typing.Any or annotation is object:
            return value
        validate = getattr(annotation, "model_validate", None)
        if isinstance(annotation, type) and callable(validate):
            return validate(value)
        try:
            return msgspec.convert(value, annotation)
        except msgspec.ValidationError as error:
            raise NotSerializable(f"the JSON value does not match the declared type {annotation!r}: {error}") from None
        except TypeError:
            # An annotation msgspec cannot build (a Protocol, an unresolved forward reference): the code gets the
            # JSON value, exactly as it would without an annotation.
            return value


def declared_types(function: Any) -> dict[str, Any]:
    """The resolved annotations of `function` (empty when they cannot be resolved)."""
    try:
        return typing.get_type_hints(function)
    except Exception:
        return {}
