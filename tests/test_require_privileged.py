# SPDX-License-Identifier: GPL-2.0-only
"""KVMPV_REQUIRE_PRIVILEGED=1 turns every skip not on tests/skip_allowlist.py into a failure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import skip_allowlist
from conftest import ROOT, tree_env

PROBE = '''
import pytest

def test_root_only():
    pytest.skip("needs root (cgroups, taskstats)")

def test_memory():
    pytest.skip("MemAvailable 900 MiB < 2048 MiB")

def test_tool():
    pytest.skip("strace not installed (and could not be installed with apt-get)")

def test_not_a_pv_host():
    pytest.skip("not a PV host: KVM_CAP_S390_PROTECTED (180) = 0 (x86_64, Linux 6.1)")

@pytest.mark.skipif(True, reason="simulator only: a gate inside PERFORM")
def test_sim_only_marker():
    pass

def test_passes():
    pass
'''
#: a whole module skipped at import: a collection report, not a test report
PROBE_MODULE_SKIP = """
import pytest
pytest.importorskip("kvmpv_no_such_module_anywhere")

def test_never_collected():
    pass
"""


def _run(tmp_path: Path, require: str, probe: str = PROBE) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe_skips.py").write_text(probe)
    env = tree_env(PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}", KVMPV_REQUIRE_PRIVILEGED=require)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-p", "conftest",
         str(tmp_path / "test_probe_skips.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_skips_fail_unless_allow_listed_only_when_required(tmp_path: Path) -> None:
    relaxed = _run(tmp_path, "0")
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 passed, 5 skipped" in relaxed.stdout, relaxed.stdout
    assert "skips accepted by" not in relaxed.stdout
    strict = _run(tmp_path, "1")
    out = strict.stdout
    assert strict.returncode == 1, out
    # root, memory and tool skips fail; the two listed ones stay skips
    assert "3 failed, 1 passed, 2 skipped" in out, out
    for name in ("test_root_only", "test_memory", "test_tool"):
        assert re.search(rf"FAILED .*::{name}\b", out), (name, out)
    assert "not on the allow-list" in out and "MemAvailable 900 MiB" in out
    # The accepted ones are printed at the end, with the entry's reason.
    start = out.index("skips accepted by tests/skip_allowlist.py")
    summary = out[start : out.index("short test summary info", start)]
    assert "test_probe_skips.py::test_not_a_pv_host: not a PV host" in summary, summary
    assert "test_probe_skips.py::test_sim_only_marker: simulator only" in summary, summary
    assert "Secure Execution host" in summary  # the allow-list entry's "why"
    assert "test_memory" not in summary and "test_root_only" not in summary


def test_a_module_skipped_at_import_fails_the_collection(tmp_path: Path) -> None:
    relaxed = _run(tmp_path, "0", PROBE_MODULE_SKIP)
    # nothing collected (exit 5), the module a skip
    assert relaxed.returncode == 5 and "1 skipped" in relaxed.stdout, relaxed.stdout
    strict = _run(tmp_path, "1", PROBE_MODULE_SKIP)
    # a collection error: pytest stops before running anything (exit 2)
    assert strict.returncode == 2, strict.stdout
    assert "ERROR collecting test_probe_skips.py" in strict.stdout, strict.stdout
    assert "not on the allow-list" in strict.stdout
    assert "kvmpv_no_such_module_anywhere" in strict.stdout


@pytest.mark.parametrize(
    "reason",
    [
        "not a PV host: KVM_CAP_S390_PROTECTED (180) = 0",
        "not a PV host: KVM_CAP_S390_PROTECTED (180) = 0 (x86_64, Linux 6.18.44)",
        "needs s390x, this is x86_64",
        "simulator only: fault injection of Destroy Secure CPU (UVC 0x0121)",
        "KVMPV_EXPECT_S390X is not 1: not the s390x env (tox -e s390x sets it)",
        "the exec chain needs s390x (tox -e s390x: qemu-user)",
        "sync: no memory counter in the worker's v2 cgroup, memory after release not checked: "
        "memory controller not enabled in /sys/fs/cgroup/unified/cgroup.subtree_control",
    ],
)
def test_what_ci_cannot_be_is_listed(reason: str) -> None:
    assert skip_allowlist.allowed(reason) is not None


@pytest.mark.parametrize(
    "reason",
    [
        # the reasons the tests give (issue 28, item 4): CI has all of these
        "needs root (cgroups, taskstats)",
        "native cleaner unavailable: libkvmpv-cleaner.so not built",
        "native cleaner: not built here",
        "no cleaner ran: not built here",
        "MemAvailable 900 MiB < 2 GiB",
        "MemAvailable 900 MiB < 1024 MiB",
        "needs 8 GiB available",
        "needs 2048 MiB free, 900 MiB available",
        "setpriv (util-linux) not installed",
        "uid 65534 cannot run a Python interpreter that imports kvmpv from /tmp/x",
        "release too fast (0.4 ms) to observe the helper task",
        "strace not installed (and could not be installed with apt-get)",
        "qemu-system-x86_64 not found (Debian: apt-get install qemu-system-x86)",
        "qemu-system-s390x not installed (qemu-system-misc)",
        "avocado not installed (pip install avocado-framework; tox installs it)",
        "THP mode is 'never': MADV_HUGEPAGE has no effect",
        "no usable /dev/kvm: open /dev/kvm: ENOENT",
        "cgroup v1 not mounted here: None",
        "no statically linked program on this host",
        # an s390x root's arch in the reason must not slip through the x86 entries
        "needs s390x, this is s390x (but broken)",
        "not a PV host: KVM_CAP_S390_PROTECTED (180) = 1",
        # a cgroup2-only host can enable the memory controller
        "no memory counter: memory controller not enabled in /sys/fs/cgroup/cgroup.subtree_control",
    ],
)
def test_what_ci_has_is_not_listed(reason: str) -> None:
    assert skip_allowlist.allowed(reason) is None, reason


def test_every_entry_says_why() -> None:
    assert skip_allowlist.ALLOWED
    for entry in skip_allowlist.ALLOWED:
        re.compile(entry.pattern)
        assert len(entry.why) > 20, entry


def test_the_s390x_env_fails_instead_of_skipping_when_required(tmp_path: Path) -> None:
    # No qemu-s390x-static on an empty PATH (or not root): the env cannot run.
    # (Host-side: inside the s390x env itself run.py would run pytest natively.)
    if os.environ.get("KVMPV_EXPECT_S390X") == "1":
        pytest.skip("host-side check of tox -e s390x; this is inside that env")
    run_py = ROOT / "tests" / "s390x" / "run.py"
    for require, code, word in (("0", 0, "SKIP"), ("1", 1, "FAIL")):
        env = {"PATH": str(tmp_path), "KVMPV_REQUIRE_PRIVILEGED": require}
        r = subprocess.run([sys.executable, str(run_py)], env=env, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
        assert r.returncode == code, (require, r.stdout, r.stderr)
        assert r.stdout.startswith(f"{word}: s390x: "), r.stdout

