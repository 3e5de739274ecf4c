# SPDX-License-Identifier: GPL-2.0-only
"""Asynchronous teardown of this process's memory by a ``clone(CLONE_VM)`` cleaner.

``arm()`` creates a tiny native child, the *cleaner*, that shares this
process's address space (``clone(CLONE_VM)``, like QEMU's ``-run-with
async-teardown=on``).  When this process exits, its last thread only drops its
reference to the address space and the exit is seen at once by whoever waits
for it; the cleaner notices the complete exit within microseconds (a pidfd of
this process, not QEMU's one-second ``getppid`` polling) and exits in turn, so
the kernel frees the memory in the cleaner's context -- an ordinary process in
the same cgroups, so the CPU time and the memory stay charged where they
belong.  With ``parallel=N`` the cleaner first releases the private anonymous
memory with ``madvise(MADV_DONTNEED)`` from N tasks sharing the address space
so the release time shrinks with the cores: each task takes one slice of equal
bytes (32 MiB chunks taken from a shared counter were measured slower:
docs/teardown-cost.md).  The cleaner moves itself to
the CPU this process last ran on before it frees anything, so the pages go
where a plain exit would have put them (that CPU's per-cpu page lists: see
docs/teardown-cost.md for why this decides the CPU cost).

What this module touches: it loads ``kvmpv/native/libkvmpv-cleaner.so`` (built
by ``pip install``; no compiler at run time) with ctypes and calls its entry
points; the cleaner itself runs only raw system calls (see
``kvmpv/native/cleaner.c`` for the why).  It never runs Python in the cleaner.

Behaviour worth knowing:

* The cleaner is named ``cleanup/<pid>`` (``ps``, ``/proc/<pid>/comm``), has
  every signal blocked (only SIGKILL and SIGSTOP reach it), holds no file
  descriptor of this process (stdout pipes see EOF when this process exits),
  and uses exit signal 0: ``os.wait()``, ``subprocess`` and ``asyncio`` never
  see or reap it; ``disarm()`` and ``status()`` reap it with ``__WCLONE``.
* ``exec`` does not pin memory: the cleaner watches a close-on-exec pipe, so
  after ``os.exec*`` it exits within milliseconds and the old address space is
  released.  It then stays a zombie child of the new program until that
  exits; call ``disarm()`` before ``os.exec*`` to avoid even that.
* ``os.fork()`` children are not armed (their memory is a copy; the cleaner
  keeps holding the parent's), and they do not delay the parent's release:
  a ``pthread_atfork`` handler closes the notification pipe in them.  Call
  ``arm()`` in the child to protect it too.
* Arming is O(1): no page tables are copied, unlike ``fork``.
* ``$KVMPV_CLEANER_REPORT_FD`` (an open fd when ``arm()`` runs): the cleaner
  keeps that fd and reports there which tasks released which slice of memory
  and when it exits (``CleanerReport``), so tests know the helper tasks from
  the cleaner itself.

Documented limits (no benefit, or a cost, in these cases):

* **PID 1 of a PID namespace** (a container without an init shim): the
  namespace's init exit SIGKILLs and waits for every task in it, cleaner
  included, so the teardown is synchronous again.
* **Supervisors that SIGKILL a whole cgroup** (systemd ``KillMode=
  control-group``/``mixed``, machined ``TerminateMachine``): a SIGKILL that
  reaches the cleaner before this process is completely gone makes the
  teardown synchronous again.  The benefit is for PID-based waiters (shells,
  ``subprocess``, libvirt's wait for QEMU).
* **seccomp** filters that forbid ``clone`` without ``CLONE_THREAD`` (QEMU's
  ``-sandbox spawn=deny`` style) make ``arm()`` fail (or kill the process,
  depending on the filter's action): arm before installing the sandbox.
* **Statically linked programs** cannot be armed by ``kvmpv launch`` (it
  works through ``LD_PRELOAD``); neither can set-user-ID programs.
* ``oom_score_adj`` is shared by all processes sharing an address space: a
  write to this process's value also changes the cleaner's, and vice versa.
* **RSS double counting**: the cleaner reports the same VmRSS as this process
  while both live (``ps``/``top``/psutil sums count the memory twice), and the
  full RSS until its teardown ends.
* Memory stays charged to the cgroup until the cleaner has finished: an
  immediate restart of a big process can hit the OOM killer meanwhile.
* ``process_mrelease()`` (lmkd, systemd-oomd style reapers) fails with EINVAL
  on this process while the cleaner lives: kill the cleaner (or the cgroup)
  too.  The kernel OOM killer itself kills every process sharing the address
  space, cleaner included.
* **Parallel mode** zeroes the private anonymous memory once the process is
  completely gone.  It assumes no other task shares the address space then:
  a ``vfork`` child that has not yet called ``exec`` when the whole process is
  killed would see that memory zeroed (``posix_spawn`` children only touch it
  for microseconds).  It does not help THP-backed memory much (already ~25x
  faster to free) and is unmeasured for s390x protected guests.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import HostError, SyscallError, UsageError

#: File name of the native shared object (Python glue and LD_PRELOAD in one).
LIBRARY_NAME = "libkvmpv-cleaner.so"
#: Environment variable overriding where the shared object is looked up.
LIBRARY_ENV = "KVMPV_CLEANER_LIB"
#: ``__WCLONE`` (0x80000000): wait for "clone" children (exit signal not
#: SIGCHLD).  Python's ``os`` module has no constant for it (checked up to
#: 3.13); written as the signed C int so ``os.waitpid``/``os.waitid`` accept it.
WCLONE = -0x80000000
#: Upper bound of ``parallel`` (the native code has static stacks for this many).
MAX_PARALLEL = 64
#: Default cap when ``parallel=0`` picks the CPUs of the process's cpuset.
DEFAULT_PARALLEL_CAP = 8
#: Environment variable naming an open fd (at ``arm()`` time) on which the
#: cleaner writes its report (``CleanerReport``): which tasks released which
#: slice, and its exit.  For tests and diagnosis; the cleaner keeps that fd.
REPORT_FD_ENV = "KVMPV_CLEANER_REPORT_FD"


@dataclass(frozen=True)
class CleanerStatus:
    """State of this process's cleaner.

    ``armed``: a cleaner is alive and holds this process's address space.
    ``pid``: its process id (``None`` when not armed).
    ``parallel``: the number of tasks that will release the memory (1: the
    cleaner's own exit frees it, as in QEMU; N > 1: N tasks ``madvise`` the
    private anonymous memory first); 0 when not armed.
    """

    armed: bool
    pid: Optional[int]
    parallel: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NOT_ARMED = CleanerStatus(armed=False, pid=None, parallel=0)

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_error = ""


def _reset_lock_after_fork() -> None:
    # A fork while another thread held the lock would leave it locked forever
    # in the child.  The native state is reset by its own pthread_atfork
    # handler (the child is not armed).
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_after_fork)


def library_path() -> Optional[Path]:
    """Where the native shared object is (``None`` when it was not built).

    Looked up in ``$KVMPV_CLEANER_LIB``, next to this module, then in every
    ``sys.path`` entry (so tests run from a source tree find the copy that
    ``pip install .`` built in site-packages).
    """
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    candidates = [Path(__file__).resolve().parent / "native" / LIBRARY_NAME]
    for entry in sys.path:
        if entry:
            candidates.append(Path(entry) / "kvmpv" / "native" / LIBRARY_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _preloaded() -> Optional[ctypes.CDLL]:
    """The copy already in the global namespace (LD_PRELOAD), whatever its path.

    A program launched with one kvmpv installation's library may import
    another installation's ``kvmpv``: using the preloaded copy keeps a single
    state, so ``arm()`` never creates a second cleaner.
    """
    try:
        glob = ctypes.CDLL(None, use_errno=True)
        glob.kvmpv_cleaner_abi  # noqa: B018 - AttributeError when not preloaded
    except (OSError, AttributeError):
        return None
    return glob


def _load() -> ctypes.CDLL:
    """Load the shared object once; raise HostError with the reason if we cannot."""
    global _lib, _lib_error
    if _lib is not None:
        return _lib
    if _lib_error:
        raise HostError(_lib_error)
    if not sys.platform.startswith("linux"):
        _lib_error = f"the cleaner needs Linux; this is {sys.platform}"
        raise HostError(_lib_error)
    lib = _preloaded()
    if lib is None:
        path = library_path()
        if path is None:
            _lib_error = (
                f"native cleaner not built: {LIBRARY_NAME} not found next to kvmpv "
                "(install kvmpv with pip so that setup.py compiles kvmpv/native/)"
            )
            raise HostError(_lib_error)
        try:
            # Under ``kvmpv launch`` the same file is already loaded as
            # LD_PRELOAD: dlopen returns that copy (one state, one cleaner).
            lib = ctypes.CDLL(str(path), use_errno=True)
        except OSError as err:
            _lib_error = f"cannot load {path}: {err}"
            raise HostError(_lib_error) from None
    lib.kvmpv_cleaner_arm.argtypes = [ctypes.c_int]
    lib.kvmpv_cleaner_arm.restype = ctypes.c_int
    lib.kvmpv_cleaner_disarm.argtypes = []
    lib.kvmpv_cleaner_disarm.restype = ctypes.c_int
    lib.kvmpv_cleaner_status.argtypes = [ctypes.POINTER(ctypes.c_int)]
    lib.kvmpv_cleaner_status.restype = ctypes.c_int
    lib.kvmpv_cleaner_abi.argtypes = []
    lib.kvmpv_cleaner_abi.restype = ctypes.c_int
    if lib.kvmpv_cleaner_abi() != 1:
        _lib_error = f"{lib._name or LIBRARY_NAME} has an unexpected ABI version"
        raise HostError(_lib_error)
    _lib = lib
    return lib


def native_available() -> tuple[bool, str]:
    """``(True, path)`` when the native cleaner can be used, else ``(False, reason)``."""
    try:
        with _lock:
            lib = _load()
    except HostError as err:
        return False, str(err)
    return True, str(lib._name or "preloaded " + LIBRARY_NAME)


def default_parallel() -> int:
    """CPUs this process may run on (its cpuset/affinity), capped at 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, DEFAULT_PARALLEL_CAP))


