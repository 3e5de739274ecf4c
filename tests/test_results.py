# SPDX-License-Identifier: GPL-2.0-only
"""Results files: schema, text report, plots, compare.

Documents here are built by ``make_doc`` (test data, not measurements); the
recorded files of real runs under ``fixtures/results/`` are used by
``test_compare_recorded_*``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kvmpv.cli import main
from kvmpv.report import results
from kvmpv.report.compare import compare
from kvmpv.report.metrics import flatten

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "results"
G = 1 << 30


def _stats(x: float) -> dict[str, float]:
    return {"min": x * 0.9, "median": x, "max": x * 1.1}


def make_doc() -> dict[str, Any]:
    doc = results.new_document({"arch": "x86_64", "kernel_release": "6.18.0-test"}, "test")
    doc["check"] = {
        "results": [
            {"name": "prepare_success_rc", "backend": "sim", "status": "pass", "reason": None},
            {"name": "pv_command_enotty", "backend": "kvm", "status": "pass", "reason": None},
            {"name": "prepare_blocks", "backend": "kvm", "status": "skip", "reason": "not PV"},
        ]
    }
    doc["reboot"] = [
        {
            "backend": "sim",
            "simulated": True,
            "memory_bytes": mem * G,
            "vcpus": 2,
            "cycles": [
                {"mode": "async", "reboot_latency_s": 0.2, "perform_s": 0.1 * mem,
                 "overlap_s": 0.05 * mem, "cleanup_cpu_s": 0.1 * mem, "verdict": "charged"},
                {"mode": "sync", "reboot_latency_s": 0.1 * mem, "perform_s": None,
                 "overlap_s": None, "cleanup_cpu_s": 0.1 * mem, "verdict": "charged"},
            ],
        }
        for mem in (4, 12)
    ]  # fmt: skip
    recs = []
    for strategy, exit_s, verdict in (
        ("sync", 0.5, "charged"),
        ("cleaner", 0.001, "charged"),
        ("elsewhere", 0.001, "not charged"),
    ):
        for size in (1, 4):
            for thp in (False, True):
                scale = size * (0.04 if thp else 1.0)
                recs.append(
                    {
                        "strategy": strategy,
                        "size_bytes": size * G,
                        "thp": thp,
                        "exit_latency_s": _stats(exit_s * scale),
                        "release_s": _stats(0.06 * scale),
                        "teardown_cpu_s": 0.06 * scale,
                        "charged_to_worker_cgroup_s": 0.06 * scale if verdict == "charged" else 0.0,
                        "verdict": verdict,
                    }
                )
    doc["shutdown"] = {"records": recs}
    return doc


def test_schema_accepts_a_full_document() -> None:
    assert results.validation_errors(make_doc()) == []


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d.pop("host"), "'host' is a required property"),
        (lambda d: d["reboot"][0]["cycles"][0].pop("perform_s"), "perform_s"),
        (lambda d: d["shutdown"]["records"][0].update(verdict="maybe"), "maybe"),
        (lambda d: d["shutdown"]["records"][0].update(strategy="teleport"), "teleport"),
        (lambda d: d["reboot"][0].update(backend="qemu"), "qemu"),
    ],
)
def test_schema_rejects_broken_documents(mutate: Any, expect: str) -> None:
    doc = make_doc()
    mutate(doc)
    errors = results.validation_errors(doc)
    assert errors and any(expect in e for e in errors), errors


def test_read_refuses_foreign_and_future_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(results.UsageError, match="not a kvmpv results file"):
        results.read(str(bad))
    future = make_doc()
    future["schema_version"] = 2
    bad.write_text(json.dumps(future))
    with pytest.raises(results.UsageError, match="schema version 2"):
        results.read(str(bad))
    bad.write_text("{not json")
    with pytest.raises(results.UsageError, match="not JSON"):
        results.read(str(bad))


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    results.write(make_doc(), str(path))
    assert results.read(str(path))["shutdown"] == make_doc()["shutdown"]
    assert not list(tmp_path.glob("*.tmp*"))


def test_report_prints_tables_and_labels_sim(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "r.json"
    results.write(make_doc(), str(path))
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Protected-VM reboot" in out and "sim" in out
    assert "elsewhere" in out and "not charged" in out
    assert "12G" in out


def _png_has_colour(png: Path, colour: str, min_pixels: int = 20) -> bool:
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    rgb = tuple(int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    pixels = img[:, :, :3]
    close = (abs(pixels - rgb) < 0.02).all(axis=2)
    return int(close.sum()) >= min_pixels


def test_plots_contain_every_series(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots are the optional [plot] extra")
    from kvmpv.report import plots

    doc = make_doc()
    done, missing = plots.plot_all(doc, str(tmp_path / "p-"))
    assert missing == []
    by_name = {Path(p.path).name: p for p in done}
    teardown, reboot = by_name["p-teardown.png"], by_name["p-reboot.png"]
    # 3 strategies x 2 page sizes, each a distinct colour present in the PNG.
    assert sorted(label for label, _ in teardown.series) == sorted(
        f"{s} {p}" for s in ("cleaner", "elsewhere", "sync") for p in ("4 KiB", "THP")
    )
    for label, colour in teardown.series:
        assert _png_has_colour(Path(teardown.path), colour), label
    assert "SIMULATED" in reboot.title
    assert [label.split()[0] for label, _ in reboot.series] == ["async", "sync"]
    for label, colour in reboot.series:
        assert _png_has_colour(Path(reboot.path), colour), label
    # The check can fail: a colour that was never drawn is not found.
    assert not _png_has_colour(Path(reboot.path), "#00ff00")


def test_reboot_curve_table_says_what_the_plot_shows(tmp_path: Path, capsys: Any) -> None:
    from kvmpv.report import tables

    doc = make_doc()
    text = tables.render(doc)
    assert "Reboot curve by guest memory, as in reboot.png (sim = SIMULATED s390x kernel):" in text
    curve = text.split("as in reboot.png")[1].splitlines()
    rows = [line.split() for line in curve if line.startswith("sim ")]
    # smallest first; async 0.2 s flat, sync 0.1 s/GiB: 0.4 and 1.2, ratios 0.5 and 0.1667
    assert [r[1] for r in rows] == ["4G", "12G"]
    assert [r[2:5] for r in rows] == [
        ["0.2000", "0.4000", "0.5000"],
        ["0.2000", "1.2000", "0.1667"],
    ]
    # A bench file's curve is drawn and tabled the same way by `kvmpv report`.
    bench = make_doc()
    bench["bench"] = {"teardown": [], "extrapolation": [], "reboot_curve": bench.pop("reboot")}
    path = tmp_path / "bench.json"
    results.write(bench, str(path))
    pytest.importorskip("matplotlib", reason="plots are the optional [plot] extra")
    assert main(["report", str(path), "--plot", str(tmp_path / "b-")]) == 0
    out = capsys.readouterr().out
    assert "Reboot curve by guest memory" in out and (tmp_path / "b-reboot.png").exists()


def test_reboot_plot_from_every_recorded_results_file(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots are the optional [plot] extra")
    from kvmpv.report import plots

    files = _recorded()
    if not files:
        pytest.skip("no recorded results under fixtures/results yet")
    drawn = 0
    for path in files:
        doc = results.read(str(path))
        if plots.reboot_runs(doc):
            info = plots.plot_reboot(doc, str(tmp_path / f"{path.stem}.png"))
            assert info.series and all(_png_has_colour(Path(info.path), c) for _, c in info.series)
            drawn += 1
    assert drawn, "no recorded file has reboot measurements"


def test_plot_without_data_says_why(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots are the optional [plot] extra")
    from kvmpv.report import plots

    doc = make_doc()
    del doc["reboot"]
    done, missing = plots.plot_all(doc, str(tmp_path / "x-"))
    assert [Path(p.path).name for p in done] == ["x-teardown.png"]
    assert missing == ["reboot plot: no reboot measurements"]


def test_flatten_names_every_measurement() -> None:
    keys = set(flatten(make_doc()))
    assert "shutdown/cleaner/4G/4k/exit_latency_s" in keys
    assert "shutdown/elsewhere/1G/thp/verdict" in keys
    assert "reboot/sim/12G/async/reboot_latency_s" in keys
    assert "check/kvm/pv_command_enotty" in keys


def test_compare_identical_has_no_regression() -> None:
    cmp = compare(make_doc(), make_doc())
    assert cmp.regressions == []
    assert all(r.ratio in (None, 1.0) for r in cmp.rows)


def test_compare_flags_slowdown_status_and_ignores_noise() -> None:
    old, new = make_doc(), make_doc()
    def find(strategy: str, size: int, thp: bool) -> dict[str, Any]:
        recs = new["shutdown"]["records"]
        return next(
            r for r in recs if (r["strategy"], r["size_bytes"], r["thp"]) == (strategy, size, thp)
        )

    rec = find("cleaner", G, False)
    rec["exit_latency_s"] = _stats(0.4)  # 0.001 -> 0.4 s: the cleaner stopped working
    new["check"]["results"][0]["status"] = "fail"
    new["reboot"][1]["cycles"][0]["verdict"] = "not charged"
    tiny = find("cleaner", G, True)  # 0.00004 -> 0.002 s: a big ratio, but under min_abs
    tiny["exit_latency_s"] = _stats(0.002)
    flagged = {r.key for r in compare(old, new).regressions}
    assert flagged == {
        "shutdown/cleaner/1G/4k/exit_latency_s",
        "check/sim/prepare_success_rc",
        "reboot/sim/12G/async/verdict",
    }


def test_compare_counts_a_warm_up_verdict_but_not_its_timings() -> None:
    old, new = make_doc(), make_doc()
    warm = {"mode": "sync", "reboot_latency_s": 99.0, "perform_s": None, "overlap_s": None,
            "cleanup_cpu_s": 99.0, "verdict": "charged", "warmup": True}  # fmt: skip
    old["reboot"][0]["warmup_cycles"] = [dict(warm)]
    new["reboot"][0]["warmup_cycles"] = [dict(warm, verdict="not charged")]
    assert flatten(old) == flatten(make_doc()), "a warm-up's 99 s stay out of the medians"
    flagged = {r.key for r in compare(old, new).regressions}
    assert flagged == {"reboot/sim/4G/sync/verdict"}


def test_compare_lists_one_sided_metrics_without_flagging() -> None:
    old, new = make_doc(), copy.deepcopy(make_doc())
    del new["reboot"]
    cmp = compare(old, new)
    assert cmp.regressions == []
    assert any(r.note == "only in old" for r in cmp.rows)


def test_compare_cli_exit_codes(tmp_path: Path, capsys: Any) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    results.write(make_doc(), str(a))
    slow = make_doc()
    for rec in slow["shutdown"]["records"]:
        rec["release_s"] = _stats(rec["release_s"]["median"] * 3 + 0.1)
    results.write(slow, str(b))
    assert main(["compare", str(a), str(a)]) == 0
    assert main(["compare", str(a), str(b), "--json", str(tmp_path / "c.json")]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out
    assert json.loads((tmp_path / "c.json").read_text())["regressions"] == 12
    assert main(["compare", str(a), str(tmp_path / "missing.json")]) == 2
    assert main(["compare", str(a), str(b), "--threshold", "-1"]) == 2


def _recorded() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def test_recorded_results_are_valid() -> None:
    files = _recorded()
    if not files:
        pytest.skip("no recorded results under fixtures/results yet")
    for path in files:
        results.read(str(path))


def test_compare_recorded_flags_the_recorded_regression(capsys: Any) -> None:
    base, same, regressed = (FIXTURES / f"{n}.json" for n in ("baseline", "rerun", "regressed"))
    if not (base.exists() and same.exists() and regressed.exists()):
        pytest.skip("recorded results not present under fixtures/results")
    assert main(["compare", str(base), str(regressed), "--regressions-only"]) == 1
    out = capsys.readouterr().out
    assert "shutdown/cleaner" in out and "exit_latency_s" in out
    # Two real runs on the same host differ by noise only, not by regressions
    # beyond the default threshold on the cleaner's behaviour.
    cmp = compare(results.read(str(base)), results.read(str(same)))
    assert not [r for r in cmp.regressions if r.key.endswith("/verdict")]
