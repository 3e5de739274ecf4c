# SPDX-License-Identifier: GPL-2.0-only
"""The kernel's own PV bugs, reinstated: one deviating simulator per observable corpus entry.

fixtures/regressions/corpus.json lists the upstream fixes since v6.1 in the
PV and async-teardown paths.  For each one a VMM could observe, and the
simulator can model, a class here named after the fixing commit
(``Regress_<12 hex digits>``) puts back exactly the behaviour the fix
removed, by overriding the simulator method of the kernel function the corpus
entry names (``sim_function``, a key of ``kvmpv.sim.KERNEL_FUNCTIONS``).  The
corpus entry names the class (``deviation``) and the check that fails on it
(``caught_by``); tests/test_regressions.py runs each one against that check.

``Invented_*`` classes are NOT upstream bugs: each reinstates a plausible bug
that a blind spot of a check let through (issue 25 item 4), marked
``invented = True`` and listed in no corpus entry.

The mechanics are those of tests/_deviating.py (``targets``, ``breaks``,
``symptom``), and ``_deviating.all_deviations()`` includes these classes, so
tests/test_registry_coverage.py runs them against the whole registry too.
"""

from __future__ import annotations

import errno
import threading
from typing import Any, ClassVar

from _deviating import _SimBug

from kvmpv.sim.gmap import STALE_TABLE_INDEX
from kvmpv.sim.kvm_host import IRQ_PEND_EXT_SERVICE_EV, SCCB_EVENT_PENDING


class _Regression(_SimBug):
    """A deviation that reinstates an upstream bug: ``commit`` is the fixing commit."""

    commit: ClassVar[str] = ""
    invented: ClassVar[bool] = False


class Regress_21f27df85400(_Regression):
    """Commit 21f27df85400 "KVM: s390: pv: fix external interruption loop not always detected"
    (v6.3), reverted: handle_external_interrupt() reads a protected CPU's ext new PSW from the
    guest's lowcore.

    Before the fix the new PSW came from read_guest_lc(), which for a
    protected guest is encrypted storage: the external mask looked off, the
    loop went undetected, the clock-comparator interruption was injected
    again and KVM_RUN re-entered SIE until a signal kicked it (Fixes:
    201ae986ead7).
    """

    commit = "21f27df854008b86349a203bf97fef79bb11f53e"
    targets = frozenset({"extint_loop_exits_to_userspace"})
    breaks = (
        "handle_external_interrupt(): 'if (kvm_s390_pv_cpu_is_protected(vcpu)) newpsw = "
        "vcpu->arch.sie_block->gpsw' (commit 21f27df85400); here always read_guest_lc()"
    )
    symptom = "expected 'KVM_EXIT_S390_SIEIC', got \"EINTR (the watchdog's kick)\""

    def handle_external_interrupt(self, vcpu: Any) -> int:
        handle, vcpu.cpu_handle = vcpu.cpu_handle, 0  # the PV test sees a non-protected CPU
        try:
            return super().handle_external_interrupt(vcpu)
        finally:
            vcpu.cpu_handle = handle


class Regress_292a7d6fca33(_Regression):
    """Commit 292a7d6fca33 "KVM: s390: pv: fix asynchronous teardown for small VMs" (v6.4),
    reverted: PREPARE sets aside a VM whose memory limit gives a segment-table ASCE (<= 2 GiB).

    Before the fix kvm_s390_pv_set_aside() did not look at the ASCE type, and
    s390_replace_asce() replaced a segment table it could not copy (stale
    host_to_guest pointers); the fix made PREPARE EINVAL there.
    """

    commit = "292a7d6fca33df70ca4b8e9b0d0e74adf87582dc"
    targets = frozenset({"prepare_mem_limit_2g_einval"})
    breaks = (
        "kvm_s390_pv_set_aside(): EINVAL for a segment-type ASCE (commit 292a7d6fca33, "
        "s390_replace_asce() cannot copy a segment table); dropped"
    )
    symptom = "PREPARE ioctl result: expected 'EINVAL', got 'success'"

    def kvm_s390_pv_set_aside(self, vm: Any, data: int, out: Any) -> int:
        limit = vm.gmap_limit
        vm.gmap_limit = max(limit, (4 << 30) - 1)  # step 4 sees a region-third table
        try:
            return super().kvm_s390_pv_set_aside(vm, data, out)
        finally:
            vm.gmap_limit = limit


