# SPDX-License-Identifier: GPL-2.0-only
"""``mm->mmap_lock`` for the simulator: a reader-writer lock with the rwsem's rules.

Python-level only (holding it does not hold the GIL); the simulated
kernel's page walks read-lock it, ``munmap`` of guest memory write-locks it.
Touches nothing.
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
            while self._writer or self._writers_waiting:
                self._cond.wait()
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


__all__ = ["MmapLock", "MmapRead", "MmapWrite"]
