# SPDX-License-Identifier: GPL-2.0-only
"""Child program for tests/test_teardown.py: populate memory, arm, then act on command.

Run as ``python _cleaner_child.py '<json config>'``.  Prints one JSON object per
line on stdout; reads commands (one per line) on stdin.  Config keys: ``size``
(bytes to populate), ``parallel`` (arm's argument), ``scenario``:

* ``main`` -- arm in the main thread, report, then one command:
  ``exit``, ``exec`` (become ``sleep 30``), ``fork-exit``/``fork-exec`` (fork a
  sleeping child first), ``close-stdout`` (close fd 1, then wait for ``exit``),
  ``check`` (report memory intact and cleaner state, then wait again), ``wait``.
* ``thread-arms`` -- a worker thread arms and exits; the main thread lives on.
* ``leader-exits`` -- arm, then the main thread calls pthread_exit(); a worker
  thread checks the memory after ``linger`` seconds and exits the process.
* ``mappings`` -- like ``main``, with a shared anonymous mapping, a private
  file mapping and (``kvm``: true) a KVM vCPU's kvm_run mapped; reports
  /proc/self/maps after arming.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time

from kvmpv import teardown
from kvmpv.memory import GuestMemory

PATTERN = 0x5A
KEEP: list[object] = []  # mappings and handles that must live until the exit


def report(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def intact(mem: GuestMemory) -> bool:
    """Sample a few offsets: a parallel release before the exit would zero them."""
    for off in (0, mem.size // 2, mem.size - 64):
        if ctypes.string_at(mem.addr + off, 64) != bytes([PATTERN]) * 64:
            return False
    return True


def sleeper() -> None:
    # A forked child that lives on, holding nothing of ours but what fork copied.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    time.sleep(30)
    os._exit(0)


def mappings(cfg: dict[str, object]) -> list[object]:
    """Mappings the parallel release must leave alone: shared anonymous,
    file-backed private (with copied-on-write pages), and a vCPU's kvm_run."""
    import mmap
    import tempfile

    keep: list[object] = []
    shared = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_SHARED)
    shared.write(b"s" * (4 << 20))
    keep.append(shared)
    f = tempfile.TemporaryFile()
    f.truncate(1 << 20)
    private_file = mmap.mmap(f.fileno(), 1 << 20, flags=mmap.MAP_PRIVATE)
    private_file.write(b"f" * (1 << 20))  # CoW: anonymous pages in a file VMA
    keep += [f, private_file]
    if cfg.get("kvm"):
        from kvmpv.kvm import Kvm

        kvm = Kvm()
        vm = kvm.vm_create()
        keep += [kvm, vm, vm.vcpu_add(0)]
    return keep


def main() -> None:
    cfg = json.loads(sys.argv[1])
    mem = GuestMemory(int(cfg.get("size", 16 << 20)))
    mem.fill(PATTERN)  # memset touches (populates) every page
    par = cfg.get("parallel")
    scenario = cfg.get("scenario", "main")
    if scenario == "thread-arms":
        box: dict[str, teardown.CleanerStatus] = {}
        t = threading.Thread(target=lambda: box.update(st=teardown.arm(par)))
        t.start()
        t.join()
        st = box["st"]
        report(pid=os.getpid(), cleaner=st.pid, parallel=st.parallel)
        sys.stdin.readline()
        report(intact=intact(mem), armed=teardown.status().armed)
        sys.stdin.readline()
        os._exit(0)
    if scenario == "leader-exits":
        st = teardown.arm(par)
        report(pid=os.getpid(), cleaner=st.pid, parallel=st.parallel)
        linger = float(cfg.get("linger", 0.3))

        def worker() -> None:
            time.sleep(linger)
            report(intact=intact(mem), armed=teardown.status().armed)
            os._exit(0)

        threading.Thread(target=worker).start()
        libc = ctypes.CDLL(None)
        libc.pthread_exit.argtypes = [ctypes.c_void_p]
        libc.pthread_exit(None)  # the thread-group leader leaves first
        return
    if scenario == "mappings":
        KEEP.extend(mappings(cfg))
    st = teardown.arm(par)
    report(pid=os.getpid(), cleaner=st.pid, parallel=st.parallel)
    if scenario == "mappings":
        report(maps=[line for line in open("/proc/self/maps").read().splitlines()])
    while True:
        cmd = sys.stdin.readline().strip()
        if cmd in ("exit", ""):
            os._exit(0)
        elif cmd == "exec":
            os.execv("/bin/sleep", ["sleep", "30"])
        elif cmd in ("fork-exit", "fork-exec"):
            child = os.fork()
            if child == 0:
                sleeper()
            report(forked=child)
            if cmd == "fork-exec":
                os.execv("/bin/sleep", ["sleep", "30"])
            os._exit(0)
        elif cmd == "close-stdout":
            os.close(1)
        elif cmd == "check":
            report(intact=intact(mem), armed=teardown.status().armed)
        elif cmd == "wait":
            time.sleep(60)


if __name__ == "__main__":
    main()
