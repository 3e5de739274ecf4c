# SPDX-License-Identifier: GPL-2.0-only
"""Sizing a teardown by time (kvmpv.accounting.sizing): against simulated
teardowns from twice as slow as this machine to sixteen times as fast, the
sized work is decisive and both verdicts come out right; a host too small
says so instead of returning a size that is not enough."""

from __future__ import annotations

import pytest

from kvmpv.accounting import (
    PRECISE_TOLERANCE_NS,
    Outcome,
    decisive_work_ns,
    default_tolerance_ns,
    judge_charged,
    size_by_time,
    target_work_ns,
)
from kvmpv.units import GiB, MiB

#: this machine: 1 GiB of 4 KiB pages freed in about 25 ms
HERE_NS_PER_GIB = 25_000_000


def teardown_at(speedup: float, jitter: float = 0.0):  # type: ignore[no-untyped-def]
    """A simulated synchronous teardown ``speedup`` times as fast as this
    machine's, with a fixed exit cost, and every other reading ``jitter``
    slower (a loaded 2-CPU machine)."""
    calls: list[int] = []

    def measure(size: int) -> int:
        calls.append(size)
        slow = 1.0 + (jitter if len(calls) % 2 == 0 else 0.0)
        return int((200_000 + size / GiB * HERE_NS_PER_GIB / speedup) * slow)

    return measure, calls


@pytest.mark.parametrize(
    "speedup, tol",
    [(x, PRECISE_TOLERANCE_NS) for x in (0.5, 1.0, 4.0, 16.0)]
    # the tick tolerance asks 8x more work: 16x this speed would need 51 GiB
    + [(x, default_tolerance_ns()) for x in (0.5, 1.0, 4.0)],
)
def test_sized_work_is_decisive_at_any_speed(speedup: float, tol: int) -> None:
    measure, calls = teardown_at(speedup)
    target = target_work_ns(tol)
    s = size_by_time(measure, target_ns=target, start_bytes=256 * MiB, limit_bytes=20 * GiB)
    assert s.reached, s.describe()
    assert s.work_ns >= target > decisive_work_ns(tol)
    assert len(s.steps) == len(calls) <= 4, s.steps
    # The verdicts a test draws from this work: charged when the cgroup saw it
    # all, not charged when it saw none -- whatever the machine's speed.
    assert judge_charged(s.work_ns, s.work_ns, tolerance_ns=tol).outcome is Outcome.CHARGED
    assert judge_charged(s.work_ns, 0, tolerance_ns=tol).outcome is Outcome.NOT_CHARGED
    # A noisy re-measurement (up to 0.45x the sized work) is still decisive.
    again = int(s.work_ns * 0.45)
    assert judge_charged(again, again, tolerance_ns=tol).outcome is Outcome.CHARGED
    assert judge_charged(again, 0, tolerance_ns=tol).outcome is Outcome.NOT_CHARGED


def test_a_fixed_gigabyte_is_not_enough_on_a_fast_machine() -> None:
    """Why sizing exists: 1 GiB at 16x this machine's speed is 1.8 ms of work,
    which at the tick tolerance cannot be told from nothing."""
    measure, _ = teardown_at(16.0)
    work = measure(GiB)
    tol = default_tolerance_ns()
    assert judge_charged(work, work, tolerance_ns=tol).outcome is Outcome.INCONCLUSIVE
    s = size_by_time(measure, target_ns=target_work_ns(tol), start_bytes=GiB, limit_bytes=64 * GiB)
    assert s.reached and s.size_bytes > GiB


def test_jitter_does_not_stop_the_growth_short() -> None:
    measure, _ = teardown_at(4.0, jitter=0.5)
    s = size_by_time(
        measure, target_ns=target_work_ns(PRECISE_TOLERANCE_NS), start_bytes=64 * MiB,
        limit_bytes=20 * GiB,
    )  # fmt: skip
    assert s.reached, s.describe()


def test_a_host_too_small_is_reported_not_hidden() -> None:
    measure, _ = teardown_at(16.0)
    s = size_by_time(
        measure, target_ns=target_work_ns(default_tolerance_ns()), start_bytes=256 * MiB,
        limit_bytes=2 * GiB,
    )  # fmt: skip
    assert not s.reached
    assert s.size_bytes == 2 * GiB
    assert s.describe().endswith("the host holds at most 2G")


def test_bad_arguments_are_refused() -> None:
    measure, _ = teardown_at(1.0)
    with pytest.raises(ValueError):
        size_by_time(measure, target_ns=0, start_bytes=MiB, limit_bytes=GiB)
