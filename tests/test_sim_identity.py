# SPDX-License-Identifier: GPL-2.0-only
"""benchmarks/sim_identity.py: timings are ignored, every other difference is not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sim_identity.py"


@pytest.fixture(scope="module")
def ident() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sim_identity", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _record(d: Path, *, reboot_s: float, cgroup: str, rrc: int, reason: str) -> Path:
    d.mkdir()
    check = {"results": [{"name": "x", "duration_s": reboot_s, "diagnostics": [reason]}]}
    reboot = {
        "accounting": {"vm_cgroup": cgroup},
        "cycles": [{"reboot_latency_s": reboot_s, "verdict_detail": {"charged_ns": 7}}],
    }
    calls: dict[str, Any] = {"x": [[["Create Secure Configuration", 256, 0, 0, 1, rrc, 0]]] * 2}
    (d / "check.json").write_text(json.dumps(check))
    (d / "reboot.json").write_text(json.dumps(reboot))
    (d / "uv_calls.json").write_text(json.dumps(calls))
    return d


def test_timings_and_cgroup_names_are_not_differences(
    ident: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _record(
        tmp_path / "a",
        reboot_s=0.1,
        cgroup="kvmpv-vm-p1n2-abc",
        rrc=0,
        reason="took 3.1 ms (101.4%) {'s': 0.0001, 'rc': 1}",
    )
    b = _record(
        tmp_path / "b",
        reboot_s=0.7,
        cgroup="kvmpv-vm-p9n2-def",
        rrc=0,
        reason="took 12 ms (99%) {'s': 2e-05, 'rc': 1}",
    )
    assert ident.compare(a, b) == 0
    assert "0 difference(s)" in capsys.readouterr().out


def test_a_uv_call_or_a_result_that_differs_is_found(ident: ModuleType, tmp_path: Path) -> None:
    a = _record(tmp_path / "a", reboot_s=0.1, cgroup="c", rrc=0, reason="rc 0x1")
    b = _record(tmp_path / "b", reboot_s=0.1, cgroup="c", rrc=5, reason="rc 0x1")
    c = _record(tmp_path / "c", reboot_s=0.1, cgroup="c", rrc=0, reason="rc 0x2")
    assert ident.compare(a, b) == 1
    assert ident.compare(a, c) == 1


def test_main_exit_code(ident: ModuleType, tmp_path: Path) -> None:
    a = _record(tmp_path / "a", reboot_s=0.1, cgroup="c", rrc=0, reason="r")
    b = _record(tmp_path / "b", reboot_s=0.1, cgroup="c", rrc=1, reason="r")
    assert ident.main(["compare", str(a), str(a)]) == 0
    assert ident.main(["compare", str(a), str(b)]) == 1
