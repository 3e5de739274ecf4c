# SPDX-License-Identifier: GPL-2.0-only
"""Scoped private cgroups (v1 and cgroup2) through plain cgroupfs file access.

Touches: reads ``/proc/self/mountinfo`` and ``/proc/self/cgroup``; creates,
writes and removes directories named ``*kvmpv*`` *below this process's own
cgroup* in the cgroup hierarchies it uses (so that limits of a surrounding
sandbox, e.g. a memory cgroup ``/process_api/<id>``, still apply); moves
processes/threads by writing ``cgroup.procs``/``tasks``.  Installs a SIGTERM
handler only while a scope is open in the main thread and only if SIGTERM
had its default action.  No cgroup library: ~the same 50 lines every tool
writes, kept here so that the error paths are ours.

Hierarchies:

* ``v1``: the ``cpuacct`` hierarchy for CPU (mounted alone as on these
  machines, or co-mounted ``cpu,cpuacct`` -- same code, the directory is
  found from the controller list in mountinfo) plus the ``memory`` hierarchy
  if mounted.  Single threads can be placed (``tasks``).
* ``v2``: the unified hierarchy; ``cpu.stat`` exists in every cgroup2
  cgroup even without the cpu controller, ``memory.current``/``memory.peak``
  only where the parent enables the memory controller (not here: hugetlb
  only).  Only whole processes can be placed in a domain cgroup; single
  threads move between the *threaded* children of a threaded domain
  (``cgroup.type`` = threaded, ``cgroup.threads``), which is how libvirt
  gives QEMU's vCPU and emulator threads their own groups on cgroup2.
  ``CgroupScope.thread_cgroups`` builds that subtree; the memory
  controller (a domain controller) then charges the whole process to the
  threaded domain.

``auto`` prefers v1 on hybrid hosts (it has memory counters and per-thread
placement) and v2 on pure cgroup2 hosts; if creating the first cgroup in the
preferred hierarchy is refused, it falls back to the other one.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import secrets
import shlex
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Callable, Optional, Union

from ..closing import raise_interrupted, signals_held
from ..errors import Interrupted, SyscallError, UsageError
from .common import AccountingUnavailable, CgroupLeftover, oserror_text

HIERARCHY_CHOICES = ("auto", "v1", "v2")
#: every cgroup kvmpv creates has this in its name (leftover checks grep for it)
NAME_MARK = "kvmpv"
_ROLE_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
#: ``<prefix>-<role>-p<creator pid>n<pid namespace inode>-<6 hex>``: the pid
#: tells a leftover checker whether the creator is still alive, the namespace
#: whether that pid means anything here (tests under qemu-user or in
#: containers run in their own pid namespaces on the same cgroup tree).
_NAME_RE = re.compile(r"-p(\d+)(?:n(\d+))?-[0-9a-f]{6}$")
USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: how long cleanup keeps retrying rmdir on EBUSY (tasks still exiting)
RMDIR_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------
# Readings


@dataclass(frozen=True)
class CpuUsage:
    """CPU time charged to a cgroup, in ns.  ``total_ns`` is scheduler
    runtime (precise); the user/system split is tick-sampled (see verdict)."""

    total_ns: int
    user_ns: int
    system_ns: int

    def __sub__(self, other: CpuUsage) -> CpuUsage:
        return CpuUsage(
            self.total_ns - other.total_ns,
            self.user_ns - other.user_ns,
            self.system_ns - other.system_ns,
        )

    def to_dict(self) -> dict[str, int]:
        return {"total_ns": self.total_ns, "user_ns": self.user_ns, "system_ns": self.system_ns}


@dataclass(frozen=True)
class MemUsage:
    """Memory charged to a cgroup now, and its peak (None if not exposed)."""

    current_bytes: int
    peak_bytes: Optional[int]

    def to_dict(self) -> dict[str, Optional[int]]:
        return {"current_bytes": self.current_bytes, "peak_bytes": self.peak_bytes}


# --------------------------------------------------------------------------
# Layout discovery (pure functions on text, so they are testable on fake trees)


@dataclass(frozen=True)
class CgroupMount:
    """One cgroupfs mount from mountinfo."""

    version: str  # "v1" | "v2"
    mountpoint: str
    root: str  # the mount's root inside the hierarchy (bind mounts, cgroupns)
    controllers: tuple[str, ...]  # v1: from the super options; v2: empty here


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup/cgroup2 mounts in a ``/proc/<pid>/mountinfo`` text."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf = left.split()
        rf = right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        fstype, super_opts = rf[0], rf[2]
        if fstype == "cgroup2":
            mounts.append(CgroupMount("v2", _unescape(lf[4]), _unescape(lf[3]), ()))
        elif fstype == "cgroup":
            ctrls = tuple(
                o
                for o in super_opts.split(",")
                if o not in ("rw", "ro") and "=" not in o and not o.startswith("no")
                and o not in ("xattr", "clone_children", "cpuset_v2_mode", "favordynmods")
            )  # fmt: skip
            names = tuple(o for o in super_opts.split(",") if o.startswith("name="))
            mounts.append(CgroupMount("v1", _unescape(lf[4]), _unescape(lf[3]), ctrls + names))
    return mounts


def parse_proc_cgroup(text: str) -> list[tuple[int, tuple[str, ...], str]]:
    """``/proc/<pid>/cgroup`` as (hierarchy id, controllers, path) triples."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ctrls = tuple(c for c in parts[1].split(",") if c)
        out.append((int(parts[0]), ctrls, parts[2]))
    return out


