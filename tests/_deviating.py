# SPDX-License-Identifier: GPL-2.0-only
"""Deliberately wrong simulators: each reinstates one plausible kernel (or UV) bug.

Every ``kvmpv check`` must be shown able to fail.  Each class here breaks one
behaviour of the s390 KVM interface that a check is written to catch, and
says so:

* ``targets``: the registered checks the deviation is written FOR; each of
  them must FAIL against it (tests/test_registry_coverage.py).  A check that
  fails only as a side effect of another deviation does not count as shown
  able to fail; the union of all ``targets`` must be the whole registry.
* ``breaks``: the kernel (or Ultravisor) function whose behaviour is broken,
  and how; the same function the simulator's rule cites.
* ``symptom``: text that each target's failure report (reason or a
  ``Check|`` diagnostic) must contain, so that a target failing for an
  unrelated reason is not taken for the deviation caught.

Each is a ``SimulatedHost`` subclass that overrides the simulator method
named after the kernel function it breaks (a key of
``kvmpv.sim.KERNEL_FUNCTIONS``), with the kernel's check removed or changed,
calling ``super()`` for the rest: the bug inside the kernel, where a
regression would be.  tests/test_sim_kernel_functions.py holds them to that:
no private simulator method is overridden.  ``build(config)`` makes one host
for a check's ``SimConfig``.

If the checks passed against one of these, they would have passed against the
mistake, and could not be trusted to catch it on a real s390x host.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Any, ClassVar

from kvmpv import uapi
from kvmpv.scenarios.check import SimConfig
from kvmpv.sim import SimulatedHost


def _oserror(err: int) -> OSError:
    return OSError(err, os.strerror(err))


PREPARE = int(uapi.pv_cmd_id.KVM_PV_ASYNC_CLEANUP_PREPARE)


class _SimBug(SimulatedHost):
    """A ``SimulatedHost`` whose model of one kernel function has the bug."""

    targets: ClassVar[frozenset[str]] = frozenset()
    breaks: ClassVar[str] = ""
    symptom: ClassVar[str] = ""

    @classmethod
    def build(cls, config: SimConfig) -> Any:
        return cls(**config.kwargs())


# ---------------------------------------------------------------------------
# The s390 vCPU protocol and the protected boot (spec 10.2, 10.3)
# ---------------------------------------------------------------------------


class HaltingHost(_SimBug):
    """A finished guest comes back as KVM_EXIT_HLT, as on x86, instead of SIEIC."""

    targets = frozenset({"s390_vcpu_protocol"})
    breaks = (
        "kvm_arch_vcpu_ioctl_run()/handle_stop() (arch/s390/kvm): an intercepted disabled "
        "wait leaves KVM_RUN as KVM_EXIT_S390_SIEIC, never x86's KVM_EXIT_HLT"
    )
    symptom = "KVM_EXIT_HLT"

    def kvm_arch_vcpu_ioctl_run(self, vcpu: Any) -> int:
        ret = super().kvm_arch_vcpu_ioctl_run(vcpu)
        if vcpu.run.exit_reason == uapi.KVM_EXIT_S390_SIEIC:
            vcpu.run.exit_reason = uapi.KVM_EXIT_HLT
        return ret


class LenientHost(_SimBug):
    """KVM_RUN starts a STOPPED vCPU even when userspace controls CPU state."""

    targets = frozenset({"s390_vcpu_protocol"})
    breaks = (
        "kvm_arch_vcpu_ioctl_run(): 'can't run stopped vcpu' (EINVAL) once "
        "user_cpu_state_ctrl is set, which every PV command sets"
    )
    symptom = "KVM_RUN on a STOPPED vCPU after a PV command"

    def kvm_arch_vcpu_ioctl_run(self, vcpu: Any) -> int:
        vcpu.stopped = False  # the 'can't run stopped vcpu' refusal never triggers
        return super().kvm_arch_vcpu_ioctl_run(vcpu)


class PermissiveUvHost(_SimBug):
    """An Ultravisor that accepts every image command, in any order: UNPACK before
    SET_SEC_PARMS, a zero-length or oversized header, VERIFY of an incomplete image,
    UNPACK of memory no memslot backs."""

    targets = frozenset(
        {
            "unpack_before_sec_parms_einval",
            "verify_before_every_component_fails",
            "sec_parms_zero_length_enomem",
            "sec_parms_too_large_einval",
            "unpack_outside_memslots_efault",
        }
    )
    breaks = (
        "kvm_s390_pv_set_sec_parms() (length checks, vmalloc(0)), kvm_s390_pv_unpack()/"
        "unpack_one() (gmap fault), and the UV's refusals of UNPACK/VERIFY out of order"
    )
    symptom = "got 'success'"

    @staticmethod
    def _accept(ret: int, out: Any) -> int:
        if ret < 0:
            out.rc, out.rrc = uapi.UVC_RC_EXECUTED, 0
            return 0
        return ret

    def kvm_s390_pv_set_sec_parms(self, vm: Any, data: int, out: Any) -> int:
        return self._accept(super().kvm_s390_pv_set_sec_parms(vm, data, out), out)

    def kvm_s390_pv_unpack(self, vm: Any, data: int, out: Any) -> int:
        try:
            ret = super().kvm_s390_pv_unpack(vm, data, out)
        except OSError:  # the gmap fault (EFAULT)
            ret = -errno.EFAULT
        return self._accept(ret, out)

    def kvm_s390_handle_pv_verify(self, vm: Any, data: int, out: Any) -> int:
        return self._accept(super().kvm_s390_handle_pv_verify(vm, data, out), out)


class LoadRefusedHost(_SimBug):
    """KVM_SET_MP_STATE LOAD is refused for a protected vCPU as for an unprotected one."""

    targets = frozenset({"protected_boot"})
    breaks = (
        "kvm_arch_vcpu_ioctl_set_mpstate(), KVM_MP_STATE_LOAD: ENXIO only when "
        "!kvm_s390_pv_cpu_is_protected(vcpu); here ENXIO always, so no SE image can start"
    )
    symptom = "(ENXIO)"

    def kvm_arch_vcpu_ioctl_set_mpstate(self, vcpu: Any, state: int) -> int:
        if state == uapi.KVM_MP_STATE_LOAD:
            raise _oserror(errno.ENXIO)
        return super().kvm_arch_vcpu_ioctl_set_mpstate(vcpu, state)


class UnpackAgainHost(_SimBug):
    """UNPACK hands EAGAIN to userspace while an old configuration's pages are still secure."""

    targets = frozenset({"boot_again_while_perform_runs"})
    breaks = (
        "kvm_s390_pv_unpack(): unpack_one() -> gmap_make_secure() answers -EAGAIN for a "
        "page the UV still holds for another configuration; the kernel retries "
        "(cond_resched() and loop), here the EAGAIN reaches userspace"
    )
    symptom = "(EAGAIN)"

    def kvm_s390_pv_unpack(self, vm: Any, data: int, out: Any) -> int:
        if vm.performing and any(c.state == "performing" for c in self.configs()):
            return -errno.EAGAIN
        return super().kvm_s390_pv_unpack(vm, data, out)


