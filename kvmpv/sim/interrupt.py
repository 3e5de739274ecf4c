# SPDX-License-Identifier: GPL-2.0-only
"""Floating interrupts: the SCLP service signal, injected and delivered.

Models the service-signal part of arch/s390/kvm/interrupt.c, Linux 6.9 ..
7.0: ``__inject_service()`` behind ``KVM_S390_INTERRUPT`` with
``KVM_S390_INT_SERVICE``, ``kvm_s390_deliver_pending_interrupts()`` on the
way into SIE, ``__deliver_service()`` / ``__deliver_service_ev()`` and
``write_sclp()``, which for a protected CPU writes the interruption into the
state description (``iictl``, ``eic``, ``eiparams``) for the Ultravisor to
present.  The parameter carries an SCCB address (``SCCB_MASK``) and two
event-pending bits (``SCCB_EVENT_PENDING``, 0x3): userspace sets them when
its event facility has something for the guest (QEMU's
``sclp_service_interrupt()`` sets 0x1), and the guest's SCLP driver reads
them (Linux ``sclp_interrupt_handler()``).  The kernel keeps the two apart:
the SCCB answer is ``IRQ_PEND_EXT_SERVICE``, the events
``IRQ_PEND_EXT_SERVICE_EV`` ("we always allow events"), delivered first.

Commit 85a19b305427 (v6.9) made ``__deliver_service_ev()`` pass on only the
event bits userspace set; before it the guest got both whatever was set
(tests/_regressions.py reinstates that).

Not modelled: the other interrupt types; the masking of the SCCB answer of a
protected guest until its ``servc`` has completed (``masked_irqs``, set by
ENABLE and ``__deliver_service()``, cleared by ``handle_pv_sclp()`` on the
notification intercept): the simulated ``servc`` completes when userspace
re-enters KVM_RUN after answering it.  A guest is enabled for the service
signal only while the loader waits for its SCCB answer (the payload runs
disabled).
"""

from __future__ import annotations

from typing import Optional

from .kvm_host import (
    EXT_IRQ_SERVICE_SIG,
    IICTL_CODE_EXT,
    IICTL_CODE_NONE,
    IRQ_PEND_EXT_SERVICE,
    IRQ_PEND_EXT_SERVICE_EV,
    SCCB_EVENT_PENDING,
    SCCB_MASK,
    SCLP_GUEST_SCCB,
    _Vcpu,
    _Vm,
)
from .pv import Pv

#: The kernel functions this module models (method name -> where the kernel
#: has it).  Python mangles a method name with two leading underscores, so
#: ``__deliver_service_ev()`` is the method ``deliver_service_ev``.
KERNEL_FUNCTIONS = {
    "inject_service": "arch/s390/kvm/interrupt.c",
    "kvm_s390_deliver_pending_interrupts": "arch/s390/kvm/interrupt.c",
    "deliver_service": "arch/s390/kvm/interrupt.c",
    "deliver_service_ev": "arch/s390/kvm/interrupt.c",
    "write_sclp": "arch/s390/kvm/interrupt.c",
}

_SERVICE = 1 << IRQ_PEND_EXT_SERVICE
_SERVICE_EV = 1 << IRQ_PEND_EXT_SERVICE_EV


