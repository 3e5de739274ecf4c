# SPDX-License-Identifier: GPL-2.0-only
"""JUnit XML and JSON forms of a run: parseable, counts right, skip/failure elements."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema

from kvmpv.report import junit
from kvmpv.report.cases import CaseResult, RunResult, Status
from kvmpv.report.results import load_schema


def sample() -> RunResult:
    return RunResult(
        suite="kvmpv.check",
        header=["backend auto"],
        properties={"backend_mode": "auto", "arch": "x86_64"},
        duration_s=1.25,
        cases=[
            CaseResult("caps", Status.PASS, backend="kvm", duration_s=0.01),
            CaseResult(
                "perform",
                Status.FAIL,
                reason="PERFORM rc: expected 0x1, got 0x0",
                backend="sim",
                diagnostics=['Check| At check.py:1 in f: <rc> & "rrc"', "ctrl \x01 char"],
                properties={"spec": "3.9"},
            ),
            CaseResult("info", Status.SKIP, reason="not a PV host", backend="kvm"),
            CaseResult("bug", Status.ERROR, reason="TypeError: x", backend="sim"),
        ],
    )


def test_junit_parses_and_counts() -> None:
    root = ET.fromstring(junit.render(sample(), hostname="h", timestamp="2026-01-01T00:00:00"))
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    counts = [suite.get(k) for k in ("tests", "failures", "errors", "skipped")]
    assert counts == ["4", "1", "1", "1"]
    assert suite.get("hostname") == "h"
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["backend_mode"] == "auto"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["caps"].get("classname") == "kvmpv.check.kvm"
    assert cases["perform"].get("classname") == "kvmpv.check.sim"
    skipped = cases["info"].find("skipped")
    assert skipped is not None and skipped.get("message") == "not a PV host"
    failure = cases["perform"].find("failure")
    assert failure is not None
    assert failure.get("message") == "PERFORM rc: expected 0x1, got 0x0"
    assert failure.text is not None and '<rc> & "rrc"' in failure.text
    assert "\\x01" in failure.text  # control character made printable, XML stays valid
    assert cases["bug"].find("error") is not None
    assert cases["caps"].find("failure") is None and cases["caps"].find("skipped") is None
    assert cases["perform"].find("properties") is None  # junit-10.xsd allows none there
    out = cases["perform"].find("system-out")
    assert out is not None and out.text is not None
    assert out.text.splitlines()[:2] == ["backend: sim", "spec: 3.9"]


def test_junit_bail_out_is_an_error() -> None:
    run = RunResult(
        suite="s", planned=2, cases=[CaseResult("a", Status.PASS)], bail_out="signal 15"
    )
    suite = ET.fromstring(junit.render(run)).find("testsuite")
    assert suite is not None
    assert suite.get("errors") == "1"
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["bail_out"] == "signal 15" and props["not_run"] == "1"


def test_json_form_matches_results_schema() -> None:
    doc = sample().to_dict()
    assert json.loads(sample().to_json()) == doc
    assert doc["totals"] == {"pass": 1, "fail": 1, "xfail": 0, "xpass": 0, "skip": 1, "error": 1}
    assert doc["exit_code"] == 1
    assert [r["backend"] for r in doc["results"]] == ["kvm", "sim", "kvm", "sim"]
    schema = load_schema()
    check_schema = {"$defs": schema["$defs"], **schema["$defs"]["check"]}
    jsonschema.validate(doc, check_schema)


# --------------------------------------------------------------------------
# The rules of Jenkins' xunit junit-10.xsd, written down from the schema
# (jenkinsci/xunit-plugin, src/main/resources/.../model/xsd/junit-10.xsd)
# --------------------------------------------------------------------------

#: element -> (children it may have, attributes it may have, attributes it must have)
JUNIT10: dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {
    "testsuites": (
        frozenset({"testsuite"}),
        frozenset({"name", "time", "tests", "failures", "errors"}),
        frozenset(),
    ),
    "testsuite": (
        frozenset({"testsuite", "properties", "testcase", "system-out", "system-err"}),
        frozenset(
            {"name", "tests", "failures", "errors", "group", "time", "skipped", "timestamp",
             "hostname", "id", "package", "file", "log", "url"}
        ),
        frozenset({"name", "tests", "failures", "errors"}),
    ),
    "testcase": (
        frozenset(
            {"skipped", "error", "failure", "rerunFailure", "rerunError", "flakyFailure",
             "flakyError", "system-out", "system-err"}
        ),
        frozenset({"name", "time", "classname", "group"}),
        frozenset({"name"}),
    ),
    "properties": (frozenset({"property"}), frozenset(), frozenset()),
    "property": (frozenset(), frozenset({"name", "value"}), frozenset({"name", "value"})),
    "failure": (frozenset(), frozenset({"type", "message"}), frozenset()),
    "error": (frozenset(), frozenset({"type", "message"}), frozenset()),
    "skipped": (frozenset(), frozenset({"type", "message"}), frozenset()),
    "system-out": (frozenset(), frozenset(), frozenset()),
    "system-err": (frozenset(), frozenset(), frozenset()),
}
#: SUREFIRE_TIME, the type of ``time`` on testsuites and testsuite
SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")


def junit10_violations(xml_text: str) -> list[str]:
    """Everything in a JUnit document that junit-10.xsd does not allow."""
    root = ET.fromstring(xml_text)
    out = []
    if root.tag != "testsuites":
        out.append(f"root is <{root.tag}>")
    for node in root.iter():
        rule = JUNIT10.get(node.tag)
        if rule is None:
            out.append(f"<{node.tag}> is not in the schema")
            continue
        children, allowed, required = rule
        out += [f"<{c.tag}> inside <{node.tag}>" for c in node if c.tag not in children]
        out += [f"{a}= on <{node.tag}>" for a in node.attrib if a not in allowed]
        out += [f"<{node.tag}> lacks {a}=" for a in required if a not in node.attrib]
        if node.tag in ("testsuites", "testsuite") and "time" in node.attrib:
            if not SUREFIRE_TIME.fullmatch(node.attrib["time"]):
                out.append(f"time={node.attrib['time']!r} on <{node.tag}>")
    return out


def test_every_junit_kvmpv_writes_keeps_the_junit10_rules() -> None:
    from kvmpv.scenarios import check as chk
    from kvmpv.scenarios import probe as probe_mod

    real = chk.run_checks(chk.CheckRequest(backend="both", facts=probe_mod.probe_facts()))
    for run in (sample(), RunResult(suite="s", planned=3, bail_out="signal 2"), real.run):
        assert junit10_violations(junit.render(run)) == []


def test_the_junit10_rules_can_say_no() -> None:
    bad = (
        '<testsuites skipped="1"><testsuite name="s" tests="1" failures="0" errors="0" '
        'time="-1"><testcase name="a"><properties/></testcase></testsuite></testsuites>'
    )
    assert junit10_violations(bad) == [
        "skipped= on <testsuites>",
        "time='-1' on <testsuite>",
        "<properties> inside <testcase>",
    ]


def test_report_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    """Written atomically, yet not 0600: others (a CI artifact collector) can read them."""
    import os

    from kvmpv.report.cases import write_text

    old = os.umask(0o022)
    try:
        write_text(str(tmp_path / "r.xml"), "<x/>")
        os.umask(0o077)
        write_text(str(tmp_path / "private.xml"), "<x/>")
    finally:
        os.umask(old)
    assert (tmp_path / "r.xml").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.xml").stat().st_mode & 0o777 == 0o600
