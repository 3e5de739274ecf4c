# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv check``: conformance checks of the s390 PV async-cleanup interface.

One check per row of the rc/rrc table (spec section 3.9) plus the ordering and
concurrency cases of sections 3.3-3.6 and the QEMU reboot race of section 5.
Each check is a plain function ``fn(ctx)`` in a registry (kselftest's
``testlist[]``, ksft.py's ``ksft_run``): it drives the kernel interface through
``kvmpv.kvm``/``kvmpv.pv`` exactly as a VMM would, on one of two backends:

* ``kvm``: the real ``/dev/kvm`` of this host.  A check runs here only if the
  host has what it needs (an s390x Secure Execution host with cap 224 for the
  PV behaviour, a host *without* PV for the "no PV" answers); otherwise it is
  reported as ``# SKIP`` with the reason, never as a pass.
* ``sim``: the simulated s390x kernel ``kvmpv.sim.SimulatedHost``, a fresh
  one per check, configured as the check needs (``async_destroy=0``,
  Destroy-Fast, no PV).  Fault injection (the EIO rows), fatal signals and a
  running protected guest exist only here.

``CheckRequest.backend`` decides which:

* ``auto`` (default): each check on the real kernel where this host can run
  it, on the simulator otherwise; the header says why.
* ``kvm``: real kernel only; what cannot run here is SKIP.
* ``sim``: simulator only.
* ``both``: every check on both (two results per check).

Every result line names its backend (``ok 3 sim: prepare_success``).

The mechanics (registry, per-check context with soft checks and deferred
cleanup, worker threads, the runner) are in ``_harness.py``; this module
holds the VM building blocks and the checks, in the order of the spec.

Touches: ``/dev/kvm`` (VMs with small memslots, never a running real guest),
``/sys/module/kvm/parameters/async_destroy``, ``/sys/firmware/uv/`` (read),
anonymous memory (at most ``CheckRequest.perform_memory`` + 32 MiB per check),
threads it joins before the check ends.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from .. import s390guest, uapi
from ..errors import KvmError
from ..kvm import Kvm, Vcpu, Vm
from ..memory import MADV_DONTNEED, GuestMemory
from ..pv import (
    BootError,
    ProtectedBoot,
    PvResult,
    load_image,
    pv_cmd,
    s390_machine_protect,
)
from ..runner import (
    SCLP_EVENT_PENDING_BITS,
    exit_name,
    guest_finished,
    reset_vcpus,
    run_until_finished,
    serve_pv_sclp,
    start_vcpu,
)
from ..s390guest import guest_end
from ..syscalls import ensure_kick_handler
from ..uapi import KvmCap, pv_cmd_id
from ._harness import (
    BACKENDS,
    RC_SENTINEL,
    RRC_SENTINEL,
    Check,
    CheckContext,
    CheckFailed,
    CheckRequest,
    CheckRun,
    CheckSkip,
    Need,
    SimConfig,
    Worker,
    check,
    describe,
    describe_checks,
    errno_text,
    kvm_skip_reason,
    plan,
    registry,
    run_checks,
    run_one,
    select,
)

MiB = 1 << 20
GiB = 1 << 30


#: Guest layout of the checks: a small slot below 2 GiB (destroyed synchronously
#: by PREPARE, spec 3.3 step 7) and one at 2 GiB (left for PERFORM).
LOW_GPA = 0
LOW_SIZE = 8 * MiB
HIGH_GPA = 2 * GiB
HIGH_SIZE = 16 * MiB


PREPARE = pv_cmd_id.KVM_PV_ASYNC_CLEANUP_PREPARE
PERFORM = pv_cmd_id.KVM_PV_ASYNC_CLEANUP_PERFORM
ENABLE = pv_cmd_id.KVM_PV_ENABLE
DISABLE = pv_cmd_id.KVM_PV_DISABLE
INFO = pv_cmd_id.KVM_PV_INFO

SYNTH_RC = uapi.KVM_PV_ASYNC_SYNTHETIC_RC
SYNTH_RRC = uapi.KVM_PV_ASYNC_SYNTHETIC_RRC


# ---------------------------------------------------------------------------
# Building blocks: a protected VM as a VMM sets it up (spec 3.10)
# ---------------------------------------------------------------------------


@dataclass
class PvVm:
    vm: Vm
    vcpus: list[Vcpu]
    low: GuestMemory
    high: Optional[GuestMemory]


def make_vm(
    ctx: CheckContext,
    *,
    low_size: int = LOW_SIZE,
    high_size: int = HIGH_SIZE,
    vcpus: int = 1,
    mem_limit: Optional[int] = None,
    enable: bool = True,
    kvm: Optional[Kvm] = None,
) -> PvVm:
    """VM type 0, optional memory limit, 1 MiB-aligned memslots, vCPUs, ENABLE."""
    vm = ctx.vm(kvm)
    if mem_limit is not None:
        # Only before the first vCPU (spec 3.10); QEMU sets it to the RAM size.
        vm.s390_set_mem_limit(mem_limit)
    low = ctx.memory(low_size)
    vm.mem_add(low, slot=0, gpa=LOW_GPA)
    high = None
    if high_size:
        high = ctx.memory(high_size)
        vm.mem_add(high, slot=1, gpa=HIGH_GPA)
    cpus = [vm.vcpu_add(i) for i in range(vcpus)]
    if enable:
        ctx.require_ok(ctx.pv(vm, ENABLE))
    return PvVm(vm, cpus, low, high)


def boot(ctx: CheckContext, guest: PvVm) -> bool:
    """Make the guest's memory secure by running it (simulator only).

    On a real host a protected vCPU runs only an unpacked Secure Execution
    image, which kvmpv does not ship; checks then work on a configuration
    whose pages were never imported (every interface answer is the same).
    """
    if not ctx.is_sim:
        return False
    for vcpu in guest.vcpus[:1]:
        # ENABLE left the CPU state to userspace: start the vCPU as QEMU
        # does, then run until the guest's disabled wait (SIEIC 0x1c).
        start_vcpu(vcpu, protected=True)
        run_until_finished(vcpu)
    return True


def sim_vm(ctx: CheckContext, vm: Vm) -> Any:
    """The simulator's snapshot of ``vm`` (``SimVmInfo``: secure bytes, set-aside, ...)."""
    return ctx.sim.vm_info(vm.fd)


#: Configuration states that still hold UV resources (``kvmpv.sim.SimConfigInfo``).
LIVE_STATES = frozenset({"current", "set_aside", "performing", "need_cleanup"})


def sim_live_configs(ctx: CheckContext) -> list[Any]:
    """Secure configurations the simulated Ultravisor still has registered."""
    return [c for c in ctx.sim.configs() if c.state in LIVE_STATES]


def check_nothing_left(ctx: CheckContext, when: str) -> None:
    """Simulator: no live configuration, no secure page in ANY configuration, protected_count 0.

    Secure pages are counted in every configuration that still owns some,
    whatever its state: a configuration the UV has already destroyed
    (``destroyed``) or leaked still holds its pages secure until something
    destroys or exports them, and counting only the live ones let a teardown
    that skips its final sweep pass every check (docs/regressions.md, "Blind
    spots"; ``Invented_NoFinalSweep`` in tests/_regressions.py).  On a real
    kernel nothing shows secure pages of a destroyed configuration to the VMM:
    the kernel exports them when they are touched.
    """
    live = sim_live_configs(ctx)
    ctx.check_eq(
        [(c.handle, c.state) for c in live], [], f"UV configurations still registered {when}"
    )
    owning = {c.handle: (c.state, c.secure_bytes) for c in ctx.sim.configs() if c.secure_bytes}
    ctx.check_eq(owning, {}, f"configurations still owning secure pages {when}")
    ctx.check_eq(sum(ctx.sim.secure_bytes().values()), 0, f"secure bytes {when}")
    ctx.check_eq(ctx.sim.protected_count, 0, f"mm protected_count {when}")


def zero_fraction(mem: GuestMemory) -> float:
    """Share of zero bytes in ``mem`` (C-speed ``bytes.count``, no per-page loop)."""
    data = ctypes.string_at(mem.addr, mem.size)
    return data.count(0) / len(data) if data else 1.0


# ---------------------------------------------------------------------------
# The checks: interface answers that need no PV host
# ---------------------------------------------------------------------------


#: What the s390 kernel says the host is, outside KVM (spec section 7): the
#: kernel's prot_virt_host (1 = booted with prot_virt=1 on a machine with the
#: Ultravisor; the directory exists only with facility 158) and the
#: kvm.async_destroy module parameter (Linux 6.2+).
UV_SYSFS = "/sys/firmware/uv"
PROT_VIRT_HOST_FILE = UV_SYSFS + "/prot_virt_host"
ASYNC_DESTROY_PARAM = "/sys/module/kvm/parameters/async_destroy"


def _sysfs_int(path: str) -> Optional[int]:
    """An integer sysfs file, None if it is absent or unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


@check("pv_caps_report_host", spec="2.2, 7", needs=(Need.S390,))
def check_caps(ctx: CheckContext) -> None:
    """Caps 180/217/224 agree on /dev/kvm and the VM fd and say what the host is: 180 =
    prot_virt_host, 224 = 180 && kvm.async_destroy, 217 only with 180.

    What the host is comes from outside KVM_CHECK_EXTENSION: on a real s390x
    host /sys/firmware/uv/prot_virt_host (absent without the Ultravisor
    facility: not a PV host) and the kvm.async_destroy parameter; on the
    simulator the simulated host's own settings.  Off s390x every kernel
    answers 0 for these cap numbers, which proves nothing, so there the check
    runs on the simulator only (needs s390x).
    """
    kvm = ctx.kvm()
    vm = ctx.vm(kvm)
    caps = (
        KvmCap.KVM_CAP_S390_PROTECTED,
        KvmCap.KVM_CAP_S390_PROTECTED_DUMP,
        KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE,
    )
    on_dev = {c: kvm.check_cap(c) for c in caps}
    on_vm = {c: vm.check_cap(c) for c in caps}
    ctx.diag(
        "caps /dev/kvm: "
        + ", ".join(f"{int(c)}={v}" for c, v in on_dev.items())
        + "; VM fd: "
        + ", ".join(f"{int(c)}={v}" for c, v in on_vm.items())
    )
    for c in caps:
        ctx.check_eq(on_vm[c], on_dev[c], f"cap {int(c)} on VM fd vs /dev/kvm")
    pv = on_dev[KvmCap.KVM_CAP_S390_PROTECTED]
    dump = on_dev[KvmCap.KVM_CAP_S390_PROTECTED_DUMP]
    async_cap = on_dev[KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE]
    prot_virt_host: Optional[bool]
    if ctx.is_sim:
        # The simulated host's settings, not the check's SimConfig: a
        # deviating host built from the same config must still be judged
        # by what it says it is.
        prot_virt_host = bool(ctx.sim.prot_virt_host)
        async_param: Optional[int] = int(bool(ctx.sim.async_destroy))
        where = "the simulated host"
    else:
        pvh = _sysfs_int(PROT_VIRT_HOST_FILE)
        if pvh is None and os.path.isdir(UV_SYSFS):
            prot_virt_host = None  # a kernel without the file: cap 180 cannot be compared
        else:
            prot_virt_host = bool(pvh)  # no /sys/firmware/uv: no Ultravisor, no PV
        async_param = _sysfs_int(ASYNC_DESTROY_PARAM)
        where = f"{PROT_VIRT_HOST_FILE} and {ASYNC_DESTROY_PARAM}"
    ctx.diag(f"host from {where}: prot_virt_host {prot_virt_host}, async_destroy {async_param}")
    if prot_virt_host is None:
        ctx.diag(f"{PROT_VIRT_HOST_FILE} absent: cap 180 taken as the PV verdict")
        prot_virt_host = bool(pv)
    ctx.check_eq(bool(pv), prot_virt_host, "cap 180 == prot_virt_host")
    ctx.check_true(not dump or bool(pv), f"cap 217 ({dump}) only on a PV host (cap 180 = {pv})")
    ctx.check_eq(
        bool(async_cap),
        prot_virt_host and async_param == 1,
        "cap 224 == (cap 180 && kvm.async_destroy)",
    )


@check(
    "pv_command_without_pv_host",
    spec="2.2, 3.1",
    needs=(Need.NO_PV,),
    sim=SimConfig(prot_virt_host=False),
)
def check_no_pv_host(ctx: CheckContext) -> None:
    """Without PV every KVM_S390_PV_COMMAND fails before any UV call: ENOTTY off s390, else EINVAL.

    x86 KVM does not know the ioctl (ENOTTY on the VM fd); an s390 host not
    booted with prot_virt=1 answers EINVAL (spec 3.1).  rc/rrc come back
    untouched, and caps 180/224 are 0.
    """
    kvm = ctx.kvm()
    vm = ctx.vm(kvm)
    expected = errno.EINVAL if (ctx.is_sim or ctx.facts.is_s390) else errno.ENOTTY
    for cap in (KvmCap.KVM_CAP_S390_PROTECTED, KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE):
        ctx.check_eq(kvm.check_cap(cap), 0, f"cap {int(cap)} on /dev/kvm")
        ctx.check_eq(vm.check_cap(cap), 0, f"cap {int(cap)} on the VM fd")
    for cmd in (ENABLE, PREPARE, PERFORM, INFO, 99):
        ret, rc, rrc = ctx.pv_raw(vm, int(cmd))
        ctx.check_eq(errno_text(-ret), errno_text(expected), f"cmd {int(cmd)} result")
        ctx.check_eq((hex(rc), hex(rrc)), (hex(RC_SENTINEL), hex(RRC_SENTINEL)), "rc/rrc untouched")


@check("s390_vcpu_protocol", spec="10.2", needs=(Need.S390,))
def check_s390_vcpu_protocol(ctx: CheckContext) -> None:
    """After a PV command a STOPPED vCPU cannot run (EINVAL) until KVM_SET_MP_STATE OPERATING;
    a finished guest comes back as KVM_EXIT_S390_SIEIC, never KVM_EXIT_HLT.

    A new vCPU is STOPPED.  Any KVM_S390_PV_COMMAND -- even one that fails,
    as the unknown command 99 does on every host -- hands CPU state to
    userspace ("protvirt means user cpu state", kvm_arch_vm_ioctl()), so
    KVM_RUN no longer starts the vCPU (kvm_arch_vcpu_ioctl_run(): "can't run
    stopped vcpu").  LOAD is for protected CPUs only (ENXIO).  Started, the
    unprotected guest runs kvmpv's s390x payload (written to gpa 0: the host
    may write an unprotected guest) to its disabled wait at 0xfff (icptcode
    0x1c).  Runs on any s390x KVM host, PV or not.
    """
    vm = ctx.vm()
    mem = ctx.memory(LOW_SIZE)
    vm.mem_add(mem, slot=0, gpa=LOW_GPA)
    img = s390guest.image()
    ctypes.memmove(mem.addr, img, len(img))
    vcpu = vm.vcpu_add(0)
    ctx.check_eq(vcpu.get_mp_state(), uapi.KVM_MP_STATE_STOPPED, "state of a new vCPU")
    ret, _, _ = ctx.pv_raw(vm, 99)
    ctx.diag(f"PV command 99 (unknown): {errno_text(-ret)}")
    ctx.check_true(ret < 0, "PV command 99 fails")
    err = vcpu.ioctl(uapi.KVM_RUN, check=False)
    ctx.check_eq(errno_text(-err), "EINVAL", "KVM_RUN on a STOPPED vCPU after a PV command")
    err = vcpu.set_mp_state(uapi.KVM_MP_STATE_LOAD, check=False)
    ctx.check_eq(errno_text(-err), "ENXIO", "KVM_MP_STATE_LOAD on an unprotected vCPU")
    run = vcpu.s390_run()
    run.psw_mask, run.psw_addr = s390guest.PSW_MASK_64, s390guest.ENTRY
    start_vcpu(vcpu, protected=False)
    ctx.check_eq(vcpu.get_mp_state(), uapi.KVM_MP_STATE_OPERATING, "state after OPERATING")
    reason = vcpu.run()
    ctx.diag(
        f"KVM_RUN after OPERATING: exit {reason}, icptcode "
        f"{int(run.s390_sieic.icptcode):#x}, psw {int(run.psw_mask):#x} {int(run.psw_addr):#x}"
    )
    ctx.check_eq(exit_name(reason), "KVM_EXIT_S390_SIEIC", "exit of a finished guest")
    ctx.check_true(guest_finished(vcpu, reason), "icptcode is a disabled wait or a stop")
    ctx.check_eq(int(run.psw_addr), s390guest.DONE_PSW_ADDR, "PSW address of the payload's end")
    if not ctx.is_sim:
        # The simulated guest touches memory but does not execute the payload.
        view = mem.view(0, mem.size)
        try:
            pages = s390guest.pages_with_own_address(view)
        finally:
            view.release()
        want = (mem.size - s390guest.FIRST_PAGE) // 4096
        ctx.check_eq(pages, want, "pages holding their own address")
    vcpu.s390_stop()
    ctx.check_eq(vcpu.get_mp_state(), uapi.KVM_MP_STATE_STOPPED, "state after STOPPED")
    err = vcpu.ioctl(uapi.KVM_RUN, check=False)
    ctx.check_eq(errno_text(-err), "EINVAL", "KVM_RUN after KVM_SET_MP_STATE STOPPED")


# ---------------------------------------------------------------------------
# The protected boot (spec 10.3): QEMU's order, and what the kernel and UV refuse
# ---------------------------------------------------------------------------


def image_vm(ctx: CheckContext, *, vcpus: int = 1, sim_high: bool = False) -> PvVm:
    """A VM as for a protected boot, not yet protected, the SE image loaded at address 0.

    One memslot from 0, as QEMU gives a guest: the payload probes its memory
    upwards, and a store into a hole below the highest memslot end would make
    KVM_RUN fail with EINVAL (``__deliver_prog_pv()``, kvmpv.scenarios.reboot.layout_hole).
    ``sim_high`` (simulator-only checks): the second slot at 2 GiB as well, so
    that PERFORM has work; only the simulated guest can skip the hole
    (``SimConfig.guest_skips_holes``).
    """
    if sim_high and not ctx.is_sim:
        raise AssertionError("sim_high is for simulator-only checks")
    guest = make_vm(ctx, vcpus=vcpus, high_size=HIGH_SIZE if sim_high else 0, enable=False)
    assert ctx.image is not None
    load_image(guest.vm, ctx.image)
    return guest


def protected_boot(ctx: CheckContext, guest: PvVm) -> ProtectedBoot:
    """The boot as QEMU does it (resets, ENABLE ... VERIFY, LOAD, OPERATING), run to its end."""
    assert ctx.image is not None
    reset_vcpus(guest.vcpus)
    booted = s390_machine_protect(guest.vm, ctx.image, guest.vcpus)
    for step in booted.steps:
        ctx.diag(f"boot {step.step}: {step.to_dict()}")
    run_until_finished(guest.vcpus[0])
    booted.end = guest_end(guest.vcpus[0])
    ctx.diag(f"end: {booted.end.describe()}")
    return booted


def _sec_parms(ctx: CheckContext, vm: Vm, length: int) -> Any:
    """Raw SET_SEC_PARMS of ``length`` bytes: the image's header (zeros without an image;
    the length refusals come before the kernel reads it)."""
    header = ctx.image.header if ctx.image is not None else b""
    hdr = ctypes.create_string_buffer(header, max(len(header), min(length, 8192), 1))
    parm = uapi.kvm_s390_pv_sec_parm(origin=ctypes.addressof(hdr), length=length)
    return ctx.pv_raw(vm, int(pv_cmd_id.KVM_PV_SET_SEC_PARMS), data=ctypes.addressof(parm))


def _unpack(ctx: CheckContext, vm: Vm, addr: int, size: int, tweak: int) -> Any:
    unp = uapi.kvm_s390_pv_unp(addr=addr, size=size, tweak=tweak)
    return ctx.pv_raw(vm, int(pv_cmd_id.KVM_PV_UNPACK), data=ctypes.addressof(unp))


@check("protected_boot", spec="10.3", needs=(Need.PV_HOST,), needs_image=True)
def check_protected_boot(ctx: CheckContext) -> None:
    """An SE image boots as QEMU's s390_machine_protect() boots it: ENABLE, INFO (VM, DUMP)
    where KVM_CAP_S390_PROTECTED_DUMP exists, SET_SEC_PARMS, UNPACK each component, VERIFY
    (no PREP_RESET: that is QEMU's diag 308 reset path), LOAD, OPERATING; the guest runs to
    its end and its memory is secure.
    """
    guest = image_vm(ctx)
    booted = protected_boot(ctx, guest)
    ctx.check_true(booted.verified, "the image verified")
    names = [s.step for s in booted.steps]
    comps = [f"UNPACK {i}" for i in range(len(ctx.image.components))] if ctx.image else []
    dump = guest.vm.kvm.has_cap(uapi.KvmCap.KVM_CAP_S390_PROTECTED_DUMP)
    info = ["INFO VM", "INFO DUMP"] if dump else []
    want = ["ENABLE", *info, "SET_SEC_PARMS", *comps, "VERIFY", "LOAD+OPERATING"]
    ctx.check_eq(names, want, "boot steps in QEMU's order")
    assert booted.end is not None
    ctx.check_eq(booted.end.kind, "payload", f"how the guest ended: {booted.end.describe()}")
    if ctx.is_sim:
        info = sim_vm(ctx, guest.vm)
        ctx.check_eq(info.secure_bytes, info.memslot_bytes, "secure bytes after the boot")


@check("unpack_before_sec_parms_einval", spec="10.3", needs=(Need.PV_HOST,))
def check_unpack_first(ctx: CheckContext) -> None:
    """UNPACK before SET_SEC_PARMS is refused by the Ultravisor: EINVAL with its rc."""
    guest = make_vm(ctx)
    ret, rc, _ = _unpack(ctx, guest.vm, LOW_GPA + 0x15000, 4096, 1 << 48)
    ctx.check_eq(errno_text(-ret), "EINVAL", "UNPACK before SET_SEC_PARMS")
    ctx.check_true(rc not in (0, RC_SENTINEL), f"a UV call ran and set rc (rc {rc:#x})")
    if ctx.is_sim:
        ctx.check_eq(rc, uapi.UVC_RC_INV_STATE, "rc: invalid state")


@check("verify_before_every_component_fails", spec="10.3", needs=(Need.PV_HOST,), needs_image=True)
def check_verify_early(ctx: CheckContext) -> None:
    """VERIFY before every component was unpacked fails; after the last one it succeeds."""
    guest = image_vm(ctx)
    assert ctx.image is not None
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    ret, rc, _ = _sec_parms(ctx, guest.vm, ctx.image.header_size)
    ctx.require(ret == 0, f"SET_SEC_PARMS of the image's header (rc {rc:#x})")
    comps = ctx.image.components
    for comp in comps[:-1]:
        ctx.require(_unpack(ctx, guest.vm, comp.addr, comp.size, comp.tweak)[0] == 0, "UNPACK")
    ret, rc, _ = ctx.pv_raw(guest.vm, int(pv_cmd_id.KVM_PV_VERIFY))
    ctx.check_eq(errno_text(-ret), "EINVAL", f"VERIFY with {len(comps) - 1} of {len(comps)}")
    ctx.check_true(rc not in (0, RC_SENTINEL), f"the UV refused it (rc {rc:#x})")
    last = comps[-1]
    ctx.require(_unpack(ctx, guest.vm, last.addr, last.size, last.tweak)[0] == 0, "last UNPACK")
    ctx.check_eq(ctx.pv_raw(guest.vm, int(pv_cmd_id.KVM_PV_VERIFY))[0], 0, "VERIFY after all")


@check("sec_parms_zero_length_enomem", spec="2.3, 10.3", needs=(Need.PV_HOST,))
def check_sec_parms_zero(ctx: CheckContext) -> None:
    """A zero-length SE header is ENOMEM (the kernel's vmalloc(0)) before any UV call."""
    guest = make_vm(ctx)
    ret, rc, rrc = _sec_parms(ctx, guest.vm, 0)
    ctx.check_eq(errno_text(-ret), "ENOMEM", "SET_SEC_PARMS with length 0")
    ctx.check_eq((hex(rc), hex(rrc)), (hex(RC_SENTINEL), hex(RRC_SENTINEL)), "rc/rrc untouched")


@check("sec_parms_too_large_einval", spec="2.3, 10.3", needs=(Need.PV_HOST,))
def check_sec_parms_large(ctx: CheckContext) -> None:
    """An SE header above the kernel's limit (8 KiB up to 6.19, 1 MiB from 7.0) is EINVAL,
    checked before the header is read: no UV call."""
    guest = make_vm(ctx)
    ret, rc, rrc = _sec_parms(ctx, guest.vm, (1 << 20) + 4096)
    ctx.check_eq(errno_text(-ret), "EINVAL", "SET_SEC_PARMS of 1 MiB + 4 KiB")
    ctx.check_eq((hex(rc), hex(rrc)), (hex(RC_SENTINEL), hex(RRC_SENTINEL)), "rc/rrc untouched")


@check("unpack_outside_memslots_efault", spec="10.3", needs=(Need.PV_HOST,), needs_image=True)
def check_unpack_outside(ctx: CheckContext) -> None:
    """UNPACK of guest memory that no memslot backs is EFAULT (the gmap fault of
    kvm_s390_pv_unpack), before any UV call for that page."""
    guest = image_vm(ctx)
    assert ctx.image is not None
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    ret, rc, _ = _sec_parms(ctx, guest.vm, ctx.image.header_size)
    ctx.require(ret == 0, f"SET_SEC_PARMS of the image's header (rc {rc:#x})")
    hole = LOW_GPA + LOW_SIZE  # above the one memslot
    ret, _, _ = _unpack(ctx, guest.vm, hole, 4096, 1 << 48)
    ctx.check_eq(errno_text(-ret), "EFAULT", f"UNPACK at {hole:#x}, outside the memslots")


#: The folio size of ``unpack_large_folio_retried``: 16 KiB (4 pages), so that each
#: component of the synthetic image meets more than one large folio.
LARGE_FOLIO = 16 * 1024


@check(
    "unpack_large_folio_retried",
    spec="10.3",
    needs_image=True,
    sim_only="which guest pages are large folios is the host mm's choice (mTHP, the page "
    "cache); a VMM cannot make UNPACK meet one on purpose",
    guards=("eef88fe45ac9", "3ec8a8330a1a"),
)
def check_unpack_large_folio(ctx: CheckContext) -> None:
    """UNPACK of image pages in large folios imports every page: the folios are split and
    each page retried, VERIFY succeeds, the guest runs to its end and its memory is secure.

    A large folio cannot be secure: make_hva_secure() splits it
    (s390_wiggle_split_folio()) and returns -EAGAIN, and kvm_s390_pv_unpack()
    retries the page.  Before commit eef88fe45ac9 (v6.11) gmap_make_secure()
    refused the page with EINVAL, so UNPACK failed; before commit
    3ec8a8330a1a (v6.16) the 0 of the successful split was returned instead,
    UNPACK skipped the page and reported success, and the image failed
    VERIFY (page count).
    """
    assert ctx.image is not None
    guest = image_vm(ctx)
    comps = ctx.image.components
    lo = min(c.addr for c in comps) // LARGE_FOLIO * LARGE_FOLIO
    hi = -(-max(c.addr + c.size for c in comps) // LARGE_FOLIO) * LARGE_FOLIO
    base = guest.low.addr - LOW_GPA
    ctx.sim.back_with_large_folios(base + lo, hi - lo, LARGE_FOLIO)
    folios = (hi - lo) // LARGE_FOLIO
    ctx.diag(f"image [{lo:#x}, {hi:#x}): {folios} large folios of {LARGE_FOLIO >> 10} KiB")
    ctx.check_eq(ctx.sim.large_folio_bytes(base + lo, hi - lo), hi - lo, "large folios set up")
    try:
        booted = protected_boot(ctx, guest)
    except BootError as exc:
        ctx.check_true(False, f"the image with large folios booted: {exc}")
        return
    ctx.check_true(booted.verified, "the image verified")
    assert booted.end is not None
    ctx.check_eq(booted.end.kind, "payload", f"how the guest ended: {booted.end.describe()}")
    ctx.check_eq(ctx.sim.large_folio_bytes(base + lo, hi - lo), 0, "large folios left unsplit")
    info = sim_vm(ctx, guest.vm)
    ctx.check_eq(info.secure_bytes, info.memslot_bytes, "secure bytes after the boot")


#: How long the UNPACKs of ``unpack_dirty_file_folios_complete`` may take before the
#: check calls them hung: sized for a loaded machine (they take milliseconds on an
#: idle one; CI runs next to qemu-system-s390x and other test runs).
UNPACK_BOUND_S = 120.0
#: kvm_s390_pv_unpack() retries (-EAGAIN) in a row without a large folio split that
#: make the simulated UNPACK a livelock, well before the time bound: with the fix
#: every retry follows a split (one per folio), so this is no slow machine.
UNPACK_SPIN_LIMIT = 1000


@check(
    "unpack_dirty_file_folios_complete",
    spec="10.3",
    needs_image=True,
    sim_only="kvmpv's guest memory is anonymous; a real-host variant needs a file on an "
    "iomap file system with large folios (XFS, zonefs, erofs) as guest memory, and whether "
    "its page cache holds large folios there is the host mm's choice",
    guards=("ab73b29efd36",),
)
def check_unpack_dirty_file_folios(ctx: CheckContext) -> None:
    """UNPACK of image pages in dirty large folios of a file on an iomap file system
    completes: each folio is written back and split, VERIFY succeeds, the guest runs to
    its end.  The boot runs on its own thread under a watchdog: a hung UNPACK is a FAIL.

    split_folio() refuses a dirty folio of such a file (iomap_release_folio()),
    and make_hva_secure() finds the folio through a writable PTE, which makes it
    dirty.  Since commit ab73b29efd36 (v6.16) s390_wiggle_split_folio() writes
    the folio back (filemap_write_and_wait_range()) and splits it at once;
    before, it answered -EAGAIN and kvm_s390_pv_unpack() retried the same page
    until a fatal signal: starting a protected guest from a file on XFS hung.
    """
    assert ctx.image is not None
    guest = image_vm(ctx)
    comps = ctx.image.components
    lo = min(c.addr for c in comps) // LARGE_FOLIO * LARGE_FOLIO
    hi = -(-max(c.addr + c.size for c in comps) // LARGE_FOLIO) * LARGE_FOLIO
    base = guest.low.addr - LOW_GPA
    ctx.sim.back_with_large_folios(base + lo, hi - lo, LARGE_FOLIO, iomap_file=True)
    folios = (hi - lo) // LARGE_FOLIO
    ctx.diag(f"image [{lo:#x}, {hi:#x}): {folios} dirty file folios of {LARGE_FOLIO >> 10} KiB")
    unsplittable = ctx.sim.unsplittable_folio_bytes(base + lo, hi - lo)
    ctx.check_eq(unsplittable, hi - lo, "dirty file folios set up")
    booted = _protect_bounded(ctx, guest, base + lo, hi - lo)
    if booted is None:
        return
    ctx.check_true(booted.verified, "the image verified")
    run_until_finished(guest.vcpus[0])
    booted.end = guest_end(guest.vcpus[0])
    ctx.diag(f"end: {booted.end.describe()}")
    ctx.check_eq(booted.end.kind, "payload", f"how the guest ended: {booted.end.describe()}")
    ctx.check_eq(ctx.sim.large_folio_bytes(base + lo, hi - lo), 0, "large folios left unsplit")
    ctx.diag(f"written back before a split: {ctx.sim.written_back_bytes()} bytes")
    info = sim_vm(ctx, guest.vm)
    ctx.check_eq(info.secure_bytes, info.memslot_bytes, "secure bytes after the boot")


def _protect_bounded(
    ctx: CheckContext, guest: PvVm, addr: int, length: int
) -> Optional[ProtectedBoot]:
    """QEMU's s390_machine_protect() on its own thread, bounded; None if it failed (FAIL
    recorded), CheckFailed if it hung (FAIL recorded, the thread stopped).

    kvm_s390_pv_unpack() retries -EAGAIN until a *fatal* signal
    ('if (fatal_signal_pending(current)) break;'), so an UNPACK that never
    progresses cannot be interrupted, only killed: issued on the check's own
    thread it would hang the check.  The watchdog calls it hung after
    ``UNPACK_BOUND_S``, or (simulator) after ``UNPACK_SPIN_LIMIT`` retries
    without a split of the large folios in [addr, addr + length), and stops the
    thread the one way the kernel allows, a fatal signal for that thread
    (``deliver_fatal_signal``: the real thread would die with its process;
    this one's signal is cleared once it has ended).  Nothing is left
    behind: the thread has ended before the check returns, and the VM is
    closed by the cleanup.
    """
    assert ctx.image is not None
    image = ctx.image
    reset_vcpus(guest.vcpus)
    signalled: list[int] = []
    # deferred before the thread's join, so it runs after it (LIFO)
    ctx.defer(lambda: [ctx.sim.clear_fatal_signal(tid) for tid in signalled])
    worker = ctx.thread(lambda: s390_machine_protect(guest.vm, image, guest.vcpus), "qemu-main")

    def stop() -> None:  # also the cleanup's way (a SIGINT while the watchdog waits)
        tid = worker.native_id
        assert tid is not None  # started by ctx.thread()
        signalled.append(tid)
        ctx.sim.deliver_fatal_signal(tid)

    worker.kick = stop
    deadline = time.monotonic() + UNPACK_BOUND_S
    spins, left = ctx.sim.unpack_retries(), ctx.sim.large_folio_bytes(addr, length)
    hung = ""
    while not hung and not worker.done.wait(0.01):
        retries, now_left = ctx.sim.unpack_retries(), ctx.sim.large_folio_bytes(addr, length)
        if now_left != left:
            spins, left = retries, now_left
        elif retries - spins >= UNPACK_SPIN_LIMIT:
            hung = f"{retries - spins} retries of a page, no large folio split"
        if time.monotonic() > deadline:
            hung = f"no return within {UNPACK_BOUND_S:g} s"
    if hung:
        worker.kick()
        stopped = worker.done.wait(30.0)
        how = f"stopped by a fatal signal: {worker.error}" if stopped else "not even stopped"
        ctx.fail_soft(f"the protected boot hung in UNPACK ({hung}); {how}")
        raise CheckFailed(f"the protected boot hung in UNPACK ({hung})")
    try:
        booted: ProtectedBoot = worker.wait(0)
    except BootError as exc:
        ctx.check_true(False, f"the image with dirty file folios booted: {exc}")
        return None
    for step in booted.steps:
        ctx.diag(f"boot {step.step}: {step.to_dict()}")
    return booted


#: The service signal's external interruption code (KVM_S390_INT_SERVICE's low half).
EXT_IRQ_SERVICE_SIG = uapi.KVM_S390_INT_SERVICE & 0xFFFF


@check(
    "service_event_bits_as_injected",
    spec="10.2, 10.3",
    needs_image=True,
    sim_only="what a protected guest receives is in its encrypted lowcore: only the simulated "
    "guest reports the parameter (kvmpv's payload takes no interrupts, a pvimg loader "
    "reports none)",
    guards=("85a19b305427",),
)
def check_service_event_bits(ctx: CheckContext) -> None:
    """A service signal injected for a protected guest with one event-pending bit reaches the
    guest with exactly that bit, before its SCCB answer; with none, the guest sees none.

    The loader's SCLP call is answered as QEMU answers it, the service signal
    (KVM_S390_INTERRUPT, KVM_S390_INT_SERVICE) carrying SCLP_PV_DUMMY_ADDR
    and the event bit under test (QEMU's sclp_service_interrupt() sets 0x1
    when an event is pending).  __inject_service() keeps the bits apart from
    the SCCB address and __deliver_service_ev() passes them on; before
    commit 85a19b305427 (v6.9) it wrote both bits (SCCB_EVENT_PENDING, 0x3)
    whichever was set, and the guest's SCLP driver was told of events nobody
    signalled.  The guest's report: ``guest_ext_interrupts()``.
    """
    assert ctx.image is not None
    sccb_mask = ~SCLP_EVENT_PENDING_BITS & 0xFFFFFFFF
    for events in (0x1, 0x2, 0x0):
        guest = image_vm(ctx)
        vcpu = guest.vcpus[0]
        reset_vcpus(guest.vcpus)
        s390_machine_protect(guest.vm, ctx.image, guest.vcpus)
        reason = vcpu.run()
        served = serve_pv_sclp(vcpu, reason, events=events)
        ctx.require(served, f"the loader's SCLP call, not {exit_name(reason)}")
        run_until_finished(vcpu)
        end = guest_end(vcpu)
        ctx.check_eq(end.kind, "payload", f"how the guest ended: {end.describe()}")
        got = [p for c, p in ctx.sim.guest_ext_interrupts(vcpu.fd) if c == EXT_IRQ_SERVICE_SIG]
        ctx.diag(f"injected {events:#x}: the guest took {[hex(p) for p in got]}")
        bits = [hex(p & SCLP_EVENT_PENDING_BITS) for p in got if p & SCLP_EVENT_PENDING_BITS]
        want = [hex(events)] if events else []
        ctx.check_eq(bits, want, f"event bits the guest received (injected {events:#x})")
        answers = sum(1 for p in got if p & sccb_mask)
        ctx.check_eq(answers, 1, f"SCCB answers the guest received (injected {events:#x})")


#: How long ``extint_loop_exits_to_userspace`` lets KVM_RUN run before a watchdog
#: kicks it: the fixed kernel returns as soon as the guest loops (the simulated boot of
#: its 8 MiB takes milliseconds); the bug never returns by itself.
EXTINT_BOUND_S = 2.0
#: Intercept code 20 (arch/s390/kvm/kvm-s390.h ICPT_EXTINT): an external interruption.
ICPT_EXTINT = 0x14
#: The PSW's external-interrupt mask bit (bit 7).
PSW_MASK_EXT = 1 << (63 - 7)


def _run_bounded(vcpu: Vcpu, bound: float) -> tuple[str, int]:
    """KVM_RUN until an exit other than the loader's SCLP call, a watchdog kicking the vCPU
    after ``bound`` seconds; returns ("exit", exit reason) or ("EINTR", KVM_EXIT_INTR)."""
    watchdog = threading.Timer(bound, vcpu.kick)
    watchdog.start()
    try:
        while True:
            try:
                vcpu.sys.ioctl(vcpu.fd, uapi.KVM_RUN, 0)
            except OSError as err:
                if err.errno != errno.EINTR:
                    raise
                return "EINTR", uapi.KVM_EXIT_INTR
            reason = vcpu.exit_reason
            if not serve_pv_sclp(vcpu, reason):
                return "exit", reason
    finally:
        watchdog.cancel()
        watchdog.join()


@check(
    "extint_loop_exits_to_userspace",
    spec="10.2",
    needs_image=True,
    sim_only="needs a protected guest that loops on its clock comparator (kvm-unit-tests' "
    "s390x extint-loop test as an SE image); kvmpv's payload and a pvimg loader arm none",
    guards=("21f27df85400",),
)
def check_extint_loop(ctx: CheckContext) -> None:
    """A protected guest whose external new PSW enables external interrupts, with its clock
    comparator armed, loops: KVM_RUN returns KVM_EXIT_S390_SIEIC, icptcode 20, within a bound.

    handle_external_interrupt() drops to userspace when the new PSW of a
    clock-comparator or CPU-timer interruption enables external interrupts
    again.  Since commit 21f27df85400 (v6.3) it takes a protected CPU's new
    PSW from the state description (the UV swapped the PSWs before it
    intercepted); before it, it read the encrypted lowcore, missed the loop,
    injected the interruption again and re-entered SIE: KVM_RUN returned
    only when a signal kicked it (here a watchdog after EXTINT_BOUND_S,
    EINTR, the failure).
    """
    assert ctx.image is not None
    guest = image_vm(ctx)
    vcpu = guest.vcpus[0]
    ctx.sim.guest_extint_loop(vcpu.fd)
    reset_vcpus(guest.vcpus)
    s390_machine_protect(guest.vm, ctx.image, guest.vcpus)
    how, reason = _run_bounded(vcpu, EXTINT_BOUND_S)
    got = exit_name(reason) if how == "exit" else "EINTR (the watchdog's kick)"
    ctx.check_eq(got, "KVM_EXIT_S390_SIEIC", f"KVM_RUN within {EXTINT_BOUND_S:g} s of the loop")
    if how != "exit" or reason != uapi.KVM_EXIT_S390_SIEIC:
        return
    run = vcpu.s390_run()
    ctx.check_eq(hex(int(run.s390_sieic.icptcode)), hex(ICPT_EXTINT), "icptcode (ICPT_EXTINT)")
    mask = int(run.psw_mask)
    ctx.diag(f"PSW in kvm_run: {mask:#018x} {int(run.psw_addr):#x}")
    ctx.check_true(bool(mask & PSW_MASK_EXT), "the PSW (the ext new PSW) enables ext. interrupts")


@check(
    "boot_again_while_perform_runs",
    spec="3.8, 10.3",
    sim_only="holds PERFORM between batches (a simulator gate) while the new guest boots",
)
def check_boot_while_perform(ctx: CheckContext) -> None:
    """A reboot as QEMU does it: boot, PREPARE, and the next protected boot runs to its end
    while PERFORM still tears the old configuration down."""
    guest = image_vm(ctx, sim_high=True)  # PERFORM needs pages above 2 GiB to hold
    protected_boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    gate = "perform:batch"
    performer = _held_perform(ctx, guest.vm, gate)
    assert ctx.image is not None
    load_image(guest.vm, ctx.image)
    booted = protected_boot(ctx, guest)  # the new guest, while PERFORM holds the old one
    ctx.check_true(booted.verified, "the new boot verified while PERFORM runs")
    ctx.check_true(not performer.done.is_set(), "PERFORM was still running during the boot")
    ctx.sim.resume(gate)
    ctx.expect(performer.wait(60))
    check_secure = sim_vm(ctx, guest.vm)
    ctx.check_eq(check_secure.old_secure_bytes, 0, "old secure bytes after PERFORM")


def _held_perform(ctx: CheckContext, vm: Vm, gate: str) -> Worker:
    """PERFORM on QEMU's ``async_cleanup`` thread, held at simulator gate ``gate``
    (released by ``ctx.sim.resume(gate)``, the thread's kick, or the cleanup)."""
    ctx.sim.pause_at(gate)
    ctx.defer(ctx.sim.resume, gate)
    performer = ctx.thread(lambda: pv_cmd(vm, PERFORM, check=False), "async_cleanup")
    performer.kick = lambda: ctx.sim.resume(gate)
    ctx.require(ctx.sim.wait_paused(gate, timeout=30.0), f"PERFORM never reached {gate}")
    return performer


def _late_perform(ctx: CheckContext, vm: Vm) -> tuple[Worker, threading.Event]:
    """QEMU's ``async_cleanup`` thread, started but held before PERFORM until ``go`` is set."""
    go = threading.Event()

    def late_perform() -> PvResult:
        go.wait(60)
        return pv_cmd(vm, PERFORM, check=False)

    late = ctx.thread(late_perform, "async_cleanup")
    late.kick = go.set
    return late, go


@check(
    "second_reboot_while_perform_runs",
    spec="5 (QEMU race), 10.3",
    needs=(Need.PV_ASYNC,),
    needs_image=True,
)
def check_reboot_race_with_image(ctx: CheckContext) -> None:
    """QEMU's race with a booted image: the second reboot's PREPARE is EINVAL while the first
    PERFORM has not run, the fallback DISABLE tears down both, and the image boots again."""
    guest = image_vm(ctx)
    protected_boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    late, go = _late_perform(ctx, guest.vm)
    assert ctx.image is not None
    load_image(guest.vm, ctx.image)
    protected_boot(ctx, guest)
    ctx.expect(ctx.pv(guest.vm, PREPARE), err=errno.EINVAL, rc=0, rrc=0)
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)
    go.set()
    ctx.expect(late.wait(60), err=errno.EINVAL, rc=0, rrc=0)
    if ctx.is_sim:
        check_nothing_left(ctx, "after the fallback DISABLE")
    load_image(guest.vm, ctx.image)
    ctx.check_true(protected_boot(ctx, guest).verified, "the third boot verified")


#: The prefix area of the simulated guests after a reboot: two pages from guest absolute
#: 0 (an initial reset sets the prefix to 0, kvm_s390_set_prefix(); the loader keeps it).
PREFIX_AREA = 2 * 4096


@check(
    "reboot_prefix_discard_guest_runs",
    spec="3.3 step 6, 5, 10.3",
    needs_image=True,
    sim=SimConfig(destroy_fast=False),
    sim_only="MADV_DONTNEED of a running protected guest's prefix pages discards their "
    "contents on a real host (the page is exported and freed; the guest gets a fresh page "
    "back), so a real guest cannot run on after it whatever the kernel; and whether PREPARE "
    "replaces the ASCE is the Ultravisor's choice (no Destroy-Fast)",
    guards=("c2fceb59bbda",),
)
def check_reboot_prefix_discard(ctx: CheckContext) -> None:
    """A reboot as QEMU does it on a UV without Destroy-Fast (PREPARE, or DISABLE where
    PREPARE is refused), then the new guest's prefix pages discarded (MADV_DONTNEED) while
    it runs: KVM is told, maps them again, and the guest runs to its end with no validity
    intercept.  Once with a memory limit of 1 GiB (segment-table ASCE), once without.

    PREPARE without Destroy-Fast gives the gmap a copy of its top-level table
    (s390_replace_asce()).  A discarded prefix page invalidates a PTE with the
    notification bit; ptep_notify() turns the host address back into a guest
    address through the index of the table holding its segment entry, and
    kvm_gmap_notifier() asks the vCPU owning that prefix to map it again
    (KVM_REQ_REFRESH_GUEST_PREFIX).  Before commit c2fceb59bbda (v6.5) the
    copy's page->index was left as allocated: a wrong guest address, the
    request lost, SIE entered with no prefix page, a validity intercept
    (KVM_RUN fails with EINVAL): the guest after the reboot dies.  The copy's
    index is read only when it holds the segment entries, a segment-type ASCE,
    which s390_replace_asce() refuses since commit 292a7d6fca33 (v6.4):
    hence the 1 GiB round (docs/regressions.md).
    """
    for limit in (GiB, None):
        _reboot_discard_prefix(ctx, limit)


def _reboot_discard_prefix(ctx: CheckContext, limit: Optional[int]) -> None:
    assert ctx.image is not None
    what = "memory limit 1 GiB" if limit else "no memory limit"
    guest = make_vm(ctx, high_size=0, mem_limit=limit, enable=False)
    load_image(guest.vm, ctx.image)
    protected_boot(ctx, guest)
    # QEMU's s390_machine_unprotect(): the asynchronous teardown if PREPARE works,
    # else the synchronous DISABLE.
    prepared = ctx.pv(guest.vm, PREPARE).ok
    if not prepared:
        ctx.require_ok(ctx.pv(guest.vm, DISABLE))
    replaced = ctx.sim.asce_replacements(guest.vm.fd)
    ctx.diag(f"{what}: top-level tables s390_replace_asce() made so far: {replaced}")
    load_image(guest.vm, ctx.image)
    reset_vcpus(guest.vcpus)
    s390_machine_protect(guest.vm, ctx.image, guest.vcpus)
    vcpu = guest.vcpus[0]
    validity = ctx.sim.validity_intercepts()  # the host's count: this round's are the rest
    discarded = False
    while True:
        try:
            reason = vcpu.run()
        except KvmError as exc:
            ctx.fail_soft(
                f"{what}: the guest after the reboot, its prefix pages discarded: {exc} "
                f"(validity intercepts: {ctx.sim.validity_intercepts() - validity})"
            )
            return
        if guest_finished(vcpu, reason):
            break
        if not discarded:
            # While the guest waits for its SCLP answer: it has run, its prefix is mapped.
            ctx.sim.madvise(guest.low.addr + LOW_GPA, PREFIX_AREA, MADV_DONTNEED)
            discarded = True
            ctx.check_true(
                ctx.sim.prefix_refreshes_pending(vcpu.fd),
                f"{what}: KVM asked the vCPU to map its discarded prefix pages again",
            )
        if serve_pv_sclp(vcpu, reason):
            continue
        ctx.check_true(False, f"{what}: unexpected exit {exit_name(reason)}")
        return
    ctx.check_true(discarded, f"{what}: the prefix pages were discarded while the guest ran")
    end = guest_end(vcpu)
    ctx.check_eq(end.kind, "payload", f"{what}: how the guest ended: {end.describe()}")
    ctx.check_eq(ctx.sim.validity_intercepts() - validity, 0, f"{what}: validity intercepts")
    info = sim_vm(ctx, guest.vm)
    ctx.check_eq(info.secure_bytes, info.memslot_bytes, f"{what}: secure bytes after the boot")
    if prepared:
        ctx.require_ok(ctx.pv(guest.vm, PERFORM))


# ---------------------------------------------------------------------------
# Table 3.9: PREPARE
# ---------------------------------------------------------------------------


@check("prepare_success", spec="3.3, 3.9 row 1", needs=(Need.PV_ASYNC,))
def check_prepare_success(ctx: CheckContext) -> None:
    """PREPARE on a protected VM returns 0 with the synthetic rc 1 / rrc 42.

    On the simulator it also shows step 7: the pages below 2 GiB are destroyed
    synchronously, while those above stay secure until PERFORM.
    """
    guest = make_vm(ctx, vcpus=2)
    booted = boot(ctx, guest)
    res = ctx.pv(guest.vm, PREPARE)
    ctx.expect(res, rc=SYNTH_RC, rrc=SYNTH_RRC)
    if booted:
        info = sim_vm(ctx, guest.vm)
        ctx.diag(f"after PREPARE: {info}")
        ctx.check_eq(info.protected, False, "VM protected after PREPARE")
        ctx.check_eq(info.protected_vcpus, 0, "protected vCPUs after PREPARE")
        ctx.check_true(info.set_aside, "a configuration is set aside")
        # Step 7: only the pages below 2 GiB went synchronously.
        ctx.check_eq(info.old_secure_bytes, HIGH_SIZE, "old secure bytes (= those above 2 GiB)")
    ctx.expect(ctx.pv(guest.vm, PERFORM), rc=None)


@check("prepare_unprotects_vm", spec="3.3 (after success)", needs=(Need.PV_ASYNC,))
def check_prepare_unprotects(ctx: CheckContext) -> None:
    """After PREPARE the VM is an ordinary VM: memslots may change, DISABLE has nothing, ENABLE
    works.

    DISABLE needs a *current* configuration (EINVAL) and must not touch the
    set-aside one, which PERFORM then still finds (spec 3.5).
    """
    guest = make_vm(ctx)
    # Spec 3.2: a protected VM cannot be enabled twice (no UVC runs: rc/rrc 0).
    ctx.expect(ctx.pv(guest.vm, ENABLE), err=errno.EINVAL, rc=0, rrc=0)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    extra = ctx.memory(MiB)
    ret = guest.vm.set_user_memory_region(2, 4 * GiB, MiB, extra.addr, check=False)
    ctx.check_eq(errno_text(-ret if ret < 0 else 0), "success", "memslot add after PREPARE")
    ctx.expect(ctx.pv(guest.vm, DISABLE), err=errno.EINVAL, rc=0, rrc=0)
    ctx.expect(ctx.pv(guest.vm, PREPARE), err=errno.EINVAL, rc=0, rrc=0)
    ctx.expect(ctx.pv(guest.vm, PERFORM))
    ctx.expect(ctx.pv(guest.vm, ENABLE), rc=1)
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)


@check("prepare_not_protected_einval", spec="3.3 step 1, 3.9 row 2", needs=(Need.PV_ASYNC,))
def check_prepare_not_protected(ctx: CheckContext) -> None:
    """PREPARE on a VM that is not protected (never enabled, or disabled) is EINVAL, rc/rrc
    untouched."""
    guest = make_vm(ctx, enable=False)
    ret, rc, rrc = ctx.pv_raw(guest.vm, PREPARE)
    ctx.check_eq(errno_text(-ret), "EINVAL", "PREPARE on a never-enabled VM")
    ctx.check_eq((rc, rrc), (RC_SENTINEL, RRC_SENTINEL), "rc/rrc untouched")
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    ctx.require_ok(ctx.pv(guest.vm, DISABLE))
    ctx.expect(ctx.pv(guest.vm, PREPARE), err=errno.EINVAL, rc=0, rrc=0)


@check(
    "async_destroy_off",
    spec="2.2, 3.3 step 1, 3.4, 3.9",
    needs=(Need.PV_HOST, Need.ASYNC_OFF),
    sim=SimConfig(async_destroy=False),
)
def check_async_destroy_off(ctx: CheckContext) -> None:
    """With kvm.async_destroy=0: cap 224 is 0, PREPARE and PERFORM are EINVAL, DISABLE works."""
    kvm = ctx.kvm()
    ctx.check_eq(kvm.check_cap(KvmCap.KVM_CAP_S390_PROTECTED), 1, "cap 180")
    ctx.check_eq(kvm.check_cap(KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE), 0, "cap 224")
    guest = make_vm(ctx, kvm=kvm)
    ctx.check_eq(guest.vm.check_cap(KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE), 0, "cap 224 (VM)")
    ctx.expect(ctx.pv(guest.vm, PREPARE), err=errno.EINVAL, rc=0, rrc=0)
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)


@check("prepare_twice_einval", spec="3.3 step 3, 3.9 row 2", needs=(Need.PV_ASYNC,))
def check_prepare_twice(ctx: CheckContext) -> None:
    """At most one set-aside configuration: a second PREPARE before PERFORM is EINVAL, rc/rrc 0.

    The refusal comes after the vCPUs were destroyed; the remedy is DISABLE,
    which tears down both configurations (then PERFORM finds nothing).
    """
    guest = make_vm(ctx)
    boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    ctx.expect(ctx.pv(guest.vm, PREPARE), err=errno.EINVAL, rc=0, rrc=0)
    if ctx.is_sim:
        # Step 2 (destroy the vCPUs) ran before step 3 refused.
        info = sim_vm(ctx, guest.vm)
        ctx.check_eq(info.protected, True, "VM still protected after the refused PREPARE")
        ctx.check_eq(info.protected_vcpus, 0, "protected vCPUs after the refused PREPARE")
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)
    if ctx.is_sim:
        check_nothing_left(ctx, "after DISABLE")


