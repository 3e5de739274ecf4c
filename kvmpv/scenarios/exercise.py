# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv exercise``: everything for this host, archived in one directory.

Order: probe, check, reboot (async and sync, interleaved), shutdown (every
strategy).  Each step that cannot run here is recorded under ``skipped`` with
its reason; nothing is silently dropped.  Sizes default to the host: a worker
gets at most a quarter of MemAvailable (so the machine stays usable and the
page cache is not evicted into the numbers), and an explicit ``max_size`` the
host cannot hold is refused before anything is allocated.

Files written into ``out_dir``: ``results.json`` (schema v1), ``check.ktap``,
``check.junit.xml``, and the plots (``teardown.png``, ``reboot.png``) when the
``[plot]`` extra is installed.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import EXIT_FAIL, EXIT_OK, HostError, Interrupted, UsageError
from ..memory import mem_available
from ..report import results, tables
from ..report.cases import write_text
from ..units import GiB, MiB, format_size
from . import check as check_mod
from . import probe as probe_mod
from . import reboot as reboot_mod
from . import shutdown as shutdown_mod

#: The reboot scenario needs a memory limit above 2 GiB for the async path
#: (commit 292a7d6fca33); 3 GiB keeps the sync part (< 2 GiB) and the
#: PERFORM part both visible.
MIN_REBOOT_MEMORY = 3 * GiB

#: Verdicts that neither prove nor disprove a strategy: "inconclusive" (the
#: charged CPU between 20% and 80% of the baseline, e.g. on a loaded host
#: where teardown CPU swings by a fifth between runs) is reported, but only a
#: verdict other than the expected one (``shutdown.EXPECTED``) fails a run.
UNDECIDED = ("inconclusive", "skip")


