# SPDX-License-Identifier: GPL-2.0-only
"""The simulator's sleeping locks: ``mm->mmap_lock`` (a reader-writer lock with the
rwsem's rules) and ``CountingMutex`` (``kvm->lock``, ``vcpu->mutex``).

Python-level only (holding one does not hold the GIL); the simulated
kernel's page walks read-lock ``mmap_lock``, ``munmap`` of guest memory
write-locks it.  Each lock counts the threads blocked on it and announces
every change on a condition variable, so that a test or a check waits for
"PERFORM is blocked on kvm->lock" as a state the simulator reports, never by
sleeping and hoping.  Touches nothing.
"""

from __future__ import annotations

import threading


class MmapLock:
    """A reader-writer lock standing for ``mm->mmap_lock`` (an rw_semaphore).

    Readers: page walks (PERFORM, DISABLE, PREPARE's lower 2 GiB), guest
    faults/imports, one batch or slice at a time.  Writer: ``munmap`` of guest
    memory.  A waiting writer holds off new readers (as the rwsem does), so a
    walk taking the lock per batch cannot starve an unmap; a thread that
    already reads may read again (no self-deadlock behind a waiting writer).
    Only a Python-level lock: holding it does not hold the GIL, the memsets
    run in parallel.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread ident -> nesting depth
        self._writer = 0  # thread ident of the writer, 0 if none
        self._writers_waiting = 0
        self._readers_waiting = 0

    def wait_blocked(self, *, readers: int = 0, writers: int = 0, timeout: float = 10.0) -> bool:
        """Wait until at least ``readers`` readers and ``writers`` writers are blocked
        waiting for the lock; False on timeout.  Woken by the lock itself, no polling."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._readers_waiting >= readers and self._writers_waiting >= writers,
                timeout,
            )

    def read(self) -> MmapRead:
        return MmapRead(self)

    def write(self) -> MmapWrite:
        return MmapWrite(self)

    def acquire_read(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if me in self._readers:
                self._readers[me] += 1
                return
            if self._writer or self._writers_waiting:
                self._readers_waiting += 1
                self._cond.notify_all()  # for wait_blocked()
                try:
                    while self._writer or self._writers_waiting:
                        self._cond.wait()
                finally:
                    self._readers_waiting -= 1
            self._readers[me] = 1

    def release_read(self) -> None:
        me = threading.get_ident()
        with self._cond:
            depth = self._readers[me] - 1
            if depth:
                self._readers[me] = depth
                return
            del self._readers[me]
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if me in self._readers or self._writer == me:
                raise RuntimeError("mmap_lock: write while holding it (self-deadlock)")
            self._writers_waiting += 1
            self._cond.notify_all()  # for wait_blocked()
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me

    def release_write(self) -> None:
        with self._cond:
            self._writer = 0
            self._cond.notify_all()


class CountingMutex:
    """A mutex (``kvm->lock``, ``vcpu->mutex``) counting the threads blocked on it.

    ``waiters`` changes under ``changed``'s lock and every change is notified
    on it (the host's condition variable: its lock is a leaf, held only to
    count).  The uncontended path takes no other lock.
    """

    def __init__(self, changed: threading.Condition) -> None:
        self._mutex = threading.Lock()
        self._changed = changed
        self.waiters = 0

    def acquire(self) -> None:
        if self._mutex.acquire(blocking=False):
            return
        with self._changed:
            self.waiters += 1
            self._changed.notify_all()
        try:
            self._mutex.acquire()
        finally:
            with self._changed:
                self.waiters -= 1
                self._changed.notify_all()

    def release(self) -> None:
        self._mutex.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class MmapRead:
    __slots__ = ("_lock",)

    def __init__(self, lock: MmapLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire_read()

    def __exit__(self, *exc: object) -> None:
        self._lock.release_read()


class MmapWrite:
    __slots__ = ("_lock",)

    def __init__(self, lock: MmapLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire_write()

    def __exit__(self, *exc: object) -> None:
        self._lock.release_write()


__all__ = ["CountingMutex", "MmapLock", "MmapRead", "MmapWrite"]
