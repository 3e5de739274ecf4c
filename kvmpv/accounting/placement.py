# SPDX-License-Identifier: GPL-2.0-only
"""Per-thread teardown accounting: was a teardown charged to the VM's cgroup?

The mechanism behind the reboot scenario's verdict (``kvmpv reboot``): the
threads that do teardown work are placed, while they do it, in a cgroup of
their own, and that cgroup's CPU counter is compared with the threads' own
CPU clocks.  Touches: private cgroups below our own (``cgroups.py``; on
cgroup2 this process moves into one for the duration), the calling
thread's placement.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any, Optional

from .cgroups import Cgroup, cgroup_scope
from .common import AccountingUnavailable
from .verdict import Verdict, judge_charged, skip_verdict

#: Both sides of the verdict are precise totals (cpuacct.usage and
#: CLOCK_THREAD_CPUTIME_ID both read the scheduler's sum_exec_runtime; no
#: tick-based user/system split is involved), so the slack is small: the few
#: microseconds of cgroupfs writes the placement itself costs, and rounding.
TOTALS_TOLERANCE_NS = 2_000_000


class TeardownAccounting:
    """The "charged to the VM's cgroup" check, per cycle.

    Design: per-thread placement, the same on both hierarchies.  The
    scenario is one process, so the "vm" cgroup is made to hold exactly the
    tasks that do teardown work, while they do it: the control thread is
    moved in for the synchronous part (PREPARE, or DISABLE) and back to a
    "ctl" sibling after it; the ``async_cleanup`` thread is created while
    the control thread is inside and places itself in "vm" before PERFORM.
    The vCPU threads never enter it, so the new guest running concurrently
    does not blur the number.  The work is measured independently, inside
    the threads (CLOCK_THREAD_CPUTIME_ID around the synchronous part, and
    over the whole cleanup thread); the charge is the "vm" cgroup's CPU
    counter delta (v1 ``cpuacct.usage``, v2 ``cpu.stat`` usage_usec) from
    before the synchronous part to after the cleanup thread was joined.

    v1 moves threads through ``tasks``.  cgroup2 moves only whole processes
    between domain cgroups, so there the process first enters a "vmm"
    cgroup of its own, and "vm", "ctl" (and "elsewhere") are its *threaded*
    children, threads moving through ``cgroup.threads``: the layout libvirt
    gives QEMU on cgroup2 (``emulator``, ``vcpuN``), where QEMU's own
    ``async_cleanup`` thread lands in ``emulator``.  Placing the whole
    process instead would mean subtracting the vCPU threads' CPU (up to
    half of the cleanup's at 12G with the guest running) from a counter
    that also holds it: a difference of two large numbers instead of a
    direct reading.

    ``charge_to="elsewhere"`` (the negative control) places the same threads
    in an "elsewhere" sibling instead; the check must then say "not
    charged".  On v2 that sibling is inside the "vmm" threaded domain: a
    thread cannot leave its process's threaded subtree.
    """

    def __init__(self, stack: ExitStack, hierarchy: str, charge_to: str) -> None:
        self.reason = ""
        self.hierarchy = ""
        self.charge_to = charge_to
        self.tid = threading.get_native_id()
        self._before = 0
        self._moved = False
        self.home: Optional[Cgroup] = None
        try:
            scope = stack.enter_context(cgroup_scope(hierarchy))
            self.hierarchy = scope.hierarchy
            roles = ["vm", "ctl"] + (["elsewhere"] if charge_to == "elsewhere" else [])
            groups = scope.thread_cgroups("vmm", roles)
            self.home = scope.thread_home
            self.vm, self.ctl = groups["vm"], groups["ctl"]
            self.target = groups.get("elsewhere", self.vm)
            # Proves per-thread placement works here before any cycle relies on it.
            self.ctl.add_thread(self.tid)
        except AccountingUnavailable as exc:
            self.reason = exc.reason
            self.hierarchy = self.hierarchy or hierarchy

    @property
    def usable(self) -> bool:
        return not self.reason

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hierarchy": self.hierarchy,
            "usable": self.usable,
            "reason": self.reason or None,
            "charge_to": self.charge_to,
            "method": (
                "per-thread placement (v1 tasks; v2 cgroup.threads in a threaded subtree); "
                "CPU counter delta vs CLOCK_THREAD_CPUTIME_ID of the teardown threads"
            ),
        }
        if self.usable:
            out["vm_cgroup"] = self.vm.name
            out["target_cgroup"] = self.target.name
            if self.home is not None:
                out["process_cgroup"] = self.home.name
        return out

    def begin(self) -> None:
        """Before the synchronous part: read the counter, move the control thread in."""
        if not self.usable:
            return
        try:
            self._before = self.vm.cpu().total_ns
            self.target.add_thread(self.tid)
            self._moved = True
        except AccountingUnavailable as exc:
            self.reason = exc.reason

    def end_sync(self) -> None:
        """After the synchronous part: the control thread leaves the VM's cgroup."""
        if self._moved:
            self._moved = False
            try:
                self.ctl.add_thread(self.tid)
            except AccountingUnavailable as exc:
                self.reason = exc.reason

    def place_cleanup(self, tid: int) -> None:
        """Runs inside the ``async_cleanup`` thread, before PERFORM."""
        if self.usable:
            self.target.add_thread(tid)

    def verdict(self, work_ns: int) -> Verdict:
        if not self.usable:
            return skip_verdict(self.reason, work_ns)
        try:
            charged = self.vm.cpu().total_ns - self._before
        except AccountingUnavailable as exc:
            self.reason = exc.reason
            return skip_verdict(exc.reason, work_ns)
        return judge_charged(work_ns, charged, tolerance_ns=TOTALS_TOLERANCE_NS)


__all__ = ["TOTALS_TOLERANCE_NS", "TeardownAccounting"]
