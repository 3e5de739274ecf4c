# SPDX-License-Identifier: GPL-2.0-only
"""Guest RAM: anonymous memory, 1 MiB aligned, 4 KiB or THP backed.

Memory is touched and freed only by native calls (``MADV_POPULATE_WRITE``,
``memset``, ``MADV_DONTNEED``) or by guest code, never by Python loops over
pages: guests may be terabytes.

Guest memory is unmapped through the ``Syscalls`` backend of the VM that uses
it (``GuestMemory(size, sys=...)``), so that the kernel in use sees the
munmap: the real kernel sees every munmap anyway, the simulated one
(``kvmpv.sim``) must, to synchronize with the page walks it does on that
memory from other threads (the kernel's mmap_lock).
"""

from __future__ import annotations

import ctypes
import errno
import mmap as _mmap
from dataclasses import dataclass
from typing import Optional, Union

from .closing import Closing
from .errors import HostError, SyscallError, UsageError
from .syscalls import (
    LINUX,
    MAP_ANONYMOUS,
    MAP_NORESERVE,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    Syscalls,
    libc,
)
from .uapi import S390_MEMSLOT_ALIGN

PAGE_SIZE = _mmap.PAGESIZE
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_POPULATE_WRITE = 23  # Linux 5.14


@dataclass(frozen=True)
class MemoryUsage:
    """What the kernel reports for a range of our address space (smaps, in bytes).

    ``exact`` is False when a VMA overlapping the range reaches beyond it (the
    kernel merged it with a neighbour), so the numbers include foreign memory.
    """

    rss: int
    anon_huge: int
    vmas: int
    exact: bool


def smaps_usage(addr: int, size: int, path: str = "/proc/self/smaps") -> MemoryUsage:
    """Sum ``Rss`` and ``AnonHugePages`` of the VMAs overlapping [addr, addr+size).

    One read of smaps: the kernel counts the pages, we only add up a few
    lines per VMA (no per-page work in Python).
    """
    end = addr + size
    rss = huge = vmas = 0
    exact = True
    inside = False
    with open(path) as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo_s, hi_s = head.split("-", 1)
                lo, hi = int(lo_s, 16), int(hi_s, 16)
                inside = lo < end and hi > addr
                if inside:
                    vmas += 1
                    if lo < addr or hi > end:
                        exact = False
            elif inside and head == "Rss:":
                rss += int(line.split()[1]) * 1024
            elif inside and head == "AnonHugePages:":
                huge += int(line.split()[1]) * 1024
    return MemoryUsage(rss=rss, anon_huge=huge, vmas=vmas, exact=exact)


def process_rss() -> int:
    """Resident set size of this process in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def anon_huge_bytes(pid: Union[int, str] = "self") -> int:
    """THP-backed anonymous memory of a whole process (``smaps_rollup``), 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, in bytes: what test and run sizes are held to."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise HostError("no MemAvailable in /proc/meminfo (Linux < 3.14?)")


def madvise(addr: int, length: int, advice: int, what: str = "madvise") -> None:
    if libc().madvise(addr, length, advice) != 0:
        raise SyscallError(what, ctypes.get_errno(), f"{length} bytes at 0x{addr:x}")


