"""The store users hold: the event log (`agentfold.log.EventLog`) with the entry points of the features built on it.

`subscribe`, `consumer_group` and `projector` construct those features; the features themselves use only the log's
public methods, so the arrows between the modules point one way: core, then the log, then the features, then the
store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentfold.encoding import check_event_types
from agentfold.errors import InvalidInput
from agentfold.groups import ConsumerGroupMember, GroupSettings, Handler
from agentfold.log import (
    DEFAULT_PAGE_SIZE,
    EventLog,
    RecordDecoder,
    check_counter,
    check_limit,
    check_prefix,
    check_required_name,
)
from agentfold.readmodel import Projector, ReadModelUpdate
from agentfold.subscription import Subscription, check_subscription_name

__all__ = ["DEFAULT_PAGE_SIZE", "EventLog", "EventStore", "RecordDecoder"]


class EventStore(EventLog):
    """An append-only log of events, grouped into streams, in one global order (see `EventLog` for what is
    guaranteed), with subscriptions, consumer groups and read-model projectors over it."""

    def subscribe(
        self,
        after_position: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        name: str | None = None,
        page_size: int | None = None,
    ) -> Subscription:
        """Events after `after_position` (history, then live, with no gap or repeat at the switch), in order.

        With `name`, resume after the position last acknowledged under that name (`await subscription.ack()`).
        Use as ``async with store.subscribe(...) as subscription: async for event in subscription: ...``.
        """
        self._check_open()
        return Subscription(
            self,
            check_counter(after_position, "after_position"),
            check_event_types(types),
            check_prefix(stream_prefix),
            check_subscription_name(name),
            check_limit(page_size) or self.page_size,
        )

    def consumer_group(
        self, name: str, handler: Handler, member_id: str | None = None, **settings: Any
    ) -> ConsumerGroupMember:
        """Join the consumer group `name`: `handler` gets this member's share of the events, at least once,
        each stream's events in order. Use as ``async with store.consumer_group("mailer", handle): ...``.
        `settings` are those of `GroupSettings` (partitions, lease_seconds, max_attempts, types, ...)."""
        self._check_open()
        if not callable(handler):
            raise InvalidInput(f"a consumer group handler must be an async function, got {type(handler).__name__}")
        if member_id is not None:
            check_required_name(member_id, "member id")
        try:
            group_settings = GroupSettings(name, **settings)
        except TypeError as error:  # an unknown setting
            raise InvalidInput(f"consumer group {name!r}: {error}") from None
        return ConsumerGroupMember(self, group_settings, handler, member_id)

    def projector(
        self,
        name: str,
        update: ReadModelUpdate,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        page_size: int = 500,
    ) -> Projector:
        """Keep a read model up to date from the named subscription `name` (see `agentfold.readmodel`)."""
        self._check_open()
        if not callable(update):
            raise InvalidInput(f"a projector's update must be a function, got {type(update).__name__}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise InvalidInput(f"page_size must be an int >= 1, got {page_size!r}")
        checked_types = check_event_types(types)
        return Projector(self, check_required_name(name), update, checked_types, check_prefix(stream_prefix), page_size)
