# SPDX-License-Identifier: GPL-2.0-only
"""What accounting this host offers, for ``kvmpv probe``.

Touches: creates and removes one private ``kvmpv-probe-*`` cgroup per
mounted hierarchy (the only honest test of write access), one taskstats GET
on our own thread, one proc connector subscription, one pidfd of ourselves.
Every "no" carries its reason; nothing is guessed from uid or file modes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..closing import signals_held
from .cgroups import CgroupScope, Layout, candidate_order, discover_layouts
from .common import AccountingUnavailable, CgroupLeftover
from .observe import proc_connector_status
from .taskstats import taskstats_status
from .verdict import default_tolerance_ns, kernel_hz

_V1_CPU = ("cpuacct.usage", "cpuacct.usage_user", "cpuacct.usage_sys", "cpuacct.stat")
_V1_MEM = ("memory.usage_in_bytes", "memory.max_usage_in_bytes")
_V2_CPU = ("cpu.stat",)
_V2_MEM = ("memory.current", "memory.peak")


@dataclass(frozen=True)
class HierarchyCaps:
    """One hierarchy choice ("v1" or "v2") as found on this host."""

    name: str
    mounted: bool
    usable: bool
    reason: str
    dirs: dict[str, str] = field(default_factory=dict)
    cpu_counters: list[str] = field(default_factory=list)
    memory_counters: list[str] = field(default_factory=list)
    thread_placement: bool = False


@dataclass(frozen=True)
class AccountingCaps:
    """Accounting capabilities (``kvmpv probe``); see ``capabilities()``."""

    hierarchy: Optional[str]  # what hierarchy="auto" uses; None if neither works
    hierarchy_reason: str
    v1: HierarchyCaps
    v2: HierarchyCaps
    taskstats_usable: bool
    taskstats_reason: str
    taskstats_version: Optional[int]
    proc_connector_usable: bool
    proc_connector_reason: str
    pidfd_usable: bool
    pidfd_reason: str
    hz: int
    hz_source: str
    tolerance_ns: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [f"cgroup hierarchy (auto): {self.hierarchy or 'none'} ({self.hierarchy_reason})"]
        for h in (self.v1, self.v2):
            state = "usable" if h.usable else ("not usable" if h.mounted else "not mounted")
            out.append(f"cgroup {h.name}: {state}: {h.reason}")
            if h.usable:
                out.append(
                    f"  counters: cpu {', '.join(h.cpu_counters) or '-'}; "
                    f"memory {', '.join(h.memory_counters) or '-'}; "
                    f"single threads: {'yes' if h.thread_placement else 'no'}"
                )
        out.append(
            f"taskstats: {'yes' if self.taskstats_usable else 'no'}: {self.taskstats_reason}"
        )
        out.append(
            f"proc connector: {'yes' if self.proc_connector_usable else 'no'}: "
            f"{self.proc_connector_reason}"
        )
        out.append(f"pidfd: {'yes' if self.pidfd_usable else 'no'}: {self.pidfd_reason}")
        out.append(
            f"verdict tolerance: {self.tolerance_ns / 1e6:.1f} ms "
            f"(2 ticks, HZ={self.hz} from {self.hz_source})"
        )
        return out


def _probe_hierarchy(name: str, found: dict[str, Any]) -> HierarchyCaps:
    lay = found.get(name)
    if not isinstance(lay, Layout):
        return HierarchyCaps(name, False, False, str(lay))
    try:
        with CgroupScope(name, "kvmpv-probe", handle_sigterm=False) as scope:
            cg = scope.create("probe")
            cg.cpu()
            cpu_files = _V1_CPU if name == "v1" else _V2_CPU
            mem_files = _V1_MEM if name == "v1" else _V2_MEM
            cpu = [f for f in cpu_files if os.path.exists(os.path.join(cg.path, f))]
            mem_dir = lay.memory_dir
            mem = []
            if mem_dir is not None:
                mdir = cg.paths.get("memory", cg.path)
                mem = [f for f in mem_files if os.path.exists(os.path.join(mdir, f))]
            threads, why = True, ""
            if name == "v2":
                # v1 places any thread; v2 only inside a threaded subtree (the
                # reboot check's layout), which some delegations forbid.
                try:
                    scope.create_threaded(cg, "thread")
                except AccountingUnavailable as err:
                    threads, why = False, f"; single threads: {err.reason}"
        dirs = ", ".join(f"{k}={v}" for k, v in lay.dirs.items())
        return HierarchyCaps(
            name, True, True, f"private cgroups below {dirs}{why}", dict(lay.dirs), cpu, mem,
            threads,
        )  # fmt: skip
    except (AccountingUnavailable, CgroupLeftover, OSError) as err:
        reason = err.reason if isinstance(err, AccountingUnavailable) else str(err)
        return HierarchyCaps(name, True, False, reason, dict(lay.dirs))


def capabilities() -> AccountingCaps:
    """Probe the host for real (takes a few ms; root not required)."""
    found = discover_layouts()
    v1 = _probe_hierarchy("v1", found)
    v2 = _probe_hierarchy("v2", found)
    chosen: Optional[str] = None
    try:
        order = [lay.hierarchy for lay in candidate_order("auto", found)]
        usable = {"v1": v1.usable, "v2": v2.usable}
        picks = [h for h in order if usable[h]]
        if picks:
            chosen = picks[0]
            reason = f"preference order {' > '.join(order)}"
        else:
            reason = "no hierarchy lets us create a private cgroup"
    except AccountingUnavailable as err:
        reason = err.reason
    ts_ok, ts_reason, ts_ver = taskstats_status()
    pc_ok, pc_reason = proc_connector_status()
    try:
        with signals_held():  # no fd lost to a Ctrl-C between the two calls
            os.close(os.pidfd_open(os.getpid()))
        pidfd_ok, pidfd_reason = True, "pidfd_open + poll"
    except (AttributeError, OSError) as err:
        pidfd_ok, pidfd_reason = False, f"pidfd_open unavailable: {err}"
    hz, hz_source = kernel_hz()
    return AccountingCaps(
        chosen, reason, v1, v2, ts_ok, ts_reason, ts_ver, pc_ok, pc_reason, pidfd_ok,
        pidfd_reason, hz, hz_source, default_tolerance_ns(),
    )  # fmt: skip


__all__ = ["AccountingCaps", "HierarchyCaps", "capabilities"]
