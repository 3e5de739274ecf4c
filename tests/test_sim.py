# SPDX-License-Identifier: GPL-2.0-only
"""The simulated s390x KVM host (kvmpv.sim), through the real binding.

Every test drives ``Kvm(sys=sim(...))`` / ``Vm`` / ``Vcpu`` /
``pv_cmd`` -- the same code that runs on a real host -- and checks errno,
rc/rrc, page state and the real contents of guest memory against
``shared/spec/kvm-pv-async.md`` (sections 1-3; table 3.9 row by row).

Memory layout: PV_ASYNC_MIN_LIMIT matters twice and differently.  The 2 GiB
refusal of PREPARE is about the VM memory LIMIT attribute (default: the host
maximum, so any small VM is allowed); the synchronous destroy of PREPARE is
about guest ABSOLUTE addresses below 2 GiB.  So each VM gets a small memslot
at gpa 0 ("low", destroyed by PREPARE) and a small one at gpa 4 GiB ("high",
left to PERFORM), 16 MiB each, without allocating GiBs.  A real protected guest
cannot run over that hole (KVM_RUN EINVAL, ``__deliver_prog_pv()``): the
simulator's guest skips it only because these tests build it with
``guest_skips_holes=True`` (``sim()``); the hole rule itself is tested with the
default (``test_protected_guest_over_a_memslot_hole_fails_kvm_run``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pytest

from kvmpv import s390guest, seimage, uapi
from kvmpv.errors import KvmError
from kvmpv.kvm import Kvm, Vcpu, Vm
from kvmpv.memory import MADV_DONTNEED, GuestMemory
from kvmpv.pv import PvResult, load_image, pv_cmd, s390_machine_protect
from kvmpv.runner import reset_vcpus, run_until_finished
from kvmpv.sim import (
    PAYLOAD_DONE_PSW,
    UVC_CMD_CREATE_SEC_CONF,
    UVC_CMD_CREATE_SEC_CPU,
    UVC_CMD_VERIFY_IMG,
    SimulatedHost,
)
from kvmpv.sim.uvc import UVC_CMD_UNPACK_IMG
from kvmpv.uapi import pv_cmd_id as P

MiB = 1 << 20
#: kvmpv's synthetic SE image: a header the simulated Ultravisor accepts.
SYNTHETIC = seimage.parse(seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64), "synth")
GiB = 1 << 30
SLOT = 16 * MiB
HIGH_GPA = 4 * GiB
ENOTTY_CMD = 42


def sim(*args: Any, **kw: Any) -> SimulatedHost:
    """The simulator whose guest skips the low/high memslot hole (see the module doc)."""
    kw.setdefault("guest_skips_holes", True)
    return SimulatedHost(*args, **kw)


@dataclass
class Env:
    host: SimulatedHost
    kvm: Kvm
    vm: Vm
    vcpus: list[Vcpu]
    low: GuestMemory
    high: Optional[GuestMemory]
    extra: list[Any] = field(default_factory=list)

    def info(self) -> Any:
        return self.host.vm_info(self.vm.fd)


def run_to_end(vcpu: Vcpu) -> bool:
    """Start the vCPU as QEMU does and run it to the guest's end; True if it ended as s390 does.

    LOAD loads a protected guest's initial PSW; an unprotected CPU (LOAD is
    ENXIO there) gets the payload's entry PSW through kvm_run instead.
    OPERATING lets KVM_RUN run it.  The end is the payload's disabled wait at
    0xfff: KVM_EXIT_S390_SIEIC, icptcode 0x1c.
    """
    if vcpu.set_mp_state(uapi.KVM_MP_STATE_LOAD, check=False) == -errno.ENXIO:
        vcpu.s390_run().psw_mask, vcpu.s390_run().psw_addr = s390guest.PSW_MASK_64, 0x10000
    vcpu.set_mp_state(uapi.KVM_MP_STATE_OPERATING)
    reason = vcpu.run()
    run = vcpu.s390_run()
    return (
        reason == uapi.KVM_EXIT_S390_SIEIC
        and run.s390_sieic.icptcode == uapi.ICPT_WAIT
        and run.psw_addr == 0xFFF
    )


def zero(mem: GuestMemory) -> bool:
    return mem.view(0, mem.size).tobytes() == bytes(mem.size)


def filled(mem: GuestMemory, byte: int) -> bool:
    return mem.view(0, mem.size).tobytes() == bytes([byte]) * mem.size


@contextmanager
def pv_vm(
    host: Optional[SimulatedHost] = None,
    *,
    vcpus: int = 1,
    high: bool = True,
    limit: Optional[int] = None,
    enable: bool = True,
    boot: bool = True,
    **kw: Any,
) -> Iterator[Env]:
    """A VM with a low (gpa 0) and a high (gpa 4 GiB) memslot, protected and booted."""
    host = host or sim(**kw)
    low = GuestMemory(SLOT, sys=host)
    hi = GuestMemory(SLOT, sys=host) if high else None
    kvm = Kvm(sys=host)
    vm = kvm.vm_create()
    try:
        if limit is not None:
            vm.s390_set_mem_limit(limit)
        vm.mem_add(low, slot=0, gpa=0)
        if hi is not None:
            vm.mem_add(hi, slot=1, gpa=HIGH_GPA)
        cpus = [vm.vcpu_add(i) for i in range(vcpus)]
        env = Env(host, kvm, vm, cpus, low, hi)
        if enable:
            assert pv_cmd(vm, P.KVM_PV_ENABLE).rc == 1
            for c in cpus:  # ENABLE gave userspace the CPU state: start them
                c.s390_start(protected=True)
            if boot:
                for c in cpus:
                    assert run_to_end(c)
        yield env
    finally:
        host.resume_all()
        vm.close()
        kvm.close()
        low.close()
        if hi is not None:
            hi.close()


class Bg:
    """Run a call in a thread; remember its native tid, result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.exc: Optional[BaseException] = None
        self.tid = 0
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        self.started.wait(5)

    def _main(self) -> None:
        self.tid = threading.get_native_id()
        self.started.set()
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.exc = exc

    def join(self, timeout: float = 20.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background call did not finish"
        if self.exc is not None:
            raise self.exc
        return self.result

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.002)
    return pred()


@dataclass
class Raw:
    ret: int
    rc: int
    rrc: int

    @property
    def errno(self) -> int:
        return -self.ret if self.ret < 0 else 0


def cmd(vm: Vm, c: int, data: int = 0, flags: int = 0) -> Any:
    """pv_cmd() for the known sub-commands; the raw ioctl for unknown numbers."""
    if c in set(P):
        return pv_cmd(vm, P(c), data, flags=flags, check=False)
    arg = uapi.kvm_pv_cmd(cmd=c, data=data, flags=flags)
    ret = vm.pv_ioctl(arg)
    return Raw(ret, int(arg.rc), int(arg.rrc))


def uv_cmds(host: SimulatedHost) -> list[int]:
    return [c.cmd for c in host.uv_calls()]


# --------------------------------------------------------------------------
# /dev/kvm (spec 1.2, 2.2)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pv", "async_", "caps"),
    [(True, True, (1, 1, 1)), (True, False, (1, 1, 0)), (False, True, (0, 0, 0))],
)
def test_capabilities(pv: bool, async_: bool, caps: tuple[int, int, int]) -> None:
    with Kvm(sys=sim(prot_virt_host=pv, async_destroy=async_)) as kvm:
        assert kvm.backend == "sim"
        assert (kvm.check_cap(180), kvm.check_cap(217), kvm.check_cap(224)) == caps
        assert kvm.get_api_version() == 12
        assert kvm.vcpu_mmap_size() == 4096
        assert kvm.check_cap(9999) == 0
        with kvm.vm_create() as vm:
            assert vm.check_cap(224) == caps[2]


def test_dev_errors() -> None:
    host = sim()
    with pytest.raises(OSError) as ei:
        host.open("/dev/nope", 0)
    assert ei.value.errno == errno.ENOENT
    with Kvm(sys=host) as kvm:
        assert kvm.ioctl(uapi.KVM_GET_API_VERSION, 1, check=False) == -errno.EINVAL
        assert kvm.ioctl(uapi.KVM_RUN, check=False) == -errno.EINVAL  # unknown on /dev/kvm
        assert kvm.ioctl(uapi.KVM_CREATE_VM, 2, check=False) == -errno.EINVAL
        # UCONTROL: EINVAL without the config option or without CAP_SYS_ADMIN
        assert kvm.ioctl(uapi.KVM_CREATE_VM, 1, check=False) == -errno.EINVAL
    host2 = sim(ucontrol=True, cap_sys_admin=False)
    with Kvm(sys=host2) as kvm:
        assert kvm.ioctl(uapi.KVM_CREATE_VM, 1, check=False) == -errno.EINVAL
    host3 = sim(ucontrol=True)
    with Kvm(sys=host3) as kvm, kvm.vm_create(1) as vm:
        assert vm.s390_set_mem_limit(4 * GiB, check=False) == -errno.EINVAL
    with pytest.raises(OSError) as ei:
        host.ioctl(12345678, uapi.KVM_GET_API_VERSION)
    assert ei.value.errno == errno.EBADF
    with pytest.raises(OSError) as ei:
        host.close(12345678)
    assert ei.value.errno == errno.EBADF
    assert host.open_fds() == 0


