# SPDX-License-Identifier: GPL-2.0-only
"""The simulator's kernel functions: named, documented, and the only override points.

``kvmpv.sim.KERNEL_FUNCTIONS`` lists the methods of ``SimulatedHost`` that
model a kernel function; a deviating simulator overrides those and nothing
else (``overridden_kernel_functions``).  The deviations of
tests/_deviating.py and tests/_kworker.py are the first users; the
regression corpus will be the next.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

import kvmpv.sim as sim
from kvmpv.sim import KERNEL_FUNCTIONS, SimulatedHost, overridden_kernel_functions

SIM = Path(sim.__file__).resolve().parent


def test_every_kernel_function_is_a_method_that_names_its_kernel_function() -> None:
    assert len(KERNEL_FUNCTIONS) >= 30
    for name, where in KERNEL_FUNCTIONS.items():
        method = getattr(SimulatedHost, name, None)
        assert callable(method), f"{name}: no such SimulatedHost method"
        doc = inspect.getdoc(method) or ""
        # the docstring says which kernel function (or UV call) it models
        assert f"{name}()" in doc.split("\n\n")[0], f"{name}: docstring {doc[:60]!r}"
        assert where.startswith(("arch/s390/", "virt/kvm/", "Ultravisor firmware")), where


def test_each_kernel_function_lives_in_the_module_named_for_its_file() -> None:
    owners: dict[str, str] = {}
    for path in sorted(SIM.glob("*.py")):
        tree = ast.parse(path.read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and fn.name in KERNEL_FUNCTIONS:
                    assert fn.name not in owners, f"{fn.name} defined twice"
                    owners[fn.name] = path.stem
    assert set(owners) == set(KERNEL_FUNCTIONS)
    for name, module in owners.items():
        mod = getattr(sim, module)
        assert name in mod.KERNEL_FUNCTIONS, f"{name} is in {module}.py, listed elsewhere"


def test_no_simulator_module_is_a_wall() -> None:
    # issue 24: no file under kvmpv/sim/ above 800 lines, SimulatedHost < 300
    for path in SIM.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 800, path.name
    src, _first = inspect.getsourcelines(SimulatedHost)
    assert len(src) < 300


def _deviations() -> list[type[Any]]:
    from _deviating import all_deviations
    from _kworker import KworkerPerformHost

    # every one, not only the SimulatedHost subclasses: a deviation of another
    # shape (a wrapper at the syscall boundary) fails the test below
    return [*all_deviations(), KworkerPerformHost]


@pytest.mark.parametrize("cls", _deviations(), ids=lambda c: c.__name__)
def test_deviations_override_kernel_functions_only(cls: type[Any]) -> None:
    names = overridden_kernel_functions(cls)
    assert names, f"{cls.__name__} overrides no kernel function"


def test_overriding_a_helper_is_refused() -> None:
    class ClearsNothing(SimulatedHost):
        def _clear(self, addr: int, length: int) -> None:  # a helper, no kernel function
            pass

    with pytest.raises(TypeError, match="_clear"):
        overridden_kernel_functions(ClearsNothing)
    with pytest.raises(TypeError, match="not a SimulatedHost subclass"):
        overridden_kernel_functions(int)


def test_an_override_takes_effect() -> None:
    # The way a deviation works: the override is what the ioctl path calls.
    from kvmpv import uapi
    from kvmpv.kvm import Kvm

    class NoAsyncCap(SimulatedHost):
        def kvm_vm_ioctl_check_extension(self, cap: int) -> int:
            if cap == uapi.KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE:
                return 0
            return super().kvm_vm_ioctl_check_extension(cap)

    assert overridden_kernel_functions(NoAsyncCap) == ["kvm_vm_ioctl_check_extension"]
    cap = uapi.KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE
    with Kvm(sys=SimulatedHost()) as kvm:
        assert kvm.check_cap(cap) == 1
    with Kvm(sys=NoAsyncCap()) as kvm:
        assert kvm.check_cap(cap) == 0
