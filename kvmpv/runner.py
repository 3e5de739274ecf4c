# SPDX-License-Identifier: GPL-2.0-only
"""Running vCPUs: one run loop and one vCPU thread for every scenario that runs a guest.

What "the guest finished" looks like depends on the architecture (spec 10.2):

* x86: ``KVM_EXIT_HLT`` (kvmpv's x86 guest ends with ``hlt``, no IRQs).
* s390: ``KVM_EXIT_S390_SIEIC`` with icptcode 0x1c (a disabled wait, which
  ``kvm_s390_handle_wait()`` leaves to userspace; kvmpv's s390x payload
  ends with one) or 0x28 (the CPU stopped itself).  s390 never returns HLT.

One exit is served on the way, as QEMU serves it: a protected guest's SCLP
call (``serve_pv_sclp``), which the loader of a pvimg image makes before
its kernel runs.  Anything else is an error that names the exit (and, on
s390, the intercept code, instruction and PSW), never a silent retry.

Starting a vCPU also differs: on s390, once userspace controls CPU state
(``KVM_SET_MP_STATE`` or any PV command), a STOPPED vCPU makes ``KVM_RUN``
fail with EINVAL; ``start_vcpu()`` does what QEMU's ``s390_cpu_load_normal``
does (LOAD for a protected CPU, then OPERATING) and is a no-op on x86.

Kicking a vCPU out of ``KVM_RUN`` from another thread is the same on both
(``Vcpu.kick``): ``kvm_run.immediate_exit``, then a signal to the vCPU's
thread (``kvmpv.syscalls.kick_signal``; the simulator models it by fd).
``VcpuRunner`` is QEMU's ``CPU n/KVM`` thread; ``VcpuGroup`` pauses and
resumes a VM's runners together, as ``pause_all_vcpus()``.  This module
touches only the vCPUs it is given and the threads it starts and joins.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Sequence
from typing import Callable, Optional

from . import uapi
from .closing import Closing, CompletionThread
from .errors import KvmError, KvmpvError
from .kvm import Vcpu, close_each
from .syscalls import ensure_kick_handler, set_thread_name

#: How long a vCPU may take to leave KVM_RUN after a kick.
KICK_TIMEOUT_S = 30.0

EXIT_NAMES = {
    value: name
    for name, value in vars(uapi).items()
    if name.startswith("KVM_EXIT_")
    and isinstance(value, int)
    and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
}

#: ICPT_PV_INSTR: an instruction of a protected guest left to userspace (SIDA operands).
S390_ICPT_PV_INSTR = 0x68

#: s390 intercept codes that mean "the guest finished".
S390_FINISHED_ICPT = {uapi.ICPT_WAIT: "disabled wait", uapi.ICPT_STOP: "stop"}


def exit_name(reason: int) -> str:
    return EXIT_NAMES.get(reason, f"exit {reason}")


def finished_exit(arch: str) -> str:
    """What a finished guest returns on ``arch``, for messages."""
    if arch == "s390x":
        return "KVM_EXIT_S390_SIEIC with icptcode 0x1c (disabled wait) or 0x28 (stop)"
    return "KVM_EXIT_HLT"


class GuestExitError(KvmpvError):
    """``KVM_RUN`` returned something other than "finished" or a kick."""

    def __init__(self, vcpu: Vcpu, reason: int, detail: str = "") -> None:
        self.exit_reason = reason
        self.icptcode: Optional[int] = None
        where = ""
        if vcpu.arch == "s390x":
            run = vcpu.s390_run()
            where = f", psw {int(run.psw_mask):#018x} {int(run.psw_addr):#x}"
            if reason == uapi.KVM_EXIT_S390_SIEIC:
                sie = run.s390_sieic
                self.icptcode = int(sie.icptcode)
                where = (
                    f" icptcode {self.icptcode:#x} ipa {int(sie.ipa):#06x} "
                    f"ipb {int(sie.ipb):#010x}" + where
                )
        extra = f"; {detail}" if detail else ""
        super().__init__(
            f"{vcpu.arch} guest, vCPU {vcpu.id}: KVM_RUN returned {exit_name(reason)} "
            f"({reason}){where}, expected {finished_exit(vcpu.arch)}{extra}"
        )


# SCLP, as far as a loader needs it (QEMU hw/s390x/sclp.c, event-facility.c)
SCLP_CMD_WRITE_EVENT_MASK = 0x00780005
SCLP_RC_NORMAL_COMPLETION = 0x0020
SCLP_RC_INVALID_SCLP_COMMAND = 0x01F0
#: QEMU's SCLP_PV_DUMMY_ADDR: the service signal of a protected guest carries
#: no real SCCB address (the UV delivers the guest's own)
SCLP_PV_DUMMY_ADDR = 0x4000
_SCCB_HEADER = 8
#: The low two bits of the service signal's parameter: events pending in the
#: event facility (the kernel's SCCB_EVENT_PENDING; Linux's guest driver,
#: sclp_interrupt_handler(), reads them to decide whether to read events)
SCLP_EVENT_PENDING_BITS = 0x3


def serve_pv_sclp(vcpu: Vcpu, reason: int, *, events: int = 0) -> bool:
    """Answer a protected guest's SCLP service call (``servc``), as QEMU does; False if
    the exit is something else.

    A pvimg image's loader, stage3b, sets up the SCLP console before it starts
    the kernel.  For a protected CPU ``servc`` comes to userspace as
    ``KVM_EXIT_S390_SIEIC`` with icptcode 0x68 (ICPT_PV_INSTR), ipa 0xb220; the
    command code is in the general register named by the high nibble of ipb's
    first halfword (``kvm_run.s.regs.gprs``), the SCCB in the SIDA.  QEMU's
    ``sclp_service_call_protected()``: read the SCCB from the SIDA, run the
    command, write the SCCB back, raise the service signal (the UV sets the
    condition code).  kvmpv's event facility offers no events: a write-event-
    mask completes normally with empty host masks (the loader then prints
    nothing), anything else is "invalid SCLP command".

    ``events``: the event-pending bits (``SCLP_EVENT_PENDING_BITS``) to set in
    the service signal's parameter, as QEMU's ``sclp_service_interrupt()``
    sets 0x1 when its event facility has an event for the guest; kvmpv's
    has none (0), a check sets them to see which ones reach the guest.
    """
    if events & ~SCLP_EVENT_PENDING_BITS:
        raise ValueError(f"events {events:#x}: only the bits {SCLP_EVENT_PENDING_BITS:#x}")
    if vcpu.arch != "s390x" or reason != uapi.KVM_EXIT_S390_SIEIC:
        return False
    run = vcpu.s390_run()
    sie = run.s390_sieic
    if int(sie.icptcode) != S390_ICPT_PV_INSTR or int(sie.ipa) != 0xB220:
        return False
    ipbh0 = (int(sie.ipb) >> 16) & 0xFFFF
    code = int(run.s.regs.gprs[(ipbh0 & 0xF0) >> 4])
    length = int.from_bytes(vcpu.s390_sida_read(0, _SCCB_HEADER)[:2], "big")
    sccb = bytearray(vcpu.s390_sida_read(0, max(length, _SCCB_HEADER)))
    if code == SCLP_CMD_WRITE_EVENT_MASK and length >= 12:
        # masks after the header: cp receive, cp send, then the host's (sclp)
        # receive and send masks, each mask_length bytes: the host's are empty
        n = int.from_bytes(sccb[10:12], "big")
        host = slice(12 + 2 * n, 12 + 4 * n)
        sccb[host] = bytes(len(sccb[host]))
        sccb[6:8] = SCLP_RC_NORMAL_COMPLETION.to_bytes(2, "big")
    else:
        sccb[6:8] = SCLP_RC_INVALID_SCLP_COMMAND.to_bytes(2, "big")
    vcpu.s390_sida_write(0, bytes(sccb))
    vcpu.vm.s390_interrupt(uapi.KVM_S390_INT_SERVICE, SCLP_PV_DUMMY_ADDR | events)
    return True


def guest_finished(vcpu: Vcpu, reason: int) -> bool:
    """True if ``reason`` (the exit just returned) is this architecture's "guest finished"."""
    if vcpu.arch == "s390x":
        return (
            reason == uapi.KVM_EXIT_S390_SIEIC
            and int(vcpu.s390_run().s390_sieic.icptcode) in S390_FINISHED_ICPT
        )
    return reason == uapi.KVM_EXIT_HLT