def _join_hierarchy(mount: CgroupMount, path: str) -> Optional[str]:
    """Directory of cgroup ``path`` under ``mount``, or None if the mount does
    not show it (a bind mount of an unrelated subtree)."""
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    rel = path[len(root) :].lstrip("/")
    return os.path.join(mount.mountpoint, rel) if rel else mount.mountpoint


@dataclass(frozen=True)
class Layout:
    """Where this process's own cgroups are, for one hierarchy choice.

    ``dirs`` maps a kind to our own cgroup directory: v1 ``{"cpuacct": ...,
    "memory": ...}`` (memory only if mounted), v2 ``{"unified": ...}``.
    """

    hierarchy: str  # "v1" | "v2"
    dirs: dict[str, str]
    cpu_controllers: tuple[str, ...]  # v1: the cpuacct mount's controllers
    pure_v2: bool = False

    @property
    def cpu_dir(self) -> str:
        return self.dirs["cpuacct" if self.hierarchy == "v1" else "unified"]

    @property
    def memory_dir(self) -> Optional[str]:
        if self.hierarchy == "v1":
            return self.dirs.get("memory")
        return self.dirs["unified"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "hierarchy": self.hierarchy,
            "dirs": dict(self.dirs),
            "cpu_controllers": list(self.cpu_controllers),
        }


def layouts_from_text(mountinfo: str, proc_cgroup: str) -> dict[str, Union[Layout, str]]:
    """Both hierarchy choices: a ``Layout`` or the reason it is missing."""
    mounts = parse_mountinfo(mountinfo)
    entries = parse_proc_cgroup(proc_cgroup)
    pure_v2 = bool(entries) and all(hid == 0 for hid, _, _ in entries)
    result: dict[str, Union[Layout, str]] = {}

    def v1_dir(controller: str) -> Optional[tuple[str, tuple[str, ...]]]:
        paths = [p for hid, c, p in entries if hid != 0 and controller in c]
        if not paths:
            return None
        for m in mounts:
            if m.version == "v1" and controller in m.controllers:
                d = _join_hierarchy(m, paths[0])
                if d is not None:
                    return d, m.controllers
        return None

    cpu = v1_dir("cpuacct")
    if cpu is None:
        result["v1"] = "no cgroup v1 cpuacct hierarchy mounted for this process"
    else:
        dirs = {"cpuacct": cpu[0]}
        mem = v1_dir("memory")
        if mem is not None:
            dirs["memory"] = mem[0]
        result["v1"] = Layout("v1", dirs, cpu[1])

    v2_paths = [p for hid, _, p in entries if hid == 0]
    v2_dir = None
    if v2_paths:
        for m in mounts:
            if m.version == "v2":
                v2_dir = _join_hierarchy(m, v2_paths[0])
                if v2_dir is not None:
                    break
    if v2_dir is None:
        result["v2"] = "no cgroup2 (unified) hierarchy mounted for this process"
    else:
        result["v2"] = Layout("v2", {"unified": v2_dir}, (), pure_v2)
    return result


