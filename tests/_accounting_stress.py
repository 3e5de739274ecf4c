# SPDX-License-Identifier: GPL-2.0-only
"""Stress child for tests/test_accounting_netlink.py (and by hand).

``python tests/_accounting_stress.py SECONDS [THREADS_PER_OP]`` loops every
netlink user of kvmpv.accounting -- ``capabilities()``, ``taskstats_status()``,
``TaskStatsClient`` queries, ``ProcConnector``, ``ExitWatcher``,
``ExitRecordListener`` -- in threads for SECONDS while a shell forks
short-lived processes (``/bin/true``) as fast as it can, then prints one JSON
line: per operation the calls completed, SKIPs (AccountingUnavailable, with
reasons), other exceptions, and the longest single call in seconds.  Runs in
a child process so that a hang can only ever kill this child, and
faulthandler dumps every thread's stack if it overstays.
"""

from __future__ import annotations

import collections
import faulthandler
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvmpv.accounting import (
    AccountingUnavailable,
    ExitRecordListener,
    ExitWatcher,
    ProcConnector,
    TaskStatsClient,
    capabilities,
)
from kvmpv.accounting.taskstats import taskstats_status


def _caps() -> None:
    capabilities()


def _ts_status() -> None:
    ok, why, _ver = taskstats_status()
    if not ok:
        raise AccountingUnavailable(why)


def _ts_client() -> None:
    with TaskStatsClient() as c:
        for _ in range(5):
            c.thread(threading.get_native_id())
            c.thread_group(os.getpid())


def _connector() -> None:
    with ProcConnector():
        pass


def _watcher() -> None:
    with ExitWatcher() as w:
        p = subprocess.Popen(["/bin/true"])
        w.watch(p.pid)
        w.wait(p.pid, timeout_s=10, reap_child=True)
        p.returncode = 0


def _listener() -> None:
    with ExitRecordListener() as lst:
        lst.records(0.01)


OPS: dict[str, Callable[[], None]] = {
    "capabilities": _caps,
    "taskstats_status": _ts_status,
    "TaskStatsClient": _ts_client,
    "ProcConnector": _connector,
    "ExitWatcher": _watcher,
    "ExitRecordListener": _listener,
}


def main() -> int:
    seconds = float(sys.argv[1])
    per_op = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    faulthandler.dump_traceback_later(seconds + 60, exit=True)
    done: collections.Counter[str] = collections.Counter()
    skips: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    errors: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    longest: dict[str, float] = collections.defaultdict(float)
    lock = threading.Lock()

    def loop(name: str, fn: Callable[[], None]) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                fn()
                outcome = ("done", "")
            except AccountingUnavailable as err:
                outcome = ("skip", err.reason)
            except Exception as err:
                outcome = ("error", repr(err))
            took = time.monotonic() - t0
            with lock:
                longest[name] = max(longest[name], took)
                if outcome[0] == "done":
                    done[name] += 1
                elif outcome[0] == "skip":
                    skips[name][outcome[1][:120]] += 1
                else:
                    errors[name][outcome[1][:120]] += 1

    flood = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
    threads = [
        threading.Thread(target=loop, args=(n, f), daemon=True)
        for n, f in OPS.items()
        for _ in range(per_op)
    ]
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        flood.kill()
        flood.wait()
    out: dict[str, Any] = {
        "seconds": round(time.monotonic() - t0, 2),
        "threads": len(threads),
        "ops": {
            n: {
                "done": done[n],
                "skips": dict(skips[n]),
                "errors": dict(errors[n]),
                "longest_s": round(longest[n], 3),
            }
            for n in OPS
        },
        "fds_left": len(os.listdir("/proc/self/fd")),
        "threads_left": threading.active_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
