# SPDX-License-Identifier: GPL-2.0-only
"""A tiny real x86_64 guest that writes one byte into every 4 KiB page of its memory and halts.

Used by the real-KVM tests and by ``kvmpv shutdown --vm`` to give a VM real,
guest-touched memory before it is torn down.  Touches only what it is given:
a ``Vm`` (it adds one vCPU and a temporary "boot" memslot) and the
``GuestMemory`` to write.

How the guest runs (found by experiment on this project's x86_64 hosts, whose
``/dev/kvm`` is PVM, a nested paravirtual backend, see
``shared/spec/python-ecosystem.md`` section 3):

* The vCPU is put straight into 64-bit long mode with ``KVM_SET_SREGS``
  (CR0.PG|PE, CR4.PAE, EFER.LME|LMA, a 64-bit code segment), as the KVM
  selftests do; no real-mode trampoline.  Real mode would cover only 1 MiB.
* Guest-physical memory is identity mapped with **2 MiB pages**: one PML4,
  one PDPT per 512 GiB, one page directory per GiB.  1 GiB pages do *not*
  work here: ``KVM_GET_SUPPORTED_CPUID`` reports no PDPE1GB and a PDPT entry
  with PS set is a reserved-bit fault, which the guest (it has no IDT) turns
  into a triple fault, ``KVM_EXIT_SHUTDOWN``.  2 MiB pages are architectural
  in long mode and need no CPUID bit, so they work on any x86_64 KVM.
* The vCPU gets the CPUID that ``KVM_GET_SUPPORTED_CPUID`` offers
  (``vcpu_init_cpuid`` in the selftests), so that MAXPHYADDR is the host's
  and not KVM's default of 36 bits: without it every gpa above 64 GiB would
  be a reserved-bit fault.
* Memory it registers itself goes at gpa 4 GiB: at gpa 0, a guest of more
  than ~4 GiB covers 0xfee00000, the local-APIC page, and KVM reports the
  store there as ``KVM_EXIT_MMIO`` (measured: exit at page 1043968 of a 4 GiB
  guest).  For memory the caller put there, that one store is completed by
  us as a VMM completes MMIO, and counted in ``mmio_completed``.
* The page tables and the code live in a separate small memslot placed after
  the guest memory (1 GiB aligned), never in the memory being written: the
  guest writes the first byte of *every* page, which would otherwise corrupt
  its own page tables and code.  The page directories are written with one
  C-level ``array`` construction (one 8-byte entry per 2 MiB, i.e. 512 entries
  per GiB: 4 MiB of entries for a 1 TiB guest), not a loop over guest pages.

The guest code, hand-assembled (Intel syntax)::

    ; rdi = first gpa to write, rsi = end (exclusive), rdx = 4096, al = byte
    loop:
        mov  [rdi], al      ; 88 07
        add  rdi, rdx       ; 48 01 d7
        cmp  rdi, rsi       ; 48 39 f7
        jb   loop           ; 72 f6
        hlt                 ; f4

The number of pages written is what the guest itself reports: its final
``rdi`` minus the start, divided by 4096.  ``count_written`` checks the memory
independently, with one strided C-level pass.
"""

from __future__ import annotations

import array
import ctypes
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Optional

from . import uapi
from .errors import UsageError
from .kvm import Vcpu, Vm
from .memory import GuestMemory
from .runner import GuestExitError, exit_name, run_until_finished

PAGE_4K = 4096
PAGE_2M = 2 << 20
GIB = 1 << 30

#: The loop above.  Offsets: the jb at 8 jumps back by 10 bytes (0xf6) to 0.
GUEST_CODE = bytes([0x88, 0x07, 0x48, 0x01, 0xD7, 0x48, 0x39, 0xF7, 0x72, 0xF6, 0xF4])

# Page-table entry bits (Intel SDM vol. 3, 4.5).
_PTE_P = 1 << 0
_PTE_RW = 1 << 1
_PTE_PS = 1 << 7  # in a page-directory entry: this maps a 2 MiB page

# Control registers for long mode.
_CR0_PE = 1 << 0
_CR0_MP = 1 << 1
_CR0_ET = 1 << 4
_CR0_NE = 1 << 5
_CR0_WP = 1 << 16
_CR0_PG = 1 << 31
_CR4_PAE = 1 << 5
_EFER_LME = 1 << 8
_EFER_LMA = 1 << 10