class Regress_c2fceb59bbda(Regress_292a7d6fca33):
    """Commit c2fceb59bbda "KVM: s390: pv: fix index value of replaced ASCE" (v6.5), reverted:
    the top-level table s390_replace_asce() gives the gmap keeps the page->index its page
    was allocated with, here that of a page last used as the segment table for [2 GiB, 4 GiB).

    ptep_notify() reads that index only when the top-level table holds the
    segment entries (a segment-type ASCE, memory limit below 2 GiB), and
    s390_replace_asce() refuses such a table since commit 292a7d6fca33 (v6.4);
    on a region table the wrong index is never read (__gmap_segment_gaddr()
    reads the segment table's, set by gmap_alloc_table()).  So the bug is
    reinstated on the kernel where it was observable, v6.2/v6.3 (async destroy
    from fb491d5500a7, the copy from faa2f72cb356): without 292a7d6fca33 either
    (inherited: PREPARE sets aside a segment-type VM, and s390_replace_asce()
    copies a segment table).  tests/test_regressions.py shows the index alone
    (on 6.4+) passes the check, and 292a7d6fca33 alone (index 0) too.
    """

    commit = "c2fceb59bbda16468bda82b002383bff59de89ab"
    targets = frozenset({"reboot_prefix_discard_guest_runs"})
    breaks = (
        "s390_replace_asce(): 'page->index = 0;' for the new top-level table (commit "
        "c2fceb59bbda) dropped, and segment tables copied as before 292a7d6fca33"
    )
    symptom = "the guest after the reboot, its prefix pages discarded: KVM_RUN failed"

    def s390_replace_asce(self, vm: Any) -> int:
        # Neither 'if (... == _ASCE_TYPE_SEGMENT) return -EINVAL;' (292a7d6fca33)
        # nor 'page->index = 0;' (c2fceb59bbda).
        if self._take_alloc_failure("prepare:asce"):
            return -errno.ENOMEM
        vm.gmap_table_index = STALE_TABLE_INDEX
        vm.asce_replaced += 1
        return 0


class Regress_6973091d1b50(_Regression):
    """Commit 6973091d1b50 "KVM: s390: pv: don't allow userspace to set the clock under PV"
    (v6.1), reverted: KVM_SET_DEVICE_ATTR KVM_S390_VM_TOD succeeds on a protected VM.

    Before the fix kvm_s390_set_tod() had no kvm_s390_pv_is_protected() test:
    the new epoch was accepted (and ignored by the Ultravisor).
    """

    commit = "6973091d1b50ab4042f6a2d495f59e9db3662ab8"
    targets = frozenset({"set_tod_refused_while_protected"})
    breaks = (
        "kvm_s390_set_tod(): 'if (kvm_s390_pv_is_protected(kvm)) ret = -EOPNOTSUPP' "
        "(commit 6973091d1b50); dropped, the TOD of a protected VM is set"
    )
    symptom = "of a protected VM (EOPNOTSUPP): expected 'ENOTSUP', got 'success'"

    def kvm_s390_set_tod(self, vm: Any, attr: int, addr: int) -> int:
        config, vm.config = vm.config, None  # the protected test sees no configuration
        try:
            return super().kvm_s390_set_tod(vm, attr, addr)
        finally:
            vm.config = config


class Regress_185d903064f8(_Regression):
    """Commit 185d903064f8 "KVM: s390: Fix incorrect usage of mmu_notifier_register()" (v6.17),
    reverted: ENABLE ignores the failed registration of its mmu notifier and succeeds.

    Before the fix kvm_s390_pv_init_vm() registered the notifier after Create
    Secure Configuration, set its ops whether or not mmu_notifier_register()
    succeeded and returned 0, so the EINTR of a pending signal never reached
    userspace (and the VM's destruction later unregistered a notifier that was
    never registered).
    """

    commit = "185d903064f8680c2de43514c94fddc0d75ed00a"
    targets = frozenset({"enable_signal_pending_eintr"})
    breaks = (
        "kvm_s390_pv_init_vm(): 'ret = mmu_notifier_register(...); if (ret) return ret' "
        "(commit 185d903064f8); here the result is ignored and the ops set anyway"
    )
    symptom = "ENABLE with a signal pending: expected 'EINTR', got 'success'"

    def kvm_s390_pv_init_vm(self, vm: Any, out: Any) -> int:
        vm.mmu_notifier = True  # 'registered' whatever mmu_notifier_register() said
        return super().kvm_s390_pv_init_vm(vm, out)


