# SPDX-License-Identifier: GPL-2.0-only
"""The simulator's public read-only records: what tests and checks may inspect.

Plain frozen dataclasses filled by ``SimulatedHost`` (UV calls as issued,
protected configurations, VMs, cleared bytes).  Touches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .uvc import UVC_NAMES


@dataclass(frozen=True)
class UvCall:
    """One simulated Ultravisor call; page calls on a range are one record.

    ``cc`` is the condition code (0 ok, 1 failed); ``pages`` the number of
    4 KiB pages for the page calls (0x0200/0x0201/0x0202), else 0; ``tid``
    the native thread id of the caller.
    """

    cmd: int
    handle: int
    cc: int
    rc: int
    rrc: int
    pages: int
    tid: int

    @property
    def name(self) -> str:
        return UVC_NAMES.get(self.cmd, f"UVC 0x{self.cmd:04x}")


@dataclass(frozen=True)
class SimConfigInfo:
    """A secure configuration of the simulated UV (snapshot).

    ``state``: ``current`` (the VM's protected configuration), ``set_aside``
    (PREPARE done), ``performing`` (detached by a PERFORM in progress),
    ``need_cleanup`` (PERFORM interrupted by a fatal signal), ``destroyed``
    (UV destroyed it, pages may remain secure), ``leaked`` (its destroy UVC
    failed: the kernel leaks it on purpose).
    """

    handle: int
    vm_id: int
    state: str
    cpus: int
    secure_bytes: int
    fast_destroyed: bool


@dataclass(frozen=True)
class SimVmInfo:
    """One simulated VM (snapshot).

    ``mem_limit`` is ``kvm->arch.mem_limit`` (what KVM_GET_DEVICE_ATTR
    returns: it is the host maximum and is *not* changed by setting
    KVM_S390_VM_MEM_LIMIT_SIZE, which recreates the gmap instead);
    ``gmap_limit`` the last usable guest address of the gmap and
    ``asce_type`` its top-level table type ("segment" means PREPARE refuses,
    spec 3.3 step 4).  ``secure_bytes``: secure for the current
    configuration; ``old_secure_bytes``: still secure for this VM's old
    configurations.  ``vcpu_mutex_waiters``: threads blocked on a vCPU mutex
    (e.g. PREPARE waiting for a vCPU in KVM_RUN); ``kvm_lock_waiters``:
    threads blocked on ``kvm->lock`` (e.g. PERFORM waiting to detach).
    """

    vm_id: int
    alive: bool
    protected: bool
    handle: int
    set_aside: bool
    need_cleanup: int
    performing: int
    mem_limit: int
    gmap_limit: int
    asce_type: str
    vcpus: int
    protected_vcpus: int
    vcpus_in_run: int
    vcpu_mutex_waiters: int
    kvm_lock_waiters: int
    memslot_bytes: int
    secure_bytes: int
    old_secure_bytes: int


@dataclass(frozen=True)
class SimStats:
    """Bytes of guest memory the simulated UV cleared, by kind of work."""

    imported_bytes: int
    destroyed_bytes: int
    exported_bytes: int


__all__ = ["SimConfigInfo", "SimStats", "SimVmInfo", "UvCall"]
