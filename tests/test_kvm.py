# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv.kvm on the real /dev/kvm: handles, caps, memslots, vCPUs, errors, close."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from collections.abc import Iterator

import pytest

from kvmpv import uapi
from kvmpv.errors import EXIT_ENV, HostError, KvmError, PvCmdError
from kvmpv.kvm import KVM_DEV_ENV, Kvm, KvmpvOpenError, Vm, kvm_dev_path
from kvmpv.memory import GuestMemory
from kvmpv.pv import pv_cmd

X86 = platform.machine() == "x86_64"
needs_x86 = pytest.mark.skipif(not X86, reason="x86_64 host behaviour")
MiB = 1 << 20


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def vm(kvm: Kvm) -> Iterator[Vm]:
    with kvm.vm_create() as handle:
        yield handle


def test_api_version(kvm: Kvm) -> None:
    assert kvm.get_api_version() == uapi.KVM_API_VERSION == 12
    assert kvm.vcpu_mmap_size() >= 4096
    assert kvm.backend == "kvm"


def test_check_cap_on_dev_and_vm(kvm: Kvm, vm: Vm) -> None:
    user_memory = uapi.KvmCap.KVM_CAP_USER_MEMORY
    assert kvm.check_cap(user_memory) > 0
    assert vm.check_cap(user_memory) > 0
    assert kvm.has_cap(uapi.KvmCap.KVM_CAP_NR_VCPUS)
    # An unknown capability is 0, not an error (kvm_vm_ioctl_check_extension default).
    assert kvm.check_cap(0x7FFFFFF) == 0
    assert vm.check_cap(0x7FFFFFF) == 0


@needs_x86
def test_s390_pv_caps_are_zero_on_x86(kvm: Kvm, vm: Vm) -> None:
    for cap in (
        uapi.KvmCap.KVM_CAP_S390_PROTECTED,
        uapi.KvmCap.KVM_CAP_S390_PROTECTED_DUMP,
        uapi.KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE,
    ):
        assert kvm.check_cap(cap) == 0, cap.name
        assert vm.check_cap(cap) == 0, cap.name


@needs_x86
def test_pv_command_is_enotty_on_x86(vm: Vm) -> None:
    cmd = uapi.kvm_pv_cmd(cmd=uapi.pv_cmd_id.KVM_PV_ENABLE)
    assert vm.pv_ioctl(cmd) == -errno.ENOTTY
    assert (cmd.rc, cmd.rrc) == (0, 0)
    with pytest.raises(PvCmdError) as info:
        pv_cmd(vm, uapi.pv_cmd_id.KVM_PV_ASYNC_CLEANUP_PREPARE)
    assert info.value.errno == errno.ENOTTY
    msg = str(info.value)
    assert "KVM_S390_PV_COMMAND" in msg and "KVM_PV_ASYNC_CLEANUP_PREPARE" in msg
    assert "ENOTTY" in msg and "no UV call executed" in msg


def test_memslots_add_delete_overlap(vm: Vm) -> None:
    with GuestMemory(4 * MiB) as a, GuestMemory(4 * MiB) as b:
        vm.mem_add(a, slot=0, gpa=0)
        assert vm.memslots[0].memory_size == 4 * MiB
        # Overlapping guest-physical ranges in another slot: EEXIST (kvm_set_memslot).
        assert vm.set_user_memory_region(1, 2 * MiB, b.size, b.addr, check=False) == -errno.EEXIST
        assert 1 not in vm.memslots
        with pytest.raises(KvmError) as info:
            vm.mem_add(b, slot=1, gpa=2 * MiB)
        assert info.value.errno == errno.EEXIST
        assert info.value.ioctl == "KVM_SET_USER_MEMORY_REGION"
        assert str(info.value).startswith("KVM_SET_USER_MEMORY_REGION failed: errno 17 (EEXIST)")
        # Unaligned gpa: EINVAL (check_memory_region_flags / PAGE_SIZE checks).
        assert vm.set_user_memory_region(1, 4 * MiB + 1, b.size, b.addr, check=False) == (
            -errno.EINVAL
        )
        vm.mem_add(b, slot=1, gpa=4 * MiB)
        assert sorted(vm.memslots) == [0, 1]
        assert vm.mem_remove(0) == 0
        assert sorted(vm.memslots) == [1]
        # The range is free again after the delete.
        vm.set_user_memory_region(2, 0, a.size, a.addr)
        assert sorted(vm.memslots) == [1, 2]
        vm.mem_remove(1)
        vm.mem_remove(2)
        assert vm.memslots == {}


def test_vcpu_add_and_kvm_run_mmap(kvm: Kvm, vm: Vm) -> None:
    vcpu = vm.vcpu_add(0)
    assert vm.vcpus == [vcpu]
    # kvm_run is mapped and writable: immediate_exit is the field userspace sets.
    vcpu.run_struct.immediate_exit = 1
    assert uapi.kvm_run.from_address(vcpu._run_addr).immediate_exit == 1
    vcpu.run_struct.immediate_exit = 0
    with pytest.raises(KvmError) as info:
        vm.vcpu_add(0)
    assert info.value.errno == errno.EEXIST and info.value.ioctl == "KVM_CREATE_VCPU"
    regs = vcpu.get_regs()
    regs.rax = 0x1234
    vcpu.set_regs(regs)
    assert vcpu.get_regs().rax == 0x1234