class Regress_85a19b305427(_Regression):
    """Commit 85a19b305427 "KVM: s390: only deliver the set service event bits" (v6.9),
    reverted: a service event reaches the guest with both event-pending bits set.

    Before the fix __deliver_service_ev() called write_sclp(vcpu,
    SCCB_EVENT_PENDING): whichever of the two bits userspace had injected
    (QEMU sets 0x1), the protected guest's ext-interrupt parameter in the
    state description (eiparams) said 0x3 (Fixes: 0890ddea1a90).
    """

    commit = "85a19b3054274e09bcd9043d7d3203c3836688d0"
    targets = frozenset({"service_event_bits_as_injected"})
    breaks = (
        "__deliver_service_ev(): write_sclp(vcpu, ext.ext_params & SCCB_EVENT_PENDING) "
        "(commit 85a19b305427); here write_sclp(vcpu, SCCB_EVENT_PENDING), both bits"
    )
    symptom = "expected ['0x1'], got ['0x3']"

    def deliver_service_ev(self, vcpu: Any) -> int:
        event_pending = vcpu.vm.float_pending_irqs & (1 << IRQ_PEND_EXT_SERVICE_EV)
        ret = super().deliver_service_ev(vcpu)
        if event_pending and ret == 0:
            return self.write_sclp(vcpu, SCCB_EVENT_PENDING)  # both bits, as before the fix
        return ret


class Regress_3ec8a8330a1a(_Regression):
    """Commit 3ec8a8330a1a "s390/uv: Don't return 0 from make_hva_secure() if the operation
    was not successful" (v6.16), reverted: a page of a large folio is split, not imported,
    and make_hva_secure() returns 0.

    Before the fix make_hva_secure() returned what s390_wiggle_split_folio()
    returned, 0 after a successful split; unpack_one() and kvm_s390_pv_unpack()
    took the page as unpacked and went on to the next one, and the image
    failed VERIFY (Fixes: d8dfda5af0be, in v6.14).
    """

    commit = "3ec8a8330a1aa846dffbf1d64479213366c55b54"
    targets = frozenset({"unpack_large_folio_retried"})
    breaks = (
        "make_hva_secure(): 'if (!rc) rc = -EAGAIN;' after s390_wiggle_split_folio() "
        "(commit 3ec8a8330a1a); dropped, the split page is reported secure"
    )
    symptom = "VERIFY failed: errno 22 (EINVAL) Invalid argument; UV rc 0x0102 rrc 0x001d"

    def make_hva_secure(
        self, cfg: Any, s: int, e: int, *, clear: bool = True, fill: Any = None
    ) -> int:
        ret = super().make_hva_secure(cfg, s, e, clear=clear, fill=fill)
        return 0 if ret == -errno.EAGAIN else ret


class Regress_eef88fe45ac9(_Regression):
    """Commit eef88fe45ac9 "s390/uv: Split large folios in gmap_make_secure()" (v6.11),
    reverted: a page of a large folio is refused with EINVAL instead of split and retried.

    Before the fix gmap_make_secure() (make_hva_secure() since 6.14) answered
    'rc = -EINVAL; if (folio_test_large(folio)) goto unlock;', so UNPACK of
    guest memory that the mm kept in PTE-mapped large folios (allocated before
    KVM_CREATE_VM, shmem or page cache) failed with EINVAL.
    """

    commit = "eef88fe45ac9783e0dd108b033c1e933c38cab34"
    targets = frozenset({"unpack_large_folio_retried"})
    breaks = (
        "gmap_make_secure(): a large folio is split (split_folio()) and the page retried "
        "(commit eef88fe45ac9); here it is refused with EINVAL, as before"
    )
    symptom = "UNPACK 0 failed: errno 22 (EINVAL)"

    def make_hva_secure(
        self, cfg: Any, s: int, e: int, *, clear: bool = True, fill: Any = None
    ) -> int:
        if self.large_folio_bytes(s, 4096):  # folio_test_large() of the page at s
            return -errno.EINVAL
        return super().make_hva_secure(cfg, s, e, clear=clear, fill=fill)


