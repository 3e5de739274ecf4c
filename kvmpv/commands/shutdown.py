# SPDX-License-Identifier: GPL-2.0-only
"""Process-exit teardown: exit latency, time to free the memory, and which cgroup pays.

A worker populates each size and exits under each strategy: sync (plain
exit), cleaner (clone(CLONE_VM) cleaner), elsewhere (the cleaner moved to
another cgroup: stands for kernel-thread/mmput_async designs, must be "not
charged"), reaper (SIGKILL + process_mrelease from another cgroup, as lmkd),
parallel (the cleaner releasing with N tasks).  Reports exit latency seen by
a pidfd waiter, release time, teardown CPU and the cgroup verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import UsageError
from ..report.cases import ensure_writable, write_text
from ..report.tables import format_table
from ..scenarios.shutdown import (
    DEFAULT_STRATEGIES,
    STRATEGIES,
    ShutdownRecord,
    ShutdownRequest,
    ShutdownResult,
    parse_strategies,
    run_shutdown,
)
from ..stats import median_of
from ..units import format_size, parse_sizes
from ._options import add_cgroup_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", default="1G,2G,4G,8G", help="comma-separated sizes (default: %(default)s)"
    )
    parser.add_argument(
        "--strategy",
        default=",".join(DEFAULT_STRATEGIES),
        help=f"comma-separated, from {','.join(STRATEGIES)} (default: %(default)s)",
    )
    parser.add_argument("--thp", action="store_true", help="back the memory with THP")
    parser.add_argument("--repeat", type=int, default=3, help="runs per (strategy, size)")
    parser.add_argument(
        "--vm", action="store_true", help="the worker is a KVM VM whose guest touched the memory"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="tasks of the parallel strategy (default: CPUs of the cpuset, capped)",
    )
    add_cgroup_option(parser, old_name="--hierarchy")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _fmt(v: Any, unit: str = "s") -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 10 else f"{v:.2f} s"
    return str(v)


def format_text(result: ShutdownResult) -> str:
    """The human-readable report (one table, then one line per verdict)."""
    doc = result.to_dict()
    head = (
        f"kvmpv shutdown: {'KVM VM' if result.request.vm else 'native'} worker, "
        f"{'THP' if result.request.thp else '4 KiB pages'}, repeat {result.request.repeat}, "
        f"cgroup {result.hierarchy or 'unavailable'}; host {doc['host']['kernel_release']}, "
        f"{doc['host']['cpus']} CPUs, load {doc['host']['loadavg_start']:.2f}->"
        f"{doc['host']['loadavg_end']:.2f}, CPUs busy {doc['host']['cpu_busy_fraction']:.0%}"
    )
    cols = ["strategy", "size", "exit latency", "release", "teardown cpu", "charged", "verdict"]
    rows = []
    for rec in doc["records"]:
        rows.append(
            [
                rec["strategy"],
                format_size(rec["size_bytes"]),
                _fmt(median_of(rec["exit_latency_s"])),
                _fmt(median_of(rec["release_s"])),
                _fmt(rec["teardown_cpu_s"]),
                _fmt(rec["charged_to_worker_cgroup_s"]),
                rec["verdict"],
            ]
        )
    lines = [head, format_table(cols, rows), ""]
    for rec, raw in zip(doc["records"], result.records):
        lines.append(_detail(rec, raw))
    missing = {
        r["memory_trace"].get("reason")
        for rec in doc["records"]
        for r in rec.get("repeats", [])
        if r.get("memory_trace") and not r["memory_trace"].get("available")
    }
    for why in sorted(w for w in missing if w):
        lines.append(f"  worker cgroup memory not sampled: {why}")
    return "\n".join(lines)


def _detail(rec: dict[str, Any], raw: ShutdownRecord) -> str:
    name = f"{rec['strategy']} {format_size(rec['size_bytes'])}"
    if rec.get("skip_reason"):
        return f"  {name}: SKIP: {rec['skip_reason']}"
    detail = rec.get("verdict_detail") or {}
    text = f"  {name}: {rec['verdict']}"
    if raw.failed and raw.expected is not None:
        text += f" (FAIL: expected {raw.expected.value})"
    text += f" -- {detail.get('reason', '')}; work = {rec.get('work_source', '')}"
    split = rec.get("split")
    if split:
        # over every repeat, also those where process_mrelease came too late
        # (the verdict's shares count only the reaped ones)
        text += (
            f"; all repeats: worker {split['worker_fraction']:.0%}"
            f" / reaper {split['reaper_fraction']:.0%}"
        )
    if "mrelease_reaped" in rec:
        text += f"; process_mrelease reaped in {rec['mrelease_reaped']} repeats"
    if rec.get("mrelease_errors"):
        text += f" (others: {','.join(rec['mrelease_errors'])}: the victim had left exit_mm)"
    return text + _memory_line(rec)


def _memory_line(rec: dict[str, Any]) -> str:
    """The worker cgroup's memory counter across the last repeat's teardown."""
    traces = [r["memory_trace"] for r in rec.get("repeats", []) if r.get("memory_trace")]
    if not traces:
        return ""
    tr = traces[-1]
    if not tr.get("available"):
        return ""  # said once, under the table
    end_s = tr["points"][-1][0]
    return (
        f"\n    worker cgroup memory ({tr['file']}): {tr['bytes_at_start'] / 2**20:.0f} MiB -> "
        f"{tr['bytes_at_end'] / 2**20:.0f} MiB within {end_s * 1000:.0f} ms of the exit request "
        f"({tr['samples']} samples)"
    )


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise UsageError(f"--repeat must be at least 1, not {args.repeat}")
    req = ShutdownRequest(
        sizes=parse_sizes(args.sizes),
        strategies=parse_strategies(args.strategy),
        thp=args.thp,
        repeat=args.repeat,
        vm=args.vm,
        parallel=args.parallel,
        hierarchy=args.cgroup,
    )
    req.validate()
    if args.json:
        ensure_writable(args.json)  # before minutes of measuring, not after

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"kvmpv shutdown: {msg}", file=sys.stderr, flush=True)

    result = run_shutdown(req, progress)
    if args.json:
        write_text(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
    print(format_text(result))
    return result.exit_code


def on_interrupt(args: argparse.Namespace, exc: BaseException) -> None:
    """SIGINT/SIGTERM: --json still gets the samples taken, ``"interrupted": N``."""
    partial = getattr(exc, "shutdown_result", None)
    if args.json and partial is not None:
        write_text(args.json, json.dumps(partial.to_dict(), indent=2) + "\n")
