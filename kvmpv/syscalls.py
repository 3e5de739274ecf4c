# SPDX-License-Identifier: GPL-2.0-only
"""The one syscall boundary of kvmpv: open, ioctl, mmap, munmap, close.

All device access goes through a ``Syscalls`` object.  ``LinuxSyscalls`` is
the real kernel (ctypes with ``use_errno``); ``kvmpv.sim.SimulatedHost`` is a
simulated s390x kernel with the same methods.  Everything above this layer --
struct packing, errno handling, rc/rrc decoding -- is the same code for both.

Contract, identical for every implementation:

* ``ioctl(fd, request, arg)``: ``arg`` is an ``int`` (passed as unsigned long)
  or a writable buffer (ctypes structure, ``bytearray``) passed by address and
  updated in place.  Returns the ioctl's non-negative return value.  Failure
  raises ``OSError(errno, strerror)``; ``EINTR`` is *not* retried here: the
  callers that must retry do so explicitly (PV commands like QEMU, ``KVM_RUN``
  like the selftests' ``_vcpu_run``).  ctypes, unlike ``fcntl.ioctl`` on
  Python 3.14+ (gh-132768), never retries behind our back.
* ``mmap(fd, length, prot, flags, offset)`` returns the address as ``int``.

Guest RAM is not device access: it is anonymous memory (``kvmpv.memory``),
shared by both backends, so that the simulator's work on it is real.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
from typing import Any, Protocol, Union

from .closing import signals_held
from .errors import SyscallError

IoctlArg = Union[int, ctypes.Structure, ctypes.Union, ctypes.Array, bytearray]  # type: ignore[type-arg]

PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_FAILED = ctypes.c_void_p(-1).value


class Syscalls(Protocol):
    """What a kernel (real or simulated) offers kvmpv."""

    #: "kvm" for the real kernel, "sim" for the simulator (reported in every output).
    backend: str
    #: the KVM architecture behind it ("x86_64", "s390x"): decides the
    #: ``kvm_run`` layout and the vCPU protocol.
    arch: str

    def kick(self, vcpu_fd: int, thread: int) -> None:
        """Interrupt a ``KVM_RUN`` of ``vcpu_fd`` in thread ``thread`` (``threading.get_ident``)."""
        ...

    def open(self, path: str, flags: int) -> int: ...

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int: ...

    def mmap(self, fd: int, length: int, prot: int, flags: int, offset: int = 0) -> int: ...

    def munmap(self, addr: int, length: int) -> None: ...

    def close(self, fd: int) -> None: ...


_libc_lock = threading.Lock()
_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library with ``use_errno=True`` and typed prototypes (loaded once)."""
    global _libc
    with _libc_lock:
        if _libc is None:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
            lib.ioctl.restype = ctypes.c_int
            lib.mmap.argtypes = [
                ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                ctypes.c_int, ctypes.c_long,
            ]  # fmt: skip
            lib.mmap.restype = ctypes.c_void_p
            lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            lib.munmap.restype = ctypes.c_int
            lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            lib.madvise.restype = ctypes.c_int
            lib.syscall.restype = ctypes.c_long
            lib.__libc_current_sigrtmin.restype = ctypes.c_int
            _libc = lib
        return _libc


def buffer_address(arg: IoctlArg) -> int:
    """Address of a writable buffer or the integer itself (unsigned long)."""
    if isinstance(arg, int):
        return arg & ((1 << (8 * ctypes.sizeof(ctypes.c_ulong))) - 1)
    if isinstance(arg, bytearray):
        return ctypes.addressof((ctypes.c_char * len(arg)).from_buffer(arg))
    return ctypes.addressof(arg)


def raise_errno(err: int) -> None:
    raise OSError(err, os.strerror(err))


def kick_signal() -> int:
    """The signal that kicks a vCPU thread out of ``KVM_RUN`` (QEMU uses SIGUSR1, SIG_IPI).

    A real-time signal, ``SIGRTMIN + 2``, so that it never collides with the
    SIGUSR1/SIGUSR2 that ``kvmpv launch`` forwards to the program it runs;
    glibc's own use of the first real-time signals is already subtracted from
    ``__libc_current_sigrtmin()``.
    """
    return int(libc().__libc_current_sigrtmin()) + 2


def _kick_handler(signo: int, frame: object) -> None:
    """Does nothing: the signal exists to make KVM_RUN return EINTR in its thread."""