# --------------------------------------------------------------------------
# Memslots and the memory limit (spec 1.2, 3.10)
# --------------------------------------------------------------------------


def test_memslot_rules() -> None:
    host = sim(host_mem_limit=8 * GiB)
    with GuestMemory(2 * MiB) as mem, Kvm(sys=host) as kvm, kvm.vm_create() as vm:
        e = vm.set_user_memory_region
        assert e(0, 0, MiB, mem.addr + 4096, check=False) == -errno.EINVAL  # uaddr not 1 MiB
        assert e(0, 0, MiB + 4096, mem.addr, check=False) == -errno.EINVAL  # size not 1 MiB
        assert e(0, 0, MiB, mem.addr + 1, check=False) == -errno.EINVAL  # not page aligned
        assert e(0, 8 * GiB - MiB, 2 * MiB, mem.addr, check=False) == -errno.EINVAL  # > limit
        assert e(0, 8 * GiB - 2 * MiB, 2 * MiB, mem.addr, check=False) == 0  # end == limit
        assert e(1, 8 * GiB - MiB, MiB, mem.addr, check=False) == -errno.EEXIST  # overlap
        assert e(0, 0, 0, 0, check=False) == 0  # delete
        assert e(0, 0, 0, 0, check=False) == -errno.EINVAL  # delete again: no such slot
        assert e(0, 1 << 20, MiB, mem.addr, flags=uapi.KVM_MEM_READONLY, check=False) == (
            -errno.EINVAL
        )
        assert e(40000, 0, MiB, mem.addr, check=False) == -errno.EINVAL  # slot id


def test_memslots_refused_while_protected_and_allowed_after_prepare() -> None:
    with pv_vm(boot=False) as env, GuestMemory(MiB) as extra:
        vm = env.vm
        assert vm.set_user_memory_region(2, 8 * GiB, MiB, extra.addr, check=False) == -errno.EINVAL
        assert vm.mem_remove(1, check=False) == -errno.EINVAL
        # The same region again is "no change": accepted without the PV check.
        assert vm.set_user_memory_region(0, 0, SLOT, env.low.addr, check=False) == 0
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        assert vm.set_user_memory_region(2, 8 * GiB, MiB, extra.addr, check=False) == 0
        assert vm.mem_remove(2, check=False) == 0
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM).ret == 0


def test_mem_limit_attribute() -> None:
    host = sim(host_mem_limit=1 << 42)
    with Kvm(sys=host) as kvm, kvm.vm_create() as vm:
        assert vm.has_device_attr(uapi.KVM_S390_VM_MEM_CTRL, uapi.KVM_S390_VM_MEM_LIMIT_SIZE) == 0
        assert vm.has_device_attr(1, 0, check=False) == -errno.ENXIO
        assert vm.has_device_attr(0, 0, check=False) == -errno.ENXIO  # CMMA: not on SE hosts
        assert vm.s390_get_mem_limit() == 1 << 42
        assert vm.s390_set_mem_limit((1 << 42) + 1, check=False) == -errno.E2BIG
        assert vm.s390_set_mem_limit(0, check=False) == -errno.EINVAL
        assert vm.get_device_attr(0, 2, 0, check=False) == -errno.EFAULT
        assert vm.s390_set_mem_limit(2 * GiB) == 0
        assert host.vm_info(vm.fd).asce_type == "segment"
        # GET answers kvm->arch.mem_limit, which SET does not change (a new gmap instead).
        assert vm.s390_get_mem_limit() == 1 << 42
        assert vm.s390_set_mem_limit(2 * GiB + MiB) == 0
        assert host.vm_info(vm.fd).asce_type == "region-3"
        vm.vcpu_add(0)
        assert vm.s390_set_mem_limit(4 * GiB, check=False) == -errno.EBUSY


def test_set_tod_attribute() -> None:
    """kvm_s390_set_tod(): EOPNOTSUPP while protected (6973091d1b50), HIGH only 0, else ENXIO."""
    tod, low, high, ext = (
        uapi.KVM_S390_VM_TOD,
        uapi.KVM_S390_VM_TOD_LOW,
        uapi.KVM_S390_VM_TOD_HIGH,
        uapi.KVM_S390_VM_TOD_EXT,
    )
    val = ctypes.c_uint64(0)
    addr = ctypes.addressof(val)
    ext_buf = (ctypes.c_uint64 * 2)(0, 5)  # struct kvm_s390_vm_tod_clock: tod at offset 8
    with pv_vm(boot=False, enable=False) as env:
        vm = env.vm
        # HIGH is a u8 (copy_from_user of sizeof(u8)): its own byte, whatever the byte order
        # (a u64 1 read one byte wide is 0 on big-endian s390x: tox -e s390x caught that).
        gtod_high = ctypes.c_uint8(0)
        assert vm.set_device_attr(tod, high, ctypes.addressof(gtod_high)) == 0
        gtod_high.value = 1
        assert vm.set_device_attr(tod, high, ctypes.addressof(gtod_high), check=False) == (
            -errno.EINVAL
        )
        assert vm.set_device_attr(tod, low, addr) == 0
        assert vm.set_device_attr(tod, 7, addr, check=False) == -errno.ENXIO
        assert vm.set_device_attr(tod, low, 0, check=False) == -errno.EFAULT
        assert vm.set_device_attr(tod, ext, ctypes.addressof(ext_buf)) == 0
        assert cmd(vm, P.KVM_PV_ENABLE).rc == 1
        for attr in (low, high, ext):
            assert vm.set_device_attr(tod, attr, addr, check=False) == -errno.EOPNOTSUPP
        assert cmd(vm, P.KVM_PV_DISABLE).rc == 1
        assert vm.set_device_attr(tod, low, addr) == 0


def test_signal_pending_enable_eintr() -> None:
    """A caught signal interrupts ENABLE's first notifier registration only, and is delivered
    when the ioctl that saw it (or any other) returns."""
    with pv_vm(boot=False, enable=False) as env:
        tid = threading.get_native_id()
        env.host.deliver_signal(tid)
        assert env.host.signal_pending(tid)
        env.vm.check_cap(uapi.KvmCap.KVM_CAP_S390_PROTECTED)  # returns: delivered
        assert not env.host.signal_pending(tid)
        env.host.deliver_signal(tid)
        arg = uapi.kvm_pv_cmd(cmd=int(P.KVM_PV_ENABLE), rc=0xAAAA, rrc=0xBBBB)
        assert env.vm.pv_ioctl(arg) == -errno.EINTR  # raw: no EINTR retry
        assert (int(arg.rc), int(arg.rrc)) == (0xAAAA, 0xBBBB)  # before any UV call
        assert env.host.configs() == [] and not env.host.signal_pending(tid)
        assert cmd(env.vm, P.KVM_PV_ENABLE).rc == 1
        assert cmd(env.vm, P.KVM_PV_DISABLE).rc == 1
        env.host.deliver_signal(tid)
        arg = uapi.kvm_pv_cmd(cmd=int(P.KVM_PV_ENABLE))
        assert env.vm.pv_ioctl(arg) == 0  # registered once per VM: nothing to interrupt


# --------------------------------------------------------------------------
# KVM_S390_PV_COMMAND common path (spec 3.1) and INFO (spec 2.3)
# --------------------------------------------------------------------------


def test_flags_unknown_command_and_copy_back() -> None:
    with pv_vm(enable=False) as env:
        assert cmd(env.vm, P.KVM_PV_INFO, flags=1).errno == errno.EINVAL
        assert cmd(env.vm, ENOTTY_CMD).errno == errno.ENOTTY
        # Raw bytes, as the kernel sees them: cmd @0, rc @4, rrc @6, copied back.
        host = env.host
        raw = bytearray(32)
        ctypes.c_uint32.from_buffer(raw, 0).value = P.KVM_PV_ENABLE
        assert host.ioctl(env.vm.fd, uapi.KVM_S390_PV_COMMAND, raw) == 0
        assert ctypes.c_uint16.from_buffer(raw, 4).value == 1
        assert ctypes.c_uint16.from_buffer(raw, 6).value == 0
        with pytest.raises(OSError) as ei:
            host.ioctl(env.vm.fd, uapi.KVM_S390_PV_COMMAND, 0)  # NULL
        assert ei.value.errno == errno.EFAULT
        assert env.vm.ioctl(uapi.KVM_RUN, check=False) == -errno.ENOTTY  # vCPU ioctl on a VM


