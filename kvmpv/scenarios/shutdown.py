# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv shutdown``: how long a big process takes to exit, to free its memory, and who pays.

A *worker* process (a fresh interpreter, ``kvmpv.scenarios._worker``)
populates N bytes -- natively with ``MADV_POPULATE_WRITE``, or with ``--vm``
through a real KVM guest that writes every page -- and exits.  kvmpv waits on
its pidfd and reports, per strategy:

* the **exit latency** seen by that pidfd waiter: from the worker's "exit
  now" moment (CLOCK_MONOTONIC read by the worker just before ``_exit``; for
  the reaper, the moment it sends SIGKILL) to pidfd readiness;
* the **release time**: until the memory is actually freed -- the worker's
  own exit for ``sync``, the cleaner's exit (its pidfd) for the cleaner
  strategies, the later of the worker's exit and ``process_mrelease``'s
  return for ``reaper``;
* the **teardown CPU** and who paid for it: the CPU counter deltas, across
  the exit, of the worker's private cgroup and of the other role's cgroup,
  cross-checked with the worker's ``wait4`` rusage (it is our child).

Strategies:

* ``sync``: plain exit; the kernel frees the memory in ``exit_mm``.
* ``cleaner``: the worker arms the ``clone(CLONE_VM)`` cleaner
  (``kvmpv.teardown.arm()``), which frees the memory after the worker is
  gone, in the worker's cgroup.
* ``elsewhere``: the same cleaner, moved into another cgroup before the
  exit.  It stands for the rejected kernel-side designs (a kernel thread,
  ``mmput_async``), whose work lands outside the VM's cgroup: the verdict
  must say "not charged" -- this is the run that shows the check can fail.
* ``reaper``: a process in another cgroup SIGKILLs the worker through a pidfd
  and calls ``process_mrelease`` on it, as Android's lmkd does.  The dying
  worker frees memory concurrently in ``exit_mmap``, so the work is split
  between the two cgroups: SPLIT is required where the race can be judged
  (see ``_judge_reaper``), and a record where it cannot says "not judged".
* ``parallel``: the cleaner in parallel mode (``arm(parallel=N)``), N tasks
  releasing slices of the memory, all in the worker's cgroup.

What "work" means in each verdict (``judge_charged(work_ns, charged_ns)``,
charged_ns always being the worker cgroup's delta):

* ``sync``: the worker's own teardown CPU from ``wait4`` rusage (its total
  at exit minus what it reported just before ``_exit``) -- measured
  independently of the cgroup counters, so a worker that was not in its
  cgroup shows up as "not charged";
* ``cleaner``, ``parallel``, ``elsewhere``: first the ``sync`` baseline at
  the same size (median worker-cgroup delta of the sync runs of this
  invocation), the work a teardown costs wherever it runs: a worker cgroup
  that saw no more than the not-charged band of it is NOT_CHARGED.  Otherwise
  the total measured in every cgroup of the same run (worker + elsewhere),
  which the charged band needs (another run is too noisy for it).  Without a
  sync run, that total alone;
* ``reaper``: the total measured in both cgroups over the repeats where
  ``process_mrelease`` reaped; the worker's fraction is the split.

The verdict uses the precise totals (``cpuacct.usage``, ``cpu.stat
usage_usec``, rusage utime+stime), not the tick-sampled user/system split,
so the tolerance is 1 ms (the worker's last Python steps and the cleaner's
wake-up, which the counters include but the teardown does not) rather than
``judge_charged``'s two-tick default.

Runs interleave the strategies within each repeat (and rotate their order
from one repeat to the next) so that noise from other work on the machine
hits them alike.

Touches: spawns and kills its worker/reaper children (and the workers'
cleaners), creates and removes private cgroups (``kvmpv.accounting``), reads
``/proc/meminfo``, ``/proc/stat``, ``/proc/loadavg``; sets priorities where
allowed (worker nice -10, reaper -20 as lmkd, kvmpv's waiting thread -10
while it waits: see WORKER_NICE and _waiter_priority).  Nothing is left behind
after errors, SIGINT or SIGTERM: every process is SIGKILLed and waited for
before its cgroups are removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .. import teardown
from ..accounting import (
    AccountingUnavailable,
    Cgroup,
    CgroupScope,
    MemoryTrace,
    Outcome,
    Verdict,
    cgroup_scope,
    judge_charged,
    judge_split,
    zombie_runtime_ns,
)
from ..closing import signals_held
from ..errors import HostError, Interrupted, KvmpvError, UsageError
from ..memory import mem_available
from ..stats import median, spread
from ..syscalls import libc
from ..units import MiB, format_size
from .probe import thp_mode

