"""How durations read in a table: one way for the command line and the web pages."""


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
