# SPDX-License-Identifier: GPL-2.0-only
"""tmt custom results: one tmt result per check, so tmt reports each on its own.

A tmt test with ``result: custom`` writes ``results.json`` (or
``results.yaml``) into ``$TMT_TEST_DATA``; tmt reads it instead of judging
the test by its exit code, names each entry ``<test name><entry name>``, and
validates it against its ``results.yaml`` schema (tmt's
``tmt/schemas/results.yaml``; loading in ``tmt/steps/execute/__init__.py``,
``_load_custom_results_file``).  Facts used, from that schema: a list of
objects with ``name`` (starting with ``/``), ``result`` (pass, fail, info,
warn, error, skip, pending), ``note`` (list of strings), ``log`` (paths
relative to ``$TMT_TEST_DATA``) and ``duration`` (``HH:MM:SS``).

Each check becomes ``/<backend>/<name>`` (``/sim/prepare_success``), so a
simulated result can never pass for the real kernel's; a run cut short by a
signal adds ``/bail-out`` as an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .cases import RunResult, Status

#: kvmpv status -> tmt result outcome (xfail is a pass for kselftest, xpass a failure)
OUTCOME = {
    Status.PASS: "pass",
    Status.FAIL: "fail",
    Status.SKIP: "skip",
    Status.ERROR: "error",
    Status.XFAIL: "pass",
    Status.XPASS: "fail",
}


def _duration(seconds: float) -> str:
    """tmt's duration format, ``HH:MM:SS`` (whole seconds)."""
    total = round(seconds)
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _log_paths(results_path: str, logs: Sequence[str]) -> list[str]:
    """Logs relative to the results file's directory ($TMT_TEST_DATA), where they are below it."""
    base = os.path.dirname(os.path.abspath(results_path))
    out = []
    for log in logs:
        full = os.path.abspath(log)
        rel = os.path.relpath(full, base)
        out.append(full if rel.startswith("..") else rel)
    return out


def results(run: RunResult, results_path: str, logs: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The tmt custom results of ``run`` (``results_path``: where they will be written)."""
    log = _log_paths(results_path, logs)
    out: list[dict[str, Any]] = []
    for case in run.cases:
        name = f"/{case.backend}/{case.name}" if case.backend else f"/{case.name}"
        note = [f"SIMULATED s390x kernel ({case.backend})"] if case.backend == "sim" else []
        if case.reason:
            note.append(case.reason)
        note += [d for d in case.diagnostics if case.status in (Status.FAIL, Status.ERROR)][-20:]
        out.append(
            {
                "name": name,
                "result": OUTCOME[case.status],
                "note": note,
                "log": list(log),
                "duration": _duration(case.duration_s),
            }
        )
    if run.bail_out or run.interrupted:
        out.append(
            {
                "name": "/bail-out",
                "result": "error",
                "note": [run.bail_out or "interrupted", f"{len(run.cases)} of {run.plan} ran"],
                "log": list(log),
            }
        )
    elif run.skip_all and not run.cases:
        out.append({"name": "/skip-all", "result": "skip", "note": [run.skip_all], "log": log})
    return out


def render(run: RunResult, results_path: str, logs: Sequence[str] = ()) -> str:
    """``results`` as the JSON text of a tmt ``results.json``."""
    return json.dumps(results(run, results_path, logs), indent=2) + "\n"


__all__ = ["OUTCOME", "render", "results"]