@pytest.mark.parametrize("fast", [False, True])
def test_info_without_protected_vm(fast: bool) -> None:
    with pv_vm(enable=False, destroy_fast=fast) as env:
        info = uapi.kvm_s390_pv_info()
        info.header.id = uapi.pv_cmd_info_id.KVM_PV_INFO_VM
        info.header.len_max = ctypes.sizeof(info)
        r = cmd(env.vm, P.KVM_PV_INFO, ctypes.addressof(info))
        assert r.ret == 0 and r.rc == 0
        assert info.header.len_written == 16 + 64
        assert info.vm.max_cpus == 248
        word0 = info.vm.inst_calls_list[0]
        assert bool(word0 & uapi.UV_FACILITY_DESTROY_SEC_CONF_FAST_MASK) == fast
        info.header.len_max = 15
        assert cmd(env.vm, P.KVM_PV_INFO, ctypes.addressof(info)).errno == errno.EINVAL
        info.header.len_max = 16 + 63
        assert cmd(env.vm, P.KVM_PV_INFO, ctypes.addressof(info)).errno == errno.EINVAL
        info.header.id = uapi.pv_cmd_info_id.KVM_PV_INFO_DUMP
        info.header.len_max = 16 + 24
        assert cmd(env.vm, P.KVM_PV_INFO, ctypes.addressof(info)).ret == 0
        assert info.header.len_written == 40 and info.dump.dump_config_finalize_len > 0
        info.header.id = 7
        assert cmd(env.vm, P.KVM_PV_INFO, ctypes.addressof(info)).errno == errno.EINVAL
        assert cmd(env.vm, P.KVM_PV_INFO, 0).errno == errno.EFAULT


# --------------------------------------------------------------------------
# ENABLE and vCPUs (spec 3.2)
# --------------------------------------------------------------------------


def test_enable_twice_and_vcpus_created_protected() -> None:
    with pv_vm(boot=False) as env:
        assert cmd(env.vm, P.KVM_PV_ENABLE).errno == errno.EINVAL
        v = env.vm.vcpu_add(5)
        info = env.info()
        assert info.protected and info.protected_vcpus == 2
        assert env.host.protected_count == 1
        assert env.vm.ioctl(uapi.KVM_CREATE_VCPU, 5, check=False) == -errno.EEXIST
        assert env.vm.ioctl(uapi.KVM_CREATE_VCPU, 248, check=False) == -errno.EINVAL
        env.host.inject_uv_failure(UVC_CMD_CREATE_SEC_CPU, 0x0102, 3)
        assert env.vm.ioctl(uapi.KVM_CREATE_VCPU, 6, check=False) == -errno.EIO
        assert run_to_end(v)


def test_enable_uv_failures() -> None:
    with pv_vm(enable=False, vcpus=2) as env:
        host, vm = env.host, env.vm
        host.inject_uv_failure(UVC_CMD_CREATE_SEC_CONF, 0x0103, 7)
        r = cmd(vm, P.KVM_PV_ENABLE)
        assert (r.errno, r.rc, r.rrc) == (errno.EIO, 0x0103, 7)
        assert not env.info().protected and host.protected_count == 0
        # NEED_DESTROY: the kernel destroys the half-created configuration.
        host.inject_uv_failure(UVC_CMD_CREATE_SEC_CONF, 0x8000 | 0x10, 1)
        assert cmd(vm, P.KVM_PV_ENABLE).errno == errno.EIO
        assert uv_cmds(host)[-1] == uapi.UVC_CMD_DESTROY_SEC_CONF
        assert host.protected_count == 0
        # Second vCPU fails: both undone, configuration destroyed again.
        host.inject_uv_failure(UVC_CMD_CREATE_SEC_CPU, 0x0105, 2)
        n = len(host.uv_calls())
        r = cmd(vm, P.KVM_PV_ENABLE)
        assert (r.errno, r.rc, r.rrc) == (errno.EIO, 0x0105, 2)
        info = env.info()
        assert not info.protected and info.protected_vcpus == 0 and host.protected_count == 0
        assert [c.cmd for c in host.uv_calls()[n:]] == [
            UVC_CMD_CREATE_SEC_CONF,
            UVC_CMD_CREATE_SEC_CPU,  # vCPU 0 fails: stop
            uapi.UVC_CMD_DESTROY_SEC_CONF,
        ]
        assert cmd(vm, P.KVM_PV_ENABLE).ret == 0


# --------------------------------------------------------------------------
# PREPARE (spec 3.3, table 3.9)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
def test_prepare_success_order_and_lower_2g(fast: bool) -> None:
    with pv_vm(vcpus=2, destroy_fast=fast) as env:
        host, vm = env.host, env.vm
        assert env.high is not None
        env.low.fill(0x5A)
        env.high.fill(0x5A)
        handle = env.info().handle
        n = len(host.uv_calls())
        r = cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE)
        assert (r.ret, r.rc, r.rrc) == (0, 1, 42)
        calls = host.uv_calls()[n:]
        kinds = [c.cmd for c in calls]
        # vCPUs are destroyed first, then (fast) the configuration, then the low pages.
        assert kinds[:2] == [uapi.UVC_CMD_DESTROY_SEC_CPU] * 2
        if fast:
            assert kinds[2] == uapi.UVC_CMD_DESTROY_SEC_CONF_FAST
        assert uapi.UVC_CMD_DESTROY_SEC_CONF not in kinds
        destroyed = sum(c.pages for c in calls if c.cmd == uapi.UVC_CMD_DESTR_SEC_STOR)
        assert destroyed * 4096 == SLOT  # only the slot below 2 GiB
        assert zero(env.low) and filled(env.high, 0x5A)
        info = env.info()
        assert not info.protected and info.set_aside and info.protected_vcpus == 0
        assert info.old_secure_bytes == SLOT
        assert host.protected_count == 1
        (c,) = [c for c in host.configs() if c.handle == handle]
        assert c.state == "set_aside" and c.fast_destroyed == fast
        r = cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM)
        assert r.ret == 0
        # Non-fast: rc/rrc of Destroy Secure Configuration; fast: not written.
        assert (r.rc, r.rrc) == ((0, 0) if fast else (1, 0))
        assert zero(env.high)
        assert host.protected_count == 0 and host.configs() == []


def test_async_destroy_off_refuses_before_the_vcpus() -> None:
    with pv_vm(async_destroy=False) as env:
        for c in (P.KVM_PV_ASYNC_CLEANUP_PREPARE, P.KVM_PV_ASYNC_CLEANUP_PERFORM):
            r = cmd(env.vm, c)
            assert (r.errno, r.rc, r.rrc) == (errno.EINVAL, 0, 0)
        assert env.info().protected_vcpus == 1  # PREPARE stopped before the vCPUs
        assert cmd(env.vm, P.KVM_PV_DISABLE).ret == 0


@pytest.mark.parametrize(("limit", "ok"), [(2 * GiB, False), (2 * GiB + MiB, True), (None, True)])
def test_prepare_segment_asce(limit: Optional[int], ok: bool) -> None:
    with pv_vm(limit=limit, high=False) as env:
        r = cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE)
        if ok:
            assert (r.ret, r.rc, r.rrc) == (0, 1, 42)
        else:
            assert (r.errno, r.rc, r.rrc) == (errno.EINVAL, 0, 0)
            assert env.info().protected and env.info().protected_vcpus == 0
            assert cmd(env.vm, P.KVM_PV_DISABLE).ret == 0


def test_prepare_vcpu_destroy_failure_reports_first() -> None:
    with pv_vm(vcpus=3) as env:
        host = env.host
        host.inject_uv_failure(uapi.UVC_CMD_DESTROY_SEC_CPU, 0x0020, 1)
        host.inject_uv_failure(uapi.UVC_CMD_DESTROY_SEC_CPU, 0x0021, 2)
        r = cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE)
        assert (r.errno, r.rc, r.rrc) == (errno.EIO, 0x0020, 1)
        n = sum(1 for c in host.uv_calls() if c.cmd == uapi.UVC_CMD_DESTROY_SEC_CPU)
        assert n == 3  # all attempted
        info = env.info()
        assert info.protected and not info.set_aside and info.protected_vcpus == 0
        assert cmd(env.vm, P.KVM_PV_DISABLE).ret == 0


@pytest.mark.parametrize(("site", "fast"), [("prepare:record", True), ("prepare:asce", False)])
def test_prepare_allocation_failure(site: str, fast: bool) -> None:
    with pv_vm(destroy_fast=fast) as env:
        env.host.inject_alloc_failure("prepare:asce")  # never reached with fast
        env.host.inject_alloc_failure(site)
        r = cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE)
        assert (r.errno, r.rc, r.rrc) == (errno.ENOMEM, 0, 0)
        info = env.info()
        assert info.protected and info.protected_vcpus == 0 and not info.set_aside
        assert uapi.UVC_CMD_DESTROY_SEC_CONF_FAST not in uv_cmds(env.host)
        assert cmd(env.vm, P.KVM_PV_DISABLE).ret == 0


