#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Where a teardown's CPU goes: the kernel's own counts, per placement of the cleaner.

    python benchmarks/teardown_trace.py [--size 512M] [--repeat 6] [--cpu 0]
        [--variants sync,cleaner-before,cleaner-other,cleaner] [--parallel]

The evidence behind docs/teardown-cost.md.  A worker (a fresh interpreter in
a private cgroup) arms the cleaner (or not), moves itself to CPU ``--cpu``,
populates SIZE of 4 KiB pages there and exits there.  Variants, interleaved:

* ``sync``: plain exit, on that CPU;
* ``cleaner-before``: the cleaner as before issue 27 (it stays where its
  wakeup puts it: ``KVMPV_CLEANER_TEST_LEGACY=placement``);
* ``cleaner-other``: the same, pinned from outside to another CPU;
* ``cleaner``: the cleaner now (it moves to the worker's last CPU);
* with ``--parallel``: ``parallel-before`` (fixed slices, no placement) and
  ``parallel`` (chunks), two tasks each.

For each exit, the CPU the worker's cgroup spent, the CPU the teardown ran
on, and counts of kernel tracepoints fired by the worker, its cleaner and
the helpers (tracefs ``set_event_pid`` with ``event-fork``), one tracefs
instance per event whose ring-buffer statistics (``entries + overrun``) are
the count, so an 8 GiB teardown's millions of events need no big buffer:

* ``kmem:mm_page_free_batched``: pages freed (``free_unref_folios``);
* ``kmem:mm_page_pcpu_drain``: pages moved from a per-cpu list to the buddy
  allocator under ``zone->lock`` (``free_pcppages_bulk``);
* ``tlb:tlb_flush``, ``ipi:ipi_send_cpu``/``ipi_send_cpumask``,
  ``lock:contention_begin``: TLB flushes, IPIs sent, contended locks.

Counts do not depend on the machine's load; CPU times do (the load average
is printed).  Before each exit the Normal zone's per-cpu list state
(count/high, ``/proc/zoneinfo``) is recorded: it decides how many pages go
to the buddy allocator.  Needs root, tracefs and ``cpuacct``/``cpu.stat``;
exit 4 (SKIP, with the reason) otherwise, 3 without the memory.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import select
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

from _run import LOCK, ROOT, need_memory

from kvmpv import teardown
from kvmpv.accounting import AccountingUnavailable, Cgroup, cgroup_scope
from kvmpv.units import format_size, parse_size

TRACEFS = "/sys/kernel/tracing"
EVENTS = {
    "freed": ["kmem/mm_page_free_batched"],
    "to_buddy": ["kmem/mm_page_pcpu_drain"],
    "tlb_flush": ["tlb/tlb_flush"],
    "ipi": ["ipi/ipi_send_cpu", "ipi/ipi_send_cpumask"],
    "contended": ["lock/contention_begin"],
}
#: variant -> (arm with parallel, KVMPV_CLEANER_TEST_LEGACY, pin the cleaner elsewhere)
VARIANTS = {
    "sync": (None, "", False),
    "cleaner-before": (1, "placement", False),
    "cleaner-other": (1, "placement", True),
    "cleaner": (1, "", False),
    "parallel-before": (2, "placement", False),
    "parallel": (2, "", False),
    "parallel-chunks": (2, "chunks", False),
}
WORKER = r"""
import json, os, sys
par, cpu, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
from kvmpv import teardown
from kvmpv.memory import GuestMemory
os.setpriority(os.PRIO_PROCESS, 0, -10)
st = teardown.arm(par) if par else None   # the cleaner keeps the full CPU mask
os.sched_setaffinity(0, {cpu})            # then this process moves to CPU `cpu`,
mem = GuestMemory(size)                   # populates there (the lists it empties)
mem.populate()
print(json.dumps({"cleaner": st.pid if st else 0}), flush=True)
sys.stdin.readline()
os._exit(0)
"""