STRATEGIES = ("sync", "cleaner", "elsewhere", "reaper", "parallel")
DEFAULT_STRATEGIES = ("sync", "cleaner", "elsewhere", "reaper")
#: strategies whose worker arms the cleaner
CLEANER_STRATEGIES = frozenset({"cleaner", "elsewhere", "parallel"})
#: what a correct teardown design must get.  The reaper divides the work
#: between the dying worker's exit_mmap and its own process_mrelease by design
#: (expected only where the race is judged: ``_judge_reaper``).
EXPECTED: dict[str, Optional[Outcome]] = {
    "sync": Outcome.CHARGED,
    "cleaner": Outcome.CHARGED,
    "parallel": Outcome.CHARGED,
    "elsewhere": Outcome.NOT_CHARGED,
    "reaper": Outcome.SPLIT,
}
#: the second cgroup of a strategy, where its "other" process runs
OTHER_ROLE = {"elsewhere": "elsewhere", "reaper": "reaper"}
#: slack of the verdicts on precise CPU totals (see the module docstring)
TOLERANCE_NS = 1_000_000
#: the reaper is judged only on the sum of at least REAPER_MIN_REAPED repeats
#: where process_mrelease reaped, whose work is at least this many times
#: their tolerance (1 ms a repeat: 15 ms of work per reaped repeat, a time,
#: not a size).  Which side frees more is a race: one repeat can go one way
#: (the worker paid 91% of a 512M repeat at load 5.3 on 2 CPUs, 75% of a 4G
#: one), while the shares summed over 5 repeats were 43-57% in every run from
#: 256M to 4G (2 CPUs at load 4, 2026-12-07; per-repeat shares spread over
#: 28-68% at 256M, 8-13 ms a repeat, and 34-58% at 512M, 14-33 ms).  At 15
#: tolerances the bands of judge_split leave SPLIT at least 26.7-73.3%; with
#: less work (128M: 4-8 ms a repeat) the tolerance, not the race, decides (a
#: summed worker share of 34% read "not charged").
REAPER_MIN_WORK_TOLERANCES = 15
REAPER_MIN_REAPED = 3
#: GuestMemory's alignment: sizes must be whole MiB
SIZE_ALIGN = MiB
SYS_PROCESS_MRELEASE = 448
#: priority of kvmpv's waiting thread during an exit (see _waiter_priority)
WAITER_NICE = -10
#: priority of the worker, hence of its cleaner and the parallel helpers: on a
#: shared machine, other people's jobs then preempt the measured teardown
#: less (a nice-0 worker exiting under load 4 on 2 CPUs spent 2x its CPU time
#: in wall time, and a cleaner's exit latency jumped from 0.1 to 10 ms when
#: the worker was preempted between its "exit now" and its exit).  Every
#: strategy gets the same value.  The reaper runs at -20, as lmkd's.
WORKER_NICE = -10

Progress = Optional[Callable[[str], None]]


# --------------------------------------------------------------------------
# Request and results


@dataclass
class ShutdownRequest:
    """What to run.  ``parallel``: tasks of the ``parallel`` strategy (None:
    the cleaner's default, the CPUs of the cpuset).  ``hierarchy``: cgroup
    hierarchy for the accounting ("auto", "v1", "v2")."""

    sizes: list[int]
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    thp: bool = False
    repeat: int = 1
    vm: bool = False
    parallel: Optional[int] = None
    hierarchy: str = "auto"

    def validate(self) -> None:
        """Raise UsageError on anything that cannot be run as asked."""
        if not self.sizes:
            raise UsageError("no sizes given")
        for size in self.sizes:
            if size <= 0 or size % SIZE_ALIGN:
                raise UsageError(f"size {size} is not a positive whole number of MiB")
        if not self.strategies:
            raise UsageError("no strategies given")
        for s in self.strategies:
            if s not in STRATEGIES:
                raise UsageError(f"unknown strategy {s!r}: choose from {', '.join(STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise UsageError(f"strategy listed twice: {','.join(self.strategies)}")
        if self.repeat < 1:
            raise UsageError(f"--repeat must be at least 1, not {self.repeat}")
        if self.parallel is not None and not 1 <= self.parallel <= teardown.MAX_PARALLEL:
            raise UsageError(f"--parallel must be between 1 and {teardown.MAX_PARALLEL}")
        if self.hierarchy not in ("auto", "v1", "v2"):
            raise UsageError(f"unknown cgroup hierarchy {self.hierarchy!r}: auto, v1 or v2")

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "strategies": list(self.strategies),
            "thp": self.thp,
            "repeat": self.repeat,
            "vm": self.vm,
            "parallel": self.parallel,
            "hierarchy": self.hierarchy,
        }


