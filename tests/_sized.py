# SPDX-License-Identifier: GPL-2.0-only
"""Teardowns sized by time for the verdict tests (kvmpv.accounting.sizing).

A process exit's teardown:

``exit_teardown(size, spawn)`` runs the child of ``_accounting_child.py``
(touch ``size`` bytes, wait, ``_exit``) and returns the CPU its exit cost:
its wait4 runtime minus the runtime it had before it was told to exit
(``/proc/PID/schedstat``, read while it blocks).  ``verdict_size(tol)``
grows that teardown until it takes ``target_work_ns(tol)`` on this machine
(kvmpv.accounting.sizing), once per tolerance per test session: the verdict
tests free that many bytes instead of a fixed gigabyte, which a machine
twice as fast as the one they were written on made inconclusive.

The simulated reboot's: ``sim_reboot_size()`` grows a synchronous simulated
reboot (the simulator clears at memset speed) until its teardown takes ten
``TOTALS_TOLERANCE_NS``, the reboot verdict's tolerance.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from kvmpv.accounting import TOTALS_TOLERANCE_NS, Sizing, reap, size_by_time, target_work_ns
from kvmpv.memory import mem_available
from kvmpv.units import GiB, MiB

CHILD = str(Path(__file__).resolve().parent / "_accounting_child.py")


def schedstat_ns(pid: int) -> int:
    """sum_exec_runtime of a live task in ns (precise, no tick sampling)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def exit_teardown(
    size: int,
    wrap: Callable[[list[str]], Sequence[str]] = lambda argv: argv,
    before_exit: Callable[[int], None] = lambda pid: None,
    after_exit: Callable[[], None] = lambda: None,
) -> int:
    """The exit-time teardown CPU of a child that touched ``size`` bytes.

    ``wrap`` turns the child's argv into the one to run (a cgroup's
    ``spawn_argv``); ``before_exit(pid)`` runs while it blocks, just before it
    is told to exit; ``after_exit()`` right after it was reaped.
    """
    p = subprocess.Popen(
        list(wrap([sys.executable, CHILD, "touch", str(size)])),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().strip() == "touched"
        before_exit(p.pid)
        before = schedstat_ns(p.pid)  # the child is blocked in readline()
        p.stdin.write("exit\n")
        p.stdin.flush()
        ru = reap(p.pid)
        assert ru is not None and ru.exit_code == 0
        p.returncode = 0
        after_exit()
    finally:
        if p.returncode is None:
            p.kill()
            p.wait()
        for f in (p.stdin, p.stdout):
            if f:
                f.close()
    # Runtime minus runtime: the zombie's process clock (reap()), like the
    # schedstat reading before.  Not wait4's utime+stime: on s390 that is
    # CPU-timer time (CONFIG_VIRT_CPU_ACCOUNTING_NATIVE, not rescaled by
    # cputime_adjust), and the difference of the two counters failed the
    # charged/not-charged verdicts in Linux 6.1 under TCG.
    assert ru.runtime_ns is not None, "the exited child's CPU clock was unreadable"
    return ru.runtime_ns - before


@functools.cache
def _sizing(target_ns: int) -> Sizing:
    # Half of MemAvailable: one child at a time, the rest for the machine.
    return size_by_time(
        exit_teardown, target_ns=target_ns, start_bytes=256 * MiB,
        limit_bytes=mem_available() // 2,
    )  # fmt: skip


def sized_for(target_ns: int) -> Sizing:
    """The size whose exit teardown takes ``target_ns`` here, and the work
    measured at it; SKIP with the numbers when this host cannot hold that much."""
    s = _sizing(target_ns)
    if not s.reached:
        pytest.skip(f"MemAvailable: a decisive exit teardown needs more memory: {s.describe()}")
    return s


def verdict_sizing(tolerance_ns: int) -> Sizing:
    """The size whose exit teardown takes a decisive time for a verdict at
    ``tolerance_ns`` (``target_work_ns``), and the work measured at it."""
    return sized_for(target_work_ns(tolerance_ns))


def verdict_size(tolerance_ns: int) -> int:
    """Bytes whose exit teardown takes a decisive time here (see verdict_sizing)."""
    return verdict_sizing(tolerance_ns).size_bytes


def sim_layout(size: int) -> tuple[tuple[int, int], ...]:
    """64 MiB low (PREPARE's), the rest above 2 GiB (PERFORM's)."""
    return ((0, 64 * MiB), (2 * GiB, size - 64 * MiB))


@functools.cache
def _sim_sizing() -> Sizing:
    from kvmpv.scenarios.reboot import RebootRequest, run_reboot

    def sync_teardown(size: int) -> int:
        req = RebootRequest(backend="sim", layout=sim_layout(size), cycles=1, mode="sync", warmup=1)
        return run_reboot(req).cycles[0].cleanup_cpu_ns

    return size_by_time(
        sync_teardown, target_ns=target_work_ns(TOTALS_TOLERANCE_NS), start_bytes=256 * MiB,
        limit_bytes=min(mem_available() // 3, 16 * GiB),
    )  # fmt: skip


def sim_reboot_size() -> int:
    """Guest bytes whose simulated teardown takes a decisive time here; SKIP
    with the numbers when this host cannot hold that much."""
    s = _sim_sizing()
    if not s.reached:
        pytest.skip(f"MemAvailable: a decisive simulated teardown needs more: {s.describe()}")
    return s.size_bytes