@check(
    "prepare_mem_limit_2g_einval",
    spec="3.3 step 4, 3.10, FIX2G",
    needs=(Need.PV_ASYNC,),
    guards=("292a7d6fca33",),
)
def check_mem_limit(ctx: CheckContext) -> None:
    """A VM memory limit <= 2 GiB (segment-table ASCE) makes PREPARE EINVAL; 2 GiB + 1 MiB works.

    KVM_S390_VM_MEM_LIMIT_SIZE = 2 GiB gives a segment ASCE (commit
    292a7d6fca33); DISABLE is the remedy.  QEMU >= 10 does not even try
    PREPARE at this size.
    """
    small = make_vm(ctx, high_size=0, mem_limit=2 * GiB)
    ctx.expect(ctx.pv(small.vm, PREPARE), err=errno.EINVAL, rc=0, rrc=0)
    if ctx.is_sim:
        info = sim_vm(ctx, small.vm)
        ctx.diag(f"gmap: limit {info.gmap_limit:#x}, ASCE {info.asce_type}")
        ctx.check_eq(info.asce_type, "segment", "ASCE type with a 2 GiB limit")
        ctx.check_eq(info.protected, True, "VM still protected after the refused PREPARE")
        ctx.check_eq(info.set_aside, False, "nothing set aside after the refused PREPARE")
    ctx.expect(ctx.pv(small.vm, DISABLE), rc=1)
    ctx.expect(ctx.pv(small.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)
    big = make_vm(ctx, high_size=0, mem_limit=2 * GiB + MiB)
    ctx.expect(ctx.pv(big.vm, PREPARE), rc=SYNTH_RC, rrc=SYNTH_RRC)
    ctx.expect(ctx.pv(big.vm, PERFORM))


@check("mem_limit_busy_after_vcpu", spec="3.10", needs=(Need.S390,))
def check_mem_limit_busy(ctx: CheckContext) -> None:
    """KVM_S390_VM_MEM_LIMIT_SIZE can be set only before the first vCPU: EBUSY afterwards."""
    vm = ctx.vm()
    ctx.check_eq(vm.s390_set_mem_limit(4 * GiB, check=False), 0, "limit before any vCPU")
    vm.vcpu_add(0)
    ret = vm.s390_set_mem_limit(2 * GiB, check=False)
    ctx.check_eq(errno_text(-ret if ret < 0 else 0), "EBUSY", "limit after the first vCPU")


#: What a kernel without commit 7b53b4801884 (v7.1) is told when a check sees the old rule.
LACKS_7B53 = (
    "the kernel lacks fix 7b53b4801884 (v7.1, 'KVM: s390: Prevent memslots outside the ASCE range')"
)


@check(
    "memslots_inside_asce_range",
    spec="1.2, 3.10",
    needs=(Need.S390,),
    guards=("7b53b4801884",),
)
def check_memslots_asce_range(ctx: CheckContext) -> None:
    """Memslots stay inside the VM's ASCE range: KVM_S390_VM_MEM_LIMIT_SIZE below the end of
    an existing memslot is EBUSY, and a memslot beyond what a 2 GiB limit's segment table maps
    is EINVAL (both before the first vCPU; commit 7b53b4801884, v7.1).

    Before the fix kvm_s390_set_mem_control() made the smaller gmap and left
    the memslot outside it, and kvm_arch_prepare_memory_region() compared a
    new slot only with kvm->arch.mem_limit (the host's maximum, which the
    attribute does not change); the ASCE type that limit selects is what
    PREPARE looks at (commit 292a7d6fca33).  On an older kernel this check
    fails with "lacks fix 7b53b4801884": a kernel developer's answer, not
    kvmpv's.
    """
    mem = ctx.memory(8 * MiB)
    # 1. a memslot ending at 4 GiB, then limits below and at its end
    vm = ctx.vm()
    vm.set_user_memory_region(0, 4 * GiB - mem.size, mem.size, mem.addr)
    got = vm.s390_set_mem_limit(2 * GiB, check=False)
    ctx.check_true(
        got != 0,
        f"{LACKS_7B53}: a 2 GiB limit under a memslot ending at 4 GiB "
        "was accepted (EBUSY expected)",
    )
    if got:
        ctx.check_eq(errno_text(-got), "EBUSY", "a 2 GiB limit under a memslot ending at 4 GiB")
    got = vm.s390_set_mem_limit(4 * GiB - MiB, check=False)
    ctx.check_eq(errno_text(-got if got < 0 else 0), "EBUSY", "a limit 1 MiB below the slot's end")
    got = vm.s390_set_mem_limit(4 * GiB, check=False)
    ctx.check_eq(errno_text(-got if got < 0 else 0), "success", "a limit at the slot's end")
    vm.close()
    # 2. a 2 GiB limit (segment table: 2 GiB mapped), then memslots up to and beyond it
    vm = ctx.vm()
    ctx.check_eq(vm.s390_set_mem_limit(2 * GiB, check=False), 0, "a 2 GiB limit, no memslot")
    got = vm.set_user_memory_region(0, 2 * GiB, mem.size, mem.addr, check=False)
    ctx.check_true(
        got != 0,
        f"{LACKS_7B53}: a memslot at 2 GiB, beyond the segment table of "
        "a 2 GiB limit, was accepted (EINVAL expected)",
    )
    if got:
        ctx.check_eq(errno_text(-got), "EINVAL", "a memslot beyond a 2 GiB limit's ASCE")
    else:
        vm.mem_remove(0, check=False)
    got = vm.set_user_memory_region(0, 2 * GiB - mem.size, mem.size, mem.addr, check=False)
    ctx.check_eq(errno_text(-got if got < 0 else 0), "success", "a memslot ending at 2 GiB")
    if ctx.is_sim:
        ctx.check_eq(sim_vm(ctx, vm).asce_type, "segment", "ASCE type with a 2 GiB limit")
    vm.close()


def _set_tod(vm: Vm, attr: int, value: int) -> str:
    """KVM_SET_DEVICE_ATTR(KVM_S390_VM_TOD, attr) with ``value``: "success" or the errno name."""
    # One buffer serves all three attributes: HIGH reads its first byte (0),
    # LOW the first u64, EXT struct kvm_s390_vm_tod_clock (epoch_idx 0 at
    # offset 0, tod at offset 8).
    buf = (ctypes.c_uint64 * 2)(value if attr == uapi.KVM_S390_VM_TOD_LOW else 0, value)
    ret = vm.set_device_attr(uapi.KVM_S390_VM_TOD, attr, ctypes.addressof(buf), check=False)
    return errno_text(-ret if ret < 0 else 0)


@check(
    "set_tod_refused_while_protected",
    spec="3.2, 4",
    needs=(Need.PV_HOST,),
    guards=("6973091d1b50",),
)
def check_set_tod(ctx: CheckContext) -> None:
    """Setting the guest TOD (KVM_S390_VM_TOD LOW, HIGH, EXT) of a protected VM is EOPNOTSUPP;
    before ENABLE and after DISABLE it works.

    The Ultravisor owns a protected guest's clock and ignores the epoch KVM
    writes into the state descriptions, so since commit 6973091d1b50 (v6.1)
    kvm_s390_set_tod() refuses while kvm_s390_pv_is_protected(); before it
    the set succeeded and KVM's idea of the guest clock went wrong (a guest
    waiting for its clock comparator could sleep far longer).  Runs on a real
    PV host as well.
    """
    tod = 1 << 52  # any value: the clock never runs in the check
    guest = make_vm(ctx, enable=False)
    ctx.check_eq(_set_tod(guest.vm, uapi.KVM_S390_VM_TOD_LOW, tod), "success", "TOD before ENABLE")
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    for attr, name in (
        (uapi.KVM_S390_VM_TOD_LOW, "LOW"),
        (uapi.KVM_S390_VM_TOD_HIGH, "HIGH"),
        (uapi.KVM_S390_VM_TOD_EXT, "EXT"),
    ):
        got = _set_tod(guest.vm, attr, tod)
        # EOPNOTSUPP and ENOTSUP are the same number on Linux (95)
        want = errno_text(errno.EOPNOTSUPP)
        ctx.check_eq(got, want, f"TOD {name} of a protected VM (EOPNOTSUPP)")
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)
    ctx.check_eq(_set_tod(guest.vm, uapi.KVM_S390_VM_TOD_LOW, tod), "success", "TOD after DISABLE")