# ---------------------------------------------------------------------------
# Caps and interface answers
# ---------------------------------------------------------------------------


class AsyncCapHiddenHost(_SimBug):
    """Cap 224 answers 0 although the host has PV and kvm.async_destroy=1."""

    targets = frozenset({"pv_caps_report_host"})
    breaks = (
        "kvm_vm_ioctl_check_extension(): KVM_CAP_S390_PROTECTED_ASYNC_DISABLE is "
        "async_destroy && is_prot_virt_host(); here the case is missing (default 0), as in "
        "a backport that took the commands but not the cap"
    )
    symptom = "cap 224 == (cap 180 && kvm.async_destroy)"

    def kvm_vm_ioctl_check_extension(self, cap: int) -> int:
        if cap == uapi.KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE:
            return 0
        return super().kvm_vm_ioctl_check_extension(cap)


class NoPvHostEnottyHost(_SimBug):
    """Without PV, KVM_S390_PV_COMMAND falls through to ENOTTY (unknown ioctl), not EINVAL."""

    targets = frozenset({"pv_command_without_pv_host"})
    breaks = (
        "kvm_arch_vm_ioctl(), KVM_S390_PV_COMMAND: 'if (!is_prot_virt_host()) r = -EINVAL' "
        "before the copy-in; here the command is treated as unknown (ENOTTY)"
    )
    symptom = "got 'ENOTTY'"

    def kvm_arch_vm_ioctl_pv_command(self, vm: Any, arg: int) -> int:
        if not self.prot_virt_host:
            vm.user_cpu_state_ctrl = True
            raise _oserror(errno.ENOTTY)
        return super().kvm_arch_vm_ioctl_pv_command(vm, arg)


