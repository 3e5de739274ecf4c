# SPDX-License-Identifier: GPL-2.0-only
"""The package's layers import only downward (docs/development.md, "Layout").

A module may import from its own layer or the ones below it, never above:
that is what lets a reader find their room and know what they may touch.
Every way of importing counts: relative (``from ..x import y``), absolute
(``import kvmpv.x``, ``from kvmpv.x import y``, ``from kvmpv import x``) and
dynamic (``importlib.import_module("kvmpv.x")`` or ``("..x", __package__)``,
``__import__("kvmpv.x")``) with a literal module name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "kvmpv"

#: Top-level module or subpackage -> layer (docs/development.md table, top to bottom).
LAYER = {
    "__init__": 0, "uapi": 0, "errors": 0, "units": 0, "closing": 0, "stats": 0,
    "syscalls": 1, "sim": 1, "memory": 1, "pgste": 1, "seimage": 1, "sehdr": 1,
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


def _imports(path: Path) -> list[str]:
    return _imports_at(path, PKG)


def _resolve(package: list[str], name: str) -> str:
    """``..x`` seen from ``package`` (a relative name) as a dotted absolute one."""
    level = len(name) - len(name.lstrip("."))
    rest = name[level:]
    base = package[: len(package) - level + 1]
    return ".".join([*base, rest] if rest else base)


def _imports_at(path: Path, pkg: Path) -> list[str]:
    """Every kvmpv module ``path`` imports, however it spells the import."""
    rel = path.relative_to(pkg.parent).with_suffix("")
    package = list(rel.parts[:-1])  # the package this module lives in
    root = pkg.name
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve(package, "." * node.level + (node.module or ""))
            elif node.module and (node.module == root or node.module.startswith(root + ".")):
                base = node.module
            else:
                continue
            if node.module and base != root:
                out.append(base)
            else:  # from . import x / from kvmpv import x: x may be a module
                out += [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == root]
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                target = str(arg.value)
                if target.startswith("."):
                    out.append(_resolve(package, target))
                elif target.split(".")[0] == root:
                    out.append(target)
    return out


MODULES = sorted(PKG.rglob("*.py"))

#: Inside the simulator (kvmpv/sim/__init__.py, "The package"): one module per
#: kernel file, stacked; a module imports only from its own level or below.
SIM_LAYER = {
    "uvc": 0, "ranges": 0, "records": 0, "locks": 0,
    "kvm_host": 1,
    "core": 2,
    "uv": 3,
    "gmap": 4,
    "pv": 5,
    "interrupt": 6,
    "intercept": 7,
    "kvm_s390": 8,
    "__init__": 9,
}  # fmt: skip
SIM_MODULES = sorted((PKG / "sim").glob("*.py"))


def test_every_module_has_a_layer() -> None:
    for path in MODULES:
        top = path.relative_to(PKG).parts[0].removesuffix(".py")
        assert top in LAYER, f"{path}: add it to docs/development.md's layout table and to LAYER"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_downward(path: Path) -> None:
    me = _layer(".".join(path.relative_to(PKG.parent).with_suffix("").parts))
    upward = [t for t in _imports(path) if _layer(t) > me]
    assert not upward, f"imports from a higher layer: {upward}"


def test_every_sim_module_has_a_level() -> None:
    assert SIM_MODULES
    for path in SIM_MODULES:
        assert path.stem in SIM_LAYER, f"{path}: add it to SIM_LAYER and kvmpv/sim/__init__.py"


@pytest.mark.parametrize("path", SIM_MODULES, ids=lambda p: p.name)
def test_sim_modules_import_downward(path: Path) -> None:
    me = SIM_LAYER[path.stem]
    inside = [t for t in _imports(path) if t.startswith("kvmpv.sim.")]
    upward = [t for t in inside if SIM_LAYER.get(t.split(".")[2], 99) > me]
    assert not upward, f"imports from a higher simulator level: {upward}"


def test_the_sim_check_can_fail(tmp_path: Path) -> None:
    # The Ultravisor importing the ioctl layer above it is seen.
    bad = tmp_path / "kvmpv" / "sim" / "uv.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from .kvm_s390 import KvmS390\nfrom . import pv\n")
    imports = _imports_at(bad, tmp_path / "kvmpv")
    assert imports == ["kvmpv.sim.kvm_s390", "kvmpv.sim.pv"]
    assert all(SIM_LAYER[t.split(".")[2]] > SIM_LAYER["uv"] for t in imports)


@pytest.mark.parametrize(
    "source",
    [
        "from .scenarios import check\n",
        "import kvmpv.scenarios.check\n",
        "from kvmpv.scenarios.check import run_checks\n",
        "from kvmpv import scenarios\n",
        "import importlib\nimportlib.import_module('kvmpv.scenarios.check')\n",
        "import importlib\nimportlib.import_module('.scenarios', __package__)\n",
        "__import__('kvmpv.scenarios')\n",
    ],
)
def test_the_check_can_fail(tmp_path: Path, source: str) -> None:
    # An upward import from the lowest layer, spelled every way: each is seen.
    bad = tmp_path / "kvmpv" / "uapi.py"
    bad.parent.mkdir()
    bad.write_text(source)
    imports = _imports_at(bad, tmp_path / "kvmpv")
    assert imports and all(t.startswith("kvmpv.scenarios") for t in imports), imports
    assert _layer(imports[0]) > _layer("kvmpv.uapi")