@check(
    "enable_signal_pending_eintr",
    spec="3.1, 3.2",
    sim_only="a signal pending at a chosen point of ENABLE (a real thread handles it on the way "
    "back to user space, so only a racing sender could hit the window)",
    guards=("185d903064f8",),
)
def check_enable_signal_pending(ctx: CheckContext) -> None:
    """ENABLE with a signal pending fails with EINTR before any UV call (rc/rrc untouched,
    nothing created); the retry works, and the notifier, once registered, never fails again.

    kvm_s390_pv_init_vm() registers its mmu notifier on the VM's first ENABLE;
    mmu_notifier_register() fails with EINTR while a signal is pending.  Since
    commit 185d903064f8 (v6.17) that error is returned before the
    configuration is created (api.rst lists EINTR for ENABLE; QEMU retries);
    before it the error was ignored, ENABLE returned 0 with no notifier, and
    destroying the VM later dropped the mm once too often.
    """
    tid = threading.get_native_id()
    guest = make_vm(ctx, enable=False)
    ctx.sim.deliver_signal(tid)
    ret, rc, rrc = ctx.pv_raw(guest.vm, int(ENABLE))
    ctx.check_eq(errno_text(-ret if ret < 0 else 0), "EINTR", "ENABLE with a signal pending")
    ctx.check_eq((hex(rc), hex(rrc)), (hex(RC_SENTINEL), hex(RRC_SENTINEL)), "rc/rrc untouched")
    ctx.check_eq(ctx.sim.configs(), [], "secure configurations after the interrupted ENABLE")
    ctx.check_eq(sim_vm(ctx, guest.vm).protected, False, "VM protected after EINTR")
    ctx.expect(ctx.pv(guest.vm, ENABLE), rc=1)  # the retry
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)
    # Registered once per VM: a later ENABLE does not register again.
    ctx.sim.deliver_signal(tid)
    ctx.expect(ctx.pv(guest.vm, ENABLE), rc=1)
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)
    guest.vm.close()
    check_nothing_left(ctx, "after close")


