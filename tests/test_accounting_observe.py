# SPDX-License-Identifier: GPL-2.0-only
"""Exit times (pidfd, proc connector), wait4 rusage, per-thread CPU time
(taskstats on a TID, RUSAGE_THREAD, the thread CPU clock), and the taskstats
exit-record trap: the record is sent before exit_mm(), so it misses the
address-space teardown that wait4 and the cgroup counters include."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _sized import schedstat_ns, verdict_sizing
from conftest import needs_root

from kvmpv.accounting import (
    AccountingUnavailable,
    ExitRecordListener,
    ExitWatcher,
    Outcome,
    TaskStatsClient,
    cgroup_scope,
    default_tolerance_ns,
    judge_charged,
    pidfd_open,
    reap,
    thread_cpu_ns,
    thread_times,
    tick_ns,
    wait_pidfd,
    zombie_runtime_ns,
)
from kvmpv.accounting import cgroups as cgmod

CHILD = str(Path(__file__).resolve().parent / "_accounting_child.py")
MS = 1_000_000
#: /proc/PID/stat counts CPU time in clock ticks (USER_HZ)
CLK_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _burn(ns: int) -> None:
    end = thread_cpu_ns() + ns
    while thread_cpu_ns() < end:
        pass


def test_thread_cpu_clock_and_rusage_thread() -> None:
    out: dict[str, int] = {}

    def worker() -> None:
        t0 = thread_times()
        _burn(100 * MS)
        d = thread_times() - t0
        out.update(cpu=d.cpu_ns, user=d.user_ns, sys=d.system_ns)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert 100 * MS <= out["cpu"] < 150 * MS
    # RUSAGE_THREAD is tick-split but sums to about the same runtime
    assert judge_charged(out["cpu"], out["user"] + out["sys"]).outcome is Outcome.CHARGED


def test_pidfd_exit_time_and_wait4_rusage() -> None:
    p = subprocess.Popen([sys.executable, CHILD, "burn", "60"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None and p.stdin is not None
    fd = pidfd_open(p.pid)
    try:
        assert p.stdout.readline().strip() == "burnt"
        assert wait_pidfd(fd, 0.05) is None  # still alive: timeout, no guess
        sent = time.monotonic_ns()
        p.stdin.write("x\n")
        p.stdin.flush()
        woke = wait_pidfd(fd, 10)
        assert woke is not None and woke >= sent
        ru = reap(p.pid)
        p.returncode = 0
        assert ru is not None and ru.exit_code == 0 and ru.reaped_ns >= woke
        # The 60 ms burn, as a total: the user/system split is tick-sampled and,
        # with steal time on this VM, a pure-user burn was seen as 25 ms user +
        # 50 ms system.  Totals are what the verdicts compare, too.
        assert ru.user_ns + ru.system_ns >= 50 * MS
    finally:
        os.close(fd)
        p.stdin.close()
        p.stdout.close()


def test_zombie_runtime_is_the_exited_childs_scheduler_runtime() -> None:
    """reap() reads the child's process CPU clock while it is a zombie: its
    whole runtime, the counter the cgroups charge (what the shutdown verdict
    compares on s390, where wait4's utime+stime is CPU-timer time)."""
    p = subprocess.Popen([sys.executable, CHILD, "burn", "60"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None and p.stdin is not None
    try:
        assert p.stdout.readline().strip() == "burnt"
        # running: no zombie to read, and nothing reaped
        assert zombie_runtime_ns(p.pid, nohang=True) is None
        p.stdin.write("x\n")
        p.stdin.flush()
        first = zombie_runtime_ns(p.pid)  # blocks until it exited; not reaped
        assert first is not None and first >= 60 * MS, first
        ru = reap(p.pid)
        p.returncode = 0
        assert ru is not None and ru.exit_code == 0
        assert ru.runtime_ns is not None and ru.runtime_ns >= first
        # a zombie runs no more: both reads within the last scheduling slice
        assert ru.runtime_ns - first < 5 * MS, (first, ru)
        if platform.machine() != "s390x":
            # cputime_adjust() scales utime+stime to the runtime here (not
            # on s390: CONFIG_VIRT_CPU_ACCOUNTING_NATIVE), to the µs per side
            assert abs(ru.cpu_ns - ru.runtime_ns) < 2 * MS + 2000, ru
        # reaped: the pid is no child of ours any more
        assert zombie_runtime_ns(p.pid, nohang=True) is None
    finally:
        p.stdin.close()
        p.stdout.close()


@needs_root
def test_exit_watcher_pidfd_and_proc_connector_agree() -> None:
    with ExitWatcher() as w:
        if w.connector is None:
            pytest.skip(f"proc connector unusable: {w.connector_reason}")
        before = time.monotonic_ns()
        p = subprocess.Popen([sys.executable, "-c", "pass"])
        w.watch(p.pid)
        rec = w.wait(p.pid, timeout_s=10, reap_child=True)
        p.returncode = 0
    assert rec.connector_ns is not None, rec.connector_reason
    assert rec.rusage is not None and rec.rusage.exit_code == 0
    # timestamp_ns is CLOCK_MONOTONIC: it lies between our own readings.
    assert before < rec.connector_ns <= rec.rusage.reaped_ns
    assert abs(rec.pidfd_ns - rec.connector_ns) < 100 * MS
    assert rec.exit_ns == rec.connector_ns
    print(f"\npidfd - connector: {(rec.pidfd_ns - rec.connector_ns) / 1e3:.0f} us")


def test_exit_watcher_without_connector_still_times_exits() -> None:
    with ExitWatcher(use_connector=False) as w:
        p = subprocess.Popen(["true"])
        w.watch(p.pid)
        rec = w.wait(p.pid, timeout_s=10, reap_child=True)
        p.returncode = 0
    assert rec.connector_ns is None and rec.connector_reason == "not requested"
    assert rec.exit_ns == rec.pidfd_ns and rec.rusage is not None


@needs_root
def test_taskstats_thread_query_matches_thread_clock() -> None:
    """TASKSTATS_CMD_GET on a TID (raw generic netlink, our own decode of v16)."""
    ready = threading.Event()
    release = threading.Event()
    seen: dict[str, int] = {}

    def worker() -> None:
        seen["tid"] = threading.get_native_id()
        _burn(120 * MS)
        seen["cpu"] = thread_cpu_ns()
        ready.set()
        release.wait(10)
        seen["cpu_after"] = thread_cpu_ns()

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert ready.wait(10)
        try:
            with TaskStatsClient() as c:
                rec = c.thread(seen["tid"])
                group = c.thread_group(os.getpid())
        except AccountingUnavailable as err:
            pytest.skip(err.reason)
    finally:
        release.set()
        t.join()
    assert rec.kind == "pid" and rec.id == seen["tid"] and rec.version >= 1
    assert rec.fields["ac_pid"] == seen["tid"]
    if rec.version >= 12:
        assert rec.fields["ac_tgid"] == os.getpid()  # a v12+ field pyroute2 0.9.7 drops
    # cpu_run_virtual_total is the runtime the thread clock reads, so the record
    # lies between the clock read before the query and the one after it.  (Not
    # "within 2 ms of the first read": set() and wait() run after it, and in a
    # guest whose vCPU the host preempts, as under TCG in tox -e s390x-kernel,
    # that took 13 ms.)
    assert seen["cpu"] <= rec.runtime_ns <= seen["cpu_after"], (rec.runtime_ns, seen)
    # cpu_run_real_total is the tick-sampled utime+stime in ns, not a runtime
    # (ac_utime/ac_stime are the same values truncated to µs):
    assert 0 <= rec.run_real_ns - (rec.utime_ns + rec.stime_ns) < 2000, rec
    assert group.kind == "tgid" and group.runtime_ns >= rec.runtime_ns


def _trap_once(hierarchy: str, size: int) -> dict[str, float]:
    with cgroup_scope(hierarchy) as scope, ExitRecordListener() as listener:
        vm = scope.create("vm")
        argv = vm.spawn_argv([sys.executable, CHILD, "touch", str(size)])
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdin is not None
        try:
            assert p.stdout.readline().strip() == "touched"
            # The window compared with the cgroup starts here, the child in
            # the cgroup and blocked: its runtime before it wrote itself into
            # cgroup.procs (fork, exec of sh) is in no counter of the cgroup
            # -- under TCG that was 22-74 ms.
            run0, cg0 = schedstat_ns(p.pid), vm.cpu()
            with open(f"/proc/{p.pid}/stat") as f:  # fields 14, 15: utime, stime in ticks
                stat = f.read().rsplit(")", 1)[1].split()
            utime0_ns, stime0_ns = int(stat[11]) * CLK_TICK_NS, int(stat[12]) * CLK_TICK_NS
            p.stdin.write("x\n")
            p.stdin.flush()
            exit_rec = listener.wait_for(p.pid, timeout_s=20)
            ru = reap(p.pid)
            p.returncode = 0
            assert ru is not None
            cg = vm.cpu()
        finally:
            if p.returncode is None:
                p.kill()
                p.wait()
            p.stdin.close()
            p.stdout.close()
    runtime_ns = ru.runtime_ns if ru.runtime_ns is not None else -(10**12)
    window = cg - cg0
    return {
        "taskstats_utime_ms": exit_rec.utime_ns / 1e6,
        "taskstats_stime_ms": exit_rec.stime_ns / 1e6,
        "taskstats_run_ms": exit_rec.runtime_ns / 1e6,
        "wait4_stime_ms": ru.system_ns / 1e6,
        "wait4_total_ms": ru.cpu_ns / 1e6,
        # the zombie's process clock: the runtime, as the cgroups count it
        "runtime_ms": runtime_ns / 1e6,
        "cgroup_sys_ms": cg.system_ns / 1e6,
        "cgroup_total_ms": cg.total_ns / 1e6,
        # from "touched" to the end: the child in the cgroup all along
        "window_runtime_ms": (runtime_ns - run0) / 1e6,
        "window_cgroup_ms": window.total_ns / 1e6,
        "window_wait4_stime_ms": (ru.system_ns - stime0_ns) / 1e6,
        "window_wait4_utime_ms": (ru.user_ns - utime0_ns) / 1e6,
        "window_cgroup_sys_ms": window.system_ns / 1e6,
    }


@needs_root
@pytest.mark.parametrize("hierarchy", ["v1", "v2"])
def test_taskstats_exit_record_misses_the_teardown(hierarchy: str) -> None:
    """4 KiB pages freed at exit: taskstats exit < runtime ~= cgroup.

    Sized by time (tests/_sized.py) to a teardown that the tick-split
    comparisons below can tell from tick noise on any machine: a fixed 1 GiB
    took ~100 ms where this was written and 25 ms on a machine twice as fast."""
    found = cgmod.discover_layouts()
    if not isinstance(found.get(hierarchy), cgmod.Layout):
        pytest.skip(f"cgroup {hierarchy} not mounted: {found.get(hierarchy)}")
    tick = tick_ns()
    sized = verdict_sizing(default_tolerance_ns())
    try:
        n = _trap_once(hierarchy, sized.size_bytes)
    except AccountingUnavailable as err:
        pytest.skip(err.reason)
    print(f"\n{hierarchy}: " + ", ".join(f"{k} {v:.1f}" for k, v in n.items()))
    tick_ms = tick / 1e6
    # 1. Precise runtimes (no tick sampling on either side): the exit record
    # stops before exit_mm(), wait4 and the cgroup do not.  The teardown is
    # sized to ten two-tick tolerances (80 ms at HZ=250): the record misses
    # most of it, far above any noise.
    # Runtime against runtime: the zombie's process clock (what update_curr()
    # also charges to the cgroup) against the cgroup's counter.  Not wait4's
    # utime+stime: on s390 (CONFIG_VIRT_CPU_ACCOUNTING_NATIVE) that is
    # CPU-timer time, unscaled, and was 22 ms off the cgroup's 3.3 s in Linux
    # 6.12 under TCG (tox -e s390x-kernel); elsewhere it equals the runtime.
    assert n["runtime_ms"] > 0, n
    missed_ms = n["runtime_ms"] - n["taskstats_run_ms"]
    assert missed_ms > 0.5 * sized.work_ns / 1e6 and missed_ms > 5 * tick / 1e6, (n, sized)
    # Over the window the child spent in the cgroup (see _trap_once):
    assert abs(n["window_cgroup_ms"] - n["window_runtime_ms"]) < 2 * tick_ms + 1, n
    # 2. System time.  The teardown is system time, but the splits are tick
    # samples (on s390 CPU-timer readings): taskstats ac_stime is the raw
    # value (tsacct.c, task_cputime), wait4 scales it to the runtime
    # (cputime_adjust) except on s390, where thread_group_cputime_adjusted()
    # returns it raw.  Scale both the same way before comparing; under steal
    # time raw samples overshoot.
    scale = n["runtime_ms"] / max(n["wait4_total_ms"], 1e-3)
    wait4_stime_ms = n["wait4_stime_ms"] * scale
    # The cgroup against the window's system share of the window's runtime
    # (its start read from /proc/PID/stat, in clock ticks: one more tick of
    # tolerance).  A share, not the CPU-timer milliseconds: on s390 those ran
    # 17% above the runtime in this window under TCG (234 ms of system time
    # in 199 ms of runtime, Linux 6.1), where cgroup2 scales to the runtime.
    w_sys, w_user = n["window_wait4_stime_ms"], n["window_wait4_utime_ms"]
    window_stime_ms = n["window_runtime_ms"] * w_sys / max(w_sys + w_user, 1e-3)
    clk_ms = CLK_TICK_NS / 1e6
    ts_ratio = n["taskstats_stime_ms"] / max(n["taskstats_stime_ms"] + n["taskstats_utime_ms"], 1)
    assert n["taskstats_run_ms"] * ts_ratio < wait4_stime_ms, n
    # cgroup2 system_usec is scaled to the runtime like wait4 here (same task, same
    # samples): equal within ticks.  v1 cpuacct.usage_sys is an unscaled tick
    # sample (it can even exceed cpuacct.usage under steal time; measured up
    # to +150 ms of 2.45 s here, never more than 10 ms below): one-sided.
    if hierarchy == "v2":
        assert abs(n["window_cgroup_sys_ms"] - window_stime_ms) < 2 * tick_ms + clk_ms + 1, n
    else:
        # (totals: a window's start from /proc/PID/stat is cputime_adjust-ed,
        # which v1's raw samples are not)
        slack = max(4 * tick_ms, 0.05 * n["wait4_stime_ms"]) + 1
        assert n["cgroup_sys_ms"] > n["wait4_stime_ms"] - slack, n
    assert n["cgroup_sys_ms"] > n["taskstats_run_ms"] * ts_ratio, n
