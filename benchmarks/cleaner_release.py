# SPDX-License-Identifier: GPL-2.0-only
"""Exit latency and release time: plain exit vs the cleaner vs the parallel cleaner.

    python benchmarks/cleaner_release.py [--sizes 1G,2G] [--parallel 2] [--repeat 5]

A child process populates SIZE bytes of 4 KiB pages, arms (or not) the
cleaner, and exits with os._exit when told.  Measured from outside with
pidfds, in one run, modes interleaved so machine noise hits all alike:

* exit latency: "exit" sent -> the child's pidfd is readable (what a waiter sees);
* release: "exit" sent -> the memory is freed (sync: the exit itself; cleaner:
  the cleaner's pidfd readable, since exit_mmap runs before its exit is signalled);
* start delay (1 MiB): cleaner exit - child exit, an upper bound of the time the
  cleaner needs to notice the complete exit (QEMU polls every second).

Prints medians (min..max) and the ratios parallel/plain and cleaner/sync.
Sizes above 2 GiB: run it under ``flock /tmp/kvmpv-bigmem.lock`` (shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvmpv import teardown  # noqa: E402
from kvmpv.units import format_size, parse_sizes  # noqa: E402

CHILD = r"""
import json, os, sys
from kvmpv.memory import GuestMemory
from kvmpv import teardown
size, mode, par = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
mem = GuestMemory(size)
mem.fill(1)
st = teardown.arm(par or None) if mode != "sync" else None
print(json.dumps({"cleaner": st.pid if st else 0}), flush=True)
sys.stdin.readline()
os._exit(0)
"""


def wait_fd(fd: int, timeout: float = 60) -> float:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise TimeoutError("process did not exit")
    return time.monotonic()


def one(size: int, mode: str, parallel: int) -> tuple[float, float]:
    """(exit latency, release time) in seconds for one child."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(size), mode, str(parallel)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.stdin is not None and proc.stdout is not None
    cleaner = json.loads(proc.stdout.readline())["cleaner"]
    pfd = os.pidfd_open(proc.pid)
    cfd: Optional[int] = os.pidfd_open(cleaner) if cleaner else None
    try:
        time.sleep(0.1)
        t0 = time.monotonic()
        proc.stdin.write("\n")
        proc.stdin.flush()
        t_exit = wait_fd(pfd)
        t_free = wait_fd(cfd) if cfd is not None else t_exit
        proc.wait()
        return t_exit - t0, t_free - t0
    finally:
        os.close(pfd)
        if cfd is not None:
            os.close(cfd)
        proc.stdin.close()
        proc.stdout.close()


def fmt(values: list[float]) -> str:
    return (
        f"{statistics.median(values) * 1e3:8.1f} ms "
        f"({min(values) * 1e3:.1f}..{max(values) * 1e3:.1f})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1G,2G")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    ok, why = teardown.native_available()
    if not ok:
        print(f"SKIP: {why}")
        return 4
    modes = [("sync", 0), ("cleaner", 0), ("parallel", args.parallel)]
    for size in parse_sizes(args.sizes):
        exits: dict[str, list[float]] = {m: [] for m, _ in modes}
        frees: dict[str, list[float]] = {m: [] for m, _ in modes}
        for _ in range(args.repeat):
            for name, par in modes:
                e, f = one(size, "sync" if name == "sync" else "cleaner", par)
                exits[name].append(e)
                frees[name].append(f)
        print(f"== {format_size(size)}, 4 KiB pages, {args.repeat} runs, median (min..max)")
        for name, par in modes:
            label = f"{name}" + (f" N={par}" if par else "")
            print(f"  {label:14s} exit latency {fmt(exits[name])}   release {fmt(frees[name])}")
        med = {m: statistics.median(frees[m]) for m, _ in modes}
        emed = {m: statistics.median(exits[m]) for m, _ in modes}
        print(
            f"  ratios: cleaner/sync exit latency {emed['cleaner'] / emed['sync']:.3f}, "
            f"release {med['cleaner'] / med['sync']:.2f}; "
            f"parallel/cleaner release {med['parallel'] / med['cleaner']:.2f}"
        )
    delays = {"cleaner": [], "parallel": []}  # type: dict[str, list[float]]
    for _ in range(args.repeat * 2):
        for name, par in modes[1:]:
            e, f = one(1 << 20, "cleaner", par)
            delays[name].append(f - e)
    for name, values in delays.items():
        print(f"  start delay (1 MiB, incl. freeing the interpreter) {name:8s} {fmt(values)}")
    small = [sleep_delay() for _ in range(args.repeat * 2)]
    print(f"  start delay (`sleep` under kvmpv launch --exec, SIGTERM)  {fmt(small)}")
    return 0


def sleep_delay() -> float:
    """Cleaner exit - program exit for a tiny C program: ~ the notification delay."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmpv", "launch", "--exec", "--", "sleep", "30"],
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        deadline = time.monotonic() + 10
        while not (found := teardown.find_cleaners(proc.pid)):
            if time.monotonic() > deadline:
                raise TimeoutError("no cleaner appeared")
            time.sleep(0.01)
        pfd, cfd = os.pidfd_open(proc.pid), os.pidfd_open(found[0])
        poller = select.poll()
        poller.register(pfd, select.POLLIN)
        poller.register(cfd, select.POLLIN)
        proc.terminate()
        seen: dict[int, float] = {}
        while len(seen) < 2:
            for fd, _ in poller.poll(10_000):
                seen.setdefault(fd, time.monotonic())
                poller.unregister(fd)
        os.close(pfd)
        os.close(cfd)
        return seen[cfd] - seen[pfd]
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