@check(
    "prepare_vcpu_destroy_eio",
    spec="3.3 step 2, 3.9 row 3",
    sim_only="fault injection of Destroy Secure CPU (UVC 0x0121)",
)
def check_prepare_vcpu_eio(ctx: CheckContext) -> None:
    """A failing Destroy Secure CPU makes PREPARE EIO with that UVC's rc/rrc; DISABLE recovers.

    The configuration stays current (nothing was set aside), so DISABLE works
    and PERFORM finds nothing.
    """
    guest = make_vm(ctx, vcpus=2)
    ctx.sim.inject_uv_failure(uapi.UVC_CMD_DESTROY_SEC_CPU, 0x0105, 0x0033)
    ctx.expect(ctx.pv(guest.vm, PREPARE), err=errno.EIO, rc=0x0105, rrc=0x0033)
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)


@check(
    "prepare_fast_destroy_eio",
    spec="3.3 step 6, 3.9 row 4",
    sim=SimConfig(destroy_fast=True),
    sim_only="fault injection of Destroy Secure Configuration Fast (UVC 0x0102)",
)
def check_prepare_fast_eio(ctx: CheckContext) -> None:
    """A failing Destroy-Fast makes PREPARE EIO with rc/rrc of UVC 0x0102; DISABLE recovers."""
    guest = make_vm(ctx)
    ctx.sim.inject_uv_failure(uapi.UVC_CMD_DESTROY_SEC_CONF_FAST, 0x0104, 0x0002)
    ctx.expect(ctx.pv(guest.vm, PREPARE), err=errno.EIO, rc=0x0104, rrc=0x0002)
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)


