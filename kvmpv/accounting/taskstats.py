# SPDX-License-Identifier: GPL-2.0-only
"""Taskstats (generic netlink "TASKSTATS") for threads and exiting tasks.

Touches: generic netlink sockets only, raw ``AF_NETLINK`` through
``kvmpv.accounting.netlink``: the family lookup (CTRL_CMD_GETFAMILY), GET
requests and exit-record registration, every reply awaited with a deadline.
This used pyroute2 ``TaskStats`` before; its ``nlm_request`` waits for a
reply without any deadline and was seen hanging in ``epoll_wait`` (a second
``capabilities()`` in one process, once a whole test-suite run); reproduced
by letting the socket's receive queue overrun before a GET: the dropped
reply leaves pyroute2 waiting forever.  Here a lost reply is resent after an
overrun and otherwise becomes ``AccountingUnavailable("... timed out ...")``
after ``timeout_s`` (default 2 s).  Root (CAP_NET_ADMIN) is needed: TASKSTATS_CMD_GET
and the cpumask registration are ``GENL_ADMIN_PERM`` in kernel/taskstats.c;
as non-root both fail with EPERM and we raise ``AccountingUnavailable``.

Why our own decoder: struct taskstats is sent in host byte order and its
layout depends on the version.  pyroute2 0.9.7 (for reference) knows v15 as a special case
and reads every other version only up to ``cpu_scaled_run_real_total``:
this kernel's v16 record (560 bytes) is cut short there, not misread -- the
40 fields both decode agree (tests/test_accounting_pyroute2.py).  The v16
layout is ``include/uapi/linux/taskstats.h`` after "taskstats:
fix struct taskstats breaks backward compatibility since version 15" (Wang
Yaxin, May 2025): the v15 ``*_delay_max``/``*_delay_min`` pairs that v15 had
put in the middle moved to the end, after ``irq_delay_total``.  v17 appends
eight ``struct timespec64 *_delay_max_ts`` ("delay max timestamp record",
2026).  We decode every field that fits in the payload the kernel sent, by
version, and keep the raw bytes of anything newer.

The trap this module exists to show: ``do_exit()`` calls
``taskstats_exit()`` *before* ``exit_mm()`` and ``exit_files()``, so an exit
record's times exclude the address-space teardown and the release of the
last VM fd, which ``wait4`` rusage and the cgroup counters (``cgroup_exit()``
runs later) include.  Never measure a teardown with an exit record.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..closing import Closing
from . import netlink as nl
from .common import AccountingUnavailable, oserror_text

TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_NEW = 2
TASKSTATS_TYPE_PID = 1
TASKSTATS_TYPE_TGID = 2
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
TASKSTATS_TYPE_AGGR_TGID = 5
TASKSTATS_CMD_ATTR_PID = 1
TASKSTATS_CMD_ATTR_TGID = 2
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK = 4


# --------------------------------------------------------------------------
# struct taskstats layouts (native byte order; explicit padding reproduces
# the __attribute__((aligned(8))) of the uapi header).

_F = list[tuple[str, str]]

_HEAD: _F = [
    ("version", "H"), ("", "2x"), ("ac_exitcode", "I"), ("ac_flag", "B"), ("ac_nice", "B"),
    ("", "6x"),
]  # fmt: skip


def _delays(names: list[str], with_max_min: bool) -> _F:
    out: _F = []
    for n in names:
        out += [(f"{n}_count", "Q"), (f"{n}_delay_total", "Q")]
        if with_max_min:
            out += [(f"{n}_delay_max", "Q"), (f"{n}_delay_min", "Q")]
    return out


def _middle() -> _F:
    return [
        ("cpu_run_real_total", "Q"), ("cpu_run_virtual_total", "Q"),
        ("ac_comm", "32s"), ("ac_sched", "B"), ("", "3x"), ("", "4x"),
        ("ac_uid", "I"), ("ac_gid", "I"), ("ac_pid", "I"), ("ac_ppid", "I"), ("ac_btime", "I"),
        ("", "4x"),
    ] + [(n, "Q") for n in (
        "ac_etime", "ac_utime", "ac_stime", "ac_minflt", "ac_majflt", "coremem", "virtmem",
        "hiwater_rss", "hiwater_vm", "read_char", "write_char", "read_syscalls",
        "write_syscalls", "read_bytes", "write_bytes", "cancelled_write_bytes", "nvcsw",
        "nivcsw", "ac_utimescaled", "ac_stimescaled", "cpu_scaled_run_real_total",
    )]  # fmt: skip


def _tail(mm: bool) -> _F:
    return [
        *_delays(["freepages", "thrashing"], mm),
        ("ac_btime64", "Q"),
        *_delays(["compact"], mm),
        # v12: __u32 ac_tgid then a naturally aligned __u64: 4 bytes of padding
        ("ac_tgid", "I"), ("", "4x"), ("ac_tgetime", "Q"),
        ("ac_exe_dev", "Q"), ("ac_exe_inode", "Q"),
        *_delays(["wpcopy", "irq"], mm),
    ]  # fmt: skip


_ALL = ["cpu", "blkio", "swapin", "freepages", "thrashing", "compact", "wpcopy", "irq"]

#: v1..v14 and v16+: the classic layout; v16 appends the max/min pairs.
LAYOUT_CLASSIC: _F = _HEAD + _delays(["cpu", "blkio", "swapin"], False) + _middle() + _tail(False)
LAYOUT_V16: _F = LAYOUT_CLASSIC + [(f"{n}_delay_{w}", "Q") for n in _ALL for w in ("max", "min")]
#: v15 (broken ABI): max/min right after each count/total pair.
LAYOUT_V15: _F = _HEAD + _delays(["cpu", "blkio", "swapin"], True) + _middle() + _tail(True)
#: v17 appends struct timespec64 {s64 tv_sec; long tv_nsec;} per delay kind.
_LONG = struct.calcsize("@l")
LAYOUT_V17: _F = LAYOUT_V16 + [
    (f"{n}_delay_max_ts", "q" + ("q" if _LONG == 8 else "i4x")) for n in _ALL
]


def _compile(layout: _F) -> list[tuple[str, str, int, int]]:
    """(name, format, offset, size) of every named field."""
    out = []
    fmt = "="
    for name, f in layout:
        off = struct.calcsize(fmt)
        fmt += f
        if name:
            out.append((name, "=" + f, off, struct.calcsize("=" + f)))
    return out


_COMPILED = {
    "classic": _compile(LAYOUT_CLASSIC),
    "v15": _compile(LAYOUT_V15),
    "v16": _compile(LAYOUT_V16),
    "v17": _compile(LAYOUT_V17),
}
SIZE_V16 = struct.calcsize("=" + "".join(f for _, f in LAYOUT_V16))
SIZE_V17 = struct.calcsize("=" + "".join(f for _, f in LAYOUT_V17))


def decode_taskstats(payload: bytes) -> dict[str, Any]:
    """Every field of a ``struct taskstats`` payload that it contains.

    The version picks the layout; fields beyond the payload's length (an
    older kernel) are absent; bytes beyond what we know (a newer kernel) are
    returned as ``_unknown_tail`` so that nothing is silently invented.
    """
    if len(payload) < 2:
        raise ValueError("taskstats payload too short")
    (version,) = struct.unpack_from("=H", payload, 0)
    if version == 15:
        fields = _COMPILED["v15"]
    elif version >= 17:
        fields = _COMPILED["v17"]
    elif version == 16:
        fields = _COMPILED["v16"]
    else:
        fields = _COMPILED["classic"]
    out: dict[str, Any] = {}
    end = 0
    for name, fmt, off, size in fields:
        if off + size > len(payload):
            break
        vals = struct.unpack_from(fmt, payload, off)
        if name == "ac_comm":
            out[name] = vals[0].split(b"\0", 1)[0].decode("utf-8", "replace")
        elif name.endswith("_ts"):
            out[name] = vals[0] * 1_000_000_000 + vals[1]  # ns since the epoch
        else:
            out[name] = vals[0]
        end = off + size
    if len(payload) > end and version > 17:
        out["_unknown_tail"] = bytes(payload[end:])
    return out


@dataclass(frozen=True)
class TaskStatsRecord:
    """One taskstats record (a thread's, or a thread group's sum).

    Times in ns.  ``utime_ns``/``stime_ns``: ac_utime/ac_stime (µs, tick
    split).  ``run_real_ns``: cpu_run_real_total, which delayacct_add_tsk()
    fills from the *tick-accounted* utime+stime (task_cputime(); measured
    here: 112.0 ms = 28 ticks, and 160.0 ms under steal time, for threads
    whose CPU clock read 120.1 ms).
    ``run_virtual_ns``: cpu_run_virtual_total = se.sum_exec_runtime, the
    precise scheduler runtime (same as the thread CPU clock): use it, via
    ``runtime_ns``, for comparisons.  ``etime_ns``: elapsed time since the
    task started (ac_etime, µs).  For an *exit* record all of these stop
    before exit_mm(): see the module docstring.
    """

    kind: str  # "pid" (one thread) | "tgid" (a thread group)
    id: int
    version: int
    comm: str
    utime_ns: int
    stime_ns: int
    run_real_ns: int
    run_virtual_ns: int
    etime_ns: int
    exitcode: int
    fields: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def runtime_ns(self) -> int:
        """Precise CPU runtime (cpu_run_virtual_total)."""
        return self.run_virtual_ns

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "version": self.version,
            "comm": self.comm,
            "utime_ns": self.utime_ns,
            "stime_ns": self.stime_ns,
            "run_real_ns": self.run_real_ns,
            "run_virtual_ns": self.run_virtual_ns,
            "etime_ns": self.etime_ns,
            "exitcode": self.exitcode,
        }


def _record(kind: str, ident: int, f: dict[str, Any]) -> TaskStatsRecord:
    return TaskStatsRecord(
        kind=kind,
        id=ident,
        version=int(f.get("version", 0)),
        comm=str(f.get("ac_comm", "")),
        utime_ns=int(f.get("ac_utime", 0)) * 1000,
        stime_ns=int(f.get("ac_stime", 0)) * 1000,
        run_real_ns=int(f.get("cpu_run_real_total", 0)),
        run_virtual_ns=int(f.get("cpu_run_virtual_total", 0)),
        etime_ns=int(f.get("ac_etime", 0)) * 1000,
        exitcode=int(f.get("ac_exitcode", 0)),
        fields=f,
    )


# --------------------------------------------------------------------------
# Raw netlink parsing (attributes are TLVs aligned to 4 bytes)


def parse_taskstats_message(buf: bytes, off: int = 0) -> list[TaskStatsRecord]:
    """Records in one generic netlink message starting at ``off``
    (nlmsghdr 16 + genlmsghdr 4 + AGGR_PID/AGGR_TGID nests)."""
    (length,) = struct.unpack_from("=I", buf, off)
    out = []
    for typ, poff, plen in nl.attrs(buf, off + 20, off + length):
        if typ not in (TASKSTATS_TYPE_AGGR_PID, TASKSTATS_TYPE_AGGR_TGID):
            continue
        ident = 0
        stats: Optional[dict[str, Any]] = None
        for t2, o2, l2 in nl.attrs(buf, poff, poff + plen):
            if t2 in (TASKSTATS_TYPE_PID, TASKSTATS_TYPE_TGID):
                (ident,) = struct.unpack_from("=I", buf, o2)
            elif t2 == TASKSTATS_TYPE_STATS:
                stats = decode_taskstats(bytes(buf[o2 : o2 + l2]))
        if stats is not None:
            kind = "pid" if typ == TASKSTATS_TYPE_AGGR_PID else "tgid"
            out.append(_record(kind, ident, stats))
    return out


def _unavailable_from(err: BaseException, what: str) -> AccountingUnavailable:
    if isinstance(err, AccountingUnavailable):
        return err
    code = getattr(err, "errno", None)
    if code in (errno.EPERM, errno.EACCES):
        return AccountingUnavailable(
            f"taskstats {what}: EPERM (TASKSTATS_CMD_GET is admin-only; needs CAP_NET_ADMIN)"
        )
    if isinstance(err, OSError):
        return AccountingUnavailable(f"taskstats {what}: {oserror_text(err)}")
    return AccountingUnavailable(f"taskstats {what}: {err}")


def _family_id(sock: socket.socket, timeout_s: float) -> int:
    try:
        return nl.resolve_family(sock, "TASKSTATS", timeout_s)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise AccountingUnavailable(
                "taskstats: no TASKSTATS genl family (CONFIG_TASKSTATS off?)"
            ) from err
        raise _unavailable_from(err, "family lookup") from err


class TaskStatsClient(Closing):
    """TASKSTATS_CMD_GET queries for live threads/thread groups.

    Raw generic netlink on our own socket, every reply awaited with a
    deadline of ``timeout_s`` (see ``kvmpv.accounting.netlink`` for why not
    pyroute2).  Raises AccountingUnavailable when there is no generic
    netlink, the TASKSTATS family does not exist (CONFIG_TASKSTATS=n), the
    query is refused (EPERM as non-root) or the kernel's reply does not
    arrive in time.  One client may be used by one thread at a time.
    """

    def __init__(self, timeout_s: float = nl.NETLINK_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._sock: Optional[socket.socket] = nl.open_socket(nl.NETLINK_GENERIC, "taskstats")
        try:
            self._family = _family_id(self._sock, timeout_s)
        except BaseException:
            self.close()
            raise

    @property
    def family_id(self) -> int:
        return self._family

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _query(self, attr: int, ident: int) -> list[TaskStatsRecord]:
        if self._sock is None:
            raise AccountingUnavailable("taskstats: client is closed")
        body = nl.nla(attr, struct.pack("=I", ident))
        try:
            replies = nl.transact(
                self._sock,
                lambda seq: nl.genl_message(self._family, TASKSTATS_CMD_GET, body, seq),
                f"taskstats GET {ident}",
                self.timeout_s,
            )
        except (OSError, AccountingUnavailable) as err:
            raise _unavailable_from(err, f"GET {ident}") from err
        out: list[TaskStatsRecord] = []
        for buf, off, _length, typ in replies:
            if typ == self._family:
                out.extend(parse_taskstats_message(buf, off))
        return out

    def thread(self, tid: int) -> TaskStatsRecord:
        """Stats of one thread (TASKSTATS_CMD_ATTR_PID: that thread only)."""
        recs = [r for r in self._query(TASKSTATS_CMD_ATTR_PID, tid) if r.kind == "pid"]
        if not recs:
            raise AccountingUnavailable(f"taskstats: no record for thread {tid}")
        return recs[0]

    def thread_group(self, tgid: int) -> TaskStatsRecord:
        """Sum over the live threads of a process (TASKSTATS_CMD_ATTR_TGID)."""
        recs = [r for r in self._query(TASKSTATS_CMD_ATTR_TGID, tgid) if r.kind == "tgid"]
        if not recs:
            raise AccountingUnavailable(f"taskstats: no record for thread group {tgid}")
        return recs[0]


#: how long ``ExitRecordListener.records()`` keeps draining queued records
DRAIN_S = 0.05


def online_cpus() -> str:
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return f.read().strip()
    except OSError:
        return f"0-{(os.cpu_count() or 1) - 1}"


class ExitRecordListener(Closing):
    """Taskstats exit records of every task exiting on the online CPUs.

    Our own generic netlink socket, registered for the CPUs with an ACK
    requested so that EPERM is not silent; every read has a deadline.  The
    kernel sends exit records to the registered port id with port 0 in
    ``nlmsg_pid`` and its own per-CPU sequence numbers, so they can never be
    taken for the registration's ack (our seq *and* our port id).  Start it
    before the tasks you want to see exit.
    """

    def __init__(
        self,
        family_id: Optional[int] = None,
        cpumask: Optional[str] = None,
        timeout_s: float = nl.NETLINK_TIMEOUT_S,
    ) -> None:
        self.cpumask = cpumask or online_cpus()
        self.timeout_s = timeout_s
        self.overruns = 0
        self.sock = nl.open_socket(nl.NETLINK_GENERIC, "taskstats")
        self._pending: list[TaskStatsRecord] = []
        try:
            self.family_id = _family_id(self.sock, timeout_s) if family_id is None else family_id
            self._command(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, "register cpumask")
        except BaseException:
            self.sock.close()
            raise

    def _keep(self, buf: bytes, off: int, typ: int) -> None:
        if typ == self.family_id:
            self._pending.extend(parse_taskstats_message(buf, off))

    def _command(self, attr: int, what: str) -> None:
        body = nl.nla(attr, self.cpumask.encode() + b"\0")
        try:
            nl.transact(
                self.sock,
                lambda seq: nl.genl_message(
                    self.family_id, TASKSTATS_CMD_GET, body, seq, nl.NLM_F_REQUEST | nl.NLM_F_ACK
                ),
                f"taskstats {what}",
                self.timeout_s,
                on_other=self._keep,
            )
        except (OSError, AccountingUnavailable) as err:
            raise _unavailable_from(err, what) from err

    def records(self, timeout_s: float) -> list[TaskStatsRecord]:
        """Records read within ``timeout_s``; returns as soon as some arrived
        (after draining what is already queued)."""
        out, self._pending = self._pending, []
        now = time.monotonic()
        deadline = now + (0.0 if out else timeout_s)
        # Draining is bounded too: under a flood of exits the queue never runs
        # empty, and "drain until empty" never returned (measured: 33 s).
        drain_end = now + DRAIN_S if out else None
        while True:
            end = deadline if drain_end is None else min(deadline, drain_end)
            buf = nl.recv(self.sock, max(end, time.monotonic() + 0.001), "taskstats")
            if buf is None:
                return out
            if buf == b"":  # overrun: records were dropped
                self.overruns += 1
                continue
            for off, _length, typ, _flags, _seq, _pid in nl.messages(buf):
                if typ == self.family_id:
                    out.extend(parse_taskstats_message(buf, off))
            if out and drain_end is None:
                # drain what is queued without waiting, for at most DRAIN_S
                deadline = time.monotonic()
                drain_end = deadline + DRAIN_S
            if drain_end is not None and time.monotonic() >= drain_end:
                return out

    def wait_for(self, pid: int, timeout_s: float = 10.0, kind: str = "pid") -> TaskStatsRecord:
        """The exit record of thread ``pid`` (kind "pid") or of thread group
        ``pid`` (kind "tgid", sent only for multi-threaded groups)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no taskstats exit record for {kind} {pid}")
            for rec in self.records(min(left, 0.2)):
                if rec.kind == kind and rec.id == pid:
                    return rec

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        try:
            self._command(TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, "deregister cpumask")
        except AccountingUnavailable:
            pass  # the kernel drops a listener whose socket is gone at its next send
        finally:
            self.sock.close()


def taskstats_status() -> tuple[bool, str, Optional[int]]:
    """(usable, reason, version): one real GET on our own thread."""
    try:
        with TaskStatsClient() as c:
            rec = c.thread(_gettid())
        return True, f"TASKSTATS_CMD_GET works (struct taskstats v{rec.version})", rec.version
    except AccountingUnavailable as err:
        return False, err.reason, None


def _gettid() -> int:
    import threading

    return threading.get_native_id()


__all__ = [
    "SIZE_V16",
    "SIZE_V17",
    "ExitRecordListener",
    "TaskStatsClient",
    "TaskStatsRecord",
    "decode_taskstats",
    "online_cpus",
    "parse_taskstats_message",
    "taskstats_status",
]
