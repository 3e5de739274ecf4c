# SPDX-License-Identifier: GPL-2.0-only
"""Conformance checks of the s390 PV async-cleanup interface, printed as KTAP.

One check per row of the kernel's rc/rrc table plus the ordering and
concurrency cases (PREPARE vs KVM_RUN, ENABLE during PERFORM, the QEMU
double-reboot race, DISABLE and VM close with a leftover, memslots, the 2 GiB
limit, async_destroy=0).  Each result line names its backend: "kvm" is this
host's real /dev/kvm, "sim" the simulated s390x kernel.

backends:
  auto  each check on the real kernel where this host can run it, on the
        simulator otherwise (default; the header says why)
  kvm   real kernel only; what cannot run here is "# SKIP reason"
  sim   simulator only
  both  every check on both backends

Exit code 0 when every result passed, 1 when one failed, 4 when all were skipped.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .. import seimage
from ..errors import Interrupted, UsageError
from ..report.cases import RunResult, ensure_writable, write_text
from ..scenarios.check import (
    BACKENDS,
    CheckRequest,
    CheckRun,
    describe_checks,
    probe_facts,
    run_checks,
)
from ..scenarios.check import select as select_checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="where the checks run (default: auto)",
    )
    parser.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument(
        "--list", action="store_true", help="list the checks, where they run here, and exit"
    )
    parser.add_argument(
        "-k",
        dest="select",
        metavar="PATTERN",
        action="append",
        default=[],
        help="run only checks whose name contains PATTERN (or matches it as a glob); repeatable",
    )
    parser.add_argument(
        "--se-image",
        metavar="FILE",
        help="a Secure Execution image made for this host (pvimg create): the boot checks "
        "run on the real kernel with it (without it they SKIP there); the simulator boots "
        "kvmpv's synthetic image",
    )


def run(args: argparse.Namespace) -> int:
    selected = select_checks(tuple(args.select))
    for path in (args.junit, args.json):
        if path == "-":
            raise UsageError("--junit/--json need a file name; KTAP goes to stdout")
        if path:
            ensure_writable(path)  # before minutes of checks, not after
    if args.list:
        for line in describe_checks(probe_facts(), selected):
            print(line)
        return 0
    try:
        # kselftest forces line buffering so a killed run keeps its results.
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    image = seimage.load(Path(args.se_image)) if args.se_image else None
    req = CheckRequest(backend=args.backend, select=tuple(args.select), se_image=image)
    result = run_checks(req, stream=sys.stdout)
    _write_reports(args, result)
    return result.exit_code


def _write_reports(args: argparse.Namespace, result: CheckRun) -> None:
    if args.junit:
        write_text(args.junit, result.junit())
    if args.json:
        write_text(args.json, result.to_json())


def on_interrupt(args: argparse.Namespace, exc: BaseException) -> None:
    """SIGINT/SIGTERM: write the reports anyway, marked interrupted, counting what ran.

    A CI timeout stops a run exactly like this; a report that says so beats
    none.  Before the first check there is nothing to count: the reports say
    that (an empty run, bailed out).
    """
    if not (args.junit or args.json):
        return
    partial = getattr(exc, "check_run", None)
    if partial is None:
        signo = exc.signo if isinstance(exc, Interrupted) else signal.SIGINT
        run = RunResult(
            suite="kvmpv.check",
            planned=0,
            bail_out=f"interrupted by signal {int(signo)} before the first check",
            interrupted=True,
        )
        partial = CheckRun(run, args.backend, probe_facts())
    _write_reports(args, partial)