# ---------------------------------------------------------------------------
# Table 3.9: PERFORM
# ---------------------------------------------------------------------------


@check(
    "perform_success_rc",
    spec="3.4, 3.9 row 6",
    needs=(Need.PV_ASYNC, Need.NO_FAST),
    sim=SimConfig(destroy_fast=False),
)
def check_perform_success(ctx: CheckContext) -> None:
    """PERFORM (no Destroy-Fast) returns 0 with the Destroy Secure Configuration rc 1 / rrc 0.

    On the simulator it also shows the work: every old page above 2 GiB is
    destroyed (cleared) by PERFORM, in the calling thread.
    """
    guest = make_vm(ctx)
    booted = boot(ctx, guest)
    if booted and guest.high is not None:
        guest.high.fill(0xA5)  # stands for guest data in the secure pages
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    ctx.expect(ctx.pv(guest.vm, PERFORM), rc=1, rrc=0)
    if booted and guest.high is not None:
        ctx.check_eq(zero_fraction(guest.high), 1.0, "share of old guest memory cleared")
        ctx.check_eq(sim_vm(ctx, guest.vm).old_secure_bytes, 0, "old secure bytes after PERFORM")
        check_nothing_left(ctx, "after PERFORM")


@check(
    "perform_fast_rc_untouched",
    spec="3.4, 3.9 row 7",
    needs=(Need.PV_ASYNC, Need.FAST),
    sim=SimConfig(destroy_fast=True),
)
def check_perform_fast(ctx: CheckContext) -> None:
    """With Destroy-Fast, PREPARE already destroyed the configuration: PERFORM 0, rc/rrc 0."""
    guest = make_vm(ctx)
    boot(ctx, guest)
    ctx.expect(ctx.pv(guest.vm, PREPARE), rc=SYNTH_RC, rrc=SYNTH_RRC)
    ctx.expect(ctx.pv(guest.vm, PERFORM), rc=0, rrc=0)