@pytest.mark.parametrize("limit", [1 << 30, None], ids=["segment", "region3"])
def test_discarded_prefix_pages_ask_for_a_refresh(limit: Optional[int]) -> None:
    """madvise(MADV_DONTNEED) of a protected vCPU's prefix pages (guest 0, 8 KiB): the
    secure pages are exported, and ptep_notify() -> kvm_gmap_notifier() sets
    KVM_REQ_REFRESH_GUEST_PREFIX; a discard next to them (or above 2 GiB) asks nothing."""
    with pv_vm(high=limit is None, limit=limit) as env:
        host, vcpu = env.host, env.vcpus[0]
        assert not host.prefix_refreshes_pending(vcpu.fd)  # the first entry mapped it
        secure = env.info().secure_bytes
        host.madvise(env.low.addr + 2 * 4096, 4096, MADV_DONTNEED)
        discarded = 4096
        if env.high is not None:
            host.madvise(env.high.addr, 4096, MADV_DONTNEED)
            discarded += 4096
        assert not host.prefix_refreshes_pending(vcpu.fd)
        host.madvise(env.low.addr, 2 * 4096, MADV_DONTNEED)
        assert host.prefix_refreshes_pending(vcpu.fd)
        # exported, not destroyed
        assert env.info().secure_bytes == secure - discarded - 2 * 4096
        assert host.validity_intercepts() == 0


def test_s390_replace_asce() -> None:
    """s390_replace_asce(): EINVAL for a segment table (292a7d6fca33), ENOMEM when the copy
    cannot be allocated, else a copy with page->index 0 (c2fceb59bbda)."""
    with pv_vm(high=False, limit=1 << 30) as env:
        vm = env.host._vm_of(env.vm.fd)
        assert env.host.s390_replace_asce(vm) == -errno.EINVAL
        assert env.host.asce_replacements(env.vm.fd) == 0
    with pv_vm() as env:
        vm = env.host._vm_of(env.vm.fd)
        env.host.inject_alloc_failure("prepare:asce")
        assert env.host.s390_replace_asce(vm) == -errno.ENOMEM
        vm.gmap_table_index = 1 << 31
        assert env.host.s390_replace_asce(vm) == 0
        assert vm.gmap_table_index == 0 and env.host.asce_replacements(env.vm.fd) == 1
        assert cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0  # the second copy
        assert env.host.asce_replacements(env.vm.fd) == 2


# --------------------------------------------------------------------------
# PERFORM (spec 3.4, table 3.9)
# --------------------------------------------------------------------------


def test_perform_destroy_uvc_failure_leaks() -> None:
    with pv_vm() as env:
        host = env.host
        assert cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        host.inject_uv_failure(uapi.UVC_CMD_DESTROY_SEC_CONF, 0x0003, 0x11)
        r = cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM)
        assert (r.errno, r.rc, r.rrc) == (errno.EIO, 0x0003, 0x11)
        assert [c.state for c in host.configs()] == ["leaked"]
        assert host.protected_count == 1
        assert env.high is not None and zero(env.high)  # the walk itself completed
    assert host.protected_count == 1  # leaked for good, even after the VM is gone


def test_perform_fatal_signal_goes_to_need_cleanup() -> None:
    with pv_vm(batch_bytes=MiB) as env:
        host, vm = env.host, env.vm
        assert env.high is not None
        env.high.fill(0x77)
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0

        def perform() -> PvResult:
            host.deliver_fatal_signal(threading.get_native_id())
            try:
                return cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM)
            finally:
                host.clear_fatal_signal(threading.get_native_id())

        r = Bg(perform).join()
        assert (r.ret, r.rc, r.rrc) == (0, 1, 42)
        info = env.info()
        assert info.need_cleanup == 1 and not info.set_aside
        # One batch was destroyed before the signal was noticed; the rest is still secure.
        assert info.old_secure_bytes == SLOT - MiB
        assert not filled(env.high, 0x77) and not zero(env.high)
        assert host.protected_count == 1
        # PERFORM finds nothing (need_cleanup is not set_aside); DISABLE needs a current config.
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM).errno == errno.EINVAL
        assert cmd(vm, P.KVM_PV_DISABLE).errno == errno.EINVAL
    # Closing the VM disposes of need_cleanup and sweeps the memory (spec 3.6).
    assert host.protected_count == 0 and host.configs() == []


def test_perform_destroy_page_failure_is_ignored() -> None:
    with pv_vm() as env:
        host = env.host
        assert cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        host.inject_uv_failure(uapi.UVC_CMD_DESTR_SEC_STOR, 0x0107, 0xD)
        r = cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM)
        assert (r.ret, r.rc) == (0, 1)
        (c,) = host.configs()
        assert c.state == "destroyed" and c.secure_bytes == 4096
        # The next guest takes the stale page over (destroy, then import).
        assert cmd(env.vm, P.KVM_PV_ENABLE).ret == 0
        assert run_to_end(env.vcpus[0])
        assert [x.handle for x in host.configs()] == [env.info().handle]


def test_new_enable_and_prepare_while_perform_runs() -> None:
    """PERFORM detaches under kvm->lock, then walks without it (spec 3.4)."""
    with pv_vm(batch_bytes=MiB) as env:
        host, vm, vcpu = env.host, env.vm, env.vcpus[0]
        old = env.info().handle
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        host.pause_at("perform:batch")
        p1 = Bg(lambda: cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM))
        assert host.wait_paused("perform:batch")
        assert env.info().performing == 1 and not env.info().set_aside
        # ENABLE and the new guest run while the old configuration is torn down.
        assert cmd(vm, P.KVM_PV_ENABLE).ret == 0
        new = env.info().handle
        assert run_to_end(vcpu)
        info = env.info()
        assert info.secure_bytes == 2 * SLOT and info.old_secure_bytes == 0
        # Secure-storage violations: the new guest destroyed old pages itself.
        stolen = [c for c in host.uv_calls(uapi.UVC_CMD_DESTR_SEC_STOR) if c.handle == old]
        assert sum(c.pages for c in stolen) * 4096 > SLOT  # low (PREPARE) + high (guest)
        # A second PREPARE and PERFORM run in parallel with the first one.
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        p2 = Bg(lambda: cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM))
        assert host.wait_paused("perform:batch", count=2)
        assert env.info().performing == 2
        host.resume("perform:batch")
        r1, r2 = p1.join(), p2.join()
        assert (r1.ret, r1.rc, r2.ret, r2.rc) == (0, 1, 0, 1)
        destroyed = {c.handle for c in host.uv_calls(uapi.UVC_CMD_DESTROY_SEC_CONF)}
        assert {old, new} <= destroyed
        assert host.protected_count == 0 and env.info().performing == 0


def test_perform_leaves_the_running_configuration_alone() -> None:
    with pv_vm() as env:
        host, vm = env.host, env.vm
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        assert cmd(vm, P.KVM_PV_ENABLE).ret == 0  # new config has the vCPU
        assert run_to_end(env.vcpus[0])
        assert env.high is not None
        env.high.fill(0x33)
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM).ret == 0
        assert env.info().secure_bytes == 2 * SLOT and filled(env.high, 0x33)
        assert host.protected_count == 1


def test_perform_detaches_under_kvm_lock() -> None:
    """PERFORM takes kvm->lock to detach: a PREPARE holding it keeps PERFORM out."""
    with pv_vm() as env:
        host, vm = env.host, env.vm
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        assert cmd(vm, P.KVM_PV_ENABLE).ret == 0
        host.pause_at("prepare:cpus_destroyed")
        prep = Bg(lambda: cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE))
        assert host.wait_paused("prepare:cpus_destroyed")
        perf = Bg(lambda: cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM))
        # PERFORM blocked on kvm->lock (held by the paused PREPARE), as the
        # simulator counts it: not a sleep that might be too short.
        assert host.wait_blocked(vm.fd, kvm_lock=1), "PERFORM never waited for kvm->lock"
        assert not perf.done and env.info().set_aside and env.info().performing == 0
        assert env.info().kvm_lock_waiters == 1
        host.resume("prepare:cpus_destroyed")
        assert prep.join().errno == errno.EINVAL  # the old record was still set aside
        assert perf.join().ret == 0
        assert cmd(vm, P.KVM_PV_DISABLE).ret == 0 and host.protected_count == 0


