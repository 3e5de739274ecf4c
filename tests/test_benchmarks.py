# SPDX-License-Identifier: GPL-2.0-only
"""The shutdown benchmark's ratio intervals (benchmarks/shutdown.py), on made-up repeats.

The benchmark itself needs 8 GiB and ten minutes; what is tested here is the
arithmetic that decides what it prints: the bootstrap interval and the
"straddles the target" mark.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # its sibling _run
    try:
        spec = importlib.util.spec_from_file_location("bench_shutdown", BENCH / "shutdown.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


SYNC = [0.70, 0.72, 0.69, 0.85, 0.66, 0.90, 0.71]


def test_interval_holds_the_point_ratio_and_is_reproducible(bench: ModuleType) -> None:
    cleaner = [x * 1.05 for x in SYNC]
    ci = bench.interval(cleaner, SYNC)
    assert ci is not None
    point = 100 * statistics.median(cleaner) / statistics.median(SYNC)
    assert ci[0] <= point <= ci[1]
    assert ci[1] - ci[0] > 5, "seven noisy repeats cannot give a narrow interval"
    assert bench.interval(cleaner, SYNC) == ci, "seeded: a re-print gives the same numbers"


def test_interval_narrows_with_repeats(bench: ModuleType) -> None:
    few = bench.interval([x * 1.05 for x in SYNC], SYNC)
    many = bench.interval([x * 1.05 for x in SYNC * 5], SYNC * 5)
    assert few is not None and many is not None
    assert many[1] - many[0] < few[1] - few[0]


def test_no_interval_from_one_repeat(bench: ModuleType) -> None:
    assert bench.interval([0.7], [0.7, 0.8]) is None


def _record(strategy: str, release: list[float]) -> dict[str, Any]:
    def stats(v: list[float]) -> dict[str, float]:
        return {"min": min(v), "median": statistics.median(v), "max": max(v)}

    return {
        "strategy": strategy,
        "size_bytes": 8 << 30,
        "verdict": "charged",
        "expected": "charged",
        "exit_latency_s": stats(release),
        "release_s": stats(release),
        "teardown_cpu_s": statistics.median(release),
        "charged_to_worker_cgroup_s": statistics.median(release),
        "repeats": [{"exit_latency_s": r, "release_s": r, "worker_cgroup_s": r} for r in release],
    }


@pytest.mark.parametrize(
    ("factor", "verdict"),
    [
        (1.00, "ok (interval straddles the target)"),  # noise reaches 110%: not decided
        (1.60, "MISSED"),  # far above: decided
    ],
)
def test_report_marks_a_straddled_target(
    bench: ModuleType, capsys: pytest.CaptureFixture[str], factor: float, verdict: str
) -> None:
    doc = {
        "host": {},
        "hierarchy": "v1",
        "elapsed_s": 1,
        "request": {"thp": False, "repeat": len(SYNC)},
        "records": [_record("sync", SYNC), _record("cleaner", [x * factor for x in SYNC])],
    }
    bench.report(doc)
    row = next(line for line in capsys.readouterr().out.splitlines() if "cleaner release" in line)
    assert row.rstrip().endswith(verdict), row
