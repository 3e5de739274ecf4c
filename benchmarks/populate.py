# SPDX-License-Identifier: GPL-2.0-only
"""Populate guest memory: kvmpv vs a C loop, side by side in one run.

Measures, for each page size (4 KiB, THP) and repetition, interleaved:

* ``C loop``: a tiny C program, compiled here with gcc into a temp dir, that
  mmaps SIZE of anonymous memory and writes one byte per 4 KiB page (only
  the loop is timed, with CLOCK_MONOTONIC);
* ``kvmpv populate``: ``GuestMemory(SIZE).populate()`` (MADV_POPULATE_WRITE);
* ``kvmpv x86 guest``: ``vm_touch_memory()`` on a fresh VM: the real guest
  writes one byte per page (KVM_RUN time; "total" adds VM/vCPU/page-table
  set-up);
* ``populate+guest``: ``populate()`` first, then the guest (the sum of both).

and prints the medians and the ratios to the C loop (target:
kvmpv populate <= 1.5x the C loop).  Times are noisy on a shared machine;
the ratios of runs interleaved in one process are what count.

Uses up to SIZE of memory at a time (one variant after the other).  It takes
the big-memory lock ``/tmp/kvmpv-bigmem.lock`` itself (do not wrap it in
``flock`` on the same file: that would deadlock) and checks MemAvailable.

    python benchmarks/populate.py [--size 4G] [--reps 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvmpv.kvm import Kvm
from kvmpv.memory import GuestMemory, mem_available
from kvmpv.units import format_size, parse_size
from kvmpv.x86guest import count_written, vm_touch_memory

LOCK = "/tmp/kvmpv-bigmem.lock"

C_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

/* usage: touch SIZE THP -- prints the seconds the write loop took */
int main(int argc, char **argv)
{
    size_t size = strtoull(argv[1], NULL, 0), off;
    int thp = atoi(argv[2]);
    struct timespec a, b;
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

    if (argc != 3 || p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(p, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (off = 0; off < size; off += 4096)
        ((volatile char *)p)[off] = 1;
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.9f\n", (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"""


def build_c(tmp: str) -> str:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("populate.py: needs gcc to build the C baseline")
    src = os.path.join(tmp, "touch.c")
    exe = os.path.join(tmp, "touch")
    Path(src).write_text(C_SOURCE)
    subprocess.run([gcc, "-O2", "-o", exe, src], check=True)
    return exe


def c_loop(exe: str, size: int, thp: bool) -> dict[str, float]:
    out = subprocess.run([exe, str(size), str(int(thp))], check=True, capture_output=True)
    return {"s": float(out.stdout)}


def kvmpv_populate(size: int, thp: bool) -> dict[str, float]:
    with GuestMemory(size, thp=thp) as mem:
        start = time.perf_counter()
        mem.populate()
        elapsed = time.perf_counter() - start
        usage = mem.usage()
    if usage.rss != size:
        raise SystemExit(f"populate left {usage.rss} of {size} bytes resident")
    return {"s": elapsed, "thp_bytes": usage.anon_huge}


def kvmpv_guest(size: int, thp: bool) -> dict[str, float]:
    start = time.perf_counter()
    with Kvm() as kvm, kvm.vm_create() as vm, GuestMemory(size, thp=thp) as mem:
        result = vm_touch_memory(vm, mem)
        total = time.perf_counter() - start
        written = count_written(mem, 0xA5)
        usage = mem.usage()
    if written != size // 4096 or result.pages_written != written:
        raise SystemExit(f"guest wrote {written} pages (says {result.pages_written})")
    return {"s": result.run_s, "total_s": total, "thp_bytes": usage.anon_huge}


def kvmpv_populate_guest(size: int, thp: bool) -> dict[str, float]:
    start = time.perf_counter()
    with Kvm() as kvm, kvm.vm_create() as vm, GuestMemory(size, thp=thp) as mem:
        t0 = time.perf_counter()
        mem.populate()
        populate_s = time.perf_counter() - t0
        result = vm_touch_memory(vm, mem)
        total = time.perf_counter() - start
        written = count_written(mem, 0xA5)
    if written != size // 4096:
        raise SystemExit(f"guest wrote {written} pages")
    return {"s": populate_s + result.run_s, "total_s": total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="4G")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-guest", action="store_true", help="skip the x86 guest variant")
    ap.add_argument("--json", metavar="FILE", help="also write the raw numbers as JSON")
    args = ap.parse_args()
    size = parse_size(args.size)

    with open(LOCK, "a") as lock:
        print(f"waiting for {LOCK} ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        avail = mem_available()
        if avail < size + (1 << 30):
            sys.exit(
                f"populate.py: {format_size(size)} needs MemAvailable >= size + 1G, have {avail}"
            )
        tmp = tempfile.mkdtemp(prefix="kvmpv-bench-")
        try:
            exe = build_c(tmp)
            variants: dict[str, Callable[[int, bool], dict[str, float]]] = {
                "C loop": lambda s, t: c_loop(exe, s, t),
                "kvmpv populate": kvmpv_populate,
            }
            if not args.no_guest:
                variants["kvmpv x86 guest"] = kvmpv_guest
                variants["populate+guest"] = kvmpv_populate_guest
            raw: dict[str, dict[str, list[dict[str, float]]]] = {}
            for thp in (False, True):
                page = "THP" if thp else "4K"
                raw[page] = {name: [] for name in variants}
                for rep in range(args.reps):
                    # Rotate the order so no variant always runs first (or last).
                    names = list(variants)
                    names = names[rep % len(names) :] + names[: rep % len(names)]
                    for name in names:
                        r = variants[name](size, thp)
                        raw[page][name].append(r)
                        extra = f" (total {r['total_s']:.3f} s)" if "total_s" in r else ""
                        print(
                            f"{page:3} rep {rep + 1}  {name:16} {r['s']:8.3f} s{extra}", flush=True
                        )
        finally:
            shutil.rmtree(tmp)

    print()
    print(f"populate {format_size(size)}, median of {args.reps} interleaved runs:")
    print(f"{'pages':5}  {'variant':16} {'median s':>9} {'vs C loop':>10}")
    summary: dict[str, Any] = {"size_bytes": size, "reps": args.reps, "results": {}}
    for page, per in raw.items():
        c_med = statistics.median(r["s"] for r in per["C loop"])
        for name, runs in per.items():
            med = statistics.median(r["s"] for r in runs)
            ratio = med / c_med
            target = ""
            if name == "kvmpv populate":
                target = "  (target <= 1.5x: " + ("met" if ratio <= 1.5 else "MISSED") + ")"
            print(f"{page:5}  {name:16} {med:9.3f} {ratio:9.2f}x{target}")
            summary["results"].setdefault(page, {})[name] = {
                "median_s": med,
                "ratio_to_c": ratio,
                "runs": runs,
            }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