def discover_layouts(proc: str = "/proc/self") -> dict[str, Union[Layout, str]]:
    """``layouts_from_text`` on the live ``/proc/self`` files."""
    try:
        with open(os.path.join(proc, "mountinfo")) as f:
            mountinfo = f.read()
        with open(os.path.join(proc, "cgroup")) as f:
            cgroup = f.read()
    except OSError as err:
        reason = f"cannot read {proc}/mountinfo or cgroup: {oserror_text(err)}"
        return {"v1": reason, "v2": reason}
    return layouts_from_text(mountinfo, cgroup)


#: environment variable that turns every "auto" hierarchy choice into v1 or v2
HIERARCHY_ENV = "KVMPV_CGROUP"


def resolve_hierarchy(hierarchy: str) -> str:
    """``hierarchy``, or for "auto" the value of ``$KVMPV_CGROUP`` if set.

    One switch for the whole process tree: a CI job forces cgroup2 on a
    hybrid host and every scenario (and test) that asked for "auto" uses it.
    """
    if hierarchy != "auto":
        return hierarchy
    forced = os.environ.get(HIERARCHY_ENV, "").strip()
    if not forced:
        return hierarchy
    if forced not in HIERARCHY_CHOICES:
        raise UsageError(
            f"{HIERARCHY_ENV} must be one of {', '.join(HIERARCHY_CHOICES)}, not {forced!r}"
        )
    return forced


def candidate_order(hierarchy: str, found: dict[str, Union[Layout, str]]) -> list[Layout]:
    """Layouts to try for ``hierarchy`` ("auto"|"v1"|"v2"), best first.

    Raises AccountingUnavailable if none is mounted, ValueError on a bad name.
    """
    if hierarchy not in HIERARCHY_CHOICES:
        raise ValueError(f"hierarchy must be one of {HIERARCHY_CHOICES}, got {hierarchy!r}")
    if hierarchy in ("v1", "v2"):
        lay = found.get(hierarchy)
        if not isinstance(lay, Layout):
            raise AccountingUnavailable(f"cgroup {hierarchy}: {lay}")
        return [lay]
    v2 = found.get("v2")
    order = ["v2", "v1"] if isinstance(v2, Layout) and v2.pure_v2 else ["v1", "v2"]
    out = [lay for lay in (found.get(h) for h in order) if isinstance(lay, Layout)]
    if not out:
        raise AccountingUnavailable(f"no usable cgroup hierarchy: v1: {found.get('v1')}; v2: {v2}")
    return out


# --------------------------------------------------------------------------
# File helpers


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    # One write(2) per value: cgroupfs parses each write as one request.
    # Signals held: a Ctrl-C landing between open() and the try would leak
    # the fd (it did, once per ~80 interrupted reboots).
    with signals_held():
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def _is_permission(err: OSError) -> bool:
    return err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def _ids(path: str) -> list[int]:
    try:
        return [int(x) for x in _read(path).split()]
    except FileNotFoundError:
        return []


