# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv.stats: the one median of every report."""

from __future__ import annotations

from kvmpv import stats
from kvmpv.report import tables


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert stats.median([None, "x", True, 5]) == 5.0  # not measured: left out
    assert stats.median([]) is None
    assert stats.spread([3, 1, 2]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert stats.median_of({"median": 0.25}) == 0.25 and stats.median_of(None) is None


def test_reboot_table_prints_the_same_median_as_the_results_file() -> None:
    # Two cycles: an upper median (the old table) would print 0.200, not 0.150.
    cycles = [
        {"mode": "async", "reboot_latency_s": 0.1, "perform_s": 0.3, "overlap_s": 0.2,
         "cleanup_cpu_s": 0.4, "verdict": "charged"},
        {"mode": "async", "reboot_latency_s": 0.2, "perform_s": 0.5, "overlap_s": 0.4,
         "cleanup_cpu_s": 0.6, "verdict": "charged"},
    ]  # fmt: skip
    run = {"backend": "sim", "memory_bytes": 1 << 30, "cycles": cycles}
    text = tables.reboot_table([run])
    assert "0.150" in text and "0.200" not in text.split("\n", 2)[2], text
