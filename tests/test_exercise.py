# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv exercise`` and ``kvmpv bench`` end to end, at small sizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _sized import verdict_size
from conftest import IS_ROOT, mem_available

from kvmpv.accounting import PRECISE_TOLERANCE_NS
from kvmpv.cli import main
from kvmpv.report import results
from kvmpv.scenarios import bench, exercise
from kvmpv.units import GiB, MiB, format_size


def test_default_sizes_follow_the_host() -> None:
    assert exercise.default_sizes(6 * GiB) == [GiB, 2 * GiB, 4 * GiB]
    assert exercise.default_sizes(40 * GiB) == [8 * GiB, 16 * GiB, 32 * GiB]
    assert exercise.default_sizes(700 * MiB) == [700 * MiB]


def test_reboot_curve_is_planned_by_time() -> None:
    cap = exercise.reboot_curve_cap(23 * GiB)
    assert cap == 11 * GiB
    plan = exercise.plan_curve
    # Measured here on a loaded host: 3G took 17.2 s of the 90 s budget.
    assert plan(3 * GiB, 17.2, 72.8, cap) == [4 * GiB, 5 * GiB]
    # Unloaded (8.7 s): the widest range three points allow.
    assert plan(3 * GiB, 8.7, 81.3, cap) == [7 * GiB, 11 * GiB]
    # A fast host: the cap, and as many points as fit there, evenly spaced.
    assert plan(3 * GiB, 3.0, 87.0, cap) == [5 * GiB, 7 * GiB, 9 * GiB, 11 * GiB]
    # A slow host or a small one: fewer sizes, or none beyond the first.
    assert plan(3 * GiB, 40.0, 50.0, cap) == []
    assert plan(3 * GiB, 8.7, 81.3, 4 * GiB) == [4 * GiB]
    assert plan(3 * GiB, 8.7, 81.3, 3 * GiB) == []


def _fake_curve(
    monkeypatch: pytest.MonkeyPatch, sizes: list[int], explicit: bool, cost: Any
) -> tuple[list[int], dict[str, Any], exercise.ExerciseResult]:
    """Run ``_reboot_curve`` with reboots taking ``cost(memory)`` seconds on a fake clock."""
    clock = [100.0]
    ran: list[int] = []

    def fake_step(req: Any, memory: int, doc: dict[str, Any], res: Any, say: Any) -> None:
        ran.append(memory)
        clock[0] += cost(memory)

    monkeypatch.setattr(exercise, "_reboot_step", fake_step)
    monkeypatch.setattr(exercise.time, "monotonic", lambda: clock[0])
    req = exercise.ExerciseRequest(
        out_dir="unused", reboot_sizes=tuple(sizes) if explicit else None, reboot_budget_s=90
    )
    doc: dict[str, Any] = {}
    res = exercise.ExerciseResult(doc)
    exercise._reboot_curve(
        req, sizes, doc, res, lambda _s: None, lambda *_a: None, print, 11 * GiB
    )
    return ran, doc, res


def test_reboot_curve_stops_at_its_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    linear = lambda m: 10 / 3 * m / GiB  # noqa: E731 -- 10 s per 3G
    ran, doc, _ = _fake_curve(monkeypatch, [3 * GiB], explicit=False, cost=linear)
    assert ran == [3 * GiB, 7 * GiB, 11 * GiB] and "skipped" not in doc
    # Larger sizes costing twice the prediction: 7G is over budget once run,
    # so 11G (predicted from both) is skipped, with the reason.
    def worse(m: int) -> float:
        return linear(m) * (1 if m == 3 * GiB else 2)

    ran, doc, res = _fake_curve(monkeypatch, [3 * GiB], explicit=False, cost=worse)
    assert ran == [3 * GiB, 7 * GiB]
    (skip,) = doc["skipped"]
    assert skip["step"] == "reboot at 11G" and "budget (90 s)" in skip["reason"]
    assert "57 s spent, about 62 s more predicted" in skip["reason"]
    assert any("stopped before 11G" in n for n in res.notes)
    # Explicit sizes always run, budget or not.
    sizes = [3 * GiB, 6 * GiB, 9 * GiB]
    ran, doc, _ = _fake_curve(monkeypatch, sizes, explicit=True, cost=lambda m: 100)
    assert ran == sizes and "skipped" not in doc


def test_max_size_beyond_the_host_is_refused_before_allocating(
    tmp_path: Path, capsys: Any
) -> None:
    too_big = mem_available() * 2 // GiB + 1
    code = main(["exercise", "--out", str(tmp_path / "o"), "--max-size", f"{too_big}G"])
    assert code == 3
    err = capsys.readouterr().err
    assert "more than this host can hold" in err and "nothing was allocated" in err
    assert not (tmp_path / "o").exists()


