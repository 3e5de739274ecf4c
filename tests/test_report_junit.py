# SPDX-License-Identifier: GPL-2.0-only
"""JUnit XML and JSON forms of a run: parseable, counts right, skip/failure elements."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

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
    case_props = {p.get("name"): p.get("value") for p in cases["perform"].findall(".//property")}
    assert case_props == {"backend": "sim", "spec": "3.9"}


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
