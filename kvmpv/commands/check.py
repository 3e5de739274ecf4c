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
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import seimage
from ..errors import Interrupted, UsageError
from ..report import kcidb, tmt
from ..report.cases import RunResult, ensure_writable, write_text
from ..scenarios.check import (
    BACKENDS,
    Check,
    CheckRequest,
    CheckRun,
    describe_checks,
    plan,
    registry,
    run_checks,
)
from ..scenarios.check import select as select_checks
from ..scenarios.probe import probe_facts
from ._options import add_kcidb_options


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
        "--exact",
        metavar="NAME",
        help="run only the check called NAME (no pattern matching)",
    )
    parser.add_argument(
        "--avocado-recipe",
        action="store_true",
        help="print, instead of running anything, avocado runnables: one TAP test per "
        "check and backend, so that 'avocado run --resolver-run-executables "
        '--resolver-exec-arguments "check --avocado-recipe" $(command -v kvmpv)\' reports '
        "each check as its own result",
    )
    parser.add_argument(
        "--se-image",
        metavar="FILE",
        help="a Secure Execution image made for this host (pvimg create): the boot checks "
        "run on the real kernel with it (without it they SKIP there); the simulator boots "
        "kvmpv's synthetic image",
    )
    parser.add_argument(
        "--tmt-results",
        metavar="FILE",
        help="also write the results as tmt custom results (a results.json in $TMT_TEST_DATA: "
        "one tmt result per check and backend, with the KTAP/JUnit/JSON files beside it as "
        "logs; docs/engines.md)",
    )
    add_kcidb_options(parser)


def run(args: argparse.Namespace) -> int:
    if args.exact:
        if args.exact not in {c.name for c in registry()}:
            raise UsageError(f"--exact {args.exact}: no such check (kvmpv check --list)")
        args.select = [args.exact]
    selected = select_checks(tuple(args.select))
    if args.exact:
        selected = tuple(c for c in selected if c.name == args.exact)
        args.select = [f"[{args.exact[0]}]{args.exact[1:]}"]  # a glob matching only it
    if args.avocado_recipe:
        print(json.dumps(avocado_recipe(args, selected)))
        return 0
    kcidb.check_origin(args.kcidb_origin)
    if args.kcidb_build:
        kcidb.check_build_id(args.kcidb_build)
    args.started = kcidb.now()
    for path in (args.junit, args.json, args.kcidb, args.tmt_results):
        if path == "-":
            raise UsageError(
                "--junit/--json/--kcidb/--tmt-results need a file name; KTAP goes to stdout"
            )
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


def avocado_recipe(args: argparse.Namespace, checks: Sequence[Check]) -> list[dict[str, Any]]:
    """avocado "runnables recipe" (the exec-runnables-recipe resolver): one ``tap``
    runnable per check and backend, each ``kvmpv check --exact NAME``, so that every
    check is its own avocado result with its own status (TAP pass, skip, fail)."""
    facts = probe_facts()
    extra = ["--se-image", args.se_image] if args.se_image else []
    return [
        {
            "kind": "tap",
            "identifier": f"kvmpv.check.{backend}.{chk.name}",  # what avocado names the test
            "uri": sys.executable,
            "args": ["-m", "kvmpv", "check", "--backend", backend, "--exact", chk.name, *extra],
        }
        for chk, backend in plan(checks, args.backend, facts)
    ]


def _write_reports(args: argparse.Namespace, result: CheckRun) -> None:
    if args.junit:
        write_text(args.junit, result.junit())
    if args.json:
        write_text(args.json, result.to_json())
    if args.kcidb:
        command = "kvmpv " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        started = getattr(args, "started", None) or kcidb.now()
        sub = kcidb.from_check(
            result.to_dict(), started, args.kcidb_origin, command=command,
            build_id=args.kcidb_build,
        )  # fmt: skip
        kcidb.write(sub, args.kcidb)
    if args.tmt_results:
        logs = [p for p in (args.junit, args.json, args.kcidb) if p]
        write_text(args.tmt_results, tmt.render(result.run, args.tmt_results, logs))


def on_interrupt(args: argparse.Namespace, exc: BaseException) -> None:
    """SIGINT/SIGTERM: write the reports anyway, marked interrupted, counting what ran.

    A CI timeout stops a run exactly like this; a report that says so beats
    none.  Before the first check there is nothing to count: the reports say
    that (an empty run, bailed out).
    """
    if not (args.junit or args.json or args.kcidb or args.tmt_results):
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
