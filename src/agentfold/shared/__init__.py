"""Shared state written by many agents at once, merged without conflicts at read time.

- `hlc`: hybrid logical clocks (timestamps that respect causality under clock skew).
- `types`: the replicated types (LWW register and map, PN-counter, add-wins OR-set, multi-value register).
- `ops` and `state`: operations as events, and the deterministic fold of them into a `SharedState`.
- `resolution`: custom per-key conflict resolvers and `check_resolver`.
- `stream`: `SharedStream`, the I/O edge over any `EventStore`.
"""

from agentfold.shared.hlc import HybridLogicalClock, Timestamp, WallClock, system_wall_clock_ms
from agentfold.shared.ops import (
    CounterAdd,
    MapDelete,
    MapPut,
    MultiValueWrite,
    Operation,
    RegisterAssign,
    SetAdd,
    SetRemove,
    SharedKind,
    decode_operation,
)
from agentfold.shared.resolution import Resolver, check_resolver, resolve
from agentfold.shared.state import Schema, SharedState, fold_events, fold_operations
from agentfold.shared.stream import SharedStream, WriteReceipt
from agentfold.shared.types import (
    CounterEntry,
    LWWEntry,
    LWWMap,
    LWWRegister,
    MVRegister,
    ORSet,
    PNCounter,
    Replicated,
    Sibling,
    canonical_json,
)

__all__ = [
    "CounterAdd",
    "CounterEntry",
    "HybridLogicalClock",
    "LWWEntry",
    "LWWMap",
    "LWWRegister",
    "MVRegister",
    "MapDelete",
    "MapPut",
    "MultiValueWrite",
    "ORSet",
    "Operation",
    "PNCounter",
    "RegisterAssign",
    "Replicated",
    "Resolver",
    "Schema",
    "SetAdd",
    "SetRemove",
    "SharedKind",
    "SharedState",
    "SharedStream",
    "Sibling",
    "Timestamp",
    "WallClock",
    "WriteReceipt",
    "canonical_json",
    "check_resolver",
    "decode_operation",
    "fold_events",
    "fold_operations",
    "resolve",
    "system_wall_clock_ms",
]
