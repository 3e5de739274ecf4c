# SPDX-License-Identifier: GPL-2.0-only
"""The ``kvmpv`` command line: argparse, dispatch, and the exit-code contract.

Each subcommand lives in ``kvmpv/commands/<name>.py`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``, and optionally
``on_interrupt(args, exc)``, which writes the command's report files when
SIGINT/SIGTERM stops it; this file only wires them up, so it stays small and
nobody has to edit it to change a command.

Errors: a ``KvmpvError`` becomes one line on stderr ("kvmpv: error: ...") and
its exit code; anything else is a bug: one line ("kvmpv: internal error: ...",
naming the innermost kvmpv frame) and exit 70, so that a CI job can tell a
crash from "a check failed".  SIGINT and
SIGTERM raise in the main thread, so every ``with``/``finally`` on the way out
runs (VM fds, cleanup threads, cleaner processes, cgroups) before exit.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Optional

from . import __version__, pgste
from .closing import raise_interrupted, signals_held
from .errors import (
    EXIT_ENV,
    EXIT_FAIL,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SKIP,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Interrupted,
    KvmpvError,
    require_linux,
)

#: name -> (module, one-line help).  Order is the order of ``kvmpv --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "exercise": ("kvmpv.commands.exercise", "run everything for this host and write results"),
    "probe": ("kvmpv.commands.probe", "report what this host supports and what can run for real"),
    "check": (
        "kvmpv.commands.check",
        "conformance checks of the PV async-cleanup interface (KTAP)",
    ),
    "reboot": ("kvmpv.commands.reboot", "protected-VM reboot, async vs sync teardown"),
    "shutdown": (
        "kvmpv.commands.shutdown",
        "process-exit teardown: sync, cleaner, elsewhere, reaper",
    ),
    "launch": ("kvmpv.commands.launch", "run a program with the async-teardown cleaner armed"),
    "guest": ("kvmpv.commands.guest", "write kvmpv's s390x payload as a bootable image"),
    "image": ("kvmpv.commands.image", "show what an SE image or SE header says (as 'pvimg info')"),
    "bench": ("kvmpv.commands.bench", "the teardown table: time by size, page size and strategy"),
    "report": ("kvmpv.commands.report", "render a results file as tables and plots"),
    "compare": ("kvmpv.commands.compare", "compare two results files and flag regressions"),
}

EPILOG = f"""\
exit codes:
  {EXIT_OK}    success
  {EXIT_FAIL}    a check failed, a verdict was wrong, or a regression was found
  {EXIT_USAGE}    bad command line or input file
  {EXIT_ENV}    the host cannot do it (no /dev/kvm, no permission, not Linux, too little memory,
       s390x: no PGSTE page tables, so no VM can be created)
  {EXIT_SKIP}    everything was skipped (kselftest convention)
  {EXIT_INTERNAL}   internal error: a bug in kvmpv, reported on one line (never a verdict)
  {EXIT_INTERRUPTED}  interrupted by SIGINT, after cleanup
  {EXIT_TERMINATED}  terminated by SIGTERM, after cleanup

Results from the simulated s390x kernel are labelled "sim" everywhere.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns every exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageExit(f"{self.prog}: error: {message}")


class _UsageExit(Exception):
    pass


