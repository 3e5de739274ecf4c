# SPDX-License-Identifier: GPL-2.0-only
"""Verdicts: was a piece of work charged to a cgroup?  Pure arithmetic.

Touches only ``/proc/config.gz`` / ``/boot/config-*`` (read once) to learn
CONFIG_HZ for the default tolerance.

The question the reboot and shutdown scenarios ask is "the teardown work W
(measured independently: the thread's own CPU clock, a process's wait4
rusage, a synchronous baseline) -- did cgroup X pay for it?".  The answer is
a ``Verdict``:

* CHARGED when ``charged >= 0.8 * work - tolerance`` and the charge is
  above the not-charged band;
* NOT_CHARGED when ``charged <= 0.2 * work + tolerance`` and the charge is
  below the charged band;
* INCONCLUSIVE when the charge lies in both bands (the work is too small for
  the tolerance: those few ms cannot be attributed) or in neither (partly
  charged).  A charge of 0.0 ms of 21 ms of work is therefore NOT_CHARGED at a
  1 ms tolerance, and still at 8 ms (it is in the not-charged band only);
  only a charge in the overlap is undecidable.

A design that divides the work between two cgroups on purpose (a reaper
calling ``process_mrelease`` while the victim's own exit frees too) is judged
by ``judge_split``: SPLIT when neither cgroup got the whole of it by those
same bands, CHARGED/NOT_CHARGED when the first/second got it all.

The tolerance is what the counters compared cannot tell apart, so it depends
on which counters a caller compares:

* **Precise totals** (``PRECISE_TOLERANCE_NS``, 1 ms): ``cpuacct.usage``,
  cgroup2 ``cpu.stat`` ``usage_usec``, the thread and process CPU clocks,
  and (except on s390) the *sum* ``ru_utime + ru_stime`` of ``wait4`` all
  count the scheduler's ``sum_exec_runtime`` (``update_curr()`` in
  kernel/sched/fair.c charges the cgroup and the task from the same delta;
  ``cputime_adjust()`` rescales the user/system split so that its sum stays
  the runtime; s390's CONFIG_VIRT_CPU_ACCOUNTING_NATIVE does not rescale:
  see ``observe.zombie_runtime_ns``).  They are not
  sampled at ticks.  What is left is what the two sides count differently:
  a task's last steps before and after the measured window (the cgroupfs
  writes of a placement, a worker's final Python lines, a wake-up), and
  microsecond rounding -- well under a millisecond here.  A counter read
  while a task of the cgroup is on a CPU misses its runtime since its last
  ``update_curr()``; kvmpv reads only with those tasks blocked or gone.
* **Tick-split user/system time** (``default_tolerance_ns()``, two ticks,
  8 ms at HZ=250): with ``CONFIG_TICK_CPU_ACCOUNTING`` the kernel samples
  user vs system at each timer tick and scales the precise runtime by that
  ratio (``cputime_adjust()``), so ``usage_user``/``usage_sys``,
  ``user_usec``/``system_usec``, ``ru_utime``/``ru_stime`` *alone* and
  taskstats ac_utime/ac_stime can each be off by about one tick per task:
  one tick for each side of a comparison.

Whatever the tolerance, a verdict needs work well above it: the bands are
disjoint only from ``decisive_work_ns(tolerance)`` (3.3 tolerances) on.
Callers size their work by time to a multiple of that (``kvmpv.accounting.
sizing``), never by bytes, so that a faster machine does not make a verdict
inconclusive.
"""

from __future__ import annotations

import enum
import gzip
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

#: charged if at least this share of the work shows up in the cgroup
CHARGED_FRACTION = 0.8
#: not charged if at most this share shows up
NOT_CHARGED_FRACTION = 0.2
#: when CONFIG_HZ cannot be read, assume the coarsest common tick (HZ=100)
FALLBACK_HZ = 100
#: ticks of slack per comparison: one for each of the two tick-split sides
DEFAULT_TOLERANCE_TICKS = 2
#: slack for comparing precise totals (scheduler runtime on both sides; see above)
PRECISE_TOLERANCE_NS = 1_000_000


class Outcome(str, enum.Enum):
    """Result of a charge check; the value is what reports print."""

    CHARGED = "charged"
    NOT_CHARGED = "not charged"
    INCONCLUSIVE = "inconclusive"
    #: two cgroups each paid a real share (``judge_split``)
    SPLIT = "split"
    SKIP = "skip"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Verdict:
    """The answer with the numbers behind it.

    ``fraction`` is ``charged_ns / work_ns`` (0.0 when there was no work);
    ``tolerance_ns`` is the slack that was applied.
    """

    outcome: Outcome
    work_ns: int
    charged_ns: int
    fraction: float
    reason: str
    tolerance_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "work_ns": self.work_ns,
            "charged_ns": self.charged_ns,
            "fraction": round(self.fraction, 4),
            "tolerance_ns": self.tolerance_ns,
            "reason": self.reason,
        }


_hz_cache: Optional[tuple[int, str]] = None


