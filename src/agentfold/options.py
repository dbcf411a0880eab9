"""Store URLs and their options, declared once per backend with types and ranges.

Each backend lists its options as `Option`s and hands them, with the URL and the keyword options of `connect`, to
`parse_options`. Every backend therefore refuses the same way: an unknown option, a value of the wrong type (a
keyword `None`, a bool, a float where an integer is meant), a value out of range or not among the choices raises
`InvalidURL` naming the option, before any connection is made. `split_url` refuses URLs the standard library cannot
split (an unclosed `[`, a port that is not a number) or that hold a NUL, the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from agentfold.blobs import DEFAULT_BLOB_THRESHOLD, DEFAULT_MAX_BLOB_SIZE, MAX_BLOB_SIZE_LIMIT
from agentfold.encoding import DEFAULT_MAX_EVENT_SIZE
from agentfold.errors import InvalidURL
from agentfold.validation import describe

MAX_INTEGER: Final = 2**62
"""The largest integer option any backend takes (sizes, times, counts), unless an option says less."""

_INTEGER_TEXT: Final = re.compile(r"[+-]?[0-9]{1,30}")
_SECRET: Final = re.compile(r"(://[^:/@]*:)[^@/]*@")

OptionValue = int | float | str | None


def redact(url: str) -> str:
    """`url` with any password replaced by `***`, safe to print or log."""
    return _SECRET.sub(r"\1***@", url)


@dataclass(frozen=True)
class Option:
    """One option a backend accepts in its URL query or as a keyword of `connect`.

    `kind` is `int`, `float` or `str`. Numbers must lie in [`minimum`, `maximum`]; a `str` must be one of `choices`
    (compared without case, returned as declared) when there are any, and match `pattern` when there is one.
    A `default` of None means "not set": the option then does not reach the backend unless given.
    """

    name: str
    kind: type[int] | type[float] | type[str]
    default: OptionValue
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    meaning: str = ""
    """What a valid value is, in words, for the error message (e.g. "1 to 63 letters, digits or underscores")."""

    def parse(self, raw: object, shown_url: str) -> OptionValue:
        """The value of this option given as `raw` (URL text or a keyword's value); raise `InvalidURL` if bad."""
        if self.kind is int:
            value: OptionValue = self._integer(raw, shown_url)
        elif self.kind is float:
            value = self._number(raw, shown_url)
        else:
            value = self._text(raw, shown_url)
        if isinstance(value, int | float):
            low = self.minimum
            high = self.maximum if self.maximum is not None else MAX_INTEGER
            if (low is not None and value < low) or value > high:
                bounds = f">= {_show(low)}" if low is not None else ""
                bounds = f"{bounds} and <= {_show(high)}" if bounds else f"<= {_show(high)}"
                raise self._refuse(raw, shown_url, f"must be {bounds}")
        return value

    def _integer(self, raw: object, shown_url: str) -> int:
        if type(raw) is int:
            return raw
        if type(raw) is str and _INTEGER_TEXT.fullmatch(raw):
            return int(raw)
        raise self._refuse(raw, shown_url, "must be an integer")

    def _number(self, raw: object, shown_url: str) -> float:
        if type(raw) is int or type(raw) is float:
            number = float(raw)
        elif type(raw) is str and len(raw) <= 40:
            try:
                number = float(raw)
            except ValueError:
                raise self._refuse(raw, shown_url, "must be a number") from None
        else:
            raise self._refuse(raw, shown_url, "must be a number")
        if not math.isfinite(number):
            raise self._refuse(raw, shown_url, "must be a finite number")
        return number

    def _text(self, raw: object, shown_url: str) -> str:
        if type(raw) is not str:
            raise self._refuse(raw, shown_url, "must be a str")
        if not raw.isprintable() or len(raw) > 1000:
            raise self._refuse(raw, shown_url, "must be printable text of at most 1000 characters")
        if self.choices:
            for choice in self.choices:
                if raw.lower() == choice.lower():
                    return choice
            raise self._refuse(raw, shown_url, f"must be one of {', '.join(self.choices)}")
        if self.pattern is not None and not self.pattern.fullmatch(raw):
            raise self._refuse(raw, shown_url, f"must be {self.meaning or 'of the form ' + self.pattern.pattern}")
        return raw

    def _refuse(self, raw: object, shown_url: str, rule: str) -> InvalidURL:
        return InvalidURL(f"option {self.name}={describe(raw)} for {shown_url} {rule}")


MAX_EVENT_SIZE: Final = Option("max_event_size", int, DEFAULT_MAX_EVENT_SIZE, minimum=1, maximum=2**31 - 1)
"""The largest encoded event (data, metadata and type, blobs not counted) in bytes: the same option on every
backend."""
BLOB_THRESHOLD: Final = Option("blob_threshold", int, DEFAULT_BLOB_THRESHOLD, minimum=1, maximum=MAX_BLOB_SIZE_LIMIT)
"""A top-level data field whose JSON is at least this many bytes is kept as a blob (`agentfold.blobs`)."""
MAX_BLOB_SIZE: Final = Option("max_blob_size", int, DEFAULT_MAX_BLOB_SIZE, minimum=1, maximum=MAX_BLOB_SIZE_LIMIT)
"""The largest blob (one data field's JSON) in bytes; a larger field is refused with `BlobTooLarge`."""
BLOB_OPTIONS: Final = (BLOB_THRESHOLD, MAX_BLOB_SIZE)


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def split_url(url: object, schemes: Sequence[str]) -> SplitResult:
    """`url` split into its parts, if it is a str with one of `schemes` that the standard library can split and
    whose host, port, user, password and path hold no NUL; else `InvalidURL` saying what is wrong."""
    if type(url) is not str:
        raise InvalidURL(f"a store URL must be a str, got {type(url).__name__}")
    shown = redact(url)
    if "\x00" in url:
        raise InvalidURL(f"the URL {shown!r} holds a NUL character")
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018 - parsing the host (brackets) is the check
    except ValueError as error:
        raise InvalidURL(f"the URL {shown!r} is malformed: {error}") from None
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise InvalidURL(f"the port in {shown!r} is not a number in 0..65535") from None
    if parts.scheme.lower() not in schemes:
        raise InvalidURL(f"{shown!r} is not a {' or '.join(f'{scheme}://' for scheme in schemes)} URL")
    for where, text in (("host or credentials", parts.netloc), ("path", parts.path)):
        decoded = unquote(text, errors="strict") if _decodes(text) else None
        if decoded is None:
            raise InvalidURL(f"the {where} of {shown!r} is not valid UTF-8 once %-decoded")
        if "\x00" in decoded or not decoded.isprintable():
            raise InvalidURL(f"the {where} of {shown!r} holds a NUL or another non-printable character")
    return parts


def _decodes(text: str) -> bool:
    try:
        unquote(text, errors="strict")
    except UnicodeDecodeError:
        return False
    return True


def query_options(url: str) -> dict[str, str]:
    """The query options of a store URL; a repeated option is an error."""
    options: dict[str, str] = {}
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True, strict_parsing=False):
        if key in options:
            raise InvalidURL(f"option {key!r} is given twice in {redact(url)}")
        options[key] = value
    return options


def parse_options(url: str, declared: Sequence[Option], keywords: Mapping[str, Any]) -> dict[str, OptionValue]:
    """Every declared option's value: from `keywords` when given there, else from the URL query, else its default.

    Raises `InvalidURL` naming the option for an unknown option or a bad value.
    """
    shown = repr(redact(url))
    by_name = {option.name: option for option in declared}
    given: dict[str, Any] = {**query_options(url), **keywords}
    unknown = sorted(name for name in given if name not in by_name)
    if unknown:
        raise InvalidURL(
            f"unknown option(s) {', '.join(repr(name) for name in unknown)} for {shown}; "
            f"known options are {', '.join(sorted(by_name))}"
        )
    values: dict[str, OptionValue] = {}
    for option in declared:
        values[option.name] = option.parse(given[option.name], shown) if option.name in given else option.default
    return values


__all__ = [
    "BLOB_OPTIONS",
    "BLOB_THRESHOLD",
    "MAX_BLOB_SIZE",
    "MAX_EVENT_SIZE",
    "MAX_INTEGER",
    "Option",
    "OptionValue",
    "parse_options",
    "query_options",
    "redact",
    "split_url",
]