class GuestMemory(Closing):
    """``size`` bytes of anonymous memory at a 1 MiB aligned address.

    s390 requires memslots (address and size) to be 1 MiB aligned; kvmpv uses
    the same alignment on every architecture so that layouts are identical.
    ``thp=True`` asks for transparent huge pages (``MADV_HUGEPAGE``);
    ``thp=False`` forbids them (``MADV_NOHUGEPAGE``) so that 4 KiB pages are
    measured whatever the system THP mode is.

    ``sys``: the syscall backend of the VM this memory is given to; ``close()``
    unmaps through it.  With ``kvmpv.sim.SimulatedHost`` this is required
    whenever the memory may be unmapped while the simulator could still walk
    it (a PERFORM or a vCPU in another thread): the simulator then serializes
    the unmap against its page work, as the kernel's mmap_lock does.
    """

    def __init__(
        self,
        size: int,
        *,
        thp: bool = False,
        align: int = S390_MEMSLOT_ALIGN,
        sys: Optional[Syscalls] = None,
    ) -> None:
        if size <= 0 or size % align:
            raise UsageError(f"guest memory size {size} is not a positive multiple of {align}")
        self.size = size
        self.thp = thp
        self._sys: Syscalls = sys if sys is not None else LINUX
        # Over-allocate by one alignment unit and trim both ends, so the
        # mapping that stays is aligned without relying on MAP_FIXED games.
        raw_len = size + align
        raw = libc().mmap(
            None,
            raw_len,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
            -1,
            0,
        )
        if raw is None or raw == ctypes.c_void_p(-1).value:
            raise SyscallError("mmap", ctypes.get_errno(), f"{size} bytes of guest memory")
        start = (raw + align - 1) & ~(align - 1)
        if start > raw:
            libc().munmap(raw, start - raw)
        tail = raw + raw_len - (start + size)
        if tail:
            libc().munmap(start + size, tail)
        self.addr: int = start
        self._closed = False
        try:
            self._advise_backing(thp)
        except BaseException:
            self.close()
            raise

    def _advise_backing(self, thp: bool) -> None:
        # MADV_NOHUGEPAGE as well as MADV_HUGEPAGE: with THP "always" the
        # kernel would otherwise back "4 KiB" memory with huge pages and every
        # 4 KiB measurement would silently be a THP one.
        try:
            madvise(self.addr, self.size, MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE)
        except SyscallError as err:
            # EINVAL: kernel built without CONFIG_TRANSPARENT_HUGEPAGE.  Fine
            # for 4 KiB memory (that is all there is); a lie for THP memory.
            if err.errno != errno.EINVAL:
                raise
            if thp:
                raise HostError(
                    "transparent huge pages requested but the kernel has no THP "
                    "(madvise(MADV_HUGEPAGE) failed with EINVAL)"
                ) from None

    def populate(self, offset: int = 0, length: Optional[int] = None) -> None:
        """Fault in every page of a range for writing (``MADV_POPULATE_WRITE``).

        One system call for the whole range; the kernel allocates and zeroes
        the pages without user-space touching them (Linux 5.14).  Older
        kernels answer EINVAL and get a memset, which touches every page from
        C with the GIL released.
        """
        length = self.size - offset if length is None else length
        self._check_range(offset, length)
        while True:
            try:
                madvise(
                    self.addr + offset, length, MADV_POPULATE_WRITE, "madvise(MADV_POPULATE_WRITE)"
                )
                return
            except SyscallError as err:
                if err.errno == errno.EINTR:
                    # A signal arrived; populating again is idempotent (pages
                    # already present are skipped) and a Python handler that
                    # raises (SIGINT, SIGTERM) does so before we get here again.
                    continue
                if err.errno != errno.EINVAL:
                    raise
                ctypes.memset(self.addr + offset, 0, length)
                return

    def fill(self, byte: int, offset: int = 0, length: Optional[int] = None) -> None:
        """memset a range (GIL released by ctypes for the duration)."""
        length = self.size - offset if length is None else length
        self._check_range(offset, length)
        ctypes.memset(self.addr + offset, byte, length)

    def release(self, offset: int = 0, length: Optional[int] = None) -> None:
        """Give pages back to the kernel (``MADV_DONTNEED``); they read as zero after."""
        length = self.size - offset if length is None else length
        self._check_range(offset, length)
        madvise(self.addr + offset, length, MADV_DONTNEED, "madvise(MADV_DONTNEED)")

    def usage(self) -> MemoryUsage:
        """Resident and huge-page bytes of this mapping, from ``/proc/self/smaps``."""
        self._check_range(0, 0)
        return smaps_usage(self.addr, self.size)

    def view(self, offset: int, length: int) -> memoryview:
        """A writable memoryview of a range (for checks on small ranges)."""
        self._check_range(offset, length)
        return memoryview((ctypes.c_char * length).from_address(self.addr + offset)).cast("B")

    def _check_range(self, offset: int, length: int) -> None:
        if self._closed:
            raise ValueError("guest memory already unmapped")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} outside guest memory of {self.size} bytes")

    def close(self) -> None:
        """Unmap the memory (through the ``Syscalls`` backend given at creation)."""
        if not self._closed:
            self._closed = True
            try:
                self._sys.munmap(self.addr, self.size)
            except OSError as exc:
                raise SyscallError("munmap", exc.errno or errno.EINVAL, "guest memory") from None