def test_qemu_race_two_quick_reboots() -> None:
    """spec 5: PREPARE #2 before PERFORM #1 detached -> DISABLE fallback -> PERFORM #1 EINVAL."""
    with pv_vm() as env:
        host, vm = env.host, env.vm
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        host.pause_at("perform:before_detach")
        late = Bg(lambda: cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM))
        assert host.wait_paused("perform:before_detach")
        assert cmd(vm, P.KVM_PV_ENABLE).ret == 0
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).errno == errno.EINVAL
        assert cmd(vm, P.KVM_PV_DISABLE).ret == 0  # QEMU's fallback: both torn down
        assert host.protected_count == 0
        host.resume("perform:before_detach")
        r = late.join()
        assert (r.errno, r.rc, r.rrc) == (errno.EINVAL, 0, 0)


# --------------------------------------------------------------------------
# DISABLE (spec 3.5) and closing the VM (spec 3.6)
# --------------------------------------------------------------------------


def test_disable_with_set_aside() -> None:
    with pv_vm() as env:
        host, vm = env.host, env.vm
        assert env.high is not None
        env.high.fill(0x11)
        assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        # No current configuration: EINVAL, and the set-aside one is not cleaned.
        r = cmd(vm, P.KVM_PV_DISABLE)
        assert (r.errno, r.rc) == (errno.EINVAL, 0)
        assert env.info().set_aside and filled(env.high, 0x11)
        assert cmd(vm, P.KVM_PV_ENABLE).ret == 0
        r = cmd(vm, P.KVM_PV_DISABLE)
        assert (r.ret, r.rc, r.rrc) == (0, 1, 0)
        assert zero(env.high) and host.protected_count == 0 and host.configs() == []
        assert not env.info().set_aside


def test_disable_failures() -> None:
    with pv_vm() as env:
        host, vm = env.host, env.vm
        host.inject_uv_failure(uapi.UVC_CMD_DESTROY_SEC_CPU, 0x0030, 4)
        r = cmd(vm, P.KVM_PV_DISABLE)
        assert (r.errno, r.rc, r.rrc) == (errno.EIO, 0x0030, 4)
        assert env.info().protected
        host.inject_uv_failure(uapi.UVC_CMD_DESTROY_SEC_CONF, 0x0031, 5)
        r = cmd(vm, P.KVM_PV_DISABLE)
        assert (r.errno, r.rc, r.rrc) == (errno.EIO, 0x0031, 5)
        assert env.info().protected and host.protected_count == 1  # leak: handle kept
        assert cmd(vm, P.KVM_PV_DISABLE).ret == 0
        assert host.protected_count == 0


def test_close_vm_with_set_aside_leftover() -> None:
    host = sim()
    with pv_vm(host) as env:
        assert env.high is not None
        env.high.fill(0x22)
        old = env.info().handle
        assert cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        env.vm.close()  # pv_vm's close is idempotent
        assert zero(env.high)
        assert host.protected_count == 0 and host.configs() == [] and host.vms() == []
        assert old in {c.handle for c in host.uv_calls(uapi.UVC_CMD_DESTROY_SEC_CONF)}
    assert host.open_fds() == 0


def test_close_unprotected_vm_leaves_other_vms_pages_alone() -> None:
    """cleanup_all on a VM with nothing protected sweeps nothing (need_zap stays false).

    (Its FIXRACE early return for protected_count == 0 cannot be told apart
    from this through the ioctl interface: with the count at 0 there is
    nothing to clean either.)
    """
    host = sim()
    with pv_vm(host) as env:
        assert cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        with pv_vm(host, enable=False):
            pass
        assert env.info().old_secure_bytes == SLOT and host.protected_count == 1
    assert host.protected_count == 0


def test_vm_lives_while_a_vcpu_fd_or_mapping_holds_it() -> None:
    host = sim()
    with pv_vm(host) as env:
        vcpu = env.vcpus[0]
        env.vm.vcpus.remove(vcpu)  # keep the vCPU open past the VM fd
        env.vm.close()
        (info,) = host.vms()
        assert info.alive and info.protected
        vcpu.close()
        assert host.vms() == [] and host.protected_count == 0
    assert host.open_fds() == 0


def test_close_after_guest_memory_unmapped_does_not_crash() -> None:
    host = sim()
    mem = GuestMemory(SLOT)
    with Kvm(sys=host) as kvm, kvm.vm_create() as vm:
        vm.mem_add(mem)
        vcpu = vm.vcpu_add(0)
        pv_cmd(vm, P.KVM_PV_ENABLE)
        assert run_to_end(vcpu)
        mem.close()  # wrong order; the kernel would cope, so must the simulator
    assert host.protected_count == 0


def _exported_by(host: SimulatedHost, tid: int, handle: int) -> int:
    calls = host.uv_calls(uapi.UVC_CMD_CONV_FROM_SEC_STOR)
    return sum(c.pages for c in calls if c.tid == tid and c.handle == handle) * 4096


def test_munmap_while_perform_paused_mid_walk() -> None:
    """Userspace unmaps guest memory while PERFORM is between two batches (spec 3.7).

    The unmap (through the simulator, as ``GuestMemory(sys=host)`` does)
    exports what is still secure there for *every* configuration, charged to
    the unmapping thread, and drops it from the page state; PERFORM then
    finishes the walk without touching the unmapped range.  Before the
    simulated mmap_lock this was a check-then-memset race that could
    segfault the whole process.
    """
    host = sim(batch_bytes=MiB)
    low, a, b = (GuestMemory(SLOT, sys=host) for _ in range(3))
    try:
        with Kvm(sys=host) as kvm, kvm.vm_create() as vm:
            vm.mem_add(low, slot=0, gpa=0)
            vm.mem_add(a, slot=1, gpa=HIGH_GPA)
            vm.mem_add(b, slot=2, gpa=HIGH_GPA + SLOT)
            vcpu = vm.vcpu_add(0)
            assert cmd(vm, P.KVM_PV_ENABLE).ret == 0
            assert run_to_end(vcpu)  # all 48 MiB secure
            old = host.vm_info(vm.fd).handle
            assert cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0  # low destroyed
            assert host.secure_bytes() == {old: 2 * SLOT}
            # The new configuration owns 1 MiB in low and 1 MiB in b (UNPACK
            # takes them from the old one).
            assert cmd(vm, P.KVM_PV_ENABLE).ret == 0
            new = host.vm_info(vm.fd).handle
            hdr = ctypes.create_string_buffer(SYNTHETIC.header)
            parm = uapi.kvm_s390_pv_sec_parm(origin=ctypes.addressof(hdr), length=len(hdr.raw))
            assert cmd(vm, P.KVM_PV_SET_SEC_PARMS, ctypes.addressof(parm)).ret == 0
            for gpa in (0, HIGH_GPA + SLOT):
                unp = uapi.kvm_s390_pv_unp(addr=gpa, size=MiB, tweak=0)
                assert cmd(vm, P.KVM_PV_UNPACK, ctypes.addressof(unp)).ret == 0
            assert host.secure_bytes() == {old: 2 * SLOT - MiB, new: 2 * MiB}
            a.fill(0xAA)  # what PERFORM must clear for real
            b.fill(0xBB)

            host.pause_at("perform:batch")
            perform = Bg(lambda: cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM))
            assert host.wait_paused("perform:batch")  # one 1 MiB batch done
            old_before = host.secure_bytes()[old]
            assert old_before == 2 * SLOT - 2 * MiB
            unmap = Bg(b.close)  # a thread, so that a deadlock fails instead of hanging
            unmap.join(10)  # PERFORM is paused at the gate: holds no lock
            assert host.wait_paused("perform:batch")  # still mid-walk
            exported_old = _exported_by(host, unmap.tid, old)
            assert _exported_by(host, unmap.tid, new) == MiB  # every configuration's pages
            assert 0 < exported_old <= SLOT - MiB
            assert host.secure_bytes() == {old: old_before - exported_old, new: MiB}
            assert host.stats().exported_bytes == exported_old + MiB

            host.resume("perform:batch")
            r = perform.join()
            assert (r.ret, r.rc) == (0, uapi.UVC_RC_EXECUTED)
            assert old not in {c.handle for c in host.configs()}
            assert host.secure_bytes() == {new: MiB}  # the running one is left alone
            assert zero(a)  # destroyed for real; b was never written after the unmap
            # The guest touching memslot memory that is gone: EFAULT, as UNPACK.
            vcpu.s390_start(protected=True)
            with pytest.raises(KvmError) as ei:
                vcpu.run()
            assert ei.value.errno == errno.EFAULT
            unp = uapi.kvm_s390_pv_unp(addr=HIGH_GPA + SLOT, size=MiB, tweak=0)
            assert cmd(vm, P.KVM_PV_UNPACK, ctypes.addressof(unp)).errno == errno.EFAULT
            assert host.vm_info(vm.fd).performing == 0
    finally:
        host.resume_all()
        for m in (low, a, b):
            m.close()
    assert host.protected_count == 0 and host.secure_bytes() == {}