_MAX_CPUID_ENTRIES = 256


class kvm_run_mmio(ctypes.Structure):
    """``kvm_run.mmio``, the KVM_EXIT_MMIO member of the exit union (offset 32)."""

    _fields_ = [
        ("phys_addr", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * 8),
        ("len", ctypes.c_uint32),
        ("is_write", ctypes.c_uint8),
    ]


_KVM_RUN_EXIT_UNION = uapi.kvm_run.io.offset

#: Where vm_touch_memory puts memory it registers itself: above the 32-bit
#: hole, so that no page of it is shadowed by the local APIC (0xfee00000)
#: or other x86 MMIO that KVM handles itself.
DEFAULT_GPA = 1 << 32

MODE = "x86_64 long mode, identity-mapped 2 MiB pages"

#: ``jmp $``: a guest that never finishes, for kick tests (it leaves KVM_RUN
#: only when kicked).
SPIN_CODE = bytes([0xEB, 0xFE])


@dataclass(frozen=True)
class GuestTouchResult:
    """What ``vm_touch_memory`` observed."""

    exit_reason: int  # KVM_EXIT_HLT
    exit_name: str
    pages_written: int  # reported by the guest (its final rdi)
    gpa: int  # guest-physical start of the memory written
    size_bytes: int
    run_s: float  # wall time inside KVM_RUN
    mmio_completed: int = 0  # stores KVM reported as MMIO (local-APIC page), done by us
    mode: str = MODE
    backend: str = "kvm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Layout:
    boot_gpa: int
    boot_size: int
    n_pdpt: int
    n_pd: int
    code_off: int


