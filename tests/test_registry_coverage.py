# SPDX-License-Identifier: GPL-2.0-only
"""Every registered check is shown able to fail, by a deviation written for it.

Each deliberately wrong simulator of ``tests/_deviating.py`` (a plausible
kernel bug reinstated, citing the kernel function it breaks) runs against the
WHOLE ``kvmpv check`` registry.  Each deviation names the checks it is
written for (``targets``); each of those must FAIL, with the deviation's
``symptom`` in its report.  Together the targets must be the whole registry:
a check registered without a deviation written for it fails
``test_every_check_has_a_deviation`` by name.  Checks that fail only as a
side effect of a deviation written for another check are listed (as a
junit property), never counted.
"""

from __future__ import annotations

import functools
from typing import Any

import _deviating
import pytest

from kvmpv.report.cases import CaseResult, Status
from kvmpv.scenarios import check as chk
from kvmpv.scenarios.probe import probe_facts

DEVIATIONS = _deviating.all_deviations()
FACTS = probe_facts()


@functools.cache
def run_registry(deviation: type[Any]) -> dict[str, CaseResult]:
    """The whole registry on fresh hosts built by ``deviation`` (once per deviation)."""
    req = chk.CheckRequest(backend="sim", sim_factory=deviation.build, facts=FACTS)
    return {case.name: case for case in chk.run_checks(req).results}


def _report(case: CaseResult) -> str:
    return "\n".join([f"{case.status.value}: {case.reason}", *case.diagnostics])


def coverage_problems(checks: tuple[chk.Check, ...], deviations: tuple[type[Any], ...]) -> str:
    """Why ``deviations`` do not cover ``checks`` exactly ("" if they do)."""
    registered = [c.name for c in checks]
    targeted: set[str] = set().union(*(d.targets for d in deviations))
    problems = []
    missing = [name for name in registered if name not in targeted]
    if missing:
        problems.append(
            f"check(s) {', '.join(missing)} registered without a deviation written for them: "
            "add a class to tests/_deviating.py that reinstates the kernel bug each one catches"
        )
    unknown = sorted(targeted - set(registered))
    if unknown:
        problems.append(f"deviations target checks that are not registered: {unknown}")
    return "; ".join(problems)


def test_every_check_has_a_deviation() -> None:
    """The union of the deviations' targets is the registry: no check is left unshown."""
    problems = coverage_problems(chk.registry(), DEVIATIONS)
    assert not problems, problems


def test_a_new_check_without_a_deviation_is_named() -> None:
    """The coverage test can fail: a check registered with no deviation is named, and so is a
    target that names no check."""
    new = chk.Check("brand_new_check", lambda ctx: None, "synthetic", "test")
    problems = coverage_problems((*chk.registry(), new), DEVIATIONS)
    assert "check(s) brand_new_check registered without a deviation" in problems
    dropped = tuple(d for d in DEVIATIONS if d is not _deviating.UnknownCmdEinvalHost)
    assert "unknown_command_enotty registered without" in coverage_problems(chk.registry(), dropped)
    gone = tuple(c for c in chk.registry() if c.name != "prepare_success")
    assert "not registered: ['prepare_success']" in coverage_problems(gone, DEVIATIONS)


@pytest.mark.parametrize("deviation", DEVIATIONS, ids=lambda d: d.__name__)
def test_deviation_is_declared(deviation: type[Any]) -> None:
    """Each deviation says what it is for, what kernel behaviour it breaks, how it shows."""
    assert deviation.targets, f"{deviation.__name__} targets no check"
    assert "(" in deviation.breaks, f"{deviation.__name__} cites no kernel function"
    assert deviation.symptom, f"{deviation.__name__} has no symptom"
    assert (deviation.__doc__ or "").strip(), f"{deviation.__name__} has no docstring"


@pytest.mark.parametrize("deviation", DEVIATIONS, ids=lambda d: d.__name__)
def test_deviation_fails_its_targets(
    deviation: type[Any], record_property: pytest.RecordProperty
) -> None:
    """The whole registry against one deviation: every target FAILs, showing the symptom."""
    cases = run_registry(deviation)
    assert set(cases) == {c.name for c in chk.registry()}
    for name in sorted(deviation.targets):
        case = cases[name]
        assert case.status is Status.FAIL, (
            f"{name} did not fail against {deviation.__name__} ({deviation.breaks}):\n"
            + _report(case)
        )
        text = "\n".join([case.reason, *case.diagnostics])
        assert deviation.symptom in text, (
            f"{name} failed against {deviation.__name__}, but not with {deviation.symptom!r}:\n"
            + _report(case)
        )
    side = sorted(
        n for n, c in cases.items() if c.status is not Status.PASS and n not in deviation.targets
    )
    record_property("side_effect_failures", ",".join(side))


def test_correct_simulator_passes_everything() -> None:
    """The control: the same runs on the intact simulator pass, so every failure above is
    the deviation's."""
    req = chk.CheckRequest(backend="sim", facts=FACTS)
    failed = {
        c.name: _report(c) for c in chk.run_checks(req).results if c.status is not Status.PASS
    }
    assert not failed, failed
