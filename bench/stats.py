"""Summaries of samples: median and nearest-rank p95/p99 (no interpolation on small samples), max."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    median: float | None
    p95: float | None
    n: int
    p99: float | None = None
    max: float | None = None

    def as_dict(self) -> dict:
        return {"median": self.median, "p95": self.p95, "p99": self.p99, "max": self.max, "n": self.n}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: list[float]) -> Summary:
    if not samples:
        return Summary(None, None, 0)
    return Summary(statistics.median(samples), percentile(samples, 0.95), len(samples),
                   percentile(samples, 0.99), max(samples))


def difference_and_noise(samples: list[float], reference: list[float]) -> tuple[float, float] | None:
    """mean(samples) - mean(reference), and two standard errors of that difference (the noise: a
    difference within it is not distinguishable from none). Per-second CPU samples are the intended
    input; the idle passes make them spiky, which the standard error accounts for."""
    if len(samples) < 2 or len(reference) < 2:
        return None
    delta = statistics.fmean(samples) - statistics.fmean(reference)
    noise = 2 * math.sqrt(statistics.variance(samples) / len(samples) + statistics.variance(reference) / len(reference))
    return delta, noise
