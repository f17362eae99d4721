"""The one percentile definition of the benchmarks, named in every report they write."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

PERCENTILE_DEFINITION = (
    "linear interpolation between the closest ranks (numpy.percentile's default 'linear', "
    "Hyndman & Fan type 7): p50 is the median, p100 the maximum"
)


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of `values`, by PERCENTILE_DEFINITION; NaN when
    there are none (a report shows it as "-")."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q / 100 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 90, 99)) -> dict[float, float]:
    """Several percentiles of the same values, by q."""
    ordered = sorted(values)
    return {q: percentile(ordered, q) for q in qs}


def fmt(value: float, digits: int = 1) -> str:
    """A number for a report table; NaN (no samples) as "-"."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}"