@dataclass
class Sample:
    """One worker's life and death under one strategy.  Times in s, CPU in ns."""

    repeat: int
    exit_latency_s: float
    release_s: float
    populate_s: float
    anon_huge_bytes: int
    #: CPU counter deltas across the exit (None without accounting)
    worker_cgroup_ns: Optional[int] = None
    other_cgroup_ns: Optional[int] = None
    #: the worker's scheduler runtime read once it had exited (its process
    #: CPU clock, as a zombie) minus the same clock just before the exit
    #: request; wait4's rusage where that clock could not be read.  (The
    #: JSON keeps the name worker_rusage_teardown_s.)
    worker_rusage_ns: Optional[int] = None
    #: the reaper's own CPU across kill + process_mrelease (its process clock)
    reaper_rusage_ns: Optional[int] = None
    cleaner_pid: Optional[int] = None
    parallel: Optional[int] = None
    mrelease: Optional[dict[str, Any]] = None
    worker_memory_after_bytes: Optional[int] = None
    worker_nice: Optional[int] = None
    #: the worker cgroup's memory counter sampled from the exit request to
    #: the release (``MemoryTrace.summary``; times relative to the request)
    memory_trace: Optional[dict[str, Any]] = None

    @property
    def total_cgroup_ns(self) -> Optional[int]:
        if self.worker_cgroup_ns is None:
            return None
        return self.worker_cgroup_ns + (self.other_cgroup_ns or 0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "repeat": self.repeat,
            "exit_latency_s": self.exit_latency_s,
            "release_s": self.release_s,
            "populate_s": round(self.populate_s, 6),
            "anon_huge_bytes": self.anon_huge_bytes,
            "worker_cgroup_s": _s(self.worker_cgroup_ns),
            "other_cgroup_s": _s(self.other_cgroup_ns),
            "worker_rusage_teardown_s": _s(self.worker_rusage_ns),
            "worker_nice": self.worker_nice,
        }
        if self.reaper_rusage_ns is not None:
            d["reaper_rusage_s"] = _s(self.reaper_rusage_ns)
        if self.cleaner_pid is not None:
            d["cleaner_pid"] = self.cleaner_pid
            d["parallel"] = self.parallel
        if self.mrelease is not None:
            d["mrelease"] = self.mrelease
        if self.worker_memory_after_bytes is not None:
            d["worker_memory_after_bytes"] = self.worker_memory_after_bytes
        if self.memory_trace is not None:
            d["memory_trace"] = self.memory_trace
        return d


def _s(ns: Optional[float]) -> Optional[float]:
    return None if ns is None else round(ns / 1e9, 6)


def _median_int(values: Sequence[Optional[int]]) -> Optional[int]:
    """``stats.median`` of integer counters, as an integer (ns, bytes)."""
    m = median(values)
    return None if m is None else int(m)


