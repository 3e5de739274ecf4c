# SPDX-License-Identifier: GPL-2.0-only
"""A simulated kernel that does PERFORM's clearing in a kernel-like worker
thread, outside every cgroup kvmpv places (the reboot verdict's negative
control for a kernel that is *not* what the interface promises).

``KVM_PV_ASYNC_CLEANUP_PERFORM`` exists so that the teardown runs on the
caller's thread and is charged to the caller's cgroup
(kvm_s390_pv_deinit_aside_vm() runs in the ioctl).  A kernel that queued the
work to a kworker instead would charge it to the root cgroup, and the calling
thread would only wait: its own CPU clock, the work the reboot verdict used
to measure, would shrink with the charge.  Here the kernel function
``kvm_s390_pv_deinit_aside_vm`` (``kvmpv.sim.KERNEL_FUNCTIONS``) is
overridden to run on a thread the host starts when it is built -- before
the reboot places any thread, so it stays where the process was (v1: the
original cgroup; v2: the process's threaded domain, not its "vm" child) --
and the ioctl waits for it.
Not in ``_deviating.py``: it breaks no registered check's rule, it is a test
of the reboot verdict.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from kvmpv.sim import SimulatedHost


class KworkerPerformHost(SimulatedHost):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._kworker = threading.Thread(target=self._kworker_loop, name="kworker/sim", daemon=True)
        self._kworker.start()

    def _kworker_loop(self) -> None:
        while (job := self._work.get()) is not None:
            job()

    def kvm_s390_pv_deinit_aside_vm(self, vm: Any, out: Any) -> int:
        done = threading.Event()
        ret: list[int] = []
        errors: list[BaseException] = []

        def job() -> None:
            try:
                ret.append(SimulatedHost.kvm_s390_pv_deinit_aside_vm(self, vm, out))
            except BaseException as exc:  # handed back to the ioctl's thread
                errors.append(exc)
            finally:
                done.set()

        self._work.put(job)
        done.wait()
        if errors:
            raise errors[0]
        return ret[0]

    def stop(self) -> None:
        self._work.put(None)
        self._kworker.join()
