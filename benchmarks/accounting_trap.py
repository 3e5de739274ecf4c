# SPDX-License-Identifier: GPL-2.0-only
"""Who is charged for an exit-time teardown, measured three ways side by side.

For each cgroup hierarchy (v1, v2) and SIZE of touched 4 KiB pages, a child
process is started inside a private "vm" cgroup, touches SIZE, and exits.
Printed per run: the taskstats exit record (sent before exit_mm(), so it
misses the teardown), wait4 rusage and the cgroup counters (both include it);
then the two verdicts: the same teardown with the exiting process in "vm"
(charged) and in "other" (not charged).  Needs root.  Uses 2*SIZE of memory
at most; above 2 GiB run it under ``flock /tmp/kvmpv-bigmem.lock``.

    python benchmarks/accounting_trap.py [--size 1G] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvmpv.accounting import (
    AccountingUnavailable,
    ExitRecordListener,
    cgroup_scope,
    judge_charged,
    reap,
)
from kvmpv.units import format_size, parse_size

CHILD = str(Path(__file__).resolve().parent.parent / "tests" / "_accounting_child.py")


def _schedstat_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def one(hierarchy: str, size: int, exit_in_vm: bool) -> dict[str, float]:
    with cgroup_scope(hierarchy) as scope, ExitRecordListener() as listener:
        vm, other = scope.create("vm"), scope.create("other")
        touch_in, exit_in = (other, vm) if exit_in_vm else (vm, other)
        argv = touch_in.spawn_argv([sys.executable, CHILD, "touch", str(size)])
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdin is not None and p.stdout is not None
        try:
            if p.stdout.readline().strip() != "touched":
                raise RuntimeError("child failed to touch its memory")
            exit_in.add_process(p.pid)
            vm0, ex0 = vm.cpu(), exit_in.cpu()
            before = _schedstat_ns(p.pid)
            p.stdin.write("x\n")
            p.stdin.flush()
            rec = listener.wait_for(p.pid, 30)
            ru = reap(p.pid)
            p.returncode = 0
            assert ru is not None
            vm1 = vm.cpu()
            ex = exit_in.cpu()
        finally:
            if p.returncode is None:
                p.kill()
                p.wait()
            p.stdin.close()
            p.stdout.close()
    # runtime minus runtime (schedstat before, the zombie's process clock
    # after); wait4's utime+stime is CPU-timer time on s390
    teardown = (ru.runtime_ns if ru.runtime_ns is not None else ru.cpu_ns) - before
    v = judge_charged(teardown, (vm1 - vm0).total_ns)
    return {
        "ts_stime": rec.stime_ns / 1e6,
        "ts_run": rec.runtime_ns / 1e6,
        "w4_stime": ru.system_ns / 1e6,
        "w4_total": ru.cpu_ns / 1e6,
        "cg_total": (ex - ex0).total_ns / 1e6,
        "teardown": teardown / 1e6,
        "vm_delta": (vm1 - vm0).total_ns / 1e6,
        "verdict": v.outcome.value,  # type: ignore[dict-item]
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size = parse_size(args.size)
    print(f"size {format_size(size)} of 4 KiB pages, {args.runs} runs each; times in ms (median)")
    print(
        "columns: taskstats exit record and wait4 over the child's life; 'missed' = wait4 total -"
        " taskstats run (what the exit record does not see); teardown = runtime from the exit"
        " request to reaping (wait4 - /proc/PID/schedstat); 'exit cg' = counter delta of the"
        " cgroup the child exited in, since it moved there; 'vm got' = delta of the vm cgroup"
    )
    print(
        f"{'hier':4} {'exit in':7} | {'taskstats stime/run':>19} | {'wait4 stime/total':>17} | "
        f"{'missed':>6} | {'teardown':>8} {'exit cg':>7} {'vm got':>7} verdict"
    )
    for h in ("v1", "v2"):
        for exit_in_vm in (True, False):
            try:
                rows = [one(h, size, exit_in_vm) for _ in range(args.runs)]
            except AccountingUnavailable as err:
                print(f"{h:4} SKIP: {err.reason}")
                break

            def med(k: str, rows: list[dict[str, float]] = rows) -> float:
                return statistics.median(r[k] for r in rows)

            verdicts = ",".join(sorted({str(r["verdict"]) for r in rows}))
            print(
                f"{h:4} {'vm' if exit_in_vm else 'other':7} | "
                f"{med('ts_stime'):8.1f} /{med('ts_run'):8.1f} | "
                f"{med('w4_stime'):7.1f} /{med('w4_total'):7.1f} | "
                f"{med('w4_total') - med('ts_run'):6.1f} | "
                f"{med('teardown'):8.1f} {med('cg_total'):7.1f} {med('vm_delta'):7.1f} {verdicts}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
