# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv.accounting: who paid for a teardown (cgroups, taskstats, proc connector).

Touches cgroupfs (private ``*kvmpv*`` cgroups below our own), generic netlink
(taskstats), the proc connector, pidfds and our children's wait status; see
each module's docstring.  The public contract (brief, "Accounting"):

* ``cgroup_scope(hierarchy="auto", prefix="kvmpv")`` -> ``CgroupScope``;
  ``scope.create(role) -> Cgroup`` with ``add_process``, ``add_thread`` (v1),
  ``cpu() -> CpuUsage``, ``memory() -> Optional[MemUsage]``, ``name``;
  ``scope.hierarchy`` is "v1" or "v2".
* ``judge_charged(work_ns, charged_ns, *, tolerance_ns=None) -> Verdict``
  with ``Outcome`` CHARGED / NOT_CHARGED / INCONCLUSIVE / SKIP;
  ``judge_split(first_ns, second_ns)`` -> SPLIT when two cgroups shared it.
* ``size_by_time(measure, target_ns=target_work_ns(tol), ...)``: grow a
  teardown until it takes enough time for a decisive verdict.
* ``AccountingUnavailable(reason)``: SKIP, never a pass.
* ``thread_cpu_ns()``, ``ExitWatcher`` / ``pidfd_open`` / ``wait_pidfd`` /
  ``reap`` for exit times and rusage, taskstats via ``TaskStatsClient`` and
  ``ExitRecordListener``.
* ``capabilities() -> AccountingCaps`` for ``kvmpv probe``.
* ``TeardownAccounting``: the reboot verdict's per-thread placement.
"""

from __future__ import annotations

from .caps import AccountingCaps, HierarchyCaps, capabilities
from .cgroups import (
    HIERARCHY_CHOICES,
    Cgroup,
    CgroupScope,
    CpuUsage,
    MemoryTrace,
    MemUsage,
    cgroup_scope,
    find_leftovers,
    iter_kvmpv_cgroups,
)
from .common import AccountingUnavailable, CgroupLeftover
from .observe import (
    ChildRusage,
    ExitRecord,
    ExitWatcher,
    ProcConnector,
    ThreadTimes,
    pidfd_open,
    reap,
    thread_cpu_ns,
    thread_times,
    wait_pidfd,
    zombie_runtime_ns,
)
from .placement import TOTALS_TOLERANCE_NS, TeardownAccounting
from .sizing import Sizing, size_by_time, target_work_ns
from .taskstats import ExitRecordListener, TaskStatsClient, TaskStatsRecord, decode_taskstats
from .verdict import (
    PRECISE_TOLERANCE_NS,
    Outcome,
    Verdict,
    decisive_work_ns,
    default_tolerance_ns,
    judge_charged,
    judge_split,
    kernel_hz,
    skip_verdict,
    tick_ns,
)

__all__ = [
    "HIERARCHY_CHOICES",
    "PRECISE_TOLERANCE_NS",
    "TOTALS_TOLERANCE_NS",
    "AccountingCaps",
    "AccountingUnavailable",
    "Cgroup",
    "CgroupLeftover",
    "CgroupScope",
    "ChildRusage",
    "CpuUsage",
    "ExitRecord",
    "ExitRecordListener",
    "ExitWatcher",
    "HierarchyCaps",
    "MemUsage",
    "MemoryTrace",
    "Outcome",
    "ProcConnector",
    "Sizing",
    "TaskStatsClient",
    "TaskStatsRecord",
    "TeardownAccounting",
    "ThreadTimes",
    "Verdict",
    "capabilities",
    "cgroup_scope",
    "decisive_work_ns",
    "decode_taskstats",
    "default_tolerance_ns",
    "find_leftovers",
    "iter_kvmpv_cgroups",
    "judge_charged",
    "judge_split",
    "kernel_hz",
    "pidfd_open",
    "reap",
    "size_by_time",
    "skip_verdict",
    "target_work_ns",
    "thread_cpu_ns",
    "thread_times",
    "tick_ns",
    "wait_pidfd",
    "zombie_runtime_ns",
]
