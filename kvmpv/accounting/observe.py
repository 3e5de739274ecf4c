# SPDX-License-Identifier: GPL-2.0-only
"""When did a process finish exiting, and what CPU did a thread/child use?

Touches: pidfds (``pidfd_open``), ``wait4`` on our own children, the calling
thread's CPU clock and ``RUSAGE_THREAD``, and a proc connector socket
(raw ``NETLINK_CONNECTOR``, every wait bounded: see ``ProcConnector``) read
by one background thread that ``ExitWatcher.close()`` stops and joins.

Which clock tells what (do_exit() order, kernel/exit.c):

    taskstats_exit()      <- taskstats exit record (before the teardown!)
    exit_mm()             <- address space freed here (the teardown)
    exit_files()          <- last VM/vCPU fd released here
    cgroup_exit()         <- the task leaves its cgroup: everything is charged
    exit_notify()         <- pidfd becomes readable (do_notify_pidfd)
    proc_exit_connector() <- cn_proc EXIT event, timestamp_ns
    (wait4 rusage, collected after this, covers all of it)

So a pidfd wake-up and the connector's ``timestamp_ns`` both mark the end of
the teardown; ``timestamp_ns`` is ``ktime_get_ns()``, the clock of
``time.monotonic_ns()`` (CLOCK_MONOTONIC), so both are comparable with our
own readings.  The connector needs no privilege since Linux 6.6 (commit
bfdfdc2f3b70 "connector/cn_proc: Allow non-root users access"); before,
CAP_NET_ADMIN.
"""

from __future__ import annotations

import collections
import errno
import os
import resource
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..closing import Closing, signals_held
from . import netlink as nl
from .common import AccountingUnavailable, oserror_text

# --------------------------------------------------------------------------
# Thread CPU time


def thread_cpu_ns() -> int:
    """CPU time of the calling thread in ns (CLOCK_THREAD_CPUTIME_ID: precise
    scheduler runtime, user + system)."""
    return time.clock_gettime_ns(time.CLOCK_THREAD_CPUTIME_ID)


@dataclass(frozen=True)
class ThreadTimes:
    """The calling thread's CPU time: ``cpu_ns`` is precise (thread CPU
    clock), ``user_ns``/``system_ns`` come from RUSAGE_THREAD (tick split)."""

    cpu_ns: int
    user_ns: int
    system_ns: int

    def __sub__(self, other: ThreadTimes) -> ThreadTimes:
        return ThreadTimes(
            self.cpu_ns - other.cpu_ns,
            self.user_ns - other.user_ns,
            self.system_ns - other.system_ns,
        )

    def to_dict(self) -> dict[str, int]:
        return {"cpu_ns": self.cpu_ns, "user_ns": self.user_ns, "system_ns": self.system_ns}


def _tv_ns(seconds: float) -> int:
    # ru_utime/ru_stime are floats built from a timeval: round to the µs.
    return round(seconds * 1_000_000) * 1000


def thread_times() -> ThreadTimes:
    """CPU times of the calling thread (must be called *inside* the thread)."""
    ru = resource.getrusage(resource.RUSAGE_THREAD)
    return ThreadTimes(thread_cpu_ns(), _tv_ns(ru.ru_utime), _tv_ns(ru.ru_stime))


# --------------------------------------------------------------------------
# Children: wait4


@dataclass(frozen=True)
class ChildRusage:
    """What ``wait4`` reported for a reaped child (includes its teardown)."""

    pid: int
    status: int  # raw wait status
    exit_code: int  # os.waitstatus_to_exitcode: -N for death by signal N
    user_ns: int
    system_ns: int
    maxrss_kib: int
    reaped_ns: int  # time.monotonic_ns() right after wait4 returned
    #: The child's scheduler runtime (all threads, its teardown included),
    #: read from its process CPU clock while it was a zombie: the counter the
    #: cgroups charge.  None where the clock could not be read.
    runtime_ns: Optional[int] = None

    @property
    def cpu_ns(self) -> int:
        """wait4's utime+stime.  Equal to ``runtime_ns`` where the kernel
        derives the split from the runtime (cputime_adjust()), not on s390
        (CONFIG_VIRT_CPU_ACCOUNTING_NATIVE: see ``zombie_runtime_ns``)."""
        return self.user_ns + self.system_ns

    def to_dict(self) -> dict[str, int]:
        return {
            "pid": self.pid,
            "exit_code": self.exit_code,
            "user_ns": self.user_ns,
            "system_ns": self.system_ns,
            "maxrss_kib": self.maxrss_kib,
            "reaped_ns": self.reaped_ns,
        }


