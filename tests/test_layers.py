# SPDX-License-Identifier: GPL-2.0-only
"""The package's layers import only downward (README, "Layout").

A module may import from its own layer or the ones below it, never above:
that is what lets a reader find their room and know what they may touch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "kvmpv"

#: Top-level module or subpackage -> layer (README table, top to bottom).
LAYER = {
    "__init__": 0, "uapi": 0, "errors": 0, "units": 0, "closing": 0,
    "syscalls": 1, "sim": 1, "memory": 1, "pgste": 1, "seimage": 1,
    "kvm": 2, "runner": 2, "x86guest": 2, "s390guest": 2,
    "pv": 3, "teardown": 3, "accounting": 3,
    "report": 4,
    "scenarios": 5,
    "commands": 6, "cli": 6,
    "__main__": 7,
}  # fmt: skip


def _layer(dotted: str) -> int:
    # A name that is no module (``from . import __version__``) is an attribute
    # of the package root, layer 0; modules missing from LAYER are caught by
    # test_every_module_has_a_layer.
    parts = dotted.split(".")
    return LAYER.get(parts[1], 0) if len(parts) > 1 else 0


def _relative_imports(path: Path) -> list[str]:
    return _relative_imports_at(path, PKG)


def _relative_imports_at(path: Path, pkg: Path) -> list[str]:
    rel = path.relative_to(pkg.parent).with_suffix("")
    package = list(rel.parts[:-1])  # the package this module lives in
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            if node.module:
                out.append(".".join([*base, node.module]))
            else:
                out += [".".join([*base, alias.name]) for alias in node.names]
    return out


MODULES = sorted(PKG.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    for path in MODULES:
        top = path.relative_to(PKG).parts[0].removesuffix(".py")
        assert top in LAYER, f"{path}: add it to the README layout table and to LAYER"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_downward(path: Path) -> None:
    me = _layer(".".join(path.relative_to(PKG.parent).with_suffix("").parts))
    upward = [t for t in _relative_imports(path) if _layer(t) > me]
    assert not upward, f"imports from a higher layer: {upward}"


def test_the_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "kvmpv" / "uapi.py"
    bad.parent.mkdir()
    bad.write_text("from .scenarios import check\n")
    imports = _relative_imports_at(bad, tmp_path / "kvmpv")
    assert imports == ["kvmpv.scenarios"]
    assert _layer(imports[0]) > _layer("kvmpv.uapi")