@dataclass
class ShutdownRecord:
    """All repeats of one (strategy, size), and the accounting verdict."""

    strategy: str
    size_bytes: int
    thp: bool
    vm: bool
    samples: list[Sample] = field(default_factory=list)
    verdict: Optional[Verdict] = None
    work_source: str = ""
    skip_reason: str = ""
    #: why the verdict is not judged against EXPECTED ("" when it is): the
    #: reaper with too little reaped work (``_judge_reaper``)
    not_judged: str = ""

    @property
    def expected(self) -> Optional[Outcome]:
        return None if self.not_judged else EXPECTED[self.strategy]

    @property
    def outcome(self) -> Outcome:
        return self.verdict.outcome if self.verdict is not None else Outcome.SKIP

    @property
    def failed(self) -> bool:
        """A verdict that contradicts what the strategy must get.

        SKIP never fails, and neither does a record that is not judged (no
        ``expected``: the reaper with too little reaped work).  A judged
        reaper fails when one side paid it all: a victim that freed nothing
        once process_mrelease got in, or a reaper that got nothing to free.
        """
        exp = self.expected
        if exp is None or self.outcome is Outcome.SKIP:
            return False
        return self.outcome is not exp

    def teardown_cpu_ns(self) -> Optional[int]:
        totals = _median_int([s.total_cgroup_ns for s in self.samples])
        if totals is not None:
            return totals
        # No cgroups: the worker's own rusage is the teardown CPU we can see
        # (plus the reaper's, which reports its own).
        return _median_int(
            [
                None
                if s.worker_rusage_ns is None
                else s.worker_rusage_ns + (s.reaper_rusage_ns or 0)
                for s in self.samples
            ]
            if self.strategy in ("sync", "reaper")
            else []
        )

    def split(self) -> Optional[dict[str, Any]]:
        """Who paid for the teardown, summed over the repeats (reaper strategy).

        Sums, not medians: the shares of each repeat add up to 1, medians of
        the two sides taken separately need not.  ``per_repeat`` shows how
        much the race between the victim's exit_mmap and the reaper varies.
        """
        pairs = [
            (s.worker_cgroup_ns, s.other_cgroup_ns)
            for s in self.samples
            if s.worker_cgroup_ns is not None and s.other_cgroup_ns is not None
        ]
        total = sum(w + o for w, o in pairs)
        if not pairs or total <= 0:
            return None
        return {
            "worker_fraction": round(sum(w for w, _ in pairs) / total, 4),
            "reaper_fraction": round(sum(o for _, o in pairs) / total, 4),
            "per_repeat_worker_fraction": [
                round(w / (w + o), 4) if w + o else None for w, o in pairs
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        samples = self.samples
        worker = _median_int([s.worker_cgroup_ns for s in samples])
        other = _median_int([s.other_cgroup_ns for s in samples])
        d: dict[str, Any] = {
            "strategy": self.strategy,
            "size_bytes": self.size_bytes,
            "thp": self.thp,
            "vm": self.vm,
            "exit_latency_s": spread([s.exit_latency_s for s in samples]),
            "release_s": spread([s.release_s for s in samples]),
            "teardown_cpu_s": _s(self.teardown_cpu_ns()),
            "charged_to_worker_cgroup_s": _s(worker),
            "verdict": self.outcome.value,
            "expected": self.expected.value if self.expected is not None else None,
            "contradicts_expected": self.failed,
            "not_judged": self.not_judged or None,
            "verdict_detail": None if self.verdict is None else self.verdict.to_dict(),
            "work_source": self.work_source,
            "worker_rusage_teardown_s": _s(_median_int([s.worker_rusage_ns for s in samples])),
            "anon_huge_bytes": _median_int([s.anon_huge_bytes for s in samples]),
            "repeats": [s.to_dict() for s in samples],
        }
        if self.strategy in OTHER_ROLE:
            d[f"{OTHER_ROLE[self.strategy]}_cgroup_s"] = _s(other)
        if self.strategy == "reaper":
            d["reaper_rusage_s"] = _s(_median_int([s.reaper_rusage_ns for s in samples]))
            d["split"] = self.split()
            reaped = [s for s in samples if s.mrelease is not None and s.mrelease["ret"] == 0]
            d["mrelease_reaped"] = f"{len(reaped)}/{len(samples)}"
            d["mrelease_errors"] = sorted(
                {s.mrelease["errno_name"] for s in samples if s.mrelease and s.mrelease["ret"] < 0}
            )
        if self.strategy == "parallel":
            d["parallel"] = _median_int([s.parallel for s in samples])
        if self.skip_reason:
            d["skip_reason"] = self.skip_reason
        return d


@dataclass
class ShutdownResult:
    """Everything one ``run_shutdown`` measured."""

    request: ShutdownRequest
    records: list[ShutdownRecord]
    hierarchy: Optional[str]
    accounting_reason: str
    host: dict[str, Any]
    elapsed_s: float
    #: stopped by this signal: the samples are those taken before it
    interrupted: Optional[int] = None

    @property
    def exit_code(self) -> int:
        """0 ok, 1 a verdict contradicts its strategy, 4 every verdict skipped."""
        if any(r.failed for r in self.records):
            return 1
        if all(r.outcome is Outcome.SKIP for r in self.records):
            return 4
        return 0

    def record(self, strategy: str, size: int) -> ShutdownRecord:
        for r in self.records:
            if r.strategy == strategy and r.size_bytes == size:
                return r
        raise KeyError((strategy, size))

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": "kvm" if self.request.vm else "native",
            "simulated": False,
            "request": self.request.to_dict(),
            "hierarchy": self.hierarchy,
            "accounting": "ok" if not self.accounting_reason else self.accounting_reason,
            "host": self.host,
            "elapsed_s": round(self.elapsed_s, 3),
            "interrupted": self.interrupted,
            "records": [r.to_dict() for r in self.records],
        }


# --------------------------------------------------------------------------
# Host facts


def _cpu_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def _loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def mrelease_unavailable() -> str:
    """Why process_mrelease cannot be used here ("" if it can): lmkd's probe."""
    ret = libc().syscall(SYS_PROCESS_MRELEASE, -1, 0)
    if ret < 0 and ctypes.get_errno() == errno.ENOSYS:
        return "process_mrelease(2) is not available (ENOSYS; needs Linux >= 5.15)"
    return ""


def kvm_unavailable() -> str:
    """Why a KVM worker cannot run here ("" if it can)."""
    from ..kvm import Kvm

    try:
        with Kvm():
            return ""
    except KvmpvError as err:
        return f"no usable /dev/kvm: {err}"


def _skip_reasons(req: ShutdownRequest) -> dict[str, str]:
    reasons: dict[str, str] = {}
    vm_reason = kvm_unavailable() if req.vm else ""
    cleaner_ok, cleaner_why = teardown.native_available()
    mrelease_why = mrelease_unavailable()
    for s in req.strategies:
        if vm_reason:
            reasons[s] = vm_reason
        elif s in CLEANER_STRATEGIES and not cleaner_ok:
            reasons[s] = f"native cleaner unavailable: {cleaner_why}"
        elif s == "reaper" and mrelease_why:
            reasons[s] = mrelease_why
    return reasons


# --------------------------------------------------------------------------
# Child processes


def _package_root() -> str:
    import kvmpv

    return os.path.dirname(os.path.dirname(os.path.abspath(kvmpv.__file__)))


class ChildError(KvmpvError):
    """A worker or reaper reported an error or died (exit code as it said)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Child:
    """A ``kvmpv.scenarios._worker`` process: JSON lines out, words in, a pidfd."""

    def __init__(self, role: str, args: Sequence[str]) -> None:
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # A new session: a terminal's Ctrl-C goes to kvmpv only, which then
        # kills its children in order (and removes their cgroups after).
        self.role = role
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kvmpv.scenarios._worker",
                    role,
                    "--ppid",
                    str(os.getpid()),
                    *args,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as err:
            raise HostError(f"cannot start the {role} ({sys.executable}): {err.strerror}") from None
        self.pid = self.proc.pid
        self.runtime_ns: Optional[int] = None  # set by reap()
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError as err:
            self.proc.kill()
            self.proc.wait()
            raise HostError(f"pidfd_open failed: {err.strerror} (Linux >= 5.3 needed)") from None
        self._buf = b""
        self.exit_event: Optional[dict[str, Any]] = None

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(word.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise ChildError(f"{self.role} {self.pid} died: {self.stderr_tail()}", 1) from None

    def _readline(self, deadline: float) -> Optional[bytes]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"{self.role} {self.pid} did not answer in time", 1)
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def expect(self, event: str, timeout_s: float) -> dict[str, Any]:
        """Read lines until ``event``; raise ChildError on "error" or death."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._readline(deadline)
            if line is None:
                raise ChildError(f"{self.role} {self.pid} died: {self.stderr_tail()}", 1)
            msg: dict[str, Any] = json.loads(line)
            if msg.get("ev") == "error":
                code = int(msg.get("exit_code") or 1)
                raise ChildError(f"{self.role}: {msg.get('type')}: {msg.get('message')}", code)
            if msg.get("ev") == event:
                return msg

    def stderr_tail(self) -> str:
        err = self.proc.stderr
        if err is None:
            return "no stderr"
        try:
            if select.select([err], [], [], 0.5)[0]:
                text = os.read(err.fileno(), 65536).decode(errors="replace").strip()
                if text:
                    return text.splitlines()[-1]
        except OSError:
            pass
        return "no message"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def reap(self) -> Optional[resource.struct_rusage]:
        """wait4 the child (blocking); its rusage, or None if already reaped.
        Its scheduler runtime, read just before the wait4 while it is a
        zombie, is left in ``runtime_ns`` (None if unreadable)."""
        if self.proc.returncode is not None:
            return None
        self.runtime_ns = zombie_runtime_ns(self.pid)
        try:
            _, status, ru = os.wait4(self.pid, 0)
        except ChildProcessError:
            return None
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return ru

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


class _Processes:
    """Every process of one run; on exit, SIGKILL and wait for all of them.

    Exit order matters: the processes must be gone (``cgroup_exit`` done)
    before the cgroup scope underneath removes their cgroups.  A killed
    worker's memory is freed by its own exit or by its cleaner, which we
    therefore wait for too (it is not our child: by pidfd).
    """

    #: how long cleanup waits for a process to vanish after SIGKILL
    KILL_WAIT_S = 120.0

    def __init__(self) -> None:
        self.children: list[_Child] = []
        self.foreign: dict[int, int] = {}  # pid -> pidfd (cleaners)

    def spawn(self, role: str, args: Sequence[str]) -> _Child:
        # Signals held from fork to the list: a Ctrl-C in between would leave
        # a populated worker (and its pidfd) that __exit__ never kills.  The
        # child inherits the blocked mask; _worker unblocks it first thing.
        with signals_held():
            child = _Child(role, args)
            self.children.append(child)
        return child

    def watch(self, pid: int) -> int:
        with signals_held():  # the pidfd reaches self.foreign, which __exit__ closes
            fd = os.pidfd_open(pid)
            self.foreign[pid] = fd
        return fd

    def __enter__(self) -> _Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        with signals_held():
            for c in self.children:
                c.kill()
            self._kill_and_wait_foreign()
            deadline = time.monotonic() + self.KILL_WAIT_S
            for c in self.children:
                self._wait_gone(c.pidfd, deadline)
            # A worker stopped before it told us its cleaner's pid (or while it
            # was arming it) leaves a cleaner we do not know of.  Dead now, it
            # cannot make another, and until it is reaped (below) its pid is
            # not reused: the scan by name finds every cleaner it made.  The
            # scan used to run before the kill, and a worker that armed its
            # cleaner in between left it running (seen with a 1 ms timeout).
            for c in self.children:
                if c.role == "worker":
                    for pid in teardown.find_cleaners(c.pid):
                        if pid not in self.foreign:
                            with contextlib.suppress(OSError):
                                self.watch(pid)
            self._kill_and_wait_foreign(deadline)
            for c in self.children:
                c.reap()
                c.close()
            for fd in self.foreign.values():
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _kill_and_wait_foreign(self, deadline: Optional[float] = None) -> None:
        for fd in self.foreign.values():
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        if deadline is not None:
            for fd in self.foreign.values():
                self._wait_gone(fd, deadline)

    @staticmethod
    def _wait_gone(fd: int, deadline: float) -> None:
        left = max(0.0, deadline - time.monotonic())
        if not select.select([fd], [], [], left)[0]:
            print(f"kvmpv: a shutdown process (pidfd {fd}) did not die", file=sys.stderr)


def _wait_ready(fds: dict[str, int], timeout_s: float) -> dict[str, int]:
    """Block until every pidfd is readable; CLOCK_MONOTONIC ns at each readiness."""
    poller = select.poll()
    names = {}
    for name, fd in fds.items():
        poller.register(fd, select.POLLIN)
        names[fd] = name
    times: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(times) < len(fds):
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            missing = sorted(set(fds) - set(times))
            raise ChildError(f"no exit of {', '.join(missing)} within {timeout_s:.0f} s", 1)
        events = poller.poll(left_ms)
        now = time.monotonic_ns()
        for fd, _ in events:
            times[names[fd]] = now
            poller.unregister(fd)
    return times


@contextlib.contextmanager
def _waiter_priority() -> Iterator[None]:
    """Run the pidfd waiter (this thread only: nice is per thread on Linux)
    at WAITER_NICE while it waits.

    The exit latency is meant to be the kernel's: from "exit now" to the
    pidfd turning ready.  On a shared 2-CPU machine a nice-0 waiter queues
    for milliseconds behind other people's jobs (and behind the cleaner it
    is measuring) before it can read the clock; at 8 GiB that alone can
    exceed 1% of the sync exit.  Without CAP_SYS_NICE it stays as it is.
    """
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, WAITER_NICE)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, before)