class Regress_ab73b29efd36(_Regression):
    """Commit ab73b29efd36 "s390/uv: Improve splitting of large folios that cannot be split
    while dirty" (v6.16), reverted: a dirty large folio of an iomap file (XFS) is never
    split, and UNPACK retries its page forever.

    Before the fix s390_wiggle_split_folio() tried split_folio() once and
    turned its -EBUSY into -EAGAIN; a dirty folio of an iomap file system
    cannot be split (iomap_release_folio() refuses) and make_hva_secure()'s
    lookup through a writable PTE dirties it again, so kvm_s390_pv_unpack()
    met the same folio on every retry and KVM_PV_UNPACK returned only on a
    fatal signal (Fixes: eef88fe45ac9; reported as RHEL-58218).  Here the
    retry is just as endless; the check's watchdog ends it with a fatal
    signal for the UNPACK thread, which the simulated loop honours as the
    kernel's does, so the test cannot hang.
    """

    commit = "ab73b29efd36f8916c6cc9954e912c4723c9a1b0"
    targets = frozenset({"unpack_dirty_file_folios_complete"})
    breaks = (
        "s390_wiggle_split_folio(): a dirty file folio is written back "
        "(filemap_write_and_wait_range()) and split again at once (commit ab73b29efd36); "
        "here -EBUSY is -EAGAIN at once, as before"
    )
    symptom = "the protected boot hung in UNPACK"

    def s390_wiggle_split_folio(self, addr: int) -> int:
        if self.unsplittable_folio_bytes(addr, 4096):  # split_folio() would be -EBUSY
            return -errno.EAGAIN  # no writeback: the next lookup finds it dirty again
        return super().s390_wiggle_split_folio(addr)


class Regress_7b53b4801884(_Regression):
    """Commit 7b53b4801884 "KVM: s390: Prevent memslots outside the ASCE range" (v7.1),
    reverted: a memory limit below an existing memslot's end, and a memslot beyond the
    ASCE range, are both accepted.

    Before the fix kvm_s390_set_mem_control() did not look at the memslots
    (only at the vCPUs) and kvm_arch_prepare_memory_region() compared a new
    slot only with kvm->arch.mem_limit, not with the gmap's ASCE
    (asce_contains_gfn()); Fixes: e38c884df921, the 7.0 gmap, where a slot
    outside the ASCE became a source of bugs.
    """

    commit = "7b53b4801884d48551f26a17f00cdc0ae4640d64"
    targets = frozenset({"memslots_inside_asce_range"})
    breaks = (
        "kvm_s390_set_mem_control(): EBUSY for a limit below a memslot's end, and "
        "kvm_arch_prepare_memory_region(): EINVAL beyond asce_contains_gfn() (commit "
        "7b53b4801884); both dropped"
    )
    symptom = "lacks fix 7b53b4801884"

    def kvm_s390_set_mem_control(self, vm: Any, addr: int) -> int:
        slots, vm.memslots = vm.memslots, {}  # the memslot test sees none
        try:
            return super().kvm_s390_set_mem_control(vm, addr)
        finally:
            vm.memslots = slots

    def kvm_arch_prepare_memory_region(self, vm: Any, arg: int) -> int:
        limit, vm.gmap_limit = vm.gmap_limit, (1 << 64) - 1  # asce_contains_gfn(): always
        try:
            return super().kvm_arch_prepare_memory_region(vm, arg)
        finally:
            vm.gmap_limit = limit


class Invented_NoFinalSweep(_Regression):
    """INVENTED (no upstream commit): kvm_s390_pv_deinit_cleanup_all() without its final
    s390_uv_destroy_range() sweep, so DISABLE and the VM's close leave the guest's memory
    secure in configurations the Ultravisor has already destroyed.

    ``check_nothing_left`` used to count secure bytes only of *live*
    configurations, so the whole registry passed on this host (docs/regressions.md,
    "Blind spots of the checks themselves"); it now counts every configuration
    that still owns pages, whatever its state.
    """

    invented = True
    targets = frozenset({"disable_with_leftover", "close_vm_with_leftover"})
    breaks = (
        "kvm_s390_pv_deinit_cleanup_all(): after the Destroy Secure Configuration calls the "
        "mm is swept with s390_uv_destroy_range() (need_zap); here the sweep is skipped"
    )
    symptom = "configurations still owning secure pages"

    _in_cleanup = threading.local()

    def kvm_s390_pv_deinit_cleanup_all(self, vm: Any, out: Any) -> int:
        self._in_cleanup.on = True
        try:
            return super().kvm_s390_pv_deinit_cleanup_all(vm, out)
        finally:
            self._in_cleanup.on = False

    def s390_uv_destroy_range(
        self, ranges: list[tuple[int, int]], *, interruptible: bool, tid: int = 0
    ) -> bool:
        if getattr(self._in_cleanup, "on", False):
            return True  # "swept": nothing was destroyed
        return super().s390_uv_destroy_range(ranges, interruptible=interruptible, tid=tid)


def regressions() -> dict[str, type[_Regression]]:
    """Every deviation of this module by class name (the corpus's ``deviation`` values)."""
    return {
        name: obj
        for name, obj in globals().items()
        if isinstance(obj, type) and issubclass(obj, _Regression) and obj is not _Regression
    }