def default_sizes(limit: int) -> list[int]:
    """Powers of two from 1 GiB up to ``limit`` (at least 256 MiB if the host is tiny)."""
    sizes = []
    size = GiB
    while size <= limit:
        sizes.append(size)
        size *= 2
    if not sizes:
        small = max(256 * MiB, (limit // MiB) * MiB)
        if small > limit:
            raise HostError(f"only {format_size(limit)} available per worker; need 256M")
        sizes = [small]
    return sizes[-3:]  # the three largest: enough for a slope, bounded run time


@dataclass(frozen=True)
class ExerciseRequest:
    out_dir: str
    max_size: Optional[int] = None  # per worker; default: MemAvailable / 4
    repeat: int = 3
    cycles: int = 3
    strategies: tuple[str, ...] = ("sync", "cleaner", "elsewhere", "reaper", "parallel")
    plots: bool = True
    command: str = ""
    #: cgroup hierarchy of every accounting verdict ("auto", "v1", "v2")
    hierarchy: str = "auto"


@dataclass
class ExerciseResult:
    doc: dict[str, Any]
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what made the run fail
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_FAIL if self.problems else EXIT_OK

    def summary(self) -> str:
        return tables.render(self.doc)


def plan_sizes(req: ExerciseRequest, available: int) -> list[int]:
    """Worker sizes for this host; refuses a ``max_size`` it cannot hold."""
    quarter = available // 4
    if req.max_size is not None:
        if req.max_size > available:
            raise HostError(
                f"--max-size {format_size(req.max_size)} is more than this host can hold "
                f"(MemAvailable {format_size(available)}); nothing was allocated"
            )
        return default_sizes(req.max_size)
    return default_sizes(quarter)


def _check_step(
    out_dir: str, doc: dict[str, Any], res: ExerciseResult, say: Callable[[str], None]
) -> None:
    run = check_mod.run_checks(check_mod.CheckRequest(), stream=io.StringIO(), progress=say)
    _write_check_files(out_dir, run, doc, res)
    failed = [r["name"] for r in doc["check"]["results"] if r["status"] in ("fail", "error")]
    if failed:
        res.problems.append(f"check: {len(failed)} failed: {', '.join(failed[:5])}")


def _write_check_files(
    out_dir: str, run: check_mod.CheckRun, doc: dict[str, Any], res: ExerciseResult
) -> None:
    """check.ktap and check.junit.xml of a (possibly interrupted) check run."""
    ktap_path = os.path.join(out_dir, "check.ktap")
    write_text(ktap_path, run.ktap())
    junit_path = os.path.join(out_dir, "check.junit.xml")
    write_text(junit_path, run.junit())
    res.files += [ktap_path, junit_path]
    doc["check"] = run.to_dict()


def _reboot_step(
    req: ExerciseRequest, memory: int, doc: dict[str, Any], res: ExerciseResult,
    say: Callable[[str], None],
) -> None:  # fmt: skip
    # One warm-up reboot per mode: the first reboot after boot costs more
    # whatever its mode, and "both" starts with async (RebootRequest.warmup).
    rr = reboot_mod.run_reboot(
        reboot_mod.RebootRequest(
            memory=memory, cycles=req.cycles, warmup=1, mode="both", hierarchy=req.hierarchy
        ),
        say,
    )
    run = rr.to_dict()
    doc.setdefault("reboot", []).append(run)
    every = [*run["warmup_cycles"], *run["cycles"]]
    bad = [c for c in every if c["verdict"] == "not charged"]
    if bad:
        res.problems.append(f"reboot: {len(bad)} cycle(s) whose cleanup was not charged")
    vague = [c for c in every if c["verdict"] == "inconclusive"]
    if vague:
        res.notes.append(f"NOTE reboot: {len(vague)} cycle(s) with an inconclusive verdict")


def _shutdown_step(
    req: ExerciseRequest, sizes: Sequence[int], doc: dict[str, Any], res: ExerciseResult,
    say: Callable[[str], None],
) -> None:  # fmt: skip
    sr = shutdown_mod.run_shutdown(
        shutdown_mod.ShutdownRequest(
            sizes=list(sizes),
            strategies=list(req.strategies),
            repeat=req.repeat,
            hierarchy=req.hierarchy,
        ),
        say,
    )
    doc["shutdown"] = sr.to_dict()
    for rec in doc["shutdown"]["records"]:
        want, got = rec.get("expected"), rec["verdict"]
        where = f"shutdown: {rec['strategy']} at {format_size(rec['size_bytes'])}"
        if rec.get("contradicts_expected") and got not in UNDECIDED:
            res.problems.append(f"{where}: verdict {got!r}, expected {want!r}")
        elif want and got != want and got != "skip":
            res.notes.append(f"NOTE {where}: verdict {got} (expected {want!r})")
        elif rec.get("not_judged"):
            res.notes.append(f"NOTE {where}: not judged: {rec['not_judged']}")


def run_exercise(req: ExerciseRequest, progress: Optional[Any] = None) -> ExerciseResult:
    """Run every step, write the files, and return the document and what failed."""
    if req.repeat < 1 or req.cycles < 1:
        raise UsageError("--repeat and --cycles must be at least 1")
    available = mem_available()
    sizes = plan_sizes(req, available)  # refuse before anything is allocated
    # Two guest sizes give the reboot curve a slope: sync grows with memory,
    # async should not (only the pages below 2 GiB are destroyed in PREPARE).
    reboot_sizes = [MIN_REBOOT_MEMORY]
    if 2 * MIN_REBOOT_MEMORY <= available // 4:
        reboot_sizes.append(2 * MIN_REBOOT_MEMORY)
    os.makedirs(req.out_dir, exist_ok=True)

    step = getattr(progress, "step", None) or (lambda _n: None)
    done = getattr(progress, "done", None) or (lambda _s="": None)
    say: Callable[[str], None] = progress if callable(progress) else (lambda _m: None)

    step("probe")
    host = probe_mod.probe_host()
    doc = results.new_document(host.to_dict(), req.command)
    res = ExerciseResult(doc)
    done(host.verdict)

    current = "check"
    try:
        step("check: conformance of the PV async-cleanup interface")
        _check_step(req.out_dir, doc, res, say)
        done()

        current = "reboot"
        if MIN_REBOOT_MEMORY > available // 2:
            doc.setdefault("skipped", []).append(
                {"step": "reboot", "reason": f"needs {format_size(MIN_REBOOT_MEMORY)} of guest"
                 f" memory, only {format_size(available)} available"}
            )  # fmt: skip
        else:
            for memory in reboot_sizes:
                step(f"reboot: async vs sync at {format_size(memory)}")
                _reboot_step(req, memory, doc, res, say)
                done()

        current = "shutdown"
        step(f"shutdown: {', '.join(req.strategies)} at {', '.join(map(format_size, sizes))}")
        _shutdown_step(req, sizes, doc, res, say)
        done()
    except (Interrupted, KeyboardInterrupt) as exc:
        # A CI timeout stops the job exactly like this: the files are written
        # anyway, with what was measured so far, and say that it was cut short.
        signo = exc.signo if isinstance(exc, Interrupted) else int(signal.SIGINT)
        doc["interrupted"] = {"signal": int(signo), "step": current}
        partial = getattr(exc, "check_run", None)
        if partial is not None:
            _write_check_files(req.out_dir, partial, doc, res)
        path = os.path.join(req.out_dir, "results.json")
        results.write(doc, path)
        res.files.insert(0, path)
        exc.exercise_files = list(res.files)  # type: ignore[union-attr]
        raise

    path = os.path.join(req.out_dir, "results.json")
    results.write(doc, path)
    res.files.insert(0, path)
    if req.plots:
        try:
            from ..report import plots

            drawn, missing = plots.plot_all(doc, os.path.join(req.out_dir, ""))
            res.files += [p.path for p in drawn]
            res.notes += [f"SKIP {m}" for m in missing]
        except HostError as err:  # matplotlib missing: say so, keep the data
            res.notes.append(f"SKIP plots: {err}")
            print(f"kvmpv: plots skipped: {err}", file=sys.stderr)
    return res
