# SPDX-License-Identifier: GPL-2.0-only
"""Child process for the accounting tests (run as a script, not collected).

touch SIZE  populate SIZE bytes of 4 KiB pages (THP off), print
            "touched", wait for a line on stdin, then _exit(0): the
            teardown of the address space happens in exit_mm().
burn MS     burn MS ms of user CPU, print "burnt", wait for a line, exit.
sleep       print "ready", wait for stdin to close.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    mode = sys.argv[1]
    if mode == "touch":
        from kvmpv.memory import GuestMemory

        size = int(sys.argv[2])
        mem = GuestMemory(size, thp=False)
        mem.populate()  # MADV_POPULATE_WRITE: no per-page Python loop
        if _rss() < size // 2:
            # qemu-user drops MADV_POPULATE_WRITE (a no-op): touch with memset.
            mem.fill(0x5A)
        print("touched", flush=True)
        sys.stdin.readline()
        os._exit(0)  # no munmap: leave the whole teardown to exit_mm()
    if mode == "burn":
        end = time.clock_gettime_ns(time.CLOCK_THREAD_CPUTIME_ID) + int(sys.argv[2]) * 1_000_000
        while time.clock_gettime_ns(time.CLOCK_THREAD_CPUTIME_ID) < end:
            pass
        print("burnt", flush=True)
        sys.stdin.readline()
        os._exit(0)
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
