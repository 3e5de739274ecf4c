# SPDX-License-Identifier: GPL-2.0-only
"""The teardown table: exit latency, release time and rate by process size.

Sizes are powers of two from 1G up to --max-size (default half of
MemAvailable), with 4 KiB pages and THP, for the strategies sync, cleaner and
parallel; min/median/max over --repeat runs that interleave the strategies.
The release time is also extrapolated to 64 GB .. 16 TB from the fitted rate
(labelled EXTRAPOLATED: arithmetic, not measurement), and the reboot scenario
gives the async/sync reboot latency curve (simulated s390x kernel unless this
host is a Secure Execution host).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Optional

from ..report import results, tables
from ..report.cases import ensure_writable
from ..report.progress import Progress
from ..scenarios.bench import BenchRequest, run_bench
from ..units import parse_size, parse_sizes
from ._options import add_cgroup_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-size", metavar="SIZE", help="largest size (default MemAvailable/2)")
    parser.add_argument("--sizes", metavar="LIST", help="explicit sizes, e.g. 1G,2G,4G")
    add_cgroup_option(parser)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--strategy", default="sync,cleaner,parallel", help="comma-separated shutdown strategies"
    )
    parser.add_argument("--no-thp", action="store_true", help="4 KiB pages only")
    parser.add_argument("--reboot-sizes", metavar="LIST", help="reboot curve sizes (>= 3G)")
    parser.add_argument("--no-reboot", action="store_true", help="skip the reboot curve")
    parser.add_argument("--json", metavar="FILE", help="write the results file here")
    parser.add_argument(
        "--plot", metavar="PREFIX", help="write PREFIXteardown.png, PREFIXreboot.png"
    )


def on_interrupt(args: argparse.Namespace, exc: BaseException) -> None:
    """SIGINT/SIGTERM: --json still gets what was measured, ``"interrupted"``."""
    doc = getattr(exc, "bench_doc", None)
    if args.json and doc is not None:
        results.write(doc, args.json)
        print(f"wrote {args.json} (interrupted)")


def run(args: argparse.Namespace) -> int:
    reboot_sizes: Optional[tuple[int, ...]] = None
    if args.no_reboot:
        reboot_sizes = ()
    elif args.reboot_sizes:
        reboot_sizes = tuple(parse_sizes(args.reboot_sizes))
    req = BenchRequest(
        max_size=parse_size(args.max_size) if args.max_size else None,
        sizes=tuple(parse_sizes(args.sizes)) if args.sizes else None,
        repeat=args.repeat,
        hierarchy=args.cgroup,
        strategies=tuple(s.strip() for s in args.strategy.split(",") if s.strip()),
        page_sizes=(False,) if args.no_thp else (False, True),
        reboot_sizes=reboot_sizes,
        command="kvmpv " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    if args.json:
        ensure_writable(args.json)  # before minutes of measuring, not after
    doc = run_bench(req, Progress())
    if args.json:
        results.write(doc, args.json)
        print(f"wrote {args.json}")
    else:
        results.validate(doc)
    print(tables.render(doc))
    if args.plot:
        from ..report import plots

        print("\n".join(plots.plot_and_list(doc, args.plot)))
    return 0
