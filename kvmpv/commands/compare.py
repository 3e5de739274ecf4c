# SPDX-License-Identifier: GPL-2.0-only
"""Compare two kvmpv results files (two kernels, or two machines).

Every measurement is listed side by side with NEW/OLD.  A time is flagged as a
regression when the ratio exceeds 1 + THRESHOLD and the difference exceeds
MIN_ABS seconds; a check going from pass to fail, or an accounting verdict
leaving "charged", is flagged too.  Exit code 1 if anything was flagged.
"""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_FAIL, EXIT_OK, UsageError
from ..report import results
from ..report.compare import DEFAULT_MIN_ABS_S, DEFAULT_THRESHOLD, compare
from ..report.tables import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD.json")
    parser.add_argument("new", metavar="NEW.json")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"relative slow-down flagged as a regression (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--min-abs",
        type=float,
        default=DEFAULT_MIN_ABS_S,
        metavar="SECONDS",
        help=f"ignore differences smaller than this (default {DEFAULT_MIN_ABS_S} s)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    parser.add_argument("--regressions-only", action="store_true", help="list flagged rows only")


def run(args: argparse.Namespace) -> int:
    if args.threshold < 0 or args.min_abs < 0:
        raise UsageError("--threshold and --min-abs must not be negative")
    old = results.read(args.old)
    new = results.read(args.new)
    cmp = compare(old, new, threshold=args.threshold, min_abs_s=args.min_abs)
    rows = cmp.regressions if args.regressions_only else cmp.rows
    body = []
    for r in rows:
        d = r.to_dict()
        flag = "REGRESSION" if r.regression else ""
        sim = " [sim]" if d["simulated"] else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        body.append([r.key + sim, d["old"], d["new"], ratio, flag, r.note])
    print(format_table(["measurement", "old", "new", "new/old", "flag", "note"], body))
    print(
        f"\n{len(cmp.regressions)} regression(s) among {len(cmp.rows)} measurements "
        f"(threshold {args.threshold:.0%}, min {args.min_abs} s)"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(cmp.to_dict(), f, indent=2)
    return EXIT_FAIL if cmp.regressions else EXIT_OK
