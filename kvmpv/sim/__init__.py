# SPDX-License-Identifier: GPL-2.0-only
"""A simulated s390x KVM host with protected virtualization, at the syscall boundary.

The package mirrors the kernel files it models, one layer stacked on the
other (each imports only those below it):

=================  ==========================================================
``kvm_host.py``    the kernel objects (``struct kvm``, ``kvm_vcpu``, memslots,
                   secure configurations) and the machine's constants
``core.py``        ``HostState``: tables, fd table, copy in/out, fault
                   injection, debugging gates, introspection (no kernel file)
``uv.py``          the Ultravisor: ``uv_call()``, UNPACK/VERIFY of an image
                   (arch/s390/include/asm/uv.h, the firmware)
``gmap.py``        secure page state: ``s390_uv_destroy_range()``,
                   ``make_hva_secure()``, export, ``munmap`` (mm/gmap.c, uv.c)
``pv.py``          ``KVM_S390_PV_COMMAND``: ``kvm_s390_handle_pv()`` and
                   arch/s390/kvm/pv.c (set aside, deinit, cleanup, unpack, dump)
``interrupt.py``   the SCLP service signal: ``__inject_service()``,
                   ``__deliver_service[_ev]()``, ``write_sclp()``
                   (arch/s390/kvm/interrupt.c)
``intercept.py``   ``kvm_arch_vcpu_ioctl_run()``: the guest, SIE intercepts,
                   SCLP (arch/s390/kvm/intercept.c)
``kvm_s390.py``    device, VM and vCPU ioctls of arch/s390/kvm/kvm-s390.c,
                   ``kvm_arch_destroy_vm()``, ``kvm_put_kvm()``
this module        ``SimulatedHost``: the ``Syscalls`` protocol on top
=================  ==========================================================

plus ``records.py`` (the read-only records tests inspect), ``ranges.py``
(page state as interval sets), ``locks.py`` (``mm->mmap_lock``), ``uvc.py``
(Ultravisor call numbers and names).  Each method that models a kernel
function carries its name (``kvm_s390_pv_set_aside``, ``uv_call``, ...) and
is listed in ``KERNEL_FUNCTIONS`` with the file the kernel has it in (a
kernel name with leading underscores, which Python would mangle, without
them: ``__deliver_service_ev()`` is ``deliver_service_ev``).

Deviating simulators
====================
A simulator that deviates from the kernel (a test's negative control, a
regression of the corpus) subclasses ``SimulatedHost`` and overrides the
method of *one named kernel function* -- a key of ``KERNEL_FUNCTIONS`` --
calling ``super()`` for what it keeps::

    class PerformNothingOkHost(SimulatedHost):
        def kvm_s390_pv_deinit_aside_vm(self, vm, out):
            ret = super().kvm_s390_pv_deinit_aside_vm(vm, out)
            return 0 if ret == -errno.EINVAL else ret  # 'if (!p) return -EINVAL' dropped

``overridden_kernel_functions(cls)`` names what a subclass overrides and
raises ``TypeError`` if it overrides any other simulator method (private
helpers are no interface: they may change with any refactoring).  A bug at a
call site may need the caller and the callee (tests/_deviating.py's
``DestroyCpuErrorIgnoredHost``: the PREPARE case ignoring
``kvm_s390_cpus_from_pv()``'s error).  tests/_deviating.py holds 27 such
deviations, tests/_regressions.py 11 more (upstream fixes of the regression
corpus reinstated, ``Regress_<commit>``, and invented ones), and
tests/test_sim_kernel_functions.py the rules.

``SimulatedHost`` implements the ``kvmpv.syscalls.Syscalls`` protocol
(``backend = "sim"``): ``Kvm(sys=SimulatedHost())`` opens a simulated
``/dev/kvm`` and everything above it -- ``Vm``, ``Vcpu``, ``kvmpv.pv.pv_cmd``
-- runs unchanged.  The simulator decodes the real request numbers and the
real structures of ``kvmpv.uapi``, copies arguments in from and out to the
caller's buffer as the kernel does, and fails with ``OSError(errno)`` where
the kernel fails.  Reference: ``shared/spec/kvm-pv-async.md`` sections 1-3
and 7 (cited as "spec 3.4" and so on); the kernel functions named in the
comments are those of arch/s390/kvm/{kvm-s390,pv}.c (Linux 6.4 .. 7.0, all of
which behave the same at this interface), plus the fixes of later releases
that change what the interface answers, each citing its commit: UNPACK
splitting a large folio and retrying the page (eef88fe45ac9, v6.11;
3ec8a8330a1a, v6.16), writing a dirty file folio back to split it
(ab73b29efd36, v6.16),
memslots kept inside the ASCE range (7b53b4801884, v7.1) and the index of the
top-level table s390_replace_asce() makes (c2fceb59bbda, v6.5), which
ptep_notify() uses to tell KVM that a vCPU's prefix pages were discarded
(``madvise(MADV_DONTNEED)``; kvm_gmap_notifier(), a validity intercept if the
prefix is lost).

What it may touch: the guest memory registered in memslots (cleared with
``ctypes.memset``, which releases the GIL, so the work is real and is charged
to the calling thread), memfds it creates for its own fds and ``kvm_run``
pages, and the caller's ioctl argument buffers.  Nothing else: no device, no
sysfs, no other process.

Model
=====
* fds are real file descriptors (memfds named ``kvm``, ``kvm-vm``,
  ``kvm-vcpu:N``), so fd leaks show up in ``/proc/self/fd`` as they would with
  the real kernel.  A vCPU fd can be ``mmap``-ed: the ``kvm_run`` page is the
  memfd's page, shared with the simulator.
* Object lifetime follows the kernel: vCPUs live until the VM is destroyed;
  the VM is destroyed (spec 3.6) when the last reference goes: the VM fd,
  every vCPU fd, every ``kvm_run`` mapping, and every ioctl in progress (an
  ioctl holds its file, so a VM whose fd is closed during PERFORM is destroyed
  by the thread that drops the last reference, after PERFORM returns).
* Page state is kept as ranges of *host* virtual addresses (the Ultravisor
  tracks secure pages by absolute address, the kernel walks the mm, not the
  memslots): one interval set per secure configuration, never per-page
  objects.  A 16 GiB guest is a handful of intervals.
* The simulated Ultravisor: "destroy page" (0x0202) succeeds only for pages of
  configurations that have no secure CPUs (kernel comment in the exit path;
  spec 3.4, 9), so a PERFORM walking the whole mm leaves the pages of a newly
  enabled, running configuration alone, exactly as on the real machine.
* Cost model: every destroyed, exported or imported page range is cleared
  with ``ctypes.memset`` in the calling thread, in batches of
  ``batch_bytes`` (the kernel destroys in batches of 32 pages with
  ``cond_resched``; fatal signals are checked between batches).
  ``clear_memory=False`` keeps all the bookkeeping but skips the memsets
  (huge layouts in tests that must not touch memory).

The simulated guest
===================
``KVM_RUN`` on a vCPU of a protected VM makes the guest touch its memslot
memory in slices of ``run_slice_bytes``: each page that is not yet secure for
the vCPU's configuration is imported (cleared, marked secure); a page still
owned by another configuration (set aside, being performed, need_cleanup)
takes a secure-storage violation, handled as the 6.0+ kernel does (spec 3.8):
the old page is destroyed, then imported.  When every page is secure the
guest ends as kvmpv's s390x payload does: it loads the disabled-wait PSW at
0xfff, and ``KVM_RUN`` returns 0 with ``KVM_EXIT_S390_SIEIC``, icptcode 0x1c
(``kvm_s390_handle_wait()`` leaves a disabled wait to userspace; s390 never
returns ``KVM_EXIT_HLT``).  Every later ``KVM_RUN`` returns the same at once,
until the PSW changes: ``KVM_MP_STATE_LOAD`` on a protected CPU (the UV loads
the SE header's PSW; the simulator, which has no image yet, the payload's
entry), an initial or clear reset (PSW 0), or, for an unprotected CPU, a new
PSW written into ``kvm_run`` (synced in on entry).  A kick
(``SimulatedHost.kick``, a pending fatal signal of the calling thread, or
``kvm_run.immediate_exit`` set while running) makes ``KVM_RUN`` fail with
``EINTR`` and ``KVM_EXIT_INTR``.  As on s390 (``kvm_arch_vcpu_ioctl_run``),
``immediate_exit`` already set on entry fails with ``EINTR`` *without*
writing ``exit_reason``.

``KVM_RUN`` on a non-protected VM (or a vCPU whose secure CPU was destroyed):
the guest makes its memory accessible -- pages still secure for an old
configuration are exported (0x0201, cleared) -- and then ends the same way.

CPU state (``kvm_arch_vcpu_ioctl_run``, ``kvm_arch_vcpu_ioctl_set_mpstate``,
spec 10.2): a new vCPU is STOPPED.  Until userspace takes CPU-state control,
``KVM_RUN`` starts it; ``KVM_SET_MP_STATE`` and *every* ``KVM_S390_PV_COMMAND``
(even one that fails) hand the control to userspace, and from then on
``KVM_RUN`` on a STOPPED vCPU is EINVAL until ``KVM_SET_MP_STATE`` OPERATING.
LOAD exists only for protected CPUs (ENXIO otherwise).  The three resets
exist; a protected CPU's go through the UV.  And the process's page tables
must have PGSTEs (``pgste=True``), or ``KVM_CREATE_VM`` is EINVAL (spec 10.1).

The outside world
=================
* ``kick(vcpu_fd)``: a signal for a vCPU thread (pending until the next
  ``KVM_RUN`` if the vCPU is outside it, so it is never lost).
* ``deliver_fatal_signal(tid)`` / ``clear_fatal_signal(tid)``: a fatal signal
  for native thread ``tid``; PERFORM notices it between batches (spec 3.4).
* ``deliver_signal(tid)``: a caught signal pending during that thread's next
  ioctl (delivered when it returns); only ENABLE's first mmu notifier
  registration looks at it (EINTR, commit 185d903064f8).
* ``guest_extint_loop(vcpu_fd)``: the protected guest, once its payload's
  stores are done, loops on its clock comparator with an ext new PSW that
  enables external interrupts; ``handle_external_interrupt()`` sees it and
  ``KVM_RUN`` returns ``KVM_EXIT_S390_SIEIC``, icptcode 20 (commit
  21f27df85400).
* ``back_with_large_folios(addr, length, folio_size)``: the host mm keeps that
  memory in large folios; ``make_hva_secure()`` splits one and returns
  -EAGAIN, and UNPACK retries the page (commit 3ec8a8330a1a); with
  ``iomap_file=True`` the folios are a file's dirty page cache on XFS, which
  split_folio() refuses until ``s390_wiggle_split_folio()`` writes them back
  (commit ab73b29efd36); ``large_folio_bytes(addr, length)`` tells what is
  left unsplit, ``unsplittable_folio_bytes``, ``written_back_bytes()`` and
  ``unpack_retries()`` the rest.
* ``inject_uv_failure(uvc_cmd, rc, rrc, count)``: the Ultravisor fails the
  next matching calls (the EIO/EINVAL rows of table 3.9);
  ``inject_alloc_failure(site)``: the simulator's failslab (the ENOMEM row).
* ``pause_at(point)`` / ``wait_paused`` / ``resume``: debugging gates that
  hold a thread at a named point (``PAUSE_POINTS``), so that concurrency
  checks (a new ENABLE while PERFORM runs, the QEMU race of spec 5) are
  deterministic instead of timed.
* Introspection, read-only and never blocking on the VM or vCPU locks:
  ``protected_count``, ``vm_info(fd)``, ``vms()``, ``configs()``,
  ``secure_bytes()``, ``uv_calls()``, ``stats()``, ``vcpu_in_run(fd)``,
  ``open_fds()``; and the simulated guest's own report,
  ``guest_ext_interrupts(fd)``: each external interruption it took, with
  the parameter it read (a protected guest's lowcore is encrypted: only the
  guest can tell).

Who pays: PREPARE's synchronous destroy below 2 GiB is charged to the thread
issuing PREPARE, the walk to the thread issuing PERFORM, DISABLE's and the
VM destruction's sweep to their callers, the destroy+import of a
secure-storage violation to the vCPU thread that took it, and the export of
secure pages that are unmapped to the thread calling ``munmap`` -- as in the
kernel.

Unmapping guest memory
======================
As with the kernel, userspace may unmap guest memory at any time, also while
PERFORM (or any other page walk, or a running vCPU) works on it in another
thread.  ``munmap`` through the simulator (``GuestMemory(size, sys=host)``)
does what the kernel's unmap path does (spec 3.7): it takes the simulated
``mmap_lock`` for writing, so it waits for the batch in progress and no walk
can start meanwhile, exports (0x0201, clears) every page that is still
secure for any configuration and drops the range from every configuration's
page state, then unmaps.  Every memset of the simulator holds that lock for
reading from the moment it claims a range to the moment it releases it, one
batch or slice at a time, so it can never write to memory that is gone; a
later walk finds no page state there, and a guest that touches memslot
memory that was unmapped fails ``KVM_RUN`` (and UNPACK fails) with EFAULT.
Memory unmapped behind the simulator's back (plain ``libc`` munmap) is
outside this contract; ``msync()`` probing before each memset is only a
best-effort guard against that.

Not modelled: SIGP (the
guest starting its other CPUs), interrupts other than the SCLP service
signal (``interrupt.py``) and the clock comparator of ``guest_extint_loop``,
timers, registers other than the PSW,
ucontrol VMs beyond their creation, blocking of ``KVM_RUN`` while dumping,
process exit (spec 3.7: ``close_all()`` behaves like the fds being closed
with the mm still alive).  The FIXRACE early return of
``kvm_s390_pv_deinit_cleanup_all`` is implemented but cannot be observed
through the ioctls (with the count at 0 there is nothing to clean either).

Locks (the order is the order of acquisition; never the reverse)
===============================================================
``vm.lock`` (``kvm->lock``) -> ``vcpu.mutex`` (``vcpu->mutex``) ->
``host._mmap_lock`` (``mm->mmap_lock``: shared for page walks, faults and
imports, one batch or slice at a time; exclusive for ``munmap`` of guest
memory; writers first, a thread may nest reads) -> ``host._mm`` (page
state: the mm's page table locks and page locks, one condition variable) ->
``host._lock`` (fd table, references, Ultravisor bookkeeping, debugging
gates; a leaf, never held while blocking).  Memory is cleared holding only
``_mmap_lock`` for reading (GIL released): a range is first claimed (removed
from its owner and put in ``_busy`` under ``_mm``), cleared, then released,
like a locked page.  No debugging gate is ever reached with ``_mmap_lock``
held, so a thread paused at a gate never blocks a ``munmap``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading

from ..syscalls import IoctlArg, buffer_address, libc, raise_errno
from . import gmap, intercept, interrupt, kvm_s390, pv, uv
from .kvm_host import (
    _DEV_KVM,
    ALLOC_SITES,
    KVM_MEM_MAX_NR_PAGES,
    KVM_S390_NO_MEM_LIMIT,
    KVM_USER_MEM_SLOTS,
    LOADER_STOP_MASK,
    PAGE_SIZE,
    PAUSE_POINTS,
    PAYLOAD_DONE_PSW,
    PSW_MASK_64,
    PSW_MASK_EXT,
    PSW_MASK_IO,
    PSW_MASK_MCHECK,
    PSW_MASK_WAIT,
    PV_CPU_STATE_OPR,
    PV_CPU_STATE_OPR_LOAD,
    PV_CPU_STATE_STP,
    SE_DEFAULT_PSW,
    SE_HDR_MAX,
    SEGMENT_ALIGN,
    SZ_2G,
    UV_CONF_DUMP_FINALIZE_LEN,
    UV_CONF_DUMP_STORAGE_STATE_LEN,
    UV_GUEST_CPU_STOR_LEN,
    UV_MAX_GUEST_CPU_ID,
    UV_MAX_NUM_SEC_CONF,
    UV_MAX_SEC_STOR_ADDR,
    UV_RC_HDR_NOT_FOR_HOST,
    UV_RC_VERIFY_MISMATCH,
    UV_RRC_ALD,
    UV_RRC_NO_KEY_SLOT,
    UV_RRC_PAGE_COUNT,
    UV_RRC_PLD,
    UV_RRC_TLD,
    VCPU_MMAP_SIZE,
    _memfd,
    _Vcpu,
    _Vm,
)
from .kvm_s390 import KvmS390
from .records import SimConfigInfo, SimStats, SimVmInfo, UvCall
from .uvc import (
    UVC_CMD_CONV_TO_SEC_STOR,
    UVC_CMD_CPU_RESET,
    UVC_CMD_CPU_RESET_CLEAR,
    UVC_CMD_CPU_RESET_INITIAL,
    UVC_CMD_CPU_SET_STATE,
    UVC_CMD_CREATE_SEC_CONF,
    UVC_CMD_CREATE_SEC_CPU,
    UVC_CMD_DUMP_COMPLETE,
    UVC_CMD_DUMP_CONF_STOR_STATE,
    UVC_CMD_DUMP_CPU,
    UVC_CMD_DUMP_INIT,
    UVC_CMD_PREPARE_RESET,
    UVC_CMD_SET_SEC_CONF_PARAMS,
    UVC_CMD_SET_UNSHARE_ALL,
    UVC_CMD_UNPACK_IMG,
    UVC_CMD_VERIFY_IMG,
    UVC_NAMES,
)


class SimulatedHost(KvmS390):
    """A simulated s390x KVM host: the ``Syscalls`` protocol over the kernel layers.

    Parameters: see ``kvmpv.sim.core.HostState``.  Subclass it and override a
    ``KERNEL_FUNCTIONS`` method for a deviating simulator (module docstring).
    """

    def open(self, path: str, flags: int) -> int:
        """``open("/dev/kvm")``; any other path fails with ENOENT."""
        if path != _DEV_KVM:
            raise_errno(errno.ENOENT)
        return self._install("dev", _memfd("kvm"), None)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """Decode ``request`` on ``fd``; ``arg`` an int or a writable buffer.

        Returns the ioctl's value or raises ``OSError(errno)``.  EINTR is
        never retried here.
        """
        f = self._fget(fd)
        try:
            addr = buffer_address(arg)
            if f.kind == "dev":
                return self.kvm_arch_dev_ioctl(request, addr)
            if f.kind == "vm":
                assert isinstance(f.obj, _Vm)
                return self.kvm_arch_vm_ioctl(f.obj, request, addr)
            assert isinstance(f.obj, _Vcpu)
            return self.kvm_arch_vcpu_ioctl(f.obj, request, addr)
        finally:
            self._fput(f)
            self._signal_delivered(threading.get_native_id())

    def mmap(self, fd: int, length: int, prot: int, flags: int, offset: int = 0) -> int:
        """mmap of a vCPU fd maps its ``kvm_run`` page (shared with the simulator).

        /dev/kvm and VM fds have no mmap (ENODEV).  As with the kernel, the
        mapping keeps the vCPU file (and so the VM) alive until ``munmap``.
        """
        f = self._fget(fd)
        try:
            if f.kind != "vcpu":
                raise_errno(errno.ENODEV)
            addr = libc().mmap(None, length, prot, flags, f.realfd, offset)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                raise_errno(ctypes.get_errno())
            with self._lock:
                f.refs += 1
                self._maps[int(addr)] = (f, length)
            return int(addr)
        finally:
            self._fput(f)

    def munmap(self, addr: int, length: int) -> None:
        """munmap: a ``kvm_run`` page (drops its file reference) or any other memory.

        Any other range -- guest memory above all -- goes the way of the
        kernel's unmap path (module docstring, "Unmapping guest memory"):
        under ``mmap_lock`` for writing, pages still secure for any
        configuration are exported (cleared, UVC 0x0201, charged to the
        caller) and dropped from the page state, then the range is unmapped.
        A walk in another thread never sees the range half gone.
        """
        with self._lock:
            run_page = addr in self._maps
        if not run_page:
            self._unmap_memory(addr, length)
            return
        if libc().munmap(addr, length) != 0:
            raise_errno(ctypes.get_errno())
        with self._lock:
            entry = self._maps.pop(addr, None)
        if entry is not None:
            self._fput(entry[0])

    def close(self, fd: int) -> None:
        """Close a simulator fd (EBADF if it is not one)."""
        with self._lock:
            f = self._files.pop(fd, None)
        if f is None:
            raise_errno(errno.EBADF)
        assert f is not None
        os.close(f.realfd)
        self._fput(f)

    def close_all(self) -> None:
        """Close every simulator fd still open, as process exit closes files.

        The mm stays alive (the memory sweep of spec 3.6 runs).  Use after
        errors and in test teardown; guest memory must still be mapped, or
        have been unmapped through ``munmap`` of this host.
        """
        self.resume_all()
        with self._lock:
            fds = sorted(
                self._files, key=lambda fd: {"vcpu": 0, "vm": 1}.get(self._files[fd].kind, 2)
            )
        for fd in fds:
            try:
                self.close(fd)
            except OSError:
                pass


#: Every kernel function the simulator models, as a method of
#: ``SimulatedHost``: method name -> the kernel file it is in.  The methods a
#: deviating simulator may override (module docstring).
KERNEL_FUNCTIONS: dict[str, str] = {
    **uv.KERNEL_FUNCTIONS,
    **gmap.KERNEL_FUNCTIONS,
    **pv.KERNEL_FUNCTIONS,
    **interrupt.KERNEL_FUNCTIONS,
    **intercept.KERNEL_FUNCTIONS,
    **kvm_s390.KERNEL_FUNCTIONS,
}


def overridden_kernel_functions(cls: type) -> list[str]:
    """The kernel functions a ``SimulatedHost`` subclass overrides, sorted.

    Raises ``TypeError`` when ``cls`` is no ``SimulatedHost`` subclass or
    overrides a simulator method that models no kernel function: a deviation
    must name the one kernel function it breaks, so that it keeps meaning the
    same thing when the simulator's helpers are reorganised.
    """
    if not (isinstance(cls, type) and issubclass(cls, SimulatedHost)):
        raise TypeError(f"{cls!r} is not a SimulatedHost subclass")
    base = set(dir(SimulatedHost))
    own: set[str] = set()
    for klass in cls.__mro__:
        if klass is SimulatedHost:
            break
        own |= {n for n in vars(klass) if n in base and callable(getattr(SimulatedHost, n))}
    # Constructor and the public interface (Syscalls protocol, outside world,
    # introspection) may be wrapped by any subclass: they are no kernel function.
    other = {n for n in own if n.startswith("_") and n != "__init__"}
    if other:
        raise TypeError(
            f"{cls.__name__} overrides {', '.join(sorted(other))}: not a kernel function "
            "(override a key of kvmpv.sim.KERNEL_FUNCTIONS)"
        )
    return sorted(n for n in own if n in KERNEL_FUNCTIONS)


__all__ = [
    "ALLOC_SITES",
    "KERNEL_FUNCTIONS",
    "KVM_MEM_MAX_NR_PAGES",
    "KVM_S390_NO_MEM_LIMIT",
    "KVM_USER_MEM_SLOTS",
    "LOADER_STOP_MASK",
    "PAGE_SIZE",
    "PAUSE_POINTS",
    "PAYLOAD_DONE_PSW",
    "PSW_MASK_64",
    "PSW_MASK_EXT",
    "PSW_MASK_IO",
    "PSW_MASK_MCHECK",
    "PSW_MASK_WAIT",
    "PV_CPU_STATE_OPR",
    "PV_CPU_STATE_OPR_LOAD",
    "PV_CPU_STATE_STP",
    "SEGMENT_ALIGN",
    "SE_DEFAULT_PSW",
    "SE_HDR_MAX",
    "SZ_2G",
    "UVC_CMD_CONV_TO_SEC_STOR",
    "UVC_CMD_CPU_RESET",
    "UVC_CMD_CPU_RESET_CLEAR",
    "UVC_CMD_CPU_RESET_INITIAL",
    "UVC_CMD_CPU_SET_STATE",
    "UVC_CMD_CREATE_SEC_CONF",
    "UVC_CMD_CREATE_SEC_CPU",
    "UVC_CMD_DUMP_COMPLETE",
    "UVC_CMD_DUMP_CONF_STOR_STATE",
    "UVC_CMD_DUMP_CPU",
    "UVC_CMD_DUMP_INIT",
    "UVC_CMD_PREPARE_RESET",
    "UVC_CMD_SET_SEC_CONF_PARAMS",
    "UVC_CMD_SET_UNSHARE_ALL",
    "UVC_CMD_UNPACK_IMG",
    "UVC_CMD_VERIFY_IMG",
    "UVC_NAMES",
    "UV_CONF_DUMP_FINALIZE_LEN",
    "UV_CONF_DUMP_STORAGE_STATE_LEN",
    "UV_GUEST_CPU_STOR_LEN",
    "UV_MAX_GUEST_CPU_ID",
    "UV_MAX_NUM_SEC_CONF",
    "UV_MAX_SEC_STOR_ADDR",
    "UV_RC_HDR_NOT_FOR_HOST",
    "UV_RC_VERIFY_MISMATCH",
    "UV_RRC_ALD",
    "UV_RRC_NO_KEY_SLOT",
    "UV_RRC_PAGE_COUNT",
    "UV_RRC_PLD",
    "UV_RRC_TLD",
    "VCPU_MMAP_SIZE",
    "SimConfigInfo",
    "SimStats",
    "SimVmInfo",
    "SimulatedHost",
    "UvCall",
    "overridden_kernel_functions",
]