def _resolve_parallel(parallel: Optional[int]) -> int:
    if parallel is None:
        return 1
    if isinstance(parallel, bool) or not isinstance(parallel, int):
        raise UsageError(f"parallel must be an int or None, not {parallel!r}")
    if parallel == 0:
        return default_parallel()
    if parallel < 0 or parallel > MAX_PARALLEL:
        raise UsageError(f"parallel must be between 0 (auto) and {MAX_PARALLEL}, not {parallel}")
    return parallel


def arm(parallel: Optional[int] = None) -> CleanerStatus:
    """Create the cleaner for this process (idempotent) and return its status.

    ``parallel``: ``None`` or 1 -- the cleaner's exit frees the memory, as
    QEMU does; ``N`` > 1 -- N tasks release the private anonymous memory in
    parallel first; 0 -- N = the CPUs of this process's cpuset, capped at 8.

    Already armed: returns the current status unchanged (call ``disarm()``
    first to change ``parallel``).  Safe from any thread; the cleaner stays
    valid when the arming thread exits (no early teardown).

    Raises ``HostError`` when the native code is not available and
    ``SyscallError`` (call ``clone``, ``pidfd_open``, ``pipe2`` or ``mmap``)
    when creating the cleaner failed, e.g. EPERM/ENOSYS under a seccomp filter.
    """
    n = _resolve_parallel(parallel)
    with _lock:
        lib = _load()
        ret = lib.kvmpv_cleaner_arm(n)
        if ret < 0:
            err = -ret
            # The native code encodes the failing step in the high bits.
            call = _STEP_NAMES.get(err >> 16, "clone")
            raise SyscallError(call, err & 0xFFFF, "arming the teardown cleaner")
        return _status_locked(lib)


