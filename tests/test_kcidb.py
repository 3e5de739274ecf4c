# SPDX-License-Identifier: GPL-2.0-only
"""KCIDB submissions (``--kcidb FILE``), validated by the kcidb-io package itself.

kcidb-io (PyPI, https://github.com/kernelci/kcidb-io) is the schema KernelCI's
database checks every submission against; its ``validate_exactly`` is the
judge here, for a full run and for runs cut short by SIGTERM, so that nothing
kvmpv writes can be refused at submission time.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_results import make_doc

from kvmpv.cli import main
from kvmpv.report import kcidb, results

REPO = Path(__file__).resolve().parent.parent
kcidb_io = pytest.importorskip(
    "kcidb_io",
    reason="kcidb-io (PyPI) validates the submissions: pip install kcidb-io (Python >= 3.10; "
    f"this is {sys.version_info[0]}.{sys.version_info[1]})",
)


def validate(sub: dict[str, Any]) -> dict[str, Any]:
    """kcidb-io's validator for the version kvmpv writes (raises on any violation)."""
    schema = kcidb_io.schema.LATEST
    assert (schema.major, schema.minor) >= (kcidb.VERSION["major"], kcidb.VERSION["minor"])
    version = schema.get_exactly_compatible(sub)
    assert version is not None, "kcidb-io knows no schema version matching the submission"
    version.validate_exactly(sub)
    return sub


def by_path(sub: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["path"]: t for t in sub["tests"]}


def test_the_validator_can_fail() -> None:
    """kcidb-io refuses what KCIDB refuses: a null, a bad status, a bad path, a bad origin."""
    good = kcidb.from_results(make_doc())
    validate(good)
    jsonschema = pytest.importorskip("jsonschema")
    for mutate in (
        lambda s: s["tests"][0].update(status="OK"),
        lambda s: s["tests"][0].update(path="kvmpv.check.sim.a b"),
        lambda s: s["tests"][0].update(comment=None),
        lambda s: s["builds"][0].update(origin="KVMPV"),
        lambda s: s["tests"][0].update(log_excerpt="x" * 16385),
    ):
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)


def test_full_check_run_is_a_valid_submission(tmp_path: Path) -> None:
    out = tmp_path / "kcidb.json"
    code = main(["check", "--backend", "sim", "--kcidb", str(out), "--kcidb-origin", "my_lab"])
    assert code == 0
    sub = validate(json.loads(out.read_text()))
    assert sub["version"] == {"major": 5, "minor": 3}
    (checkout,), (build,) = sub["checkouts"], sub["builds"]
    assert checkout["id"].startswith("my_lab:") and build["checkout_id"] == checkout["id"]
    assert build["architecture"] == os.uname().machine.replace("-", "_").lower()
    tests = by_path(sub)
    assert len(tests) == len(sub["tests"]) >= 30  # one test per check, ids unique
    assert len({t["id"] for t in sub["tests"]}) == len(sub["tests"])
    one = tests["kvmpv.check.sim.prepare_success"]
    assert one["status"] == "PASS" and one["build_id"] == build["id"]
    assert one["origin"] == "my_lab" and one["duration"] >= 0
    # Simulated results say so wherever a reader looks.
    assert one["comment"].startswith("SIMULATED") and one["misc"]["simulated"] is True
    assert one["environment"]["misc"]["simulated"] is True
    assert "KVM_PV_ASYNC_CLEANUP_PREPARE" in one["log_excerpt"]


