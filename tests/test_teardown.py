# SPDX-License-Identifier: GPL-2.0-only
"""Reliability tests of the clone(CLONE_VM) cleaner (kvmpv.teardown, kvmpv/native).

Each test runs a child Python process (tests/_cleaner_child.py) that populates
memory, arms the cleaner and then exits, execs, forks, is killed... and
watches the child and its cleaner from outside with pidfds.  The cleaner's
exit is the moment its memory is freed (exit_mmap runs before the exit is
signalled).  Every behaviour is checked in the plain and in the parallel
mode.  Timings are printed (``-s``) and recorded as junit properties;
the only timed assertions are generous bounds that catch QEMU-style 1-second
polling or a pinned address space, never tight numbers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import ARMED_PIDS, KVM_UNAVAILABLE, ROOT, tree_env

from kvmpv import teardown
from kvmpv.errors import UsageError

CHILD = Path(__file__).resolve().parent / "_cleaner_child.py"

AVAILABLE, WHY = teardown.native_available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"native cleaner unavailable: {WHY}")

#: parallel None: the plain cleaner (QEMU's design); 2: the parallel release
#: fallback "nopidfd": the getppid() path for kernels before 5.3
#: (forced through the native code's test hook).
MODES = [
    pytest.param({"parallel": None, "fallback": ""}, id="plain"),
    pytest.param({"parallel": 2, "fallback": ""}, id="parallel2"),
    pytest.param({"parallel": None, "fallback": "nopidfd"}, id="plain-nopidfd"),
    pytest.param({"parallel": 2, "fallback": "nopidfd"}, id="parallel2-nopidfd"),
]
MiB = 1 << 20
#: Generous bound: catches 1-second polling and pinned memory, not jitter.
BOUND_S = 1.0


def wait_fd(fd: int, timeout: float) -> Optional[float]:
    """Monotonic time at which ``fd`` became readable, None on timeout."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return time.monotonic() if ready else None


def alive(fd: int) -> bool:
    return not select.select([fd], [], [], 0)[0]