def ensure_kick_handler() -> int:
    """Install the no-op handler for ``kick_signal()`` (once; from the main thread).

    Without a handler the signal's default action would kill the process;
    with ``SIG_IGN`` it would never interrupt ``KVM_RUN``.  CPython installs
    handlers without SA_RESTART, and KVM_RUN returns -EINTR (never restarted)
    anyway.  Returns the signal number.
    """
    signo = kick_signal()
    if signal.getsignal(signo) is _kick_handler:
        return signo
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "the vCPU kick handler must be installed from the main thread first "
            "(kvmpv.syscalls.ensure_kick_handler)"
        )
    signal.signal(signo, _kick_handler)
    return signo


class LinuxSyscalls:
    """The real kernel."""

    backend = "kvm"
    arch = os.uname().machine

    def kick(self, vcpu_fd: int, thread: int) -> None:
        """Signal the thread that runs (or is about to run) ``KVM_RUN``, as QEMU's qemu_cpu_kick.

        The caller has set ``kvm_run.immediate_exit`` first, so a signal that
        lands just before the thread enters ``KVM_RUN`` is not lost.
        """
        signo = kick_signal()
        if signal.getsignal(signo) is not _kick_handler:
            raise RuntimeError("kick signal has no handler: call ensure_kick_handler() first")
        if thread:
            try:
                signal.pthread_kill(thread, signo)
            except ProcessLookupError:
                pass  # the thread is gone: nothing left to kick

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags | os.O_CLOEXEC)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        ret: int = libc().ioctl(fd, request, buffer_address(arg))
        if ret < 0:
            raise_errno(ctypes.get_errno())
        return ret

    def mmap(self, fd: int, length: int, prot: int, flags: int, offset: int = 0) -> int:
        addr = libc().mmap(None, length, prot, flags, fd, offset)
        if addr is None or addr == MAP_FAILED:
            raise_errno(ctypes.get_errno())
        assert addr is not None
        return int(addr)

    def munmap(self, addr: int, length: int) -> None:
        if libc().munmap(addr, length) != 0:
            raise_errno(ctypes.get_errno())

    def close(self, fd: int) -> None:
        os.close(fd)


#: The process-wide real kernel.
LINUX = LinuxSyscalls()


PR_SET_NAME = 15


def set_thread_name(name: str) -> None:
    """Set the calling thread's kernel name (``comm``, max 15 bytes) with prctl.

    Python < 3.14 never sets native thread names, and ``threading.Thread.name``
    is invisible to ``ps``/``/proc``; prctl(PR_SET_NAME) acts on the calling
    thread only, so this must run inside the thread being named.
    """
    raw = name.encode()[:15]
    lib = libc()
    if lib.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) != 0:
        raise SyscallError("prctl(PR_SET_NAME)", ctypes.get_errno(), name)


def thread_comm(tid: int) -> str:
    """The kernel name of thread ``tid`` of this process (``/proc/self/task/<tid>/comm``)."""
    with open(f"/proc/self/task/{tid}/comm") as f:
        return f.read().rstrip("\n")


class AtomicSyscalls:
    """A Python-implemented kernel (the simulator) made atomic w.r.t. SIGINT/SIGTERM.

    A real ioctl completes (or returns EINTR) before a signal handler runs,
    so a KeyboardInterrupt can never land half-way through KVM_PV_DISABLE.
    The simulator runs in Python, where it could; blocking the two signals
    for the duration of each call restores the kernel's semantics (the
    signal is handled right after the call returns, as on return to user
    mode).  Everything else (``kick``, fault injection) passes through.
    """

    def __init__(self, inner: Syscalls) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.arch = inner.arch

    def kick(self, vcpu_fd: int, thread: int) -> None:
        self.inner.kick(vcpu_fd, thread)

    def open(self, path: str, flags: int) -> int:
        with signals_held():
            return self.inner.open(path, flags)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        with signals_held():
            return self.inner.ioctl(fd, request, arg)

    def mmap(self, fd: int, length: int, prot: int, flags: int, offset: int = 0) -> int:
        with signals_held():
            return self.inner.mmap(fd, length, prot, flags, offset)

    def munmap(self, addr: int, length: int) -> None:
        with signals_held():
            self.inner.munmap(addr, length)

    def close(self, fd: int) -> None:
        with signals_held():
            self.inner.close(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
