# SPDX-License-Identifier: GPL-2.0-only
"""The kvmpv exception family and the documented exit codes.

Every error kvmpv raises is a ``KvmpvError``; a signal is not an error:
``Interrupted`` (SIGTERM) is a ``BaseException`` like ``KeyboardInterrupt``.
Errors from the kernel name the call that failed, never its number, in the
shape of the KVM selftests' ``KVM_IOCTL_ERROR()``: "KVM_CREATE_VM failed:
errno 13 (EACCES) Permission denied".  PV commands add the Ultravisor
rc/rrc.  The CLI maps each class to one exit code and prints its message on
one line; nothing else exits.
"""

from __future__ import annotations

import errno as _errno
import os
import sys
from typing import Optional

# Exit codes, documented in the README's table and in ``kvmpv --help`` (tests/test_docs.py).
EXIT_OK = 0
EXIT_FAIL = 1  # a check failed, a verdict is wrong, a regression was found
EXIT_USAGE = 2  # bad command line or bad input file
EXIT_ENV = 3  # the host cannot do it: no /dev/kvm, no permission, not Linux
EXIT_SKIP = 4  # everything was skipped (kselftest KSFT_SKIP)
EXIT_INTERNAL = 70  # a bug in kvmpv (sysexits EX_SOFTWARE): never a verdict
EXIT_INTERRUPTED = 130  # SIGINT (128 + 2), after cleanup
EXIT_TERMINATED = 143  # SIGTERM (128 + 15), after cleanup


def errno_name(err: int) -> str:
    """``EINVAL`` for 22; ``errno 999`` for values the platform does not name."""
    return _errno.errorcode.get(err, f"errno {err}")


class KvmpvError(Exception):
    """Base of every error kvmpv raises on purpose."""

    exit_code = EXIT_FAIL


class UsageError(KvmpvError):
    """Bad input from the user (arguments, size strings, files)."""

    exit_code = EXIT_USAGE


class HostError(KvmpvError):
    """The host lacks what the request needs (device, permission, OS, memory)."""

    exit_code = EXIT_ENV


class Interrupted(BaseException):
    """A run stopped by SIGTERM (or SIGINT), raised after cleanup.

    A ``BaseException``, like the ``KeyboardInterrupt`` it stands beside, and
    deliberately outside the ``KvmpvError`` family: code that handles an error
    (``except KvmpvError``: the probe turning a failed ioctl into "not
    usable", a check turning one into FAIL) must never handle the signal.  As
    a ``KvmpvError`` it did: a SIGTERM landing in ``probe_host()`` at the start
    of ``kvmpv exercise``'s reboot step became "kvmpv probe failed", the
    simulator was chosen, and the run went on to exit 0 (CI, twice; the
    handler runs at whatever bytecode the main thread is at).  The CLI maps it
    to ``exit_code`` (128 + signal) like any error.
    """

    exit_code: int

    def __init__(self, signo: int) -> None:
        self.signo = signo
        self.exit_code = 128 + signo
        super().__init__(f"interrupted by signal {signo}")


class SyscallError(KvmpvError, OSError):
    """A system call (open, mmap, madvise, ...) failed.

    Subclasses ``OSError`` so that ``err.errno`` works and ``except OSError``
    still catches it.
    """

    def __init__(self, call: str, err: int, detail: str = "") -> None:
        OSError.__init__(self, err, os.strerror(err))
        self.call = call
        self.detail = detail
        if err in (_errno.EACCES, _errno.EPERM, _errno.ENOENT, _errno.ENODEV):
            self.exit_code = EXIT_ENV

    def __str__(self) -> str:
        where = f" ({self.detail})" if self.detail else ""
        return (
            f"{self.call} failed{where}: errno {self.errno} "
            f"({errno_name(self.errno or 0)}) {self.strerror}"
        )


class KvmError(SyscallError):
    """A KVM ioctl failed.  ``ioctl`` is the kernel name of the request."""

    def __init__(self, ioctl: str, err: int, detail: str = "") -> None:
        super().__init__(ioctl, err, detail)
        self.exit_code = EXIT_FAIL

    @property
    def ioctl(self) -> str:
        return self.call


class PvCmdError(KvmError):
    """``KVM_S390_PV_COMMAND`` failed; carries the sub-command and UV rc/rrc.

    ``rc``/``rrc`` are what the kernel copied back (0 means no Ultravisor call
    was executed, since the caller zeroes them before the ioctl).
    """

    def __init__(self, ioctl: str, cmd: str, err: int, rc: int, rrc: int) -> None:
        self.cmd = cmd
        self.rc = rc
        self.rrc = rrc
        super().__init__(ioctl, err)

    def __str__(self) -> str:
        uv = f"UV rc 0x{self.rc:04x} rrc 0x{self.rrc:04x}" if self.rc else "no UV call executed"
        return (
            f"{self.call}({self.cmd}) failed: errno {self.errno} "
            f"({errno_name(self.errno or 0)}) {self.strerror}; {uv}"
        )


def require_linux() -> None:
    """Raise ``HostError`` on anything but Linux (kvmpv speaks Linux uapi only)."""
    if not sys.platform.startswith("linux"):
        raise HostError(f"kvmpv needs Linux; this is {sys.platform}")


def exit_code_of(exc: Optional[BaseException]) -> int:
    if exc is None:
        return EXIT_OK
    if isinstance(exc, KvmpvError):
        return exc.exit_code
    return EXIT_FAIL