@check(
    "perform_nothing_set_aside_einval",
    spec="3.4, 3.9 row 9",
    needs=(Need.PV_ASYNC,),
)
def check_perform_nothing(ctx: CheckContext) -> None:
    """PERFORM with nothing set aside (before PREPARE, or a second time) is EINVAL, rc/rrc
    untouched."""
    guest = make_vm(ctx)
    ret, rc, rrc = ctx.pv_raw(guest.vm, PERFORM)
    ctx.check_eq(errno_text(-ret), "EINVAL", "PERFORM before any PREPARE")
    ctx.check_eq((rc, rrc), (RC_SENTINEL, RRC_SENTINEL), "rc/rrc untouched")
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    ctx.require_ok(ctx.pv(guest.vm, PERFORM))
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)


@check(
    "perform_destroy_eio",
    spec="3.4, 3.9 row 10",
    sim=SimConfig(destroy_fast=False),
    sim_only="fault injection of Destroy Secure Configuration (UVC 0x0101)",
)
def check_perform_eio(ctx: CheckContext) -> None:
    """A failing Destroy Secure Configuration makes PERFORM EIO with its rc/rrc; the record is gone.

    The kernel leaks the donated storage on purpose; a second PERFORM finds
    nothing (EINVAL).
    """
    guest = make_vm(ctx)
    boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    ctx.sim.inject_uv_failure(uapi.UVC_CMD_DESTROY_SEC_CONF, 0x0106, 0x0011)
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EIO, rc=0x0106, rrc=0x0011)
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)


