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
         "--max-size", format_size(verdict_size(PRECISE_TOLERANCE_NS))]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    doc = results.read(str(out / "results.json"))
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
