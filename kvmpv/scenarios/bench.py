# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv bench``: the teardown table, measured on this host.

The seed measurement of the field is a table of teardown time by process size
(about 13 GB/s on a laptop CPU, 4-28 GB measured, extrapolated to 16 TB:
1260 s).  This reproduces it: sizes from 1 GiB up to the host limit, 4 KiB
pages and THP, strategies sync and cleaner (and the parallel cleaner), with
min/median/max over repeats.  The shutdown scenario interleaves strategies
within each repeat, so machine noise hits them alike.

The extrapolation to 64 GB .. 16 TB fits release time = a + size / rate by
least squares over the measured medians, and every extrapolated row carries
``"extrapolated": true``: it is arithmetic, not a measurement.

The reboot curve runs the reboot scenario (async and sync) at several guest
sizes; on a host without PV it is the simulated s390x kernel, and every record
says ``backend: "sim"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..errors import HostError, Interrupted, UsageError
from ..memory import mem_available
from ..report import results
from ..units import GiB, format_size
from . import probe as probe_mod
from . import reboot as reboot_mod
from . import shutdown as shutdown_mod
from .exercise import MIN_REBOOT_MEMORY

GB = 10**9
#: The seed table's extrapolation points (decimal, as published).
EXTRAPOLATE_TO = (64 * GB, 256 * GB, 1000 * GB, 4000 * GB, 16000 * GB)


@dataclass(frozen=True)
class BenchRequest:
    max_size: Optional[int] = None  # default: MemAvailable / 2
    sizes: Optional[tuple[int, ...]] = None  # explicit sizes override max_size
    repeat: int = 3
    strategies: tuple[str, ...] = ("sync", "cleaner", "parallel")
    page_sizes: tuple[bool, ...] = (False, True)  # thp off, on
    reboot_sizes: Optional[tuple[int, ...]] = None
    reboot_cycles: int = 3
    command: str = ""
    #: cgroup hierarchy of every accounting verdict ("auto", "v1", "v2")
    hierarchy: str = "auto"


def plan(req: BenchRequest, available: int) -> tuple[list[int], list[int]]:
    if req.repeat < 1 or req.reboot_cycles < 1:
        raise UsageError("--repeat and --reboot-cycles must be at least 1")
    if req.sizes:
        sizes = sorted(req.sizes)
    else:
        # Powers of two from 1 GiB up to the limit: the seed table's range.
        limit = req.max_size if req.max_size is not None else available // 2
        sizes = [s for s in (GiB << i for i in range(20)) if s <= limit]
        if not sizes:
            raise HostError(f"the size limit {format_size(limit)} is below 1G")
    if sizes[-1] > available:
        raise HostError(
            f"size {format_size(sizes[-1])} is more than this host can hold "
            f"(MemAvailable {format_size(available)}); nothing was allocated"
        )
    if req.reboot_sizes is not None:
        reboot = sorted(req.reboot_sizes)
    else:
        reboot = [s for s in (3 * GiB, 4 * GiB, 8 * GiB, 12 * GiB) if s <= available // 2]
    if reboot and reboot[-1] > available:
        raise HostError(f"reboot size {format_size(reboot[-1])} exceeds MemAvailable")
    return sizes, reboot


def fit_rate(points: Sequence[tuple[int, float]]) -> Optional[tuple[float, float]]:
    """Least-squares ``seconds = a + bytes * b``; None with fewer than 2 sizes."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    b = sxy / sxx
    return my - b * mx, b


def extrapolate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, bool], list[tuple[int, float]]] = {}
    for rec in records:
        rel = rec.get("release_s")
        if isinstance(rel, dict) and isinstance(rel.get("median"), (int, float)):
            groups.setdefault((rec["strategy"], bool(rec["thp"])), []).append(
                (int(rec["size_bytes"]), float(rel["median"]))
            )
    out = []
    for (strategy, thp), pts in sorted(groups.items()):
        fit = fit_rate(pts)
        if fit is None or fit[1] <= 0:
            continue
        a, b = fit
        for size in EXTRAPOLATE_TO:
            out.append(
                {
                    "strategy": strategy,
                    "thp": thp,
                    "size_bytes": size,
                    "release_s": max(0.0, a + b * size),
                    "rate_gb_s": 1.0 / b / GB,
                    "extrapolated": True,
                    "fitted_from": [p[0] for p in pts],
                }
            )
    return out


def run_bench(req: BenchRequest, progress: Optional[Any] = None) -> dict[str, Any]:
    """Measure the table; return a results document (schema v1) with ``bench``."""
    available = mem_available()
    sizes, reboot_sizes = plan(req, available)
    step = getattr(progress, "step", None) or (lambda _n: None)
    done = getattr(progress, "done", None) or (lambda _s="": None)
    say: Callable[[str], None] = progress if callable(progress) else (lambda _m: None)

    doc = results.new_document(probe_mod.probe_host().to_dict(), req.command)
    teardown: list[dict[str, Any]] = []
    curve: list[dict[str, Any]] = []
    try:
        _measure(req, sizes, reboot_sizes, teardown, curve, step, done, say)
    except (Interrupted, KeyboardInterrupt) as exc:
        # What was measured travels with the signal: --json still gets a file.
        partial = getattr(exc, "shutdown_result", None)
        if partial is not None:
            teardown += partial.to_dict()["records"]
        doc["bench"] = {"teardown": teardown, "extrapolation": [], "reboot_curve": curve}
        signo = exc.signo if isinstance(exc, Interrupted) else 2
        doc["interrupted"] = {"signal": int(signo), "step": "bench"}
        exc.bench_doc = doc  # type: ignore[union-attr]
        raise
    doc["bench"] = {
        "teardown": teardown,
        "extrapolation": extrapolate(teardown),
        "reboot_curve": curve,
    }
    if not curve:
        doc["skipped"] = [
            {"step": "reboot curve", "reason": "no guest size >= 3G fits in half of MemAvailable"}
        ]
    return doc


def _measure(
    req: BenchRequest,
    sizes: list[int],
    reboot_sizes: Sequence[int],
    teardown: list[dict[str, Any]],
    curve: list[dict[str, Any]],
    step: Callable[[str], None],
    done: Callable[..., None],
    say: Callable[[str], None],
) -> None:
    for thp in req.page_sizes:
        pages = "THP" if thp else "4 KiB pages"
        step(f"teardown table, {pages}: {', '.join(map(format_size, sizes))}")
        sr = shutdown_mod.run_shutdown(
            shutdown_mod.ShutdownRequest(
                sizes=sizes,
                strategies=list(req.strategies),
                thp=thp,
                repeat=req.repeat,
                hierarchy=req.hierarchy,
            ),
            say,
        )
        teardown += sr.to_dict()["records"]
        done()
    for memory in reboot_sizes:
        if memory < MIN_REBOOT_MEMORY:
            continue
        step(f"reboot curve at {format_size(memory)}")
        rr = reboot_mod.run_reboot(
            reboot_mod.RebootRequest(
                memory=memory,
                cycles=req.reboot_cycles,
                warmup=1,
                mode="both",
                hierarchy=req.hierarchy,
            ),
            say,
        )
        curve.append(rr.to_dict())
        done()


__all__ = ["EXTRAPOLATE_TO", "BenchRequest", "extrapolate", "fit_rate", "plan", "run_bench"]
