# SPDX-License-Identifier: GPL-2.0-only
"""Destroy throughput of the simulator's cost model (kvmpv.sim), side by side.

Prints, for one guest size, in one run:

* raw ``ctypes.memset`` of already-populated memory (the floor: what one
  clearing pass costs on this machine),
* the simulated guest boot (import: clear + mark secure),
* PERFORM (async cleanup of a set-aside configuration),
* synchronous DISABLE of the same amount of secure memory,

each as wall seconds, the calling thread's CPU seconds and GiB/s, plus the
ratios PERFORM/memset and DISABLE/PERFORM.  The guest memory sits at guest
address 4 GiB, so PREPARE's synchronous destroy below 2 GiB has nothing to do
and PERFORM does all the work.

Usage: python benchmarks/sim_destroy_throughput.py [--memory 1G] [--repeat 3]
(above 2G wrap it in ``flock /tmp/kvmpv-bigmem.lock`` as the brief asks).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmpv import uapi
from kvmpv.kvm import Kvm
from kvmpv.memory import GuestMemory
from kvmpv.pv import pv_cmd
from kvmpv.sim import SimulatedHost
from kvmpv.units import format_size, parse_size

P = uapi.pv_cmd_id
GiB = 1 << 30


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w0, time.thread_time() - c0


def one_round(size: int) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    with GuestMemory(size) as mem:
        mem.populate()
        out["memset"] = timed(lambda: ctypes.memset(mem.addr, 0, size))
        host = SimulatedHost()
        with Kvm(sys=host) as kvm, kvm.vm_create() as vm:
            vm.mem_add(mem, slot=0, gpa=4 * GiB)
            vcpu = vm.vcpu_add(0)
            pv_cmd(vm, P.KVM_PV_ENABLE)
            out["boot (import)"] = timed(vcpu.run)
            out["PREPARE"] = timed(lambda: pv_cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE))
            out["PERFORM"] = timed(lambda: pv_cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM))
            pv_cmd(vm, P.KVM_PV_ENABLE)
            vcpu.run()
            out["DISABLE (sync)"] = timed(lambda: pv_cmd(vm, P.KVM_PV_DISABLE))
        assert host.protected_count == 0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = parse_size(args.memory)
    rounds = [one_round(size) for _ in range(args.repeat)]
    print(f"sim cost model, guest {format_size(size)}, median of {args.repeat} rounds")
    print(f"{'step':<16} {'wall s':>8} {'cpu s':>8} {'GiB/s':>8}")
    med: dict[str, float] = {}
    for step in rounds[0]:
        wall = statistics.median(r[step][0] for r in rounds)
        cpu = statistics.median(r[step][1] for r in rounds)
        med[step] = wall
        rate = f"{size / GiB / wall:8.2f}" if step != "PREPARE" and wall > 0 else f"{'-':>8}"
        print(f"{step:<16} {wall:8.3f} {cpu:8.3f} {rate}")
    print(f"ratio PERFORM/memset: {med['PERFORM'] / med['memset']:.2f}")
    print(f"ratio DISABLE/PERFORM: {med['DISABLE (sync)'] / med['PERFORM']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
