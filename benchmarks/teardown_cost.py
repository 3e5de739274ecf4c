#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Teardown cost: the cleaner's CPU against a plain exit's, and the parallel release, before/after.

What it answers (issue 27; the traces behind it are in docs/teardown-cost.md):

* cleaner CPU / sync CPU at each size (goal <= 1.05): the CPU the worker's
  cgroup spends across the exit when the cleaner frees the memory, against a
  plain exit of the same memory;
* parallel release / cleaner release at the largest size (goal <= 0.55 on a
  2-CPU machine), and parallel CPU / cleaner CPU (what the helpers cost).

Both for the cleaner as it was before issue 27 ("before": it stays on the
CPU its wakeup put it on) and as it is now ("after": it moves to the armed
process's last CPU); the parallel release gives each task one fixed slice in
both (the chunked release issue 27 tried was slower: teardown_trace.py's
``parallel-chunks``).  "before" is the same library with its benchmark hook
set (``KVMPV_CLEANER_TEST_LEGACY=placement``, see ``kvmpv/native/cleaner.c``),
so both run in this one invocation.

How: each repeat runs ``kvmpv shutdown --sizes SIZES --strategy
sync,cleaner,parallel --repeat 1`` once per variant, the two variants in
alternating order, under ``flock /tmp/kvmpv-bigmem.lock``.  Every ratio is
taken within one invocation (the sync it is divided by ran seconds before
or after it) and printed as the ratio of the medians, then the median of the
per-repeat ratios with its 90% bootstrap interval (``_run.paired_interval``).
CPU is the worker cgroup's counter delta across the exit (``cpuacct.usage``
or ``cpu.stat``), release the time until the cleaner's pidfd is readable:
other jobs on the machine inflate both, so the load average is printed and
a run under load says so.

Usage: ``python benchmarks/teardown_cost.py [--sizes 512M,1G,2G,8G]
[--repeat 9] [--keep FILE] [--from FILE]``.  Exit 0 when every goal is met
by the "after" variant, 1 otherwise, 3 when the host lacks the memory, 4
when the cleaner cannot run here (SKIP, with the reason).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Optional

from _run import LEVEL, LOCK, ROOT, need_memory, paired_interval, run_kvmpv

from kvmpv import teardown
from kvmpv.units import format_size, parse_sizes

#: the two variants: name -> KVMPV_CLEANER_TEST_LEGACY
VARIANTS = {"before": "placement", "after": ""}
CPU_GOAL = 1.05
PARALLEL_GOAL = 0.55
#: a load average above this (2 CPUs) makes the CPU numbers suspect
BUSY_LOAD = 1.5

#: arms the cleaner with a report fd and exits: does this library report
#: "cpu" lines (issue 27's cleaner), i.e. does it know the LEGACY hook?
PROBE = r"""
import os, sys
from kvmpv import teardown
teardown.arm()
os._exit(0)
"""


def probe_library() -> tuple[bool, str]:
    """(True, path) if the cleaner the benchmark will run is issue 27's, else (False, why)."""
    ok, where = teardown.native_available()
    if not ok:
        return False, where
    r, w = os.pipe()
    env = {**os.environ, "PYTHONPATH": ROOT, teardown.REPORT_FD_ENV: str(w)}
    try:
        subprocess.run(
            [sys.executable, "-c", PROBE], cwd=ROOT, env=env, pass_fds=(w,), timeout=60, check=True
        )
    finally:
        os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())  # EOF once the cleaner exited
    rep = teardown.CleanerReport.parse(b"".join(chunks).decode("ascii"))
    if not rep.cpus:
        return False, (
            f"{where} predates issue 27 (its report has no 'cpu' line, so it ignores "
            "KVMPV_CLEANER_TEST_LEGACY): rebuild it (python setup.py build_ext --inplace)"
        )
    return True, where


