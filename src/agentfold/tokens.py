"""Credentials for the HTTP API: tokens that keep each agent in its own streams.

A token reads ``aft_<id>_<secret>``. The store keeps only the SHA-256 of its 256-bit secret, as events of one stream
(`TOKENS_STREAM`), so every `agentfold serve` process on the same store knows the same tokens and revocations.
Checking a token costs one `stream_version` read, shared by the requests that arrive while it waits to begin: the
registry folds the stream once and reads again only the events after the version it folded, so a revocation is
refused from the next request on, on every process. Where the store can check the tokens stream's version in an
append's own transaction (SQLite), an append by a token the registry knows skips that read (`known`): it is written
only if the stream is still at the version folded, which refuses a revocation committed before the append even when
it came after the request.

A scope names streams by globs where ``*`` matches any run of characters and every other character only itself
(case and code point exact: ``agent-a*`` never matches a look-alike spelled with a Cyrillic a, ``agent-a`` never matches
``agent-ab``). Streams whose id starts with `RESERVED_PREFIX` are outside every scope.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from agentfold.errors import InvalidInput, InvalidToken, TokenExpired, TokenRevoked
from agentfold.events import NewEvent, RecordedEvent
from agentfold.store import EventStore
from agentfold.validation import check_name

RESERVED_PREFIX: Final = "$agentfold-"
TOKENS_STREAM: Final = f"{RESERVED_PREFIX}tokens"
TOKEN_CREATED: Final = "TokenCreated"
TOKEN_REVOKED: Final = "TokenRevoked"
WORKFLOW_OPERATIONS: Final = ("start", "signal", "cancel")
"""What a token's ``--workflows`` may allow; reading a run's state or result needs only read access to its stream."""

_TOKEN_PATTERN: Final = re.compile(r"aft_([0-9a-f]{16})_([0-9a-f]{64})")
_TOKEN_NAMESPACE: Final = uuid.UUID("0b6f9f4e-3c2a-4d7e-9a51-7c1e2d3f4a5b")


def now_us() -> int:
    """Microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class StreamGlob:
    """One stream-id pattern: ``*`` matches any run of characters, everything else only itself."""

    pattern: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name(self.pattern, "stream glob")
        parts = (re.escape(part) for part in self.pattern.split("*"))
        object.__setattr__(self, "_regex", re.compile(".*".join(parts), re.DOTALL))

    def matches(self, stream_id: str) -> bool:
        """Whether the whole of `stream_id` fits the pattern."""
        return self._regex.fullmatch(stream_id) is not None

    @property
    def literal_prefix(self) -> str:
        """The part before the first ``*``: every matching stream id starts with it."""
        return self.pattern.split("*", 1)[0]


@dataclass(frozen=True)
class Scope:
    """What a token may touch: streams it may write (and read), streams it may only read, workflow operations."""

    write: tuple[StreamGlob, ...] = ()
    read: tuple[StreamGlob, ...] = ()
    workflows: frozenset[str] = frozenset()

    @classmethod
    def of(cls, write: Iterable[str] = (), read: Iterable[str] = (), workflows: Iterable[str] = ()) -> Scope:
        """A scope from glob strings and operation names; `InvalidInput` naming a bad one."""
        for values, what in ((write, "write"), (read, "read"), (workflows, "workflows")):
            if isinstance(values, str):
                raise InvalidInput(f"{what} must be a list of strings, not a str")
        operations = frozenset(workflows)
        unknown = sorted(operations - set(WORKFLOW_OPERATIONS))
        if unknown:
            raise InvalidInput(
                f"unknown workflow operation {unknown[0]!r}; use some of {', '.join(WORKFLOW_OPERATIONS)}"
            )
        return cls(tuple(StreamGlob(p) for p in write), tuple(StreamGlob(p) for p in read), operations)

    def can_write(self, stream_id: str) -> bool:
        """Whether appends to `stream_id` are allowed."""
        return not stream_id.startswith(RESERVED_PREFIX) and any(glob.matches(stream_id) for glob in self.write)

    def can_read(self, stream_id: str) -> bool:
        """Whether `stream_id` may be read: it matches a read glob or a write glob."""
        return not stream_id.startswith(RESERVED_PREFIX) and any(
            glob.matches(stream_id) for glob in (*self.read, *self.write)
        )

    def read_prefixes(self) -> list[str]:
        """The literal prefixes of the readable globs: every readable stream starts with one of them."""
        return sorted({glob.literal_prefix for glob in (*self.read, *self.write)})

    def to_json(self) -> dict[str, Any]:
        """The scope as JSON lists."""
        return {
            "write": [glob.pattern for glob in self.write],
            "read": [glob.pattern for glob in self.read],
            "workflows": sorted(self.workflows),
        }


