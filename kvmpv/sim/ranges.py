# SPDX-License-Identifier: GPL-2.0-only
"""Sets of disjoint intervals: how the simulator keeps page state as ranges.

Guests may be terabytes, so no per-page Python state: secure pages, pages
being cleared, imported pages are all ``Ranges`` of guest addresses.  Pure
data structure, touches nothing.
"""

from __future__ import annotations

import bisect
from typing import Optional


class Ranges:
    """A set of disjoint half-open integer intervals, kept sorted and merged."""

    __slots__ = ("_e", "_s", "total")

    def __init__(self) -> None:
        self._s: list[int] = []
        self._e: list[int] = []
        self.total = 0

    def __len__(self) -> int:
        return len(self._s)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(zip(self._s, self._e)))

    def add(self, s: int, e: int) -> None:
        if s >= e:
            return
        i = bisect.bisect_left(self._e, s)  # first interval ending at or after s
        j = bisect.bisect_right(self._s, e)  # intervals starting at or before e
        if i < j:
            removed = sum(self._e[k] - self._s[k] for k in range(i, j))
            ns, ne = min(s, self._s[i]), max(e, self._e[j - 1])
        else:
            removed, ns, ne = 0, s, e
        self._s[i:j] = [ns]
        self._e[i:j] = [ne]
        self.total += (ne - ns) - removed

    def remove(self, s: int, e: int) -> list[tuple[int, int]]:
        """Remove [s, e); return the pieces that were in the set."""
        if s >= e:
            return []
        i = bisect.bisect_right(self._e, s)  # first interval ending after s
        j = bisect.bisect_left(self._s, e)  # intervals starting before e
        if i >= j:
            return []
        pieces: list[tuple[int, int]] = []
        keep_s: list[int] = []
        keep_e: list[int] = []
        for k in range(i, j):
            a, b = self._s[k], self._e[k]
            pieces.append((max(a, s), min(b, e)))
            if a < s:
                keep_s.append(a)
                keep_e.append(s)
            if b > e:
                keep_s.append(e)
                keep_e.append(b)
        self._s[i:j] = keep_s
        self._e[i:j] = keep_e
        self.total -= sum(b - a for a, b in pieces)
        return pieces

    def intersect(self, s: int, e: int) -> list[tuple[int, int]]:
        i = bisect.bisect_right(self._e, s)
        j = bisect.bisect_left(self._s, e)
        return [(max(self._s[k], s), min(self._e[k], e)) for k in range(i, j)]

    def gaps(self, s: int, e: int) -> list[tuple[int, int]]:
        """The parts of [s, e) not in the set."""
        out: list[tuple[int, int]] = []
        pos = s
        for a, b in self.intersect(s, e):
            if a > pos:
                out.append((pos, a))
            pos = b
        if pos < e:
            out.append((pos, e))
        return out

    def first_from(self, pos: int, hi: int) -> Optional[tuple[int, int]]:
        """The first piece of the set in [pos, hi), or None."""
        i = bisect.bisect_right(self._e, pos)
        if i < len(self._s) and self._s[i] < hi:
            return max(self._s[i], pos), min(self._e[i], hi)
        return None


def ranges_from(pieces: list[tuple[int, int]]) -> Ranges:
    """A ``Ranges`` holding ``pieces``."""
    r = Ranges()
    for s, e in pieces:
        r.add(s, e)
    return r


__all__ = ["Ranges", "ranges_from"]