def _populate_timeout(size: int) -> float:
    # Worst case seen on a loaded 2-core machine: ~0.3 GiB/s (first touch of
    # 4 KiB pages zeroes them); a guest writing every page is slower.
    return 60.0 + size / (64 * MiB)


def _exit_timeout(size: int) -> float:
    return 60.0 + size / (128 * MiB)


# --------------------------------------------------------------------------
# One run


def _cpu(cg: Optional[Cgroup]) -> Optional[int]:
    return None if cg is None else cg.cpu().total_ns


def _run_once(
    strategy: str,
    size: int,
    req: ShutdownRequest,
    repeat: int,
    use_cgroups: bool,
) -> Sample:
    """Spawn, populate, measure the exit of one worker; nothing survives it."""
    with contextlib.ExitStack() as stack:
        scope: Optional[CgroupScope] = None
        wcg = ocg = None
        if use_cgroups:
            scope = stack.enter_context(cgroup_scope(req.hierarchy))
            wcg = scope.create("worker")
            if strategy in OTHER_ROLE:
                ocg = scope.create(OTHER_ROLE[strategy])
        procs = stack.enter_context(_Processes())

        args = ["--size", str(size), "--nice", str(WORKER_NICE)]
        if req.thp:
            args.append("--thp")
        if req.vm:
            args.append("--vm")
        if strategy in ("cleaner", "elsewhere"):
            args += ["--arm", "cleaner"]
        elif strategy == "parallel":
            # 0: the cleaner's default (CPUs of the cpuset, capped).
            args += ["--arm", "parallel", "--parallel", str(req.parallel or 0)]
        worker = procs.spawn("worker", args)
        worker_nice = int(worker.expect("ready", 60.0).get("nice", 0))
        if wcg is not None:
            # Before "go": the memory is charged (and the cleaner created) here.
            wcg.add_process(worker.pid)
        worker.send("go")
        populated = worker.expect("populated", _populate_timeout(size))

        fds = {"worker": worker.pidfd}
        cleaner_pid = int(populated.get("cleaner_pid") or 0) or None
        if strategy in CLEANER_STRATEGIES:
            if cleaner_pid is None:
                raise ChildError(f"{strategy}: the worker armed no cleaner", 1)
            try:
                fds["cleaner"] = procs.watch(cleaner_pid)
            except ProcessLookupError:
                raise ChildError(
                    f"cleaner {cleaner_pid} died before the worker's exit", 1
                ) from None
            if ocg is not None:
                ocg.add_process(cleaner_pid)
                if cleaner_pid not in ocg.pids():
                    raise ChildError(f"cleaner {cleaner_pid} did not move to {ocg.name}", 1)
        reaper = None
        if strategy == "reaper":
            reaper = procs.spawn("reaper", ["--pid", str(worker.pid)])
            reaper_nice = int(reaper.expect("ready", 60.0).get("nice", 0))
            if ocg is not None:
                ocg.add_process(reaper.pid)

        w0, o0 = _cpu(wcg), _cpu(ocg)
        # Sampled until every watched pidfd is readable: the release is over.
        trace = MemoryTrace(wcg) if wcg is not None else None
        with trace if trace is not None else contextlib.nullcontext():
            with _waiter_priority():
                (reaper or worker).send("go" if reaper else "exit")
                ready = _wait_ready(fds, _exit_timeout(size))

        mrelease = None
        reaper_ru = None
        if reaper is not None:
            reaped = reaper.expect("reaped", _exit_timeout(size))
            t0 = int(reaped["t_kill_ns"])
            t_release = max(ready["worker"], int(reaped["t_done_ns"]))
            mrelease = {
                "ret": int(reaped["ret"]),
                "reaper_nice": reaper_nice,
                "errno_name": str(reaped["errno_name"]),
                "duration_s": (int(reaped["t_done_ns"]) - t0) / 1e9,
            }
            reaper_ru = int(reaped["cpu_ns"])
            worker_cpu_before = int(populated["cpu_ns"])
        else:
            exited = worker.expect("exit", 10.0)
            t0 = int(exited["t_ns"])
            t_release = ready.get("cleaner", ready["worker"])
            worker_cpu_before = int(exited["cpu_ns"])
        w1, o1 = _cpu(wcg), _cpu(ocg)
        ru = worker.reap()
        worker_ru = None
        # Like with like: the runtime on both sides (the cgroups count it).
        # wait4's utime+stime only where the zombie's clock was unreadable:
        # on s390 that sum is CPU-timer time, 1-25% off the runtime
        # (accounting.zombie_runtime_ns).
        if worker.runtime_ns is not None:
            worker_ru = worker.runtime_ns - worker_cpu_before
        elif ru is not None:
            worker_ru = round((ru.ru_utime + ru.ru_stime) * 1e9) - worker_cpu_before
        mem_after = None
        if wcg is not None:
            usage = wcg.memory()
            mem_after = None if usage is None else usage.current_bytes
        return Sample(
            repeat=repeat,
            exit_latency_s=(ready["worker"] - t0) / 1e9,
            release_s=(t_release - t0) / 1e9,
            populate_s=float(populated["populate_s"]),
            anon_huge_bytes=int(populated["anon_huge_bytes"]),
            worker_cgroup_ns=None if w0 is None or w1 is None else w1 - w0,
            other_cgroup_ns=None if o0 is None or o1 is None else o1 - o0,
            worker_rusage_ns=worker_ru,
            reaper_rusage_ns=reaper_ru,
            cleaner_pid=cleaner_pid,
            parallel=populated.get("parallel"),
            mrelease=mrelease,
            worker_memory_after_bytes=mem_after,
            worker_nice=worker_nice,
            memory_trace=None if trace is None else trace.summary(t0),
        )
    raise AssertionError("unreachable")  # pragma: no cover  (ExitStack swallows nothing)