_STEP_NAMES = {0: "clone", 1: "pidfd_open", 2: "pipe2", 3: "mmap", 4: "clone"}


def disarm() -> bool:
    """Kill and reap the cleaner; return True if one was armed.

    Killing it while this process lives is cheap (it only drops a reference
    to the address space).  Safe from any thread; a no-op when not armed.
    """
    with _lock:
        try:
            lib = _load()
        except HostError:
            return False
        ret = lib.kvmpv_cleaner_disarm()
        if ret < 0:
            raise SyscallError("wait4", -ret, "reaping the teardown cleaner")
        return bool(ret > 0)


def _status_locked(lib: ctypes.CDLL) -> CleanerStatus:
    par = ctypes.c_int(0)
    pid = lib.kvmpv_cleaner_status(ctypes.byref(par))
    if pid <= 0:
        return _NOT_ARMED
    return CleanerStatus(armed=True, pid=int(pid), parallel=int(par.value))


def status() -> CleanerStatus:
    """This process's cleaner: armed or not, its pid, its parallelism.

    A cleaner that died (SIGKILLed, or exited after an ``exec``/closing of its
    notification pipe) is reaped here and reported as not armed.
    """
    with _lock:
        try:
            lib = _load()
        except HostError:
            return _NOT_ARMED
        return _status_locked(lib)


