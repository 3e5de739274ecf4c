# SPDX-License-Identifier: GPL-2.0-only
"""TAP output as kselftest prints it (``kselftest.h``, ``net/lib/py/ksft.py``).

``KtapWriter`` streams one line at a time and flushes each one, so a run that
is killed still leaves every finished result on the terminal or in the CI
log (kselftest forces stdout to line buffering for the same reason)::

    TAP version 13
    1..3
    # diagnostics of the run
    ok 1 kvm: pv_caps_report_host
    # Check| check.py:120 in check_prepare: rc: expected 1, got 0
    not ok 2 sim: prepare_success
    ok 3 sim: perform_fast # SKIP needs Destroy-Fast
    # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0

The header is kselftest's ``TAP version 13``: the kernel's ``kunit_parser.py``
reads it as it reads ``KTAP version 1``, and generic TAP consumers (``tap.py``,
``prove``) accept only it (with a ``KTAP`` first line they find the plan
"not at the beginning").  XPASS is ``ok ... # XPASS`` and XFAIL ``ok ... #
XFAIL``, as ``ksft_test_result_xpass()``/``_xfail()`` print them.

A whole-run skip before any case is ``1..0 # SKIP reason`` (kselftest's
``ksft_exit_skip()``); an abort is ``Bail out! reason`` followed by the totals
(``ksft_exit_fail_msg()``).  Free text goes through ``diag()``, which
prefixes every line with ``#`` so that it can never be read as a result; control
characters become ``\\xNN`` and a line that would read as kunit's ``# Subtest:``
header is defused, so no diagnostic can break a parser.

The state (counters, plan) lives in the writer object, never in module
globals, so several runs can share a process (``kvmpv exercise``, pytest).
``render()`` turns a finished ``RunResult`` into exactly the text a
``KtapWriter`` streamed for it.
"""

from __future__ import annotations

import io
from typing import Optional, TextIO

from .cases import CaseResult, Counts, RunResult, Status

KTAP_VERSION_LINE = "TAP version 13"


def _printable(text: str) -> str:
    """Control characters (which TAP parsers choke on) as ``\\xNN``; tabs stay."""
    return "".join(
        ch if ch == "\t" or (" " <= ch and ch != "\x7f") else f"\\x{ord(ch):02x}" for ch in text
    )


def _one_line(text: str) -> str:
    """Directive reasons and names must stay on their result line."""
    return _printable(" ".join(text.split()))


def result_line(number: int, case: CaseResult) -> str:
    """``ok 3 sim: name``, ``ok 4 kvm: name # SKIP reason``, ``not ok 5 ...``."""
    # kselftest prints an unexpected pass as "ok ... # XPASS": the directive
    # carries the news, the line is not a failure to a TAP consumer.
    prefix = "ok" if case.status.ok or case.status is Status.XPASS else "not ok"
    line = f"{prefix} {number} {_one_line(case.label).replace('#', '_')}"
    directive = {
        Status.SKIP: "SKIP",
        Status.XFAIL: "XFAIL",
        Status.XPASS: "XPASS",
        Status.ERROR: "ERROR",
    }.get(case.status)
    if directive:
        reason = _one_line(case.reason)
        line += f" # {directive} {reason}" if reason else f" # {directive}"
    return line


class KtapWriter:
    """Writes one KTAP document to ``stream``, line by line, flushing each line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.counts = Counts()
        self.number = 0
        self.planned: Optional[int] = None
        self.bailed_out = ""
        self.skipped_all = ""

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def header(self) -> None:
        self._line(KTAP_VERSION_LINE)

    def plan(self, count: int) -> None:
        self.planned = count
        self._line(f"1..{count}")

    def diag(self, text: str) -> None:
        """Print ``text`` as diagnostics, ``#`` before every line (``ksft_pr``)."""
        for line in text.splitlines() or [""]:
            line = _printable(line)
            if line.lstrip().startswith("Subtest:"):
                line = "| " + line  # "# Subtest:" opens a subtest for kunit_parser
            self._line(f"# {line}".rstrip())

    def result(self, case: CaseResult) -> int:
        """Print the case's diagnostics, then its result line; returns its number."""
        for text in case.diagnostics:
            self.diag(text)
        self.number += 1
        self.counts.add(case.status)
        self._line(result_line(self.number, case))
        return self.number

    def skip_all(self, reason: str) -> None:
        """Whole-run skip, before any plan: ``1..0 # SKIP reason``."""
        self.skipped_all = reason or "skipped"
        self._line(f"1..0 # SKIP {_one_line(self.skipped_all)}")

    def bail_out(self, reason: str) -> None:
        self.bailed_out = reason or "aborted"
        self._line(f"Bail out! {_one_line(self.bailed_out)}")

    def totals(self) -> None:
        if self.planned is not None and self.planned != self.number:
            # kselftest.h ksft_print_cnts(): say so instead of hiding a short run.
            self._line(f"# Planned tests != run tests ({self.planned} != {self.number})")
        self._line(self.counts.totals_line())

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail (or bail-out, or short run), 4 everything skipped."""
        if self.skipped_all and not self.number:
            return Counts().exit_code()  # 4: nothing ran
        return self.counts.exit_code(bailed_out=bool(self.bailed_out), planned=self.planned)


def write_run(writer: KtapWriter, run: RunResult) -> None:
    """Stream a finished run through ``writer`` (what a live run prints)."""
    writer.header()
    if run.skip_all and not run.cases:
        for text in run.header:
            writer.diag(text)
        writer.skip_all(run.skip_all)
        return
    writer.plan(run.plan)
    for text in run.header:
        writer.diag(text)
    for case in run.cases:
        writer.result(case)
    if run.bail_out:
        writer.bail_out(run.bail_out)
    writer.totals()


def render(run: RunResult) -> str:
    """The KTAP text of a finished run."""
    buf = io.StringIO()
    write_run(KtapWriter(buf), run)
    return buf.getvalue()


__all__ = ["KTAP_VERSION_LINE", "KtapWriter", "render", "result_line", "write_run"]