def _process_clock(pid: int) -> int:
    # The clockid clock_getcpuclockid(3) returns for another process:
    # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) in include/linux/posix-timers.h
    # (glibc computes the same); CPUCLOCK_SCHED (2) is the scheduler runtime.
    return ((~pid) << 3) | 2


def zombie_runtime_ns(pid: int, *, nohang: bool = False) -> Optional[int]:
    """Scheduler runtime of our child ``pid`` once it has exited, not reaped.

    Waits (``waitid(WNOWAIT)``: the child stays a zombie) and reads its
    process CPU clock: the sum_exec_runtime of all its threads
    (thread_group_cputime(), kernel/sched/cputime.c), the counter that
    update_curr() also charges to the cgroups (cgroup_account_cputime(),
    cpuacct_charge()).  exit_mm() ran before exit_notify(), so the teardown
    is in it.  That is like with like for a cgroup comparison, which wait4's
    utime+stime is not on s390: with CONFIG_VIRT_CPU_ACCOUNTING_NATIVE
    (arch/s390/kernel/vtime.c) utime/stime come from the CPU timer and
    thread_group_cputime_adjusted() returns them unscaled, so their sum
    differs from the runtime (by 1-25% measured in tox -e s390x-kernel).
    Elsewhere cputime_adjust() scales the split to the runtime and both agree.
    None if the child is still running (``nohang``), already reaped, or the
    clock cannot be read."""
    flags = os.WEXITED | os.WNOWAIT | (os.WNOHANG if nohang else 0)
    try:
        if os.waitid(os.P_PID, pid, flags) is None:
            return None
        return time.clock_gettime_ns(_process_clock(pid))
    except (ChildProcessError, OSError):
        return None


def reap(pid: int, *, nohang: bool = False) -> Optional[ChildRusage]:
    """``wait4(pid)`` with the child's rusage and its scheduler runtime
    (``zombie_runtime_ns``); None if ``nohang`` and still running."""
    runtime = zombie_runtime_ns(pid, nohang=nohang)
    while True:
        try:
            rpid, status, ru = os.wait4(pid, os.WNOHANG if nohang else 0)
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue
    if rpid == 0:
        return None
    now = time.monotonic_ns()
    return ChildRusage(
        pid=rpid,
        status=status,
        exit_code=os.waitstatus_to_exitcode(status),
        user_ns=_tv_ns(ru.ru_utime),
        system_ns=_tv_ns(ru.ru_stime),
        maxrss_kib=ru.ru_maxrss,
        reaped_ns=now,
        runtime_ns=runtime,
    )


# --------------------------------------------------------------------------
# pidfd


def pidfd_open(pid: int) -> int:
    """A pidfd for ``pid`` (Linux 5.3+); AccountingUnavailable without it."""
    try:
        return os.pidfd_open(pid)
    except AttributeError as err:  # pragma: no cover - Python < 3.9
        raise AccountingUnavailable("os.pidfd_open missing (Python < 3.9)") from err
    except OSError as err:
        if err.errno == errno.ENOSYS:
            raise AccountingUnavailable("pidfd_open: ENOSYS (kernel < 5.3)") from err
        raise


