# SPDX-License-Identifier: GPL-2.0-only
"""A tiny real s390x guest: stores each page's own address into it, then stops.

The payload kvmpv boots on s390x -- under ``qemu-system-s390x`` (TCG) here,
on a real s390x KVM host as the plain guest of ``kvmpv probe --run-guest``
and ``kvmpv shutdown --vm``, and as the kernel of a Secure Execution image
(``pvimg create -i``) on a PV host.  It needs nothing from the host: a
protected guest's memory cannot be written by the host, so it finds its
memory size by itself, storing until the store faults.

The code is ``SOURCE`` below (z/Architecture, 64-bit mode, DAT off;
position independent, no relocations), kept as hand-assembled bytes in
``CODE`` so that installing needs no cross compiler;
``tests/test_s390guest.py`` assembles ``SOURCE`` with ``s390x-linux-gnu-as``
and fails if the bytes differ.

How it stops, and why that way (spec 10.4): the store past the end of memory
raises an addressing exception; the program-new PSW (lowcore 0x1d0) sends it
to ``done``, which loads a disabled-wait PSW.  QEMU treats a disabled wait
whose address ends in 0xfff as a shutdown request (``s390_handle_wait``),
so under TCG the run ends with status ``shutdown`` (``-no-shutdown``
keeps it for QMP ``pmemsave``); KVM leaves a disabled wait to userspace as
``KVM_EXIT_S390_SIEIC`` with icptcode 0x1c (``kvm_s390_handle_wait``).

The image (``image()``): the layout of an s390 Linux kernel image, which is
what both consumers read.  Offset 0 holds the short IPL PSW
``0x00080000_80010000``; at 0x10000 a ``jg`` over the kernel header, at
0x10008 the magic ``S390EP``, 0x10400-0x10800 left zero, the code from
0x10800.  pvimg accepts a kernel only with ``S390EP`` at 0x10008 and a u64
readable at 0x10430 (its maximum command-line size; 0 means the legacy 896)
(s390-tools ``rust/pvimg/src/se_img_comps/kernel.rs``, ``check()`` and
``read_max_kernel_cmdline_size()``: "No s390x Linux kernel provided"
otherwise); stage3b panics on a kernel shorter than 0x10000 bytes
(``rust/pvimg/boot/stage3b.c``), moves the bytes from 0x10000 on to 0x10000
and starts the SE header's PSW, 64-bit at 0x10000 by default.
``qemu-system-s390x -kernel`` loads a non-ELF image at address 0, starts at
0x10000 in 64-bit mode, and once it sees ``S390EP`` writes the command line
into the parameter area at 0x10480 (``KERN_PARM_AREA``, ``s390_ipl_realize``/
``s390_ipl_load``): the code is beyond it.
"""

from __future__ import annotations

import array
import ctypes
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import uapi
from .errors import UsageError
from .kvm import Vcpu, Vm
from .memory import GuestMemory
from .runner import exit_name, run_until_finished

PAGE_4K = 4096
#: Where the code starts (s390 Linux's IMAGE_LOAD_ADDRESS / pvimg's default PSW).
ENTRY = 0x10000
#: The short (ESA/390) IPL PSW at offset 0 of an s390 kernel image: bit 12
#: set (short format), 31-bit addressing, address ENTRY.
IPL_PSW = 0x0008000080010000
#: 64-bit mode, interrupts off: the PSW kvmpv starts the plain guest with.
PSW_MASK_64 = 0x0000000180000000
#: The payload's last PSW: disabled wait at 0xfff (QEMU's "special" wait).
DONE_PSW_ADDR = 0xFFF

#: The payload's assembly source (GNU as, s390x).
SOURCE = """\
	.text
	.globl	_start
_start:
	jg	code			# over the kernel header, as arch/s390/boot/head.S
	.org	0x8
	.ascii	"S390EP"		# at 0x10008: "an s390 Linux kernel" to pvimg and QEMU
	.org	0x800			# 0x10400-0x10800: the parameter area, left zero
code:
	llihl	%r1,0x0001		# r1 = 0x00000001_00000000 (EA)
	oilh	%r1,0x8000		#    | 0x00000000_80000000 (BA): 64-bit mode
	stg	%r1,0x1d0		# program-new PSW mask: disabled, 64-bit
	larl	%r1,done
	stg	%r1,0x1d8		# program-new PSW address: done
	larl	%r2,image_end
	aghi	%r2,4095
	nill	%r2,0xf000		# r2 = first page above the image
	lghi	%r3,4096
1:	stg	%r2,0(%r2)		# the page's own address, big-endian
	agr	%r2,%r3
	j	1b			# until the store raises an addressing exception
done:
	larl	%r1,wait_psw
	lpswe	0(%r1)			# disabled wait at 0xfff: "finished"
	.align	8
wait_psw:
	.quad	0x0002000180000000,0xfff
image_end:
"""

