# SPDX-License-Identifier: GPL-2.0-only
"""The child processes of ``kvmpv shutdown``: the worker that dies and the reaper.

Run only by ``kvmpv.scenarios.shutdown`` as a fresh interpreter
(``python -m kvmpv.scenarios._worker worker|reaper ...``), never imported by
other code.  Touches: anonymous memory (``GuestMemory``), optionally
``/dev/kvm`` (``--vm``), the async-teardown cleaner (``kvmpv.teardown``),
``pidfd_send_signal`` and ``process_mrelease`` (reaper), its own stdin and
stdout.

Why a fresh interpreter and not ``os.fork()`` of kvmpv: a fork would share
kvmpv's heap copy-on-write and inherit its threads' state, so its exit would
tear down a copy of whatever kvmpv happens to hold (pytest, pyroute2 buffers)
and the measurement would depend on the caller.  A fresh interpreter has the
same small footprint every time (~10 MB), which is all the noise added to the
N bytes being measured.

Protocol (one JSON object per line on stdout, one word per line on stdin), so
that kvmpv can move the process into its cgroup between "ready" and "go", and
take its counter baselines between "populated" and "exit":

* worker: ``ready`` -> (go) -> arm the cleaner if asked, populate ->
  ``populated`` -> (exit) -> ``exit`` with the CLOCK_MONOTONIC time taken
  just before ``_exit`` -> ``_exit(0)``.
* reaper: opens a pidfd on the worker, ``ready`` -> (go) -> SIGKILL through
  the pidfd, ``process_mrelease`` -> ``reaped`` -> (exit or EOF) -> exit.

EOF on stdin (kvmpv died or gave up) always means "exit now": a worker never
outlives its controller, and PR_SET_PDEATHSIG covers the time spent
populating, when stdin is not being read.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import signal
import sys
import time
import traceback
from typing import Any, NoReturn

PR_SET_PDEATHSIG = 1
# Same numbers on every architecture (the unified syscall table since 5.1).
SYS_PIDFD_SEND_SIGNAL = 424
SYS_PROCESS_MRELEASE = 448
#: lmkd's reaper priority (ANDROID_PRIORITY_HIGHEST)
REAPER_NICE = -20


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"ev": event, **fields}) + "\n"
    os.write(1, line.encode())


def wait_command() -> str:
    """Next word on stdin; "" on EOF."""
    line = sys.stdin.buffer.readline()
    return line.decode().strip()


def process_cpu_ns() -> int:
    """CPU time of this process so far (all threads): its scheduler runtime
    (CLOCK_PROCESS_CPUTIME_ID, thread_group_cputime()).

    The parent subtracts it from the same clock read on the exited worker
    (accounting.zombie_runtime_ns): the counter the cgroups charge.  Not
    getrusage: on s390 (CONFIG_VIRT_CPU_ACCOUNTING_NATIVE) its utime+stime come
    from the CPU timer and differ from the runtime the cgroups count.
    """
    return time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID)


def die_with_parent(ppid: int) -> None:
    from ..syscalls import libc

    libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # PDEATHSIG fires only for a parent that dies after the prctl; one that
    # died before it shows up as a changed getppid().
    if os.getppid() != ppid:
        os._exit(1)


def run_worker(args: argparse.Namespace) -> NoReturn:
    from ..memory import GuestMemory, anon_huge_bytes

    # Before arming: the cleaner (and the parallel mode's helpers) inherit
    # the nice value of the thread that clones them, so the teardown runs at
    # the same priority whichever strategy does it.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    emit("ready", pid=os.getpid(), nice=os.getpriority(os.PRIO_PROCESS, 0))
    if wait_command() != "go":
        os._exit(1)
    cleaner_pid = 0
    parallel = None
    if args.arm != "none":
        from .. import teardown

        status = teardown.arm(parallel=args.parallel if args.arm == "parallel" else None)
        cleaner_pid = int(status.pid or 0)
        parallel = status.parallel
    t0 = time.monotonic()
    memory = GuestMemory(args.size, thp=args.thp)
    keep: list[Any] = [memory]
    if args.vm:
        from ..kvm import Kvm

        kvm = Kvm()
        vm = kvm.vm_create()
        keep += [kvm, vm]
        if vm.arch == "s390x":
            from ..s390guest import vm_touch_memory as s390_touch

            s390_touch(vm, memory)  # the s390x payload over the whole memory
        else:
            from ..x86guest import vm_touch_memory

            vm_touch_memory(vm, memory)
    else:
        memory.populate()
    emit(
        "populated",
        cleaner_pid=cleaner_pid,
        parallel=parallel,
        populate_s=time.monotonic() - t0,
        anon_huge_bytes=anon_huge_bytes(),
        cpu_ns=process_cpu_ns(),
    )
    wait_command()  # "exit", or EOF: exit either way
    cpu_ns = process_cpu_ns()
    t_exit = time.monotonic_ns()
    emit("exit", t_ns=t_exit, cpu_ns=cpu_ns)
    # _exit: no interpreter finalization, no atexit (which would disarm the
    # cleaner or free objects one by one).  The memory (and the VM fds) are
    # released by the kernel here, or by the cleaner.
    os._exit(0)


def run_reaper(args: argparse.Namespace) -> NoReturn:
    from ..errors import errno_name
    from ..syscalls import libc

    pidfd = os.pidfd_open(args.pid)
    # Resolve the ctypes function and fault in its code paths now: the first
    # call of a CDLL attribute runs dlsym and builds the call object, which
    # costs about a millisecond -- enough for the victim, once SIGKILLed, to
    # pass exit_mm, after which process_mrelease finds no mm (ESRCH) and the
    # reaper does nothing.  process_mrelease(-1, 0) is also lmkd's probe for
    # support (EBADF: present, ENOSYS: absent).
    syscall = libc().syscall
    if syscall(SYS_PROCESS_MRELEASE, -1, 0) < 0 and ctypes.get_errno() == errno.ENOSYS:
        emit(
            "error",
            type="HostError",
            message="process_mrelease: ENOSYS (Linux < 5.15)",
            exit_code=3,
        )
        os._exit(1)
    syscall(SYS_PIDFD_SEND_SIGNAL, -1, 0, None, 0)
    # lmkd runs its reaper threads at the highest priority: the victim, woken
    # by SIGKILL on our CPU, must not preempt us between the kill and the
    # process_mrelease call (it would then detach its mm first, ESRCH).
    # Without CAP_SYS_NICE this fails; the reaper then runs at its priority
    # and says so.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, REAPER_NICE)
    emit("ready", pid=os.getpid(), nice=os.getpriority(os.PRIO_PROCESS, 0))
    if wait_command() != "go":
        os._exit(1)
    ru0 = process_cpu_ns()
    t_kill = time.monotonic_ns()
    # What lmkd's reaper threads do: kill through the pidfd (no pid reuse
    # race), then reap the address space in our own context while the victim
    # is on its way out of do_exit.  Both raw syscalls back to back: the
    # victim, woken on the other CPU, detaches its mm in exit_mm() within
    # tens of microseconds, and process_mrelease only reaps while it has not.
    kill_ret = int(syscall(SYS_PIDFD_SEND_SIGNAL, pidfd, signal.SIGKILL, None, 0))
    kill_err = ctypes.get_errno() if kill_ret < 0 else 0
    ret = int(syscall(SYS_PROCESS_MRELEASE, pidfd, 0))
    err = ctypes.get_errno() if ret < 0 else 0
    t_done = time.monotonic_ns()
    cpu_ns = process_cpu_ns() - ru0
    emit(
        "reaped",
        t_kill_ns=t_kill,
        t_done_ns=t_done,
        kill_errno=kill_err,
        ret=ret,
        errno=err,
        errno_name=errno_name(err) if err else "",
        cpu_ns=cpu_ns,
    )
    wait_command()
    os._exit(0)


def main(argv: list[str]) -> NoReturn:
    parser = argparse.ArgumentParser(prog="kvmpv.scenarios._worker")
    parser.add_argument("role", choices=("worker", "reaper"))
    parser.add_argument("--ppid", type=int, required=True)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--thp", action="store_true")
    parser.add_argument("--vm", action="store_true")
    parser.add_argument("--arm", choices=("none", "cleaner", "parallel"), default="none")
    parser.add_argument("--parallel", type=int, default=None)
    parser.add_argument("--pid", type=int, default=0)
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args(argv)
    die_with_parent(args.ppid)
    # kvmpv forks us with SIGINT/SIGTERM blocked (Processes.spawn holds them
    # until we are on its list) and exec keeps the mask: take them back, so
    # that a kill(1) of a worker acts as on any process.
    from ..closing import MAIN_THREAD_SIGNALS

    signal.pthread_sigmask(signal.SIG_UNBLOCK, MAIN_THREAD_SIGNALS)
    try:
        if args.role == "worker":
            run_worker(args)
        run_reaper(args)
    except BaseException as err:  # report, then die: kvmpv turns it into one line
        emit(
            "error",
            type=type(err).__name__,
            message=str(err) or type(err).__name__,
            exit_code=getattr(err, "exit_code", 1),
            trace=traceback.format_exc(limit=4),
        )
        os._exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