def test_bad_size_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["exercise", "--out", str(tmp_path), "--max-size", "lots"]) == 2
    assert main(["bench", "--sizes", "1G,x"]) == 2


def test_fit_and_extrapolation_are_labelled() -> None:
    recs = [
        {"strategy": "sync", "thp": False, "size_bytes": s * GiB,
         "release_s": {"min": 0, "median": 0.01 + s * 0.066, "max": 1}}
        for s in (1, 2, 4)
    ]  # fmt: skip
    rows = bench.extrapolate(recs)
    assert [r["size_bytes"] for r in rows] == list(bench.EXTRAPOLATE_TO)
    assert all(r["extrapolated"] is True for r in rows)
    top = rows[-1]
    # 0.066 s/GiB -> 16 TB = 14901 GiB -> ~983 s (+ the 10 ms intercept)
    assert top["release_s"] == pytest.approx(0.01 + 0.066 * 16000e9 / GiB, rel=1e-6)
    assert bench.fit_rate([(GiB, 1.0)]) is None


@pytest.mark.skipif(not IS_ROOT, reason="needs root (cgroups for the verdicts)")
@pytest.mark.skipif(mem_available() < 8 * GiB, reason="needs 8 GiB available")
def test_exercise_runs_and_leaves_the_files(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "run"
    code = main(
        # sized by time (tests/_sized.py): a verdict not decided fails the run
        ["exercise", "--out", str(out), "--repeat", "1", "--cycles", "1",
         "--max-size", format_size(verdict_size(PRECISE_TOLERANCE_NS)),
         "--reboot-sizes", "4G,3G", "--kcidb", str(out / "kcidb.json")]
    )  # fmt: skip
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, printed + captured.err  # the one-line error of exit 2/3 is on stderr
    doc = results.read(str(out / "results.json"))
    # The reboot curve: every size asked for, smallest first, each a run of its own.
    assert [r["memory_bytes"] for r in doc["reboot"]] == [3 * GiB, 4 * GiB]
    assert "Reboot curve by guest memory" in printed
    sub = json.loads((out / "kcidb.json").read_text())
    assert any(t["path"] == "kvmpv.reboot.sim.sync.4G" for t in sub["tests"]) or not any(
        r["backend"] == "sim" for r in doc["reboot"]
    )
    assert doc["host"]["arch"]
    names = {r["name"] for r in doc["check"]["results"]}
    assert len(names) >= 10
    assert doc["reboot"] and all(r["backend"] in ("kvm", "sim") for r in doc["reboot"])
    for run in doc["reboot"]:  # one warm-up per mode, outside the measured cycles
        assert [(c["mode"], c["warmup"]) for c in run["warmup_cycles"]] == [
            ("async", True),
            ("sync", True),
        ]
        assert len(run["cycles"]) == 2 and not any(c["warmup"] for c in run["cycles"])
    strategies = {r["strategy"] for r in doc["shutdown"]["records"]}
    assert {"sync", "cleaner", "elsewhere", "reaper"} <= strategies
    ktap = (out / "check.ktap").read_text()
    assert ktap.startswith("TAP version 13\n") and "# Totals:" in ktap
    junit_text = (out / "check.junit.xml").read_text()
    assert junit_text.lstrip().startswith("<?xml")
    from test_report_junit import junit10_violations

    assert junit10_violations(junit_text) == []  # Jenkins xunit's junit-10.xsd rules
    pytest.importorskip("matplotlib", reason="plots are the optional [plot] extra")
    assert (out / "teardown.png").stat().st_size > 1000
    assert (out / "reboot.png").stat().st_size > 1000
    assert "wrote" in printed and "PASS" in printed


@pytest.mark.skipif(not IS_ROOT, reason="needs root (cgroups for the verdicts)")
def test_bench_small_table(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "b.json"
    size = verdict_size(PRECISE_TOLERANCE_NS)  # sized by time (tests/_sized.py)
    code = main(
        ["bench", "--sizes", f"{format_size(size)},{format_size(2 * size)}", "--repeat", "1",
         "--strategy", "sync,cleaner", "--no-thp", "--no-reboot", "--json", str(path)]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(path.read_text())
    results.validate(doc)
    assert len(doc["bench"]["teardown"]) == 4
    assert doc["bench"]["extrapolation"], "two sizes are enough for a fit"
    assert "EXTRAPOLATED" in capsys.readouterr().out