def _layout(map_end: int) -> _Layout:
    """Boot slot after ``map_end`` (1 GiB aligned) holding PML4, PDPTs, PDs, code.

    The identity map covers [0, boot_gpa + 1 GiB), which includes the boot
    slot itself (it is far smaller than 1 GiB for any guest below 128 TiB).
    """
    boot_gpa = -(-map_end // GIB) * GIB
    mapped = boot_gpa + GIB
    n_pd = mapped // GIB
    n_pdpt = -(-n_pd // 512)
    if n_pdpt > 512:
        raise UsageError(f"guest memory ending at 0x{map_end:x} is beyond 4-level paging")
    code_off = (1 + n_pdpt + n_pd) * PAGE_4K
    boot_size = -(-(code_off + PAGE_4K) // (1 << 20)) * (1 << 20)
    return _Layout(boot_gpa, boot_size, n_pdpt, n_pd, code_off)


def _write_page_tables(boot: GuestMemory, lay: _Layout, code: Optional[bytes] = None) -> None:
    base = boot.addr
    pml4 = (ctypes.c_uint64 * 512).from_address(base)
    pdpt_gpa = lay.boot_gpa + PAGE_4K
    pd_gpa = pdpt_gpa + lay.n_pdpt * PAGE_4K
    # A handful of upper-level entries, then all PD entries in one go.
    for i in range(lay.n_pdpt):
        pml4[i] = (pdpt_gpa + i * PAGE_4K) | _PTE_P | _PTE_RW
    pdptes = array.array(
        "Q", range(pd_gpa | _PTE_P | _PTE_RW, pd_gpa + lay.n_pd * PAGE_4K, PAGE_4K)
    )
    ctypes.memmove(base + PAGE_4K, pdptes.tobytes(), len(pdptes) * 8)
    pdes = array.array("Q", range(_PTE_P | _PTE_RW | _PTE_PS, lay.n_pd * GIB, PAGE_2M))
    pd_off = PAGE_4K + lay.n_pdpt * PAGE_4K
    ctypes.memmove(base + pd_off, pdes.tobytes(), len(pdes) * 8)
    code = GUEST_CODE if code is None else code
    ctypes.memmove(base + lay.code_off, code, len(code))


def _set_cpuid(vcpu: Vcpu) -> None:
    class _Cpuid(ctypes.Structure):
        _fields_ = [
            ("nent", ctypes.c_uint32),
            ("padding", ctypes.c_uint32),
            ("entries", uapi.kvm_cpuid_entry2 * _MAX_CPUID_ENTRIES),
        ]

    cpuid = _Cpuid(nent=_MAX_CPUID_ENTRIES)
    vcpu.vm.kvm.ioctl(uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
    vcpu.ioctl(uapi.KVM_SET_CPUID2, cpuid)


def _segment(selector: int, type_: int, long_mode: bool) -> uapi.kvm_segment:
    return uapi.kvm_segment(
        base=0,
        limit=0xFFFFFFFF,
        selector=selector,
        type=type_,
        present=1,
        dpl=0,
        db=0 if long_mode else 1,
        s=1,
        l=1 if long_mode else 0,
        g=1,
    )


def _enter_long_mode(vcpu: Vcpu, cr3: int) -> None:
    sregs = vcpu.get_sregs()
    sregs.cr0 = _CR0_PE | _CR0_MP | _CR0_ET | _CR0_NE | _CR0_WP | _CR0_PG
    sregs.cr3 = cr3
    sregs.cr4 = _CR4_PAE
    sregs.efer = _EFER_LME | _EFER_LMA
    sregs.cs = _segment(0x08, 0xB, long_mode=True)  # execute/read, accessed
    data = _segment(0x10, 0x3, long_mode=False)  # read/write, accessed
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    # VMX refuses to enter a guest without a usable busy 64-bit TSS.
    sregs.tr = uapi.kvm_segment(base=0, limit=0x67, selector=0x18, type=0xB, present=1)
    vcpu.set_sregs(sregs)


def _slot_of(vm: Vm, memory: GuestMemory) -> Optional[tuple[int, int]]:
    for slot, region in vm.memslots.items():
        if region.userspace_addr == memory.addr and region.memory_size == memory.size:
            return slot, int(region.guest_phys_addr)
    return None


def vm_touch_memory(
    vm: Vm, memory: GuestMemory, *, byte: int = 0xA5, populate_first: bool = False
) -> GuestTouchResult:
    """Run a guest on ``vm`` writing ``byte`` to the first byte of each 4 KiB page of ``memory``.

    ``memory`` is registered as memslot 0 at gpa 4 GiB (``DEFAULT_GPA``,
    above the x86 32-bit MMIO hole) unless it already is a memslot of ``vm``.
    A store that KVM reports as MMIO (the local-APIC page, for memory the
    caller put at gpa 0) is completed into the memory, as a VMM would.  A
    vCPU is added (and its fd closed after the run; KVM keeps the vCPU until
    the VM goes), and a boot memslot holding page tables and code is added
    for the run and deleted afterwards.  Returns after
    ``KVM_EXIT_HLT``; any other exit raises ``GuestExitError``.

    ``populate_first=True`` populates the host pages first
    (``MADV_POPULATE_WRITE``, not timed in ``run_s``), so the guest only
    takes KVM's own faults: on the PVM backend that roughly halves the
    total for 4 KiB memory (host fault + shadow fault per page otherwise).
    """
    if not 0 <= byte <= 0xFF:
        raise UsageError(f"byte {byte} is not in 0..255")
    if vm.backend != "kvm":
        raise UsageError(f"the x86 guest needs a real x86 KVM, not backend {vm.backend!r}")
    found = _slot_of(vm, memory)
    if found is None:
        if 0 in vm.memslots:
            raise UsageError("memslot 0 is taken by other memory; register the memory first")
        vm.mem_add(memory, slot=0, gpa=DEFAULT_GPA)
        found = (0, DEFAULT_GPA)
    _, gpa = found
    map_end = max(int(r.guest_phys_addr + r.memory_size) for r in vm.memslots.values())
    lay = _layout(map_end)
    boot_slot = max(vm.memslots) + 1
    vcpu_id = max((v.id for v in vm.vcpus), default=-1) + 1

    if populate_first:
        memory.populate()
    with GuestMemory(lay.boot_size) as boot:
        _write_page_tables(boot, lay)
        vm.mem_add(boot, slot=boot_slot, gpa=lay.boot_gpa)
        try:
            with vm.vcpu_add(vcpu_id) as vcpu:
                _set_cpuid(vcpu)
                _enter_long_mode(vcpu, lay.boot_gpa)
                regs = uapi.kvm_regs(
                    rip=lay.boot_gpa + lay.code_off,
                    rflags=0x2,  # bit 1 is always set; IF=0: no interrupts wanted
                    rdi=gpa,
                    rsi=gpa + memory.size,
                    rdx=PAGE_4K,
                    rax=byte,
                )
                vcpu.set_regs(regs)
                mmio_pages = 0

                def complete_mmio(reason: int) -> bool:
                    nonlocal mmio_pages
                    done = reason == uapi.KVM_EXIT_MMIO and _complete_mmio(vcpu, memory, gpa)
                    mmio_pages += done
                    return done

                def where() -> str:
                    now = vcpu.get_regs()
                    pages = (int(now.rdi) - gpa) // PAGE_4K
                    return f"at rip 0x{int(now.rip):x}, {pages} pages written"

                start = time.perf_counter()
                reason = run_until_finished(vcpu, complete_mmio, where)
                run_s = time.perf_counter() - start
                after = vcpu.get_regs()
        finally:
            # The boot slot must go before its memory is unmapped, or KVM
            # would keep a memslot pointing at a hole.
            vm.mem_remove(boot_slot, check=False)
    return GuestTouchResult(
        exit_reason=reason,
        exit_name=exit_name(reason),
        pages_written=(int(after.rdi) - gpa) // PAGE_4K,
        gpa=gpa,
        size_bytes=memory.size,
        run_s=run_s,
        mmio_completed=mmio_pages,
        backend=vm.backend,
    )


@contextmanager
def spinning_vcpu(vm: Vm) -> Iterator[Vcpu]:
    """A vCPU of ``vm`` (real x86 KVM) set up to run ``jmp $`` forever, in long mode.

    Only a kick gets it out of ``KVM_RUN``: the guest kick tests use it.  Its
    boot memslot and vCPU fd go away on exit.
    """
    if vm.backend != "kvm" or vm.arch != "x86_64":
        raise UsageError(f"the spinning guest needs a real x86 KVM, not {vm.arch}/{vm.backend}")
    map_end = max((int(r.guest_phys_addr + r.memory_size) for r in vm.memslots.values()), default=0)
    lay = _layout(map_end)
    boot_slot = max(vm.memslots, default=-1) + 1
    vcpu_id = max((v.id for v in vm.vcpus), default=-1) + 1
    with GuestMemory(lay.boot_size) as boot:
        _write_page_tables(boot, lay, SPIN_CODE)
        vm.mem_add(boot, slot=boot_slot, gpa=lay.boot_gpa)
        try:
            with vm.vcpu_add(vcpu_id) as vcpu:
                _set_cpuid(vcpu)
                _enter_long_mode(vcpu, lay.boot_gpa)
                vcpu.set_regs(uapi.kvm_regs(rip=lay.boot_gpa + lay.code_off, rflags=0x2))
                yield vcpu
        finally:
            vm.mem_remove(boot_slot, check=False)


def _complete_mmio(vcpu: Vcpu, memory: GuestMemory, gpa: int) -> bool:
    """Complete a guest write that KVM turned into ``KVM_EXIT_MMIO``, as a VMM would.

    Memory registered by the caller at gpa 0 and bigger than ~4 GiB covers
    0xfee00000, the default local-APIC base: with no in-kernel irqchip, KVM
    (measured on PVM) reports the guest's store to that page as MMIO instead
    of writing the memslot.  The VMM's job is to perform the access; we store
    the byte into the backing memory and resume.  Anything else is a real
    surprise and is left to the caller's "unexpected exit" error.
    """
    mmio = kvm_run_mmio.from_address(ctypes.addressof(vcpu.run_struct) + _KVM_RUN_EXIT_UNION)
    offset = int(mmio.phys_addr) - gpa
    length = int(mmio.len)
    if not mmio.is_write or not 0 < length <= 8 or not 0 <= offset <= memory.size - length:
        return False
    ctypes.memmove(memory.addr + offset, ctypes.addressof(mmio.data), length)
    return True


def count_written(
    memory: GuestMemory, byte: int = 0xA5, offset: int = 0, length: Optional[int] = None
) -> int:
    """Pages of a range whose first byte is ``byte``: one strided C-level pass, no page loop."""
    length = memory.size - offset if length is None else length
    view = memory.view(offset, length)
    try:
        return view[::PAGE_4K].tobytes().count(bytes([byte]))
    finally:
        view.release()


__all__ = [
    "GuestExitError",
    "GuestTouchResult",
    "count_written",
    "exit_name",
    "spinning_vcpu",
    "vm_touch_memory",
]