def _parse_hz(text: str) -> Optional[int]:
    m = re.search(r"^CONFIG_HZ=(\d+)$", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def kernel_hz() -> tuple[int, str]:
    """(CONFIG_HZ, where it came from).  Userspace only sees USER_HZ (100) via
    sysconf, so the kernel config is the only honest source; without it the
    coarsest usual value (100) is assumed and the source says so."""
    global _hz_cache
    if _hz_cache is not None:
        return _hz_cache
    found: Optional[tuple[int, str]] = None
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            hz = _parse_hz(f.read())
        if hz:
            found = (hz, "/proc/config.gz")
    except OSError:
        pass
    if found is None:
        path = f"/boot/config-{os.uname().release}"
        try:
            with open(path) as f:
                hz = _parse_hz(f.read())
            if hz:
                found = (hz, path)
        except OSError:
            pass
    if found is None:
        found = (FALLBACK_HZ, f"CONFIG_HZ not readable, assumed {FALLBACK_HZ}")
    _hz_cache = found
    return found


def tick_ns() -> int:
    """Length of one scheduler tick in ns (4 ms at HZ=250)."""
    return 1_000_000_000 // kernel_hz()[0]


def default_tolerance_ns(ticks: int = DEFAULT_TOLERANCE_TICKS) -> int:
    """The default slack: ``ticks`` scheduler ticks (two: one per side)."""
    return ticks * tick_ns()


def judge_charged(work_ns: int, charged_ns: int, *, tolerance_ns: Optional[int] = None) -> Verdict:
    """Was ``work_ns`` of CPU work charged, given ``charged_ns`` seen in the cgroup?

    ``charged_ns`` is the cgroup's counter *delta* over the work (subtract a
    reading taken before).  ``tolerance_ns`` defaults to two scheduler ticks
    (see the module docstring).
    """
    tol = default_tolerance_ns() if tolerance_ns is None else int(tolerance_ns)
    if tol < 0:
        raise ValueError(f"tolerance_ns must be >= 0, got {tol}")
    work = int(work_ns)
    charged = int(charged_ns)
    fraction = charged / work if work > 0 else 0.0
    pct = f"{fraction * 100:.1f}%"
    numbers = f"{charged / 1e6:.1f} ms of {work / 1e6:.1f} ms ({pct}, tolerance {tol / 1e6:.1f} ms)"
    if work <= 0:
        return Verdict(Outcome.INCONCLUSIVE, work, charged, fraction, "no work measured", tol)
    lower = CHARGED_FRACTION * work - tol
    upper = NOT_CHARGED_FRACTION * work + tol
    in_charged, in_not = charged >= lower, charged <= upper
    if in_charged and in_not:
        # The bands overlap (work below decisive_work_ns) and the charge is in
        # both: those few ms of work cannot be attributed.
        reason = (
            f"work too small to tell apart at this tolerance: {numbers}; "
            f"needs > {decisive_work_ns(tol) / 1e6:.1f} ms of work"
        )
        return Verdict(Outcome.INCONCLUSIVE, work, charged, fraction, reason, tol)
    if in_charged:
        return Verdict(Outcome.CHARGED, work, charged, fraction, f"charged {numbers}", tol)
    if in_not:
        return Verdict(Outcome.NOT_CHARGED, work, charged, fraction, f"charged {numbers}", tol)
    return Verdict(Outcome.INCONCLUSIVE, work, charged, fraction, f"partly charged {numbers}", tol)


def decisive_work_ns(tolerance_ns: int) -> int:
    """The least work at which the charged and not-charged bands are disjoint:
    ``0.8 W - tol > 0.2 W + tol``, i.e. ``W > 2 tol / 0.6`` (3.3 tolerances).
    Below it a charge in the overlap is INCONCLUSIVE."""
    return int(2 * tolerance_ns / (CHARGED_FRACTION - NOT_CHARGED_FRACTION)) + 1


def judge_split(
    first_ns: int,
    second_ns: int,
    *,
    names: tuple[str, str] = ("first", "second"),
    tolerance_ns: Optional[int] = None,
) -> Verdict:
    """Did two cgroups share the work (``first_ns + second_ns``)?

    The bands of ``judge_charged`` applied to the first cgroup's share:
    CHARGED when it paid at least 80% (the second did next to nothing),
    NOT_CHARGED when at most 20% (the second paid it all), SPLIT in
    between, INCONCLUSIVE when the work is too small to tell.  The verdict's
    ``charged_ns`` and ``fraction`` are the first cgroup's.
    """
    first, second = int(first_ns), int(second_ns)
    if first < 0 or second < 0:
        raise ValueError(f"negative CPU share: {first}, {second}")
    v = judge_charged(first + second, first, tolerance_ns=tolerance_ns)
    work = first + second
    if work <= 0:
        return v
    shares = (
        f"{names[0]} {first / 1e6:.1f} ms ({first / work:.0%}), "
        f"{names[1]} {second / 1e6:.1f} ms ({second / work:.0%}) "
        f"of {work / 1e6:.1f} ms (tolerance {v.tolerance_ns / 1e6:.1f} ms)"
    )
    partly = v.outcome is Outcome.INCONCLUSIVE and v.reason.startswith("partly")
    if partly:
        return Verdict(Outcome.SPLIT, work, first, v.fraction, f"split: {shares}", v.tolerance_ns)
    if v.outcome is Outcome.CHARGED:
        return Verdict(
            v.outcome, work, first, v.fraction, f"{names[0]} paid it all: {shares}", v.tolerance_ns
        )
    if v.outcome is Outcome.NOT_CHARGED:
        return Verdict(
            v.outcome, work, first, v.fraction, f"{names[1]} paid it all: {shares}", v.tolerance_ns
        )
    return Verdict(v.outcome, work, first, v.fraction, f"{v.reason}; {shares}", v.tolerance_ns)


def skip_verdict(reason: str, work_ns: int = 0) -> Verdict:
    """A SKIP verdict (accounting unavailable); never a pass."""
    return Verdict(Outcome.SKIP, int(work_ns), 0, 0.0, reason, 0)


__all__ = [
    "CHARGED_FRACTION",
    "NOT_CHARGED_FRACTION",
    "PRECISE_TOLERANCE_NS",
    "Outcome",
    "Verdict",
    "decisive_work_ns",
    "default_tolerance_ns",
    "judge_charged",
    "judge_split",
    "kernel_hz",
    "skip_verdict",
    "tick_ns",
]