def build_parser(selected: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; with ``selected``, only that command's module is imported.

    Importing every command pulls in the scenarios, the simulator and the
    accounting stack (about a second); ``kvmpv probe`` should not pay for
    ``kvmpv exercise``, and a signal in that window should not land in an
    import.  ``selected=None`` imports them all (documentation, tests).
    """
    parser = _Parser(
        prog="kvmpv",
        description="Exercise and measure the asynchronous teardown of KVM guests.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kvmpv {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say on stderr what kvmpv does behind the scenes (on s390x: restarting itself "
        "through kvmpv-pgste, since KVM_CREATE_VM needs PGSTE page tables)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        if selected is not None and name != selected:
            sub.add_parser(name, help=help_text)  # listed in --help, never run
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _on_interrupt=getattr(module, "on_interrupt", None))
    return parser


def _selected_command(argv: Sequence[str]) -> str:
    """The subcommand named in ``argv`` ("" if none or unknown: import nothing)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else ""
    return ""


def _where(err: BaseException) -> str:
    """`` (at file.py:123)``: the innermost kvmpv frame, for the bug report."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    tb = err.__traceback__
    last = ""
    while tb is not None:
        code = tb.tb_frame.f_code
        if os.path.abspath(code.co_filename).startswith(package):
            last = f" (at {code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name})"
        tb = tb.tb_next
    return last


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run kvmpv with ``argv`` (without the program name); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args: Optional[argparse.Namespace] = None
    try:
        # SIGINT/SIGTERM wait until the command is known: one that arrives
        # while the modules load is delivered right after, where the command's
        # on_interrupt() can still write its (bail-out) reports.
        try:
            with signals_held():
                parser = build_parser(_selected_command(argv))
                try:
                    parsed = parser.parse_args(argv)
                except _UsageExit as err:
                    print(err, file=sys.stderr)
                    return EXIT_USAGE
                if not getattr(parsed, "command", None):
                    parser.print_help(sys.stderr)
                    return EXIT_USAGE
                args = parsed
            # (a signal held above is raised here, as the block ends)
            # kvmpv speaks Linux uapi only: say so once, before any command runs.
            require_linux()
            code: int = args._run(args)
            return code
        except (KeyboardInterrupt, Interrupted) as exc:
            hook = getattr(args, "_on_interrupt", None) if args is not None else None
            if hook is not None:
                hook(args, exc)
            raise
    except KeyboardInterrupt:
        print("kvmpv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Interrupted as err:  # not a KvmpvError: see its docstring
        print(f"kvmpv: error: {err}", file=sys.stderr)
        return err.exit_code
    except KvmpvError as err:
        print(f"kvmpv: error: {err}", file=sys.stderr)
        return err.exit_code
    except MemoryError:
        print("kvmpv: error: out of memory", file=sys.stderr)
        return EXIT_ENV
    except Exception as err:  # a bug: one line and its own code, never "a check failed" (1)
        where = _where(err)
        print(f"kvmpv: internal error: {type(err).__name__}: {err}{where}", file=sys.stderr)
        return EXIT_INTERNAL


def _verbose(argv: Sequence[str]) -> bool:
    """``-v``/``--verbose`` before the subcommand (the global option)."""
    for arg in argv:
        if not arg.startswith("-"):
            return False
        if arg in ("-v", "--verbose"):
            return True
    return False


def _restart_for_pgste(argv: list[str]) -> None:
    """On s390x without PGSTE page tables: exec kvmpv again through ``kvmpv-pgste``.

    Done before anything else (no fd, thread or signal handler to lose), and
    only once: the launcher sets ``KVMPV_PGSTE=1`` and kvmpv sets
    ``KVMPV_PGSTE_TRIED`` before the exec, so neither a working nor a broken
    launcher can make a loop.  Without a launcher nothing happens here; the
    first VM creation then fails with both remedies (exit 3).
    """
    cmd = pgste.restart_argv(argv)
    if cmd is None:
        if _verbose(argv) and pgste.status().needed:
            print(f"kvmpv: PGSTE: {pgste.status().how}", file=sys.stderr)
        return
    if _verbose(argv):
        print(
            f"kvmpv: restarting through {cmd[0]}: s390 KVM needs PGSTE page tables",
            file=sys.stderr,
        )
    os.environ[pgste.TRIED_ENV] = "1"
    try:
        os.execv(cmd[0], cmd)
    except OSError as err:  # go on without: VM creation will say why, exit 3
        print(f"kvmpv: cannot exec {cmd[0]}: {err.strerror}", file=sys.stderr)


def entry_point() -> None:
    """Console-script entry: the only place that calls ``sys.exit``."""
    _restart_for_pgste(sys.argv[1:])
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:
        sys.exit(EXIT_FAIL)


__all__ = ["COMMANDS", "build_parser", "entry_point", "main"]