class UnknownCmdEinvalHost(_SimBug):
    """An unknown PV sub-command is EINVAL instead of ENOTTY."""

    targets = frozenset({"unknown_command_enotty"})
    breaks = "kvm_s390_handle_pv(): 'default: r = -ENOTTY'; here -EINVAL"
    symptom = "expected 'ENOTTY', got 'EINVAL'"

    def kvm_s390_handle_pv(self, vm: Any, cmd: int, data: int, out: Any) -> int:
        ret = super().kvm_s390_handle_pv(vm, cmd, data, out)
        return -errno.EINVAL if ret == -errno.ENOTTY else ret


class FlagsIgnoredHost(_SimBug):
    """Nonzero ``flags`` of KVM_S390_PV_COMMAND are ignored instead of refused."""

    targets = frozenset({"flags_nonzero_einval"})
    breaks = "kvm_arch_vm_ioctl(), KVM_S390_PV_COMMAND: 'if (args.flags) r = -EINVAL'; dropped"
    symptom = "expected 'EINVAL', got 'success'"

    def kvm_arch_vm_ioctl_pv_command(self, vm: Any, arg: int) -> int:
        cmd = uapi.kvm_pv_cmd.from_address(arg)  # the caller's buffer
        flags, cmd.flags = int(cmd.flags), 0
        try:
            return super().kvm_arch_vm_ioctl_pv_command(vm, arg)
        finally:
            cmd.flags = flags


class RcRrcZeroedHost(_SimBug):
    """rc/rrc are zeroed for every PV command, also those that fail before any UV call."""

    targets = frozenset({"rc_rrc_written_only_by_uvc"})
    breaks = (
        "kvm_s390_handle_pv(): rc/rrc are written only by a UV call (api.rst); here they are "
        "zeroed after the copy-in and the whole struct is copied back"
    )
    symptom = "got (0, 0)"

    def kvm_s390_handle_pv(self, vm: Any, cmd: int, data: int, out: Any) -> int:
        out.rc, out.rrc = 0, 0
        return super().kvm_s390_handle_pv(vm, cmd, data, out)


class InfoLenUncheckedHost(_SimBug):
    """KVM_PV_INFO writes its answer whatever ``len_max`` the caller gave."""

    targets = frozenset({"info_without_pv"})
    breaks = (
        "kvm_s390_handle_pv_info(): 'if (info->header.len_max < len_min) return -EINVAL' "
        "dropped (the answer overruns the caller's buffer)"
    )
    symptom = "KVM_PV_INFO ioctl result: expected 'EINVAL', got 'success'"

    def kvm_s390_handle_pv_info(self, vm: Any, data: int, out: Any) -> int:
        hdr = self._copy_in(data, uapi.kvm_s390_pv_info_header)
        hdr.len_max = ctypes.sizeof(uapi.kvm_s390_pv_info)  # as if the caller had room
        self._copy_out(data, hdr)
        return super().kvm_s390_handle_pv_info(vm, data, out)


class MemLimitAfterVcpuHost(_SimBug):
    """KVM_S390_VM_MEM_LIMIT_SIZE is accepted after the first vCPU (a new gmap under it)."""

    targets = frozenset({"mem_limit_busy_after_vcpu"})
    breaks = (
        "kvm_s390_set_mem_control(), KVM_S390_VM_MEM_LIMIT_SIZE: EBUSY once "
        "kvm->created_vcpus; here the gmap is replaced anyway"
    )
    symptom = "expected 'EBUSY', got 'success'"

    def kvm_s390_mem_control(self, vm: Any, request: int, arg: int) -> int:
        created, vm.created_vcpus = vm.created_vcpus, 0
        try:
            return super().kvm_s390_mem_control(vm, request, arg)
        finally:
            vm.created_vcpus = created


