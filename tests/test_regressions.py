# SPDX-License-Identifier: GPL-2.0-only
"""Every observable upstream fix of the corpus, reinstated, is caught by its named check.

Parametrized from fixtures/regressions/corpus.json, so a new observable entry
is a new case here: it either names its deviation (a ``Regress_<commit>``
class of tests/_regressions.py) and the check that catches it
(``caught_by``), or says in ``no_deviation`` why the simulator cannot
reinstate it, and the case says SKIP with that reason (never PASS).  An entry
with neither fails.

For each deviation: the named check FAILs on it with the deviation's
``symptom`` in its report, and PASSes on the faithful simulator (the control:
the failure is the reinstated bug's, not the check's).  The invented
deviations (blind spots of the checks, issue 25 item 4) are run the same way.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import _regressions
import pytest

from kvmpv.report.cases import CaseResult, Status
from kvmpv.scenarios import check as chk
from kvmpv.scenarios.probe import probe_facts
from kvmpv.sim import overridden_kernel_functions

ROOT = Path(__file__).resolve().parent.parent
CORPUS: list[dict[str, Any]] = json.loads(
    (ROOT / "fixtures" / "regressions" / "corpus.json").read_text(encoding="utf-8")
)
OBSERVABLE = [e for e in CORPUS if e["observable"]]
HIDDEN = [e for e in CORPUS if not e["observable"]]
DEVIATIONS = _regressions.regressions()
INVENTED = [cls for cls in DEVIATIONS.values() if cls.invented]
FACTS = probe_facts()


def _short(entry: dict[str, Any]) -> str:
    return str(entry["id"][:12])


def run_check(name: str, factory: Any = None) -> CaseResult:
    """Check ``name`` alone on a fresh simulated host (``factory``: a deviation's ``build``)."""
    req = chk.CheckRequest(backend="sim", select=(name,), sim_factory=factory, facts=FACTS)
    (case,) = [c for c in chk.run_checks(req).results if c.name == name]
    return case


def _report(case: CaseResult) -> str:
    return "\n".join([f"{case.status.value}: {case.reason}", *case.diagnostics])


def assert_caught(cls: type[Any], name: str) -> None:
    """``name`` FAILs on ``cls`` with its symptom and PASSes on the faithful simulator."""
    bad = run_check(name, cls.build)
    assert bad.status is Status.FAIL, f"{name} did not fail on {cls.__name__}:\n{_report(bad)}"
    text = "\n".join([bad.reason, *bad.diagnostics])
    assert cls.symptom in text, f"{name} failed on {cls.__name__}, not with {cls.symptom!r}"
    good = run_check(name)
    assert good.status is Status.PASS, f"{name} fails on the faithful simulator:\n{_report(good)}"


@pytest.mark.parametrize("entry", OBSERVABLE, ids=_short)
def test_observable_fix_is_caught(entry: dict[str, Any]) -> None:
    """The entry's deviation reinstates its bug in its kernel function; its check fails on it."""
    short = _short(entry)
    if entry["deviation"] is None:
        reason = entry.get("no_deviation")
        assert reason, f"{short}: observable, but neither a deviation nor a no_deviation reason"
        assert entry["caught_by"] is None, f"{short}: caught_by without a deviation"
        pytest.skip(f"{short}: no deviation: {reason}")
    cls = DEVIATIONS.get(entry["deviation"])
    assert cls is not None, f"{short}: {entry['deviation']} is not in tests/_regressions.py"
    assert cls.__name__ == f"Regress_{short}"
    assert cls.commit == entry["id"] and not cls.invented
    doc = " ".join((cls.__doc__ or "").split())
    for cited in (short, entry["title"], entry["release"]):
        assert cited in doc, f"{cls.__name__}'s docstring does not cite {cited!r}"
    # the bug sits in the kernel function the corpus names (a kernel name with
    # leading underscores is the method without them: Python mangles those)
    assert entry["sim_function"].lstrip("_") in overridden_kernel_functions(cls)
    name = entry["caught_by"]
    assert name in cls.targets, f"{cls.__name__} is not written for {name}"
    registered = {c.name: c for c in chk.registry()}
    assert name in registered, f"{short}: caught_by {name!r} is not a registered check"
    assert short in registered[name].guards, f"check {name} does not list {short} in guards"
    # ... and its result says so (JUnit/JSON property), for a run on a real host
    assert short in run_check(name).properties.get("guards", "").split(",")
    assert_caught(cls, name)


@pytest.mark.parametrize("cls", INVENTED, ids=lambda c: c.__name__)
def test_invented_deviation_is_caught(cls: type[Any]) -> None:
    """An invented bug (a blind spot of a check) is marked so, cites no commit, and is caught."""
    assert cls.__name__.startswith("Invented_") and not cls.commit
    assert "INVENTED" in (cls.__doc__ or "")
    assert cls.__name__ not in {e["deviation"] for e in CORPUS}
    for name in sorted(cls.targets):
        assert_caught(cls, name)


def test_every_deviation_is_in_the_corpus_or_invented() -> None:
    named = {e["deviation"] for e in CORPUS if e["deviation"]}
    orphans = sorted(n for n, c in DEVIATIONS.items() if not c.invented and n not in named)
    assert orphans == [], f"Regress_ classes no corpus entry names: {orphans}"


def test_hidden_fixes_have_no_deviation() -> None:
    """A non-observable fix names no deviation or check: no check could fail on it."""
    for e in HIDDEN:
        assert e["deviation"] is None and e["caught_by"] is None, _short(e)
        assert f"Regress_{_short(e)}" not in DEVIATIONS, _short(e)


def test_guards_match_the_corpus() -> None:
    """A check's ``guards`` are exactly the corpus entries it catches (``kvmpv check --list``)."""
    by_check: dict[str, set[str]] = {}
    for e in CORPUS:
        if e["caught_by"]:
            by_check.setdefault(e["caught_by"], set()).add(_short(e))
    guards = {c.name: set(c.guards) for c in chk.registry() if c.guards}
    assert guards == by_check


def test_a_hung_unpack_is_bounded_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """unpack_dirty_file_folios_complete on Regress_ab73b29efd36 (UNPACK retries forever):
    FAIL by the retry limit, and with the retry limit out of reach by the time bound; either
    way the UNPACK thread is stopped (a fatal signal for it) and no simulator fd is left."""
    hosts: list[Any] = []
    signalled: list[int] = []

    def build(config: Any) -> Any:
        host = _regressions.Regress_ab73b29efd36.build(config)
        real = host.deliver_fatal_signal

        def spy(tid: int) -> None:
            signalled.append(tid)
            real(tid)

        host.deliver_fatal_signal = spy
        hosts.append(host)
        return host

    name = "unpack_dirty_file_folios_complete"
    case = run_check(name, build)
    assert case.status is Status.FAIL
    assert "retries of a page, no large folio split" in case.reason
    assert "stopped by a fatal signal" in _report(case) and "(EAGAIN)" in _report(case)
    monkeypatch.setattr(chk, "UNPACK_SPIN_LIMIT", 1 << 60)
    monkeypatch.setattr(chk, "UNPACK_BOUND_S", 0.3)
    case = run_check(name, build)
    assert case.status is Status.FAIL
    assert "no return within 0.3 s" in case.reason
    assert hosts[-1].unpack_retries() > 0  # it did spin until the bound
    assert len(signalled) == 2  # one fatal signal per hung UNPACK ...
    for host in hosts:
        assert host.open_fds() == 0
        assert not any(host.fatal_signal_pending(tid) for tid in signalled)  # ... cleared after
    assert "qemu-main" not in {t.name for t in threading.enumerate()}


def test_a_missed_bug_is_reported() -> None:
    """assert_caught can fail: the faithful simulator is no deviation of the TOD check."""
    from kvmpv.sim import SimulatedHost

    class Faithful(_regressions.Regress_6973091d1b50):
        def kvm_s390_set_tod(self, vm: Any, attr: int, addr: int) -> int:
            return SimulatedHost.kvm_s390_set_tod(self, vm, attr, addr)

    with pytest.raises(AssertionError, match="did not fail"):
        assert_caught(Faithful, "set_tod_refused_while_protected")


def test_replaced_asce_index_is_read_only_for_a_segment_table() -> None:
    """Regress_c2fceb59bbda is the v6.2/v6.3 kernel (no 292a7d6fca33 either): each half
    alone passes reboot_prefix_discard_guest_runs.  The wrong index alone (v6.4+, where
    s390_replace_asce() refuses segment tables) is never read by ptep_notify(); 292a7d6fca33
    alone replaces the segment table with index 0, so the notifier finds the prefix."""
    from kvmpv.sim import SimulatedHost

    class IndexOnly(_regressions._Regression):
        def s390_replace_asce(self, vm: Any) -> int:
            ret = SimulatedHost.s390_replace_asce(self, vm)
            if not ret:
                vm.gmap_table_index = _regressions.STALE_TABLE_INDEX
            return ret

    name = "reboot_prefix_discard_guest_runs"
    for cls in (IndexOnly, _regressions.Regress_292a7d6fca33):
        case = run_check(name, cls.build)
        assert case.status is Status.PASS, f"{cls.__name__}:\n{_report(case)}"
    # ... and the combined kernel fails in the 1 GiB round, not in the other one
    case = run_check(name, _regressions.Regress_c2fceb59bbda.build)
    assert case.status is Status.FAIL
    assert "memory limit 1 GiB: the guest after the reboot" in _report(case)
    assert "no memory limit: the guest after the reboot" not in _report(case)