@check(
    "perform_fatal_signal",
    spec="3.4, 3.9 row 8",
    sim_only="a fatal signal would kill kvmpv itself on a real kernel",
)
def check_perform_fatal_signal(ctx: CheckContext) -> None:
    """PERFORM hit by a fatal signal stops, returns 0 with rc 1 / rrc 42; the leftover is cleaned
    later.

    The record goes to need_cleanup; DISABLE of the next configuration (or
    closing the VM) destroys it.
    """
    # Two batches of the simulator's walk (64 MiB each): the signal is seen
    # after the first, so half of the old pages are left for later.
    guest = make_vm(ctx, high_size=128 * MiB)
    boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    _arm_fatal_signal(ctx)
    ctx.expect(ctx.pv(guest.vm, PERFORM), rc=SYNTH_RC, rrc=SYNTH_RRC)
    ctx.sim.clear_fatal_signal(threading.get_native_id())
    info = sim_vm(ctx, guest.vm)
    ctx.diag(f"after the interrupted PERFORM: {info}")
    ctx.check_eq(info.need_cleanup, 1, "records on need_cleanup")
    ctx.check_true(info.old_secure_bytes > 0, "old pages left for a later cleanup")
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)
    check_nothing_left(ctx, "after DISABLE")


def _arm_fatal_signal(ctx: CheckContext) -> None:
    """Make the next PERFORM in this thread see a fatal signal (simulator)."""
    tid = threading.get_native_id()
    ctx.sim.deliver_fatal_signal(tid)
    ctx.defer(ctx.sim.clear_fatal_signal, tid)


# ---------------------------------------------------------------------------
# Other PV commands: INFO, unknown commands, flags, rc/rrc zeroing
# ---------------------------------------------------------------------------


@check("info_without_pv", spec="2.3", needs=(Need.PV_HOST,))
def check_info(ctx: CheckContext) -> None:
    """KVM_PV_INFO works on a VM that is not protected, runs no UVC (rc/rrc 0) and checks len_max.

    len_written is header + payload (80 bytes for KVM_PV_INFO_VM);
    len_max below the header, or below header + payload, is EINVAL.
    """
    vm = ctx.vm()
    info = uapi.kvm_s390_pv_info()
    info.header.id = uapi.pv_cmd_info_id.KVM_PV_INFO_VM
    info.header.len_max = ctypes.sizeof(info)
    res = ctx.pv(vm, INFO, ctypes.addressof(info))
    ctx.expect(res, rc=0, rrc=0)
    ctx.check_eq(info.header.len_written, ctypes.sizeof(info), "len_written")
    ctx.diag(
        f"max_cpus {info.vm.max_cpus} max_guests {info.vm.max_guests} "
        f"inst_calls[0] {info.vm.inst_calls_list[0]:#018x}"
    )
    ctx.check_true(info.vm.max_cpus > 0, "max_cpus > 0")
    for len_max in (ctypes.sizeof(uapi.kvm_s390_pv_info_header) - 1, 16 + 8):
        small = uapi.kvm_s390_pv_info()
        small.header.id = uapi.pv_cmd_info_id.KVM_PV_INFO_VM
        small.header.len_max = len_max
        ctx.expect(ctx.pv(vm, INFO, ctypes.addressof(small)), err=errno.EINVAL, rc=0, rrc=0)


@check("unknown_command_enotty", spec="3.1", needs=(Need.PV_HOST,))
def check_unknown_cmd(ctx: CheckContext) -> None:
    """An unknown PV sub-command is ENOTTY on a PV host, rc/rrc untouched."""
    guest = make_vm(ctx, enable=False)
    for cmd in (11, 0x7FFFFFFF):
        ret, rc, rrc = ctx.pv_raw(guest.vm, cmd)
        ctx.check_eq(errno_text(-ret), "ENOTTY", f"cmd {cmd}")
        ctx.check_eq((rc, rrc), (RC_SENTINEL, RRC_SENTINEL), "rc/rrc untouched")


@check("flags_nonzero_einval", spec="1.3, 3.1", needs=(Need.PV_ASYNC,))
def check_flags(ctx: CheckContext) -> None:
    """flags != 0 is EINVAL before the sub-command runs: ENABLE does not protect, PREPARE does not
    set aside."""
    guest = make_vm(ctx, enable=False)
    ctx.expect(ctx.pv(guest.vm, ENABLE, flags=1), err=errno.EINVAL, rc=0, rrc=0)
    # Still unprotected: PREPARE is EINVAL for that reason, and memslots may change.
    ctx.expect(ctx.pv(guest.vm, PREPARE), err=errno.EINVAL, rc=0, rrc=0)
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    ctx.expect(ctx.pv(guest.vm, PREPARE, flags=0x80000000), err=errno.EINVAL, rc=0, rrc=0)
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)  # nothing set aside
    ctx.expect(ctx.pv(guest.vm, PREPARE), rc=SYNTH_RC, rrc=SYNTH_RRC)
    ctx.expect(ctx.pv(guest.vm, PERFORM))


@check("rc_rrc_written_only_by_uvc", spec="3.1 (api.rst)", needs=(Need.PV_ASYNC,))
def check_rc_rrc(ctx: CheckContext) -> None:
    """KVM writes rc/rrc only when a UVC ran, so callers must zero them (kvmpv.pv does).

    Commands that fail before any UVC leave a preloaded rc/rrc as it was;
    ENABLE (Create Secure Configuration) overwrites it with the UV's values.
    """
    guest = make_vm(ctx, enable=False)
    for cmd in (PREPARE, PERFORM, DISABLE):
        ret, rc, rrc = ctx.pv_raw(guest.vm, int(cmd))
        ctx.check_eq(errno_text(-ret), "EINVAL", f"{cmd.name} on an unprotected VM")
        ctx.check_eq((rc, rrc), (RC_SENTINEL, RRC_SENTINEL), f"{cmd.name} rc/rrc untouched")
        ctx.expect(ctx.pv(guest.vm, cmd), err=errno.EINVAL, rc=0, rrc=0)
    ret, rc, rrc = ctx.pv_raw(guest.vm, int(ENABLE))
    ctx.check_eq(ret, 0, "ENABLE")
    ctx.check_eq(rc, uapi.UVC_RC_EXECUTED, "ENABLE rc written by the UVC")
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)


# ---------------------------------------------------------------------------
# Ordering and concurrency
# ---------------------------------------------------------------------------


#: Guest memory above 2 GiB for the real-kernel run of prepare_blocks_while_vcpu_in_run
#: (in one memslot from 0): enough that the protected guest is still importing pages
#: when PREPARE comes.
REAL_RUNNING_GUEST = 1 << 30


@check(
    "prepare_blocks_while_vcpu_in_run",
    spec="3.3 step 2 (vcpu->mutex), 3.10",
    needs=(Need.PV_ASYNC,),
    needs_image=True,
)
def check_prepare_blocks(ctx: CheckContext) -> None:
    """PREPARE waits for a vCPU inside KVM_RUN (it takes vcpu->mutex), and completes once the vCPU
    is kicked.

    The booted image's guest is kept inside KVM_RUN: on the simulator at a gate
    after its first slice of memory, on a real host by giving it 1 GiB above
    2 GiB to import (if it still finishes before PREPARE starts, the check
    says SKIP: it could not observe the wait).  The kick is QEMU's:
    ``immediate_exit`` and a signal to the vCPU thread.
    """
    # One large memslot from 0 (a protected guest cannot run over a hole):
    # on a real host 1 GiB above 2 GiB keeps the guest importing long enough.
    low = LOW_SIZE if ctx.is_sim else 2 * GiB + REAL_RUNNING_GUEST
    guest = make_vm(ctx, low_size=low, high_size=0, enable=False)
    assert ctx.image is not None
    load_image(guest.vm, ctx.image)
    vcpu = guest.vcpus[0]
    reset_vcpus(guest.vcpus)
    s390_machine_protect(guest.vm, ctx.image, guest.vcpus)
    # The image's loader comes first and calls SCLP (stage3b's console):
    # serve it here, so that the thread below runs the guest proper.
    first = vcpu.run()
    if not serve_pv_sclp(vcpu, first):
        ctx.skip(f"the guest's first exit was {exit_name(first)}, not its loader's SCLP call")
    gate = "run:slice"
    if ctx.is_sim:
        ctx.sim.pause_at(gate)
        ctx.defer(ctx.sim.resume, gate)
    else:
        ensure_kick_handler()  # the signal must find a handler (main thread)

    def kick() -> None:
        vcpu.kick()  # immediate_exit + the signal, as QEMU kicks a vCPU
        if ctx.is_sim:
            ctx.sim.resume(gate)  # and let the held slice end, so the kick is seen

    def run() -> int:
        vcpu.thread = threading.get_ident()  # where vcpu.kick() sends the signal
        return _run_once(vcpu)

    runner = ctx.thread(run, "vcpu0")
    runner.kick = kick
    if ctx.is_sim:
        ctx.require(ctx.sim.wait_paused(gate, timeout=10.0), "the vCPU never entered KVM_RUN")
        _wait_in_run(ctx, vcpu)
    else:
        time.sleep(0.05)
        if runner.done.is_set():
            ctx.skip("the guest finished before PREPARE could be started; nothing to observe")
    preparer = ctx.thread(lambda: pv_cmd(guest.vm, PREPARE, check=False), "prepare")
    preparer.kick = runner.kick  # a PREPARE stuck on the vCPU mutex needs the vCPU out
    if ctx.is_sim:
        # The simulator counts the threads blocked on a vCPU mutex: wait for
        # PREPARE to be one (no guess from elapsed time); it cannot go on
        # while the vCPU is held inside KVM_RUN at the gate.
        waited = ctx.sim.wait_blocked(guest.vm.fd, vcpu_mutex=1, timeout=2.0)
        blocked = waited and not preparer.done.is_set()
    else:
        blocked = not preparer.done.wait(0.3)
    ctx.check_true(blocked, "PREPARE returned while a vCPU was in KVM_RUN")
    if ctx.is_sim:
        info = sim_vm(ctx, guest.vm)
        ctx.diag(
            f"PREPARE blocked {blocked}, vCPUs in KVM_RUN {info.vcpus_in_run}, "
            f"waiters on a vCPU mutex {info.vcpu_mutex_waiters}"
        )
        ctx.check_eq(info.vcpu_mutex_waiters, 1, "threads waiting for the vCPU mutex (PREPARE)")
    kick()
    exit_reason = runner.wait(30)
    ctx.check_eq(exit_name(exit_reason), "KVM_EXIT_INTR", "vCPU exit after the kick")
    res = preparer.wait(120)
    ctx.diag(f"PREPARE (after the kick): {describe(res)}")
    ctx.expect(res, rc=SYNTH_RC, rrc=SYNTH_RRC)
    ctx.check_true(preparer.finished_at >= runner.finished_at, "PREPARE finished after KVM_RUN")
    ctx.expect(ctx.pv(guest.vm, PERFORM))


