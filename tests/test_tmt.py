# SPDX-License-Identifier: GPL-2.0-only
"""The fmf tree (``.fmf/``, ``plans/``, ``tmt/``) as tmt itself reads and runs it.

tmt (PyPI) is the judge: ``tmt lint`` must be clean, and ``tmt run`` of the
cheap plan on this machine (``provision --how local``) must install kvmpv
into a venv, run ``kvmpv check --backend sim`` with one tmt result per check
and a small ``kvmpv exercise``, and keep their files as artifacts.  Where tmt
or rsync (which tmt needs for its worktree) is missing, SKIP with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tmt() -> str:
    here = Path(sys.prefix) / "bin" / "tmt"  # tox installs it beside pytest
    found = str(here) if here.exists() else shutil.which("tmt")
    if not found:
        pytest.skip("tmt is not installed (pip install tmt; tox's py env has it)")
    return found


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMT_NO_COLOR="1", NO_COLOR="1")
    return subprocess.run(
        [_tmt(), *args], cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout
    )


def test_tmt_lint_is_clean() -> None:
    done = _run("lint")
    assert done.returncode == 0, done.stdout + done.stderr
    bad = [line for line in done.stdout.splitlines() if line.startswith(("warn", "fail"))]
    assert bad == [], done.stdout
    # Every plan and test was linted (a tree tmt cannot find lints nothing, cleanly).
    for node in ("/plans/full", "/plans/local", "/plans/s390x", "/tmt/check", "/tmt/exercise"):
        assert f"\n{node}\n" in f"\n{done.stdout}", node


def test_s390x_parts_are_filtered_by_architecture() -> None:
    x86 = _run("-c", "arch=x86_64", "plans", "ls", "--enabled")
    s390x = _run("-c", "arch=s390x", "plans", "ls", "--enabled")
    assert x86.returncode == 0 and s390x.returncode == 0, x86.stderr + s390x.stderr
    assert "/plans/s390x" not in x86.stdout.split() and "/plans/full" in x86.stdout.split()
    assert "/plans/s390x" in s390x.stdout.split()
    tests = _run("-c", "arch=s390x", "tests", "ls", "--filter", "enabled:true")
    assert "/tmt/reboot-kvm" in tests.stdout.split(), tests.stdout + tests.stderr


@pytest.mark.slow
def test_local_tmt_run_passes_with_a_result_per_check(tmp_path: Path) -> None:
    if not shutil.which("rsync"):
        pytest.skip("tmt syncs its worktree with rsync, which is not installed")
    workdir, venv = tmp_path / "run", tmp_path / "venv"
    # The plan's own venv path is /var/tmp; a test keeps everything in tmp_path.
    done = _run(
        "--feeling-safe", "run", "--id", str(workdir), "-e", f"KVMPV_VENV={venv}",
        "--all", "provision", "--how", "local", "plans", "--name", "^/plans/local$",
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ruamel = pytest.importorskip("ruamel.yaml", reason="tmt's own YAML library reads its results")
    results_file = workdir / "plans" / "local" / "execute" / "results.yaml"
    results = ruamel.YAML(typ="safe").load(results_file.read_text())
    by_name = {r["name"]: r for r in results}
    checks = [n for n in by_name if n.startswith("/tmt/check/sim/")]
    assert len(checks) >= 30, sorted(by_name)
    assert by_name["/tmt/check/sim/prepare_success"]["result"] == "pass"
    assert by_name["/tmt/exercise"]["result"] == "pass"
    assert {r["result"] for r in results} <= {"pass", "skip"}
    data = workdir / "plans" / "local" / "execute" / "data" / "guest" / "default-0" / "tmt"
    (check_dir,) = data.glob("check-*/data")
    for name in ("check.ktap", "check.junit.xml", "check.json", "kcidb.json", "results.json"):
        assert (check_dir / name).stat().st_size > 100, name
    assert (check_dir / "check.ktap").read_text().startswith("TAP version 13")
    (exercise_dir,) = data.glob("exercise-*/data")
    doc = json.loads((exercise_dir / "results" / "results.json").read_text())
    assert doc["reboot"] and doc["shutdown"]["records"]
    assert (exercise_dir / "results" / "kcidb.json").exists()


def test_tmt_results_match_tmts_own_schema(tmp_path: Path) -> None:
    """``--tmt-results`` as tmt's results schema wants it (tmt only warns on violations)."""
    pytest.importorskip("tmt", reason="tmt is not installed (pip install tmt; tox's py env has it)")
    import fmf.utils
    import tmt.utils

    from kvmpv.cli import main
    from kvmpv.report import tmt as tmt_report
    from kvmpv.report.cases import CaseResult, RunResult, Status

    schema = tmt.utils.load_schema(Path("results.yaml"))
    store = tmt.utils.load_schema_store()

    def errors(data: object) -> list[object]:
        return list(fmf.utils.validate_data(data, schema, schema_store=store).errors)

    out, junit = tmp_path / "results.json", tmp_path / "check.junit.xml"
    argv = ["check", "--backend", "sim", "--tmt-results", str(out), "--junit", str(junit)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert errors(data) == []
    assert {r["result"] for r in data} == {"pass"} and len(data) >= 30
    assert all(r["log"] == ["check.junit.xml"] and r["name"].startswith("/sim/") for r in data)
    # A run cut short: what ran, then /bail-out as an error.
    run = RunResult(
        "kvmpv.check",
        cases=[CaseResult("prepare_success", Status.FAIL, "rc 0x5", "kvm", ["got rc 0x5"])],
        planned=3,
        bail_out="interrupted by signal 15",
        interrupted=True,
    )
    cut = tmt_report.results(run, str(out), [str(junit)])
    assert [(r["name"], r["result"]) for r in cut] == [
        ("/kvm/prepare_success", "fail"),
        ("/bail-out", "error"),
    ]
    assert cut[0]["note"] == ["rc 0x5", "got rc 0x5"] and "1 of 3 ran" in cut[1]["note"]
    assert errors(cut) == []
    # The schema check can fail.
    assert errors([dict(cut[0], result="passed")]) != []