def wait_pidfd(pidfd: int, timeout_s: Optional[float] = None) -> Optional[int]:
    """Wait until the process exits; ``time.monotonic_ns()`` at wake-up, or
    None on timeout.  A pidfd turns readable in ``exit_notify()``, after the
    address space is gone (for a process with a CLONE_VM sharer, after the
    process itself is gone -- the sharer keeps the mm)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        if poller.poll(left_ms):
            return time.monotonic_ns()
        if deadline is not None and time.monotonic() >= deadline:
            return None


# --------------------------------------------------------------------------
# Proc connector

_CN_IDX_PROC = 1
_CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN = 1
_PROC_CN_MCAST_IGNORE = 2
_PROC_EVENT_NONE = 0
_PROC_EVENT_EXIT = 0x80000000
# nlmsghdr (16) + struct cn_msg {idx, val, seq, ack, u16 len, u16 flags} (20)
# + struct proc_event {what, cpu, u64 timestamp_ns (packed), event_data}:
# include/uapi/linux/connector.h and cn_proc.h.
_CN_MSG = struct.Struct("=IIIIHH")
_EV_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns at offset 36
_EV_EXIT = struct.Struct("=IIII")  # process_pid, process_tgid, exit_code, exit_signal
_EV_OFF = 16 + _CN_MSG.size
_DATA_OFF = _EV_OFF + _EV_HEAD.size


@dataclass(frozen=True)
class ProcExit:
    """A cn_proc EXIT event (one per exiting thread)."""

    pid: int  # the thread
    tgid: int
    exit_code: int
    exit_signal: int
    timestamp_ns: int  # CLOCK_MONOTONIC, as time.monotonic_ns()


def parse_proc_events(data: bytes) -> list[tuple[int, int, bytes, int]]:
    """(what, cn_msg ack, raw event_data, timestamp_ns) of each cn_proc
    message in a datagram; anything too short is skipped."""
    out = []
    for off, length, _typ, _flags, _seq, _pid in nl.messages(data):
        if length < _DATA_OFF or off + _DATA_OFF > len(data):
            continue
        idx, val, _cseq, ack, clen, _cflags = _CN_MSG.unpack_from(data, off + 16)
        if (idx, val) != (_CN_IDX_PROC, _CN_VAL_PROC):
            continue
        what, _cpu, ts = _EV_HEAD.unpack_from(data, off + _EV_OFF)
        end = min(off + length, off + _EV_OFF + clen)
        out.append((what, ack, bytes(data[off + _DATA_OFF : end]), ts))
    return out


class ProcConnector(Closing):
    """Listens to cn_proc EXIT events in a background thread.

    Only events of ``watch``ed thread groups are kept, plus the last
    ``recent`` exits of any task so that a process that exits before it is
    watched is not missed.

    Raw ``NETLINK_CONNECTOR`` socket (``kvmpv.accounting.netlink``), no
    pyroute2: its ``ProcEventSocket.control()`` waits for the LISTEN/IGNORE
    ack without a deadline and hung the test suite for >10 minutes.  That
    ack is *multicast* to the whole group, so a flood of other tasks' events
    can overrun our queue and drop it, and ``cn_proc_ack()`` sends none at
    all when no listener is left (an IGNORE by the last listener, a refused
    LISTEN).  The counter behind that is global and leaks upwards whenever a
    listening socket is closed without IGNORE (``cn_release()`` does not
    decrement it), which is why the hang depends on the machine's history.
    Here the LISTEN is resent after an overrun and the wait ends after
    ``timeout_s`` with AccountingUnavailable; the IGNORE at close is not
    waited for.
    """

    def __init__(self, recent: int = 4096, timeout_s: float = nl.NETLINK_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._stop_r = self._stop_w = -1
        self._sock = nl.open_socket(
            nl.NETLINK_CONNECTOR, "proc connector", groups=1 << (_CN_IDX_PROC - 1)
        )
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._watched: set[int] = set()
        self._exits: dict[int, ProcExit] = {}
        self._recent: collections.deque[ProcExit] = collections.deque(maxlen=recent)
        self.error: Optional[str] = None
        try:
            self._subscribe()
        except BaseException:
            self._sock.close()
            raise
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="kvmpv-cn_proc", daemon=True)
        with signals_held():  # inherited: SIGINT/SIGTERM go to the main thread
            self._thread.start()

    def _control(self, op: int, ack: int) -> None:
        # nlmsghdr (type NLMSG_DONE) + struct cn_msg + enum proc_cn_mcast_op
        body = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, ack, 4, 0) + struct.pack("=I", op)
        self._sock.send(nl.NLMSG_HDR.pack(16 + len(body), nl.NLMSG_DONE, 0, 0, 0) + body)

    def _subscribe(self) -> None:
        start = time.monotonic()
        deadline = start + self.timeout_s
        sends = 0
        acks: set[int] = set()

        def listen() -> None:
            nonlocal sends
            ack = int.from_bytes(os.urandom(3), "little") + 1
            try:
                self._control(_PROC_CN_MCAST_LISTEN, ack)
            except OSError as err:
                raise AccountingUnavailable(f"proc connector: {oserror_text(err)}") from err
            acks.add(ack + 1)  # cn_proc_ack() answers with ack + 1
            sends += 1

        listen()
        resend = False
        last = time.monotonic()
        while True:
            # As nl.transact(): after an overrun LISTEN again once the queue
            # drained (or every RESEND_EVERY_S while a flood keeps it full).
            now = time.monotonic()
            if resend and now - last >= nl.RESEND_EVERY_S:
                resend = False
                last = now
                listen()
            until = min(deadline, now + nl.RESEND_IDLE_S) if resend else deadline
            data = nl.recv(self._sock, until, "proc connector")
            if data is None and resend and time.monotonic() < deadline:
                resend = False
                last = time.monotonic()
                listen()
                continue
            if data is None:
                raise AccountingUnavailable(
                    f"proc connector: LISTEN timed out after {time.monotonic() - start:.1f} s "
                    f"({sends} request(s); the multicast ack was lost, or never sent "
                    "because the request was refused)"
                )
            if data == b"":
                # Overrun: our ack may be among the dropped messages.  LISTEN
                # again (a repeated LISTEN does not count twice, cn_proc.c).
                resend = sends < 2 * nl.MAX_SENDS
                continue
            for what, ack, raw, _ts in parse_proc_events(data):
                if what == _PROC_EVENT_NONE and ack in acks and len(raw) >= 4:
                    # proc_event.event_data.ack.err: a positive errno
                    (ack_err,) = struct.unpack_from("=I", raw, 0)
                    if ack_err in (errno.EPERM, errno.EACCES):
                        raise AccountingUnavailable(
                            "proc connector: EPERM (non-root listeners need Linux 6.6+)"
                        )
                    if ack_err:
                        raise AccountingUnavailable(
                            f"proc connector: LISTEN failed, errno {ack_err}"
                        )
                    self._handle(data)
                    return

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            # The stop pipe ends this wait; the timeout only bounds it anyway.
            ready = dict(poller.poll(1000))
            if self._stop_r in ready:
                return
            if not ready:
                continue
            try:
                data = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    # Overrun: events were lost; say so rather than guess.
                    with self._lock:
                        self.error = "proc connector overrun (ENOBUFS), events lost"
                    continue
                with self._lock:
                    self.error = f"proc connector: {oserror_text(err)}"
                return
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        for what, _ack, raw, ts in parse_proc_events(data):
            if what != _PROC_EVENT_EXIT or len(raw) < _EV_EXIT.size:
                continue
            pid, tgid, code, sig = _EV_EXIT.unpack_from(raw, 0)
            rec = ProcExit(pid, tgid, code, sig, ts)
            with self._cond:
                self._recent.append(rec)
                if rec.tgid in self._watched:
                    # The last thread of the group to exit wins.
                    self._exits[rec.tgid] = rec
                    self._cond.notify_all()

    def watch(self, tgid: int) -> None:
        with self._lock:
            self._watched.add(tgid)
            for rec in self._recent:
                if rec.tgid == tgid:
                    self._exits[tgid] = rec

    def exit_of(self, tgid: int, timeout_s: float = 1.0) -> Optional[ProcExit]:
        """The EXIT event of thread group ``tgid`` (watch it first)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while tgid not in self._exits:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return None
                self._cond.wait(min(left, 0.5))
            return self._exits[tgid]

    def close(self) -> None:
        if self._stop_w < 0:
            return
        os.write(self._stop_w, b"x")
        # The reader polls the stop pipe; the timeout only guards the join.
        self._thread.join(5.0)
        os.close(self._stop_w)
        os.close(self._stop_r)
        self._stop_w = self._stop_r = -1
        try:
            # No ack awaited (none comes when we were the last listener).
            # IGNORE keeps the kernel's listener count, which gates event
            # generation for everyone, right: closing alone does not.
            self._control(_PROC_CN_MCAST_IGNORE, 0)
        except OSError:
            pass
        self._sock.close()