#: Offsets in the code (from ENTRY) of the kernel header's parts.
S390EP_OFFSET = 0x8
PARM_AREA = (0x400, 0x800)
CODE_OFFSET = 0x800

#: ``SOURCE``, assembled.  ``image_end`` is at ``len(CODE)``.
CODE = bytes.fromhex("c0f400000400")  # jg code (+0x800)
CODE += bytes(S390EP_OFFSET - len(CODE)) + b"S390EP"
CODE += bytes(CODE_OFFSET - len(CODE))  # the parameter area stays zero
CODE += bytes.fromhex(
    "a51d0001"  # llihl %r1,1
    "a51a8000"  # oilh  %r1,0x8000
    "e31001d00024"  # stg   %r1,0x1d0
    "c01000000016"  # larl  %r1,done (+0x2c)
    "e31001d80024"  # stg   %r1,0x1d8
    "c0200000001f"  # larl  %r2,image_end (+0x3e)
    "a72b0fff"  # aghi  %r2,4095
    "a527f000"  # nill  %r2,0xf000
    "a7391000"  # lghi  %r3,4096
    "e32020000024"  # 1: stg %r2,0(%r2)
    "b9080023"  # agr   %r2,%r3
    "a7f4fffb"  # j     1b
    "c01000000007"  # done: larl %r1,wait_psw
    "b2b21000"  # lpswe 0(%r1)
    "07070707"  # alignment to 8 (the assembler's nopr fill)
    "0002000180000000"  # wait_psw: mask
    "0000000000000fff"  #           address
)

#: The first page the payload writes: the page after ENTRY + len(CODE).
FIRST_PAGE = -(-(ENTRY + len(CODE)) // PAGE_4K) * PAGE_4K


#: zipl's ``libc_stop()`` (s390-tools ``zipl/boot/libc.c``), how stage3a/stage3b
#: end a failed boot: a disabled-wait PSW, 31-bit, whose address is the error code.
LOADER_STOP_MASK = 0x0002000080000000
#: The boot loaders' error codes (s390-tools ``include/boot/error.h``).
LOADER_ERRORS = {
    0x4500: "EENABLE_DEV", 0x4501: "EDISABLE_DEV", 0x4502: "ESSCH", 0x4510: "EWRONGTYPE",
    0x4511: "EINTERNAL", 0x4512: "ESECUREBOOT", 0x4607: "ENOPV", 0x4608: "EPV",
}  # fmt: skip
#: The PSW's wait bit (bit 14).
PSW_MASK_WAIT = 1 << (63 - 14)


@dataclass(frozen=True)
class GuestEnd:
    """How a guest's run ended, as the exit shows it: the record of every boot.

    Only the payload's own end counts as finished: a disabled wait at 0xfff
    (``DONE_PSW_ADDR``).  A boot loader's panic ends in a disabled wait too
    (``LOADER_STOP_MASK``, address = error code), so "icptcode 0x1c" alone
    cannot tell success from a failed boot.  For a protected CPU the PSW in
    ``kvm_run`` is what ``store_regs()`` copies from the SIE block; whether
    the Ultravisor puts the wait PSW's address there is for a real SE host to
    confirm (docs/secure-execution.md): if not, the end is "unrecognised".
    """

    exit_reason: int
    exit_name: str
    icptcode: int
    psw_mask: int
    psw_addr: int

    @property
    def kind(self) -> str:
        wait = (
            self.exit_reason == uapi.KVM_EXIT_S390_SIEIC
            and self.icptcode == uapi.ICPT_WAIT
            and bool(self.psw_mask & PSW_MASK_WAIT)
        )
        if wait and self.psw_addr == DONE_PSW_ADDR:
            return "payload"
        if wait and self.psw_mask == LOADER_STOP_MASK:
            return "loader-panic"
        return "unrecognised"

    @property
    def ok(self) -> bool:
        return self.kind == "payload"

    def describe(self) -> str:
        psw = f"PSW {self.psw_mask:016x} {self.psw_addr:016x}"
        if self.kind == "payload":
            return f"the payload's end (disabled wait at {DONE_PSW_ADDR:#x})"
        if self.kind == "loader-panic":
            name = LOADER_ERRORS.get(self.psw_addr, "unknown")
            return (
                f"boot loader panic (stage3b/zipl libc_stop), error code {self.psw_addr:#x} "
                f"({name}); {psw}"
            )
        return f"not the payload's end: {self.exit_name}, icptcode {self.icptcode:#x}, {psw}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "exit": self.exit_name,
            "icptcode": self.icptcode,
            "psw_mask": f"{self.psw_mask:#018x}",
            "psw_addr": f"{self.psw_addr:#x}",
        }