class Child:
    """A running _cleaner_child.py with pidfds on it and on its cleaner."""

    def __init__(
        self,
        scenario: str = "main",
        size: int = 16 * MiB,
        fallback: str = "",
        report: bool = False,
        legacy: str = "",
        **cfg: Any,
    ) -> None:
        cfg.update(scenario=scenario, size=size)
        # legacy: the native code's benchmark hook (placement before issue 27, chunks)
        env = tree_env(KVMPV_CLEANER_TEST_FALLBACK=fallback, KVMPV_CLEANER_TEST_LEGACY=legacy)
        # report: a pipe whose write end the child's cleaner keeps and writes
        # its report on (teardown.REPORT_FD_ENV); EOF once it and its helpers exited.
        self.report_r = -1
        pass_fds: tuple[int, ...] = ()
        if report:
            self.report_r, report_w = os.pipe()
            env[teardown.REPORT_FD_ENV] = str(report_w)
            pass_fds = (report_w,)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=str(ROOT),
                env=env,
                pass_fds=pass_fds,
            )
        finally:
            for fd in pass_fds:
                os.close(fd)  # only the child (and its cleaner) hold the write end
        ARMED_PIDS.add(self.proc.pid)
        self.pidfd = os.pidfd_open(self.proc.pid)
        first = self.read()
        self.cleaner: int = first["cleaner"]
        self.parallel: int = first["parallel"]
        self.cfd = os.pidfd_open(self.cleaner)

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"child {self.proc.pid} said nothing (exit {self.proc.poll()})"
        out: dict[str, Any] = json.loads(line)
        return out

    def cleaner_report(self, timeout: float = 30.0) -> teardown.CleanerReport:
        """The cleaner's report, read to EOF (the cleaner and its helpers have exited)."""
        assert self.report_r >= 0, "Child(report=True) needed"
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"cleaner report not closed within {timeout} s: {chunks}"
            if not select.select([self.report_r], [], [], left)[0]:
                continue
            data = os.read(self.report_r, 4096)
            if not data:
                return teardown.CleanerReport.parse(b"".join(chunks).decode("ascii"))
            chunks.append(data)

    def send(self, cmd: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return time.monotonic()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(ProcessLookupError, OSError):
            # pidfd_send_signal: no pid-reuse race if the cleaner is long gone.
            signal.pidfd_send_signal(self.cfd, signal.SIGKILL)
        wait_fd(self.cfd, 5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        os.close(self.pidfd)
        os.close(self.cfd)
        if self.report_r >= 0:
            os.close(self.report_r)


@pytest.fixture
def child_factory() -> Iterator[Any]:
    children: list[Child] = []

    def make(*args: Any, **kw: Any) -> Child:
        c = Child(*args, **kw)
        children.append(c)
        return c

    yield make
    for c in children:
        c.close()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


# --- the API in this very process ------------------------------------------


def test_api_arm_status_disarm_in_process() -> None:
    ARMED_PIDS.add(os.getpid())
    assert teardown.status() == teardown.CleanerStatus(False, None, 0)
    st = teardown.arm()
    try:
        assert st.armed and st.pid and st.parallel == 1
        assert teardown.arm() == st  # idempotent
        assert teardown.status() == st
        assert comm(st.pid) == teardown.cleaner_name(os.getpid())
        assert teardown.find_cleaners(os.getpid()) == [st.pid]
        # Our child, but invisible to os.wait*() without __WCLONE: exit signal 0.
        with pytest.raises(ChildProcessError):
            os.waitid(os.P_PID, st.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        assert os.waitid(os.P_PID, st.pid, os.WEXITED | os.WNOHANG | teardown.WCLONE) is None
    finally:
        assert teardown.disarm() is True
    assert teardown.status().armed is False
    assert teardown.disarm() is False
    assert not Path(f"/proc/{st.pid}").exists()  # killed and reaped


def test_api_arm_from_threads_gives_one_cleaner() -> None:
    ARMED_PIDS.add(os.getpid())
    results: list[teardown.CleanerStatus] = []
    threads = [threading.Thread(target=lambda: results.append(teardown.arm(2))) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({r.pid for r in results}) == 1
        assert results[0].parallel == 2
        assert teardown.find_cleaners(os.getpid()) == [results[0].pid]
    finally:
        teardown.disarm()


def test_api_rejects_bad_parallel() -> None:
    with pytest.raises(UsageError):
        teardown.arm(parallel=-1)
    with pytest.raises(UsageError):
        teardown.arm(parallel=teardown.MAX_PARALLEL + 1)
    assert teardown.status().armed is False


@pytest.mark.parametrize("fallback", ["", "proc", "limit", "nopidfd"])
def test_cleaner_holds_nothing_but_its_own_fds(child_factory: Any, fallback: str) -> None:
    """close_range, and its fallbacks (/proc/self/fd, a loop to RLIMIT_NOFILE)."""
    c = child_factory(fallback=fallback)
    assert comm(c.cleaner) == f"cleanup/{c.proc.pid}"[:15]
    # Only the pidfd of the parent and the notification pipe's read end.
    fds = os.listdir(f"/proc/{c.cleaner}/fd")
    targets = sorted(os.readlink(f"/proc/{c.cleaner}/fd/{fd}") for fd in fds)
    assert any(t.startswith("pipe:") for t in targets)
    if fallback == "nopidfd":
        assert len(fds) == 1, targets
    else:
        assert len(fds) == 2 and any("pidfd" in t for t in targets), targets
    # Every signal blocked (SIGKILL/SIGSTOP cannot be).
    assert int(status_field(c.cleaner, "SigBlk"), 16) | (1 << 8) | (1 << 18) == (1 << 64) - 1
    assert status_field(c.cleaner, "Cpus_allowed_list")  # alive, readable
    # Not in the parent's thread group, same mm (same VmRSS).
    assert status_field(c.cleaner, "Tgid") == str(c.cleaner)
    assert status_field(c.cleaner, "PPid") == str(c.proc.pid)


# --- exit, kill, threads -------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_exit_frees_memory_in_cleaner(child_factory: Any, mode: dict[str, Any]) -> None:
    c = child_factory(size=256 * MiB, **mode)
    assert c.parallel == (mode["parallel"] or 1)
    t0 = c.send("exit")
    t_exit = wait_fd(c.pidfd, 10)
    assert t_exit is not None
    t_free = wait_fd(c.cfd, 10)
    assert t_free is not None, "cleaner did not exit after its parent"
    print(
        f"\n256 MiB {c.parallel} task(s): exit seen after {(t_exit - t0) * 1e3:.1f} ms, "
        f"memory freed {(t_free - t_exit) * 1e3:.1f} ms after the exit"
    )
    assert c.proc.wait() == 0


@pytest.mark.parametrize("mode", MODES)
def test_teardown_starts_right_after_exit(child_factory: Any, mode: dict[str, Any]) -> None:
    """Small memory: cleaner exit - parent exit is the notification delay."""
    delays = []
    for _ in range(5):
        c = child_factory(size=1 * MiB, **mode)
        c.send("exit")
        t_exit = wait_fd(c.pidfd, 10)
        t_free = wait_fd(c.cfd, 10)
        assert t_exit is not None and t_free is not None
        delays.append(t_free - t_exit)
    med = statistics.median(delays)
    print(
        f"\nteardown start delay ({c.parallel} task(s)), 5 runs: median {med * 1e3:.2f} ms, "
        f"max {max(delays) * 1e3:.2f} ms"
    )
    # QEMU's getppid() polling would show up here as ~1 s.
    assert med < BOUND_S


@pytest.mark.parametrize("mode", MODES)
def test_parent_sigkilled_memory_still_freed(child_factory: Any, mode: dict[str, Any]) -> None:
    c = child_factory(size=128 * MiB, **mode)
    c.send("wait")
    time.sleep(0.05)
    c.proc.kill()
    assert wait_fd(c.pidfd, 10) is not None
    assert wait_fd(c.cfd, 10) is not None, "cleaner outlived its SIGKILLed parent"
    assert c.proc.wait() == -signal.SIGKILL


@pytest.mark.parametrize("mode", MODES)
def test_cleaner_sigkilled_early_parent_exits_normally(
    child_factory: Any, mode: dict[str, Any]
) -> None:
    c = child_factory(size=32 * MiB, **mode)
    os.kill(c.cleaner, signal.SIGKILL)
    assert wait_fd(c.cfd, 5) is not None  # dead (a zombie until its parent reaps it)
    # Exit signal 0: the parent gets no SIGCHLD; its status() reaps the zombie.
    c.send("check")
    out = c.read()
    assert out == {"intact": True, "armed": False}
    c.send("exit")
    assert c.proc.wait(timeout=10) == 0


@pytest.mark.parametrize("mode", MODES)
def test_arming_thread_exits_first_no_early_teardown(
    child_factory: Any, mode: dict[str, Any]
) -> None:
    c = child_factory("thread-arms", size=64 * MiB, **mode)
    # The arming thread is gone (PR_SET_PDEATHSIG would have fired here).
    time.sleep(0.3)
    assert alive(c.cfd), "cleaner left when the arming thread exited"
    c.send("go")
    assert c.read() == {"intact": True, "armed": True}
    c.send("go")
    assert wait_fd(c.pidfd, 10) is not None
    assert wait_fd(c.cfd, 10) is not None


@pytest.mark.parametrize("mode", MODES)
def test_leader_thread_exits_first_no_early_teardown(
    child_factory: Any, mode: dict[str, Any]
) -> None:
    # The main thread leaves with pthread_exit(); another thread runs on for
    # 1 s and then checks that no page was released under it.
    c = child_factory("leader-exits", size=64 * MiB, **mode, linger=1.0)
    time.sleep(0.2)
    assert alive(c.pidfd) and alive(c.cfd), "teardown started while a thread lived"
    assert c.read() == {"intact": True, "armed": True}
    assert wait_fd(c.pidfd, 10) is not None
    assert wait_fd(c.cfd, 10) is not None


# --- exec and fork -------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_exec_does_not_pin_memory(child_factory: Any, mode: dict[str, Any]) -> None:
    c = child_factory(size=128 * MiB, **mode)
    t0 = c.send("exec")
    t_free = wait_fd(c.cfd, 10)
    assert t_free is not None, "cleaner pins the old address space after exec"
    assert alive(c.pidfd)  # the exec'd program (sleep 30) runs on
    assert comm(c.proc.pid) == "sleep"
    rss_kb = int(status_field(c.proc.pid, "VmRSS").split()[0])
    print(f"\nexec: old 128 MiB address space released {(t_free - t0) * 1e3:.1f} ms after exec")
    assert rss_kb < 64 * 1024
    assert t_free - t0 < BOUND_S


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("then", ["exec", "exit"])
def test_forked_children_do_not_delay_release(
    child_factory: Any, mode: dict[str, Any], then: str
) -> None:
    c = child_factory(size=64 * MiB, **mode)
    t0 = c.send(f"fork-{then}")
    forked = c.read()["forked"]
    try:
        t_free = wait_fd(c.cfd, 10)
        assert t_free is not None, f"a live fork child delayed the release after {then}"
        assert Path(f"/proc/{forked}").exists()  # the fork child still runs
        assert not teardown.find_cleaners(forked)  # and was not armed
        print(f"\nfork child alive, {then}: released {(t_free - t0) * 1e3:.1f} ms after")
        assert t_free - t0 < BOUND_S
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(forked, signal.SIGKILL)


# --- fds -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_stdout_reader_sees_eof_at_parent_exit(child_factory: Any, mode: dict[str, Any]) -> None:
    c = child_factory(size=16 * MiB, **mode)
    # The parent closes its stdout and lives on: only the cleaner could still
    # hold the pipe's write end.
    c.send("close-stdout")
    assert c.proc.stdout is not None
    fd = c.proc.stdout.fileno()
    assert wait_fd(fd, 5) is not None and os.read(fd, 1) == b""
    assert alive(c.cfd) and alive(c.pidfd)
    c.send("exit")
    assert wait_fd(c.pidfd, 10) is not None
    assert wait_fd(c.cfd, 10) is not None


# --- failures are reported -------------------------------------------------------


def test_failed_clone_is_reported(pids_cgroup_of_one: Path) -> None:
    code = (
        "import sys, json\n"
        "from kvmpv import teardown\n"
        "sys.stdin.readline()\n"
        "try:\n"
        "    teardown.arm()\n"
        "    print(json.dumps({'armed': True}))\n"
        "except OSError as err:\n"
        "    print(json.dumps({'errno': err.errno, 'call': err.call, 'text': str(err)}))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env=tree_env(),
    )
    try:
        (pids_cgroup_of_one / "cgroup.procs").write_text(str(proc.pid))
        out, _ = proc.communicate("go\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads(out)
    assert result.get("errno") == errno.EAGAIN, result
    assert result["call"] == "clone" and "arming the teardown cleaner" in result["text"]


# --- parallel mode specifics --------------------------------------------------------


@pytest.mark.parametrize("legacy", ["", "chunks"], ids=["slices", "chunks"])
def test_parallel_release_uses_several_tasks(child_factory: Any, legacy: str) -> None:
    """The cleaner's own report (not a scan of pid numbers): the helper it started is a
    task of its own (reaped by it) that reported its share, and the shares cover the
    memory.  Slices (the default): about half each, whatever the CPUs do; chunks (the
    benchmark variant): each task takes 32 MiB pieces while any are left."""
    size = 512 * MiB
    c = child_factory(size=size, parallel=2, report=True, legacy=legacy)
    c.send("exit")
    assert wait_fd(c.pidfd, 10) is not None
    rep = c.cleaner_report()
    assert rep.exit_tid == c.cleaner, rep
    assert list(rep.started) == [1], rep  # parallel=2: one helper
    helper = rep.started[1]
    assert helper not in (c.cleaner, c.proc.pid), rep
    assert rep.reaped == (helper,), rep  # its CLONE_VM child, reaped with __WCLONE
    tasks = {j.index: j.tid for j in rep.jobs}
    assert tasks == {0: c.cleaner, 1: helper}, rep
    released = {j.index: j.released for j in rep.jobs}
    total = sum(released.values())
    assert total >= size, rep  # the populated buffer (and the interpreter's heap)
    if not legacy:
        # Slices of equal bytes (cut on 2 MiB boundaries): neither task did it all.
        assert min(released.values()) >= total // 4, rep
    # Chunks: who takes how many depends on the CPUs (by design: a task on a busy CPU
    # takes fewer; under load a late helper may take none), so only the total is checked.
    assert set(rep.cpus) == {c.cleaner, helper}, rep  # every task said where it ran


def _allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize("parallel", [None, 2], ids=["plain", "parallel2"])
def test_cleaner_releases_on_the_parents_cpu(child_factory: Any, parallel: Any) -> None:
    """The teardown runs where the armed process last ran (where a plain exit frees the
    memory: that CPU's per-cpu page lists, docs/teardown-cost.md), whichever CPU the
    wakeup put the cleaner on: the process is moved to each CPU in turn after arming
    (the cleaner keeps its own, wider mask) and the cleaner's report names the CPU of
    its final exit."""
    cpus = _allowed_cpus()
    if len(cpus) < 2:
        pytest.skip(f"needs 2 CPUs to tell the parent's CPU from another, has {cpus}")
    for target in (cpus[0], cpus[-1]):
        c = child_factory(size=128 * MiB, parallel=parallel, report=True)
        assert len(os.sched_getaffinity(c.cleaner)) == len(cpus)
        os.sched_setaffinity(c.proc.pid, {target})  # the child's only thread
        c.send("exit")
        assert wait_fd(c.pidfd, 10) is not None
        rep = c.cleaner_report()
        assert rep.exit_tid == c.cleaner, rep
        assert rep.cpus.get(c.cleaner) == target, (target, rep)


def test_cleaner_report_parse() -> None:
    """The report's line format, and an unknown line refused (not silently dropped)."""
    rep = teardown.CleanerReport.parse(
        "started 1 42\ncpu 41 1\ncpu 42 0\njob 1 42 100\njob 0 41 90\nreaped 42\n"
        "cpu 41 0\nexit 41\n"
    )
    assert rep.started == {1: 42} and rep.helper_tids == {42}
    assert rep.jobs == (teardown.CleanerJob(1, 42, 100), teardown.CleanerJob(0, 41, 90))
    assert rep.reaped == (42,) and rep.exit_tid == 41
    assert rep.cpus == {41: 0, 42: 0}  # the cleaner's later line: its final exit
    with pytest.raises(ValueError, match="unknown cleaner report line"):
        teardown.CleanerReport.parse("helper 42\n")
    with pytest.raises(ValueError, match="unknown cleaner report line"):
        teardown.CleanerReport.parse("cpu 41\n")


def _ranges(maps: list[str], pred: Any) -> list[tuple[int, int]]:
    out = []
    for line in maps:
        fields = line.split(None, 5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        name = fields[5] if len(fields) > 5 else ""
        if pred(fields[1], int(fields[4]), name):
            out.append((lo, hi))
    return out


@pytest.mark.parametrize("use_kvm", [False, True], ids=["no-vm", "vcpu"])
def test_parallel_release_touches_only_private_anonymous_memory(
    child_factory: Any, use_kvm: bool, debian_programs: dict[str, Optional[str]]
) -> None:
    """strace the cleaner: its madvise() calls cover the private anonymous
    memory and never a shared, file-backed, kvm_run or [stack] mapping."""
    if not debian_programs.get("strace"):
        pytest.skip("strace not installed (and could not be installed with apt-get)")
    if use_kvm and KVM_UNAVAILABLE:
        pytest.skip(f"no usable /dev/kvm: {KVM_UNAVAILABLE}")
    c = child_factory("mappings", size=128 * MiB, parallel=2, kvm=use_kvm)
    maps: list[str] = c.read()["maps"]
    log = Path(f"/tmp/kvmpv-h7-strace-{c.cleaner}.log")
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=madvise", "-o", str(log), "-p", str(c.cleaner)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # strace is attached once the cleaner shows a TracerPid.
        deadline = time.monotonic() + 10
        while status_field(c.cleaner, "TracerPid") == "0":
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.01)
        c.send("exit")
        assert wait_fd(c.pidfd, 10) is not None
        assert wait_fd(c.cfd, 20) is not None
        tracer.wait(timeout=20)
        calls = []
        for line in log.read_text().splitlines():
            m = re.search(r"madvise\((0x[0-9a-f]+), (\d+), MADV_DONTNEED", line)
            if m:
                calls.append((int(m.group(1), 16), int(m.group(1), 16) + int(m.group(2))))
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        log.unlink(missing_ok=True)
    assert len({lo for lo, _ in calls}) >= 2, calls
    forbidden = _ranges(
        maps,
        lambda perms, inode, name: (
            perms[3] == "s"
            or inode != 0
            or name.startswith(("[stack]", "[vdso]", "[vvar]", "[vsyscall]", "anon_inode:", "/"))
        ),
    )
    for lo, hi in calls:
        for flo, fhi in forbidden:
            assert hi <= flo or lo >= fhi, f"madvise {lo:#x}-{hi:#x} hit {flo:#x}-{fhi:#x}"
    # The 128 MiB of guest memory (the biggest private anonymous mapping) was released.
    big = max(
        _ranges(maps, lambda p, i, n: p[3] == "p" and i == 0 and not n), key=lambda r: r[1] - r[0]
    )
    covered = sum(max(0, min(hi, big[1]) - max(lo, big[0])) for lo, hi in calls)
    assert covered == big[1] - big[0]
    if use_kvm:
        assert any("kvm-vcpu" in line for line in maps)