@dataclass(frozen=True)
class TokenInfo:
    """A token as the store knows it: never the secret, only its hash."""

    token_id: str
    name: str
    """The agent id every event appended with this token records in its metadata."""
    scope: Scope
    secret_sha256: str
    created_at_us: int
    expires_at_us: int | None = None
    revoked_at_us: int | None = None

    def status(self, at_us: int | None = None) -> str:
        """``active``, ``expired`` or ``revoked`` at `at_us` (default: now)."""
        if self.revoked_at_us is not None:
            return "revoked"
        if self.expires_at_us is not None and (now_us() if at_us is None else at_us) >= self.expires_at_us:
            return "expired"
        return "active"

    def to_json(self) -> dict[str, Any]:
        """Everything but the hash, for listings."""
        return {
            "token_id": self.token_id,
            "name": self.name,
            **self.scope.to_json(),
            "created_at_us": self.created_at_us,
            "expires_at_us": self.expires_at_us,
            "revoked_at_us": self.revoked_at_us,
            "status": self.status(),
        }


@dataclass(frozen=True)
class IssuedToken:
    """A newly created token: `token` is shown once and is not kept anywhere."""

    token: str
    info: TokenInfo


class TokenRegistry:
    """Creates, lists, revokes and checks tokens kept in the store's `TOKENS_STREAM`."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._tokens: dict[str, TokenInfo] = {}
        self._version = 0
        self._reading: asyncio.Lock | None = None
        self._next_read: asyncio.Future[None] | None = None
        self._reads: set[asyncio.Task[None]] = set()

    async def create(
        self,
        name: str,
        write: Iterable[str] = (),
        read: Iterable[str] = (),
        workflows: Iterable[str] = (),
        expires_at_us: int | None = None,
    ) -> IssuedToken:
        """Issue a token for the agent `name`. `InvalidInput` for a bad name, glob, operation or expiry."""
        check_name(name, "token name")
        scope = Scope.of(write, read, workflows)
        if not scope.write and not scope.read:
            raise InvalidInput("a token needs at least one --write or --read glob")
        if expires_at_us is not None and (isinstance(expires_at_us, bool) or not isinstance(expires_at_us, int)):
            raise InvalidInput(f"expires_at_us must be an int, got {type(expires_at_us).__name__}")
        token_id = secrets.token_hex(8)
        secret = secrets.token_hex(32)
        data = {
            "token_id": token_id,
            "name": name,
            "secret_sha256": _hash_secret(secret),
            **scope.to_json(),
            "expires_at_us": expires_at_us,
        }
        event_id = uuid.uuid5(_TOKEN_NAMESPACE, f"created/{token_id}")
        await self.store.append(TOKENS_STREAM, [NewEvent(TOKEN_CREATED, data, id=event_id)])
        await self.refresh()
        return IssuedToken(f"aft_{token_id}_{secret}", self._tokens[token_id])

    async def all(self) -> list[TokenInfo]:
        """Every token ever created, oldest first, revoked and expired ones included."""
        await self.refresh()
        return sorted(self._tokens.values(), key=lambda info: info.created_at_us)

    async def revoke(self, token_id_or_name: str) -> list[TokenInfo]:
        """Revoke the token with this id, or every active token with this name; return what was revoked.

        `InvalidInput` if nothing matches.
        """
        await self.refresh()
        matching = [
            info
            for info in self._tokens.values()
            if info.revoked_at_us is None and token_id_or_name in (info.token_id, info.name)
        ]
        if not matching:
            raise InvalidInput(f"no active token has the id or name {token_id_or_name!r}")
        events = [
            NewEvent(
                TOKEN_REVOKED, {"token_id": info.token_id}, id=uuid.uuid5(_TOKEN_NAMESPACE, f"revoked/{info.token_id}")
            )
            for info in matching
        ]
        await self.store.append(TOKENS_STREAM, events)
        await self.refresh()
        return [self._tokens[info.token_id] for info in matching]

    async def authenticate(self, token: str | None) -> TokenInfo:
        """The token's record if it is well formed, known, unexpired and unrevoked, as of the store's latest write.

        Raises `InvalidToken` (missing, malformed, unknown or wrong secret), `TokenExpired` or `TokenRevoked`.
        """
        if not token:
            raise InvalidToken("no token: send 'Authorization: Bearer aft_...'")
        match = _TOKEN_PATTERN.fullmatch(token)
        if match is None:
            raise InvalidToken("the token is malformed (expected aft_<16 hex>_<64 hex>)")
        token_id, secret = match.groups()
        await self.refresh()
        info = self._tokens.get(token_id)
        if info is None or not hmac.compare_digest(info.secret_sha256, _hash_secret(secret)):
            raise InvalidToken("the token is not known to this store")
        return self._check_status(info)

    def known(self, token: str | None) -> tuple[TokenInfo, int] | None:
        """The token's record and the version of `TOKENS_STREAM` this registry folded, when the token is well formed,
        known, unexpired and unrevoked as far as that version tells; None otherwise (`authenticate` then reads and
        says why). Reads nothing: the caller acts only where the store checks, in the same transaction, that the
        tokens stream is still at that version (`EventLog.append_watching`), and calls `recheck` before any other
        answer."""
        if not token:
            return None
        match = _TOKEN_PATTERN.fullmatch(token)
        if match is None:
            return None
        token_id, secret = match.groups()
        info = self._tokens.get(token_id)
        if info is None or info.status() != "active":
            return None
        if not hmac.compare_digest(info.secret_sha256, _hash_secret(secret)):
            return None
        return info, self._version

    async def recheck(self, info: TokenInfo) -> TokenInfo:
        """`info` again as of the store's latest write: `TokenRevoked` or `TokenExpired` once it no longer holds."""
        await self.refresh()
        return self._check_status(self._tokens.get(info.token_id, info))

    def _check_status(self, info: TokenInfo) -> TokenInfo:
        status = info.status()
        if status == "revoked":
            raise TokenRevoked(f"token {info.token_id} ({info.name}) was revoked")
        if status == "expired":
            raise TokenExpired(f"token {info.token_id} ({info.name}) has expired")
        return info

    async def refresh(self) -> None:
        """Fold the token events written up to now (one `stream_version` read when there are none).

        Concurrent callers share reads: a caller joins the next read not yet begun, or starts one, and never takes
        the answer of a read that began before it called. So under load there is about one read per read's
        duration, and every caller still sees every revocation written before it called.
        """
        if self._next_read is None:
            self._next_read = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._read_when_free(self._next_read))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)
        await asyncio.shield(self._next_read)

    async def _read_when_free(self, waiting: asyncio.Future[None]) -> None:
        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:
            self._next_read = None  # callers from now on need a read that begins after this one
            try:
                await self._read_new_events()
            except asyncio.CancelledError:
                waiting.cancel()
                raise
            except Exception as error:
                waiting.set_exception(error)
                waiting.exception()  # retrieved here too, in case every caller has gone
            else:
                waiting.set_result(None)

    async def _read_new_events(self) -> None:
        version = await self.store.stream_version(TOKENS_STREAM)
        if version <= self._version:
            return
        async for event in self.store.read_stream(TOKENS_STREAM, after_version=self._version):
            self._apply(event)
            self._version = event.version

    def _apply(self, event: RecordedEvent) -> None:
        data = event.data
        if event.type == TOKEN_CREATED:
            expires = data.get("expires_at_us")
            self._tokens[data["token_id"]] = TokenInfo(
                token_id=data["token_id"],
                name=data["name"],
                scope=Scope.of(data.get("write", ()), data.get("read", ()), data.get("workflows", ())),
                secret_sha256=data["secret_sha256"],
                created_at_us=event.recorded_at_us,
                expires_at_us=None if expires is None else int(expires),
            )
        elif event.type == TOKEN_REVOKED:
            info = self._tokens.get(data["token_id"])
            if info is not None and info.revoked_at_us is None:
                self._tokens[info.token_id] = TokenInfo(
                    info.token_id,
                    info.name,
                    info.scope,
                    info.secret_sha256,
                    info.created_at_us,
                    info.expires_at_us,
                    event.recorded_at_us,
                )