def test_munmap_waits_for_the_batch_in_progress() -> None:
    """munmap takes the simulated mmap_lock for writing: a memset in flight finishes first.

    White box: holding the lock for reading stands for a batch being cleared.
    """
    host = sim()
    mem = GuestMemory(SLOT, sys=host)
    lock = host._mmap_lock
    lock.acquire_read()
    try:
        unmap = Bg(mem.close)
        # The lock's own count of blocked writers, not a sleep.
        assert lock.wait_blocked(writers=1), "munmap did not wait for the reader"
        assert not unmap.done
        # A waiting writer holds off new readers (no starvation by a walk).
        reader = Bg(lambda: (lock.acquire_read(), lock.release_read()))
        assert lock.wait_blocked(readers=1, writers=1), "a new reader overtook the writer"
        assert not reader.done
    finally:
        lock.release_read()
    unmap.join(10)
    reader.join(10)
    with pytest.raises(ValueError):
        mem.view(0, 1)  # unmapped


# --------------------------------------------------------------------------
# The simulated guest (KVM_RUN)
# --------------------------------------------------------------------------


def test_run_immediate_exit_and_kicks() -> None:
    with pv_vm(boot=False) as env:
        host, vcpu = env.host, env.vcpus[0]
        run = vcpu.run_struct
        run.immediate_exit = 1
        run.exit_reason = 77
        with pytest.raises(KvmError) as ei:
            vcpu.run(retry_eintr=False)
        assert ei.value.errno == errno.EINTR and run.exit_reason == 77  # s390: untouched
        run.immediate_exit = 0
        host.kick(vcpu.fd)  # pending kick: the next KVM_RUN exits at once
        with pytest.raises(KvmError):
            vcpu.run(retry_eintr=False)
        assert run.exit_reason == uapi.KVM_EXIT_INTR and env.info().secure_bytes == 0
        # A guest inside KVM_RUN (held after a slice of its boot) leaves
        # when immediate_exit is set, with KVM_EXIT_INTR.
        host.pause_at("run:slice")
        t = Bg(lambda: vcpu.run(retry_eintr=False))
        assert host.wait_paused("run:slice")
        assert not t.done and host.vcpu_in_run(vcpu.fd)
        run.immediate_exit = 1
        host.resume("run:slice")
        with pytest.raises(KvmError):
            t.join()
        assert run.exit_reason == uapi.KVM_EXIT_INTR
        run.immediate_exit = 0
        assert run_to_end(vcpu)  # the rest of the boot: every page secure, disabled wait
        assert env.info().secure_bytes == 2 * SLOT
        # A finished guest stays in its disabled wait: KVM_RUN returns at once.
        assert vcpu.run() == uapi.KVM_EXIT_S390_SIEIC
        assert vcpu.s390_run().s390_sieic.icptcode == uapi.ICPT_WAIT
        with pytest.raises(OSError):
            host.kick(env.vm.fd)  # not a vCPU fd


def test_run_imports_in_slices_and_clears() -> None:
    with pv_vm(boot=False, run_slice_bytes=MiB) as env:
        host, vcpu = env.host, env.vcpus[0]
        assert env.high is not None
        env.low.fill(0xEE)
        env.high.fill(0xEE)
        host.pause_at("run:slice")
        t = Bg(lambda: vcpu.run())
        assert host.wait_paused("run:slice")
        assert env.info().secure_bytes == MiB
        host.resume("run:slice")
        assert t.join() == uapi.KVM_EXIT_S390_SIEIC
        assert zero(env.low) and zero(env.high) and host.stats().imported_bytes == 2 * SLOT


def test_run_non_protected_guest_exports_and_halts() -> None:
    with pv_vm() as env:
        host, vcpu = env.host, env.vcpus[0]
        assert cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE).ret == 0
        assert env.info().old_secure_bytes == SLOT  # the high slot
        assert run_to_end(vcpu)
        assert env.info().old_secure_bytes == 0 and host.stats().exported_bytes == SLOT
        assert run_to_end(vcpu)  # the disabled wait ends every KVM_RUN at once
        assert cmd(env.vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM).ret == 0


def test_fatal_signal_interrupts_kvm_run() -> None:
    with pv_vm() as env:
        host, vcpu = env.host, env.vcpus[0]

        def run() -> int:
            host.deliver_fatal_signal(threading.get_native_id())
            try:
                return vcpu.run(retry_eintr=False)
            finally:
                host.clear_fatal_signal(threading.get_native_id())

        with pytest.raises(KvmError) as ei:
            Bg(run).join()
        assert ei.value.errno == errno.EINTR


# --------------------------------------------------------------------------
# Image and dump commands (minimal models)
# --------------------------------------------------------------------------


def test_image_commands() -> None:
    with pv_vm(enable=False, boot=False) as env:
        vm, host = env.vm, env.host
        for c in (P.KVM_PV_SET_SEC_PARMS, P.KVM_PV_UNPACK, P.KVM_PV_VERIFY, P.KVM_PV_PREP_RESET,
                  P.KVM_PV_UNSHARE_ALL, P.KVM_PV_DUMP, P.KVM_PV_DISABLE):  # fmt: skip
            assert cmd(vm, c).errno == errno.EINVAL, c
        assert cmd(vm, P.KVM_PV_ENABLE).ret == 0
        r = cmd(vm, P.KVM_PV_VERIFY)
        assert (r.errno, r.rc) == (errno.EINVAL, uapi.UVC_RC_INV_STATE)
        hdr = ctypes.create_string_buffer(SYNTHETIC.header, 3 * 4096)
        parm = uapi.kvm_s390_pv_sec_parm(origin=ctypes.addressof(hdr), length=3 * 4096)
        assert cmd(vm, P.KVM_PV_SET_SEC_PARMS, ctypes.addressof(parm)).errno == errno.EINVAL
        assert cmd(vm, P.KVM_PV_SET_SEC_PARMS, 0).errno == errno.EFAULT
        parm.length = 0  # vmalloc(0): ENOMEM before any UV call
        r = cmd(vm, P.KVM_PV_SET_SEC_PARMS, ctypes.addressof(parm))
        assert (r.errno, r.rc) == (errno.ENOMEM, 0)
        zeros = ctypes.create_string_buffer(4096)  # no header at all: "header corrupt"
        bad = uapi.kvm_s390_pv_sec_parm(origin=ctypes.addressof(zeros), length=4096)
        r = cmd(vm, P.KVM_PV_SET_SEC_PARMS, ctypes.addressof(bad))
        assert (r.errno, r.rc) == (errno.EINVAL, 0x010A)
        parm.length = len(SYNTHETIC.header)
        assert cmd(vm, P.KVM_PV_SET_SEC_PARMS, ctypes.addressof(parm)).rc == 1
        unp = uapi.kvm_s390_pv_unp(addr=1, size=4096, tweak=0)
        assert cmd(vm, P.KVM_PV_UNPACK, ctypes.addressof(unp)).errno == errno.EINVAL
        unp.addr = 3 * GiB  # not in a memslot
        assert cmd(vm, P.KVM_PV_UNPACK, ctypes.addressof(unp)).errno == errno.EFAULT
        unp.addr, unp.size = 0, 2 * MiB
        assert cmd(vm, P.KVM_PV_UNPACK, ctypes.addressof(unp)).ret == 0
        assert env.info().secure_bytes == 2 * MiB
        host.inject_uv_failure(UVC_CMD_VERIFY_IMG, 0x0102, 0x0001)
        r = cmd(vm, P.KVM_PV_VERIFY)
        assert (r.errno, r.rc, r.rrc) == (errno.EINVAL, 0x0102, 1)
        # 2 MiB of zeros are not the image the header describes: VERIFY refuses it.
        r = cmd(vm, P.KVM_PV_VERIFY)
        assert (r.errno, r.rc) == (errno.EINVAL, 0x0102)
        for c in (P.KVM_PV_PREP_RESET, P.KVM_PV_UNSHARE_ALL):
            assert (cmd(vm, c).ret, cmd(vm, c).rc) == (0, 1)


