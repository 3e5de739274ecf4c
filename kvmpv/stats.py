# SPDX-License-Identifier: GPL-2.0-only
"""Summary statistics of measurements: the one median every report uses.

Pure functions on numbers.  "Median" here is always ``statistics.median``:
for an even count, the mean of the two middle values -- so a table and a
results file summarising the same cycles print the same figure.  Values that
are not numbers (``None`` for "not measured", strings, booleans) are left
out rather than counted as zero.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any, Optional


def numbers(values: Iterable[Any]) -> list[float]:
    """The measured values among ``values`` (no None, no bool, no str)."""
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def median(values: Iterable[Any]) -> Optional[float]:
    """Median of the measured values; None when there is none."""
    got = numbers(values)
    return statistics.median(got) if got else None


def spread(values: Iterable[Any]) -> Optional[dict[str, float]]:
    """``{"min", "median", "max"}`` of the measured values (None when there is none)."""
    got = numbers(values)
    if not got:
        return None
    return {"min": min(got), "median": statistics.median(got), "max": max(got)}


def median_of(summary: Any) -> Optional[float]:
    """The ``"median"`` of a ``spread()`` dict as it appears in a results file."""
    if isinstance(summary, Mapping):
        value = summary.get("median")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


__all__ = ["median", "median_of", "numbers", "spread"]
