# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv.memory: alignment, 4 KiB vs THP, populate, fill, release (as the kernel counts them)."""

from __future__ import annotations

import pytest

from kvmpv.errors import UsageError
from kvmpv.memory import GuestMemory, process_rss, smaps_usage
from kvmpv.x86guest import count_written

MiB = 1 << 20
THP_SIZE = 2 * MiB


def thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "absent"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else text.strip()


def mapped(addr: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return True
    return False


@pytest.mark.parametrize("size", [1 * MiB, 3 * MiB, 64 * MiB])
def test_one_mib_alignment(size: int) -> None:
    with GuestMemory(size) as mem:
        assert mem.addr % MiB == 0 and mem.size == size
        assert mapped(mem.addr) and mapped(mem.addr + size - 1)
        # Nothing touched yet: the kernel has no pages for it.
        assert mem.usage().rss == 0


@pytest.mark.parametrize("size", [0, -MiB, MiB + 4096, 4096])
def test_bad_sizes(size: int) -> None:
    with pytest.raises(UsageError):
        GuestMemory(size)


def test_populate_4k_pages() -> None:
    size = 64 * MiB
    with GuestMemory(size, thp=False) as mem:
        rss0 = process_rss()
        mem.populate()
        usage = mem.usage()
        assert usage.exact
        assert usage.rss == size
        assert usage.anon_huge == 0  # MADV_NOHUGEPAGE: 4 KiB pages whatever the THP mode
        assert process_rss() - rss0 >= size * 0.95
        # Populated pages read as zero: no page was written with data.
        assert count_written(mem, 0) == size // 4096


def test_populate_thp() -> None:
    mode = thp_mode()
    if mode not in ("always", "madvise"):
        pytest.skip(f"THP mode is {mode!r}: MADV_HUGEPAGE has no effect")
    size = 64 * MiB
    with GuestMemory(size, thp=True) as mem:
        mem.populate()
        usage = mem.usage()
        assert usage.exact and usage.rss == size
        # Most of the range should be huge pages; allow a few to fall back when
        # the machine is fragmented (others run big jobs on it).
        assert usage.anon_huge >= size // 2, usage
        assert usage.anon_huge % THP_SIZE == 0


def test_fill_and_partial_populate() -> None:
    with GuestMemory(8 * MiB) as mem:
        mem.populate(0, 2 * MiB)
        assert mem.usage().rss == 2 * MiB
        mem.fill(0x11, 4 * MiB, 4 * MiB)
        assert count_written(mem, 0x11) == 1024
        assert count_written(mem, 0x11, 4 * MiB, 4 * MiB) == 1024
        assert count_written(mem, 0x11, 0, 4 * MiB) == 0
        assert mem.usage().rss == 6 * MiB


def test_release_drops_rss() -> None:
    size = 128 * MiB
    with GuestMemory(size) as mem:
        mem.fill(0x5A)
        assert mem.usage().rss == size
        rss_filled = process_rss()
        mem.release(0, size // 2)
        assert mem.usage().rss == size // 2
        mem.release()
        assert mem.usage().rss == 0
        assert rss_filled - process_rss() >= size * 0.95
        # MADV_DONTNEED on private anonymous memory: the pages read as zero.
        assert count_written(mem, 0x5A) == 0
        assert count_written(mem, 0) == size // 4096


def test_ranges_are_checked() -> None:
    mem = GuestMemory(2 * MiB)
    with pytest.raises(ValueError):
        mem.view(MiB, 2 * MiB)
    with pytest.raises(ValueError):
        mem.fill(0, -1, 1)
    addr = mem.addr
    mem.close()
    mem.close()  # idempotent
    assert not mapped(addr)
    with pytest.raises(ValueError, match="already unmapped"):
        mem.populate()


def test_smaps_usage_sees_other_ranges_as_foreign() -> None:
    with GuestMemory(4 * MiB) as mem:
        mem.populate()
        # Half the mapping: the VMA reaches beyond the range, so the sum is not exact.
        half = smaps_usage(mem.addr, 2 * MiB)
        assert not half.exact and half.vmas == 1