class Counter:
    """One tracefs instance per event; its ring-buffer statistics are the count."""

    def __init__(self) -> None:
        self.dirs: dict[str, str] = {}
        for name, events in EVENTS.items():
            for ev in events:
                d = f"{TRACEFS}/instances/kvmpv-trace-{os.getpid()}-{ev.replace('/', '-')}"
                os.mkdir(d)
                self.dirs[f"{name}:{ev}"] = d
                self._w(d, "buffer_size_kb", "64")
                self._w(d, "options/event-fork", "1")

    @staticmethod
    def _w(d: str, f: str, v: str) -> None:
        with open(f"{d}/{f}", "w") as fh:
            fh.write(v)

    def start(self, pids: list[int]) -> None:
        for key, d in self.dirs.items():
            self._w(d, "tracing_on", "0")
            self._w(d, "trace", "")  # also resets the statistics
            self._w(d, "set_event_pid", " ".join(map(str, pids)))
            self._w(d, f"events/{key.split(':', 1)[1]}/enable", "1")
            self._w(d, "tracing_on", "1")

    def stop(self) -> dict[str, int]:
        out: dict[str, int] = {name: 0 for name in EVENTS}
        for key, d in self.dirs.items():
            self._w(d, "tracing_on", "0")
            self._w(d, f"events/{key.split(':', 1)[1]}/enable", "0")
            for cpu in os.listdir(f"{d}/per_cpu"):
                with open(f"{d}/per_cpu/{cpu}/stats") as f:
                    stats = dict(
                        (k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in f)
                    )
                out[key.split(":", 1)[0]] += int(stats["entries"]) + int(stats["overrun"])
        return out

    def close(self) -> None:
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                self._w(d, "tracing_on", "0")
                os.rmdir(d)


def pcp_state() -> dict[int, tuple[int, int]]:
    """{cpu: (count, high)} of the Normal zone's per-cpu page lists."""
    with open("/proc/zoneinfo") as f:
        text = f.read()
    normal = text.split("zone   Normal", 1)[-1].split("\nNode ", 1)[0]
    return {
        int(m.group(1)): (int(m.group(2)), int(m.group(3)))
        for m in re.finditer(r"cpu: (\d+)\s+count:\s+(\d+)\s+high:\s+(\d+)", normal)
    }


@dataclass
class Exit:
    cpu_ms: float
    ran_on: int
    counts: dict[str, int]
    pcp_before: dict[int, tuple[int, int]] = field(default_factory=dict)


def percpu_ns(cg: Cgroup) -> Optional[list[int]]:
    """cpuacct.usage_percpu (v1) -- None on cgroup2, which has no per-CPU split."""
    path = os.path.join(cg.path, "cpuacct.usage_percpu")
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return None


