# SPDX-License-Identifier: GPL-2.0-only
"""s390 protected-virtualization commands (``KVM_S390_PV_COMMAND``) on a ``Vm``,
and the protected-VM reboot as QEMU 10 does it.

Reference: Documentation/virt/kvm/api.rst 4.125, arch/s390/kvm/pv.c and QEMU's
target/s390x/kvm/pv.c + hw/s390x/s390-virtio-ccw.c; ``../shared/spec/kvm-pv-async.md``
sections 3 and 5.  Touches only the VM handle it is given (through its
``Syscalls`` backend, real or simulated) and the calling/cleanup threads'
names; no cgroups, no printing.

``pv_cmd()`` is the one place that issues a PV command:

* ``rc``/``rrc`` are zeroed before every call: KVM only ever writes values > 0,
  so a zero after the call means no Ultravisor call was executed (api.rst).
* ``EINTR`` is retried, as QEMU's ``__s390_pv_cmd`` does: ENABLE is documented
  to fail with EINTR when an unmasked signal is pending.
* Failures raise ``PvCmdError`` with errno and rc/rrc unless ``check=False``.

The named wrappers (``pv_enable()`` ... ``pv_async_cleanup_perform()``) are
thin: they build the sub-command's argument structure and keep it alive for
the duration of the ioctl.

Reboot (``s390_machine_unprotect()``): the old protected configuration is
either set aside with ``KVM_PV_ASYNC_CLEANUP_PREPARE`` and torn down by
``KVM_PV_ASYNC_CLEANUP_PERFORM`` on a thread named ``async_cleanup``, or
destroyed synchronously with ``KVM_PV_DISABLE``.  Unlike QEMU, a failing
PERFORM does not ``exit(1)``: the ``PvCmdError`` is recorded on the
``AsyncCleanup`` and surfaced by whoever joins it, and every cleanup thread is
tracked so that nothing is left running (``live_cleanups()``,
``join_all_cleanups()``).
"""

from __future__ import annotations

import ctypes
import errno
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

from .closing import CompletionThread, signals_held
from .errors import Interrupted, KvmError, KvmpvError, PvCmdError, SyscallError, errno_name
from .kvm import Vcpu, Vm
from .runner import start_vcpu
from .s390guest import GuestEnd, guest_end
from .seimage import SeImage
from .syscalls import set_thread_name, thread_comm
from .uapi import (
    IOCTL_NAMES,
    KVM_PV_ASYNC_SYNTHETIC_RC,
    KVM_PV_ASYNC_SYNTHETIC_RRC,
    KVM_S390_PV_COMMAND,
    PV_ASYNC_MIN_LIMIT,
    UV_FACILITY_DESTROY_SEC_CONF_FAST_MASK,
    UVC_RC_INV_STATE,
    KvmCap,
    kvm_pv_cmd,
    kvm_s390_pv_dmp,
    kvm_s390_pv_info,
    kvm_s390_pv_info_dump,
    kvm_s390_pv_info_header,
    kvm_s390_pv_info_vm,
    kvm_s390_pv_sec_parm,
    kvm_s390_pv_unp,
    pv_cmd_dmp_id,
    pv_cmd_id,
    pv_cmd_info_id,
)


@dataclass(frozen=True)
class PvResult:
    """Outcome of one PV command: ioctl return (``-errno`` on failure) and UV rc/rrc."""

    cmd: int  # a pv_cmd_id member, or a plain int for numbers the kernel does not know
    ret: int
    rc: int
    rrc: int

    @property
    def name(self) -> str:
        return self.cmd.name if isinstance(self.cmd, pv_cmd_id) else f"cmd {self.cmd}"

    @property
    def ok(self) -> bool:
        return self.ret >= 0

    @property
    def errno(self) -> int:
        return -self.ret if self.ret < 0 else 0

    def to_dict(self) -> dict[str, object]:
        return {"cmd": self.name, "ret": self.ret, "rc": self.rc, "rrc": self.rrc}


def _error(result: PvResult) -> PvCmdError:
    return PvCmdError(
        IOCTL_NAMES[KVM_S390_PV_COMMAND], result.name, result.errno, result.rc, result.rrc
    )


def pv_cmd(vm: Vm, cmd: int, data: int = 0, *, flags: int = 0, check: bool = True) -> PvResult:
    """Issue ``KVM_S390_PV_COMMAND`` sub-command ``cmd`` on ``vm``.

    ``cmd`` may be a number outside ``pv_cmd_id``: probing the kernel with an
    unknown sub-command (ENOTTY) is a conformance check, not a caller bug.
    """
    arg = kvm_pv_cmd(cmd=int(cmd), data=data, flags=flags)
    while True:
        arg.rc = 0
        arg.rrc = 0
        ret = vm.pv_ioctl(arg)
        if ret != -errno.EINTR:
            break
    known = int(cmd) in pv_cmd_id._value2member_map_
    result = PvResult(pv_cmd_id(cmd) if known else int(cmd), ret, int(arg.rc), int(arg.rrc))
    if check and not result.ok:
        raise _error(result)
    return result


