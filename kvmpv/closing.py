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
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Optional, TypeVar

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
    """Block SIGINT/SIGTERM in the calling thread for the duration; they run after it.

    Two uses.  *Creating a resource*: CPython runs a pending signal's Python
    handler at the next bytecode boundary, which includes the one right after
    ``os.open()``/``ioctl(KVM_CREATE_VM)`` returned and before the fd is stored
    anywhere ``close()`` will find it; that fd then leaks (seen in CI: an fd
    on a cgroup's ``tasks`` file after a Ctrl-C).  Holding the signals from the
    system call to the bookkeeping makes the pair atomic, as the kernel's own
    syscalls are: the handler runs when the block ends.  *Starting a thread*:
    threads inherit the creating thread's mask, so a thread started inside
    the block never takes the process-directed SIGINT, and the kernel delivers
    it to the main thread (QEMU blocks signals in its helper threads for the
    same reason).  The two uses depend on each other: a block in the main
    thread holds a process-directed signal only if no other thread takes it,
    so every thread kvmpv starts is started inside one.

    Keep the block short: a Ctrl-C waits for it.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
