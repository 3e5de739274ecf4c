# SPDX-License-Identifier: GPL-2.0-only
"""Compare two results files measurement by measurement (``kvmpv compare``).

A time is a regression when NEW/OLD exceeds ``1 + threshold`` *and* the
difference is larger than ``min_abs_s``: teardown times of a few milliseconds
jitter by more than any sensible ratio on a shared machine, so a ratio alone
would cry wolf.  A status (check result, accounting verdict) is a regression
when it leaves a good value (pass, charged).  Metrics present in only one file
are listed, never flagged: a new kernel may expose checks an old one lacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .metrics import GOOD_STATUSES, Metric, flatten

DEFAULT_THRESHOLD = 0.25
DEFAULT_MIN_ABS_S = 0.005


@dataclass(frozen=True)
class Row:
    key: str
    old: Optional[Metric]
    new: Optional[Metric]
    ratio: Optional[float]
    regression: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "old": None if self.old is None else self.old.value,
            "new": None if self.new is None else self.new.value,
            "ratio": self.ratio,
            "regression": self.regression,
            "note": self.note,
            "simulated": bool(
                (self.old is not None and self.old.simulated)
                or (self.new is not None and self.new.simulated)
            ),
        }


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    threshold: float
    min_abs_s: float

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regression]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "min_abs_s": self.min_abs_s,
            "regressions": len(self.regressions),
            "rows": [r.to_dict() for r in self.rows],
        }


def _compare_one(
    key: str, old: Optional[Metric], new: Optional[Metric], threshold: float, min_abs: float
) -> Row:
    if old is None or new is None:
        return Row(key, old, new, None, False, "only in new" if old is None else "only in old")
    if old.better == "status" or isinstance(old.value, str) or isinstance(new.value, str):
        worse = old.value in GOOD_STATUSES and new.value not in GOOD_STATUSES
        return Row(key, old, new, None, worse, f"{old.value} -> {new.value}" if worse else "")
    ov, nv = float(old.value), float(new.value)
    ratio = nv / ov if ov > 0 else None
    slower = nv - ov > min_abs and (ratio is None or ratio > 1.0 + threshold)
    note = f"slower by {nv - ov:.3f} s" if slower else ""
    return Row(key, old, new, ratio, slower, note)


def compare(
    old_doc: dict[str, Any],
    new_doc: dict[str, Any],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_abs_s: float = DEFAULT_MIN_ABS_S,
) -> Comparison:
    old, new = flatten(old_doc), flatten(new_doc)
    keys = list(old) + [k for k in new if k not in old]
    rows = [_compare_one(k, old.get(k), new.get(k), threshold, min_abs_s) for k in keys]
    return Comparison(rows, threshold, min_abs_s)
