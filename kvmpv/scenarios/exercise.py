# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv exercise``: everything for this host, archived in one directory.

Order: probe, check, reboot (async and sync, interleaved, at several guest
sizes: the reboot curve), shutdown (every strategy).  Each step that cannot
run here is recorded under ``skipped`` with its reason; nothing is silently
dropped.  Sizes default to the host: a worker gets at most a quarter of
MemAvailable (so the machine stays usable and the page cache is not evicted
into the numbers), and an explicit ``max_size`` the host cannot hold is
refused before anything is allocated.  The reboot curve is sized by time
(``plan_curve``): the first size's run plans the others within a budget.

Files written into ``out_dir``: ``results.json`` (schema v1), ``check.ktap``,
``check.junit.xml``, and the plots (``teardown.png``, ``reboot.png``) when the
``[plot]`` extra is installed; a KCIDB submission where asked for.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
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

#: Wall-clock budget of the reboot curve when its sizes are the default ones.
#: Before this curve the main job rebooted at 3G only (~20-35 s of a ~90-110 s
#: job on this project's shared 2-core machines); the curve may add about a
#: minute.  Sized by time, not bytes: each reboot re-runs the guest, which
#: makes all of its memory secure again, so a size costs time in proportion to
#: its memory and the host's speed decides how far the curve reaches.
REBOOT_BUDGET_S = 90.0


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


#: Granularity of the curve's sizes: whole GiB read well on an axis and in a
#: table (memslots need only 1 MiB alignment on s390).
CURVE_STEP = GiB
#: Share of the remaining budget the plan may use: the rest absorbs a larger
#: size costing a little more per GiB than the first (seen here: 3G 5.7 s/GiB,
#: 6G 6.2 s/GiB on a loaded host).
CURVE_MARGIN = 0.85
#: At most this many sizes: beyond, points crowd without showing more.
CURVE_MAX_POINTS = 6


def reboot_curve_cap(available: int) -> int:
    """The largest guest of the curve: half of MemAvailable, in ``CURVE_STEP``s.

    The guest is one VM whose memory the new configuration reuses, so half of
    MemAvailable leaves the host room (the same bound as ``kvmpv bench``).
    """
    return available // 2 // CURVE_STEP * CURVE_STEP


def plan_curve(first: int, first_s: float, remaining_s: float, cap: int) -> list[int]:
    """The curve's sizes after ``first`` (which took ``first_s``), to fit ``remaining_s``.

    Sized by time: a reboot run costs time in proportion to its memory (each
    reboot re-runs the guest, which makes all of its memory secure again, and
    the sync teardown clears all of it), at the rate the first size showed on
    this host, load included.  Points are evenly spaced from ``first`` to a
    top size T; the plan takes the widest T that fits (a curve over a wide
    range shows the slopes best), and at that T as many points as fit, up to
    ``CURVE_MAX_POINTS`` -- as many sizes as the host holds.  Three points at
    least where possible (a curve, not a line through two); else two; else
    none.
    """
    if first_s <= 0 or cap <= first:
        return []
    rate = first_s / first  # seconds per byte
    afford = remaining_s * CURVE_MARGIN / rate  # bytes of further runs
    best: tuple[bool, int, int] = (False, 0, 0)
    plan: list[int] = []
    for n in range(2, CURVE_MAX_POINTS + 1):  # points including the first
        # sizes first + i*(T-first)/(n-1), i = 1..n-1, sum to
        # (n-1)*first + n*(T-first)/2 <= afford
        top = min(cap, first + 2 * (afford - (n - 1) * first) / n)
        # evenly spaced in whole steps: the gap is a multiple of CURVE_STEP
        gap = int((top - first) / (n - 1)) // CURVE_STEP * CURVE_STEP
        if gap < CURVE_STEP:
            continue
        top = first + (n - 1) * gap
        sizes = [first + i * gap for i in range(1, n)]
        key = (n >= 3, top, n)
        if key > best:
            best, plan = key, sizes
    return plan


def predicted_seconds(done: Sequence[tuple[int, float]], memory: int) -> float:
    """Wall time a reboot run at ``memory`` should take, from the runs ``done`` (size, s).

    Proportional to memory (see ``plan_curve``): the seconds per byte of what
    ran, which already include this host's load.
    """
    size = sum(s for s, _ in done)
    return sum(t for _, t in done) / size * memory if size else 0.0


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
    #: guest sizes of the reboot curve; None: ``MIN_REBOOT_MEMORY``, then
    #: ``plan_curve`` within ``reboot_budget_s`` (explicit sizes all run,
    #: smallest first)
    reboot_sizes: Optional[tuple[int, ...]] = None
    reboot_budget_s: float = REBOOT_BUDGET_S
    #: also write a KCIDB submission to this file (``kvmpv.report.kcidb``)
    kcidb: Optional[str] = None
    kcidb_origin: str = "kvmpv"
    kcidb_build: Optional[str] = None


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