def test_dump_commands() -> None:
    with pv_vm(boot=False) as env:
        vm = env.vm
        buf = ctypes.create_string_buffer(b"\xff" * 8192)
        dmp = uapi.kvm_s390_pv_dmp(subcmd=uapi.pv_cmd_dmp_id.KVM_PV_DUMP_COMPLETE)
        dmp.buff_addr, dmp.buff_len = ctypes.addressof(buf), 8192
        a = ctypes.addressof(dmp)
        assert cmd(vm, P.KVM_PV_DUMP, a).errno == errno.EINVAL  # not dumping yet
        dmp.subcmd = uapi.pv_cmd_dmp_id.KVM_PV_DUMP_INIT
        assert cmd(vm, P.KVM_PV_DUMP, a).ret == 0
        assert cmd(vm, P.KVM_PV_DUMP, a).errno == errno.EINVAL  # twice
        dmp.subcmd, dmp.buff_len = uapi.pv_cmd_dmp_id.KVM_PV_DUMP_CONFIG_STOR_STATE, 0x100
        assert cmd(vm, P.KVM_PV_DUMP, a).ret == 0 and dmp.gaddr == 2 * MiB
        dmp.subcmd, dmp.buff_len = uapi.pv_cmd_dmp_id.KVM_PV_DUMP_COMPLETE, 16
        assert cmd(vm, P.KVM_PV_DUMP, a).errno == errno.EINVAL
        dmp.buff_len = 8192
        assert cmd(vm, P.KVM_PV_DUMP, a).ret == 0 and buf.raw[:4096] == bytes(4096)
        dmp.subcmd = 99
        assert cmd(vm, P.KVM_PV_DUMP, a).errno == errno.ENOTTY
        # KVM_S390_PV_CPU_COMMAND(KVM_PV_DUMP/KVM_PV_DUMP_CPU) on the vCPU fd.
        vcpu = env.vcpus[0]
        cpu = uapi.kvm_pv_cmd(cmd=P.KVM_PV_DUMP, data=a)
        dmp.subcmd, dmp.buff_len = uapi.pv_cmd_dmp_id.KVM_PV_DUMP_CPU, 100
        assert vcpu.ioctl(uapi.KVM_S390_PV_CPU_COMMAND, cpu, check=False) == -errno.EINVAL
        dmp.buff_len = 4096
        assert vcpu.ioctl(uapi.KVM_S390_PV_CPU_COMMAND, cpu, check=False) == 0
        assert (cpu.rc, cpu.rrc) == (1, 0)
        cpu.flags = 1
        assert vcpu.ioctl(uapi.KVM_S390_PV_CPU_COMMAND, cpu, check=False) == -errno.EINVAL
        assert vcpu.ioctl(uapi.KVM_GET_REGS, uapi.kvm_regs(), check=False) == -errno.ENOTTY


def test_close_all_releases_everything() -> None:
    host = sim()
    with GuestMemory(SLOT) as mem:
        kvm_fd = host.open("/dev/kvm", 0)
        vm_fd = host.ioctl(kvm_fd, uapi.KVM_CREATE_VM, 0)
        region = uapi.kvm_userspace_memory_region(
            slot=0, guest_phys_addr=0, memory_size=SLOT, userspace_addr=mem.addr
        )
        host.ioctl(vm_fd, uapi.KVM_SET_USER_MEMORY_REGION, region)
        vcpu_fd = host.ioctl(vm_fd, uapi.KVM_CREATE_VCPU, 0)
        addr = host.mmap(vcpu_fd, 4096, 3, 1)
        assert uapi.kvm_run.from_address(addr).exit_reason == 0
        pv = uapi.kvm_pv_cmd(cmd=P.KVM_PV_ENABLE)
        host.ioctl(vm_fd, uapi.KVM_S390_PV_COMMAND, pv)
        assert host.open_fds() == 3 and host.protected_count == 1
        host.close_all()
        assert host.open_fds() == 0
        (info,) = host.vms()  # the kvm_run mapping still holds the vCPU, hence the VM
        assert info.alive
        host.munmap(addr, 4096)
        assert host.vms() == [] and host.protected_count == 0


# --------------------------------------------------------------------------
# Scale: page state as ranges
# --------------------------------------------------------------------------


def test_16g_guest_fits_as_ranges() -> None:
    """A 16 GiB guest through boot, PREPARE, PERFORM: ranges only, no memory touched."""
    host = sim(clear_memory=False, run_slice_bytes=256 * MiB, batch_bytes=256 * MiB)
    size = 16 * GiB
    with GuestMemory(size) as mem, Kvm(sys=host) as kvm, kvm.vm_create() as vm:
        vm.mem_add(mem)  # virtual only: MAP_NORESERVE, never touched
        vcpus = [vm.vcpu_add(i) for i in range(2)]
        tracemalloc.start()
        try:
            pv_cmd(vm, P.KVM_PV_ENABLE)
            for v in vcpus:
                assert run_to_end(v)
            assert host.vm_info(vm.fd).secure_bytes == size
            pv_cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE)
            assert host.vm_info(vm.fd).old_secure_bytes == size - 2 * GiB
            assert pv_cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM).ret == 0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * MiB, f"bookkeeping peaked at {peak} bytes"
        assert host.stats().destroyed_bytes == size and host.protected_count == 0


def test_repeated_async_reboots_leave_nothing_behind() -> None:
    host = sim()
    fds_before = len(os.listdir("/proc/self/fd"))
    with GuestMemory(4 * MiB) as low, GuestMemory(4 * MiB) as high:
        with Kvm(sys=host) as kvm:
            for _ in range(30):
                with kvm.vm_create() as vm:
                    vm.mem_add(low, slot=0, gpa=0)
                    vm.mem_add(high, slot=1, gpa=HIGH_GPA)
                    vcpu = vm.vcpu_add(0)
                    pv_cmd(vm, P.KVM_PV_ENABLE)
                    assert run_to_end(vcpu)
                    for _ in range(2):
                        pv_cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PREPARE)
                        perform = Bg(lambda: pv_cmd(vm, P.KVM_PV_ASYNC_CLEANUP_PERFORM))
                        pv_cmd(vm, P.KVM_PV_ENABLE)
                        assert run_to_end(vcpu)
                        assert perform.join().ret == 0
            assert host.open_fds() == 1
    assert host.open_fds() == 0 and host.vms() == [] and host.configs() == []
    assert host.protected_count == 0 and host.secure_bytes() == {}
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert len(host.uv_calls()) <= 4096


# --------------------------------------------------------------------------
# What a real s390x host requires of the process and the vCPU protocol (spec 10)
# --------------------------------------------------------------------------


def test_create_vm_needs_pgste() -> None:
    """s390_enable_sie(): no PGSTEs, no VM -- after the machine-type checks, EINVAL."""
    host = sim(pgste=False)
    with Kvm(sys=host) as kvm:
        assert kvm.ioctl(uapi.KVM_CREATE_VM, 0, check=False) == -errno.EINVAL
        assert kvm.ioctl(uapi.KVM_CREATE_VM, 2, check=False) == -errno.EINVAL
    assert host.open_fds() == 0
    with Kvm(sys=sim()) as kvm:  # the default models a process that has them
        kvm.vm_create().close()


def test_a_pv_command_leaves_stopped_vcpus_stopped() -> None:
    """Any PV command, even a failing one, gives userspace CPU state control (spec 10.2)."""
    for prot_virt_host in (True, False):
        with pv_vm(enable=False, prot_virt_host=prot_virt_host) as env:
            vcpu = env.vcpus[0]
            assert vcpu.get_mp_state() == uapi.KVM_MP_STATE_STOPPED  # a new vCPU
            r = cmd(env.vm, 99)
            assert r.errno in (errno.EINVAL, errno.ENOTTY)
            assert vcpu.ioctl(uapi.KVM_RUN, check=False) == -errno.EINVAL
            assert vcpu.set_mp_state(uapi.KVM_MP_STATE_LOAD, check=False) == -errno.ENXIO
            assert vcpu.set_mp_state(uapi.KVM_MP_STATE_CHECK_STOP, check=False) == -errno.ENXIO
            vcpu.set_mp_state(uapi.KVM_MP_STATE_OPERATING)
            assert vcpu.get_mp_state() == uapi.KVM_MP_STATE_OPERATING
            assert run_to_end(vcpu)
            vcpu.s390_stop()
            assert vcpu.ioctl(uapi.KVM_RUN, check=False) == -errno.EINVAL


def test_without_user_control_kvm_run_starts_the_vcpu() -> None:
    """No PV command, no KVM_SET_MP_STATE: KVM_RUN starts a STOPPED vCPU itself."""
    with pv_vm(enable=False) as env:
        vcpu = env.vcpus[0]
        assert vcpu.get_mp_state() == uapi.KVM_MP_STATE_STOPPED
        reason = vcpu.run()  # PSW 0 in kvm_run: not a wait, so the guest runs
        assert reason == uapi.KVM_EXIT_S390_SIEIC and reason != uapi.KVM_EXIT_HLT
        assert vcpu.get_mp_state() == uapi.KVM_MP_STATE_OPERATING
        vcpu.s390_normal_reset()  # a normal reset stops it (no user control)
        assert vcpu.get_mp_state() == uapi.KVM_MP_STATE_STOPPED