@needs_x86
def test_immediate_exit_returns_eintr(vm: Vm) -> None:
    vcpu = vm.vcpu_add(0)
    vcpu.run_struct.immediate_exit = 1
    with pytest.raises(KvmError) as info:
        vcpu.run(retry_eintr=False)
    assert info.value.errno == errno.EINTR and info.value.ioctl == "KVM_RUN"


@needs_x86
def test_device_attr_errors_on_x86(kvm: Kvm, vm: Vm) -> None:
    # x86 has no VM-fd device attributes: kvm_arch_vm_ioctl answers ENOTTY.
    group, attr = uapi.KVM_S390_VM_MEM_CTRL, uapi.KVM_S390_VM_MEM_LIMIT_SIZE
    assert vm.has_device_attr(group, attr, check=False) == -errno.ENOTTY
    with pytest.raises(KvmError) as info:
        vm.s390_set_mem_limit(1 << 32)
    assert info.value.ioctl == "KVM_SET_DEVICE_ATTR" and info.value.errno == errno.ENOTTY
    # /dev/kvm has the x86 system group (KVM_X86_GRP_SYSTEM = 0,
    # KVM_X86_XCOMP_GUEST_SUPP = 0) since Linux 5.17: unknown attributes
    # are ENXIO, and SET is not a /dev/kvm ioctl at all (EINVAL).
    if kvm.has_device_attr(0, 0, check=False) != 0:
        pytest.skip("this kernel has no KVM_X86_GRP_SYSTEM attributes on /dev/kvm")
    assert kvm.has_device_attr(0, 2, check=False) == -errno.ENXIO
    assert kvm.has_device_attr(1, 0, check=False) == -errno.ENXIO
    value = ctypes.c_uint64(0)
    assert kvm.get_device_attr(0, 0, ctypes.addressof(value)) == 0
    assert value.value & 0x3 == 0x3  # XCOMP guest support always has x87 and SSE
    assert kvm.set_device_attr(0, 0, ctypes.addressof(value), check=False) == -errno.EINVAL


def test_checked_vs_unchecked(vm: Vm) -> None:
    assert vm.ioctl(uapi.KVM_CHECK_EXTENSION, uapi.KvmCap.KVM_CAP_USER_MEMORY, check=False) > 0
    bogus = uapi._IO(uapi.KVMIO, 0xFF)
    assert vm.ioctl(bogus, 0, check=False) == -errno.ENOTTY
    with pytest.raises(KvmError) as info:
        vm.ioctl(bogus, 0)
    assert info.value.errno == errno.ENOTTY
    assert str(info.value) == (
        "ioctl 0x0000aeff failed: errno 25 (ENOTTY) Inappropriate ioctl for device"
    )
    assert isinstance(info.value, OSError)  # `except OSError` still works


def test_closed_handle_refuses_ioctls(kvm: Kvm) -> None:
    vm = kvm.vm_create()
    vm.close()
    vm.close()  # idempotent
    with pytest.raises(KvmError) as info:
        vm.check_cap(uapi.KvmCap.KVM_CAP_USER_MEMORY)
    assert info.value.errno == errno.EBADF and "already closed" in str(info.value)
    assert vm not in kvm.vms


def test_deterministic_close(kvm: Kvm) -> None:
    del kvm  # the fixture's handle is one fd before and after; count without it
    before = open_fds()
    with Kvm() as k, k.vm_create() as vm, GuestMemory(2 * MiB) as mem:
        vm.mem_add(mem)
        vm.vcpu_add(0)
        vm.vcpu_add(1)
        assert len(open_fds() - before) == 4  # /dev/kvm, VM, 2 vCPUs
    assert open_fds() == before
    # Closing /dev/kvm closes what was made from it, vCPUs first.
    k = Kvm()
    vm = k.vm_create()
    vcpu = vm.vcpu_add(0)
    k.close()
    assert vcpu.closed and vm.closed and k.closed
    assert open_fds() == before
    # An exception inside the block closes everything too.
    with pytest.raises(RuntimeError), Kvm() as k, k.vm_create() as vm:
        vm.vcpu_add(0)
        raise RuntimeError("boom")
    assert open_fds() == before


def test_kvm_dev_override_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv(KVM_DEV_ENV, "/nonexistent/kvm")
    assert kvm_dev_path() == "/nonexistent/kvm"
    with pytest.raises(KvmpvOpenError) as info:
        Kvm()
    assert info.value.errno == errno.ENOENT and info.value.exit_code == EXIT_ENV
    assert str(info.value).startswith("open(/nonexistent/kvm) failed (no KVM on this host")


def test_kvm_dev_override_not_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    before = open_fds()
    monkeypatch.setenv(KVM_DEV_ENV, "/dev/null")
    with pytest.raises(HostError) as info:
        Kvm()
    assert "/dev/null is not a KVM device" in str(info.value) and "ENOTTY" in str(info.value)
    assert open_fds() == before  # the fd of the wrong device did not leak


def test_not_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(HostError) as info:
        Kvm()
    assert str(info.value) == "kvmpv needs Linux; this is darwin"