def guest_end(vcpu: Vcpu) -> GuestEnd:
    """The end shown by ``vcpu``'s last exit (``kvm_run``: exit reason, SIEIC, PSW)."""
    run = vcpu.s390_run()
    reason = vcpu.exit_reason
    return GuestEnd(
        reason, exit_name(reason), int(run.s390_sieic.icptcode), int(run.psw_mask),
        int(run.psw_addr),
    )  # fmt: skip


def image() -> bytes:
    """The bootable image: IPL PSW at 0, zeros, the code at ENTRY."""
    img = bytearray(ENTRY)
    img[0:8] = IPL_PSW.to_bytes(8, "big")
    return bytes(img) + CODE


def write_image(path: Path) -> int:
    """Write ``image()`` to ``path``; return its size."""
    data = image()
    try:
        path.write_bytes(data)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
    return len(data)


def pages_with_own_address(data: memoryview, base_gpa: int = 0) -> int:
    """Pages of ``data`` (guest memory from ``base_gpa``) whose first 8 bytes are
    their own guest address (big-endian), counted from FIRST_PAGE up to the first
    page that is not: the payload writes upwards without gaps.

    No per-page Python loop: one strided C-level copy of the first words,
    compared with the expected array; a mismatch is located by bisection.
    """
    start = FIRST_PAGE - base_gpa
    n = (len(data) - start) // PAGE_4K if len(data) > start else 0
    if n <= 0:
        return 0
    words = data[start : start + n * PAGE_4K].cast("B").cast("Q")[:: PAGE_4K // 8]
    got = words.tobytes()
    expected = _expected_words(FIRST_PAGE, n)
    if got == expected:
        return n
    lo, hi = 0, n  # the first n' pages match for n' <= lo; not for hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if got[: mid * 8] == expected[: mid * 8]:
            lo = mid
        else:
            hi = mid
    return lo if got[:8] == expected[:8] else 0


def _expected_words(first: int, n: int) -> bytes:
    """The addresses of ``n`` pages from ``first``, as big-endian u64 (one C-level build)."""
    arr = array.array("Q", range(first, first + n * PAGE_4K, PAGE_4K))
    if sys.byteorder != "big":
        arr.byteswap()
    return arr.tobytes()


@dataclass(frozen=True)
class S390TouchResult:
    """What ``vm_touch_memory`` observed on a real (non-protected) s390x KVM."""

    exit_reason: int
    exit_name: str
    icptcode: int
    psw_addr: int
    pages_written: int
    size_bytes: int
    run_s: float
    mode: str = "s390x payload, 64-bit, DAT off"
    backend: str = "kvm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vm_touch_memory(vm: Vm, memory: GuestMemory) -> S390TouchResult:
    """Run the payload on ``vm`` (real s390x KVM, no PV) over ``memory`` at gpa 0.

    The host may write a non-protected guest's memory: the image goes to gpa
    0, the vCPU gets an initial reset and the 64-bit PSW at ENTRY through
    ``kvm_run`` (synced into the SIE block on entry).  KVM starts the vCPU
    itself as long as userspace has not taken CPU-state control.
    """
    if vm.arch != "s390x" or vm.backend != "kvm":
        raise UsageError(f"the s390x payload needs a real s390x KVM, not {vm.arch}/{vm.backend}")
    if memory.size < FIRST_PAGE + PAGE_4K:
        raise UsageError(f"guest memory must be larger than {FIRST_PAGE + PAGE_4K} bytes")
    if 0 not in vm.memslots:
        vm.mem_add(memory, slot=0, gpa=0)
    img = image()
    ctypes.memmove(memory.addr, img, len(img))
    vcpu_id = max((v.id for v in vm.vcpus), default=-1) + 1
    with vm.vcpu_add(vcpu_id) as vcpu:
        vcpu.s390_initial_reset()
        run = vcpu.s390_run()
        run.psw_mask, run.psw_addr = PSW_MASK_64, ENTRY
        start = time.perf_counter()
        reason = run_until_finished(vcpu)
        run_s = time.perf_counter() - start
        icpt = int(run.s390_sieic.icptcode)
        psw_addr = int(run.psw_addr)
    view = memory.view(0, memory.size)
    try:
        pages = pages_with_own_address(view)
    finally:
        view.release()
    return S390TouchResult(
        exit_reason=reason,
        exit_name=exit_name(reason),
        icptcode=icpt,
        psw_addr=psw_addr,
        pages_written=pages,
        size_bytes=memory.size,
        run_s=run_s,
    )


__all__ = [
    "CODE",
    "ENTRY",
    "FIRST_PAGE",
    "LOADER_STOP_MASK",
    "SOURCE",
    "GuestEnd",
    "S390TouchResult",
    "guest_end",
    "image",
    "pages_with_own_address",
    "vm_touch_memory",
    "write_image",
]