class MemslotsUncheckedHost(_SimBug):
    """Every memslot change is accepted: while protected, and unaligned to 1 MiB."""

    targets = frozenset({"memslot_change_while_protected", "memslot_alignment_1m"})
    breaks = (
        "kvm_arch_prepare_memory_region() (arch/s390/kvm): EINVAL for a protected VM and "
        "for a userspace address or size not 1 MiB aligned; dropped"
    )
    symptom = "expected 'EINVAL', got 'success'"

    def kvm_arch_prepare_memory_region(self, vm: Any, arg: int) -> int:
        try:
            return super().kvm_arch_prepare_memory_region(vm, arg)
        except OSError:
            return 0


# ---------------------------------------------------------------------------
# PREPARE (spec 3.3)
# ---------------------------------------------------------------------------


class PrepareRrc43Host(_SimBug):
    """PREPARE reports its synthetic rrc as 43, not 42."""

    targets = frozenset({"prepare_success"})
    breaks = "kvm_s390_handle_pv(), KVM_PV_ASYNC_CLEANUP_PREPARE: rc 1 / rrc 42 on success"
    symptom = "got '0x2b'"

    def kvm_s390_handle_pv(self, vm: Any, cmd: int, data: int, out: Any) -> int:
        ret = super().kvm_s390_handle_pv(vm, cmd, data, out)
        if cmd == PREPARE and ret == 0:
            out.rrc = 43
        return ret


class EinvalBecomesEpermHost(_SimBug):
    """Every EINVAL of a PV command comes back as EPERM."""

    targets = frozenset({"prepare_not_protected_einval", "async_destroy_off"})
    breaks = (
        "kvm_s390_handle_pv(): the refusals of an unprotected VM (kvm_s390_pv_is_protected) "
        "and of async_destroy=0 are -EINVAL; here -EPERM"
    )
    symptom = "got 'EPERM'"

    def kvm_s390_handle_pv(self, vm: Any, cmd: int, data: int, out: Any) -> int:
        ret = super().kvm_s390_handle_pv(vm, cmd, data, out)
        return -errno.EPERM if ret == -errno.EINVAL else ret


class PrepareIgnoresVcpuMutexHost(_SimBug):
    """PREPARE "succeeds" at once while a vCPU is in KVM_RUN, without its mutex."""

    targets = frozenset({"prepare_blocks_while_vcpu_in_run"})
    breaks = (
        "kvm_s390_cpus_from_pv(): mutex_lock(&vcpu->mutex) for each vCPU before Destroy "
        "Secure CPU; here a running vCPU is not waited for"
    )
    symptom = "PREPARE returned while a vCPU was in KVM_RUN"

    def kvm_s390_handle_pv(self, vm: Any, cmd: int, data: int, out: Any) -> int:
        if cmd == PREPARE and any(v.in_run for v in vm.vcpus):
            out.rc, out.rrc = uapi.KVM_PV_ASYNC_SYNTHETIC_RC, uapi.KVM_PV_ASYNC_SYNTHETIC_RRC
            return 0
        return super().kvm_s390_handle_pv(vm, cmd, data, out)


class PrepareTwiceHost(_SimBug):
    """A second PREPARE succeeds while a configuration is still set aside (the older one is
    queued for cleanup instead of the refusal)."""

    targets = frozenset(
        {"prepare_twice_einval", "reboot_race_second_prepare", "second_reboot_while_perform_runs"}
    )
    breaks = (
        "kvm_s390_pv_set_aside(): 'if (kvm->arch.pv.set_aside) return -EINVAL' (at most one "
        "set-aside configuration, the reason for QEMU's DISABLE fallback); dropped"
    )
    symptom = "PREPARE ioctl result: expected 'EINVAL', got 'success'"

    def kvm_s390_pv_set_aside(self, vm: Any, data: int, out: Any) -> int:
        if vm.config is not None and vm.set_aside is not None:
            vm.need_cleanup.append(vm.set_aside)
            vm.set_aside = None
        return super().kvm_s390_pv_set_aside(vm, data, out)


