# SPDX-License-Identifier: GPL-2.0-only
"""Flatten a results document into named, comparable measurements.

Every number ``kvmpv compare`` and the summary tables talk about comes from
here, with a stable key (``shutdown/cleaner/8G/4k/exit_latency_s``), its unit,
which direction is better, and whether it came from the simulator.  Statuses
(check results, accounting verdicts) are metrics too: a check going from pass
to fail or a verdict leaving "charged" is a regression like a slower teardown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Union

from ..stats import median
from ..units import format_size

Value = Union[float, str]

#: Status values that are good; moving away from them is a regression.
#: "split" is the reaper's expected verdict (kvmpv.accounting.judge_split).
GOOD_STATUSES = frozenset({"pass", "charged", "split"})


@dataclass(frozen=True)
class Metric:
    key: str
    value: Value
    unit: str  # "s" for times, "" for statuses
    better: str  # "lower" (times), "status" (pass/charged are good)
    simulated: bool = False


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _pages(thp: Any) -> str:
    return "thp" if thp else "4k"


def _reboot(prefix: str, runs: Iterable[dict[str, Any]]) -> Iterator[Metric]:
    for run in runs:
        backend = str(run.get("backend", "?"))
        sim = bool(run.get("simulated", backend == "sim"))
        mem = format_size(int(run.get("memory_bytes", 0)))
        cycles = run.get("cycles", [])
        for mode in ("async", "sync"):
            mine = [c for c in cycles if c.get("mode") == mode]
            if not mine:
                continue
            base = f"{prefix}/{backend}/{mem}/{mode}"
            for field in ("reboot_latency_s", "perform_s", "overlap_s", "cleanup_cpu_s"):
                med = median(c.get(field) for c in mine)
                if med is not None:
                    yield Metric(f"{base}/{field}", med, "s", "lower", sim)
            # A warm-up reboot's timings stay out (RebootRequest.warmup), its verdict does not.
            warm = [c for c in run.get("warmup_cycles", []) if c.get("mode") == mode]
            verdicts = {str(c.get("verdict")) for c in [*warm, *mine]}
            worst = "charged" if verdicts == {"charged"} else ",".join(sorted(verdicts))
            yield Metric(f"{base}/verdict", worst, "", "status", sim)


def _shutdown(prefix: str, records: Iterable[dict[str, Any]]) -> Iterator[Metric]:
    for rec in records:
        size = format_size(int(rec.get("size_bytes", 0)))
        base = f"{prefix}/{rec.get('strategy')}/{size}/{_pages(rec.get('thp'))}"
        for field in ("exit_latency_s", "release_s"):
            stats = rec.get(field)
            if isinstance(stats, dict) and _num(stats.get("median")):
                yield Metric(f"{base}/{field}", float(stats["median"]), "s", "lower")
        for field in ("teardown_cpu_s",):
            if _num(rec.get(field)):
                yield Metric(f"{base}/{field}", float(rec[field]), "s", "lower")
        if rec.get("verdict") is not None:
            yield Metric(f"{base}/verdict", str(rec["verdict"]), "", "status")


def flatten(doc: dict[str, Any]) -> dict[str, Metric]:
    """All metrics of a (validated) results document, by key."""
    out: dict[str, Metric] = {}

    def add(metrics: Iterable[Metric]) -> None:
        for m in metrics:
            out[m.key] = m

    check = doc.get("check") or {}
    for res in check.get("results", []):
        backend = res.get("backend", "?")
        add(
            [
                Metric(
                    f"check/{backend}/{res['name']}", res["status"], "", "status", backend == "sim"
                )
            ]
        )
    add(_reboot("reboot", doc.get("reboot") or []))
    add(_shutdown("shutdown", (doc.get("shutdown") or {}).get("records", [])))
    bench = doc.get("bench") or {}
    add(_shutdown("bench/teardown", bench.get("teardown", [])))
    add(_reboot("bench/reboot", bench.get("reboot_curve", [])))
    return out