def test_exercise_document_maps_every_measurement() -> None:
    doc = make_doc()
    doc["check"]["results"].append(
        {"name": "broken", "backend": "kvm", "status": "fail", "reason": "rc 0x5",
         "diagnostics": ["line"] * 5000}
    )  # fmt: skip
    doc["skipped"] = [{"step": "reboot at 12G", "reason": "time budget"}]
    sub = validate(kcidb.from_results(doc, "kvmpv", run_id="r1"))
    tests = by_path(sub)
    assert tests["kvmpv.check.kvm.broken"]["status"] == "FAIL"
    assert len(tests["kvmpv.check.kvm.broken"]["log_excerpt"]) <= kcidb.LOG_EXCERPT_MAX
    assert tests["kvmpv.check.kvm.prepare_blocks"]["status"] == "SKIP"
    sync12 = tests["kvmpv.reboot.sim.sync.12G"]
    assert sync12["status"] == "PASS" and sync12["number"]["value"] == pytest.approx(1.2)
    assert sync12["comment"].startswith("SIMULATED")
    assert tests["kvmpv.shutdown.elsewhere.4G.thp"]["number"]["unit"] == "s"
    assert tests["kvmpv.reboot_at_12G"]["status"] == "SKIP"
    assert sub["tests"][0]["id"].startswith("kvmpv:r1-")


def test_recorded_results_files_are_valid_submissions() -> None:
    files = sorted((REPO / "fixtures" / "results").glob("*.json"))
    if not files:
        pytest.skip("no recorded results under fixtures/results")
    for path in files:
        sub = validate(kcidb.from_results(results.read(str(path))))
        assert sub["tests"], path


def test_tests_attach_to_another_ci_systems_build(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    argv = ["check", "--backend", "sim", "-k", "prepare_success", "--kcidb", str(out),
            "--kcidb-origin", "my_lab", "--kcidb-build", "redhat:1234567"]  # fmt: skip
    assert main(argv) == 0
    sub = validate(json.loads(out.read_text()))
    assert "checkouts" not in sub and "builds" not in sub  # the other system's
    (test,) = sub["tests"]
    assert test["build_id"] == "redhat:1234567" and test["id"].startswith("my_lab:")
    assert main([*argv[:-1], "no origin"]) == 2


def test_bad_origin_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k.json"
    assert main(["check", "--backend", "sim", "--kcidb", str(out), "--kcidb-origin", "My-Lab"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KCIDB origin" in err and not out.exists()


def _interrupt(argv: list[str], marker: str, stream: str = "stdout") -> tuple[int, str]:
    """Run kvmpv, SIGTERM it once ``marker`` starts a line of its ``stream``; (code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmpv", *argv],
        cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = proc.stdout if stream == "stdout" else proc.stderr
        assert lines is not None
        for line in lines:
            if line.startswith(marker):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
        return proc.returncode, err
    finally:
        if proc.poll() is None:  # the marker never came: leave nothing running
            proc.kill()
            proc.communicate()


def test_interrupted_check_run_is_a_valid_submission(tmp_path: Path) -> None:
    out = tmp_path / "kcidb.json"
    code, err = _interrupt(["check", "--backend", "sim", "--kcidb", str(out)], "ok 3 ")
    assert code == 143, err
    sub = validate(json.loads(out.read_text()))
    tests = by_path(sub)
    miss = tests["kvmpv.check"]
    assert miss["status"] == "MISS" and "interrupted by signal" in miss["comment"]
    assert "did not run" in miss["comment"]
    assert 3 <= len(tests) - 1 < miss["misc"]["planned"]


def test_interrupted_exercise_is_a_valid_submission(tmp_path: Path) -> None:
    out, k = tmp_path / "run", tmp_path / "kcidb.json"
    argv = ["exercise", "--out", str(out), "--max-size", "256M", "--repeat", "1",
            "--cycles", "200", "--reboot-sizes", "3G", "--no-plots", "--kcidb", str(k)]  # fmt: skip
    code, err = _interrupt(argv, "== reboot", stream="stderr")  # Progress writes to stderr
    assert code == 143, err
    doc = results.read(str(out / "results.json"))
    assert doc["interrupted"]["step"] == "reboot"
    sub = validate(json.loads(k.read_text()))
    tests = by_path(sub)
    assert tests["kvmpv.exercise"]["status"] == "MISS"
    assert "in step reboot" in tests["kvmpv.exercise"]["comment"]
    assert sum(p.startswith("kvmpv.check.") for p in tests) == len(doc["check"]["results"])
    assert sub["checkouts"][0]["misc"]["interrupted"]["step"] == "reboot"
