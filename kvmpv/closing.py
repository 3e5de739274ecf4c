# SPDX-License-Identifier: GPL-2.0-only
"""``Closing``: the context-manager protocol for handles with an idempotent ``close()``.

Every kvmpv resource (fds, mappings, netlink sockets, watchers) closes
deterministically in ``close()``, which may be called twice on cleanup
paths; ``with`` just calls it.  ``signals_held()`` makes creating a resource
and recording it for ``close()`` one step as far as SIGINT/SIGTERM are
concerned.  No I/O here.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Optional, TypeVar

from .errors import Interrupted

_T = TypeVar("_T", bound="Closing")


class Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


#: The signals CPython turns into exceptions in the main thread
#: (KeyboardInterrupt, and kvmpv's ``Interrupted`` for SIGTERM); every helper
#: thread kvmpv starts blocks them, and the cleanup paths run in the main thread.
MAIN_THREAD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the duration; they take effect after it.

    The one way kvmpv defers these signals.  Three uses.  *Creating a
    resource*: CPython runs a pending signal's Python handler at the next
    bytecode boundary, which includes the one right after ``os.open()`` /
    ``ioctl(KVM_CREATE_VM)`` returned and before the fd is stored anywhere
    ``close()`` will find it; that fd then leaks (seen in CI: an fd on a
    cgroup's ``tasks`` file after a Ctrl-C).  Holding the signals from the
    system call to the bookkeeping makes the pair atomic, as the kernel's own
    syscalls are.  *Starting a thread*: threads inherit the creating thread's
    mask, so a thread started inside the block never takes the
    process-directed SIGINT, and the kernel delivers it to the main thread
    (QEMU blocks signals in its helper threads for the same reason).
    *Cleaning up*: a second Ctrl-C must not leave a VM fd, a running PERFORM,
    a child process or a cgroup behind.

    Two mechanisms, because each covers what the other cannot.  The signal
    mask of the calling thread (the first two uses).  And, in the main thread,
    the Python-level handlers swapped for a recorder: a thread kvmpv did not
    start (a library's) may not block the signals and take one, and CPython
    would then run the real handler in the main thread in the middle of the
    block.  On leaving, the handlers come back first, then the mask (what the
    kernel kept pending is delivered to the real handlers), then whatever the
    recorder saw is raised again.  Nested blocks hand everything to the
    outermost one.

    Keep the block short: a Ctrl-C waits for it.
    """
    pending: list[int] = []
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def record(signo: int, frame: Optional[FrameType]) -> None:
            pending.append(signo)

        for signo in MAIN_THREAD_SIGNALS:
            prev = signal.getsignal(signo)
            if prev not in (signal.SIG_IGN, None):
                saved[signo] = prev
                signal.signal(signo, record)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    try:
        yield
    finally:
        for held, prev in saved.items():
            signal.signal(held, prev)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if pending:
            signal.raise_signal(pending[0])


class CompletionThread(threading.Thread):
    """A daemon thread whose end is its own flag, ``done``: the one way kvmpv
    waits for a thread it started (a vCPU's KVM_RUN, PERFORM, a check's worker).

    Never ``Thread.join()``/``is_alive()`` to decide that a thread has ended:
    on CPython 3.9.8-3.12 a KeyboardInterrupt that interrupts ``join()``
    marks a thread that is still running as stopped (gh-90882, from the
    bpo-45274 fix: the interrupted join releases the tstate lock the live
    thread holds), after which ``join()`` returns at once and ``is_alive()``
    is False -- and the caller would close a VM fd or unmap guest memory
    under a running ioctl.  ``done`` is set when ``target`` returns or raises,
    whatever happens; ``result``/``error`` keep what it gave.  With
    ``reraise`` an exception also goes to ``threading.excepthook`` (a bug in
    a body that records its own outcome must not pass silently).
    ``start()`` starts it with SIGINT/SIGTERM blocked, which it inherits, so
    that the main thread takes them (see ``signals_held``).
    """

    def __init__(self, target: Callable[[], Any], name: str, *, reraise: bool = False) -> None:
        super().__init__(name=name, daemon=True)
        self._body = target
        self._reraise = reraise
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def start(self) -> None:
        with signals_held():
            super().start()

    def run(self) -> None:
        try:
            self.result = self._body()
        except BaseException as exc:
            self.error = exc
            if self._reraise:
                raise
        finally:
            self.done.set()


def raise_interrupted(signo: int, frame: Optional[FrameType]) -> None:
    """A SIGTERM handler: turn the signal into ``Interrupted`` in the main
    thread, so that ``finally`` blocks and context managers clean up (the
    default action would end the process with nothing removed)."""
    raise Interrupted(signo)
