"""Custom conflict resolution: a user function that turns concurrent values into one.

A resolver receives the siblings of a multi-value register (the writes nobody had seen when writing, so none of them
replaced the others) and returns the value to use. The fold hands them over in (timestamp, op id) order, so the
result is reproducible anyway; but concurrent writes have no meaningful order, so a good resolver does not depend on
it (take the max, the union, the highest score). `check_resolver` verifies that: same result for every order and on
every call, input left untouched, a JSON result. Use it in tests, e.g. with hypothesis-generated siblings.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from agentfold.errors import InvalidEventData, NondeterministicResolver
from agentfold.shared.types import Sibling, canonical_json
from agentfold.validation import check_json_object

Resolver = Callable[[Sequence[Sibling]], Any]
"""Turns two or more concurrent siblings into one JSON value. Must be pure and ignore the siblings' order."""

MAX_CHECKED_ORDERS: Final = 720


def resolve(resolver: Resolver, siblings: Sequence[Sibling], default: Any = None) -> Any:
    """The value a key with these siblings stands for: `default` for none, the value for one, else the resolver's."""
    if not siblings:
        return default
    if len(siblings) == 1:
        return siblings[0].value
    return resolver(tuple(siblings))


def check_resolver(resolver: Resolver, siblings: Sequence[Sibling], max_orders: int = MAX_CHECKED_ORDERS) -> Any:
    """Return the resolver's result for `siblings` after checking it is deterministic and order independent.

    Calls the resolver on up to `max_orders` orders of the siblings (all of them for up to 6 siblings; else the
    canonical order, its reverse and rotations), twice on the canonical order, and on deep copies. Raises
    `NondeterministicResolver` naming the first two orders that disagree, or saying the input was modified or the
    result is not JSON.
    """
    canonical = sorted(siblings, key=lambda sibling: (sibling.timestamp, sibling.op_id))
    before = [canonical_json(sibling.value) for sibling in canonical]
    reference = _encode_result(resolver, canonical)
    if _encode_result(resolver, canonical) != reference:
        raise NondeterministicResolver("the resolver gave two different results for the same siblings in one order")
    for order in _orders(canonical, max_orders):
        given = [copy.deepcopy(sibling) for sibling in order]
        result = _encode_result(resolver, given)
        if result != reference:
            raise NondeterministicResolver(
                f"the resolver depends on the siblings' order: {_describe(canonical)} gives {reference.decode()}, "
                f"{_describe(order)} gives {result.decode()}"
            )
    if [canonical_json(sibling.value) for sibling in canonical] != before:
        raise NondeterministicResolver("the resolver modified the sibling values it was given")
    return msgspec.json.decode(reference)


def _encode_result(resolver: Resolver, siblings: Sequence[Sibling]) -> bytes:
    result = resolver(tuple(siblings))
    try:
        check_json_object({"result": result}, "resolver")
    except InvalidEventData as error:
        raise NondeterministicResolver(
            f"the resolver returned {result!r}, which is not a JSON value ({error})"
        ) from None
    return canonical_json(result)


def _orders(siblings: list[Sibling], max_orders: int) -> list[list[Sibling]]:
    if len(siblings) <= 6:
        return [list(order) for order in itertools.islice(itertools.permutations(siblings), max_orders)]
    rotations = [siblings[shift:] + siblings[:shift] for shift in range(len(siblings))]
    reversed_rotations = [list(reversed(order)) for order in rotations]
    return (rotations + reversed_rotations)[:max_orders]


def _describe(siblings: Sequence[Sibling]) -> str:
    return "[" + ", ".join(f"{sibling.timestamp}" for sibling in siblings) + "]"