class Interrupt(Pv):
    """The service signal of arch/s390/kvm/interrupt.c (module docstring)."""

    def inject_service(self, vm: _Vm, parm: int) -> int:
        """__inject_service(): keep the event bits and the first SCCB address pending.

        The event-pending bits are ORed into ``srv_signal.ext_params`` and make
        IRQ_PEND_EXT_SERVICE_EV pending; an SCCB address is taken only if none
        is pending yet ("superfluous sccb values" are ignored), and makes
        IRQ_PEND_EXT_SERVICE pending.
        """
        with self._lock:
            vm.srv_ext_params |= parm & SCCB_EVENT_PENDING
            if vm.srv_ext_params & SCCB_EVENT_PENDING:
                vm.float_pending_irqs |= _SERVICE_EV
            if not vm.srv_ext_params & SCCB_MASK:
                vm.srv_ext_params |= parm & SCCB_MASK
                vm.float_pending_irqs |= _SERVICE
        return 0

    def _deliverable_irqs(self, vcpu: _Vcpu) -> int:
        """deliverable_irqs(), for the service signal; the caller holds ``_lock``."""
        # psw_extint_disabled() / the CR0 service-signal submask: only the
        # loader's enabled wait takes the service signal.
        if vcpu.sclp != "waiting":
            return 0
        active = vcpu.vm.float_pending_irqs
        if vcpu.cpu_handle and vcpu.iictl != IICTL_CODE_NONE:
            # "PV guest cpus can have a single interruption injected at a
            # time": IRQ_PEND_EXT_II_MASK holds both service bits.
            active &= ~(_SERVICE | _SERVICE_EV)
        return active

    def kvm_s390_deliver_pending_interrupts(self, vcpu: _Vcpu) -> int:
        """kvm_s390_deliver_pending_interrupts(): deliver, highest priority first.

        The bits are in the reverse order of priority (find_last_bit()), so a
        pending event is delivered before the SCCB answer.  For a protected
        CPU one interruption fills the state description and stops the loop.
        """
        while True:
            with self._lock:
                irqs = self._deliverable_irqs(vcpu)
            if not irqs:
                return 0
            if irqs.bit_length() - 1 == IRQ_PEND_EXT_SERVICE_EV:
                rc = self.deliver_service_ev(vcpu)
            else:
                rc = self.deliver_service(vcpu)
            if rc:
                return rc

    def deliver_service(self, vcpu: _Vcpu) -> int:
        """__deliver_service(): the SCCB answer with everything pending, then nothing pending.

        As up to 7.0 it writes even an empty parameter (an event-only injection
        leaves IRQ_PEND_EXT_SERVICE pending with no SCCB address); "KVM: s390:
        only deliver service interrupt with payload" (Eric Farman, pull of
        2026-04-13 <20260413104721.203024-2-frankja@linux.ibm.com>) returns
        early instead: not modelled yet, and not in the regression corpus.
        """
        vm = vcpu.vm
        with self._lock:
            if not vm.float_pending_irqs & _SERVICE:
                return 0
            params = vm.srv_ext_params
            vm.srv_ext_params = 0  # memset(&fi->srv_signal, 0, ...)
            vm.float_pending_irqs &= ~(_SERVICE | _SERVICE_EV)
        return self.write_sclp(vcpu, params)

    def deliver_service_ev(self, vcpu: _Vcpu) -> int:
        """__deliver_service_ev(): only the event bits set, and only they are cleared.

        ``write_sclp(vcpu, ext.ext_params & SCCB_EVENT_PENDING)`` since commit
        85a19b305427 (v6.9): before it, ``write_sclp(vcpu, SCCB_EVENT_PENDING)``
        told the guest of both events whichever userspace had set.
        """
        vm = vcpu.vm
        with self._lock:
            if not vm.float_pending_irqs & _SERVICE_EV:
                return 0
            params = vm.srv_ext_params
            vm.srv_ext_params &= ~SCCB_EVENT_PENDING  # "only clear the event bits"
            vm.float_pending_irqs &= ~_SERVICE_EV
        return self.write_sclp(vcpu, params & SCCB_EVENT_PENDING)

    def write_sclp(self, vcpu: _Vcpu, parm: int) -> int:
        """write_sclp(): a protected CPU's service signal goes into the state description.

        iictl = IICTL_CODE_EXT, eic = EXT_IRQ_SERVICE_SIG, eiparams = parm, for
        the Ultravisor to present on the next entry (``_ultravisor_injects``).
        A non-protected CPU gets it in its lowcore at once (put_guest_lc()); the
        simulated non-protected guest never enables the service signal.
        """
        if vcpu.cpu_handle:
            vcpu.iictl = IICTL_CODE_EXT
            vcpu.eic = EXT_IRQ_SERVICE_SIG
            vcpu.eiparams = parm & 0xFFFFFFFF
            return 0
        with self._lock:
            vcpu.ext_interrupts.append((EXT_IRQ_SERVICE_SIG, parm & 0xFFFFFFFF))
        return 0

    def _ultravisor_injects(self, vcpu: _Vcpu) -> Optional[int]:
        """The Ultravisor presents the state description's interruption to the guest.

        Returns the parameter the guest reads from its lowcore, None if
        nothing was injected.  The SCCB address of a protected guest's answer
        is the UV's saved copy of the guest's own (handle_pv_sclp()'s comment:
        "UV will then use its saved copy of the SCCB value"; QEMU injects the
        dummy SCLP_PV_DUMMY_ADDR); the event bits reach the guest as written.
        """
        if vcpu.iictl != IICTL_CODE_EXT:
            return None
        parm = vcpu.eiparams
        seen = (SCLP_GUEST_SCCB if parm & SCCB_MASK else 0) | (parm & SCCB_EVENT_PENDING)
        with self._lock:
            vcpu.ext_interrupts.append((vcpu.eic, seen))
        vcpu.iictl = IICTL_CODE_NONE
        return seen
