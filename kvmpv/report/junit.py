# SPDX-License-Identifier: GPL-2.0-only
"""JUnit XML for a ``RunResult``, in the dialect CI systems agree on.

One ``<testsuites>`` (``name``, ``tests``, ``failures``, ``errors``,
``time``) with one ``<testsuite>`` (those plus ``skipped``, ``timestamp``,
``hostname``), run-wide ``<properties>``, and one ``<testcase classname=...
name=... time=...>`` per case.  Skips are ``<skipped message="reason"/>``,
failures ``<failure message=... type="fail">diagnostics</failure>``, errors
``<error ...>``; a case's own properties (its spec row, its backend) and
diagnostics go to its ``<system-out>``.  That is what the strictest common
consumer allows, the JUnit schema of Jenkins' xunit plugin (``junit-10.xsd``):
no ``skipped`` on ``<testsuites>``, no ``<properties>`` inside a
``<testcase>``; GitLab, the Jenkins junit plugin, GitHub test reporters and
``junitparser`` read it too.

The backend is part of ``classname`` (``kvmpv.check.sim``) and a property of
each case, so a simulated result never looks like a real one in a CI report.
Built with ``xml.etree``: escaping is the library's job, not ours.
"""

from __future__ import annotations

import datetime
import socket
import xml.etree.ElementTree as ET

from .cases import CaseResult, RunResult, Status


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


def _xml_safe(text: str) -> str:
    # XML 1.0 forbids most C0 control characters even when escaped; kernel
    # strings (comm names, sysfs contents) can carry them.
    return "".join(ch if ch in "\t\n\r" or ord(ch) >= 0x20 else f"\\x{ord(ch):02x}" for ch in text)


def _properties(parent: ET.Element, props: dict[str, str]) -> None:
    if not props:
        return
    node = ET.SubElement(parent, "properties")
    for name, value in sorted(props.items()):
        ET.SubElement(node, "property", name=_xml_safe(name), value=_xml_safe(str(value)))


def _testcase(parent: ET.Element, suite: str, case: CaseResult) -> None:
    classname = f"{suite}.{case.backend}" if case.backend else suite
    node = ET.SubElement(
        parent,
        "testcase",
        classname=_xml_safe(classname),
        name=_xml_safe(case.name),
        time=_seconds(case.duration_s),
    )
    props = dict(case.properties)
    if case.backend:
        props.setdefault("backend", case.backend)
    text = _xml_safe("\n".join(case.diagnostics))
    head = "\n".join(f"{k}: {v}" for k, v in sorted(props.items()))
    reason = _xml_safe(case.reason)
    if case.status is Status.SKIP:
        ET.SubElement(node, "skipped", message=reason)
    elif case.status in (Status.FAIL, Status.XPASS):
        fail = ET.SubElement(
            node, "failure", message=reason or "check failed", type=case.status.value
        )
        fail.text = text
    elif case.status is Status.ERROR:
        err = ET.SubElement(node, "error", message=reason or "error", type="error")
        err.text = text
    out = "\n".join(part for part in (_xml_safe(head), text) if part)
    if out:
        ET.SubElement(node, "system-out").text = out


def render(run: RunResult, *, hostname: str = "", timestamp: str = "") -> str:
    """The JUnit XML document of ``run`` (UTF-8 text with an XML declaration)."""
    counts = run.counts
    not_run = max(run.plan - counts.total, 0)
    suites = ET.Element(
        "testsuites",
        name=run.suite,
        tests=str(counts.total),
        failures=str(counts.failed + counts.xpass),
        errors=str(counts.errors + (1 if run.bail_out else 0)),
        time=_seconds(run.duration_s),
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=run.suite,
        tests=str(counts.total),
        failures=str(counts.failed + counts.xpass),
        errors=str(counts.errors + (1 if run.bail_out else 0)),
        skipped=str(counts.skipped),
        time=_seconds(run.duration_s),
        timestamp=timestamp
        or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        hostname=_xml_safe(hostname or socket.gethostname()),
    )
    props = dict(run.properties)
    if run.skip_all:
        props["skip_all"] = run.skip_all
    if run.bail_out:
        props["bail_out"] = run.bail_out
    if run.interrupted:
        props["interrupted"] = "true"
    if not_run:
        props["not_run"] = str(not_run)
    _properties(suite, props)
    for case in run.cases:
        _testcase(suite, run.suite, case)
    if run.header:
        ET.SubElement(suite, "system-out").text = _xml_safe("\n".join(run.header))
    if run.bail_out:
        ET.SubElement(suite, "system-err").text = _xml_safe(f"Bail out! {run.bail_out}")
    ET.indent(suites)  # Python 3.9+
    body = ET.tostring(suites, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


__all__ = ["render"]
