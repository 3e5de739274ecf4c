# SPDX-License-Identifier: GPL-2.0-only
"""Bad input for the whole CLI: one line on stderr, the documented exit code, never a traceback.

In-process through ``kvmpv.cli.main([...])`` and, for the traceback check, as a
real ``python -m kvmpv`` subprocess (also as an unprivileged user).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import Nobody

from kvmpv import syscalls
from kvmpv.cli import COMMANDS, main
from kvmpv.errors import EXIT_ENV, EXIT_OK, EXIT_USAGE
from kvmpv.kvm import KVM_DEV_ENV

REPO = Path(__file__).resolve().parent.parent


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kvmpv: error: "), err
    return lines[0]


# --------------------------------------------------------------------------
# In process
# --------------------------------------------------------------------------


def test_no_kvm_device(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(KVM_DEV_ENV, "/nonexistent/kvm")
    assert main(["probe", "--require", "kvm"]) == EXIT_ENV
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert "open(/nonexistent/kvm) failed" in line and "ENOENT" in line
    assert "KVM device" in captured.out  # the probe itself was still printed
    # Without --require, a host without KVM is a fact to report, not an error.
    assert main(["probe", "--run-guest", "16M"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "guest" in out and "not run" in out


def test_permission_denied_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(path: str, flags: int) -> int:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(syscalls.LINUX, "open", denied)
    assert main(["probe", "--require", "kvm"]) == EXIT_ENV
    line = one_error_line(capsys.readouterr().err)
    assert "EACCES" in line and "permission denied" in line


@pytest.mark.parametrize("size", ["4X", "-1G", "0", "1.5", "G", ""])
def test_bad_size(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", f"--run-guest={size}"]) == EXIT_USAGE
    line = one_error_line(capsys.readouterr().err)
    assert "invalid size" in line


def test_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--inject-kvm", "api=x"]) == EXIT_USAGE
    assert "--inject-kvm" in one_error_line(capsys.readouterr().err)
    assert main(["probe", "--no-such-option"]) == EXIT_USAGE
    assert "unrecognized arguments" in capsys.readouterr().err
    assert main(["no-such-command"]) == EXIT_USAGE


def test_not_linux(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert main(["probe"]) == EXIT_ENV
    assert one_error_line(capsys.readouterr().err) == (
        "kvmpv: error: kvmpv needs Linux; this is darwin"
    )
    # Every command refuses the same way, before it runs (or argparse says
    # what is missing first, exit 2).
    for name in COMMANDS:
        code = main([name])
        assert code in (EXIT_ENV, EXIT_USAGE), name
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if code == EXIT_ENV:
            assert one_error_line(err).endswith("this is darwin")


# --------------------------------------------------------------------------
# Real subprocesses: no traceback, exit codes as documented
# --------------------------------------------------------------------------


def run_kvmpv(
    args: list[str],
    env: Optional[dict[str, str]] = None,
    prefix: Optional[list[str]] = None,
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [*(prefix or []), python, "-m", "kvmpv", *args],
        cwd=str(REPO),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args,env,code,needle",
    [
        (["probe", "--require", "kvm"], {KVM_DEV_ENV: "/nonexistent"}, EXIT_ENV, "ENOENT"),
        (["probe", "--require", "kvm"], {KVM_DEV_ENV: "/dev/null"}, EXIT_ENV, "not a KVM device"),
        (["probe", "--run-guest", "4X"], {}, EXIT_USAGE, "invalid size '4X'"),
        (["probe", "--root", "/nonexistent", "--require", "pv-async"], {}, EXIT_ENV, "not usable"),
    ],
    ids=["no-device", "not-kvm", "bad-size", "no-pv"],
)
def test_subprocess_errors(args: list[str], env: dict[str, str], code: int, needle: str) -> None:
    proc = run_kvmpv(args, env)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in one_error_line(proc.stderr)


def test_subprocess_not_linux() -> None:
    code = (
        "import sys; sys.platform = 'sunos5'; sys.argv = ['kvmpv', 'probe']; "
        "from kvmpv.cli import entry_point; entry_point()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_ENV
    assert one_error_line(proc.stderr) == "kvmpv: error: kvmpv needs Linux; this is sunos5"


@pytest.fixture
def device_copy() -> Iterator[str]:
    """A chmod-000 copy of /dev/kvm made with mknod in a temp dir uid 65534 can enter."""
    if not os.path.exists("/dev/kvm"):
        pytest.skip("no /dev/kvm to copy")
    tmp = tempfile.mkdtemp(prefix="kvmpv-test-")
    try:
        os.chmod(tmp, 0o755)
        node = os.path.join(tmp, "kvm")
        os.mknod(node, 0o000 | stat.S_IFCHR, os.stat("/dev/kvm").st_rdev)
        yield node
    finally:
        shutil.rmtree(tmp)


@pytest.mark.parametrize("which", ["dev-kvm", "mknod-copy"])
def test_permission_denied_unprivileged(
    which: str, request: pytest.FixtureRequest, nobody: Nobody
) -> None:
    env = {"PYTHONPATH": nobody.tree}
    if which == "mknod-copy":
        env[KVM_DEV_ENV] = request.getfixturevalue("device_copy")
    elif not os.path.exists("/dev/kvm") or os.stat("/dev/kvm").st_mode & 0o006:
        pytest.skip("/dev/kvm missing or usable by everyone")
    proc = run_kvmpv(
        ["probe", "--require", "kvm"], env, prefix=nobody.argv[:-1], python=nobody.argv[-1]
    )
    assert proc.returncode == EXIT_ENV, proc.stderr
    assert "Traceback" not in proc.stderr
    line = one_error_line(proc.stderr)
    assert "EACCES" in line and "permission denied" in line
    # The probe still reported the facts it could get.
    assert "denied" in proc.stdout


def test_a_bug_is_one_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected exception is no traceback and no exit 1 ("a check failed")."""
    from kvmpv.commands import probe as probe_cmd

    def boom(args: Any) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(probe_cmd, "run", boom)
    assert main(["probe"]) == 70
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("kvmpv: internal error: ZeroDivisionError: division by zero")
    assert "test_cli.py" not in line  # the innermost *kvmpv* frame is named
    assert "(at cli.py:" in line