def start_vcpu(vcpu: Vcpu, *, protected: bool) -> None:
    """Make the vCPU runnable: s390 LOAD (protected) + OPERATING, as QEMU; nothing on x86."""
    if vcpu.arch == "s390x":
        vcpu.s390_start(protected=protected)


def reset_vcpus(vcpus: Sequence[Vcpu]) -> None:
    """s390 CPU resets before a (protected) boot, as QEMU's ``s390_machine_reset``.

    Each CPU is stopped (QEMU's CPU reset sets ``S390_CPU_STATE_STOPPED``
    through ``KVM_SET_MP_STATE``), then the IPL CPU (the first) gets a NORMAL
    reset, the others a CLEAR reset.  Nothing on x86.
    """
    for i, vcpu in enumerate(vcpus):
        if vcpu.arch != "s390x":
            continue
        vcpu.s390_stop()
        if i == 0:
            vcpu.s390_normal_reset()
        else:
            vcpu.s390_clear_reset()


def run_until_finished(
    vcpu: Vcpu, handle: Optional[Callable[[int], bool]] = None, detail: Callable[[], str] = str
) -> int:
    """``KVM_RUN`` (EINTR retried) until the guest finished; returns the exit reason.

    ``handle(reason)`` may complete an exit the VMM must serve (x86 MMIO)
    and return True to re-enter; any other exit raises ``GuestExitError``,
    with ``detail()`` appended.
    """
    while True:
        reason = vcpu.run()
        if guest_finished(vcpu, reason):
            return reason
        if serve_pv_sclp(vcpu, reason) or (handle is not None and handle(reason)):
            continue
        raise GuestExitError(vcpu, reason, detail())


