# SPDX-License-Identifier: GPL-2.0-only
"""Test-case results as data: one model rendered as KTAP, JUnit XML and JSON.

Any kvmpv command that reports pass/fail/skip cases (``check``, ``exercise``)
builds a ``RunResult`` of ``CaseResult`` objects and hands it to
``kvmpv.report.ktap``, ``kvmpv.report.junit`` or ``RunResult.to_json()``.
Nothing here does I/O except writing a file the caller named.

Status priority follows KUnit's ``TestCounts.get_status()`` and kselftest's
exit codes: a bail-out, an error or a failure makes the run fail (exit 1); a
run where every case was skipped (or there were none) is a skip (exit 4,
``KSFT_SKIP``); otherwise it passed (exit 0).
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import EXIT_FAIL, EXIT_OK, EXIT_SKIP, UsageError


class Status(str, enum.Enum):
    """Result of one case; the values are the KTAP/JSON spelling."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    XFAIL = "xfail"
    XPASS = "xpass"
    #: The case could not be judged (the harness or the check itself broke).
    ERROR = "error"

    @property
    def ok(self) -> bool:
        """KTAP prints ``ok`` for pass, skip and xfail (kselftest.h)."""
        return self in (Status.PASS, Status.SKIP, Status.XFAIL)


@dataclass
class CaseResult:
    """One case: its name, outcome and the diagnostics printed before its result line.

    ``backend`` ("kvm" or "sim") is part of the printed name, so that no
    simulated result can be mistaken for a real one in any output.
    """

    name: str
    status: Status
    reason: str = ""
    backend: str = ""
    diagnostics: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name as printed in KTAP: ``sim: prepare_success`` (backend first)."""
        return f"{self.backend}: {self.name}" if self.backend else self.name

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "backend": self.backend or None,
            "status": self.status.value,
            "reason": self.reason or None,
            "duration_s": round(self.duration_s, 6),
            "diagnostics": list(self.diagnostics),
        }
        if self.properties:
            out["properties"] = dict(self.properties)
        return out


@dataclass
class Counts:
    """Per-status totals, the ``# Totals:`` line of kselftest."""

    passed: int = 0
    failed: int = 0
    xfail: int = 0
    xpass: int = 0
    skipped: int = 0
    errors: int = 0

    def add(self, status: Status) -> None:
        if status is Status.PASS:
            self.passed += 1
        elif status is Status.FAIL:
            self.failed += 1
        elif status is Status.XFAIL:
            self.xfail += 1
        elif status is Status.XPASS:
            self.xpass += 1
        elif status is Status.SKIP:
            self.skipped += 1
        else:
            self.errors += 1

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.xfail + self.xpass + self.skipped + self.errors

    def totals_line(self) -> str:
        # Spelled exactly as ksft_print_cnts() in kselftest.h.
        return (
            f"# Totals: pass:{self.passed} fail:{self.failed} xfail:{self.xfail} "
            f"xpass:{self.xpass} skip:{self.skipped} error:{self.errors}"
        )

    def exit_code(self, *, bailed_out: bool = False, planned: Optional[int] = None) -> int:
        """0 pass, 1 fail, 4 everything skipped (kselftest exit codes)."""
        if bailed_out or self.failed or self.errors or self.xpass:
            return EXIT_FAIL
        if planned is not None and planned != self.total:
            return EXIT_FAIL  # "Planned tests != run tests"
        if self.passed + self.xfail == 0:
            return EXIT_SKIP
        return EXIT_OK

    def to_dict(self) -> dict[str, int]:
        return {
            "pass": self.passed,
            "fail": self.failed,
            "xfail": self.xfail,
            "xpass": self.xpass,
            "skip": self.skipped,
            "error": self.errors,
        }


@dataclass
class RunResult:
    """A whole run: header diagnostics, the cases, and how it ended.

    ``skip_all`` is a whole-run skip decided before any case ran (KTAP
    ``1..0 # SKIP reason``); ``bail_out`` is an abort after some cases
    (``Bail out! reason``, e.g. SIGTERM).  ``planned`` defaults to the number
    of cases; a run that stopped early planned more than it ran.
    """

    suite: str
    cases: list[CaseResult] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    planned: Optional[int] = None
    skip_all: str = ""
    bail_out: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    #: the run was stopped by SIGINT/SIGTERM: the report counts what ran
    interrupted: bool = False

    @property
    def counts(self) -> Counts:
        counts = Counts()
        for case in self.cases:
            counts.add(case.status)
        return counts

    @property
    def plan(self) -> int:
        return len(self.cases) if self.planned is None else self.planned

    @property
    def exit_code(self) -> int:
        if self.skip_all and not self.cases:
            return EXIT_SKIP
        return self.counts.exit_code(bailed_out=bool(self.bail_out), planned=self.plan)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"suite", "results": [...], "totals", "exit_code", ...}``.

        ``results`` items carry ``name``, ``backend``, ``status``, ``reason``
        as the results-file schema (``report/schema/results-v1.json``,
        ``$defs/check``) requires.
        """
        return {
            "suite": self.suite,
            "plan": self.plan,
            "header": list(self.header),
            "results": [case.to_dict() for case in self.cases],
            "totals": self.counts.to_dict(),
            "skip_all": self.skip_all or None,
            "bail_out": self.bail_out or None,
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 6),
            "properties": dict(self.properties),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"


def ensure_writable(path: str) -> None:
    """Refuse an output path that cannot be written, before any work (``UsageError``).

    Creates nothing that stays: a test file in the target directory,
    removed at once (``write_text`` later replaces the target atomically).
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"cannot write {path}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".kvmpv-probe-", dir=directory)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
    os.close(fd)
    os.unlink(tmp)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename): no half files after SIGTERM.

    An unwritable path is the user's input error (``UsageError``, exit 2).
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".kvmpv-", dir=directory)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
    try:
        # mkstemp makes the file 0600; a report is for others too (a CI
        # artifact collector, a colleague): the mode open() would have given.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        _unlink_quietly(tmp)
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _umask() -> int:
    """The process umask, read without changing it (os.umask() would, racing other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = ["CaseResult", "Counts", "RunResult", "Status", "write_text"]