# --------------------------------------------------------------------------
# Verdicts


def _judge(record: ShutdownRecord, sync_baseline: Optional[int], accounting_reason: str) -> None:
    if record.skip_reason or not record.samples:
        return
    if accounting_reason:
        record.verdict = Verdict(Outcome.SKIP, 0, 0, 0.0, accounting_reason)
        record.work_source = "none: accounting unavailable"
        return
    charged = _median_int([s.worker_cgroup_ns for s in record.samples])
    total = _median_int([s.total_cgroup_ns for s in record.samples])
    assert charged is not None and total is not None
    if record.strategy == "sync":
        work = _median_int([s.worker_rusage_ns for s in record.samples])
        source = "the worker's wait4 rusage across its exit"
        if work is None:
            work, source = total, "the CPU measured in the worker's cgroup"
    elif record.strategy == "reaper":
        _judge_reaper(record)
        return
    elif sync_baseline is not None:
        # Two questions, each asked of the measure that can answer it.  Did
        # the work happen outside the worker's cgroup?  Against the sync
        # baseline (independent of where this run's tasks were): at most the
        # not-charged band of it is NOT_CHARGED.  Otherwise, how much of this
        # run's work did the worker's cgroup pay?  Against the total of every
        # cgroup of this same run: a baseline from other runs is too noisy for
        # the charged band (one slow sync run put a cleaner at 0.71-0.76 of it
        # on 2 busy CPUs, and the verdict read "partly charged").
        against = judge_charged(sync_baseline, charged, tolerance_ns=TOLERANCE_NS)
        if against.outcome is Outcome.NOT_CHARGED:
            record.verdict = against
            record.work_source = "the sync baseline at this size (worker cgroup, median)"
            return
        work = total
        source = (
            f"the CPU measured in every cgroup of this run (the sync baseline at this size, "
            f"{sync_baseline / 1e6:.1f} ms, rules out the work having gone elsewhere)"
        )
    else:
        work, source = total, "the CPU measured in every cgroup of the run (no sync baseline)"
    record.verdict = judge_charged(work, charged, tolerance_ns=TOLERANCE_NS)
    record.work_source = source