def _reboot_curve(
    req: ExerciseRequest, reboot_sizes: Sequence[int], doc: dict[str, Any], res: ExerciseResult,
    step: Callable[[str], None], done: Callable[..., None], say: Callable[[str], None],
    cap: int = 0,
) -> None:  # fmt: skip
    """The reboot at each size, smallest first.

    Explicit sizes all run.  By default the first size runs, its time plans
    the rest (``plan_curve``), and before each size the prediction from what
    ran is checked against the budget once more: a size that would exceed it
    is recorded as skipped with the reason, never silently dropped.
    """
    timed: list[tuple[int, float]] = []
    spent = 0.0
    todo = list(reboot_sizes)
    while todo:
        memory = todo.pop(0)
        predicted = predicted_seconds(timed, memory)
        if req.reboot_sizes is None and timed and spent + predicted > req.reboot_budget_s:
            for later in (memory, *todo):
                doc.setdefault("skipped", []).append(
                    {"step": f"reboot at {format_size(later)}",
                     "reason": f"the curve's time budget ({req.reboot_budget_s:.0f} s) would be "
                     f"exceeded: {spent:.0f} s spent, about {predicted:.0f} s more predicted"}
                )  # fmt: skip
            res.notes.append(
                f"NOTE reboot curve stopped before {format_size(memory)} (time budget "
                f"{req.reboot_budget_s:.0f} s)"
            )
            break
        step(f"reboot: async vs sync at {format_size(memory)}")
        t0 = time.monotonic()
        _reboot_step(req, memory, doc, res, say)
        took = time.monotonic() - t0
        timed.append((memory, took))
        spent += took
        done()
        if req.reboot_sizes is None and len(timed) == 1:
            todo = plan_curve(memory, took, req.reboot_budget_s - spent, cap)
            if len(todo) < 2:
                res.notes.append(
                    f"NOTE reboot curve: {1 + len(todo)} size(s) only: {format_size(memory)} "
                    f"took {took:.0f} s of the {req.reboot_budget_s:.0f} s budget"
                    + ("" if cap > memory else ", and this host holds no larger guest")
                )


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


def _write_results(req: ExerciseRequest, doc: dict[str, Any], res: ExerciseResult) -> None:
    """results.json (first in the list of files) and, if asked for, the KCIDB submission."""
    path = os.path.join(req.out_dir, "results.json")
    results.write(doc, path)
    res.files.insert(0, path)
    if req.kcidb:
        from ..report import kcidb

        sub = kcidb.from_results(doc, req.kcidb_origin, build_id=req.kcidb_build)
        kcidb.write(sub, req.kcidb)
        res.files.append(req.kcidb)


def run_exercise(req: ExerciseRequest, progress: Optional[Any] = None) -> ExerciseResult:
    """Run every step, write the files, and return the document and what failed."""
    if req.repeat < 1 or req.cycles < 1:
        raise UsageError("--repeat and --cycles must be at least 1")
    if not req.reboot_budget_s > 0:
        raise UsageError(
            f"--reboot-budget must be a positive number of seconds, not {req.reboot_budget_s}"
        )
    available = mem_available()
    sizes = plan_sizes(req, available)  # refuse before anything is allocated
    # The reboot curve: sync latency grows with guest memory, async should not
    # (PREPARE destroys only the pages below 2 GiB, spec 3.3 step 7; the rest
    # is PERFORM's, off the reboot path).  Smallest first, so that the budget
    # cuts the largest sizes, never the curve's start.
    if req.reboot_sizes is not None:
        reboot_sizes = sorted(set(req.reboot_sizes))
        if reboot_sizes and (reboot_sizes[0] <= 0 or reboot_sizes[-1] > available):
            raise HostError(
                f"--reboot-sizes: {format_size(reboot_sizes[-1])} is more than this host can "
                f"hold (MemAvailable {format_size(available)}); nothing was allocated"
            )
    else:
        # the first size; its time plans the others (_reboot_curve)
        reboot_sizes = (
            [MIN_REBOOT_MEMORY] if reboot_curve_cap(available) >= MIN_REBOOT_MEMORY else []
        )
    if req.kcidb:
        from ..report.cases import ensure_writable
        from ..report.kcidb import check_build_id, check_origin

        check_origin(req.kcidb_origin)
        if req.kcidb_build:
            check_build_id(req.kcidb_build)
        # Before minutes of measuring, not after; a file inside the output
        # directory is written where this run is about to create it.
        if os.path.dirname(os.path.abspath(req.kcidb)) != os.path.abspath(req.out_dir):
            ensure_writable(req.kcidb)
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
        if not reboot_sizes:
            doc.setdefault("skipped", []).append(
                {"step": "reboot", "reason": f"needs {format_size(MIN_REBOOT_MEMORY)} of guest"
                 f" memory, only {format_size(available)} available"}
            )  # fmt: skip
        else:
            _reboot_curve(req, reboot_sizes, doc, res, step, done, say, reboot_curve_cap(available))

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
        _write_results(req, doc, res)
        exc.exercise_files = list(res.files)  # type: ignore[union-attr]
        raise

    _write_results(req, doc, res)
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
