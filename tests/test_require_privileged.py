# SPDX-License-Identifier: GPL-2.0-only
"""KVMPV_REQUIRE_PRIVILEGED=1 turns a skip for want of privilege into a failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, tree_env

PROBE = '''
import pytest

def test_root_only():
    pytest.skip("needs root (cgroups, taskstats)")

def test_not_a_pv_host():
    pytest.skip("not a PV host: KVM_CAP_S390_PROTECTED (180) = 0")
'''


def _run(tmp_path: Path, require: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe_skips.py").write_text(PROBE)
    env = tree_env(PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}", KVMPV_REQUIRE_PRIVILEGED=require)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "conftest",
         str(tmp_path / "test_probe_skips.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_privilege_skips_fail_only_when_required(tmp_path: Path) -> None:
    relaxed = _run(tmp_path, "0")
    assert relaxed.returncode == 0 and "2 skipped" in relaxed.stdout, relaxed.stdout
    strict = _run(tmp_path, "1")
    assert strict.returncode == 1, strict.stdout
    assert "1 failed, 1 skipped" in strict.stdout, strict.stdout
    assert "KVMPV_REQUIRE_PRIVILEGED=1" in strict.stdout
