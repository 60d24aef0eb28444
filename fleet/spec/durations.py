"""Durations as written in fleet.yaml: numbers of seconds or strings like 2.5s, 20m, 1h30m."""

from __future__ import annotations

import functools
import math
import re

MAX_SECONDS = 365 * 86400.0  # the schema's bound for numbers too
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_EXPECTED = "expected a duration such as 2.5s, 90s, 20m, 1h or a number of seconds"
_WHOLE = re.compile(r"^\s*(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d)\s*)+$")


def parse_duration(value: object) -> float:
    """Seconds for a duration value; raises ValueError with the accepted forms."""
    if isinstance(value, (str, int, float)):
        return _parse_scalar(value)
    raise ValueError(f"{_EXPECTED}, found {value!r}")


# A manifest repeats a few values in every profile (13 durations each), so their answers are kept. typed: the
# answer for 1 must not be given for True.
@functools.lru_cache(maxsize=256, typed=True)
def _parse_scalar(value: str | int | float) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, found boolean {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, found {value!r}")
        if value < 0:
            raise ValueError(f"expected a non-negative duration, found {value!r}")
        return float(value)
    if isinstance(value, str) and _WHOLE.match(value):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(value))
        if seconds > MAX_SECONDS:
            raise ValueError(f"expected a duration of at most 365d, found {value!r}")
        return seconds
    raise ValueError(f"{_EXPECTED}, found {value!r}")


def format_duration(seconds: float) -> str:
    """Short human form: 2.5s, 90s -> 1m30s, 3600 -> 1h."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 60:
        text = f"{seconds:.1f}".rstrip("0").rstrip(".")
        return f"{text}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{u}" for n, u in parts if n) or "0s"