def _judge_reaper(record: ShutdownRecord) -> None:
    """SPLIT required, judged on the repeats where process_mrelease reaped.

    Where process_mrelease failed (ESRCH: the worker had passed exit_mm()
    before the call; mm/oom_kill.c process_mrelease finds no mm), the worker
    freed everything itself: that is the race, not a wrong design, so those
    repeats are left out.  The record is *not judged* (no ``expected``, never
    a fail; the verdict INCONCLUSIVE says why) with fewer than
    REAPER_MIN_REAPED reaped repeats (a single one can go one way), or when
    the reaped work is under REAPER_MIN_WORK_TOLERANCES tolerances, where the
    tolerance rather than the race decides the bands.  Otherwise anything
    but SPLIT (one side paid it all) is a fail.
    """
    reaped = [
        s
        for s in record.samples
        if s.mrelease is not None and s.mrelease["ret"] == 0
        and s.worker_cgroup_ns is not None and s.other_cgroup_ns is not None
    ]  # fmt: skip
    record.work_source = (
        f"the CPU measured in the worker's and the reaper's cgroups, summed over the "
        f"{len(reaped)}/{len(record.samples)} repeats where process_mrelease reaped"
    )
    worker = sum(s.worker_cgroup_ns or 0 for s in reaped)
    reaper = sum(s.other_cgroup_ns or 0 for s in reaped)
    tolerance = TOLERANCE_NS * len(reaped)
    if not reaped:
        record.not_judged = (
            "process_mrelease reaped in no repeat (the worker had passed exit_mm): "
            "nothing was split"
        )
    elif len(reaped) < REAPER_MIN_REAPED:
        record.not_judged = (
            f"process_mrelease reaped in {len(reaped)} repeat(s), under the "
            f"{REAPER_MIN_REAPED} whose sum is judged (one repeat can go one way; "
            f"use --repeat {REAPER_MIN_REAPED + 2} or more)"
        )
    elif worker + reaper < REAPER_MIN_WORK_TOLERANCES * tolerance:
        record.not_judged = (
            f"{(worker + reaper) / 1e6:.1f} ms of reaped work is under "
            f"{REAPER_MIN_WORK_TOLERANCES} x the {tolerance / 1e6:.1f} ms tolerance: "
            f"the tolerance, not the race, would decide (use a larger size)"
        )
    if record.not_judged:
        work = worker + reaper if reaped else _median_int(
            [s.total_cgroup_ns for s in record.samples]
        ) or 0  # fmt: skip
        record.verdict = Verdict(
            Outcome.INCONCLUSIVE, work, worker, worker / work if work > 0 else 0.0,
            f"not judged: {record.not_judged}", tolerance,
        )  # fmt: skip
        return
    record.verdict = judge_split(worker, reaper, names=("worker", "reaper"), tolerance_ns=tolerance)


