# SPDX-License-Identifier: GPL-2.0-only
"""Run everything kvmpv knows for this host and archive the results.

Steps: probe; check (conformance of the PV async-cleanup interface: real
kernel where the host allows it, simulated s390x kernel otherwise, each result
labelled); reboot (async vs sync at 3G, then at evenly spaced sizes up to
half of MemAvailable, as many as fit in --reboot-budget seconds at the pace
3G showed: the reboot curve; simulated unless this is an s390x Secure
Execution host with async destroy); shutdown (sync, cleaner, elsewhere,
reaper, parallel, at sizes up to a quarter of MemAvailable per worker).

Writes into --out: results.json (schema v1; read it with `kvmpv report`,
compare two with `kvmpv compare`), check.ktap, check.junit.xml, teardown.png
and reboot.png (with the [plot] extra), and with --kcidb a KCIDB
submission.  Exit 1 if a check failed or an accounting verdict was not the
expected one.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..report.progress import Progress
from ..scenarios.exercise import REBOOT_BUDGET_S, ExerciseRequest, run_exercise
from ..units import parse_size, parse_sizes
from ._options import add_cgroup_option, add_kcidb_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results", metavar="DIR", help="output directory")
    parser.add_argument(
        "--max-size",
        metavar="SIZE",
        help="largest worker (default: a quarter of MemAvailable); refused if the host "
        "cannot hold it",
    )
    add_cgroup_option(parser)
    parser.add_argument("--repeat", type=int, default=3, help="shutdown repeats per size")
    parser.add_argument("--cycles", type=int, default=3, help="reboot cycles per mode")
    parser.add_argument(
        "--reboot-sizes",
        metavar="LIST",
        help="guest sizes of the reboot curve, e.g. 3G,6G (all of them run, smallest first; "
        "above 2G, since at or below it QEMU reboots synchronously; default: 3G, then evenly "
        "spaced sizes up to half of MemAvailable, as many as 3G's time says fit in "
        "--reboot-budget)",
    )
    parser.add_argument(
        "--reboot-budget",
        type=float,
        default=REBOOT_BUDGET_S,
        metavar="SECONDS",
        help="wall-clock budget of the default reboot curve: a size whose predicted time "
        "(from the sizes already run) would exceed it is not run, and recorded as skipped "
        "with the reason (default: %(default).0f)",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    add_kcidb_options(parser)


def on_interrupt(args: argparse.Namespace, exc: BaseException) -> None:
    """SIGINT/SIGTERM: the files were written with what ran; say which."""
    for path in getattr(exc, "exercise_files", []):
        print(f"wrote {path} (interrupted)")


def run(args: argparse.Namespace) -> int:
    req = ExerciseRequest(
        out_dir=args.out,
        max_size=parse_size(args.max_size) if args.max_size else None,
        repeat=args.repeat,
        hierarchy=args.cgroup,
        cycles=args.cycles,
        plots=not args.no_plots,
        reboot_sizes=tuple(parse_sizes(args.reboot_sizes)) if args.reboot_sizes else None,
        reboot_budget_s=args.reboot_budget,
        kcidb=args.kcidb,
        kcidb_origin=args.kcidb_origin,
        kcidb_build=args.kcidb_build,
        command="kvmpv " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    res = run_exercise(req, Progress())
    print(res.summary())
    print()
    for note in res.notes:
        print(note)
    for path in res.files:
        print(f"wrote {path}")
    for problem in res.problems:
        print(f"FAIL {problem}")
    print("PASS" if not res.problems else f"FAIL ({len(res.problems)} problem(s))")
    return res.exit_code