def one_exit(variant: str, size: int, cpu: int, other: int, wcg: Cgroup, ctr: Counter) -> Exit:
    par, legacy, pin_other = VARIANTS[variant]
    env = {**os.environ, "PYTHONPATH": ROOT, "KVMPV_CLEANER_TEST_LEGACY": legacy}
    proc = subprocess.Popen(
        # In the cgroup from its first instruction: its memory and CPU are charged there.
        wcg.spawn_argv([sys.executable, "-c", WORKER, str(par or 0), str(cpu), str(size)]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    fds: list[int] = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {proc.pid} died (exit {proc.wait()})")
        cleaner = int(json.loads(line)["cleaner"])
        fds.append(os.pidfd_open(proc.pid))
        pids = [proc.pid]
        if cleaner:
            fds.append(os.pidfd_open(cleaner))
            pids.append(cleaner)
            if pin_other:
                os.sched_setaffinity(cleaner, {other})
        before = pcp_state()
        ctr.start(pids)
        cpu0, per0 = wcg.cpu().total_ns, percpu_ns(wcg)
        proc.stdin.write(b"exit\n")
        proc.stdin.flush()
        for fd in fds:
            if not select.select([fd], [], [], 300)[0]:
                raise RuntimeError(f"no exit within 300 s ({variant})")
        cpu1, per1 = wcg.cpu().total_ns, percpu_ns(wcg)
        counts = ctr.stop()
        ran_on = -1
        if per0 is not None and per1 is not None:
            deltas = [b - a for a, b in zip(per0, per1)]
            ran_on = max(range(len(deltas)), key=deltas.__getitem__)
        return Exit((cpu1 - cpu0) / 1e6, ran_on, counts, before)
    finally:
        for fd in fds:
            os.close(fd)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def worker_cgroup() -> Iterator[Cgroup]:
    with cgroup_scope("auto") as scope:
        yield scope.create("trace")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size", default="512M")
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--cpu", type=int, default=None, help="the worker's CPU (default: the first)")
    ap.add_argument("--variants", default="sync,cleaner-before,cleaner-other,cleaner")
    ap.add_argument("--parallel", action="store_true", help="add parallel-before,parallel")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if args.parallel:
        variants += ["parallel-before", "parallel"]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}: {', '.join(VARIANTS)}")
    size = parse_size(args.size)
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[0] if args.cpu is None else args.cpu
    others = [c for c in cpus if c != cpu]
    ok, why = teardown.native_available()
    if os.geteuid() != 0 or not os.path.isdir(f"{TRACEFS}/instances") or not ok or not others:
        reason = why if not ok else "needs root, tracefs at /sys/kernel/tracing and 2 CPUs"
        print(f"SKIP: {reason}")
        return 4
    results: dict[str, list[Exit]] = {v: [] for v in variants}
    lock = open(LOCK, "w")  # the shared machine's big-memory lock, held to the end
    print(f"waiting for {LOCK} ...", flush=True)
    fcntl.flock(lock, fcntl.LOCK_EX)
    need_memory(size)
    try:
        ctr = Counter()
    except OSError as err:
        print(f"SKIP: cannot create a tracefs instance: {err}")
        return 4
    try:
        with worker_cgroup() as wcg:
            for r in range(args.repeat):
                k = r % len(variants)
                for v in variants[k:] + variants[:k]:
                    results[v].append(one_exit(v, size, cpu, others[0], wcg, ctr))
    except AccountingUnavailable as err:
        print(f"SKIP: {err.reason}")
        return 4
    finally:
        ctr.close()
    print(
        f"{format_size(size)} of 4 KiB pages, worker exits on CPU {cpu}, {args.repeat} exits per "
        f"variant, medians [all]; load average {os.getloadavg()[0]:.2f}"
    )
    for v, exits in results.items():
        med = {k: float(statistics.median(e.counts[k] for e in exits)) for k in EVENTS}
        share = 100 * med["to_buddy"] / med["freed"] if med["freed"] else 0.0
        print(
            f"  {v:15s} cpu {statistics.median(e.cpu_ms for e in exits):7.1f} ms "
            f"[{', '.join(f'{e.cpu_ms:.1f}' for e in exits)}]  on CPU {[e.ran_on for e in exits]}\n"
            f"  {'':15s} pages freed {med['freed']:.0f}, "
            f"to the buddy allocator {med['to_buddy']:.0f}"
            f" ({share:.0f}%) [{', '.join(str(e.counts['to_buddy']) for e in exits)}]; "
            f"tlb_flush {med['tlb_flush']:.0f}, IPIs {med['ipi']:.0f}, "
            f"contended locks {med['contended']:.0f}\n"
            f"  {'':15s} per-cpu lists (count/high) before: "
            + "; ".join(
                ", ".join(f"cpu{c} {n}/{h}" for c, (n, h) in sorted(e.pcp_before.items()))
                for e in exits[:3]
            )
        )
    plain = [e for v, exits in results.items() if not v.startswith("parallel") for e in exits]
    fit = linear_fit([float(e.counts["to_buddy"]) for e in plain], [e.cpu_ms for e in plain])
    if fit is not None:
        a, b, corr = fit
        print(
            f"  one task, all variants ({len(plain)} exits): cpu = {a:.1f} ms + "
            f"{b * 1e6:.0f} ns x pages to the buddy allocator (r = {corr:.2f})"
        )
    return 0


def linear_fit(x: list[float], y: list[float]) -> Optional[tuple[float, float, float]]:
    """Least squares y = a + b x and the correlation r (None if x or y is constant)."""
    if len(x) < 3:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((v - mx) ** 2 for v in x)
    syy = sum((v - my) ** 2 for v in y)
    if sxx == 0 or syy == 0:
        return None
    sxy = sum((u - mx) * (v - my) for u, v in zip(x, y))
    b = sxy / sxx
    return my - b * mx, b, sxy / (sxx * syy) ** 0.5


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
