# SPDX-License-Identifier: GPL-2.0-only
"""``KVM_RUN``: the simulated guest, its SIE intercepts and the SCLP call.

Models ``kvm_arch_vcpu_ioctl_run()`` / ``__vcpu_run()`` of
arch/s390/kvm/kvm-s390.c and the intercept handling of
arch/s390/kvm/intercept.c (``kvm_handle_sie_intercept()``;
``kvm_s390_handle_wait()`` leaving a disabled wait to userspace; the SCLP
call of a protected guest through the SIDA; ``handle_external_interrupt()``
dropping an external interruption loop to userspace), Linux 6.4 .. 7.0
(spec 10).
"""

from __future__ import annotations

import ctypes
import errno
import threading
from typing import Optional

from .. import uapi
from .interrupt import Interrupt
from .kvm_host import (
    EXT_IRQ_CLK_COMP,
    EXT_IRQ_CPU_TIMER,
    EXTINT_LOOP_PSW,
    ICPT_EXTINT,
    LC_EXT_NEW_PSW,
    LOADER_STOP_MASK,
    PAGE_SIZE,
    PAYLOAD_DONE_PSW,
    PSW_MASK_EXT,
    SCCB_MASK,
    SCLP_GUEST_SCCB,
    _disabled_wait,
    _err,
    _Vcpu,
)

#: The kernel functions this module models (method name -> where the kernel
#: has it): a deviating simulator overrides one of these (``kvmpv.sim``,
#: "Deviating simulators").
KERNEL_FUNCTIONS = {
    "kvm_arch_vcpu_ioctl_run": "arch/s390/kvm/kvm-s390.c",
    "handle_external_interrupt": "arch/s390/kvm/intercept.c",
}