# --------------------------------------------------------------------------
# Named sub-commands
# --------------------------------------------------------------------------


def pv_enable(vm: Vm, *, check: bool = True) -> PvResult:
    """``KVM_PV_ENABLE``: create the secure configuration, convert existing vCPUs."""
    return pv_cmd(vm, pv_cmd_id.KVM_PV_ENABLE, check=check)


def pv_disable(vm: Vm, *, check: bool = True) -> PvResult:
    """``KVM_PV_DISABLE``: destroy the current configuration *and* any set-aside one.

    Needs a current protected configuration (else EINVAL, and a set-aside one
    is then not cleaned: spec 3.5).
    """
    return pv_cmd(vm, pv_cmd_id.KVM_PV_DISABLE, check=check)


def pv_set_sec_parms(vm: Vm, origin: int, length: int, *, check: bool = True) -> PvResult:
    """``KVM_PV_SET_SEC_PARMS``: the SE header at user address ``origin``."""
    parm = kvm_s390_pv_sec_parm(origin=origin, length=length)
    return pv_cmd(vm, pv_cmd_id.KVM_PV_SET_SEC_PARMS, ctypes.addressof(parm), check=check)


def pv_unpack(vm: Vm, addr: int, size: int, tweak: int, *, check: bool = True) -> PvResult:
    """``KVM_PV_UNPACK``: unpack (decrypt and import) ``size`` bytes at guest ``addr``."""
    unp = kvm_s390_pv_unp(addr=addr, size=size, tweak=tweak)
    return pv_cmd(vm, pv_cmd_id.KVM_PV_UNPACK, ctypes.addressof(unp), check=check)


def pv_verify(vm: Vm, *, check: bool = True) -> PvResult:
    """``KVM_PV_VERIFY``: verify the unpacked image."""
    return pv_cmd(vm, pv_cmd_id.KVM_PV_VERIFY, check=check)


def pv_prep_reset(vm: Vm, *, check: bool = True) -> PvResult:
    """``KVM_PV_PREP_RESET``: prepare the configuration for a reset."""
    return pv_cmd(vm, pv_cmd_id.KVM_PV_PREP_RESET, check=check)


def pv_unshare_all(vm: Vm, *, check: bool = True) -> PvResult:
    """``KVM_PV_UNSHARE_ALL``: unshare every page the guest shared with the host."""
    return pv_cmd(vm, pv_cmd_id.KVM_PV_UNSHARE_ALL, check=check)


@dataclass(frozen=True)
class PvInfoVm:
    """Parsed ``struct kvm_s390_pv_info_vm``."""

    inst_calls_list: tuple[int, int, int, int]
    max_cpus: int
    max_guests: int
    max_guest_addr: int
    feature_indication: int

    @property
    def destroy_fast(self) -> bool:
        """The UV offers Destroy Secure Configuration Fast (bit 23, MSB-0, of word 0)."""
        return bool(self.inst_calls_list[0] & UV_FACILITY_DESTROY_SEC_CONF_FAST_MASK)

    def to_dict(self) -> dict[str, object]:
        return {
            "inst_calls_list": [f"0x{w:016x}" for w in self.inst_calls_list],
            "max_cpus": self.max_cpus,
            "max_guests": self.max_guests,
            "max_guest_addr": self.max_guest_addr,
            "feature_indication": self.feature_indication,
            "destroy_fast": self.destroy_fast,
        }


@dataclass(frozen=True)
class PvInfoDump:
    """Parsed ``struct kvm_s390_pv_info_dump``."""

    dump_cpu_buffer_len: int
    dump_config_mem_buffer_per_1m: int
    dump_config_finalize_len: int

    def to_dict(self) -> dict[str, object]:
        return {
            "dump_cpu_buffer_len": self.dump_cpu_buffer_len,
            "dump_config_mem_buffer_per_1m": self.dump_config_mem_buffer_per_1m,
            "dump_config_finalize_len": self.dump_config_finalize_len,
        }


@dataclass(frozen=True)
class PvInfo:
    """Parsed ``struct kvm_s390_pv_info``: header plus the payload ``id`` asked for."""

    id: pv_cmd_info_id
    len_max: int
    len_written: int
    vm: Optional[PvInfoVm]
    dump: Optional[PvInfoDump]
    result: PvResult

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id.name,
            "len_max": self.len_max,
            "len_written": self.len_written,
            "vm": self.vm.to_dict() if self.vm else None,
            "dump": self.dump.to_dict() if self.dump else None,
        }


