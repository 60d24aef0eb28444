"""Summaries of samples: median and nearest-rank p95 (no interpolation on small samples)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    median: float | None
    p95: float | None
    n: int

    def as_dict(self) -> dict:
        return {"median": self.median, "p95": self.p95, "n": self.n}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: list[float]) -> Summary:
    if not samples:
        return Summary(None, None, 0)
    return Summary(statistics.median(samples), percentile(samples, 0.95), len(samples))
