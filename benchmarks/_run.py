# SPDX-License-Identifier: GPL-2.0-only
"""What the big-memory benchmarks share: the machine's big-memory lock, the
MemAvailable check before a run, and one ``kvmpv`` run that writes JSON.

Imported by the scripts next to it (``python benchmarks/NAME.py`` puts this
directory first on ``sys.path``); not part of the kvmpv package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, ROOT)

from kvmpv.memory import mem_available  # noqa: E402
from kvmpv.units import format_size  # noqa: E402

#: the shared machine's big-memory lock: one run above 2 GiB at a time
LOCK = "/tmp/kvmpv-bigmem.lock"
#: left free beside the run: the interpreter, page tables, everyone else
HEADROOM = 1 << 30


def need_memory(size: int) -> None:
    """Exit 3 unless ``size`` plus the headroom is available now."""
    avail = mem_available()
    if avail < size + HEADROOM:
        print(
            f"MemAvailable {format_size(avail)} < {format_size(size)} + 1G headroom: "
            "not running (another big run in progress?)",
            file=sys.stderr,
        )
        sys.exit(3)


def run_kvmpv(args: list[str], path: str) -> dict[str, Any]:
    """Run ``kvmpv ARGS`` from this tree in its own process; its JSON at ``path``."""
    cmd = [sys.executable, "-m", "kvmpv", *args]
    print("$ kvmpv " + " ".join(args), flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    print(f"  (exit {proc.returncode}, {time.monotonic() - t0:.1f} s)", flush=True)
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        sys.exit(f"no results from {' '.join(cmd)}")
    with open(path) as f:
        doc: dict[str, Any] = json.load(f)
    return doc
