# SPDX-License-Identifier: GPL-2.0-only
"""The tiny real x86_64 guest: it writes every 4 KiB page of its memory and halts."""

from __future__ import annotations

import os
import platform

import pytest
from conftest import mem_available

from kvmpv import uapi, x86guest
from kvmpv.kvm import Kvm
from kvmpv.memory import GuestMemory
from kvmpv.x86guest import GuestExitError, count_written, vm_touch_memory

MiB = 1 << 20
GiB = 1 << 30

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the tiny guest is x86_64 code"
)


@pytest.mark.parametrize(
    "size,thp",
    [(64 * MiB, False), (64 * MiB, True), (256 * MiB, False), (1 * GiB, True)],
    ids=["64M-4k", "64M-thp", "256M-4k", "1G-thp"],
)
def test_guest_writes_every_page(kvm: Kvm, size: int, thp: bool) -> None:
    if mem_available() < 2 * size + 512 * MiB:
        pytest.skip(f"needs {2 * size >> 20} MiB free, {mem_available() >> 20} MiB available")
    pages = size // 4096
    with kvm.vm_create() as vm, GuestMemory(size, thp=thp) as mem:
        assert count_written(mem, 0xA5) == 0
        result = vm_touch_memory(vm, mem)
        assert result.exit_reason == uapi.KVM_EXIT_HLT and result.exit_name == "KVM_EXIT_HLT"
        assert result.pages_written == pages  # what the guest says
        assert count_written(mem, 0xA5) == pages  # what the memory says
        # Only the first byte of each page was written.
        assert count_written(mem, 0, offset=1, length=size - 4096) == pages - 1
        assert mem.usage().rss == size
        assert vm.memslots[0].memory_size == size and len(vm.memslots) == 1  # boot slot gone
        assert result.run_s > 0 and result.backend == "kvm"
        assert result.to_dict()["mode"].startswith("x86_64 long mode")


def test_guest_twice_and_at_a_high_gpa(kvm: Kvm) -> None:
    """Memory already registered elsewhere is used where it is; a second run needs a new vCPU."""
    with kvm.vm_create() as vm, GuestMemory(16 * MiB) as mem:
        gpa = 80 * GiB  # beyond KVM's default 36-bit MAXPHYADDR: needs the CPUID set
        vm.mem_add(mem, slot=3, gpa=gpa)
        first = vm_touch_memory(vm, mem)
        assert first.gpa == gpa and first.pages_written == 4096
        second = vm_touch_memory(vm, mem, byte=0x3C)
        assert second.pages_written == 4096
        assert count_written(mem, 0x3C) == 4096 and count_written(mem, 0xA5) == 0
        assert [v.id for v in vm.vcpus] == [0, 1]
        assert sorted(vm.memslots) == [3]


def test_unexpected_exit_raises_and_leaks_nothing(
    kvm: Kvm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ud2 with no IDT: #UD -> #DF -> triple fault -> KVM_EXIT_SHUTDOWN.
    monkeypatch.setattr(x86guest, "GUEST_CODE", bytes([0x0F, 0x0B]))
    fds = set(os.listdir("/proc/self/fd"))
    with kvm.vm_create() as vm, GuestMemory(4 * MiB) as mem:
        with pytest.raises(GuestExitError) as info:
            vm_touch_memory(vm, mem)
        assert info.value.exit_reason == uapi.KVM_EXIT_SHUTDOWN
        assert "KVM_EXIT_SHUTDOWN" in str(info.value) and "expected KVM_EXIT_HLT" in str(info.value)
        assert info.value.exit_code == 1
        assert sorted(vm.memslots) == [0]  # the boot slot was removed on the error path
    assert set(os.listdir("/proc/self/fd")) == fds


def test_bad_byte_and_taken_slot(kvm: Kvm) -> None:
    with kvm.vm_create() as vm, GuestMemory(2 * MiB) as a, GuestMemory(2 * MiB) as b:
        with pytest.raises(Exception, match=r"not in 0\.\.255"):
            vm_touch_memory(vm, a, byte=256)
        vm.mem_add(a, slot=0, gpa=0)
        with pytest.raises(Exception, match="memslot 0 is taken"):
            vm_touch_memory(vm, b)


def test_local_apic_page_is_completed(kvm: Kvm) -> None:
    """Memory over 0xfee00000 (the default LAPIC base): KVM exits with MMIO for that page."""
    with kvm.vm_create() as vm, GuestMemory(64 * MiB) as mem:
        gpa = 0xFC000000  # the last 64 MiB below 4 GiB
        vm.mem_add(mem, slot=0, gpa=gpa)
        result = vm_touch_memory(vm, mem)
        assert result.exit_name == "KVM_EXIT_HLT"
        # PVM reports the store to the LAPIC page as MMIO (1); a backend that
        # writes the memslot there needs none (0).  Either way every page is written.
        assert result.mmio_completed in (0, 1)
        assert result.pages_written == count_written(mem, 0xA5) == 16384


def test_default_gpa_is_above_the_32bit_hole(kvm: Kvm) -> None:
    with kvm.vm_create() as vm, GuestMemory(2 * MiB) as mem:
        result = vm_touch_memory(vm, mem)
        assert result.gpa == x86guest.DEFAULT_GPA == 4 * GiB
        assert vm.memslots[0].guest_phys_addr == 4 * GiB
        assert result.mmio_completed == 0


def test_populate_first(kvm: Kvm) -> None:
    with kvm.vm_create() as vm, GuestMemory(32 * MiB) as mem:
        result = vm_touch_memory(vm, mem, populate_first=True)
        assert result.pages_written == count_written(mem, 0xA5) == 8192
        assert mem.usage().rss == 32 * MiB
