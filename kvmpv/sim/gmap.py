# SPDX-License-Identifier: GPL-2.0-only
"""Guest mappings and secure page state: destroy, import, export, unmap.

Models the page walks of arch/s390/mm/gmap.c (``s390_uv_destroy_range()``,
``s390_uv_destroy_range_interruptible()``; ``gmap_pv_destroy_range()`` from
7.0 on), the secure-page conversions of arch/s390/kernel/uv.c
(``make_hva_secure()``, ``gmap_make_secure()`` in older releases, the export of
``uv_convert_from_secure()``) and the unmap path (``ptep_get_and_clear_full()``
of arch/s390/include/asm/pgtable.h exporting a still-secure page, spec 3.7),
Linux 6.4 ..
7.0.  Page state is kept as ranges of host virtual addresses, never per page;
this is also the cost model: every range destroyed, imported or exported is
cleared with ``ctypes.memset`` in the calling thread, one batch at a time,
under ``mm->mmap_lock`` held for reading.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Callable, Optional

from .. import uapi
from ..syscalls import libc, raise_errno
from .kvm_host import (
    _MS_ASYNC,
    PAGE_SIZE,
    SZ_2G,
    _asce_type,
    _Config,
    _err,
    _Vcpu,
    _Vm,
)
from .ranges import Ranges as _Ranges
from .ranges import ranges_from as _Ranges_from
from .uv import Ultravisor
from .uvc import (
    UVC_CMD_CONV_TO_SEC_STOR,
)

_MADV_DONTNEED = 4  # include/uapi/asm-generic/mman-common.h

#: The kernel functions this module models (method name -> where the kernel
#: has it): a deviating simulator overrides one of these (``kvmpv.sim``,
#: "Deviating simulators").
KERNEL_FUNCTIONS = {
    "s390_uv_destroy_range": "arch/s390/mm/gmap.c",
    "make_hva_secure": "arch/s390/kernel/uv.c",
    "s390_wiggle_split_folio": "arch/s390/kernel/uv.c",
    "s390_replace_asce": "arch/s390/mm/gmap.c",
    "ptep_notify": "arch/s390/mm/gmap.c",
    "kvm_gmap_notifier": "arch/s390/kvm/kvm-s390.c",
}

#: The page->index a freshly allocated top-level table page can carry from its
#: previous use when nothing sets it (alloc_pages() does not clear it): here
#: the index of a page last used as the segment table for guest addresses
#: [2 GiB, 4 GiB) (gmap_alloc_table(): 'page->index = gaddr').  Only a deviating
#: simulator uses it (Regress_c2fceb59bbda).
STALE_TABLE_INDEX = SZ_2G


class Gmap(Ultravisor):
    """Secure page state and the page work of arch/s390/mm/gmap.c and uv.c."""

    def _unmap_memory(self, addr: int, length: int) -> None:
        # The kernel's argument checks first: nothing may change on EINVAL.
        if addr % PAGE_SIZE or length <= 0 or addr + length > 1 << 64:
            raise_errno(errno.EINVAL)
        end = addr + -(-length // PAGE_SIZE) * PAGE_SIZE
        exported: list[tuple[_Config, int, int]] = []
        with self._mmap_lock.write():
            with self._mm:
                # Every claim is made and released under mmap_lock for
                # reading, so with the lock held for writing nothing is busy.
                assert not self._busy.intersect(addr, end), "page claimed across mmap_lock"
                for cfg in list(self._configs.values()):
                    for s, e in cfg.secure.remove(addr, end):
                        exported.append((cfg, s, e))
                with self._lock:
                    vms = [vm for vm in self._vms.values() if vm.alive]
                for vm in vms:
                    for ms in list(vm.memslots.values()):
                        lo, hi = max(addr, ms.uaddr), min(end, ms.uaddr + ms.size)
                        self._unmapped.add(lo, hi)
                self._gc_configs_locked()
            try:
                # Still mapped: nobody else can unmap while we write-hold.
                self._export_taken(exported)
            finally:
                if libc().munmap(addr, end - addr) != 0:
                    raise_errno(ctypes.get_errno())

    def _export_taken(self, exported: list[tuple[_Config, int, int]]) -> None:
        """ptep_get_and_clear_full() outside a full teardown (munmap, MADV_DONTNEED): the
        ranges taken from their configurations' secure state are exported (cleared, the UV
        call logged), and counted even when an export fails part-way."""
        try:
            for cfg, s, e in exported:
                self._clear(s, e - s)
                self._log_pages(uapi.UVC_CMD_CONV_FROM_SEC_STOR, cfg.handle, e - s)
        finally:
            with self._lock:
                self._exported += sum(e - s for _, s, e in exported)

    def madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise(): ``MADV_DONTNEED`` of guest memory goes the kernel's zap path.

        zap_pte_range() clears each PTE with ptep_get_and_clear_full(), not a
        full teardown: a page still secure is exported first (as for munmap,
        spec 3.7), and a PTE with the notification bit calls ptep_notify()
        (ptep_xchg_commit(): 'if (pgste_val(pgste) & PGSTE_IN_BIT)'), so KVM
        learns that a vCPU's prefix pages are gone.  The pages read as zero
        afterwards and are faulted in again on the next touch.  Other advice
        is passed to the host unchanged.
        """
        if advice != _MADV_DONTNEED:
            if libc().madvise(addr, length, advice) != 0:
                raise_errno(ctypes.get_errno())
            return
        if addr % PAGE_SIZE or length <= 0:
            raise_errno(errno.EINVAL)
        end = addr + -(-length // PAGE_SIZE) * PAGE_SIZE
        exported: list[tuple[_Config, int, int]] = []
        with self._mmap_lock.read():
            with self._mm:
                while self._busy.intersect(addr, end):
                    self._mm.wait(0.01)
                for cfg in list(self._configs.values()):
                    for s, e in cfg.secure.remove(addr, end):
                        exported.append((cfg, s, e))
                with self._lock:
                    vms = [vm for vm in self._vms.values() if vm.alive]
                for vm in vms:
                    for vcpu in vm.vcpus:
                        lo = self._prefix_host(vm, vcpu)
                        if lo is not None and lo < end and addr < lo + 2 * PAGE_SIZE:
                            vcpu.prefix_mapped = False  # the SIE finds no prefix page
                    # In the same step as the PTEs are cleared (under the page
                    # table lock in the kernel): no SIE entry in between.
                    for s, e in vm.notify.remove(addr, end):
                        self.ptep_notify(vm, s, e)
                self._gc_configs_locked()
            self._export_taken(exported)
            if libc().madvise(addr, end - addr, _MADV_DONTNEED) != 0:
                raise_errno(ctypes.get_errno())

    @staticmethod
    def _prefix_host(vm: _Vm, vcpu: _Vcpu) -> Optional[int]:
        """The host address of ``vcpu``'s prefix area (None outside the memslots)."""
        for ms in vm.memslots.values():
            if ms.gpa <= vcpu.prefix < ms.gpa + ms.size:
                return ms.uaddr + vcpu.prefix - ms.gpa
        return None

    def ptep_notify(self, vm: _Vm, s: int, e: int) -> None:
        """ptep_notify() (arch/s390/mm/gmap.c): invalidated host range [s, e) back to a
        guest address, then the gmap's notifiers.

        The host address leads (host_to_guest, 1 MiB granularity) to the
        segment-table entry that maps it, and __gmap_segment_gaddr() makes the
        guest address from *the index of the table holding that entry* plus
        the entry's offset in it.  With a segment-type ASCE (memory limit
        below 2 GiB) that table is the top-level table, whose index
        s390_replace_asce() sets; with a region ASCE it is a segment table
        gmap_alloc_table() made with 'page->index = gaddr', never replaced
        (s390_replace_asce() copies the top level only).  The range is one
        interval, never walked per page.
        """
        for ms in vm.memslots.values():
            lo, hi = max(s, ms.uaddr), min(e, ms.uaddr + ms.size)
            if lo >= hi:
                continue
            gaddr = ms.gpa + lo - ms.uaddr
            if _asce_type(vm.gmap_limit) == "segment":
                index = vm.gmap_table_index
            else:
                index = gaddr - gaddr % SZ_2G
            start = index + gaddr % SZ_2G
            self.kvm_gmap_notifier(vm, start, start + hi - lo - 1)

    def kvm_gmap_notifier(self, vm: _Vm, start: int, end: int) -> None:
        """kvm_gmap_notifier() (arch/s390/kvm/kvm-s390.c): a vCPU whose prefix pages
        intersect [start, end] gets KVM_REQ_REFRESH_GUEST_PREFIX and is kicked out of SIE
        (kvm_s390_sync_request()); addresses from 2 GiB on are ignored ("We are only
        interested in prefix pages")."""
        if start >= 1 << 31:
            return
        for vcpu in vm.vcpus:
            if vcpu.prefix <= end and start <= vcpu.prefix + 2 * PAGE_SIZE - 1:
                # kvm_s390_sync_request(): the request, and the vCPU out of
                # SIE; the simulated vCPU looks at its requests before every
                # entry (no EINTR for userspace: the kick is KVM-internal).
                vcpu.prefix_request = True

    def s390_replace_asce(self, vm: _Vm) -> int:
        """s390_replace_asce() (arch/s390/mm/gmap.c): the gmap gets a copy of its top-level
        table; 0, -EINVAL for a segment-type ASCE, -ENOMEM if the copy cannot be allocated.

        A segment table is refused since commit 292a7d6fca33 (v6.4): host_to_guest
        points into it.  The copy's page->index is set to 0 since commit
        c2fceb59bbda (v6.5): the index is the guest address the table maps
        from, which ptep_notify() adds to every address it reports for a
        segment-type ASCE.
        """
        if _asce_type(vm.gmap_limit) == "segment":
            return -errno.EINVAL
        if self._take_alloc_failure("prepare:asce"):
            return -errno.ENOMEM
        vm.gmap_table_index = 0  # 'page->index = 0;' (c2fceb59bbda)
        vm.asce_replaced += 1
        return 0

    def _guest_import_slice(self, vm: _Vm, cfg: _Config) -> str:
        """Touch up to one slice of the guest's memory; "more", "done" or "busy"."""
        # One slice under mmap_lock for reading (a guest fault), from the
        # claim to the release: munmap cannot pull the memory away meanwhile.
        with self._mmap_lock.read():
            return self._guest_import_slice_locked(vm, cfg)

    def _guest_import_slice_locked(self, vm: _Vm, cfg: _Config) -> str:
        budget = self.run_slice_bytes
        claimed: list[tuple[int, int]] = []
        violations: list[tuple[_Config, int, int]] = []
        blocked = False
        with self._mm:
            reached = 0  # guest memory contiguous from 0 that the guest walked through
            for ms in sorted(vm.memslots.values(), key=lambda m: m.gpa):
                if budget <= 0:
                    break
                if ms.gpa > reached and not self.guest_skips_holes:
                    # The guest stores upwards: once everything below is
                    # secure, its next store lands in the hole [reached,
                    # ms.gpa), inside the UV's guest length (the end of the
                    # highest memslot, kvm_s390_pv_alloc_vm()).  The gmap
                    # fault finds no memslot; the addressing exception KVM
                    # would inject is refused for a protected guest
                    # (__deliver_prog_pv(): only specification and operand
                    # exceptions), so KVM_RUN fails with EINVAL.
                    if claimed or blocked:
                        break  # first the memory below the hole
                    raise _err(errno.EINVAL)
                reached = max(reached, ms.gpa + ms.size)
                for gs, ge in cfg.secure.gaps(ms.uaddr, ms.uaddr + ms.size):
                    if budget <= 0:
                        break
                    if self._unmapped.intersect(gs, ge):
                        # The guest touches memslot memory that userspace
                        # unmapped: the fault cannot be resolved.
                        raise _err(errno.EFAULT)
                    busy = self._busy.intersect(gs, ge)
                    if busy:
                        blocked = True
                    for fs, fe in _Ranges_from(busy).gaps(gs, ge) if busy else [(gs, ge)]:
                        take = min(fe - fs, budget)
                        if take <= 0:
                            break
                        claimed.append((fs, fs + take))
                        budget -= take
            if not claimed:
                return "busy" if blocked else "done"
            for s, e in claimed:
                for other in self._configs.values():
                    if other is not cfg and other.secure.total:
                        for ps, pe in other.secure.remove(s, e):
                            violations.append((other, ps, pe))
                if len(self._large_folios):
                    # The fault path's make_hva_secure() splits a large folio
                    # (a dirty file folio after writeback, ab73b29efd36) and the
                    # guest retries its access (-EAGAIN re-enters SIE):
                    # invisible to the VMM, so the split is done at once.
                    size = self._large_folio_size
                    self._drop_large_folios(s - s % size, -(-e // size) * size)
                self._busy.add(s, e)
        try:
            # Secure-storage violation (spec 3.8): destroy the old page first.
            for other, s, e in violations:
                self._clear(s, e - s)
                self._log_pages(uapi.UVC_CMD_DESTR_SEC_STOR, other.handle, e - s)
            for s, e in claimed:
                self._clear(s, e - s)
                self._log_pages(UVC_CMD_CONV_TO_SEC_STOR, cfg.handle, e - s)
        finally:
            self._release_claims(claimed, lambda s, e: cfg.secure.add(s, e))
            with self._lock:
                self._destroyed += sum(e - s for _, s, e in violations)
                self._imported += sum(e - s for s, e in claimed)
        return "more"

    def _guest_export_slice(self, vm: _Vm) -> bool:
        """A non-protected guest touches secure pages: export one slice; False if none left."""
        with self._mmap_lock.read():  # claim, clear, release: one slice
            return self._guest_export_slice_locked(vm)

    def _guest_export_slice_locked(self, vm: _Vm) -> bool:
        budget = self.run_slice_bytes
        claimed: list[tuple[_Config, int, int]] = []
        with self._mm:
            for ms in sorted(vm.memslots.values(), key=lambda m: m.gpa):
                for cfg in list(self._configs.values()):
                    if budget <= 0:
                        break
                    for s, e in cfg.secure.intersect(ms.uaddr, ms.uaddr + ms.size):
                        take = min(e - s, budget)
                        if take <= 0:
                            break
                        cfg.secure.remove(s, s + take)
                        self._busy.add(s, s + take)
                        claimed.append((cfg, s, s + take))
                        budget -= take
        if not claimed:
            return False
        try:
            for cfg, s, e in claimed:
                self._clear(s, e - s)
                self._log_pages(uapi.UVC_CMD_CONV_FROM_SEC_STOR, cfg.handle, e - s)
        finally:
            self._release_claims([(s, e) for _, s, e in claimed])
            with self._lock:
                self._exported += sum(e - s for _, s, e in claimed)
        return True

    @staticmethod
    def _lower_2g_ranges(vm: _Vm) -> list[tuple[int, int]]:
        by_gpa = {ms.gpa: ms for ms in vm.memslots.values()}
        ranges: list[tuple[int, int]] = []
        gpa = 0
        # gfn_to_memslot(kvm, 0), then the slot starting right after it, ...
        while gpa < SZ_2G:
            ms = by_gpa.get(gpa)
            if ms is None:
                ms = next((m for m in vm.memslots.values() if m.gpa <= gpa < m.gpa + m.size), None)
                if ms is None:
                    break
            length = min(ms.gpa + ms.size, SZ_2G) - gpa
            start = ms.uaddr + (gpa - ms.gpa)
            ranges.append((start, start + length))
            gpa = ms.gpa + ms.size
        return ranges

    def s390_uv_destroy_range(
        self, ranges: list[tuple[int, int]], *, interruptible: bool, tid: int = 0
    ) -> bool:
        """s390_uv_destroy_range(): destroy the secure pages in ``ranges``, in batches.

        ``__s390_uv_destroy_range()`` (arch/s390/mm/gmap.c): every secure page of a configuration
        without CPUs is destroyed (0x0202: cleared); pages of configurations
        with CPUs stay.  Between batches: the ``perform:batch`` gate and, if
        ``interruptible``, the fatal-signal check.  Returns False if stopped
        by a fatal signal.
        """
        for lo, hi in ranges:
            cursor = lo
            while cursor < hi:
                cursor, progressed = self._destroy_batch(cursor, hi)
                if not progressed:
                    break
                self._pause_point("perform:batch" if interruptible else "")
                if interruptible:
                    with self._lock:
                        if tid in self._fatal:
                            return False
        return True

    def _destroy_batch(self, cursor: int, hi: int) -> tuple[int, bool]:
        """One batch of ``s390_uv_destroy_range`` from ``cursor``: (new cursor, anything done).

        Under ``mmap_lock`` for reading from the claim to the release, so a
        concurrent ``munmap`` waits for this batch and the next batch finds
        the unmapped range gone from the page state.  The gate and the
        fatal-signal check come after, outside the lock.
        """
        with self._mmap_lock.read():
            pieces: list[tuple[_Config, int, int]] = []
            budget = self.batch_bytes
            with self._mm:
                victims = [c for c in self._configs.values() if c.cpus == 0 and c.secure.total]
                while budget > 0:
                    best: Optional[tuple[int, int]] = None
                    owner: Optional[_Config] = None
                    for c in victims:
                        piece = c.secure.first_from(cursor, hi)
                        if piece is not None and (best is None or piece[0] < best[0]):
                            best, owner = piece, c
                    if best is None or owner is None:
                        break
                    s, e = best[0], min(best[1], best[0] + budget)
                    owner.secure.remove(s, e)
                    self._busy.add(s, e)
                    pieces.append((owner, s, e))
                    budget -= e - s
                    cursor = e
                if not pieces:
                    return cursor, False
                fail = self._take_injection(uapi.UVC_CMD_DESTR_SEC_STOR)
            try:
                for i, (owner, s, e) in enumerate(pieces):
                    if i == 0 and fail is not None:
                        # The first page stays secure; the kernel ignores the failure.
                        self._log(uapi.UVC_CMD_DESTR_SEC_STOR, owner.handle, 1, fail[0], fail[1], 1)
                        s += PAGE_SIZE
                        if s >= e:
                            continue
                    self._clear(s, e - s)
                    self._log_pages(uapi.UVC_CMD_DESTR_SEC_STOR, owner.handle, e - s)
            finally:
                kept = pieces[0] if fail is not None else None

                def keep_first(s: int, e: int) -> None:
                    if kept is not None and (s, e) == kept[1:]:
                        kept[0].secure.add(s, s + PAGE_SIZE)

                self._release_claims([(s, e) for _, s, e in pieces], keep_first)
                done = sum(e - s for _, s, e in pieces) - (PAGE_SIZE if fail is not None else 0)
                with self._lock:
                    self._destroyed += done
        return cursor, True

    def make_hva_secure(
        self,
        cfg: _Config,
        s: int,
        e: int,
        *,
        clear: bool = True,
        fill: Optional[Callable[[int, int], None]] = None,
    ) -> int:
        """make_hva_secure() (arch/s390/kernel/uv.c; gmap_make_secure() in older releases).

        Make [s, e) secure for ``cfg``: destroy other owners' pages, clear, mark; 0.

        UNPACK passes ``clear=False`` and ``fill``: the Ultravisor decrypts the
        image pages in place, ``fill(s, e)`` while the range is claimed.
        EFAULT if userspace unmapped part of the range (a gmap fault that
        cannot be resolved).  Under ``mmap_lock`` for reading throughout.

        -EAGAIN, nothing imported, when the page at ``s`` is in a large folio:
        a large folio cannot be secure (folio_test_large() gives -E2BIG), so
        the folio is split (s390_wiggle_split_folio(), after mmap_lock is
        dropped) and the caller must retry; unpack_one() passes -EAGAIN up and
        kvm_s390_pv_unpack() loops on it.  Since commit 3ec8a8330a1a (v6.16):
        before it the 0 of a successful split was returned as if the page were
        secure, and UNPACK went on to the next page (the image then fails
        VERIFY).  The caller passes a range whose pages after the first are
        not in large folios (``_secure_piece``), as the kernel works per page.
        The folio is found through a writable PTE (folio_walk_start() and
        pte_write()): for a file on an iomap file system that makes the folio
        dirty (commit ab73b29efd36's message).
        """
        with self._mmap_lock.read():
            with self._mm:
                large = self._large_folios.intersect(s, s + PAGE_SIZE)
                if large and self._file_folios.intersect(s, s + PAGE_SIZE):
                    size = self._large_folio_size
                    self._dirty_folios.add(s - s % size, s - s % size + size)
            if not large:
                self._import_range_locked(cfg, s, e, clear, fill)
                return 0
        rc = self.s390_wiggle_split_folio(s)
        return -errno.EAGAIN if rc == 0 else rc  # 'if (!rc) rc = -EAGAIN;'

    def s390_wiggle_split_folio(self, addr: int) -> int:
        """s390_wiggle_split_folio() (arch/s390/kernel/uv.c): split the large folio of ``addr``.

        0 if the page is in no large folio (any more) or the split worked,
        -EAGAIN if the folio could not be split now.  make_hva_secure() calls
        it after mmap_read_unlock().  Since commit ab73b29efd36 (v6.16):
        split_folio() fails with -EBUSY on a dirty folio of a mapping that
        cannot split dirty folios (iomap_release_folio(): XFS, zonefs, erofs),
        and the writable PTE make_hva_secure() found the folio through makes
        it dirty there.  So a dirty folio of a file whose mapping can write
        back (not anon, not shmem) is written back
        (filemap_write_and_wait_range() over the folio's range) and split
        again at once, two tries in all, before any new lookup can dirty it
        again.  Before, -EBUSY was -EAGAIN at once and kvm_s390_pv_unpack()
        met the same dirty folio on every retry, until a fatal signal.
        """
        with self._mm:
            if not self._large_folios.intersect(addr, addr + PAGE_SIZE):
                return 0  # 'if (!folio_test_large(folio)) return 0;'
        for _tried_splits in range(2):
            rc = self._split_folio(addr)
            if rc != -errno.EBUSY:
                return rc
            if not self.unsplittable_folio_bytes(addr, PAGE_SIZE):
                break  # -EBUSY for another reason: the caller looks the folio up again
            self._write_back_folio(addr)
        return -errno.EAGAIN

    def _split_folio(self, addr: int) -> int:
        """split_folio() of the large folio holding ``addr``: 0 (all small now), or -EBUSY
        for a dirty folio of an iomap file (iomap_release_folio() refuses)."""
        with self._mm:
            size = self._large_folio_size
            start = addr - addr % size
            if self._dirty_folios.intersect(start, start + size) and self._file_folios.intersect(
                start, start + size
            ):
                return -errno.EBUSY
            self._drop_large_folios(start, start + size)
        return 0

    def _drop_large_folios(self, s: int, e: int) -> None:
        """[s, e) is in small folios now (split); caller holds ``_mm``."""
        self._large_folios.remove(s, e)
        self._file_folios.remove(s, e)
        self._dirty_folios.remove(s, e)

    def _write_back_folio(self, addr: int) -> None:
        """filemap_write_and_wait_range() over the folio holding ``addr``: clean again."""
        with self._mm:
            size = self._large_folio_size
            start = addr - addr % size
            self._dirty_folios.remove(start, start + size)
        with self._lock:
            self._written_back += size

    def _secure_piece(self, pos: int, e: int) -> tuple[int, int]:
        """The next range from ``pos`` for one make_hva_secure(): a large folio's page alone,
        else the pages up to the next large folio (or ``e``).

        The kernel calls make_hva_secure() once per page; the simulator once
        per run of pages that are not in large folios, and once for a page
        that is (which the call splits): as many calls as there are large
        folios, never one per page.
        """
        with self._mm:
            nxt = self._large_folios.first_from(pos, e)
        if nxt is None:
            return pos, e
        if nxt[0] == pos:
            return pos, pos + PAGE_SIZE
        return pos, nxt[0]

    def _import_range_locked(
        self,
        cfg: _Config,
        s: int,
        e: int,
        clear: bool = True,
        fill: Optional[Callable[[int, int], None]] = None,
    ) -> None:
        with self._mm:
            if self._unmapped.intersect(s, e):
                raise _err(errno.EFAULT)
            while self._busy.intersect(s, e):
                self._mm.wait(0.01)
            for other in self._configs.values():
                if other is not cfg:
                    other.secure.remove(s, e)
            cfg.secure.remove(s, e)
            self._busy.add(s, e)
        try:
            if clear:
                self._clear(s, e - s)
                self._log_pages(UVC_CMD_CONV_TO_SEC_STOR, cfg.handle, e - s)
            if fill is not None:
                fill(s, e)
        finally:
            self._release_claims([(s, e)], lambda s, e: cfg.secure.add(s, e))
            with self._lock:
                self._imported += e - s

    def _release_claims(
        self,
        claimed: list[tuple[int, int]],
        then: Optional[Callable[[int, int], None]] = None,
    ) -> None:
        """The second half of every "claim, clear, release" of guest pages.

        Each page walk claims its ranges under ``_mm`` (out of their owner,
        into ``_busy``), clears them without ``_mm`` (the memset releases the
        GIL), and comes here: back out of ``_busy``, ``then(s, e)`` for each
        range still under ``_mm`` (where the range goes: secure for an
        import, nowhere for an export or destroy), configurations without
        pages collected, and waiters (a walk blocked on busy pages, munmap)
        woken.  Always in a ``finally``: a failed clear must not leave pages
        busy forever.
        """
        with self._mm:
            for s, e in claimed:
                self._busy.remove(s, e)
                if then is not None:
                    then(s, e)
            self._gc_configs_locked()
            self._mm.notify_all()

    def _clear(self, addr: int, length: int) -> None:
        """The real work: clear guest memory, GIL released, in the calling thread.

        Called with ``_mmap_lock`` held (for reading, or for writing by
        ``munmap``), on ranges claimed under it: a ``munmap`` through the
        simulator cannot run meanwhile, and drops the page state of what it
        unmaps, so the range is mapped.  The msync() probe (ENOMEM on an
        unmapped range, free otherwise) only guards against memory unmapped
        behind the simulator's back, which it cannot order against.
        """
        if not self.clear_memory or length <= 0:
            return
        if libc().msync(ctypes.c_void_p(addr), ctypes.c_size_t(length), _MS_ASYNC) != 0:
            return
        ctypes.memset(addr, 0, length)

    @staticmethod
    def _gpa_to_host(vm: _Vm, gpa: int, size: int) -> Optional[list[tuple[int, int]]]:
        out: list[tuple[int, int]] = []
        end = gpa + size
        while gpa < end:
            ms = next((m for m in vm.memslots.values() if m.gpa <= gpa < m.gpa + m.size), None)
            if ms is None:
                return None
            stop = min(end, ms.gpa + ms.size)
            out.append((ms.uaddr + gpa - ms.gpa, ms.uaddr + stop - ms.gpa))
            gpa = stop
        return out

    def _prune_unmapped_locked(self) -> None:
        """Forget unmapped ranges no live VM's memslot covers any more (under ``_mm``)."""
        if not len(self._unmapped):
            return
        with self._lock:
            vms = [vm for vm in self._vms.values() if vm.alive]
        keep = _Ranges()
        for vm in vms:
            for ms in list(vm.memslots.values()):
                for a, b in self._unmapped.intersect(ms.uaddr, ms.uaddr + ms.size):
                    keep.add(a, b)
        self._unmapped = keep
