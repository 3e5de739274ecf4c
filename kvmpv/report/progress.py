# SPDX-License-Identifier: GPL-2.0-only
"""Progress lines: live on a terminal, plain step lines in CI logs.

On a TTY each message overwrites the previous one (``\\r`` + clear to end of
line), so long steps show where they are without flooding scrollback.  On
anything else (CI logs, files, pipes) only step boundaries are printed, one
plain line each, and the fine-grained messages are dropped.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    def __init__(self, stream: Optional[TextIO] = None, *, live: Optional[bool] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._step = ""
        self._t0 = time.monotonic()
        self._dirty = False

    def step(self, name: str) -> None:
        """Start a step: always printed, on a terminal and in logs."""
        self._clear()
        self._step = name
        self._t0 = time.monotonic()
        print(f"== {name}", file=self.stream, flush=True)

    def __call__(self, message: str) -> None:
        """A fine-grained message within the current step (terminal only)."""
        if not self.live:
            return
        elapsed = time.monotonic() - self._t0
        self.stream.write(f"\r\x1b[K   [{elapsed:6.1f}s] {message}")
        self.stream.flush()
        self._dirty = True

    def done(self, summary: str = "") -> None:
        self._clear()
        elapsed = time.monotonic() - self._t0
        tail = f": {summary}" if summary else ""
        print(f"   {self._step} done in {elapsed:.1f}s{tail}", file=self.stream, flush=True)

    def _clear(self) -> None:
        if self._dirty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._dirty = False
