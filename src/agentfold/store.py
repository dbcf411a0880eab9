"""The store users hold: the event log (`agentfold.log.EventLog`) with the entry points of the features built on it.

`subscribe`, `consumer_group` and `projector` construct those features; the features themselves use only the log's
public methods, so the arrows between the modules point one way: core, then the log, then the features, then the
store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentfold.errors import InvalidInput
from agentfold.groups import ConsumerGroupMember, GroupSettings, Handler
from agentfold.log import DEFAULT_PAGE_SIZE, EventLog, RecordDecoder
from agentfold.readmodel import Projector, ReadModelUpdate
from agentfold.subscription import Subscription
from agentfold.validation import (
    check_callable,
    check_counter,
    check_event_types,
    check_integer,
    check_limit,
    check_optional_name,
    check_required_name,
    check_stream_prefix,
    describe,
)

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
            check_stream_prefix(stream_prefix),
            check_optional_name(name, "subscription name"),
            check_limit(page_size, "page_size") or self.page_size,
        )

    def consumer_group(
        self, name: str, handler: Handler, member_id: str | None = None, **settings: Any
    ) -> ConsumerGroupMember:
        """Join the consumer group `name`: `handler` gets this member's share of the events, at least once,
        each stream's events in order. Use as ``async with store.consumer_group("mailer", handle): ...``.
        `settings` are those of `GroupSettings` (partitions, lease_seconds, max_attempts, types, ...)."""
        self._check_open()
        check_callable(handler, "a consumer group handler")
        check_optional_name(member_id, "member id")
        try:
            group_settings = GroupSettings(name, **settings)
        except TypeError as error:  # an unknown setting
            raise InvalidInput(f"consumer group {describe(name)}: {error}") from None
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
        check_callable(update, "a projector's update")
        check_integer(page_size, "page_size", minimum=1)
        checked_types = check_event_types(types)
        return Projector(
            self, check_required_name(name), update, checked_types, check_stream_prefix(stream_prefix), page_size
        )