def proc_connector_status() -> tuple[bool, str]:
    """(usable, reason): really subscribe and unsubscribe once."""
    try:
        with ProcConnector():
            pass
        return True, "cn_proc EXIT events with timestamp_ns (CLOCK_MONOTONIC)"
    except AccountingUnavailable as err:
        return False, err.reason


# --------------------------------------------------------------------------
# ExitWatcher


@dataclass(frozen=True)
class ExitRecord:
    """When a watched process finished exiting, seen by each source we had.

    ``pidfd_ns``: our monotonic clock when its pidfd turned readable;
    ``connector_ns``: the kernel's EXIT event timestamp (None without the
    connector, with the reason in ``connector_reason``); ``rusage``: wait4
    data if we reaped it (our child only).
    """

    pid: int
    pidfd_ns: int
    connector_ns: Optional[int]
    connector_reason: str
    rusage: Optional[ChildRusage]

    @property
    def exit_ns(self) -> int:
        """Best exit time: the kernel's timestamp if we have it."""
        return self.connector_ns if self.connector_ns is not None else self.pidfd_ns

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "pidfd_ns": self.pidfd_ns,
            "connector_ns": self.connector_ns,
            "connector_reason": self.connector_reason,
            "rusage": self.rusage.to_dict() if self.rusage else None,
        }


