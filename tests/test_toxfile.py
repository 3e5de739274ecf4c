# SPDX-License-Identifier: GPL-2.0-only
"""toxfile.py (tox's inline plugin): pyenv's interpreters for ``pyXY`` envs,
newest patch release first, only runnable ones, after tox's own candidate."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import ROOT

# tox runs on the host: the s390x root (tests/s390x/run.py) gets no toxfile.py
# and no tox; there this module says so.  Everywhere else both are present
# (tox.ini's deps), and under KVMPV_REQUIRE_PRIVILEGED=1 a skip here fails.
if not (ROOT / "toxfile.py").exists():
    pytest.skip("toxfile.py is not in this copy of the tree (the s390x root)",
                allow_module_level=True)  # fmt: skip
pytest.importorskip("tox", reason="tox is not installed here (the s390x root)")
sys.path.insert(0, str(ROOT))
import toxfile


def _fake_python(root: Path, version: str, runnable: bool = True) -> Path:
    major_minor = ".".join(version.split(".")[:2])
    exe = root / "versions" / version / "bin" / f"python{major_minor}"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755 if runnable else 0o644)
    return exe


def test_pyenv_interpreters_newest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    old = _fake_python(tmp_path, "3.9.2")
    new = _fake_python(tmp_path, "3.9.18")
    _fake_python(tmp_path, "3.9.20", runnable=False)
    _fake_python(tmp_path, "3.10.13")
    assert toxfile.pyenv_interpreters("3", "9") == [str(new), str(old)]
    assert toxfile.pyenv_interpreters("3", "8") == []


def test_env_config_gets_the_path_name_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    exe = _fake_python(tmp_path, "3.9.18")

    class Conf:
        def __init__(self, name: str) -> None:
            self.name = name
            self.loaders: list[object] = []

    py39, lint = Conf("py39"), Conf("lint")
    toxfile.tox_add_env_config(py39, None)  # type: ignore[arg-type]
    toxfile.tox_add_env_config(lint, None)  # type: ignore[arg-type]
    assert lint.loaders == []
    (loader,) = py39.loaders
    assert loader.raw == {"base_python": ["python3.9", str(exe)]}  # type: ignore[attr-defined]
    assert os.access(exe, os.X_OK)