@pytest.mark.parametrize("bad", [None, ["a", "b"], "x", [{"mode": "async"}]])
def test_compare_on_a_wrong_typed_warmup_cycles_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: Any
) -> None:
    import json

    good = REPO / "fixtures" / "results" / "baseline.json"
    doc = json.loads(good.read_text())
    doc["reboot"][0]["warmup_cycles"] = bad
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    for argv in (["compare", str(good), str(broken)], ["report", str(broken)]):
        assert main(argv) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "warmup_cycles" in line and "invalid results file" in line


# --------------------------------------------------------------------------
# Reports on every way out (a CI timeout is a SIGTERM or SIGINT)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("signo, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_check_interrupted_mid_run_still_writes_both_reports(
    tmp_path: Path, signo: int, code: int
) -> None:
    import json
    import xml.etree.ElementTree as ET

    junit_path, json_path = tmp_path / "check.xml", tmp_path / "check.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmpv", "check", "--backend", "both",
         "--junit", str(junit_path), "--json", str(json_path)],
        cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:  # until three results are out
        if line.startswith(("ok 3 ", "not ok 3 ")):
            break
    proc.send_signal(signo)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    doc = json.loads(json_path.read_text())
    assert doc["interrupted"] is True and "interrupted by signal" in doc["bail_out"]
    assert len(doc["results"]) >= 3 and doc["plan"] > len(doc["results"])
    suite = ET.fromstring(junit_path.read_text()).find("testsuite")
    assert suite is not None
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["interrupted"] == "true" and int(suite.get("tests", "0")) >= 3
    assert "Bail out! interrupted by signal" in rest


def test_check_interrupted_before_the_first_check_writes_empty_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from kvmpv.scenarios import check as chk

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("kvmpv.commands.check.run_checks", interrupted)
    monkeypatch.setattr(chk, "run_checks", interrupted)
    j, x = tmp_path / "c.json", tmp_path / "c.xml"
    assert main(["check", "--json", str(j), "--junit", str(x)]) == 130
    doc = json.loads(j.read_text())
    assert doc["interrupted"] and doc["results"] == []
    assert "before the first check" in doc["bail_out"] and x.exists()


def test_check_refuses_an_unwritable_report_path_before_any_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--junit", str(tmp_path / "missing" / "c.xml")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no check ran
    assert "cannot write" in one_error_line(captured.err)


def test_a_string_schema_version_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    doc = json.loads((REPO / "fixtures" / "results" / "baseline.json").read_text())
    doc["schema_version"] = "1"
    bad = tmp_path / "v.json"
    bad.write_text(json.dumps(doc))
    assert main(["report", str(bad)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "schema_version must be a number, not str '1'" in line


def test_reboot_interrupted_still_writes_its_json(tmp_path: Path) -> None:
    import json

    out = tmp_path / "reboot.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmpv", "reboot", "--backend", "sim", "--memory", "1G",
         "--cycles", "500", "--json", str(out)],
        cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if " cycle 3/" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    doc = json.loads(out.read_text())
    assert doc["interrupted"] == 2 and 3 <= len(doc["cycles"]) < 1000
    assert doc["simulated"] is True