def pv_info(
    vm: Vm, info_id: pv_cmd_info_id = pv_cmd_info_id.KVM_PV_INFO_VM, *, check: bool = True
) -> PvInfo:
    """``KVM_PV_INFO`` (needs no protected configuration): query the Ultravisor.

    ``len_max`` is exactly header + the payload for ``info_id``; the kernel
    refuses anything shorter with EINVAL and reports what it wrote in
    ``len_written``.  Only the bytes written are parsed; a short answer
    leaves the payload ``None``.
    """
    payload = (
        kvm_s390_pv_info_vm if info_id == pv_cmd_info_id.KVM_PV_INFO_VM else kvm_s390_pv_info_dump
    )
    info = kvm_s390_pv_info()
    info.header.id = int(info_id)
    info.header.len_max = ctypes.sizeof(kvm_s390_pv_info_header) + ctypes.sizeof(payload)
    result = pv_cmd(vm, pv_cmd_id.KVM_PV_INFO, ctypes.addressof(info), check=check)
    complete = result.ok and info.header.len_written >= info.header.len_max
    parsed_vm: Optional[PvInfoVm] = None
    parsed_dump: Optional[PvInfoDump] = None
    if complete and info_id == pv_cmd_info_id.KVM_PV_INFO_VM:
        v = info.vm
        calls = tuple(int(w) for w in v.inst_calls_list)
        parsed_vm = PvInfoVm(
            (calls[0], calls[1], calls[2], calls[3]),
            int(v.max_cpus),
            int(v.max_guests),
            int(v.max_guest_addr),
            int(v.feature_indication),
        )
    elif complete:
        d = info.dump
        parsed_dump = PvInfoDump(
            int(d.dump_cpu_buffer_len),
            int(d.dump_config_mem_buffer_per_1m),
            int(d.dump_config_finalize_len),
        )
    return PvInfo(
        pv_cmd_info_id(info_id),
        int(info.header.len_max),
        int(info.header.len_written),
        parsed_vm,
        parsed_dump,
        result,
    )


def pv_dump(
    vm: Vm,
    subcmd: pv_cmd_dmp_id,
    buff_addr: int = 0,
    buff_len: int = 0,
    gaddr: int = 0,
    *,
    check: bool = True,
) -> PvResult:
    """``KVM_PV_DUMP`` sub-command ``subcmd`` into the user buffer ``buff_addr``."""
    dmp = kvm_s390_pv_dmp(subcmd=int(subcmd), buff_addr=buff_addr, buff_len=buff_len, gaddr=gaddr)
    return pv_cmd(vm, pv_cmd_id.KVM_PV_DUMP, ctypes.addressof(dmp), check=check)


def pv_async_cleanup_prepare(vm: Vm, *, check: bool = True) -> PvResult:
    """``KVM_PV_ASYNC_CLEANUP_PREPARE``: set the current configuration aside.

    Destroys the vCPUs (blocks while one is in KVM_RUN: vcpu->mutex) and the
    guest pages below 2 GiB synchronously; success is rc 1 / rrc 42.
    """
    return pv_cmd(vm, pv_cmd_id.KVM_PV_ASYNC_CLEANUP_PREPARE, check=check)


def pv_async_cleanup_perform(vm: Vm, *, check: bool = True) -> PvResult:
    """``KVM_PV_ASYNC_CLEANUP_PERFORM``: tear the set-aside configuration down here.

    Runs without kvm->lock (only long enough to detach the record), so a new
    ENABLE or PREPARE may run meanwhile.  Call it from its own thread.
    """
    return pv_cmd(vm, pv_cmd_id.KVM_PV_ASYNC_CLEANUP_PERFORM, check=check)


# --------------------------------------------------------------------------
# Threads: kernel names and signal masks
# --------------------------------------------------------------------------

#: QEMU's name for the PERFORM thread (qemu_thread_create(..., "async_cleanup")).
ASYNC_CLEANUP_THREAD_NAME = "async_cleanup"


# --------------------------------------------------------------------------
# The PERFORM thread
# --------------------------------------------------------------------------

_live_lock = threading.Lock()
_live: weakref.WeakSet[AsyncCleanup] = weakref.WeakSet()


