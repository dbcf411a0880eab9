"""How times and durations read: one way for the command line, the web pages and the runs index."""

import time
from datetime import UTC, datetime


def now_us() -> int:
    """The current time in microseconds since the epoch (UTC), the unit events are stamped in."""
    return time.time_ns() // 1000


def iso_time(timestamp_us: int | None) -> str | None:
    """An event time as ISO 8601 in UTC with microseconds, or None."""
    if timestamp_us is None:
        return None
    return datetime.fromtimestamp(timestamp_us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def format_duration(duration_us: int | None) -> str:
    """A duration for a table, in the largest units that keep it short: 850 µs, 12 ms, 3.4 s, 2 m 05 s, 1 h 02 m."""
    if duration_us is None:
        return ""
    if duration_us < 1000:
        return f"{duration_us} µs"
    if duration_us < 1_000_000:
        return f"{duration_us / 1000:.0f} ms"
    seconds = duration_us / 1_000_000
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} m {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} m"
    return f"{whole // 86400} d {whole % 86400 // 3600:02d} h"
