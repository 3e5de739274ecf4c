# SPDX-License-Identifier: GPL-2.0-only
"""Every verdict kvmpv gives, on each cgroup hierarchy this host offers.

``reboot``, ``shutdown``, ``exercise`` and ``bench`` run through the CLI with
``--cgroup v1`` and ``--cgroup v2`` (only the forced one when
``KVMPV_CGROUP`` is set, as in the ``cgroup2`` tox environment); every
verdict in their JSON must be a real one -- never SKIP -- and the one the
strategy must get.  On a cgroup2-only host that lets root create cgroups, a
SKIP here is a bug: the reason the reboot check once skipped there ("cgroup v2
cannot place a single thread") is what these tests guard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from _sized import sim_reboot_size, verdict_size
from conftest import needs_root

from kvmpv.accounting import PRECISE_TOLERANCE_NS, cgroup_scope
from kvmpv.accounting import cgroups as cgmod
from kvmpv.cli import main
from kvmpv.errors import UsageError
from kvmpv.units import GiB, format_size

pytestmark = needs_root


def _hierarchies() -> list[str]:
    forced = os.environ.get(cgmod.HIERARCHY_ENV, "")
    return [forced] if forced in ("v1", "v2") else ["v1", "v2"]


@pytest.fixture(params=_hierarchies())
def hierarchy(request: pytest.FixtureRequest) -> str:
    h: str = request.param
    found = cgmod.discover_layouts()
    if not isinstance(found.get(h), cgmod.Layout):
        if os.environ.get(cgmod.HIERARCHY_ENV) == h:
            pytest.fail(f"{cgmod.HIERARCHY_ENV}={h} but cgroup {h} is not mounted: {found.get(h)}")
        pytest.skip(f"cgroup {h} not mounted here: {found.get(h)}")
    return h


def verdicts(doc: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in a results document that carries a ``verdict``."""
    if isinstance(doc, dict):
        if isinstance(doc.get("verdict"), str):
            yield where, doc
        for key, value in doc.items():
            yield from verdicts(value, f"{where}/{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from verdicts(value, f"{where}[{i}]")


#: what a record without an ``expected`` key must get: reboot cycles carry
#: none, and a correct kernel charges PERFORM's cleanup to the VM's cgroup
CYCLE_EXPECTED = "charged"


def assert_real_verdicts(
    doc: dict[str, Any], hierarchy: str, *, undecided_ok: Optional[dict[str, str]] = None
) -> list[str]:
    """Every verdict the expected one; returns them.

    Decided from each record's ``verdict`` and ``expected`` alone (never
    from the document's own ``contradicts_expected``).  A record without an
    ``expected`` key must be CYCLE_EXPECTED; one with ``expected: null`` is
    not judged.  SKIP always fails; "inconclusive" and "not judged" fail
    too, except for the strategies the caller names in ``undecided_ok``,
    each with the reason the test allows it (``{"reaper": "why"}``).
    """
    allowed = dict(undecided_ok or {})
    for name, why in allowed.items():
        assert why.strip(), f"undecided_ok[{name!r}] needs a reason"
    found = list(verdicts(doc))
    assert found, "no verdict in the document"
    skipped = [f"{w}: {v.get('verdict_detail') or v.get('skip_reason')}"
               for w, v in found if v["verdict"] == "skip"]  # fmt: skip
    assert not skipped, f"SKIP verdicts with --cgroup {hierarchy}: {skipped}"
    for where, rec in found:
        got = rec["verdict"]
        want = rec["expected"] if "expected" in rec else CYCLE_EXPECTED
        detail = (rec.get("verdict_detail") or {}).get("reason")
        if want is not None and got not in (want, "inconclusive"):
            pytest.fail(f"{where}: {got}, expected {want}: {detail}")
        if want is None or got == "inconclusive":
            what = "not judged" if want is None else f"inconclusive, expected {want}"
            name = rec.get("strategy", "reboot cycle")
            if name not in allowed:
                pytest.fail(f"{where}: {what} and the test allows none for {name}: {detail}")
    return [v["verdict"] for _, v in found]


def shutdown_size(tolerance_ns: int = PRECISE_TOLERANCE_NS) -> str:
    """A worker size whose exit teardown takes a decisive time on this machine
    (sized by time, tests/_sized.py): never a fixed size next to a verdict."""
    return format_size(verdict_size(tolerance_ns))


def reboot_memory() -> str:
    """Simulated guest memory for a decisive reboot verdict, at least the 3G
    the reboot curve starts at (sized by time, tests/_sized.py)."""
    return format_size(max(3 * GiB, sim_reboot_size()))


#: why a reaper record of one small repeat may be "not judged"
REAPER_ONE_REPEAT = (
    "one repeat: the reaper is judged on the sum of 3 reaped repeats at least (a single "
    "repeat can go one way: the worker paid 91% of one at 512M under load); the record "
    "says not judged, with expected null (tests/test_shutdown.py judges it at 1G)"
)


def test_reboot_charged_and_its_negative_control(hierarchy: str, tmp_path: Path) -> None:
    argv = ["reboot", "--backend", "sim", "--memory", reboot_memory(), "--mode", "both",
            "--cycles", "1", "--cgroup", hierarchy]  # fmt: skip
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    assert main([*argv, "--json", str(good)]) == 0
    assert main([*argv, "--debug-charge-to", "elsewhere", "--json", str(bad)]) == 1
    g, b = json.loads(good.read_text()), json.loads(bad.read_text())
    assert g["accounting"]["hierarchy"] == b["accounting"]["hierarchy"] == hierarchy
    assert [c["verdict"] for c in g["cycles"]] == ["charged", "charged"]
    assert [c["verdict"] for c in b["cycles"]] == ["not charged", "not charged"]


def test_shutdown_verdicts(hierarchy: str, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    strategies = "sync,cleaner,elsewhere,reaper"
    # Three repeats: the cleaner is judged against the median of the sync runs
    # (another run): one slow sync run alone put the cleaner at 0.76 of it.
    code = main(["shutdown", "--sizes", shutdown_size(), "--strategy", strategies, "--repeat", "3",
                 "--cgroup", hierarchy, "--json", str(out), "--quiet"])  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["hierarchy"] == hierarchy
    got = {r["strategy"]: r["verdict"] for r in doc["records"]}
    assert got["sync"] == got["cleaner"] == "charged", got
    assert got["elsewhere"] == "not charged", got
    # The reaper: SPLIT when judged (tests/test_shutdown.py shows it judged at 1G).
    assert_real_verdicts(doc, hierarchy, undecided_ok={"reaper": REAPER_ONE_REPEAT})
    assert code == 0
    # The worker cgroup's memory counter across the teardown: falling from
    # the worker's size to (nearly) nothing where the host has one.
    for rec in doc["records"]:
        rep = rec["repeats"][0]
        trace = rep["memory_trace"]
        if not trace["available"]:
            # v2 without memory in the parent's subtree_control; v1 on a kernel
            # without the v1 memory controller (CONFIG_MEMCG_V1, optional since
            # Linux 6.11, is off in Debian's 6.12: tox -e s390x-kernel found it)
            expected = "subtree_control" if hierarchy == "v2" else "no cgroup v1 memory hierarchy"
            assert expected in trace["reason"], trace
            continue
        assert trace["bytes_at_start"] >= 0.9 * rec["size_bytes"], (rec["strategy"], trace)
        assert trace["bytes_at_end"] <= 0.1 * rec["size_bytes"], (rec["strategy"], trace)
        assert trace["samples"] >= 2


def test_the_old_option_name_still_works(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    main(["shutdown", "--sizes", "256M", "--strategy", "sync", "--repeat", "1",
          "--hierarchy", "v1", "--json", str(out), "--quiet"])  # fmt: skip
    # the request says what was asked for (the run may find v1 missing: SKIP)
    assert json.loads(out.read_text())["request"]["hierarchy"] == "v1"


def test_exercise_has_no_skipped_verdict(hierarchy: str, tmp_path: Path) -> None:
    # exercise runs powers of two from 1G up to --max-size, or --max-size when below 1G
    code = main(["exercise", "--out", str(tmp_path), "--max-size", shutdown_size(), "--repeat", "1",
                 "--cycles", "1", "--no-plots", "--cgroup", hierarchy])  # fmt: skip
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["reboot"] and doc["shutdown"]["records"]
    assert doc["shutdown"]["hierarchy"] == hierarchy
    assert {r["accounting"]["hierarchy"] for r in doc["reboot"]} == {hierarchy}
    assert_real_verdicts(
        {"reboot": doc["reboot"], "shutdown": doc["shutdown"]}, hierarchy,
        undecided_ok={"reaper": REAPER_ONE_REPEAT},
    )  # fmt: skip
    assert code == 0


def test_bench_has_no_skipped_verdict(hierarchy: str, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    code = main(["bench", "--sizes", shutdown_size(), "--repeat", "1", "--no-thp", "--strategy",
                 "sync,cleaner", "--reboot-sizes", reboot_memory(), "--cgroup", hierarchy,
                 "--json", str(out)])  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["bench"]["teardown"] and doc["bench"]["reboot_curve"]
    assert_real_verdicts(doc["bench"], hierarchy)
    assert code == 0


def test_the_checker_itself_fails_on_a_skip() -> None:
    # The guard above must be able to fail: a SKIP verdict anywhere is caught.
    doc = {"cycles": [{"verdict": "charged"}, {"verdict": "skip", "verdict_detail": "x"}]}
    with pytest.raises(AssertionError, match="SKIP verdicts"):
        assert_real_verdicts(doc, "v2")
    with pytest.raises(pytest.fail.Exception, match="expected not charged"):
        assert_real_verdicts({"r": [{"verdict": "charged", "expected": "not charged"}]}, "v2")


#: the record that once passed because the checker read the document's own
#: ``contradicts_expected`` (issue 28)
LYING = {"strategy": "cleaner", "verdict": "not charged", "expected": "charged",
         "contradicts_expected": False}  # fmt: skip
ALL_INCONCLUSIVE = {
    "cycles": [{"verdict": "inconclusive"}, {"verdict": "inconclusive"}],
    "records": [{"strategy": "sync", "verdict": "inconclusive", "expected": "charged"},
                {"strategy": "elsewhere", "verdict": "inconclusive", "expected": "not charged"}],
}  # fmt: skip


def test_the_checker_decides_from_verdict_and_expectation_alone() -> None:
    with pytest.raises(pytest.fail.Exception, match="not charged, expected charged"):
        assert_real_verdicts({"records": [LYING]}, "v2")
    # ... even with every undecided verdict allowed: this one is decided, and wrong
    with pytest.raises(pytest.fail.Exception, match="not charged, expected charged"):
        assert_real_verdicts({"records": [LYING]}, "v2", undecided_ok={"cleaner": "any"})
    with pytest.raises(pytest.fail.Exception, match="inconclusive, expected charged"):
        assert_real_verdicts(ALL_INCONCLUSIVE, "v2")
    # A cycle carries no expectation: charged is what it must get.
    with pytest.raises(pytest.fail.Exception, match="not charged, expected charged"):
        assert_real_verdicts({"cycles": [{"verdict": "not charged"}]}, "v2")
    # The document's own flag is not read either way.
    flagged = {**LYING, "verdict": "charged", "contradicts_expected": True}
    assert assert_real_verdicts({"records": [flagged]}, "v2") == ["charged"]


def test_undecided_passes_only_where_the_test_says_why() -> None:
    not_judged = {"strategy": "reaper", "verdict": "inconclusive", "expected": None,
                  "contradicts_expected": False, "not_judged": "reaped in no repeat"}  # fmt: skip
    with pytest.raises(pytest.fail.Exception, match=r"not judged .* reaper"):
        assert_real_verdicts({"records": [not_judged]}, "v2")
    ok = assert_real_verdicts({"records": [not_judged]}, "v2", undecided_ok={"reaper": "a race"})
    assert ok == ["inconclusive"]
    # allowed for the reaper only: the sync record still fails
    doc = {"records": [not_judged, ALL_INCONCLUSIVE["records"][0]]}
    with pytest.raises(pytest.fail.Exception, match="allows none for sync"):
        assert_real_verdicts(doc, "v2", undecided_ok={"reaper": "a race"})
    # a judged reaper that is not SPLIT fails whatever is allowed
    one_side = {"strategy": "reaper", "verdict": "charged", "expected": "split"}
    with pytest.raises(pytest.fail.Exception, match="charged, expected split"):
        assert_real_verdicts({"records": [one_side]}, "v2", undecided_ok={"reaper": "a race"})
    with pytest.raises(AssertionError, match="needs a reason"):
        assert_real_verdicts({"records": [not_judged]}, "v2", undecided_ok={"reaper": " "})


def test_kvmpv_cgroup_forces_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cgmod.HIERARCHY_ENV, "v2")
    assert cgmod.resolve_hierarchy("auto") == "v2"
    assert cgmod.resolve_hierarchy("v1") == "v1"  # an explicit choice wins
    found = cgmod.discover_layouts()
    if isinstance(found.get("v2"), cgmod.Layout):
        with cgroup_scope() as scope:
            assert scope.hierarchy == "v2"
    monkeypatch.setenv(cgmod.HIERARCHY_ENV, "v3")
    with pytest.raises(UsageError, match="KVMPV_CGROUP must be one of"):
        cgmod.resolve_hierarchy("auto")
