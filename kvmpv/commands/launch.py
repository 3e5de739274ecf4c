# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv launch: run a dynamically linked program with the async-teardown cleaner armed.

    kvmpv launch [--parallel [N]] [--children] [--wait] [-v] -- CMD [ARGS...]

CMD runs with libkvmpv-cleaner.so preloaded: a clone(CLONE_VM) cleaner named
cleanup/<pid> holds its address space, so when CMD exits its waiters see the
exit at once and the cleaner frees the memory afterwards, in the same cgroup.
CMD's own children are not armed unless --children is given.

By default kvmpv execs CMD in place, as nice or taskset do: the pid that was
started is CMD's, so a supervisor (libvirt tracks QEMU by the pid it started)
sees CMD's own exit, status and signals, and no Python process stays between
them.  --wait keeps kvmpv as CMD's parent instead: it waits, passes signals on
and (with -v) reports the cleaner itself.  File descriptors kvmpv inherited
reach CMD in both modes.  If the preload cannot arm the cleaner in CMD (a
seccomp filter or a process limit refusing clone), CMD still runs and one line
on stderr says why.

Exit status: CMD's own (exec, the default).  With --wait: CMD's, or 128+N if
a signal N killed it.  Before CMD runs: 127 if CMD is not found, 126 if it
cannot be executed, 3 if it cannot be preloaded (statically linked,
set-user-ID, another ELF class) or the native cleaner is not built.  With
--wait, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 are passed on to CMD; SIGINT and
SIGQUIT are ignored while CMD runs (the terminal sends them to CMD itself).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError
from ..scenarios.launch import LaunchRequest, launch, split_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--parallel",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="N",
        help="release the memory from N tasks in parallel (no N: the CPUs of the cpuset, "
        "at most 8); default: the cleaner's plain exit frees it",
    )
    parser.add_argument(
        "--children",
        action="store_true",
        help="also arm CMD's children (exec'd and forked); default: only CMD itself",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="stay CMD's parent: wait for it, pass signals on, exit with its status "
        "(default: exec CMD in place, so the started pid is CMD's)",
    )
    # The former opt-in to what is now the default; still accepted.
    parser.add_argument("--exec", dest="exec_", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="say on stderr when the cleaner is armed"
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _say(line: str) -> None:
    fields = line.split()
    if fields and fields[0] == "armed" and len(fields) >= 4:
        print(
            f"kvmpv: cleaner cleanup/{fields[1]} armed (pid {fields[2]}, parallel {fields[3]})",
            file=sys.stderr,
            flush=True,
        )


def _owns_process() -> bool:
    """True when this interpreter is the ``kvmpv`` command itself (console
    script or ``python -m kvmpv``), not a program calling ``cli.main()``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name in ("kvmpv", "kvmpv.__main__"):
        return True
    return os.path.basename(sys.argv[0] if sys.argv else "") == "kvmpv"


def run(args: argparse.Namespace) -> int:
    if args.wait and args.exec_:
        raise UsageError("--wait and --exec exclude each other (exec in place is the default)")
    req = LaunchRequest(
        argv=split_command(args.cmd),
        parallel=args.parallel,
        children=args.children,
        exec_=not args.wait,
        verbose=args.verbose,
    )
    result = launch(req, on_start=_say if args.verbose else None)
    for warning in result.warnings:
        print(f"kvmpv: warning: {warning}", file=sys.stderr)
    if _owns_process():
        # Whoever waits for us must see CMD's exit, not the interpreter's
        # teardown of every kvmpv module (measured: 90-160 ms here, more than
        # the cleaner saves on a few GiB).  Nothing is left to clean up: CMD
        # has exited, signal handlers are restored, the report pipe is closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.exit_status)
    return result.exit_status