def parse_cpu_stat(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def creator_pid(name: str) -> Optional[int]:
    """The pid encoded in a kvmpv cgroup name, or None."""
    m = _NAME_RE.search(name)
    return int(m.group(1)) if m else None


def creator_pidns(name: str) -> Optional[int]:
    """The pid namespace inode encoded in a kvmpv cgroup name, or None."""
    m = _NAME_RE.search(name)
    return int(m.group(2)) if m and m.group(2) else None


def own_pidns() -> Optional[int]:
    """Inode of our pid namespace (None if /proc does not tell)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


# --------------------------------------------------------------------------
# Cgroup and scope


class Cgroup:
    """One private cgroup (a directory per hierarchy kind) created by a scope."""

    def __init__(
        self,
        name: str,
        role: str,
        layout: Layout,
        dirs: dict[str, str],
        *,
        threaded: bool = False,
    ) -> None:
        self.name = name
        self.role = role
        self.hierarchy = layout.hierarchy
        self._layout = layout
        self.paths = dict(dirs)
        #: a cgroup2 threaded cgroup (``cgroup.type`` = threaded): holds single
        #: threads of the processes in its threaded domain, no memory counters
        self.threaded = threaded
        self.removed = False

    def __repr__(self) -> str:
        kind = ", threaded" if self.threaded else ""
        return f"Cgroup({self.name!r}, {self.hierarchy}{kind}, {self.path!r})"

    @property
    def path(self) -> str:
        """The directory that holds the CPU counters."""
        return self.paths["cpuacct" if self.hierarchy == "v1" else "unified"]

    def _place(self, filename: str, ident: int, kinds: list[str]) -> None:
        for kind in kinds:
            target = os.path.join(self.paths[kind], filename)
            try:
                _write(target, str(ident))
            except OSError as err:
                if _is_permission(err):
                    raise AccountingUnavailable(
                        f"cgroup {self.hierarchy}: cannot move {ident} into {target}: "
                        f"{oserror_text(err)}"
                    ) from err
                raise SyscallError(f"write {filename}", err.errno or 0, target) from err

    def add_process(self, pid: int) -> None:
        """Move the whole thread group ``pid`` here (every hierarchy kind).

        Memory charged before the move stays with the old cgroup (v1 without
        move_charge_at_immigrate, and always on v2): move before the work.
        """
        self._place("cgroup.procs", pid, list(self.paths))

    def add_thread(self, tid: int) -> None:
        """Move one thread here (v1: the CPU hierarchy; v2: threaded cgroups).

        Memory is charged per mm, not per thread, so the v1 memory hierarchy
        is left alone.  cgroup2 domain cgroups refuse single threads
        (``cgroup.threads`` -> EOPNOTSUPP, ``cgroup.procs`` moves the whole
        process): on v2 only a cgroup from ``CgroupScope.thread_cgroups``
        takes one, and only a thread of a process in its threaded domain.
        """
        if self.hierarchy == "v1":
            self._place("tasks", tid, ["cpuacct"])
        elif self.threaded:
            self._place("cgroup.threads", tid, ["unified"])
        else:
            raise AccountingUnavailable(
                "cgroup v2 cannot place a single thread in a domain cgroup; "
                "use CgroupScope.thread_cgroups (a threaded subtree)"
            )

    def spawn_argv(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped so that the new process enters this cgroup before
        it execs (all its CPU and memory is charged here from the start).

        A shell writes its own pid (``$$``) into every ``cgroup.procs`` and
        then ``exec``s argv: no ``preexec_fn`` (unsafe with threads), and a
        failed write stops the command (``&&``) instead of running it in the
        wrong cgroup.
        """
        writes = " && ".join(
            f"echo $$ > {shlex.quote(os.path.join(d, 'cgroup.procs'))}" for d in self.paths.values()
        )
        return ["/bin/sh", "-c", f'{writes} && exec "$@"', "kvmpv-cgexec", *argv]

    def pids(self) -> list[int]:
        """Thread group ids currently in the CPU cgroup (a threaded cgroup
        refuses to list them: EOPNOTSUPP)."""
        return _ids(os.path.join(self.path, "cgroup.procs"))

    def tids(self) -> list[int]:
        """Thread ids currently in the CPU cgroup."""
        name = "tasks" if self.hierarchy == "v1" else "cgroup.threads"
        return _ids(os.path.join(self.path, name))

    def cpu(self) -> CpuUsage:
        """CPU time charged so far (counters survive the tasks' exit)."""
        try:
            if self.hierarchy == "v2":
                st = parse_cpu_stat(_read(os.path.join(self.path, "cpu.stat")))
                return CpuUsage(
                    st["usage_usec"] * 1000, st["user_usec"] * 1000, st["system_usec"] * 1000
                )
            total = int(_read(os.path.join(self.path, "cpuacct.usage")))
            try:
                user = int(_read(os.path.join(self.path, "cpuacct.usage_user")))
                system = int(_read(os.path.join(self.path, "cpuacct.usage_sys")))
            except FileNotFoundError:
                # Kernels before 4.7: cpuacct.stat in USER_HZ ticks.
                st = parse_cpu_stat(_read(os.path.join(self.path, "cpuacct.stat")))
                user = st["user"] * 1_000_000_000 // USER_HZ
                system = st["system"] * 1_000_000_000 // USER_HZ
            return CpuUsage(total, user, system)
        except (OSError, KeyError, ValueError) as err:
            raise AccountingUnavailable(
                f"cgroup {self.hierarchy}: cannot read CPU counters in {self.path}: {err}"
            ) from err

    def _memory_files(self) -> Optional[tuple[str, str]]:
        """(current, peak) counter paths of this cgroup's memory; None where
        it has none here (no v1 memory hierarchy; threaded: memory is a
        domain controller, see the threaded domain)."""
        if self.hierarchy == "v1":
            d = self.paths.get("memory")
            names = ("memory.usage_in_bytes", "memory.max_usage_in_bytes")
        else:
            d = None if self.threaded else self.paths["unified"]
            names = ("memory.current", "memory.peak")
        if d is None:
            return None
        return os.path.join(d, names[0]), os.path.join(d, names[1])

    def memory_file(self) -> Optional[str]:
        """The file holding the memory charged now; None where there is none."""
        files = self._memory_files()
        return files[0] if files is not None and os.path.exists(files[0]) else None

    def memory_missing_reason(self) -> str:
        """Why ``memory_file`` is None (one line)."""
        if self.hierarchy == "v1":
            return "no cgroup v1 memory hierarchy mounted for this process"
        if self.threaded:
            return "a threaded cgroup has no memory counter (memory is a domain controller)"
        parent = os.path.dirname(self.path)
        return f"memory controller not enabled in {parent}/cgroup.subtree_control"

    def memory(self) -> Optional[MemUsage]:
        """Memory charged now and its peak; None where the host has no counter."""
        files = self._memory_files()
        if files is None:
            return None
        try:
            current = int(_read(files[0]))
        except FileNotFoundError:
            return None
        try:
            peak: Optional[int] = int(_read(files[1]))
        except FileNotFoundError:
            peak = None
        return MemUsage(current, peak)

    # -- removal -------------------------------------------------------------

    def _evacuate(self, kind: str) -> None:
        d = self.paths[kind]
        parent = os.path.dirname(d)
        if self.hierarchy == "v1":
            # Per thread: a process may have single threads in here (add_thread).
            src, dst = "tasks", "tasks"
        elif self.threaded:
            # Back to the threaded domain above (threads cannot leave the subtree).
            src, dst = "cgroup.threads", "cgroup.threads"
        else:
            src, dst = "cgroup.procs", "cgroup.procs"
        for ident in _ids(os.path.join(d, src)):
            try:
                _write(os.path.join(parent, dst), str(ident))
            except OSError as err:
                if err.errno != errno.ESRCH:  # ESRCH: it exited meanwhile, fine
                    raise

    def remove(self, timeout_s: Optional[float] = None) -> list[str]:
        """Move remaining tasks to the parent and rmdir; returns what is left.

        Retries on EBUSY: a task that is in the middle of exiting still counts
        until ``cgroup_exit`` has run for it.
        """
        left = []
        deadline = time.monotonic() + (RMDIR_TIMEOUT_S if timeout_s is None else timeout_s)
        for kind, d in self.paths.items():
            delay = 0.001
            while True:
                try:
                    self._evacuate(kind)
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(f"{d} ({oserror_text(err)})")
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        self.removed = not left
        return left


class MemoryTrace:
    """``memory.current`` (v1: ``memory.usage_in_bytes``) of a cgroup, sampled
    on a thread while a teardown runs (context manager).

    Why: memory stays charged to its cgroup until it is really freed, so the
    counter falling is the teardown as the memory controller sees it.  The
    sampler thread runs at nice 19 and sleeps ``interval_s`` between reads
    (a read is ~10 us): on a 2-CPU machine it must not take CPU from the
    teardown it watches.  ``samples`` are (CLOCK_MONOTONIC ns, bytes);
    ``reason`` says why there are none (no memory counter in this cgroup).
    """

    def __init__(self, cgroup: Cgroup, interval_s: float = 0.002, max_samples: int = 20_000):
        self.cgroup = cgroup
        self.interval_s = interval_s
        self.max_samples = max_samples
        self.samples: list[tuple[int, int]] = []
        self.reason = ""
        self._file = cgroup.memory_file()
        if self._file is None:
            self.reason = cgroup.memory_missing_reason()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _run(self) -> None:
        assert self._file is not None
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass  # still correct, only less polite
        try:
            fd = os.open(self._file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            self.reason = f"cannot open {self._file}: {oserror_text(err)}"
            return
        try:
            while len(self.samples) < self.max_samples:
                value = int(os.pread(fd, 64, 0))
                self.samples.append((time.monotonic_ns(), value))
                if self._stop.wait(self.interval_s):
                    break
            # One last reading after the stop: the state the teardown left.
            self.samples.append((time.monotonic_ns(), int(os.pread(fd, 64, 0))))
        except (OSError, ValueError) as err:
            self.reason = f"reading {self._file}: {err}"
        finally:
            os.close(fd)

    def __enter__(self) -> MemoryTrace:
        if self._file is not None:
            # The first reading here, in the caller's thread, before it starts
            # the teardown: the sampler runs at nice 19, and on a busy 2-CPU
            # machine its first reading came after the exit request, with part
            # of the memory already freed (bytes_at_start 87% of the worker).
            try:
                with open(self._file, "rb") as f:
                    self.samples.append((time.monotonic_ns(), int(f.read())))
            except (OSError, ValueError) as err:
                self.reason = f"reading {self._file}: {err}"
                return self
            self._thread = threading.Thread(target=self._run, name="kvmpv-memtrace", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, t0_ns: int, keep: int = 12) -> dict[str, Any]:
        """First, peak-after-t0, last and up to ``keep`` evenly spaced points,
        times relative to ``t0_ns`` (the teardown's start)."""
        if not self.samples:
            return {"available": False, "reason": self.reason or "no samples"}
        pts = self.samples
        step = max(1, len(pts) // keep)
        picked = pts[::step]
        if picked[-1] is not pts[-1]:
            picked.append(pts[-1])
        at_start = max((b for t, b in pts if t <= t0_ns), default=pts[0][1])
        return {
            "available": True,
            "file": os.path.basename(self._file or ""),
            "bytes_at_start": at_start,
            "bytes_at_end": pts[-1][1],
            "samples": len(pts),
            "points": [[round((t - t0_ns) / 1e9, 6), b] for t, b in picked],
        }


_live_scopes: weakref.WeakSet[CgroupScope] = weakref.WeakSet()
_live_lock = threading.Lock()


def _atexit_cleanup() -> None:
    # Backstop for scopes that were never closed (no ``with``): still no leftovers.
    with _live_lock:
        scopes = list(_live_scopes)
    for scope in scopes:
        try:
            scope.close()
        except CgroupLeftover as err:
            print(f"kvmpv: {err}", file=sys.stderr)


atexit.register(_atexit_cleanup)


SignalHandler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


class CgroupScope:
    """A set of private cgroups removed together (context manager).

    Use ``cgroup_scope()``.  ``hierarchy`` is "v1" or "v2": the one in use
    (for "auto", the preferred one until the first ``create`` settles it).
    """

    def __init__(
        self,
        hierarchy: str = "auto",
        prefix: str = NAME_MARK,
        *,
        proc: str = "/proc/self",
        handle_sigterm: bool = True,
    ) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", prefix):
            raise ValueError(f"bad cgroup prefix {prefix!r}")
        hierarchy = resolve_hierarchy(hierarchy)
        self.requested = hierarchy
        self.prefix = prefix if NAME_MARK in prefix else f"{NAME_MARK}-{prefix}"
        self._candidates = candidate_order(hierarchy, discover_layouts(proc))
        self._fallback_reasons: list[str] = []
        self.layout = self._candidates[0]
        self.cgroups: list[Cgroup] = []
        #: v2: the threaded domain this process moved into (thread_cgroups)
        self.thread_home: Optional[Cgroup] = None
        self._handle_sigterm = handle_sigterm
        self._saved_sigterm: SignalHandler = None
        self._installed = False
        self._lock = threading.Lock()
        self._closed = False

    @property
    def hierarchy(self) -> str:
        return self.layout.hierarchy

    def __repr__(self) -> str:
        return f"CgroupScope({self.hierarchy}, {len(self.cgroups)} cgroups)"

    def _mkdirs(
        self, layout: Layout, name: str, parents: Optional[dict[str, str]] = None
    ) -> dict[str, str]:
        made: dict[str, str] = {}
        parent = ""
        try:
            for kind, parent in (parents or layout.dirs).items():
                d = os.path.join(parent, name)
                os.mkdir(d)
                made[kind] = d
        except OSError as err:
            for d in reversed(list(made.values())):
                try:
                    os.rmdir(d)
                except OSError as err2:
                    print(f"kvmpv: could not remove {d}: {oserror_text(err2)}", file=sys.stderr)
            target = os.path.join(parent, name)
            if _is_permission(err) or err.errno == errno.ENOENT:
                raise AccountingUnavailable(
                    f"cgroup {layout.hierarchy}: mkdir {target}: {oserror_text(err)}"
                ) from err
            raise SyscallError("mkdir", err.errno or 0, target) from err
        return made

    def _name(self, role: str) -> str:
        if not _ROLE_RE.match(role):
            raise ValueError(f"bad cgroup role {role!r} (letters, digits, _)")
        ns = own_pidns()
        creator = f"p{os.getpid()}" + (f"n{ns}" if ns is not None else "")
        return f"{self.prefix}-{role}-{creator}-{secrets.token_hex(3)}"

    def create(self, role: str) -> Cgroup:
        """A new private cgroup for ``role`` (e.g. "vm", "cleaner", "reaper")."""
        name = self._name(role)
        # Signals held from mkdir to the bookkeeping: a Ctrl-C in between would
        # leave a directory that close() does not know about.
        with self._lock, signals_held():
            if self._closed:
                raise RuntimeError("cgroup scope already closed")
            while True:
                try:
                    dirs = self._mkdirs(self.layout, name)
                    break
                except AccountingUnavailable as err:
                    # "auto" may fall back, but only before the first cgroup exists:
                    # a scope never mixes hierarchies.
                    self._fallback_reasons.append(err.reason)
                    rest = self._candidates[self._candidates.index(self.layout) + 1 :]
                    if self.cgroups or self.requested != "auto" or not rest:
                        raise AccountingUnavailable("; ".join(self._fallback_reasons)) from err
                    self.layout = rest[0]
            cg = Cgroup(name, role, self.layout, dirs)
            self.cgroups.append(cg)
            with _live_lock:
                _live_scopes.add(self)
            return cg

    def thread_cgroups(self, home_role: str, roles: list[str]) -> dict[str, Cgroup]:
        """Cgroups that single threads of *this process* can move between.

        v1: one cgroup per role (``tasks`` takes any thread).  v2: a domain
        cgroup ``home_role`` that this whole process moves into, made a
        threaded domain by threaded children, one per role: the layout
        libvirt gives QEMU on cgroup2 (its ``emulator`` and ``vcpuN``
        groups).  Threads not placed stay in the home cgroup; memory is
        charged there, from the move on (v2 never moves old charges), so
        call this before allocating what should count; ``thread_home`` is
        that cgroup (None on v1).  Closing the scope moves the process back
        to the cgroup it came from.
        """
        if self.hierarchy == "v1":
            return {role: self.create(role) for role in roles}
        home = self.create(home_role)
        home.add_process(os.getpid())
        self.thread_home = home
        return {role: self.create_threaded(home, role) for role in roles}

    def create_threaded(self, home: Cgroup, role: str) -> Cgroup:
        """A cgroup2 threaded child of ``home`` (which becomes a threaded domain)."""
        if self.hierarchy != "v2":
            raise ValueError("threaded cgroups exist on cgroup2 only")
        name = self._name(role)
        with self._lock, signals_held():
            if self._closed:
                raise RuntimeError("cgroup scope already closed")
            dirs = self._mkdirs(self.layout, name, home.paths)
            cg = Cgroup(name, role, self.layout, dirs, threaded=True)
            # Registered before the type is set: close() removes it either way.
            self.cgroups.append(cg)
        type_file = os.path.join(cg.path, "cgroup.type")
        try:
            _write(type_file, "threaded")
        except OSError as err:
            # EOPNOTSUPP: the parent cannot be a threaded domain (domain
            # controllers enabled in its subtree_control, or domain children).
            raise AccountingUnavailable(
                f"cgroup v2: cannot make {cg.path} threaded ({type_file}): {oserror_text(err)}"
            ) from err
        return cg

    # -- context manager ------------------------------------------------------

    def __enter__(self) -> CgroupScope:
        if self._handle_sigterm and threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGTERM)
            if prev in (signal.SIG_DFL, None):
                # Without this, SIGTERM would kill us before __exit__ could rmdir.
                self._saved_sigterm = prev
                signal.signal(signal.SIGTERM, raise_interrupted)
                self._installed = True
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            self.close()
        except CgroupLeftover as err:
            if exc is None:
                raise
            # Do not mask the original error, but never be silent either.
            print(f"kvmpv: {err}", file=sys.stderr)
        finally:
            if self._installed:
                signal.signal(signal.SIGTERM, self._saved_sigterm or signal.SIG_DFL)
                self._installed = False

    def close(self) -> None:
        """Remove every cgroup of the scope (idempotent).

        SIGINT/SIGTERM arriving during the removal are held back until it is
        done (main thread only), so a second Ctrl-C cannot leave a cgroup.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            with signals_held():
                left: list[str] = []
                try:
                    for cg in reversed(self.cgroups):
                        left.extend(cg.remove())
                finally:
                    with _live_lock:
                        _live_scopes.discard(self)
                if left:
                    raise CgroupLeftover(left, "tasks would not leave or rmdir was refused")
        except (KeyboardInterrupt, Interrupted) as exc:
            # A signal held during the removal wins; never lose the leftover.
            if isinstance(exc.__context__, CgroupLeftover):
                print(f"kvmpv: {exc.__context__}", file=sys.stderr)
            raise

    def leftovers(self) -> list[str]:
        """Directories of this scope that still exist."""
        return [d for cg in self.cgroups for d in cg.paths.values() if os.path.isdir(d)]


def cgroup_scope(hierarchy: str = "auto", prefix: str = NAME_MARK) -> CgroupScope:
    """Open a scope of private cgroups below our own ones (context manager).

    Raises AccountingUnavailable when the requested hierarchy is not mounted
    (and, from ``create``, when it is not writable for us).
    """
    return CgroupScope(hierarchy, prefix)


def iter_kvmpv_cgroups(root: str = "/sys/fs/cgroup") -> Iterator[str]:
    """Every directory under ``root`` whose name contains "kvmpv"."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = [e for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for e in entries:
            if NAME_MARK in e.name:
                yield e.path
            stack.append(e.path)


@dataclass
class LeftoverReport:
    """Result of ``find_leftovers``."""

    leftovers: list[str] = field(default_factory=list)
    ignored_live: list[str] = field(default_factory=list)
    ignored_foreign: list[str] = field(default_factory=list)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_leftovers(
    root: str = "/sys/fs/cgroup",
    *,
    since: Optional[float] = None,
    ignore_live_other_creators: bool = False,
) -> LeftoverReport:
    """kvmpv cgroups under ``root`` (created at/after ``since``, a time.time()).

    With ``ignore_live_other_creators``, a cgroup whose creator (pid in the
    name) is alive and is not this process is reported as ``ignored_live``,
    and one created in another pid namespace as ``ignored_foreign``, not as
    a leftover: on a shared machine another kvmpv run may be busy.
    """
    rep = LeftoverReport()
    own_ns = own_pidns()
    for path in iter_kvmpv_cgroups(root):
        if since is not None:
            try:
                if os.stat(path).st_ctime < since:
                    continue
            except FileNotFoundError:
                continue
        name = os.path.basename(path)
        pid, ns = creator_pid(name), creator_pidns(name)
        if ignore_live_other_creators and pid is not None:
            if ns is not None and ns != own_ns:
                # Another pid namespace: its pids mean nothing here.
                rep.ignored_foreign.append(path)
                continue
            if pid != os.getpid() and _pid_alive(pid):
                rep.ignored_live.append(path)
                continue
        rep.leftovers.append(path)
    return rep


__all__ = [
    "HIERARCHY_CHOICES",
    "Cgroup",
    "CgroupMount",
    "CgroupScope",
    "CpuUsage",
    "Layout",
    "LeftoverReport",
    "MemUsage",
    "MemoryTrace",
    "candidate_order",
    "cgroup_scope",
    "creator_pid",
    "creator_pidns",
    "discover_layouts",
    "find_leftovers",
    "iter_kvmpv_cgroups",
    "layouts_from_text",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "resolve_hierarchy",
]
