# SPDX-License-Identifier: GPL-2.0-only
"""KCIDB I/O submissions: kvmpv's results as KernelCI's common database ingests them.

KCIDB (KernelCI's database; CKI and KernelCI submit to it) takes JSON
"I/O data" with ``version`` and lists of ``checkouts`` (the kernel source),
``builds`` (a kernel built from it) and ``tests`` (a test run on a build).
The schema is the ``kcidb-io`` package's (``kcidb_io/schema/v05_03.py``,
https://github.com/kernelci/kcidb-io); facts used here, from it:

* every id is ``ORIGIN:anything`` and ``origin`` matches ``^[a-z0-9_]+$``;
* a test ``path`` is dot-separated ``[a-zA-Z0-9_-]+`` nodes ("ltp.sem01");
* ``status`` is one of FAIL, ERROR, MISS, PASS, DONE, SKIP (that priority:
  MISS = did not run because the harness failed, DONE = ran and produced a
  measurement without judging the code);
* ``log_excerpt`` at most 16384 characters; no property may be null;
  ``misc`` objects are free-form.

kvmpv builds no kernel: the checkout and build stand for the kernel that
was running (its release and architecture), the tests are the checks and the
measurements.  Results from the simulated s390x kernel say so in their path
(``kvmpv.check.sim.NAME``), their ``comment`` and their ``misc``: they test
kvmpv's model of the kernel, not this host's kernel.

Nothing here validates against kcidb-io at run time (it is a test
dependency: ``tests/test_kcidb.py`` validates with its own validator), and
nothing here touches the host: data in, a file out.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any, Optional

from ..errors import UsageError
from ..stats import median, median_of
from ..units import format_size
from .cases import write_text

#: The schema version written (kcidb-io's LATEST when this was written).
VERSION = {"major": 5, "minor": 3}
DEFAULT_ORIGIN = "kvmpv"
ORIGIN_RE = re.compile(r"^[a-z0-9_]+$")
#: kcidb-io: "log_excerpt" maxLength
LOG_EXCERPT_MAX = 16384
_NODE_BAD = re.compile(r"[^a-zA-Z0-9_-]")

#: kvmpv case status -> KCIDB status.  xfail is an expected failure, which
#: kselftest counts as a pass; xpass fails the run (``Counts.exit_code``).
STATUS = {
    "pass": "PASS",
    "fail": "FAIL",
    "skip": "SKIP",
    "error": "ERROR",
    "xfail": "PASS",
    "xpass": "FAIL",
}

SIM_COMMENT = "SIMULATED: the simulated s390x kernel (kvmpv/sim), not this host's kernel"


def check_origin(origin: str) -> str:
    """``origin`` if KCIDB accepts it, else a one-line ``UsageError`` (exit 2)."""
    if not ORIGIN_RE.match(origin):
        raise UsageError(
            f"--kcidb-origin {origin!r}: a KCIDB origin is lowercase letters, digits and _ "
            "(^[a-z0-9_]+$)"
        )
    return origin


def check_build_id(build_id: str) -> str:
    """``build_id`` if it is a KCIDB id (``ORIGIN:rest``), else a one-line ``UsageError``."""
    origin, sep, rest = build_id.partition(":")
    if not (sep and ORIGIN_RE.match(origin) and "\0" not in rest):
        raise UsageError(
            f"--kcidb-build {build_id!r}: a KCIDB build id is ORIGIN:ID, the origin lowercase "
            "letters, digits and _"
        )
    return build_id


def node(text: str) -> str:
    """One path node: what KCIDB does not allow in a node becomes ``_`` (``1.5G`` -> ``1_5G``)."""
    return _NODE_BAD.sub("_", text) or "_"


def _excerpt(lines: Sequence[str]) -> str:
    """The log's tail within KCIDB's limit (the end says why a check failed)."""
    text = "\n".join(line.replace("\0", "\\x00") for line in lines)
    if len(text) <= LOG_EXCERPT_MAX:
        return text
    marker = "[... earlier lines cut ...]\n"
    return marker + text[-(LOG_EXCERPT_MAX - len(marker)) :]


def _drop_none(obj: dict[str, Any]) -> dict[str, Any]:
    """KCIDB: "no properties can be null" -- a missing value is an absent key."""
    return {k: v for k, v in obj.items() if v is not None}


class _Builder:
    """Ids and the shared parts of one submission."""

    def __init__(
        self, doc: dict[str, Any], origin: str, run_id: Optional[str], build_id: Optional[str]
    ) -> None:
        self.origin = check_origin(origin)
        self.run = run_id or uuid.uuid4().hex
        self.doc = doc
        host = doc.get("host") or {}
        self.arch = str(host.get("arch") or "unknown")
        self.release = str(host.get("kernel_release") or host.get("kernel") or "unknown")
        #: tests attached to a build another CI system submitted (its id, its
        #: origin), or to the build this submission describes itself
        self.attached = build_id is not None
        self.build_id = check_build_id(build_id) if build_id else f"{self.origin}:{self.run}-build"
        self.tests: list[dict[str, Any]] = []
        self._ids: set[str] = set()

    def environment(self, simulated: bool) -> dict[str, Any]:
        where = f"{self.arch} host, Linux {self.release}"
        misc: dict[str, Any] = {"arch": self.arch, "kernel_release": self.release}
        if simulated:
            misc["simulated"] = True
            return {"comment": f"{SIM_COMMENT}; run on a {where}", "misc": misc}
        return {"comment": where, "misc": misc}

    def test(
        self, path: str, status: str, *, simulated: bool = False, comment: str = "",
        duration: Optional[float] = None, log: Sequence[str] = (),
        number: Optional[dict[str, Any]] = None, misc: Optional[dict[str, Any]] = None,
    ) -> None:  # fmt: skip
        test_id = f"{self.origin}:{self.run}-{path}"
        n = 2
        while test_id in self._ids:  # the same check on the same backend twice
            test_id = f"{self.origin}:{self.run}-{path}-{n}"
            n += 1
        self._ids.add(test_id)
        if simulated:
            comment = f"{SIM_COMMENT}. {comment}" if comment else SIM_COMMENT
        self.tests.append(
            _drop_none(
                {
                    "id": test_id,
                    "build_id": self.build_id,
                    "origin": self.origin,
                    "path": path,
                    "status": status,
                    "comment": comment or None,
                    "duration": round(duration, 6) if duration is not None else None,
                    "log_excerpt": _excerpt(log) if log else None,
                    "number": number,
                    "environment": self.environment(simulated),
                    "start_time": self.doc.get("created"),
                    "misc": dict(misc or {}, simulated=simulated, kvmpv_run=self.run),
                }
            )
        )

    def submission(self) -> dict[str, Any]:
        if self.attached:  # the checkout and build are the other CI system's
            return {"version": dict(VERSION), "tests": list(self.tests)}
        checkout_id = f"{self.origin}:{self.run}"
        created = self.doc.get("created")
        misc = _drop_none(
            {
                "kvmpv_version": self.doc.get("kvmpv_version"),
                "command": self.doc.get("command"),
                "kernel_release": self.release,
                "interrupted": self.doc.get("interrupted"),
            }
        )
        checkout = _drop_none(
            {
                "id": checkout_id,
                "origin": self.origin,
                "comment": f"the running kernel, Linux {self.release} ({self.arch}); kvmpv "
                "builds no kernel, this checkout stands for the one it tested",
                "start_time": created,
                # no "valid": nothing was checked out (KCIDB: valid = the
                # source was checked out and its patches applied)
                "misc": misc,
            }
        )
        build = _drop_none(
            {
                "id": self.build_id,
                "checkout_id": checkout_id,
                "origin": self.origin,
                "architecture": node(self.arch).lower(),
                "comment": f"Linux {self.release}, as running on the test host",
                "start_time": created,
                "misc": {"kernel_release": self.release},
            }
        )
        return {
            "version": dict(VERSION),
            "checkouts": [checkout],
            "builds": [build],
            "tests": list(self.tests),
        }


def _add_checks(b: _Builder, check: dict[str, Any]) -> None:
    for res in check.get("results") or []:
        backend = str(res.get("backend") or "kvm")
        status = STATUS.get(str(res.get("status")), "ERROR")
        reason = str(res.get("reason") or "")
        diag = [str(d) for d in res.get("diagnostics") or []]
        b.test(
            f"kvmpv.check.{node(backend)}.{node(str(res.get('name')))}",
            status,
            simulated=backend == "sim",
            comment=reason,
            duration=res.get("duration_s"),
            log=[*diag, *([f"{status}: {reason}"] if reason else [])],
            misc=_drop_none({"backend": backend, "kvmpv_status": res.get("status")}),
        )
    planned = check.get("plan")
    ran = len(check.get("results") or [])
    if check.get("skip_all"):
        b.test("kvmpv.check", "SKIP", comment=str(check["skip_all"]))
    if check.get("bail_out") or check.get("interrupted"):
        # The checks after the bail-out did not run, through no fault of the
        # kernel: the harness was stopped (a CI timeout, SIGTERM).
        why = str(check.get("bail_out") or "interrupted")
        missing = f"{planned - ran} of {planned} planned checks did not run" if planned else ""
        b.test(
            "kvmpv.check",
            "MISS",
            comment="; ".join(x for x in (why, missing) if x),
            log=[*(check.get("header") or []), f"Bail out! {why}"],
            misc={"interrupted": bool(check.get("interrupted")), "planned": planned, "ran": ran},
        )


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _seconds(value: Optional[float]) -> Optional[dict[str, Any]]:
    """A KCIDB ``number`` in seconds (``None``: no measurement, no key)."""
    return None if value is None else {"value": value, "unit": "s", "prefix": "metric"}


def _verdict_status(verdicts: Sequence[str], bad: Sequence[str]) -> str:
    """FAIL if a verdict contradicts the expectation, PASS if all confirm it, else DONE."""
    if any(v in bad for v in verdicts):
        return "FAIL"
    if verdicts and all(v == "charged" for v in verdicts):
        return "PASS"
    return "DONE"


def _add_reboot(b: _Builder, runs: Sequence[dict[str, Any]], suite: str) -> None:
    for run in runs:
        backend = str(run.get("backend"))
        size = format_size(int(run.get("memory_bytes", 0)))
        every = [*(run.get("warmup_cycles") or []), *(run.get("cycles") or [])]
        for mode in ("async", "sync"):
            cycles = [c for c in run.get("cycles") or [] if c.get("mode") == mode]
            if not cycles:
                continue
            lat = median([c.get("reboot_latency_s") for c in cycles])
            cpu = median([c.get("cleanup_cpu_s") for c in cycles])
            # The verdict counts the warm-up cycles too (as ``kvmpv compare``).
            verdicts = [str(c.get("verdict")) for c in every if c.get("mode") == mode]
            b.test(
                f"{suite}.{node(backend)}.{mode}.{node(size)}",
                _verdict_status(verdicts, ("not charged",)),
                simulated=bool(run.get("simulated", backend == "sim")),
                comment=f"{mode} reboot of a {size} protected guest: median latency "
                f"{_num(lat)} s, teardown CPU {_num(cpu)} s",
                number=_seconds(lat),
                log=[
                    f"cycle {i}: latency {c.get('reboot_latency_s')} s, cleanup cpu "
                    f"{c.get('cleanup_cpu_s')} s, verdict {c.get('verdict')}"
                    for i, c in enumerate(cycles, 1)
                ],
                misc=_drop_none(
                    {"backend": backend, "memory_bytes": run.get("memory_bytes"),
                     "cycles": len(cycles), "cleanup_cpu_s": cpu, "verdicts": sorted(set(verdicts))}
                ),
            )  # fmt: skip


def _add_shutdown(b: _Builder, records: Sequence[dict[str, Any]], suite: str) -> None:
    for rec in records:
        size = format_size(int(rec.get("size_bytes", 0)))
        pages = "thp" if rec.get("thp") else "4k"
        verdict, want = str(rec.get("verdict")), rec.get("expected")
        if rec.get("contradicts_expected") and verdict not in ("inconclusive", "skip"):
            status = "FAIL"
        elif verdict == "skip":
            status = "SKIP"
        elif want and verdict == want:
            status = "PASS"
        else:
            status = "DONE"
        exit_s = median_of(rec.get("exit_latency_s"))
        b.test(
            f"{suite}.{node(str(rec.get('strategy')))}.{node(size)}.{pages}",
            status,
            comment=f"exit latency {_num(exit_s)} s (median), accounting verdict {verdict}"
            + (f", expected {want}" if want else ""),
            number=_seconds(exit_s),
            misc=_drop_none(
                {"size_bytes": rec.get("size_bytes"), "thp": bool(rec.get("thp")),
                 "release_s": median_of(rec.get("release_s")), "verdict": verdict,
                 "expected": want}
            ),
        )  # fmt: skip


def from_results(doc: dict[str, Any], origin: str = DEFAULT_ORIGIN, run_id: Optional[str] = None,
                 build_id: Optional[str] = None) -> dict[str, Any]:  # fmt: skip
    """The submission of a results document (``kvmpv exercise``/``bench``, possibly cut short).

    ``build_id``: attach the tests to that existing KCIDB build (the kernel a
    CI system built and is testing) instead of describing a checkout and
    build of the running kernel.
    """
    b = _Builder(doc, origin, run_id, build_id)
    if doc.get("check"):
        _add_checks(b, doc["check"])
    _add_reboot(b, doc.get("reboot") or [], "kvmpv.reboot")
    bench = doc.get("bench") or {}
    _add_reboot(b, bench.get("reboot_curve") or [], "kvmpv.bench.reboot")
    _add_shutdown(b, (doc.get("shutdown") or {}).get("records") or [], "kvmpv.shutdown")
    _add_shutdown(b, bench.get("teardown") or [], "kvmpv.bench.teardown")
    for skip in doc.get("skipped") or []:
        b.test(f"kvmpv.{node(str(skip.get('step')))}", "SKIP", comment=str(skip.get("reason")))
    stop = doc.get("interrupted")
    if stop:
        b.test(
            "kvmpv.exercise",
            "MISS",
            comment=f"interrupted by signal {stop.get('signal')} in step {stop.get('step')}: "
            "the steps after it did not run",
            misc={"interrupted": stop},
        )
    return b.submission()


def from_check(check: dict[str, Any], created: str, origin: str = DEFAULT_ORIGIN,
               run_id: Optional[str] = None, command: str = "",
               build_id: Optional[str] = None) -> dict[str, Any]:  # fmt: skip
    """The submission of one ``kvmpv check`` run (``CheckRun.to_dict()``)."""
    doc = {"host": check.get("host") or {}, "check": check, "created": created}
    if command:
        doc["command"] = command
    if check.get("interrupted"):
        doc["interrupted"] = {"step": "check"}
    b = _Builder(doc, origin, run_id, build_id)
    _add_checks(b, check)
    return b.submission()


def now() -> str:
    """The current UTC time as KCIDB's date-time fields want it (RFC 3339)."""
    t = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return t.isoformat().replace("+00:00", "Z")


def write(submission: dict[str, Any], path: str) -> None:
    """Write atomically (``write_text``), as every kvmpv report."""
    write_text(path, json.dumps(submission, indent=2) + "\n")


__all__ = [
    "DEFAULT_ORIGIN", "STATUS", "VERSION", "check_build_id", "check_origin", "from_check",
    "from_results", "now", "write",
]  # fmt: skip