def test_cpu_resets() -> None:
    """Initial and clear reset zero the PSW; a protected CPU's resets are UV calls."""
    with pv_vm() as env:
        host, vcpu = env.host, env.vcpus[0]
        run = vcpu.s390_run()
        assert (run.psw_mask, run.psw_addr) == (PAYLOAD_DONE_PSW[0], 0xFFF)
        vcpu.s390_normal_reset()
        assert run.psw_addr == 0xFFF  # a normal reset keeps the PSW
        vcpu.s390_initial_reset()
        assert (run.psw_mask, run.psw_addr) == (0, 0)
        vcpu.s390_clear_reset()
        names = [c.name for c in host.uv_calls() if c.cmd in (0x0310, 0x0311, 0x0321)]
        assert names == ["CPU Reset", "CPU Reset Initial", "CPU Reset Clear"]
        assert vcpu.get_mp_state() == uapi.KVM_MP_STATE_OPERATING  # user control: no stop


def test_protected_guest_over_a_memslot_hole_fails_kvm_run() -> None:
    """The kernel's answer (the default): the guest's first store into the hole below the
    highest memslot end is an addressing exception KVM cannot inject into a protected guest
    (__deliver_prog_pv()), so KVM_RUN fails with EINVAL -- after the memory below is secure.
    One contiguous memslot from 0 runs to the payload's end."""
    host = SimulatedHost()
    with pv_vm(host, boot=False) as env:
        with pytest.raises(KvmError) as info:
            run_to_end(env.vcpus[0])
        assert info.value.errno == errno.EINVAL and "KVM_RUN" in str(info.value)
        assert host.vm_info(env.vm.fd).secure_bytes == SLOT  # the slot below, not the one above
    with pv_vm(SimulatedHost(), high=False) as env:  # one slot from 0: booted by pv_vm
        assert env.vcpus[0].s390_run().psw_addr == 0xFFF
    # the old two-slot layout of the image checks (8 MiB at 0, 16 MiB at 2 GiB): the same
    host = SimulatedHost()
    with Kvm(sys=host) as kvm, kvm.vm_create() as vm:
        low, high = GuestMemory(8 * MiB, sys=host), GuestMemory(16 * MiB, sys=host)
        try:
            vm.mem_add(low, slot=0, gpa=0)
            vm.mem_add(high, slot=1, gpa=2 * GiB)
            vcpu = vm.vcpu_add(0)
            load_image(vm, SYNTHETIC)
            reset_vcpus([vcpu])
            s390_machine_protect(vm, SYNTHETIC, [vcpu])
            with pytest.raises(KvmError) as info:
                run_until_finished(vcpu)
            assert info.value.errno == errno.EINVAL
        finally:
            vm.close()
            low.close()
            high.close()


def test_unpack_splits_large_folios_and_retries() -> None:
    """make_hva_secure(): a page in a large folio is -EAGAIN after the folio is split, and
    kvm_s390_pv_unpack() retries it (commit 3ec8a8330a1a): every page is imported, the image
    verifies, the guest's own faults split the folios it meets; one UNPACK_IMG UV call per
    UNPACK whatever the folios."""
    host = SimulatedHost()
    with pytest.raises(ValueError):
        host.back_with_large_folios(0x10000, 0x1000, 0x4000)  # not whole folios
    with pytest.raises(ValueError):
        host.back_with_large_folios(0x10000, 0x6000, 0x6000)  # not a power of two
    with pv_vm(host, high=False, enable=False) as env:
        base = env.low.addr
        host.back_with_large_folios(base, SLOT, 16 << 10)  # image and the rest of the slot
        assert host.large_folio_bytes(base, SLOT) == SLOT
        cfg_ret: list[Any] = []
        real = host.make_hva_secure

        def spy(cfg: Any, s: int, e: int, **kw: Any) -> int:
            ret = real(cfg, s, e, **kw)
            cfg_ret.append(ret)
            return ret

        host.make_hva_secure = spy  # type: ignore[method-assign]
        load_image(env.vm, SYNTHETIC)
        reset_vcpus(env.vcpus)
        booted = s390_machine_protect(env.vm, SYNTHETIC, env.vcpus)
        assert booted.verified
        pages = sum(c.size for c in SYNTHETIC.components) // 4096
        assert cfg_ret.count(-errno.EAGAIN) >= 2  # at least one folio per component
        unpacks = [c for c in host.uv_calls() if c.cmd == UVC_CMD_UNPACK_IMG]
        assert len(unpacks) == len(SYNTHETIC.components)
        assert sum(c.pages for c in unpacks) == pages
        run_until_finished(env.vcpus[0])
        assert host.large_folio_bytes(base, SLOT) == 0  # the guest's faults split the rest
        assert host.vm_info(env.vm.fd).secure_bytes == SLOT


def test_dirty_file_folios_are_written_back_then_split() -> None:
    """s390_wiggle_split_folio() (commit ab73b29efd36): split_folio() refuses a dirty large folio
    of an iomap file (-EBUSY), so it is written back and split at once; make_hva_secure()'s
    lookup through a writable PTE dirties it again.  UNPACK then completes with one retry per
    folio, every folio written back exactly once, and the image verifies."""
    host = SimulatedHost()
    folio = 16 << 10
    with pv_vm(host, high=False, enable=False) as env:
        base = env.low.addr
        host.back_with_large_folios(base, folio, folio, iomap_file=True)
        assert host.unsplittable_folio_bytes(base, SLOT) == folio
        assert host.s390_wiggle_split_folio(base + 4096) == 0  # written back, then split
        assert (host.large_folio_bytes(base, SLOT), host.written_back_bytes()) == (0, folio)
        assert host.s390_wiggle_split_folio(base) == 0  # small now: nothing to do
        assert host.written_back_bytes() == folio
        # the image's pages, as the check sets them up: dirty file folios
        lo = min(c.addr for c in SYNTHETIC.components) // folio * folio
        hi = -(-max(c.addr + c.size for c in SYNTHETIC.components) // folio) * folio
        host.back_with_large_folios(base + lo, hi - lo, folio, iomap_file=True)
        assert host.unsplittable_folio_bytes(base + lo, hi - lo) == hi - lo
        load_image(env.vm, SYNTHETIC)
        reset_vcpus(env.vcpus)
        booted = s390_machine_protect(env.vm, SYNTHETIC, env.vcpus)
        assert booted.verified
        assert host.large_folio_bytes(base, SLOT) == 0
        assert host.written_back_bytes() == folio + hi - lo  # once per folio
        assert host.unpack_retries() == (hi - lo) // folio  # one retry per folio, no spin
        run_until_finished(env.vcpus[0])
        assert host.vm_info(env.vm.fd).secure_bytes == SLOT


def test_mem_limit_and_memslots_stay_inside_the_asce() -> None:
    """kvm_s390_set_mem_control(): EBUSY below an existing memslot's end; and
    kvm_arch_prepare_memory_region(): EINVAL for a slot beyond asce_contains_gfn() (both commit
    7b53b4801884, v7.1); a move counts as a new slot, a delete or a flags change does not."""
    host = sim(host_mem_limit=1 << 42)
    with Kvm(sys=host) as kvm, GuestMemory(SLOT, sys=host) as mem:
        with kvm.vm_create() as vm:
            vm.set_user_memory_region(0, 4 * GiB - SLOT, SLOT, mem.addr)
            assert vm.s390_set_mem_limit(2 * GiB, check=False) == -errno.EBUSY
            assert vm.s390_set_mem_limit(4 * GiB - MiB, check=False) == -errno.EBUSY
            assert host.vm_info(vm.fd).asce_type == "region-3"  # the gmap was left alone
            assert vm.s390_set_mem_limit(4 * GiB) == 0
            assert vm.mem_remove(0) == 0
            assert vm.s390_set_mem_limit(2 * GiB) == 0  # no memslot any more
        with kvm.vm_create() as vm:
            assert vm.s390_set_mem_limit(2 * GiB) == 0
            assert host.vm_info(vm.fd).asce_type == "segment"
            ret = vm.set_user_memory_region(0, 2 * GiB, SLOT, mem.addr, check=False)
            assert ret == -errno.EINVAL
            vm.set_user_memory_region(0, 2 * GiB - SLOT, SLOT, mem.addr)
            ret = vm.set_user_memory_region(0, 2 * GiB, SLOT, mem.addr, check=False)  # a move
            assert ret == -errno.EINVAL
            flags = uapi.KVM_MEM_LOG_DIRTY_PAGES
            assert vm.set_user_memory_region(0, 2 * GiB - SLOT, SLOT, mem.addr, flags) == 0
        with kvm.vm_create() as vm:  # no limit set: the host's 4 TiB, a region-third table
            vm.set_user_memory_region(0, (1 << 42) - SLOT, SLOT, mem.addr)
            ret = vm.set_user_memory_region(1, 1 << 42, SLOT, mem.addr, check=False)
            assert ret == -errno.EINVAL  # kvm->arch.mem_limit already refuses it