class VcpuRunner(Closing):
    """A vCPU thread (QEMU's ``CPU n/KVM``): ``KVM_RUN`` while told to run.

    Stopping follows the KVM protocol: ``Vcpu.kick()`` (``immediate_exit``
    then the signal): a vCPU about to enter sees the flag, one inside is
    kicked out with EINTR.  A guest that finishes (see the module doc) is
    not re-entered -- a disabled wait would only exit again at once -- the
    runner goes idle and sets ``finished`` until the next ``resume()``.
    Each KVM_RUN interval is logged so the overlap with another activity
    (PERFORM) can be computed afterwards, without touching the hot path.
    """

    def __init__(self, vcpu: Vcpu) -> None:
        self.vcpu = vcpu
        if vcpu.backend == "kvm":
            ensure_kick_handler()  # a real signal must find a handler, not kill us
        self._cond = threading.Condition()
        self._want = "idle"  # idle | run | exit
        self._active = False
        self._lock = threading.Lock()
        self.intervals: list[tuple[int, int]] = []
        self._current: Optional[int] = None
        self.cpu_ns = 0
        self.runs = 0
        self.finished = threading.Event()
        self.error: Optional[BaseException] = None
        # exit() waits on the thread's own flag, never on join()/is_alive()
        # (see CompletionThread): the vCPU fd must not close under KVM_RUN.
        self._thread = CompletionThread(self._main, f"CPU {vcpu.id}/KVM", reraise=True)
        self._exited = self._thread.done

    def start(self) -> None:
        self._thread.start()  # with SIGINT/SIGTERM blocked: the main thread takes them

    def _main(self) -> None:
        self.vcpu.thread = threading.get_ident()
        self._serve()

    def _serve(self) -> None:
        try:
            set_thread_name(f"CPU {self.vcpu.id}/KVM")
        except OSError:
            pass  # cosmetic only
        while True:
            with self._cond:
                while self._want == "idle":
                    self._cond.wait()
                if self._want == "exit":
                    return
                self._active = True
            try:
                self._run_loop()
            finally:
                with self._cond:
                    self._active = False
                    if self._want == "run":  # finished, or stopped by an error
                        self._want = "idle"
                    self._cond.notify_all()

    def _run_loop(self) -> None:
        while self._want == "run":
            t0 = time.monotonic_ns()
            c0 = time.thread_time_ns()
            with self._lock:
                self._current = t0
            try:
                reason = self.vcpu.run(retry_eintr=False)
            except KvmError as exc:
                if exc.errno != errno.EINTR:
                    self.error = exc
                    return
                reason = uapi.KVM_EXIT_INTR
            except BaseException as exc:
                self.error = exc
                return
            finally:
                t1 = time.monotonic_ns()
                with self._lock:
                    self.intervals.append((t0, t1))
                    self._current = None
                    self.cpu_ns += time.thread_time_ns() - c0
                    self.runs += 1
            if reason == uapi.KVM_EXIT_INTR:
                continue  # kicked: leave if told to, else re-enter
            if guest_finished(self.vcpu, reason):
                self.finished.set()
                return
            if serve_pv_sclp(self.vcpu, reason):
                continue
            self.error = GuestExitError(self.vcpu, reason)
            return

    def in_run(self) -> bool:
        """True while the thread is between entering and leaving KVM_RUN."""
        with self._lock:
            return self._current is not None

    def snapshot(self, now: int) -> list[tuple[int, int]]:
        with self._lock:
            out = list(self.intervals)
            if self._current is not None:
                out.append((self._current, now))
            return out

    def resume(self) -> None:
        with self._cond:
            with self._lock:
                self.intervals.clear()
            self.finished.clear()
            self.error = None
            self.vcpu.run_struct.immediate_exit = 0
            self._want = "run"
            self._cond.notify_all()

    def request_stop(self, want: str = "idle") -> None:
        with self._cond:
            self._want = want
            self._cond.notify_all()
        self.vcpu.kick()

    def wait_stopped(self, timeout: float = KICK_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise KvmpvError(f"vCPU {self.vcpu.id} did not leave KVM_RUN in {timeout}s")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        self.exit()

    def exit(self) -> None:
        if self._thread.ident is None or self._exited.is_set():
            return  # never started, or already gone
        self.request_stop("exit")
        if not self._exited.wait(KICK_TIMEOUT_S):
            raise KvmpvError(f"vCPU {self.vcpu.id} thread did not exit in {KICK_TIMEOUT_S}s")
        # Its body is done (the event says so, whatever join() would claim):
        # a short join now only lets the thread itself finish, so that callers
        # counting threads see it gone.
        self._thread.join(1.0)


class VcpuGroup:
    """The vCPU threads of a VM, paused and resumed together."""

    def __init__(self) -> None:
        self.runners: list[VcpuRunner] = []

    def add(self, vcpus: Sequence[Vcpu]) -> None:
        for vcpu in vcpus:
            runner = VcpuRunner(vcpu)
            self.runners.append(runner)  # listed before started: close() finds it
            runner.start()

    @property
    def vcpus(self) -> list[Vcpu]:
        return [r.vcpu for r in self.runners]

    def resume(self) -> None:
        for r in self.runners:
            r.resume()

    def pause(self) -> None:
        """QEMU's pause_all_vcpus(): everyone out of KVM_RUN (vcpu->mutex free)."""
        for r in self.runners:
            r.request_stop()
        for r in self.runners:
            r.wait_stopped()

    def wait_finished(self, timeout: float) -> None:
        """Wait until every vCPU's guest finished (see the module doc)."""
        deadline = time.monotonic() + timeout
        for r in self.runners:
            while not r.finished.wait(0.05):
                if r.error is not None:
                    raise r.error
                if time.monotonic() > deadline:
                    raise KvmpvError(f"guest did not finish within {timeout:.0f}s")

    def cpu_ns(self) -> int:
        return sum(r.cpu_ns for r in self.runners)

    def running_overlap_ns(self, start: int, end: int) -> int:
        """Time within [start, end] during which at least one vCPU was in KVM_RUN."""
        ivs = sorted(
            (max(a, start), min(b, end))
            for r in self.runners
            for a, b in r.snapshot(end)
            if b > start and a < end
        )
        total = 0
        cur_a, cur_b = -1, -1
        for a, b in ivs:
            if a > cur_b:
                total += max(0, cur_b - cur_a)
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        total += max(0, cur_b - cur_a)
        return total

    def close(self) -> None:
        """Every runner's thread out and gone, even if one fails (the first failure re-raised)."""
        first = close_each(self.runners)
        if first is not None:
            raise first


__all__ = [
    "KICK_TIMEOUT_S",
    "GuestExitError",
    "VcpuGroup",
    "VcpuRunner",
    "exit_name",
    "finished_exit",
    "guest_finished",
    "reset_vcpus",
    "run_until_finished",
    "start_vcpu",
]