def _run_once(vcpu: Vcpu) -> int:
    """One KVM_RUN; EINTR (the kick) is the expected way out."""
    try:
        vcpu.sys.ioctl(vcpu.fd, uapi.KVM_RUN, 0)
    except OSError as err:
        if err.errno != errno.EINTR:
            raise
    return vcpu.exit_reason


def _wait_in_run(ctx: CheckContext, vcpu: Vcpu, timeout: float = 5.0) -> None:
    """Wait until the vCPU thread is inside KVM_RUN (the simulator says so, else a grace period)."""
    deadline = time.monotonic() + timeout
    while not ctx.sim.vcpu_in_run(vcpu.fd):
        if time.monotonic() > deadline:
            raise CheckFailed("the vCPU thread never entered KVM_RUN")
        time.sleep(0.002)


@check(
    "enable_while_perform_runs",
    spec="3.2, 3.4, 3.8",
    needs=(Need.PV_ASYNC,),
)
def check_enable_during_perform(ctx: CheckContext) -> None:
    """PERFORM holds no lock while it works: a new ENABLE (and the new guest) proceed meanwhile.

    The reboot flow of spec 3.8: PREPARE, PERFORM on a thread named
    async_cleanup, ENABLE of the next configuration while the old pages are
    still being destroyed.  On the simulator PERFORM is held between two
    batches of its walk (a debugging gate), so the overlap is certain; the new
    guest then boots in the same memory, taking over old pages through
    secure-storage faults, and PERFORM finishes the rest.  On a real kernel
    both calls must succeed; whether they overlapped is reported.
    """
    guest = make_vm(ctx, high_size=_perform_memory(ctx))
    booted = boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    gate = "perform:batch"
    if ctx.is_sim:
        ctx.sim.pause_at(gate)
        ctx.defer(ctx.sim.resume, gate)  # never leave PERFORM parked
    cleaner = ctx.thread(lambda: pv_cmd(guest.vm, PERFORM, check=False), "async_cleanup")
    if ctx.is_sim:
        cleaner.kick = lambda: ctx.sim.resume(gate)
        ctx.require(ctx.sim.wait_paused(gate, timeout=30), "PERFORM never reached its walk")
        info = sim_vm(ctx, guest.vm)
        ctx.diag(f"PERFORM parked mid-walk: {info}")
        ctx.check_eq(info.performing, 1, "PERFORMs in progress")
        ctx.check_true(info.old_secure_bytes > 0, "old pages still secure mid-walk")
    enabled = ctx.pv(guest.vm, ENABLE)
    enable_done = time.monotonic()
    ctx.expect(enabled, rc=1)
    if booted:
        boot(ctx, guest)  # the new guest runs while PERFORM is still parked
        ctx.check_eq(sim_vm(ctx, guest.vm).performing, 1, "PERFORM still in progress after boot")
        ctx.sim.resume(gate)
    res = cleaner.wait(120)
    ctx.diag(f"PERFORM: {describe(res)}")
    ctx.expect(res)
    ctx.diag(
        f"PERFORM ran {cleaner.finished_at - cleaner.started_at:.4f} s; ENABLE returned "
        f"{enable_done - cleaner.started_at:.4f} s after it started; overlap: "
        f"{cleaner.finished_at > enable_done}"
    )
    if booted:
        info = sim_vm(ctx, guest.vm)
        ctx.check_eq(info.old_secure_bytes, 0, "old secure bytes after PERFORM")
        ctx.check_eq(info.secure_bytes, LOW_SIZE + _perform_memory(ctx), "new guest secure bytes")
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)


def _perform_memory(ctx: CheckContext) -> int:
    # More than one batch of the simulator's walk (64 MiB), so that PERFORM
    # can be held between batches; small on a real kernel (no guest runs).
    return ctx.perform_memory if ctx.is_sim else HIGH_SIZE


@check("reboot_race_second_prepare", spec="5 (QEMU race), 3.3 step 3, 3.5", needs=(Need.PV_ASYNC,))
def check_reboot_race(ctx: CheckContext) -> None:
    """Two reboots in quick succession, as QEMU does them: the fallback DISABLE tears down both,
    the late PERFORM gets EINVAL.

    Reboot 1: PREPARE, PERFORM thread started but not yet in the kernel,
    ENABLE.  Reboot 2: PREPARE is EINVAL (a configuration is still set aside),
    QEMU falls back to DISABLE, which destroys the current *and* the set-aside
    configuration.  The late PERFORM then finds nothing: EINVAL (QEMU's thread
    calls exit(1) there).  A third reboot works normally.
    """
    guest = make_vm(ctx)
    boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    late, go = _late_perform(ctx, guest.vm)
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    boot(ctx, guest)
    ctx.expect(ctx.pv(guest.vm, PREPARE), err=errno.EINVAL, rc=0, rrc=0)
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)
    go.set()
    res = late.wait(60)
    ctx.diag(f"late PERFORM: {describe(res)}")
    ctx.expect(res, err=errno.EINVAL, rc=0, rrc=0)
    if ctx.is_sim:
        check_nothing_left(ctx, "after the fallback DISABLE")
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    ctx.expect(ctx.pv(guest.vm, PREPARE), rc=SYNTH_RC, rrc=SYNTH_RRC)
    ctx.expect(ctx.pv(guest.vm, PERFORM))


@check(
    "prepare_again_while_perform_runs",
    spec="3.4 (API: PREPARE again as soon as cleanup starts)",
    sim_only="holds PERFORM right after it detached its record (a simulator gate); "
    "on a real kernel that moment is not observable",
)
def check_prepare_again(ctx: CheckContext) -> None:
    """Once PERFORM has detached its record, the next reboot's PREPARE succeeds; both PERFORMs work.

    api.rst: PREPARE "can be called again as soon as cleanup starts".  Two
    old configurations are then torn down by two PERFORMs in parallel, each
    on its own record.
    """
    guest = make_vm(ctx)
    boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    gate = "perform:detached"
    first = _held_perform(ctx, guest.vm, gate)
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    boot(ctx, guest)
    ctx.expect(ctx.pv(guest.vm, PREPARE), rc=SYNTH_RC, rrc=SYNTH_RRC)
    info = sim_vm(ctx, guest.vm)
    ctx.diag(f"two old configurations: {info}")
    ctx.check_eq((info.set_aside, info.performing), (True, 1), "(set aside, performing)")
    ctx.sim.resume(gate)  # the second PERFORM must not park
    ctx.expect(ctx.pv(guest.vm, PERFORM), rc=1, rrc=0)
    res = first.wait(60)
    ctx.diag(f"first PERFORM: {describe(res)}")
    ctx.expect(res, rc=1, rrc=0)
    check_nothing_left(ctx, "after both PERFORMs")


@check("disable_with_leftover", spec="3.5", needs=(Need.PV_ASYNC,))
def check_disable_leftover(ctx: CheckContext) -> None:
    """DISABLE of a new configuration also tears down the set-aside one (rc 1); PERFORM then finds
    nothing."""
    guest = make_vm(ctx)
    boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)
    ctx.expect(ctx.pv(guest.vm, PERFORM), err=errno.EINVAL, rc=0, rrc=0)
    if ctx.is_sim:
        check_nothing_left(ctx, "after DISABLE")
    ctx.expect(ctx.pv(guest.vm, ENABLE), rc=1)
    ctx.expect(ctx.pv(guest.vm, DISABLE), rc=1)


@check("close_vm_with_leftover", spec="3.6", needs=(Need.PV_ASYNC,))
def check_close_leftover(ctx: CheckContext) -> None:
    """Closing a VM that has a current and a set-aside configuration destroys both; a new VM works
    after.

    On the simulator: no configuration and no secure page is left; on a real
    kernel the close must return and the next VM must become protected.
    """
    kvm = ctx.kvm()
    guest = make_vm(ctx, kvm=kvm)
    boot(ctx, guest)
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    ctx.require_ok(ctx.pv(guest.vm, ENABLE))
    guest.vm.close()
    if ctx.is_sim:
        check_nothing_left(ctx, "after close")
    again = make_vm(ctx, kvm=kvm)
    ctx.expect(ctx.pv(again.vm, PREPARE), rc=SYNTH_RC, rrc=SYNTH_RRC)
    ctx.expect(ctx.pv(again.vm, PERFORM))


@check("memslot_change_while_protected", spec="1.2, 3.3", needs=(Need.PV_ASYNC,))
def check_memslots(ctx: CheckContext) -> None:
    """While protected, adding or deleting a memslot is EINVAL; after PREPARE (or DISABLE) it
    works."""
    guest = make_vm(ctx)
    extra = ctx.memory(MiB)
    ret = guest.vm.set_user_memory_region(2, 4 * GiB, MiB, extra.addr, check=False)
    ctx.check_eq(errno_text(-ret if ret < 0 else 0), "EINVAL", "memslot add while protected")
    ret = guest.vm.mem_remove(1, check=False)
    ctx.check_eq(errno_text(-ret if ret < 0 else 0), "EINVAL", "memslot delete while protected")
    ctx.require_ok(ctx.pv(guest.vm, PREPARE))
    ret = guest.vm.set_user_memory_region(2, 4 * GiB, MiB, extra.addr, check=False)
    ctx.check_eq(errno_text(-ret if ret < 0 else 0), "success", "memslot add after PREPARE")
    ctx.expect(ctx.pv(guest.vm, PERFORM))


@check("memslot_alignment_1m", spec="1.2", needs=(Need.S390,))
def check_alignment(ctx: CheckContext) -> None:
    """s390 memslots need a 1 MiB-aligned userspace address and size (EINVAL otherwise)."""
    vm = ctx.vm()
    mem = ctx.memory(2 * MiB)
    ret = vm.set_user_memory_region(0, 0, MiB, mem.addr + 4096, check=False)
    ctx.check_eq(errno_text(-ret if ret < 0 else 0), "EINVAL", "address 4 KiB off 1 MiB")
    ret = vm.set_user_memory_region(0, 0, MiB + 4096, mem.addr, check=False)
    ctx.check_eq(errno_text(-ret if ret < 0 else 0), "EINVAL", "size 1 MiB + 4 KiB")
    ret = vm.set_user_memory_region(0, 0, MiB, mem.addr, check=False)
    ctx.check_eq(errno_text(-ret if ret < 0 else 0), "success", "aligned slot")


__all__ = [
    "BACKENDS",
    "Check",
    "CheckContext",
    "CheckFailed",
    "CheckRequest",
    "CheckRun",
    "CheckSkip",
    "Need",
    "SimConfig",
    "describe_checks",
    "kvm_skip_reason",
    "plan",
    "registry",
    "run_checks",
    "run_one",
    "select",
]
