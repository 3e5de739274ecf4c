# SPDX-License-Identifier: GPL-2.0-only
"""The simulated host's state and what the outside world does to it.

``HostState`` holds every table of the simulated host (fds, VMs, secure
configurations, page state, locks) and the parts that are no kernel
function: fault injection, fatal signals, kicks, the debugging gates,
introspection, ``copy_from_user``/``copy_to_user`` of the ioctl arguments and
the fd table (``fd_install``/``fget``).  The kernel behaviour is in the
modules stacked on it: ``uv`` -> ``gmap`` -> ``pv`` -> ``intercept`` ->
``kvm_s390`` -> ``SimulatedHost`` (``kvmpv.sim``).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import threading
import time
from typing import Optional

from .. import sehdr
from .kvm_host import (
    ALLOC_SITES,
    PAGE_SIZE,
    PAUSE_POINTS,
    _asce_type,
    _Config,
    _err,
    _File,
    _Pause,
    _Vcpu,
    _Vm,
)
from .locks import CountingMutex as _CountingMutex
from .locks import MmapLock as _MmapLock
from .ranges import Ranges as _Ranges
from .records import SimConfigInfo, SimStats, SimVmInfo, UvCall


class HostState:
    """State of a simulated s390x KVM host (see ``kvmpv.sim``).

    Parameters:

    * ``prot_virt_host``: the host booted with ``prot_virt=1`` on a machine
      with the Ultravisor (cap 180; without it every KVM_S390_PV_COMMAND
      fails with EINVAL).
    * ``async_destroy``: the ``kvm.async_destroy`` module parameter (cap 224;
      with 0 PREPARE and PERFORM fail with EINVAL).
    * ``destroy_fast``: the UV offers Destroy Secure Configuration Fast
      (bit 23 of ``inst_calls_list``): PREPARE destroys the configuration at
      once and PERFORM only cleans memory.
    * ``dump``: the UV offers the dump calls (cap 217).
    * ``ucontrol``, ``cap_sys_admin``: CONFIG_KVM_S390_UCONTROL and the
      caller's capability, for KVM_CREATE_VM type 1 (EINVAL without either).
    * ``stage3b_sclp``: a booted SE image's guest first sets up the SCLP
      console, as pvimg's loader (stage3b) does, and waits for the service
      signal: userspace must answer through the SIDA (``kvmpv.runner``).
    * ``loader_panic``: fault injection: the stand-in for stage3b, after its
      SCLP call, ends the boot as stage3b's ``panic()`` does (zipl
      ``libc_stop()``: a disabled wait, mask 0x0002000080000000, the address
      the error code, e.g. 0x4511 EINTERNAL) instead of starting the payload.
      What makes a real stage3b panic (its own arguments: a kernel shorter
      than 0x10000 bytes, a command line too long or not NUL-terminated) is
      not in a synthetic image; the injection shows that kvmpv tells that
      end from the payload's.
    * ``guest_skips_holes``: the simulated guest of a protected VM touches
      only memslot memory, as a guest that knows its memory map would.
      Default False, the kernel's answer for kvmpv's payload (and any guest
      that probes its memory upwards): its first store into a hole below the
      highest memslot end is an addressing exception KVM would have to inject,
      ``__deliver_prog_pv()`` refuses every program interruption but
      specification and operand, and ``KVM_RUN`` fails with EINVAL.  True only
      for the simulator's cost-model layouts (a little memory above 2 GiB
      without allocating the 2 GiB below), and labelled so by their callers.
    * ``pgste``: the calling process's page tables have PGSTEs (spec 10.1);
      without them every KVM_CREATE_VM is EINVAL, as on a real s390x host
      for a process that is not started through ``kvmpv-pgste``.
    * ``host_mem_limit``: SCLP ``hamax + 1``, the default and maximum VM
      memory limit.
    * ``max_vcpus``: KVM_CAP_MAX_VCPUS (248 with the extended SCA).
    * ``clear_memory``: do the memsets of the cost model (see module doc).
    * ``batch_bytes``: destroy batch; fatal signals are noticed between batches.
    * ``run_slice_bytes``: how much memory a running guest touches per slice;
      kicks are noticed between slices.
    """

    backend = "sim"
    arch = "s390x"

    def __init__(
        self,
        prot_virt_host: bool = True,
        async_destroy: bool = True,
        destroy_fast: bool = False,
        *,
        dump: bool = True,
        ucontrol: bool = False,
        cap_sys_admin: bool = True,
        pgste: bool = True,
        stage3b_sclp: bool = True,
        loader_panic: Optional[int] = None,
        guest_skips_holes: bool = False,
        host_mem_limit: int = 1 << 42,
        max_vcpus: int = 248,
        clear_memory: bool = True,
        batch_bytes: int = 64 << 20,
        run_slice_bytes: int = 32 << 20,
    ) -> None:
        if batch_bytes < PAGE_SIZE or batch_bytes % PAGE_SIZE:
            raise ValueError("batch_bytes must be a positive multiple of 4096")
        if run_slice_bytes < PAGE_SIZE or run_slice_bytes % PAGE_SIZE:
            raise ValueError("run_slice_bytes must be a positive multiple of 4096")
        self.prot_virt_host = prot_virt_host
        self.async_destroy = async_destroy
        self.destroy_fast = destroy_fast
        self.dump = dump
        self.ucontrol = ucontrol
        self.cap_sys_admin = cap_sys_admin
        self.pgste = pgste
        self.stage3b_sclp = stage3b_sclp
        self.loader_panic = loader_panic
        self.guest_skips_holes = guest_skips_holes
        #: the simulated machine's host key: FAKE (sehdr.fake_host_key)
        self._host_key = sehdr.fake_host_key()
        self.sclp_answers: list[int] = []  # response codes userspace wrote into SCCBs
        self.host_mem_limit = host_mem_limit
        self.max_vcpus = max_vcpus
        self.clear_memory = clear_memory
        self.batch_bytes = batch_bytes
        self.run_slice_bytes = run_slice_bytes

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._mmap_lock = _MmapLock()
        self._mm = threading.Condition(threading.Lock())
        # Guest memory (memslot ranges of live VMs) unmapped through munmap():
        # a guest touching it faults (EFAULT).  Forgotten when a memslot is
        # registered there again, or when no live VM's memslot covers it.
        self._unmapped = _Ranges()
        # Host memory the mm keeps in large folios (mTHP, a large page-cache
        # folio), all of one size: folio_test_large() is true there until a
        # make_hva_secure() of one of its pages splits the folio.
        self._large_folios = _Ranges()
        self._large_folio_size = 0
        # The part of them that is a file's page cache on an iomap file system
        # with large folios (XFS, zonefs, erofs), and which of those are dirty:
        # split_folio() cannot split a dirty one (commit ab73b29efd36).
        self._file_folios = _Ranges()
        self._dirty_folios = _Ranges()
        self._written_back = 0  # bytes s390_wiggle_split_folio() wrote back
        self._unpack_retries = 0  # -EAGAIN retries of kvm_s390_pv_unpack()
        self._validity = 0  # validity intercepts (KVM_RUN failed with EINVAL)
        self._files: dict[int, _File] = {}
        self._maps: dict[int, tuple[_File, int]] = {}
        self._vms: dict[int, _Vm] = {}
        self._next_vm_id = 1
        self._next_handle = 0x1000
        self._configs: dict[int, _Config] = {}
        self._busy = _Ranges()
        self._protected_count = 0  # mm->context.protected_count (one mm: this process)
        self._fatal: set[int] = set()
        self._signals: set[int] = set()
        self._inject: dict[int, list[list[int]]] = {}
        self._uv_log: collections.deque[UvCall] = collections.deque(maxlen=4096)
        self._pauses: dict[str, _Pause] = {}
        self._alloc_failures: dict[str, int] = {}
        self._imported = 0
        self._destroyed = 0
        self._exported = 0

    def kick(self, vcpu_fd: int, thread: int = 0) -> None:
        """Kick a vCPU out of ``KVM_RUN``, as a signal to ``thread`` does.

        A vCPU inside ``KVM_RUN`` fails with EINTR and ``KVM_EXIT_INTR`` after
        the slice it is working on.  A kick that finds the vCPU outside
        ``KVM_RUN`` stays pending and makes the next ``KVM_RUN`` fail at once
        (a signal blocked outside ``KVM_RUN``, as with KVM_SET_SIGNAL_MASK),
        so a kick can never be lost.  A real signal cannot reach the
        simulator's Python loop; ``thread`` is accepted for the ``Syscalls``
        protocol and not needed: the vCPU is known by its fd.
        """
        vcpu = self._vcpu_of(vcpu_fd)
        vcpu.kick.set()

    def deliver_fatal_signal(self, tid: int) -> None:
        """A fatal signal is pending for native thread ``tid`` (``threading.get_native_id()``).

        A PERFORM in that thread stops after its current batch, queues its
        record on ``need_cleanup`` and returns 0 with rc 1 / rrc 42 (spec
        3.4); a ``KVM_RUN`` in that thread fails with EINTR.  The real thread
        would die; the Python thread goes on, so the signal stays pending
        until ``clear_fatal_signal(tid)``.
        """
        with self._lock:
            self._fatal.add(tid)

    def clear_fatal_signal(self, tid: int) -> None:
        with self._lock:
            self._fatal.discard(tid)

    def fatal_signal_pending(self, tid: int) -> bool:
        with self._lock:
            return tid in self._fatal

    def deliver_signal(self, tid: int) -> None:
        """A caught (non-fatal) signal is pending for native thread ``tid`` during its next ioctl.

        What tests ``signal_pending(current)`` in that ioctl sees it: ENABLE's
        first mmu_notifier_register() (mm_take_all_locks()) fails with EINTR
        (``kvm_s390_pv_init_vm``).  A real signal cannot be held pending at a
        chosen point of an ioctl (it is handled on the way back to user
        space), so the simulator takes it as arriving during the ioctl; the
        ioctl's return to user space delivers it (``SimulatedHost.ioctl``).
        """
        with self._lock:
            self._signals.add(tid)

    def guest_extint_loop(self, vcpu_fd: int) -> None:
        """The protected guest on that vCPU, once its payload's stores are done, causes an
        external interruption loop instead of its disabled wait.

        It loads an external new PSW that enables external interrupts
        (``EXTINT_LOOP_PSW``) and arms its clock comparator in the past, as
        kvm-unit-tests' s390x extint-loop test does (lore
        <20220812062151.1980937-4-nrb@linux.ibm.com>): every entry takes the
        clock-comparator interruption again.  A protected guest's program is
        the image's; here a check chooses it.
        """
        vcpu = self._vcpu_of(vcpu_fd)
        vcpu.guest_program = "extint_loop"

    def back_with_large_folios(
        self, addr: int, length: int, folio_size: int = 64 << 10, *, iomap_file: bool = False
    ) -> None:
        """The host mm keeps [addr, addr + length) in large folios of ``folio_size`` bytes.

        On a real host the mm decides which pages are large folios (anonymous
        mTHP, a large page-cache folio of a file or shmem mapping); a VMM
        cannot make UNPACK meet one on purpose.  Here a test or check chooses:
        make_hva_secure() then refuses a page of such a folio (-E2BIG), splits
        the folio (s390_wiggle_split_folio()) and asks to be retried
        (-EAGAIN, commit 3ec8a8330a1a).  Folio-aligned, one size per host.

        ``iomap_file``: the memory is a shared mapping of a file on an iomap
        file system with large folios (XFS, zonefs, erofs), its folios dirty
        (the VMM wrote the image into them).  split_folio() fails with -EBUSY
        on a dirty folio there (iomap_release_folio() refuses), and a writable
        PTE implies a dirty folio, so every make_hva_secure() lookup finds it
        dirty again: only writeback right before the split gets it split
        (s390_wiggle_split_folio(), commit ab73b29efd36).
        """
        if folio_size < 2 * PAGE_SIZE or folio_size & (folio_size - 1):
            raise ValueError(f"folio size {folio_size:#x}: a power of two of 2 pages or more")
        if addr % folio_size or length <= 0 or length % folio_size:
            raise ValueError("large folios are folio-aligned and cover whole folios")
        with self._mm:
            if len(self._large_folios) and folio_size != self._large_folio_size:
                raise ValueError("one large folio size per simulated host")
            self._large_folio_size = folio_size
            self._large_folios.add(addr, addr + length)
            if iomap_file:
                self._file_folios.add(addr, addr + length)
                self._dirty_folios.add(addr, addr + length)

    def large_folio_bytes(self, addr: int, length: int) -> int:
        """How many bytes of [addr, addr + length) are still in large folios (introspection)."""
        with self._mm:
            return sum(e - s for s, e in self._large_folios.intersect(addr, addr + length))

    def unsplittable_folio_bytes(self, addr: int, length: int) -> int:
        """Bytes of [addr, addr + length) in large folios split_folio() refuses now:
        dirty folios of an iomap file (``back_with_large_folios(iomap_file=True)``)."""
        with self._mm:
            return sum(
                fe - fs
                for s, e in self._dirty_folios.intersect(addr, addr + length)
                for fs, fe in self._file_folios.intersect(s, e)
            )

    def written_back_bytes(self) -> int:
        """Bytes of large file folios s390_wiggle_split_folio() wrote back (introspection)."""
        with self._lock:
            return self._written_back

    def unpack_retries(self) -> int:
        """How often kvm_s390_pv_unpack() retried a page after -EAGAIN (introspection)."""
        with self._lock:
            return self._unpack_retries

    def validity_intercepts(self) -> int:
        """Validity intercepts so far: SIE entered with the prefix pages invalid
        (handle_validity(): KVM_RUN fails with EINVAL)."""
        with self._lock:
            return self._validity

    def asce_replacements(self, vm_fd: int) -> int:
        """Top-level tables s390_replace_asce() gave ``vm_fd``'s gmap (PREPARE without
        Destroy-Fast, a failed Destroy Secure Configuration)."""
        return int(self._vm_of(vm_fd).asce_replaced)

    def prefix_refreshes_pending(self, vcpu_fd: int) -> bool:
        """Whether ``vcpu_fd`` has KVM_REQ_REFRESH_GUEST_PREFIX pending (kvm_gmap_notifier())."""
        return bool(self._vcpu_of(vcpu_fd).prefix_request)

    def signal_pending(self, tid: int) -> bool:
        """signal_pending() of native thread ``tid``: a caught or a fatal signal is pending."""
        with self._lock:
            return tid in self._signals or tid in self._fatal

    def _signal_delivered(self, tid: int) -> None:
        """The return to user space of ``tid``'s ioctl runs its caught signal's handler."""
        with self._lock:
            self._signals.discard(tid)

    def inject_uv_failure(self, uvc_cmd: int, rc: int, rrc: int, count: int = 1) -> None:
        """Make the next ``count`` Ultravisor calls ``uvc_cmd`` fail (cc 1) with rc/rrc.

        Modelled calls: 0x0100 Create Secure Configuration (ENABLE: EIO; with
        rc bit 0x8000 NEED_DESTROY the kernel destroys it again), 0x0101
        Destroy Secure Configuration (DISABLE/PERFORM: EIO, configuration
        leaked), 0x0102 Fast (PREPARE: EIO), 0x0120 Create Secure CPU
        (ENABLE/CREATE_VCPU: EIO), 0x0121 Destroy Secure CPU (PREPARE/DISABLE:
        EIO with the first failing rc/rrc), 0x0202 destroy page (the first
        page of the next batch stays secure; the kernel ignores this error),
        0x0300/0x0302/0x0320/0x0340 (SET_SEC_PARMS/VERIFY/PREP_RESET/
        UNSHARE_ALL: EINVAL), 0x0301 (UNPACK: EINVAL), 0x0400.. dump calls.
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._inject.setdefault(uvc_cmd, []).append([rc, rrc, count])

    def inject_alloc_failure(self, site: str, count: int = 1) -> None:
        """Make the next ``count`` kernel allocations at ``site`` fail (ENOMEM).

        The simulator's failslab.  Sites (``ALLOC_SITES``): ``prepare:record``
        (PREPARE step 5, the ``pv_vm_to_be_destroyed`` record) and
        ``prepare:asce`` (PREPARE step 6 without Destroy Fast: the copy of the
        top-level table made by ``s390_replace_asce``).  Both give -ENOMEM
        with rc/rrc untouched; the vCPUs are already destroyed (spec 3.3).
        """
        if site not in ALLOC_SITES:
            raise ValueError(f"unknown allocation site {site!r}; known: {sorted(ALLOC_SITES)}")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._alloc_failures[site] = self._alloc_failures.get(site, 0) + count

    def _take_alloc_failure(self, site: str) -> bool:
        with self._lock:
            left = self._alloc_failures.get(site, 0)
            if left <= 0:
                return False
            self._alloc_failures[site] = left - 1
            return True

    def pending_uv_failures(self) -> int:
        with self._lock:
            return sum(c for lst in self._inject.values() for _, _, c in lst)

    def pause_at(self, point: str) -> None:
        """Arm a gate: every thread reaching ``point`` blocks there until ``resume``.

        Points (``PAUSE_POINTS``): ``perform:before_detach``,
        ``perform:detached``, ``perform:batch``, ``prepare:cpus_destroyed``,
        ``run:slice``.  For deterministic concurrency checks (e.g. a new
        ENABLE while a PERFORM is between batches).  Not part of the kernel.
        """
        if point not in PAUSE_POINTS:
            raise ValueError(f"unknown pause point {point!r}; known: {sorted(PAUSE_POINTS)}")
        with self._lock:
            self._pauses.setdefault(point, _Pause())

    def wait_paused(self, point: str, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until ``count`` threads are blocked at ``point``; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                p = self._pauses.get(point)
                if p is not None and p.waiting >= count:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)

    def wait_blocked(
        self, vm_fd: int, *, kvm_lock: int = 0, vcpu_mutex: int = 0, timeout: float = 10.0
    ) -> bool:
        """Wait until at least ``kvm_lock`` threads are blocked on the VM's ``kvm->lock`` and
        ``vcpu_mutex`` on its vCPU mutexes; False on timeout.

        For tests and checks that must know a call is *blocked* (PERFORM waiting
        for kvm->lock, PREPARE for a vCPU in KVM_RUN): the locks count their
        waiters and notify, so this needs no sleep.  ``vm_fd``: a VM or vCPU fd.
        """
        vm = self._vm_of(vm_fd)

        def reached() -> bool:
            vcpu_waiters = sum(v.mutex.waiters for v in list(vm.vcpus))
            return vm.lock.waiters >= kvm_lock and vcpu_waiters >= vcpu_mutex

        with self._cond:
            return self._cond.wait_for(reached, timeout)

    def resume(self, point: str) -> None:
        """Disarm ``point`` and release every thread blocked there."""
        with self._lock:
            p = self._pauses.pop(point, None)
        if p is not None:
            p.release.set()

    def resume_all(self) -> None:
        with self._lock:
            pauses, self._pauses = list(self._pauses.values()), {}
        for p in pauses:
            p.release.set()

    @property
    def protected_count(self) -> int:
        """``mm->context.protected_count``: configurations still tied to the mm."""
        with self._lock:
            return self._protected_count

    def vm_info(self, vm_fd: int) -> SimVmInfo:
        """Snapshot of the VM behind ``vm_fd`` (a VM or vCPU fd)."""
        return self._vm_snapshot(self._vm_of(vm_fd))

    def _vm_of(self, vm_fd: int) -> _Vm:
        """The VM behind a VM or vCPU fd (EBADF otherwise)."""
        with self._lock:
            f = self._files.get(vm_fd)
        if f is not None and isinstance(f.obj, _Vm):
            return f.obj
        if f is not None and isinstance(f.obj, _Vcpu):
            return f.obj.vm
        raise _err(errno.EBADF)

    def vms(self) -> list[SimVmInfo]:
        """Every VM not yet destroyed."""
        with self._lock:
            vms = list(self._vms.values())
        return [self._vm_snapshot(vm) for vm in vms]

    def configs(self) -> list[SimConfigInfo]:
        """Every secure configuration the UV still knows or that still owns pages."""
        with self._mm:
            return [
                SimConfigInfo(c.handle, c.vm.id, c.state, c.cpus, c.secure.total, c.fast_destroyed)
                for c in self._configs.values()
            ]

    def secure_bytes(self) -> dict[int, int]:
        """Secure bytes per configuration handle."""
        with self._mm:
            return {h: c.secure.total for h, c in self._configs.items() if c.secure.total}

    def uv_calls(self, cmd: Optional[int] = None) -> list[UvCall]:
        """The last 4096 Ultravisor calls (optionally only ``cmd``)."""
        with self._lock:
            calls = list(self._uv_log)
        return [c for c in calls if cmd is None or c.cmd == cmd]

    def stats(self) -> SimStats:
        with self._lock:
            return SimStats(self._imported, self._destroyed, self._exported)

    def vcpu_in_run(self, vcpu_fd: int) -> bool:
        return self._vcpu_of(vcpu_fd).in_run

    def guest_ext_interrupts(self, vcpu_fd: int) -> list[tuple[int, int]]:
        """The simulated guest's report: each external interruption it took on that
        vCPU, in order, as (interruption code, parameter it read from its lowcore)."""
        vcpu = self._vcpu_of(vcpu_fd)
        with self._lock:
            return list(vcpu.ext_interrupts)

    def open_fds(self) -> int:
        """Simulator fds currently open."""
        with self._lock:
            return len(self._files)

    def _install(self, kind: str, realfd: int, obj: object) -> int:
        with self._lock:
            self._files[realfd] = _File(kind, realfd, obj)
        return realfd

    def _fget(self, fd: int) -> _File:
        with self._lock:
            f = self._files.get(fd)
            if f is None:
                raise _err(errno.EBADF)
            f.refs += 1
            return f

    def _vcpu_of(self, vcpu_fd: int) -> _Vcpu:
        with self._lock:
            f = self._files.get(vcpu_fd)
        if f is None or not isinstance(f.obj, _Vcpu):
            raise _err(errno.EBADF)
        return f.obj

    @staticmethod
    def _copy_in(addr: int, cls: type[ctypes.Structure]) -> ctypes.Structure:
        # A NULL pointer is the one bad address the simulator can recognise
        # without touching memory; the kernel answers it with EFAULT.
        if addr == 0:
            raise _err(errno.EFAULT)
        return cls.from_buffer_copy((ctypes.c_char * ctypes.sizeof(cls)).from_address(addr))

    @staticmethod
    def _copy_out(addr: int, obj: ctypes.Structure, length: Optional[int] = None) -> None:
        if addr == 0:
            raise _err(errno.EFAULT)
        ctypes.memmove(
            addr, ctypes.addressof(obj), ctypes.sizeof(obj) if length is None else length
        )

    @staticmethod
    def _get_u64(addr: int) -> int:
        if addr == 0:
            raise _err(errno.EFAULT)
        return int(ctypes.c_uint64.from_address(addr).value)

    @staticmethod
    def _put_u64(addr: int, value: int) -> None:
        if addr == 0:
            raise _err(errno.EFAULT)
        ctypes.c_uint64.from_address(addr).value = value

    def _vcpu_locked(self, vcpu: _Vcpu) -> _CountingMutex:
        return vcpu.mutex

    def _new_handle(self) -> int:
        self._next_handle += 1
        return self._next_handle

    def _pause_point(self, point: str) -> None:
        if not point:
            return
        with self._cond:
            p = self._pauses.get(point)
            if p is None:
                return
            p.waiting += 1
            self._cond.notify_all()
        try:
            p.release.wait()
        finally:
            with self._cond:
                p.waiting -= 1

    def _vm_snapshot(self, vm: _Vm) -> SimVmInfo:
        with self._mm:
            cfg = vm.config
            vcpus = list(vm.vcpus)
            old = sum(c.secure.total for c in self._configs.values() if c.vm is vm and c is not cfg)
            return SimVmInfo(
                vm_id=vm.id,
                alive=vm.alive,
                protected=cfg is not None,
                handle=cfg.handle if cfg is not None else 0,
                set_aside=vm.set_aside is not None,
                need_cleanup=len(vm.need_cleanup),
                performing=vm.performing,
                mem_limit=vm.mem_limit,
                gmap_limit=vm.gmap_limit,
                asce_type=_asce_type(vm.gmap_limit),
                vcpus=len(vcpus),
                protected_vcpus=sum(1 for v in vcpus if v.config is not None),
                vcpus_in_run=sum(1 for v in vcpus if v.in_run),
                vcpu_mutex_waiters=sum(v.mutex.waiters for v in vcpus),
                kvm_lock_waiters=vm.lock.waiters,
                memslot_bytes=sum(m.size for m in vm.memslots.values()),
                secure_bytes=cfg.secure.total if cfg is not None else 0,
                old_secure_bytes=old,
            )
