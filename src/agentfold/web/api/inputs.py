"""Reading what a request says: JSON bodies into typed structs and query parameters, each refusal naming the field."""

from __future__ import annotations

import re
from typing import Final, TypeVar

import msgspec
from starlette.requests import Request

from agentfold.errors import AgentfoldError, InvalidInput
from agentfold.events import ExpectedVersion, StreamState

T = TypeVar("T")
E = TypeVar("E", bound=AgentfoldError)

_PATH_IN_MESSAGE: Final = re.compile(r" - at `\$(.*)`$")
_MISSING_FIELD: Final = re.compile(r"Object missing required field `([^`]*)`")
_UNKNOWN_FIELD: Final = re.compile(r"Object contains unknown field `([^`]*)`")


def naming(error: E, field: str) -> E:
    """`error`, marked with the request field it is about (the problem response's `field`)."""
    error.api_field = field  # type: ignore[attr-defined]
    return error


async def json_body(request: Request, kind: type[T]) -> T:
    """The request's JSON body as `kind`; `InvalidInput` naming the field that does not fit."""
    return decode_body(await request.body(), kind)


def decode_body(body: bytes, kind: type[T]) -> T:
    """A JSON request body as `kind`; `InvalidInput` naming the field that does not fit."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as error:
        message = str(error)
        match = _PATH_IN_MESSAGE.search(message)
        path = match.group(1).lstrip(".") if match else ""
        named = _MISSING_FIELD.match(message) or _UNKNOWN_FIELD.match(message)
        if named:
            path = f"{path}.{named.group(1)}" if path else named.group(1)
        raise naming(InvalidInput(f"the request body does not fit: {message}"), path or "body") from None
    except msgspec.DecodeError as error:
        raise naming(InvalidInput(f"the request body is not JSON: {error}"), "body") from None


def expected_version(value: str | int) -> ExpectedVersion:
    """``any``, ``no_stream``, ``stream_exists`` or a version number, as `append` takes it."""
    if isinstance(value, str):
        try:
            return StreamState(value)
        except ValueError:
            raise naming(
                InvalidInput(f"expected_version {value!r} is not any, no_stream, stream_exists or a number"),
                "expected_version",
            ) from None
    return value


def int_param(request: Request, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    """A non-negative integer query parameter; `InvalidInput` naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw, 10) if raw.isascii() and raw.strip() == raw else None
    except ValueError:
        value = None
    if value is None:
        raise naming(InvalidInput(f"{name} must be an integer, got {raw!r}"), name)
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise naming(InvalidInput(f"{name} must be >= {minimum}{upper}, got {value}"), name)
    return value


def float_param(request: Request, name: str, default: float, maximum: float) -> float:
    """A number of seconds in [0, maximum]; `InvalidInput` naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise naming(InvalidInput(f"{name} must be a number of seconds, got {raw!r}"), name) from None
    if not 0 <= value <= maximum:
        raise naming(InvalidInput(f"{name} must be between 0 and {maximum:g} seconds, got {raw!r}"), name)
    return value


def types_param(request: Request) -> list[str] | None:
    """The repeated ``type`` parameter: event types to keep, or None for all."""
    types = request.query_params.getlist("type")
    return types or None


def text_param(request: Request, name: str) -> str | None:
    """An optional text query parameter; empty counts as absent."""
    return request.query_params.get(name) or None


def only_params(request: Request, *allowed: str) -> None:
    """`InvalidInput` naming the first query parameter the endpoint does not know (a typo would be ignored)."""
    if not request.scope.get("query_string"):
        return  # most requests have none: no need to parse an empty query
    for name in request.query_params:
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise naming(InvalidInput(f"unknown query parameter {name!r} (this endpoint takes: {known})"), name)