@dataclass(frozen=True)
class CleanerJob:
    """One task of a parallel release (``index`` 0: the cleaner itself) and the bytes
    it released, summed over the pieces it took."""

    index: int
    tid: int
    released: int  # bytes MADV_DONTNEED accepted


@dataclass(frozen=True)
class CleanerReport:
    """What the cleaner wrote on ``$KVMPV_CLEANER_REPORT_FD`` (``kvmpv/native/cleaner.c``,
    ``report()``): the helper tasks it started (slice -> tid), each task's bytes
    released, the helpers it reaped, the CPU each task released memory on (tid ->
    CPU; the cleaner's entry is the CPU of its final exit), and its own tid just
    before it exited (0 if it never got there: killed)."""

    started: dict[int, int]
    jobs: tuple[CleanerJob, ...]
    reaped: tuple[int, ...]
    exit_tid: int
    cpus: dict[int, int] = field(default_factory=dict)

    @property
    def helper_tids(self) -> set[int]:
        return set(self.started.values())

    @classmethod
    def parse(cls, text: str) -> CleanerReport:
        """Parse the report's lines; ValueError on a line it does not know."""
        started: dict[int, int] = {}
        jobs: list[CleanerJob] = []
        reaped: list[int] = []
        cpus: dict[int, int] = {}
        exit_tid = 0
        for line in text.splitlines():
            tag, *nums = line.split()
            values = [int(n) for n in nums]
            if tag == "started" and len(values) == 2:
                started[values[0]] = values[1]
            elif tag == "job" and len(values) == 3:
                jobs.append(CleanerJob(*values))
            elif tag == "reaped" and len(values) == 1:
                reaped.append(values[0])
            elif tag == "exit" and len(values) == 1:
                exit_tid = values[0]
            elif tag == "cpu" and len(values) == 2:
                cpus[values[0]] = values[1]  # the later line wins: the final exit
            else:
                raise ValueError(f"unknown cleaner report line {line!r}")
        return cls(started, tuple(jobs), tuple(reaped), exit_tid, cpus)


def cleaner_name(pid: int) -> str:
    """The ``comm`` of the cleaner of process ``pid``: ``cleanup/<pid>`` (15 chars max)."""
    return f"cleanup/{pid}"[:15]


def find_cleaners(pid: Optional[int] = None, proc: str = "/proc") -> list[int]:
    """Pids of live (or zombie) cleaner processes, from ``/proc/*/comm``.

    ``pid``: only the cleaners of that process (named ``cleanup/<pid>``);
    ``None``: every process named ``cleanup/*``.  For callers outside the
    armed process (benchmarks moving the cleaner to another cgroup, leftover
    checks).  The parallel mode's helper tasks carry the same name.
    """
    want = cleaner_name(pid) if pid is not None else None
    found = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/comm") as f:
                comm = f.read().rstrip("\n")
        except OSError:
            continue
        if (want is not None and comm == want) or (want is None and comm.startswith("cleanup/")):
            found.append(int(entry))
    return sorted(found)


__all__ = [
    "DEFAULT_PARALLEL_CAP",
    "LIBRARY_ENV",
    "LIBRARY_NAME",
    "MAX_PARALLEL",
    "REPORT_FD_ENV",
    "WCLONE",
    "CleanerJob",
    "CleanerReport",
    "CleanerStatus",
    "arm",
    "cleaner_name",
    "default_parallel",
    "disarm",
    "find_cleaners",
    "library_path",
    "native_available",
    "status",
]
