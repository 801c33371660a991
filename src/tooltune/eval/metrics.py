"""Rates with honest uncertainty: every figure carries its n and a 95% Wilson score interval.

Wilson rather than the normal approximation because eval sets are small (tens of cases) and rates sit near 0 or 1,
where ``p ± 1.96·sqrt(p(1-p)/n)`` leaves [0, 1] or collapses to zero width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"value": self.value}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Rate:
        return cls(hits=raw["hits"], n=raw["n"], low=raw["low"], high=raw["high"])

    def format(self, percent: bool = True) -> str:
        if not self.n:
            return "–"
        if percent:
            return f"{100 * self.hits / self.n:.1f}% [{100 * self.low:.0f}–{100 * self.high:.0f}] (n={self.n})"
        return f"{self.hits}/{self.n}"


def wilson_interval(hits: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    if not 0 <= hits <= n:
        raise ValueError(f"hits must be in [0, n], got {hits}/{n}")
    p = hits / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact bounds at the edges (floating error would otherwise give -1e-17 or 0.9999999).
    low = 0.0 if hits == 0 else max(0.0, center - half)
    high = 1.0 if hits == n else min(1.0, center + half)
    return low, high


def rate(outcomes: Iterable[bool | None]) -> Rate:
    """A rate over the outcomes that apply (None = the metric does not apply to that case)."""
    applicable = [bool(o) for o in outcomes if o is not None]
    hits = sum(applicable)
    low, high = wilson_interval(hits, len(applicable))
    return Rate(hits=hits, n=len(applicable), low=low, high=high)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