class DestroyCpuErrorIgnoredHost(_SimBug):
    """PREPARE goes on after Destroy Secure CPU failed, and succeeds."""

    targets = frozenset({"prepare_vcpu_destroy_eio"})
    breaks = (
        "kvm_s390_handle_pv(), KVM_PV_ASYNC_CLEANUP_PREPARE: 'r = kvm_s390_cpus_from_pv(...); "
        "if (r) break;' -- the EIO of a failed Destroy Secure CPU is ignored here"
    )
    symptom = "expected 'EIO', got 'success'"

    _in_prepare = threading.local()

    def kvm_s390_pv_set_aside(self, vm: Any, data: int, out: Any) -> int:
        self._in_prepare.on = True
        try:
            return super().kvm_s390_pv_set_aside(vm, data, out)
        finally:
            self._in_prepare.on = False

    def kvm_s390_cpus_from_pv(self, vm: Any, out: Any) -> int:
        ret = super().kvm_s390_cpus_from_pv(vm, out)
        return 0 if getattr(self._in_prepare, "on", False) else ret


class FastDestroyErrorIgnoredHost(_SimBug):
    """PREPARE with Destroy-Fast succeeds although UVC 0x0102 failed."""

    targets = frozenset({"prepare_fast_destroy_eio"})
    breaks = (
        "kvm_s390_pv_deinit_vm_fast(): 'return cc ? -EIO : 0'; here the condition code of "
        "Destroy Secure Configuration Fast is ignored"
    )
    symptom = "expected 'EIO', got 'success'"

    def uv_call(self, cmd: int, handle: int, **kw: Any) -> tuple[int, int, int]:
        cc, rc, rrc = super().uv_call(cmd, handle, **kw)
        if cmd == uapi.UVC_CMD_DESTROY_SEC_CONF_FAST:
            cc = 0
        return cc, rc, rrc


class PrepareRefusedDuringPerformHost(_SimBug):
    """PREPARE is refused while a PERFORM of this VM is still running."""

    targets = frozenset({"prepare_again_while_perform_runs"})
    breaks = (
        "kvm_s390_pv_set_aside() refuses only while a record is *set aside* (api.rst: PREPARE "
        "'can be called again as soon as cleanup starts'); here also while one is performing"
    )
    symptom = "expected 'success', got 'EINVAL'"

    def kvm_s390_pv_set_aside(self, vm: Any, data: int, out: Any) -> int:
        if vm.performing:
            return -errno.EINVAL
        return super().kvm_s390_pv_set_aside(vm, data, out)


# ---------------------------------------------------------------------------
# PERFORM (spec 3.4)
# ---------------------------------------------------------------------------


class PerformRrc7Host(_SimBug):
    """A successful PERFORM reports rrc 7."""

    targets = frozenset({"perform_success_rc", "perform_fatal_signal"})
    breaks = (
        "kvm_s390_pv_deinit_aside_vm(): rc/rrc are those of Destroy Secure Configuration "
        "(1/0), or the synthetic 1/42 after a fatal signal; here rrc 7"
    )
    symptom = "got '0x7'"

    def kvm_s390_pv_deinit_aside_vm(self, vm: Any, out: Any) -> int:
        ret = super().kvm_s390_pv_deinit_aside_vm(vm, out)
        if ret >= 0:
            out.rrc = 7
        return ret


class PerformNothingOkHost(_SimBug):
    """PERFORM with nothing set aside succeeds instead of EINVAL."""

    targets = frozenset(
        {"perform_nothing_set_aside_einval", "reboot_race_second_prepare", "disable_with_leftover"}
    )
    breaks = (
        "kvm_s390_pv_deinit_aside_vm(): 'if (!p) return -EINVAL' when nothing is set aside "
        "(QEMU's late PERFORM after the DISABLE fallback relies on it); here 0"
    )
    symptom = "PERFORM ioctl result: expected 'EINVAL', got 'success'"

    def kvm_s390_pv_deinit_aside_vm(self, vm: Any, out: Any) -> int:
        ret = super().kvm_s390_pv_deinit_aside_vm(vm, out)
        return 0 if ret == -errno.EINVAL else ret


