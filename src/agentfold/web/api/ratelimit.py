"""A token bucket per API token: a steady rate with room for bursts, refused with the wait until the next request."""

from __future__ import annotations

import time
from dataclasses import dataclass

from agentfold.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Per-key token buckets of one process: `take(key)` spends one request or raises `RateLimited`."""

    def __init__(self, rate_per_second: float, burst: int) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs rate > 0 and burst >= 1, got {rate_per_second} and {burst}")
        self.rate = rate_per_second
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> None:
        """Spend one request of `key`'s bucket; `RateLimited` with the seconds until one is available."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self.rate
            raise RateLimited(f"more than {self.rate:g} requests per second (burst {self.burst}) for this token", wait)
        bucket.tokens -= 1.0
