# SPDX-License-Identifier: GPL-2.0-only
"""What the big-memory benchmarks share: the machine's big-memory lock, the
MemAvailable check before a run, and one ``kvmpv`` run that writes JSON.

Imported by the scripts next to it (``python benchmarks/NAME.py`` puts this
directory first on ``sys.path``); not part of the kvmpv package.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

ROOT = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, ROOT)

from kvmpv.memory import mem_available  # noqa: E402
from kvmpv.units import format_size  # noqa: E402

#: the shared machine's big-memory lock: one run above 2 GiB at a time
LOCK = "/tmp/kvmpv-bigmem.lock"
#: left free beside the run: the interpreter, page tables, everyone else
HEADROOM = 1 << 30
#: the confidence level and bootstrap resamples of every printed interval
LEVEL = 0.90
RESAMPLES = 4000


def need_memory(size: int) -> None:
    """Exit 3 unless ``size`` plus the headroom is available now."""
    avail = mem_available()
    if avail < size + HEADROOM:
        print(
            f"MemAvailable {format_size(avail)} < {format_size(size)} + 1G headroom: "
            "not running (another big run in progress?)",
            file=sys.stderr,
        )
        sys.exit(3)


def run_kvmpv(
    args: list[str], path: str, env: Optional[dict[str, str]] = None, quiet: bool = False
) -> dict[str, Any]:
    """Run ``kvmpv ARGS`` from this tree in its own process; its JSON at ``path``.

    ``env``: variables added to the environment (and printed with the command).
    ``quiet``: drop its stdout (the caller prints its own table from the JSON).
    """
    cmd = [sys.executable, "-m", "kvmpv", *args]
    extra = env or {}
    shown = "".join(f"{k}={v!r} " for k, v in extra.items())
    print(f"$ {shown}kvmpv " + " ".join(args), flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, **extra},
        stdout=subprocess.DEVNULL if quiet else None,
    )
    print(f"  (exit {proc.returncode}, {time.monotonic() - t0:.1f} s)", flush=True)
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        sys.exit(f"no results from {' '.join(cmd)}")
    with open(path) as f:
        doc: dict[str, Any] = json.load(f)
    return doc


# Paired ratios: the benchmarks interleave what they compare (strategies within a
# repeat, async and sync cycles), so noise shared by neighbours cancels in
# a per-pair ratio.


def percentile_cut(values: list[float]) -> Optional[tuple[float, float]]:
    """The central LEVEL interval of ``values`` (bootstrap results), None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    cut = int((1 - LEVEL) / 2 * len(ordered))
    return ordered[cut], ordered[len(ordered) - 1 - cut]


def _pearson(x: list[float], y: list[float]) -> float:
    # statistics.correlation is Python 3.10+; kvmpv promises 3.9.
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


class Paired(NamedTuple):
    """The median of per-pair ratios (percent), its interval, the pairs' correlation."""

    ratio: float
    low: float
    high: float
    correlation: Optional[float]


def paired_interval(pairs: list[tuple[float, float]]) -> Optional[Paired]:
    """Median of the per-pair ratios num/den (percent) and its 90% bootstrap interval.

    Whole pairs are resampled, so noise shared by the two runs of a pair
    (machine drift slower than a pair) cancels in each ratio instead of
    widening the interval.  Seeded: a re-print gives the same numbers.
    """
    ok = [(a, b) for a, b in pairs if b > 0]
    if len(ok) < 2:
        return None
    ratios = [100.0 * a / b for a, b in ok]
    rng = random.Random(0)
    medians = [statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(RESAMPLES)]
    cut = percentile_cut(medians)
    assert cut is not None
    corr: Optional[float] = None
    nums, dens = [a for a, _ in ok], [b for _, b in ok]
    if len(ok) >= 3 and len(set(nums)) > 1 and len(set(dens)) > 1:
        corr = _pearson(nums, dens)
    return Paired(statistics.median(ratios), cut[0], cut[1], corr)