class ExitWatcher(Closing):
    """Exit times of processes from pidfds and, where usable, the proc connector.

    ``watch(pid)`` right after starting the process (a pidfd must be opened
    while the pid is still ours: for a child that is until it is reaped, so
    no pid-reuse race), then ``wait(pid)``.  Context manager; ``close()``
    stops the connector thread and closes every pidfd.
    """

    def __init__(self, use_connector: bool = True) -> None:
        self._pidfds: dict[int, int] = {}
        self.connector: Optional[ProcConnector] = None
        self.connector_reason = "not requested"
        if use_connector:
            try:
                self.connector = ProcConnector()
                self.connector_reason = "ok"
            except AccountingUnavailable as err:
                self.connector_reason = err.reason

    def watch(self, pid: int) -> None:
        if pid in self._pidfds:
            return
        with signals_held():  # the pidfd reaches self._pidfds (close() closes those)
            self._pidfds[pid] = pidfd_open(pid)
        if self.connector is not None:
            self.connector.watch(pid)

    def wait(
        self, pid: int, timeout_s: Optional[float] = None, *, reap_child: bool = False
    ) -> ExitRecord:
        """Wait for ``pid`` to exit; TimeoutError after ``timeout_s``.

        ``reap_child`` also collects the wait4 rusage (our child only).
        """
        if pid not in self._pidfds:
            self.watch(pid)
        when = wait_pidfd(self._pidfds[pid], timeout_s)
        if when is None:
            raise TimeoutError(f"process {pid} did not exit within {timeout_s} s")
        ru = reap(pid) if reap_child else None
        conn_ns: Optional[int] = None
        reason = self.connector_reason
        if self.connector is not None:
            # The EXIT event follows exit_notify() closely; allow it a moment.
            ev = self.connector.exit_of(pid, timeout_s=1.0)
            if ev is not None:
                conn_ns = ev.timestamp_ns
            else:
                reason = self.connector.error or "no EXIT event seen for this pid"
        os.close(self._pidfds.pop(pid))
        return ExitRecord(pid, when, conn_ns, reason, ru)

    def close(self) -> None:
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        if self.connector is not None:
            self.connector.close()
            self.connector = None


__all__ = [
    "ChildRusage",
    "ExitRecord",
    "ExitWatcher",
    "ProcConnector",
    "ProcExit",
    "ThreadTimes",
    "pidfd_open",
    "proc_connector_status",
    "reap",
    "thread_cpu_ns",
    "thread_times",
    "wait_pidfd",
]