def run(args: argparse.Namespace, sizes: list[int], path: str) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    names = list(VARIANTS)
    with open(LOCK, "w") as lock:
        print(f"waiting for {LOCK} ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        for repeat in range(args.repeat):
            # Alternate the order: neither variant always runs first.
            order = names if repeat % 2 == 0 else names[::-1]
            for name in order:
                need_memory(max(sizes))
                out = f"{path}.{repeat}.{name}.json"
                cmd = [
                    "shutdown", "--sizes", ",".join(map(format_size, sizes)),
                    "--strategy", "sync,cleaner,parallel", "--repeat", "1",
                    "--json", out, "--quiet",
                ]  # fmt: skip
                doc = run_kvmpv(
                    cmd,
                    out,
                    env={"KVMPV_CLEANER_TEST_LEGACY": VARIANTS[name]},
                    quiet=True,
                )
                runs.append({"repeat": repeat, "variant": name, "result": doc})
    whole = {"sizes": sizes, "repeat": args.repeat, "variants": VARIANTS, "runs": runs}
    with open(path, "w") as f:
        json.dump(whole, f)
    return whole


def sample(doc: dict[str, Any], strategy: str, size: int, key: str) -> Optional[float]:
    """One run's value of ``key`` (``worker_cgroup_s``, ``release_s``) for a strategy/size."""
    for rec in doc["records"]:
        if rec["strategy"] == strategy and rec["size_bytes"] == size:
            reps = rec.get("repeats") or []
            if reps and isinstance(reps[0].get(key), (int, float)):
                return float(reps[0][key])
    return None


def pairs(
    whole: dict[str, Any], variant: str, size: int, num: tuple[str, str], den: tuple[str, str]
) -> list[tuple[float, float]]:
    """(num, den) per repeat, both from the same ``kvmpv shutdown`` run."""
    out = []
    for run_ in whole["runs"]:
        if run_["variant"] != variant:
            continue
        a = sample(run_["result"], num[0], size, num[1])
        b = sample(run_["result"], den[0], size, den[1])
        if a is not None and b is not None and b > 0:
            out.append((a, b))
    return out


def ratio_cell(p: list[tuple[float, float]]) -> tuple[str, Optional[float]]:
    """("0.970 (paired 0.980 [0.950-1.010])", the ratio of the medians)."""
    if not p:
        return "-", None
    r = statistics.median(a for a, _ in p) / statistics.median(b for _, b in p)
    cell = f"{r:.3f}"
    iv = paired_interval(p)
    if iv is not None:
        cell += f" (paired {iv.ratio / 100:.3f} [{iv.low / 100:.3f}-{iv.high / 100:.3f}])"
    return cell, r


def report(whole: dict[str, Any]) -> int:
    sizes = whole["sizes"]
    runs = whole["runs"]
    loads = [r["result"]["host"].get("loadavg_start") for r in runs]
    first = runs[0]["result"]["host"] if runs else {}
    print(
        f"\nhost {first.get('kernel_release')}, {first.get('cpus')} CPUs, cgroup "
        f"{runs[0]['result'].get('hierarchy') if runs else '-'}; {whole['repeat']} repeats x "
        f"{len(VARIANTS)} variants; load average at each run's start: "
        + ", ".join(str(x[0]) if isinstance(x, list) else str(x) for x in loads)
    )
    busy = [x[0] for x in loads if isinstance(x, list) and x and x[0] > BUSY_LOAD]
    if busy:
        print(
            f"  NOTE: {len(busy)} of {len(loads)} runs started with a load average above "
            f"{BUSY_LOAD}: other jobs share the CPUs and inflate CPU and release times"
        )
    missed = 0
    head = ("", "before (ratio of medians, paired [90%])", "after", "goal")
    rows: list[tuple[str, ...]] = []

    def row(what: str, num: tuple[str, str], den: tuple[str, str], size: int,
            goal: Optional[float]) -> None:  # fmt: skip
        nonlocal missed
        cells = []
        verdict = ""
        for name in VARIANTS:
            cell, r = ratio_cell(pairs(whole, name, size, num, den))
            cells.append(cell)
            if name == "after" and goal is not None and r is not None:
                verdict = "ok" if r <= goal else "MISSED"
                iv = paired_interval(pairs(whole, name, size, num, den))
                if iv is not None and iv.low / 100 <= goal <= iv.high / 100:
                    verdict += " (interval straddles the goal)"
                missed += r > goal
        goal_s = f"<= {goal:.2f}: {verdict}" if goal is not None else ""
        rows.append((what, *cells, goal_s))

    cpu = "worker_cgroup_s"
    for size in sizes:
        row(f"{format_size(size):>4s} cleaner CPU / sync CPU", ("cleaner", cpu), ("sync", cpu),
            size, CPU_GOAL)  # fmt: skip
    big = max(sizes)
    row(f"{format_size(big):>4s} parallel release / cleaner release",
        ("parallel", "release_s"), ("cleaner", "release_s"), big, PARALLEL_GOAL)  # fmt: skip
    row(f"{format_size(big):>4s} parallel CPU / cleaner CPU", ("parallel", cpu),
        ("cleaner", cpu), big, None)  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"\nratios (per-repeat pairs from one kvmpv shutdown run; {LEVEL:.0%} intervals)")
    for r in [head, *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())

    print("\nmedians (ms) of what the ratios divide")
    for size in sizes:
        parts = []
        for name in VARIANTS:
            vals = {}
            for strategy in ("sync", "cleaner", "parallel"):
                for key, label in ((cpu, "cpu"), ("release_s", "release")):
                    xs = [
                        v
                        for v in (
                            sample(r["result"], strategy, size, key)
                            for r in runs
                            if r["variant"] == name
                        )
                        if v is not None
                    ]
                    if xs:
                        vals[f"{strategy} {label}"] = statistics.median(xs) * 1e3
            parts.append(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in vals.items()))
        print(f"  {format_size(size):>4s}  " + "\n        ".join(parts))
    print(f"\n{'all goals met' if not missed else f'{missed} goal(s) missed'} (the 'after' column)")
    return 0 if not missed else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--sizes", default="512M,1G,2G,8G")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--keep", metavar="FILE", help="keep the JSON results here")
    ap.add_argument("--from", dest="src", metavar="FILE", help="re-print from a kept JSON file")
    args = ap.parse_args()
    if args.src:
        with open(args.src) as f:
            return report(json.load(f))
    if args.repeat < 2:
        ap.error("--repeat must be at least 2 (paired intervals)")
    ok, where = probe_library()
    if not ok:
        print(f"SKIP: {where}")
        return 4
    print(f"cleaner library: {where}")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    if load > BUSY_LOAD:
        print(f"NOTE: load average {load:.2f} now: CPU numbers will be noisy")
    sizes = parse_sizes(args.sizes)
    path = args.keep or os.path.join(tempfile.mkdtemp(prefix="kvmpv-teardown-cost-"), "r.json")
    whole = run(args, sizes, path)
    print(f"results: {path}")
    return report(whole)


if __name__ == "__main__":
    sys.exit(main())
