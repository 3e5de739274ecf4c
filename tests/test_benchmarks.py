# SPDX-License-Identifier: GPL-2.0-only
"""The shutdown benchmark's ratio intervals (benchmarks/shutdown.py), on made-up repeats.

The benchmark itself needs 8 GiB and ten minutes; what is tested here is the
arithmetic that decides what it prints: the unpaired and paired bootstrap
intervals and the "straddles the target" mark.
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


def test_paired_interval_cancels_noise_shared_by_a_repeat(bench: ModuleType) -> None:
    # Every repeat's cleaner is 5% slower than that repeat's sync: the
    # machine's drift between repeats is shared, so the paired ratio is exact.
    cleaner = [x * 1.05 for x in SYNC]
    p = bench.paired_interval(list(zip(cleaner, SYNC)))
    assert p is not None
    assert p.low == pytest.approx(105.0) and p.high == pytest.approx(105.0)
    assert p.correlation == pytest.approx(1.0)
    unpaired = bench.interval(cleaner, SYNC)
    assert unpaired is not None and unpaired[1] - unpaired[0] > 5


def test_paired_interval_stays_wide_for_noise_not_shared(bench: ModuleType) -> None:
    # The same values in another order: nothing shared, nothing cancels.
    cleaner = [x * 1.05 for x in reversed(SYNC)]
    p = bench.paired_interval(list(zip(cleaner, SYNC)))
    assert p is not None
    assert p.high - p.low > 5
    assert p.low <= p.ratio <= p.high
    assert bench.paired_interval(list(zip(cleaner, SYNC))) == p, "seeded"


def test_pairs_match_repeats_by_number(bench: ModuleType) -> None:
    a = {"repeats": [{"repeat": 2, "release_s": 2.0}, {"repeat": 1, "release_s": 1.0}]}
    b = {"repeats": [{"repeat": 1, "release_s": 10.0}, {"repeat": 3, "release_s": 30.0}]}
    assert bench.pairs(a, b, "release_s") == [(1.0, 10.0)]
    assert bench.pairs(a, None, "release_s") == []
    assert bench.paired_interval([(1.0, 10.0)]) is None


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
        "repeats": [
            {"repeat": i, "exit_latency_s": r, "release_s": r, "worker_cgroup_s": r}
            for i, r in enumerate(release, 1)
        ],
    }


#: per-repeat cleaner/sync factors: median 1.04, but single repeats reach 1.2
NOISY = [0.92, 1.18, 1.00, 1.12, 0.97, 1.20, 1.04]


@pytest.mark.parametrize(
    ("factors", "verdict"),
    [
        (NOISY, "ok (interval straddles the target)"),  # noise reaches 110%: not decided
        ([1.04] * len(SYNC), "ok"),  # the same median, shared noise: decided
        ([1.60] * len(SYNC), "MISSED"),  # far above: decided
    ],
)
def test_report_marks_a_straddled_target(
    bench: ModuleType, capsys: pytest.CaptureFixture[str], factors: list[float], verdict: str
) -> None:
    doc = {
        "host": {},
        "hierarchy": "v1",
        "elapsed_s": 1,
        "request": {"thp": False, "repeat": len(SYNC)},
        "records": [
            _record("sync", SYNC),
            _record("cleaner", [x * f for x, f in zip(SYNC, factors)]),
        ],
    }
    bench.report(doc)
    row = next(line for line in capsys.readouterr().out.splitlines() if "cleaner release" in line)
    assert row.rstrip().endswith(verdict), row


# --- benchmarks/teardown_cost.py and teardown_trace.py (issue 27) -----------------


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def _cost_run(repeat: int, variant: str, cleaner_cpu: float, par_release: float) -> dict[str, Any]:
    """One made-up ``kvmpv shutdown --repeat 1`` result at 512M and 8G."""
    noise = 1 + 0.1 * repeat  # drift shared by the strategies of one run
    records = []
    for size in (512 << 20, 8 << 30):
        base = (size >> 20) / 40000 * noise  # ~25 ms per GiB
        values = {
            "sync": (base, base),
            "cleaner": (base * cleaner_cpu, base * 1.02),
            "parallel": (base * 1.15, base * 1.02 * par_release),
        }
        for strategy, (cpu, release) in values.items():
            records.append({
                "strategy": strategy, "size_bytes": size,
                "repeats": [{"worker_cgroup_s": cpu, "release_s": release}],
            })  # fmt: skip
    doc = {"host": {"loadavg_start": [0.3, 0.2, 0.1]}, "hierarchy": "v1", "records": records}
    return {"repeat": repeat, "variant": variant, "result": doc}


def _cost_whole(after_cpu: float, after_par: float) -> dict[str, Any]:
    runs = []
    for r in range(5):
        runs.append(_cost_run(r, "before", 1.30, 0.62))
        runs.append(_cost_run(r, "after", after_cpu, after_par))
    return {"sizes": [512 << 20, 8 << 30], "repeat": 5, "variants": {}, "runs": runs}


def test_teardown_cost_ratios_pair_within_one_run(capsys: Any) -> None:
    cost = _load("teardown_cost")
    whole = _cost_whole(1.0, 0.5)
    # The shared drift cancels: every per-run ratio is exactly the made-up one.
    p = cost.pairs(
        whole, "before", 512 << 20, ("cleaner", "worker_cgroup_s"), ("sync", "worker_cgroup_s")
    )
    assert len(p) == 5 and all(abs(a / b - 1.30) < 1e-9 for a, b in p)
    assert cost.report(whole) == 0
    out = capsys.readouterr().out
    assert "1.300" in out and "all goals met" in out and "MISSED" not in out


def test_teardown_cost_judges_the_after_variant(capsys: Any) -> None:
    cost = _load("teardown_cost")
    assert cost.report(_cost_whole(1.08, 0.5)) == 1  # cleaner CPU 1.08 > 1.05, twice (2 sizes)
    out = capsys.readouterr().out
    assert out.count("MISSED") == 2 and "2 goal(s) missed" in out
    assert cost.report(_cost_whole(1.0, 0.58)) == 1  # parallel release 0.58 > 0.55
    assert capsys.readouterr().out.count("MISSED") == 1


def test_teardown_trace_linear_fit() -> None:
    trace = _load("teardown_trace")
    x = [0.0, 1000.0, 5000.0, 130000.0]
    a, b, r = trace.linear_fit(x, [36.0 + 238e-6 * v for v in x])
    assert abs(a - 36.0) < 1e-9 and abs(b - 238e-6) < 1e-12 and abs(r - 1) < 1e-9
    assert trace.linear_fit(x, [5.0] * 4) is None  # no variation: no fit
    assert trace.linear_fit(x[:2], x[:2]) is None  # too few points