class Intercept(Interrupt):
    """KVM_RUN and the SIE intercepts (arch/s390/kvm/intercept.c)."""

    def _sclp_call(self, vcpu: _Vcpu) -> int:
        """The loader's ``servc`` of a write-event-mask SCCB: an ICPT_PV_INSTR exit.

        The UV puts the SCCB into the SIDA and the two registers ``servc``
        names into ``kvm_run.s.regs`` (QEMU reads the code from the register
        in the high nibble of ipb's first halfword); then the guest waits,
        enabled, for the service signal.
        """
        run = vcpu.run
        assert run is not None
        mask_len = 4
        sccb = bytearray(12 + 4 * mask_len)
        sccb[0:2] = len(sccb).to_bytes(2, "big")
        sccb[10:12] = mask_len.to_bytes(2, "big")
        sccb[12 + 2 * mask_len :] = b"\xff" * (2 * mask_len)  # until the host answers
        vcpu.sida[: len(sccb)] = sccb
        run.s.regs.gprs[1] = 0x00780005  # SCLP_CMD_WRITE_EVENT_MASK
        run.s.regs.gprs[2] = SCLP_GUEST_SCCB  # a guest address the host never sees
        run.psw_mask, run.psw_addr = vcpu.psw
        run.s390_sieic.icptcode = 0x68  # ICPT_PV_INSTR
        run.s390_sieic.ipa = 0xB220  # servc
        run.s390_sieic.ipb = 0x00120000  # r1: the command code, r2: the SCCB
        run.exit_reason = uapi.KVM_EXIT_S390_SIEIC
        vcpu.sclp = "waiting"
        return 0

    def kvm_arch_vcpu_ioctl_run(self, vcpu: _Vcpu) -> int:
        """kvm_arch_vcpu_ioctl_run() with the simulated guest (module docstring)."""
        run = vcpu.run
        assert run is not None
        if run.immediate_exit:
            # s390 returns -EINTR before entering the guest, exit_reason untouched.
            raise _err(errno.EINTR)
        # Who starts the vCPU: the kernel, unless userspace took CPU state
        # control (KVM_SET_MP_STATE, or any PV command: "protvirt means user
        # cpu state"); then a STOPPED vCPU is refused ("can't run stopped vcpu").
        if not vcpu.vm.user_cpu_state_ctrl:
            vcpu.stopped = False
        elif vcpu.stopped:
            raise _err(errno.EINVAL)
        # sync_regs(): the PSW comes from kvm_run, except for a protected CPU,
        # whose PSW the Ultravisor owns (only the condition code is taken).
        if vcpu.config is None:
            vcpu.psw = (int(run.psw_mask), int(run.psw_addr))
        tid = threading.get_native_id()
        vcpu.in_run = True
        try:
            while True:
                if self._should_exit(vcpu, tid):
                    run.exit_reason = uapi.KVM_EXIT_INTR
                    raise _err(errno.EINTR)
                if _disabled_wait(vcpu.psw[0]):
                    return self._exit_sieic(vcpu, uapi.ICPT_WAIT)
                cfg = vcpu.config
                if cfg is None:
                    # Non-protected guest: it makes its memory accessible
                    # (exports what is still secure), then ends as the payload does.
                    if self._guest_export_slice(vcpu.vm):
                        continue
                    vcpu.psw = PAYLOAD_DONE_PSW
                    continue
                if not self._enter_prefix_ok(vcpu):
                    # handle_validity(): 'return -EINVAL' (arch/s390/kvm/intercept.c)
                    raise _err(errno.EINVAL)
                if vcpu.ckc_pending:
                    # The clock comparator's interruption: the UV swaps the
                    # PSWs (gpsw is now the ext new PSW) and, for a protected
                    # guest whose ext new PSW enables external interrupts,
                    # intercepts with code 20 (commit 21f27df85400).
                    vcpu.psw = EXTINT_LOOP_PSW
                    vcpu.eic = EXT_IRQ_CLK_COMP
                    if self.handle_external_interrupt(vcpu) == -errno.EOPNOTSUPP:
                        return self._exit_sieic(vcpu, ICPT_EXTINT)
                    # Re-injected: SIE is entered again and the guest loops
                    # inside KVM_RUN until a signal; yield the CPU meanwhile.
                    vcpu.kick.wait(0.001)
                    continue
                if vcpu.sclp == "call":
                    return self._sclp_call(vcpu)
                if vcpu.sclp == "waiting":
                    # vcpu_pre_run(): pending interrupts into the state
                    # description; the UV presents one on entry.
                    self.kvm_s390_deliver_pending_interrupts(vcpu)
                    parm = self._ultravisor_injects(vcpu)
                    if parm is None:
                        vcpu.kick.wait(0.01)  # an enabled wait: until the signal (or a kick)
                        continue
                    if not parm & SCCB_MASK:
                        continue  # an event only: the loader waits on for its SCCB
                    vcpu.sclp = "done"
                    with self._lock:
                        self.sclp_answers.append(int.from_bytes(vcpu.sida[6:8], "big"))
                    if self.loader_panic is not None:
                        # stage3b's panic(): zipl libc_stop(), error code as the address
                        vcpu.psw = (LOADER_STOP_MASK, self.loader_panic)
                        continue
                progress = self._guest_import_slice(vcpu.vm, cfg)
                if progress == "more":
                    self._pause_point("run:slice")
                    continue
                if progress == "done":
                    if vcpu.guest_program == "extint_loop":
                        # ext new PSW enabled, clock comparator in the past
                        vcpu.ckc_pending = True
                        continue
                    vcpu.psw = PAYLOAD_DONE_PSW  # every page secure: the payload's end
                    continue
                # Pages busy in another thread (a destroy or export holds
                # them): the guest waits for them inside KVM_RUN; wake up often
                # enough to notice immediate_exit, a plain store into kvm_run.
                vcpu.kick.wait(0.01)
        finally:
            vcpu.in_run = False

    def handle_external_interrupt(self, vcpu: _Vcpu) -> int:
        """handle_external_interrupt() (intercept.c), for the clock comparator and CPU timer.

        An interruption whose new PSW enables external interrupts again is a
        loop: -EOPNOTSUPP, and KVM_RUN returns KVM_EXIT_S390_SIEIC with
        icptcode 20 for userspace to act.  Otherwise the interruption is
        injected again (kvm_s390_inject_vcpu()) and 0 returned.  For a
        protected CPU the new PSW is the state description's gpsw: the UV
        swapped the PSWs before it intercepted (commit 21f27df85400, v6.3);
        before that fix it was read from the guest's lowcore (read_guest_lc()),
        which KVM sees only encrypted, so the loop went undetected.  A
        non-protected CPU's is its lowcore's ext new PSW.
        """
        eic = vcpu.eic
        if vcpu.cpu_handle:  # kvm_s390_pv_cpu_is_protected()
            newpsw_mask = vcpu.psw[0]
        else:
            lowcore = self._read_guest_lc(vcpu, LC_EXT_NEW_PSW, 16)
            if lowcore is None:
                return -errno.EFAULT
            newpsw_mask = int.from_bytes(lowcore[:8], "big")
        if eic not in (EXT_IRQ_CLK_COMP, EXT_IRQ_CPU_TIMER):
            return -errno.EOPNOTSUPP  # the external call's re-injection is not modelled
        if newpsw_mask & PSW_MASK_EXT:
            return -errno.EOPNOTSUPP  # "will cause interrupt loop. Drop to userspace."
        if eic == EXT_IRQ_CLK_COMP:
            vcpu.ckc_pending = True  # kvm_s390_inject_vcpu(KVM_S390_INT_CLOCK_COMP)
        return 0

    def _read_guest_lc(self, vcpu: _Vcpu, offset: int, size: int) -> Optional[bytes]:
        """read_guest_lc(): bytes of the guest's lowcore (prefix 0), as the host sees them.

        For a protected guest that memory is secure: the real kernel would
        see ciphertext (after exporting the page); the simulator, which
        encrypts nothing, returns what the host memory holds.
        """
        with self._mmap_lock.read():
            spans = self._gpa_to_host(vcpu.vm, offset, size)
            if spans is None:
                return None
            return b"".join(ctypes.string_at(a, b - a) for a, b in spans)

    def _enter_prefix_ok(self, vcpu: _Vcpu) -> bool:
        """Before SIE entry: kvm_s390_handle_requests() maps the prefix pages again if
        KVM_REQ_REFRESH_GUEST_PREFIX is pending (gmap_mprotect_notify(): present, with
        the notification bit); False if they are not mapped and nothing asked for it:
        the SIE then ends at once with a validity intercept (prefix pages invalid).

        Protected vCPUs only (the simulated non-protected guest ends at once).  A
        prefix outside the memslots (or unmapped by userspace) is not modelled:
        the guest's first touch of that memory fails with EFAULT anyway.
        """
        vm = vcpu.vm
        with self._mm:
            if vcpu.prefix_request:
                vcpu.prefix_request = False
                host = self._prefix_host(vm, vcpu)
                if host is not None and not self._unmapped.intersect(host, host + 2 * PAGE_SIZE):
                    vm.notify.add(host, host + 2 * PAGE_SIZE)
                vcpu.prefix_mapped = True
            if not vcpu.prefix_mapped:
                with self._lock:
                    self._validity += 1
                return False
            return True

    def _exit_sieic(self, vcpu: _Vcpu, icptcode: int) -> int:
        """An intercept left to userspace: KVM_EXIT_S390_SIEIC, PSW stored back (store_regs)."""
        run = vcpu.run
        assert run is not None
        run.psw_mask, run.psw_addr = vcpu.psw
        run.s390_sieic.icptcode = icptcode
        run.s390_sieic.ipa = 0  # a wait is no instruction intercept
        run.s390_sieic.ipb = 0
        run.exit_reason = uapi.KVM_EXIT_S390_SIEIC
        return 0

    def _should_exit(self, vcpu: _Vcpu, tid: int) -> bool:
        run = vcpu.run
        assert run is not None
        if vcpu.kick.is_set():
            vcpu.kick.clear()
            return True
        if run.immediate_exit:
            return True
        with self._lock:
            return tid in self._fatal