@dataclass
class CleanupOutcome:
    """What the ``async_cleanup`` thread did, measured inside the thread.

    Times are ``time.monotonic_ns()``; ``cpu_ns`` is CLOCK_THREAD_CPUTIME_ID
    (``time.thread_time_ns()``) of the thread from its first instruction to
    the end of PERFORM, so the placement hook is included (it is work the
    thread did, and the accounting verdict compares against the whole thread).
    """

    tid: int = 0
    comm: str = ""
    thread_start_ns: int = 0
    perform_start_ns: int = 0
    perform_end_ns: int = 0
    perform_cpu_ns: int = 0
    cpu_ns: int = 0
    result: Optional[PvResult] = None
    error: Optional[BaseException] = None
    on_start_error: Optional[BaseException] = None

    @property
    def perform_ns(self) -> int:
        return max(0, self.perform_end_ns - self.perform_start_ns)

    @property
    def interrupted(self) -> bool:
        """PERFORM stopped by a fatal signal reports rc 1 / rrc 42 (spec 3.4)."""
        r = self.result
        return bool(
            r is not None
            and r.ok
            and r.rc == KVM_PV_ASYNC_SYNTHETIC_RC
            and r.rrc == KVM_PV_ASYNC_SYNTHETIC_RRC
        )


class AsyncCleanup:
    """``KVM_PV_ASYNC_CLEANUP_PERFORM`` on a tracked thread named ``async_cleanup``.

    QEMU detaches this thread and exits the process if PERFORM fails.  Here the
    thread is a daemon (so a crash elsewhere cannot hang interpreter exit) but
    registered in ``live_cleanups()`` and joinable; the outcome, including a
    ``PvCmdError``, is kept for whoever joins.  ``on_start(tid)`` runs inside
    the thread before PERFORM (e.g. to move the thread into a cgroup); if it
    fails, PERFORM still runs, because the set-aside configuration must be torn
    down whatever happens to the bookkeeping.
    """

    def __init__(
        self,
        vm: Vm,
        *,
        on_start: Optional[Callable[[int], None]] = None,
        name: str = ASYNC_CLEANUP_THREAD_NAME,
    ) -> None:
        self.vm = vm
        self.name = name
        self.outcome = CleanupOutcome()
        self._on_start = on_start
        self._started = threading.Event()
        # Completion is the thread's own flag, set once PERFORM has returned,
        # never Thread.is_alive()/join() (see CompletionThread): the caller
        # must not close the VM and unmap guest memory under a running PERFORM.
        self._thread = CompletionThread(self._main, name, reraise=True)
        self._done = self._thread.done
        # "new" -> "running" (the thread took it) or "abandoned" (start() was
        # interrupted before that: the thread, should it still run, does not
        # PERFORM).  Decided under _state_lock, so exactly one side wins.
        self._state_lock = threading.Lock()
        self._state = "new"
        self._launched = False

    def start(self) -> None:
        """Start the thread (with SIGINT/SIGTERM blocked in it) and wait for its tid.

        Interrupted (KeyboardInterrupt can land here even with the signals
        blocked in this thread, when the kernel delivers the process-directed
        signal to another thread that does not block it): either the thread
        already took the job, and stays registered in ``live_cleanups()`` for
        ``join_all_cleanups()``; or it is abandoned before it could touch the
        VM and the set-aside configuration is left to DISABLE or to closing
        the VM (spec 3.5, 3.6).  Never a PERFORM that nobody tracks.
        """
        # The registry entry, the flag and the thread's start are one step for
        # SIGINT/SIGTERM.  A KeyboardInterrupt between ``_live.add`` and
        # ``_launched = True`` left an entry that was never started, and
        # ``join_all_cleanups()`` then spun on "cannot join" in the cleanup
        # path (seen once in tests, load 4: the main thread busy, the run hung).
        with signals_held():
            with _live_lock:
                _live.add(self)
            self._launched = True
            try:
                self._thread.start()  # with SIGINT/SIGTERM blocked in it
            except RuntimeError:  # "can't start new thread": it never ran
                self._launched = False
                with _live_lock:
                    _live.discard(self)
                raise
            except BaseException:  # not from a signal (held here); kept for any other raiser
                self._abandon_if_not_taken()
                raise
        # A signal held above lands here, after the start: the thread takes
        # the job and stays in live_cleanups() for join_all_cleanups().
        try:
            self._started.wait()
        except BaseException:
            self._abandon_if_not_taken()
            raise

    def _abandon_if_not_taken(self) -> None:
        with self._state_lock:
            if self._state != "new":
                return  # the thread runs PERFORM: it stays in live_cleanups()
            self._state = "abandoned"
        self._done.set()
        with _live_lock:
            _live.discard(self)

    def _main(self) -> None:
        with self._state_lock:
            if self._state == "abandoned":
                return
            self._state = "running"
        self._run(rename=True)

    def _run(self, *, rename: bool) -> None:
        out = self.outcome
        out.thread_start_ns = time.monotonic_ns()
        cpu0 = time.thread_time_ns()
        out.tid = threading.get_native_id()
        try:
            if rename:
                set_thread_name(self.name)
            out.comm = thread_comm(out.tid)
        except (OSError, SyscallError) as exc:
            out.on_start_error = exc
        self._started.set()
        if self._on_start is not None:
            try:
                self._on_start(out.tid)
            except BaseException as exc:  # recorded; PERFORM must run regardless
                out.on_start_error = out.on_start_error or exc
        pcpu0 = time.thread_time_ns()
        out.perform_start_ns = time.monotonic_ns()
        try:
            out.result = pv_async_cleanup_perform(self.vm, check=False)
            if not out.result.ok:
                out.error = _error(out.result)
        except BaseException as exc:  # e.g. KvmError(EBADF): surfaced, never lost
            out.error = exc
        finally:
            out.perform_end_ns = time.monotonic_ns()
            end_cpu = time.thread_time_ns()
            out.perform_cpu_ns = end_cpu - pcpu0
            out.cpu_ns = end_cpu - cpu0
            # Last: the ioctl has returned (including any VM destruction its
            # file reference deferred, spec 3.6); the VM is no longer touched.
            self._done.set()

    @property
    def tid(self) -> int:
        return self.outcome.tid

    @property
    def running(self) -> bool:
        """PERFORM (or the thread's setup before it) has not finished yet."""
        return self._launched and not self._done.is_set()

    @property
    def done(self) -> bool:
        """PERFORM has returned (or was abandoned before it started)."""
        return self._done.is_set()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until PERFORM has returned; True once it has.

        Decided by the thread's own completion flag, not by
        ``Thread.join``/``is_alive`` (see ``__init__``: gh-90882).  The
        thread's few remaining instructions are then joined as well.
        Interruptible by KeyboardInterrupt; use ``join_uninterrupted()`` on
        cleanup paths.
        """
        if not self._launched and not self._done.is_set():
            raise RuntimeError("cannot join an AsyncCleanup that was not started")
        if not self._done.wait(timeout):
            return False
        if self._thread.ident is not None:
            # PERFORM is over; even a join spoilt by gh-90882 here is harmless.
            self._thread.join()
        with _live_lock:
            _live.discard(self)
        return True

    def join_uninterrupted(self) -> None:
        """Join even across SIGINT: PERFORM cannot be cancelled from userspace.

        A KeyboardInterrupt (or SIGTERM's ``Interrupted``) while waiting is
        held back and re-raised once PERFORM has returned, so the process
        never exits, closes the VM fd or unmaps guest memory under a running
        PERFORM.  The loop ends on the completion flag itself, whatever state
        an interrupted wait left behind.
        """
        pending: Optional[BaseException] = None
        while True:
            try:
                if self.join(0.5):
                    break
            except (KeyboardInterrupt, Interrupted) as exc:  # re-raised below, after the join
                pending = pending or exc
            # Anything else (a bookkeeping error such as "not started") is
            # raised at once: retrying it would spin forever.
        if pending is not None:
            raise pending

    def raise_error(self) -> None:
        """Raise the PERFORM error, if any (after ``join``)."""
        if self.outcome.error is not None:
            raise self.outcome.error


def live_cleanups() -> list[AsyncCleanup]:
    """Every started ``async_cleanup`` thread that has not been joined yet."""
    with _live_lock:
        return list(_live)


def join_all_cleanups() -> None:
    """Join every tracked cleanup thread (SIGINT-safe); for exit paths."""
    for cleanup in live_cleanups():
        cleanup.join_uninterrupted()


# --------------------------------------------------------------------------
# The reboot algorithm (QEMU 10: s390_pv_vm_try_disable_async + s390_machine_unprotect)
# --------------------------------------------------------------------------


@dataclass
class Unprotect:
    """How the old protected configuration went away on one reboot.

    ``path`` is "async" (PREPARE succeeded, ``cleanup`` runs PERFORM) or
    "sync" (DISABLE did everything); ``reason`` says why sync was used.
    ``sync_ns``/``sync_cpu_ns`` cover the synchronous part in the calling
    thread: PREPARE, or DISABLE (plus a failed PREPARE before it).
    """

    path: str
    reason: str = ""
    prepare: Optional[PvResult] = None
    disable: Optional[PvResult] = None
    sync_ns: int = 0
    sync_cpu_ns: int = 0
    cleanup: Optional[AsyncCleanup] = None
    notes: list[str] = field(default_factory=list)


def async_teardown_blocker(vm: Vm, mem_limit: Optional[int] = None) -> str:
    """Why QEMU 10 would not try the async path on ``vm`` ("" if it would).

    Mirrors ``s390_pv_vm_try_disable_async()``: cap 224
    (KVM_CAP_S390_PROTECTED_ASYNC_DISABLE) must be present, and the VM memory
    limit must be above 2 GiB -- QEMU 10 checks ``s390_get_memory_limit()``
    ("mimics what the kernel will check in kvm_s390_pv_set_aside"): a limit
    <= 2 GiB means a segment-table ASCE, which PREPARE refuses with EINVAL
    since commit 292a7d6fca33 ("KVM: s390: pv: fix asynchronous teardown for
    small VMs").

    ``mem_limit`` is the value the VMM *set* with KVM_S390_VM_MEM_LIMIT_SIZE;
    QEMU's ``s390_get_memory_limit()`` returns its own copy of it.  The
    kernel cannot be asked instead: KVM_GET_DEVICE_ATTR answers
    ``kvm->arch.mem_limit``, the host maximum, which setting the attribute
    does not change (it only recreates the gmap).  Without ``mem_limit`` the
    read-back is used, so a small VM goes on to PREPARE, which refuses with
    EINVAL -- and the DISABLE fallback still does the right thing.
    """
    if not vm.kvm.has_cap(KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE):
        return "KVM_CAP_S390_PROTECTED_ASYNC_DISABLE (224) absent"
    if mem_limit is None:
        try:
            mem_limit = vm.s390_get_mem_limit()
        except KvmError as exc:
            return f"VM memory limit unreadable ({exc})"
    if mem_limit <= PV_ASYNC_MIN_LIMIT:
        return f"VM memory limit {mem_limit:#x} <= 2 GiB (segment ASCE)"
    return ""


def s390_pv_vm_try_disable_async(
    vm: Vm,
    *,
    mem_limit: Optional[int] = None,
    on_cleanup_start: Optional[Callable[[int], None]] = None,
) -> Unprotect:
    """Try the async path; ``path == "sync"`` means the caller must DISABLE.

    On success PERFORM is already running on the ``async_cleanup`` thread.
    ``mem_limit``: see ``async_teardown_blocker()``.
    """
    t0 = time.monotonic_ns()
    c0 = time.thread_time_ns()
    blocker = async_teardown_blocker(vm, mem_limit)
    if blocker:
        return Unprotect("sync", reason=blocker)
    prepare = pv_async_cleanup_prepare(vm, check=False)
    out = Unprotect("async", prepare=prepare)
    out.sync_ns = time.monotonic_ns() - t0
    out.sync_cpu_ns = time.thread_time_ns() - c0
    if not prepare.ok:
        # QEMU prints the failed command and falls back to KVM_PV_DISABLE,
        # which also tears down a configuration PREPARE registered before
        # failing (spec 3.3: vCPUs already destroyed, remedy is DISABLE).
        out.path = "sync"
        out.reason = f"PREPARE failed: {_error(prepare)}"
        return out
    cleanup = AsyncCleanup(vm, on_start=on_cleanup_start)
    try:
        cleanup.start()
    except RuntimeError as exc:  # "can't start new thread": do PERFORM here instead
        out.notes.append(f"cleanup thread not started ({exc}); PERFORM ran synchronously")
        cleanup._run(rename=False)  # never rename the caller's thread
        out.sync_ns = time.monotonic_ns() - t0
        out.sync_cpu_ns = time.thread_time_ns() - c0
        cleanup.raise_error()
        return out
    out.cleanup = cleanup
    return out


def s390_machine_unprotect(
    vm: Vm,
    *,
    allow_async: bool = True,
    mem_limit: Optional[int] = None,
    on_cleanup_start: Optional[Callable[[int], None]] = None,
) -> Unprotect:
    """Remove the protected configuration for a reboot, as QEMU's ``s390_machine_unprotect``.

    Async when allowed and possible (``mem_limit``: the memory limit the VMM
    set, see ``async_teardown_blocker()``), else ``KVM_PV_DISABLE`` (raises
    ``PvCmdError`` if that fails: QEMU exits there, kvmpv reports).  All vCPU
    threads must be out of KVM_RUN (PREPARE and DISABLE take every vcpu->mutex).
    """
    if allow_async:
        out = s390_pv_vm_try_disable_async(
            vm, mem_limit=mem_limit, on_cleanup_start=on_cleanup_start
        )
        if out.path == "async":
            return out
    else:
        out = Unprotect("sync", reason="synchronous teardown requested")
    t0 = time.monotonic_ns()
    c0 = time.thread_time_ns()
    try:
        out.disable = pv_disable(vm)
    finally:
        out.sync_ns += time.monotonic_ns() - t0
        out.sync_cpu_ns += time.thread_time_ns() - c0
    return out


# --------------------------------------------------------------------------
# The protected boot (QEMU's s390_machine_protect(), spec 10.3)
# --------------------------------------------------------------------------

#: What the Ultravisor's answers at boot mean, by (step, rc, rrc; None: any rrc):
#: s390-tools rust/pvimg/boot/stage3a.c ``enum UV_RC`` (docs/secure-execution.md).
_DIGEST = "the unpacked image does not match the header's digests: "
_NO_PARMS = "no secure parameters set yet: SET_SEC_PARMS must come first"
BOOT_RC_MEANING: dict[tuple[str, int, Optional[int]], str] = {
    ("SET_SEC_PARMS", 0x0104, None): "SE header version not supported",
    ("SET_SEC_PARMS", 0x0106, None): "plaintext control flags not supported",
    ("SET_SEC_PARMS", 0x0108, 0x05): "no key slot for this machine's host key: the SE header "
    "was not made for this host's host-key document",
    ("SET_SEC_PARMS", 0x0108, 0x0B): "the header's customer ECDH key is invalid",
    ("SET_SEC_PARMS", 0x0108, 0x34): "backup host keys are not allowed",
    ("SET_SEC_PARMS", 0x0108, None): "host-key hash: the SE header was not made for this host",
    ("SET_SEC_PARMS", 0x0109, None): "secret control flags not supported",
    ("SET_SEC_PARMS", 0x010A, None): "the SE header is corrupt (integrity check failed)",
    ("UNPACK", UVC_RC_INV_STATE, None): _NO_PARMS,
    ("VERIFY", UVC_RC_INV_STATE, None): _NO_PARMS,
    **{
        (step, 0x0102, rrc): _DIGEST + what
        for step in ("UNPACK", "VERIFY")
        for rrc, what in (
            (0x1A, "address list digest (ALD) mismatch (a component at another address)"),
            (0x1B, "page list digest (PLD) mismatch (a component's content differs)"),
            (0x1C, "tweak list digest (TLD) mismatch (a component with another tweak)"),
            (0x1D, "page count mismatch (a component missing or of another size)"),
            (None, "mismatch"),
        )
    },
}
BOOT_ERRNO_MEANING: dict[tuple[str, int], str] = {
    ("SET_SEC_PARMS", errno.ENOMEM): "a zero-length header (the kernel's vmalloc(0)), "
    "refused before any UV call",
    ("SET_SEC_PARMS", errno.EINVAL): "a header above the kernel's size limit, or refused by the UV",
    ("UNPACK", errno.EFAULT): "the component is not in guest memory (outside the memslots)",
}


@dataclass
class BootStep:
    """One step of a protected boot: its PV command result (if any) and its time."""

    step: str
    result: Optional[PvResult]
    seconds: float
    meaning: str = ""

    @property
    def ok(self) -> bool:
        return self.result is None or self.result.ok

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"step": self.step, "ok": self.ok, "s": round(self.seconds, 6)}
        if self.result is not None:
            out.update(errno=self.result.errno, rc=self.result.rc, rrc=self.result.rrc)
        if self.meaning:
            out["meaning"] = self.meaning
        return out


@dataclass
class ProtectedBoot:
    """What ``s390_machine_protect`` did: every step, and whether the image verified."""

    image: str
    synthetic: bool
    steps: list[BootStep] = field(default_factory=list)
    verified: bool = False
    #: how the booted guest's run ended (``payload_end``), None until it did
    end: Optional[GuestEnd] = None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def to_dict(self) -> dict[str, object]:
        return {
            "image": self.image,
            "synthetic": self.synthetic,
            "verified": self.verified,
            "steps": [s.to_dict() for s in self.steps],
            "end": self.end.to_dict() if self.end is not None else None,
        }


class BootError(KvmError):
    """A protected boot failed at one step; the message names it, with rc/rrc and the meaning."""

    def __init__(self, boot: ProtectedBoot, step: BootStep) -> None:
        self.boot = boot
        res = step.result
        err = res.errno if res is not None else errno.EIO
        super().__init__(f"protected boot of {boot.image}: {step.step}", err)
        uv = f"UV rc {res.rc:#06x} rrc {res.rrc:#06x}" if res is not None and res.rc else "no UV rc"
        self.detail = f"{uv}" + (f": {step.meaning}" if step.meaning else "")

    def __str__(self) -> str:
        return (
            f"{self.call} failed: errno {self.errno} ({errno_name(self.errno or 0)}) "
            f"{self.strerror}; {self.detail}"
        )


class GuestEndError(KvmpvError):
    """A booted image's guest ended, but not as the payload ends (FAIL, exit 1)."""


def payload_end(boot: ProtectedBoot, vcpu: Vcpu) -> GuestEnd:
    """Record how the booted guest ended; ``GuestEndError`` unless it was the payload's end.

    A run counts as finished only by the payload's own end: stage3b ends a
    failed boot in a disabled wait too (zipl ``libc_stop``), and so would any
    other loader or kernel that stops, so "icptcode 0x1c" is not success.
    """
    end = guest_end(vcpu)
    boot.end = end
    if not end.ok:
        raise GuestEndError(f"protected boot of {boot.image}: {end.describe()}")
    return end


def load_image(vm: Vm, image: SeImage) -> None:
    """Write the SE image into guest memory at address 0, as QEMU's IPL loads ``-kernel``.

    The host may write guest memory only while it is not protected: this
    runs before ``KVM_PV_ENABLE`` (on a reboot, after the unprotect; the
    pages below 2 GiB were destroyed by PREPARE or DISABLE already).
    """
    size = len(image.data)
    for region in vm.memslots.values():
        if region.guest_phys_addr == 0 and region.memory_size >= size:
            ctypes.memmove(int(region.userspace_addr), image.data, size)
            return
    raise KvmpvError(
        f"{image.label}: needs {size} bytes of guest memory at address 0 (one memslot)"
    )


def s390_machine_protect(vm: Vm, image: SeImage, vcpus: Sequence[Vcpu]) -> ProtectedBoot:
    """The host side of a protected boot, step by step as QEMU's ``s390_machine_protect()``.

    QEMU (``hw/s390x/s390-virtio-ccw.c``; the PV calls in ``hw/s390x/pv.c``
    or ``target/s390x/kvm/pv.c``):

    1. ``KVM_PV_ENABLE`` (``s390_pv_vm_enable()``; the kernel's
       ``kvm_s390_pv_init_vm()`` + converting the vCPUs);
    2. ``KVM_PV_INFO`` for ``KVM_PV_INFO_VM`` then ``KVM_PV_INFO_DUMP``, only
       where ``KVM_CAP_S390_PROTECTED_DUMP`` exists (``s390_pv_query_info()``:
       "Info API's first user is dump so they are bundled");
    3. ``KVM_PV_SET_SEC_PARMS`` with the header, which QEMU reads from guest
       memory at the IPL block's address (``s390_ipl_prepare_pv_header()``);
    4. one ``KVM_PV_UNPACK`` per IPL-block component (``s390_ipl_pv_unpack()``:
       address, page-aligned size, tweak prefix);
    5. ``KVM_PV_VERIFY`` (``s390_pv_verify()``);
    6. the IPL CPU (the first of ``vcpus``) LOAD and OPERATING
       (``s390_do_cpu_load_normal()`` after ``s390_machine_protect()`` returns,
       in ``s390_machine_reset()``'s ``S390_RESET_PV`` case).

    No ``KVM_PV_PREP_RESET``: QEMU issues it only from
    ``s390_pv_prepare_reset()``, for a diag 308 reset of a guest that is
    already protected (after every CPU is STOPPED and ``KVM_PV_UNSHARE_ALL``).
    The other CPUs stay STOPPED, as in QEMU, until the guest starts them with
    SIGP (kvmpv's payload does not): the image's loader runs on one CPU.  The
    caller has reset the CPUs first, as QEMU does before protecting (NORMAL
    for the IPL CPU, CLEAR for the others).

    On a failing step the configuration is torn down again (``KVM_PV_DISABLE``,
    as QEMU's ``out_err`` path through ``s390_machine_unprotect()``) and
    ``BootError`` names the step, its rc/rrc and what it means where the
    sources say.
    """
    boot = ProtectedBoot(image.label, image.synthetic)
    header = ctypes.create_string_buffer(image.header, image.header_size)

    def step(name: str, run: Callable[[], Optional[PvResult]]) -> None:
        t0 = time.monotonic()
        res = run()
        rec = BootStep(name, res, time.monotonic() - t0)
        if res is not None and not res.ok:
            key = name.split()[0]
            rec.meaning = (
                BOOT_RC_MEANING.get((key, res.rc, res.rrc))
                or BOOT_RC_MEANING.get((key, res.rc, None))
                or BOOT_ERRNO_MEANING.get((key, res.errno), "")
            )
        boot.steps.append(rec)
        if not rec.ok:
            if name != "ENABLE":
                pv_disable(vm, check=False)
            raise BootError(boot, rec)

    def info(info_id: pv_cmd_info_id) -> Callable[[], Optional[PvResult]]:
        return lambda: pv_info(vm, info_id, check=False).result

    step("ENABLE", lambda: pv_enable(vm, check=False))
    if vm.kvm.has_cap(KvmCap.KVM_CAP_S390_PROTECTED_DUMP):  # QEMU: kvm_s390_get_protected_dump()
        step("INFO VM", info(pv_cmd_info_id.KVM_PV_INFO_VM))
        step("INFO DUMP", info(pv_cmd_info_id.KVM_PV_INFO_DUMP))
    step(
        "SET_SEC_PARMS",
        lambda: pv_set_sec_parms(vm, ctypes.addressof(header), image.header_size, check=False),
    )
    for i, comp in enumerate(image.components):
        step(
            f"UNPACK {i}",
            lambda c=comp: pv_unpack(vm, c.addr, c.size, c.tweak, check=False),  # type: ignore[misc]
        )
    step("VERIFY", lambda: pv_verify(vm, check=False))
    boot.verified = True

    def start() -> Optional[PvResult]:
        start_vcpu(vcpus[0], protected=True)
        return None

    step("LOAD+OPERATING", start)
    return boot
