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
import sys
from pathlib import Path

from .. import seimage
from ..errors import UsageError
from ..report.cases import write_text
from ..scenarios.check import BACKENDS, CheckRequest, describe_checks, probe_facts, run_checks
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
    if args.junit:
        write_text(args.junit, result.junit())
    if args.json:
        write_text(args.json, result.to_json())
    return result.exit_code