# --------------------------------------------------------------------------
# Entry point


def _check_memory(sizes: Sequence[int]) -> None:
    avail = mem_available()
    too_big = [s for s in sizes if s > avail]
    if too_big:
        raise HostError(
            f"size {format_size(max(too_big))} is more than MemAvailable "
            f"({avail / 2**30:.1f} GiB); not allocating it"
        )


def _probe_accounting(hierarchy: str) -> tuple[Optional[str], str]:
    """(hierarchy in use, "") or (None, reason) -- a cgroup made and removed."""
    try:
        with cgroup_scope(hierarchy) as scope:
            scope.create("probe")
            return scope.hierarchy, ""
    except AccountingUnavailable as err:
        return None, err.reason


def run_shutdown(req: ShutdownRequest, progress: Progress = None) -> ShutdownResult:
    """Run every (strategy, size) ``req.repeat`` times; see the module docstring."""
    req.validate()
    _check_memory(req.sizes)
    say = progress or (lambda _msg: None)
    start = time.monotonic()
    busy0, total0 = _cpu_busy_jiffies()
    load0 = _loadavg()

    skips = _skip_reasons(req)
    hierarchy, accounting_reason = _probe_accounting(req.hierarchy)
    if accounting_reason:
        say(f"accounting unavailable, verdicts will be SKIP: {accounting_reason}")
    records: dict[tuple[str, int], ShutdownRecord] = {}
    for size in req.sizes:
        for s in req.strategies:
            records[(s, size)] = ShutdownRecord(s, size, req.thp, req.vm)
            if s in skips:
                records[(s, size)].skip_reason = skips[s]
            elif s == "elsewhere" and accounting_reason:
                why = f"needs a second cgroup to move the cleaner to: {accounting_reason}"
                records[(s, size)].skip_reason = why

    runnable = [s for s in req.strategies if s not in skips]
    try:
        for repeat in range(req.repeat):
            # Rotate the order each repeat: no strategy always runs first (cold
            # caches, a neighbour's job starting) or right after another's teardown.
            k = repeat % max(1, len(runnable))
            order = runnable[k:] + runnable[:k]
            for size in req.sizes:
                for strategy in order:
                    rec = records[(strategy, size)]
                    if rec.skip_reason:
                        continue
                    _check_memory([size])
                    say(f"repeat {repeat + 1}/{req.repeat}: {strategy} {format_size(size)}")
                    sample = _run_once(strategy, size, req, repeat, not accounting_reason)
                    rec.samples.append(sample)
    except (Interrupted, KeyboardInterrupt) as exc:
        # The samples taken so far travel with the signal, for --json.
        partial = _result(req, records, hierarchy, accounting_reason, start, load0)
        partial.interrupted = exc.signo if isinstance(exc, Interrupted) else 2
        exc.shutdown_result = partial  # type: ignore[union-attr]
        raise
    return _result(req, records, hierarchy, accounting_reason, start, load0, (busy0, total0))


def _result(
    req: ShutdownRequest,
    records: dict[tuple[str, int], ShutdownRecord],
    hierarchy: Optional[str],
    accounting_reason: str,
    start: float,
    load0: Any,
    busy: Optional[tuple[int, int]] = None,
) -> ShutdownResult:
    """Judge the records against the sync baseline and wrap them with the host's facts."""
    for size in req.sizes:
        sync = records.get(("sync", size))
        baseline = None
        if sync is not None and sync.samples and not accounting_reason:
            baseline = _median_int([s.worker_cgroup_ns for s in sync.samples])
        for s in req.strategies:
            _judge(records[(s, size)], baseline, accounting_reason)

    host: dict[str, Any] = {
        "kernel_release": os.uname().release,
        "cpus": os.cpu_count(),
        "thp_mode": (thp_mode() or "unknown"),
        "loadavg_start": load0,
        "loadavg_end": _loadavg(),
    }
    if busy is not None:
        busy1, total1 = _cpu_busy_jiffies()
        # All CPUs, everyone's work (ours included): how busy the machine was.
        host["cpu_busy_fraction"] = round((busy1 - busy[0]) / max(1, total1 - busy[1]), 3)
    return ShutdownResult(
        request=req,
        records=list(records.values()),
        hierarchy=hierarchy,
        accounting_reason=accounting_reason,
        host=host,
        elapsed_s=time.monotonic() - start,
    )


def parse_strategies(text: str) -> list[str]:
    """``sync,cleaner`` -> ["sync", "cleaner"]; UsageError on unknown names."""
    out = [s.strip() for s in text.split(",") if s.strip()]
    if not out:
        raise UsageError(f"invalid strategy list {text!r}")
    for s in out:
        if s not in STRATEGIES:
            raise UsageError(f"unknown strategy {s!r}: choose from {', '.join(STRATEGIES)}")
    return out


__all__ = [
    "DEFAULT_STRATEGIES",
    "EXPECTED",
    "STRATEGIES",
    "Sample",
    "ShutdownRecord",
    "ShutdownRequest",
    "ShutdownResult",
    "mem_available",
    "parse_strategies",
    "run_shutdown",
]