class PerformFastWritesRcHost(_SimBug):
    """After Destroy-Fast, PERFORM writes rc 1 / rrc 0 as if it had run Destroy Secure
    Configuration."""

    targets = frozenset({"perform_fast_rc_untouched"})
    breaks = (
        "kvm_s390_pv_dispose_one_leftover(): a record without handle (Destroy-Fast ran at "
        "PREPARE) issues no UV call and leaves rc/rrc alone; here they are written"
    )
    symptom = "PERFORM rc: expected '0x0', got '0x1'"

    def kvm_s390_pv_dispose_one_leftover(self, record: Any, out: Any) -> int:
        if not record.handle:
            out.rc, out.rrc = uapi.UVC_RC_EXECUTED, 0
        return super().kvm_s390_pv_dispose_one_leftover(record, out)


class PerformDestroyErrorIgnoredHost(_SimBug):
    """PERFORM returns 0 although Destroy Secure Configuration failed."""

    targets = frozenset({"perform_destroy_eio"})
    breaks = (
        "kvm_s390_pv_deinit_aside_vm(): 'if (kvm_s390_pv_dispose_one_leftover(...)) "
        "ret = -EIO'; here the failure is reported as success"
    )
    symptom = "expected 'EIO', got 'success'"

    def kvm_s390_pv_deinit_aside_vm(self, vm: Any, out: Any) -> int:
        ret = super().kvm_s390_pv_deinit_aside_vm(vm, out)
        return 0 if ret == -errno.EIO else ret


class EnableBusyDuringPerformHost(_SimBug):
    """ENABLE is refused (EBUSY) while a PERFORM of this VM is still running."""

    targets = frozenset({"enable_while_perform_runs"})
    breaks = (
        "kvm_s390_pv_deinit_aside_vm() runs without kvm->lock so that the next "
        "kvm_s390_pv_init_vm() (ENABLE) proceeds meanwhile (spec 3.4, 3.8); here ENABLE "
        "waits for no one and refuses"
    )
    symptom = "got 'EBUSY'"

    def kvm_s390_handle_pv_enable(self, vm: Any, data: int, out: Any) -> int:
        if vm.performing:
            return -errno.EBUSY
        return super().kvm_s390_handle_pv_enable(vm, data, out)


# ---------------------------------------------------------------------------
# DISABLE and close (spec 3.5, 3.6)
# ---------------------------------------------------------------------------


class DisableWithoutConfigHost(_SimBug):
    """DISABLE of a VM that is not protected tears down its set-aside configuration."""

    targets = frozenset({"prepare_unprotects_vm"})
    breaks = (
        "kvm_s390_handle_pv(), KVM_PV_DISABLE: 'if (!kvm_s390_pv_is_protected(kvm)) break' "
        "(EINVAL) before kvm_s390_pv_deinit_cleanup_all(); dropped"
    )
    symptom = "KVM_PV_DISABLE ioctl result: expected 'EINVAL', got 'success'"

    def kvm_s390_handle_pv_disable(self, vm: Any, data: int, out: Any) -> int:
        if vm.config is None and vm.set_aside is not None:
            return self.kvm_s390_pv_deinit_cleanup_all(vm, out)
        return super().kvm_s390_handle_pv_disable(vm, data, out)


class CloseLeavesSetAsideHost(_SimBug):
    """Closing a VM destroys its current configuration but forgets the set-aside one."""

    targets = frozenset({"close_vm_with_leftover"})
    breaks = (
        "kvm_arch_destroy_vm() -> kvm_s390_pv_deinit_cleanup_all(): the set-aside record is "
        "moved to need_cleanup and destroyed too; here it is left registered with the UV"
    )
    symptom = "'set_aside')"

    def kvm_arch_destroy_vm(self, vm: Any) -> None:
        vm.set_aside = None  # the record (and its configuration) is simply dropped
        super().kvm_arch_destroy_vm(vm)


def all_deviations() -> tuple[type[Any], ...]:
    """Every deviating host defined here and in tests/_regressions.py (the upstream regressions
    and the invented ones; a new class is found without being listed)."""
    import _regressions  # imports this module: not at the top

    found = [
        obj
        for mod in (globals(), vars(_regressions))
        for obj in mod.values()
        if isinstance(obj, type) and issubclass(obj, _SimBug) and not obj.__name__.startswith("_")
    ]
    return tuple(sorted(set(found), key=lambda c: c.__name__))
