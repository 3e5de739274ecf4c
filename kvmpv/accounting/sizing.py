# SPDX-License-Identifier: GPL-2.0-only
"""Size a teardown by time, not bytes, so that a verdict on it is decisive.

Why: a verdict needs work well above its tolerance (``decisive_work_ns``),
and how much work a number of bytes is depends on the machine.  This one
frees 1 GiB of 4 KiB pages in about 25 ms; the machine the suite was first
written on took twice that, and a lab's z16 is faster again.  A test that
fixed 1 GiB passed there and read "inconclusive" here.  So whoever needs a
verdict measures a synchronous teardown at a first size and grows it until
it takes ``target_work_ns(tolerance)`` -- a comfortable multiple (three) of
the least decisive work -- bounded by what the host can hold.

Pure: the caller supplies ``measure(size_bytes) -> work_ns`` (a process
exit's wait4 runtime, the simulator's clearing), so the sizing is tested
against a simulated faster teardown (tests/test_sizing.py) as well as for
real.  Touches nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..units import MiB, format_size
from .verdict import decisive_work_ns

#: how far above the least decisive work a sized teardown aims: 3x, i.e. ten
#: tolerances (10 ms of work at the precise 1 ms tolerance).  Run-to-run noise
#: on a loaded 2-CPU machine was up to 0.45x (one sync cycle against another),
#: which this still leaves decisive.
MARGIN = 3.0
#: each step grows by at least this factor (a measurement is not free) ...
MIN_GROWTH = 2.0
#: ... and at most this one (a wildly short first reading must not jump to the limit)
MAX_GROWTH = 16.0
#: aim this far past the target when extrapolating, so one step usually suffices
HEADROOM = 1.25


def target_work_ns(tolerance_ns: int, margin: float = MARGIN) -> int:
    """The work a sized teardown aims at: ``margin`` x the least decisive work."""
    return int(margin * decisive_work_ns(tolerance_ns))


@dataclass(frozen=True)
class Sizing:
    """What ``size_by_time`` found: the size, the work measured at it, and
    every (size, work) step on the way."""

    size_bytes: int
    work_ns: int
    target_ns: int
    limit_bytes: int
    steps: tuple[tuple[int, int], ...]

    @property
    def reached(self) -> bool:
        return self.work_ns >= self.target_ns

    def describe(self) -> str:
        line = (
            f"{format_size(self.size_bytes)} took {self.work_ns / 1e6:.1f} ms "
            f"(target {self.target_ns / 1e6:.1f} ms)"
        )
        if self.reached:
            return line
        return f"{line}: the host holds at most {format_size(self.limit_bytes)}"


def _round_up(n: int, granule: int) -> int:
    return -(-n // granule) * granule


def size_by_time(
    measure: Callable[[int], int],
    *,
    target_ns: int,
    start_bytes: int,
    limit_bytes: int,
    granule: int = 64 * MiB,
    max_steps: int = 6,
) -> Sizing:
    """Grow a teardown from ``start_bytes`` until ``measure`` says it takes
    ``target_ns``, never past ``limit_bytes``.

    Work grows linearly with the bytes freed (the same pages freed by the
    same code), so each step extrapolates from the last reading, with
    headroom, clamped to [MIN_GROWTH, MAX_GROWTH].  Returns the last size
    measured; ``reached`` is False when the limit (or ``max_steps``) came
    first, and the caller says SKIP with ``describe()``.
    """
    if start_bytes <= 0 or limit_bytes <= 0 or target_ns <= 0:
        raise ValueError(
            f"sizes and target must be positive: {start_bytes}, {limit_bytes}, {target_ns}"
        )
    limit = max(granule, limit_bytes // granule * granule)
    size = min(_round_up(start_bytes, granule), limit)
    steps: list[tuple[int, int]] = []
    while True:
        work = int(measure(size))
        steps.append((size, work))
        if work >= target_ns or size >= limit or len(steps) >= max_steps:
            return Sizing(size, work, target_ns, limit, tuple(steps))
        growth = HEADROOM * target_ns / work if work > 0 else MAX_GROWTH
        growth = min(MAX_GROWTH, max(MIN_GROWTH, growth))
        size = min(limit, _round_up(int(size * growth), granule))


__all__ = ["MARGIN", "Sizing", "size_by_time", "target_work_ns"]
