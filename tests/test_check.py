# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv check`` under pytest: every registered check on each backend, plus the CLI.

* ``test_check_sim[name]``: the check on the simulated s390x kernel.
* ``test_check_kvm[name]``: the check on this host's real /dev/kvm, or a skip
  with the check's own reason (e.g. "not a PV host") where it cannot run.
* The harness itself (soft checks, LIFO cleanup, cleanup errors, errors vs
  failures, SIGTERM -> cleanup + ``Bail out!``), shown with synthetic checks.
* The CLI: exit codes 0/1/2/4, ``--junit``/``--json`` files, ``--list``, and a
  deliberately deviating simulator that must make a check ``not ok``.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kvmpv.cli import main
from kvmpv.errors import Interrupted
from kvmpv.report.cases import Status
from kvmpv.report.results import load_schema
from kvmpv.runner import start_vcpu
from kvmpv.scenarios import _harness as harness
from kvmpv.scenarios import check as chk
from kvmpv.scenarios import probe as probe_mod
from kvmpv.syscalls import Syscalls

FACTS = probe_mod.probe_facts()
REPO = Path(__file__).resolve().parent.parent


def _sim_unavailable() -> str:
    try:
        from kvmpv.sim import SimulatedHost

        host = SimulatedHost()
        close_all = getattr(host, "close_all", None)
        if close_all is not None:
            close_all()
        return ""
    except (ImportError, NotImplementedError) as err:
        return f"simulator not available: {type(err).__name__} {err}"


SIM_UNAVAILABLE = _sim_unavailable()
needs_sim = pytest.mark.skipif(bool(SIM_UNAVAILABLE), reason=SIM_UNAVAILABLE)

#: Smaller than the CLI default: the overlap is still shown, the suite stays fast.
TEST_REQ = chk.CheckRequest(perform_memory=128 << 20, facts=FACTS)


def _report(case: Any) -> str:
    return "\n".join([f"{case.status.value}: {case.reason}", *case.diagnostics])


@needs_sim
@pytest.mark.parametrize("check", chk.registry(), ids=lambda c: c.name)
def test_check_sim(check: chk.Check) -> None:
    case = chk.run_one(check, "sim", FACTS, TEST_REQ)
    assert case.backend == "sim"
    assert case.status is Status.PASS, _report(case)


@pytest.mark.parametrize("check", chk.registry(), ids=lambda c: c.name)
def test_check_kvm(check: chk.Check) -> None:
    reason = chk.kvm_skip_reason(check, FACTS)
    if reason:
        pytest.skip(reason)
    case = chk.run_one(check, "kvm", FACTS, TEST_REQ)
    assert case.backend == "kvm"
    assert case.status is Status.PASS, _report(case)


def test_x86_host_runs_the_no_pv_checks_for_real() -> None:
    """On x86 KVM the interface checks that need no PV run on the real kernel in auto mode."""
    if FACTS.is_s390 or not FACTS.kvm_usable:
        pytest.skip(f"needs x86 (or other non-s390) KVM; this is {FACTS.arch}")
    pairs = dict((c.name, b) for c, b in chk.plan(chk.registry(), "auto", FACTS))
    assert pairs["pv_command_without_pv_host"] == "kvm"
    # Caps 180/217/224 are 0 on every non-s390 kernel: nothing to prove here.
    assert pairs["pv_caps_report_host"] == "sim"
    caps_check = chk.select(["pv_caps_report_host"])[0]
    assert chk.kvm_skip_reason(caps_check, FACTS) == f"needs s390x, this is {FACTS.arch}"
    assert pairs["prepare_success"] == "sim"
    assert "not" in chk.kvm_skip_reason(chk.select(["prepare_success"])[0], FACTS)


# ---------------------------------------------------------------------------
# A simulator that deviates from the spec: the checks must catch it
# ---------------------------------------------------------------------------


def deviating_factory(config: chk.SimConfig) -> Syscalls:
    """A simulator that reports PREPARE's rrc as 43, not 42 (``_deviating.PrepareRrc43Host``)."""
    from _deviating import PrepareRrc43Host

    host: Syscalls = PrepareRrc43Host.build(config)
    return host


@needs_sim
def test_deviating_simulator_fails_the_check() -> None:
    req = chk.CheckRequest(
        backend="sim", select=("prepare_success",), sim_factory=deviating_factory, facts=FACTS
    )
    stream = io.StringIO()
    result = chk.run_checks(req, stream=stream)
    assert [c.status for c in result.results] == [Status.FAIL]
    assert result.exit_code == 1
    text = result.ktap()
    assert stream.getvalue() == text  # what was streamed is what the run renders
    assert "not ok 1 sim: prepare_success" in text
    assert "PREPARE rrc: expected '0x2a', got '0x2b'" in text


@needs_sim
def test_cli_exit_1_on_deviation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(harness, "default_sim_factory", deviating_factory)
    code = main(["check", "--backend", "sim", "-k", "prepare_success"])
    out = capsys.readouterr().out
    assert code == 1
    assert "not ok 1 sim: prepare_success" in out
    assert out.rstrip().splitlines()[-1].startswith("# Totals: pass:0 fail:1")


# Every deliberately deviating simulator (tests/_deviating.py) against the whole
# registry: tests/test_registry_coverage.py.


# ---------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------


def test_cli_kvm_backend_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit_path, json_path = tmp_path / "c.xml", tmp_path / "c.json"
    code = main(["check", "--backend", "kvm", "--junit", str(junit_path), "--json", str(json_path)])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "TAP version 13"
    assert lines[1] == f"1..{len(chk.registry())}"
    results = [ln for ln in lines if ln.startswith(("ok ", "not ok "))]
    assert len(results) == len(chk.registry())
    assert all(" kvm: " in ln for ln in results)
    doc = json.loads(json_path.read_text())
    assert {r["backend"] for r in doc["results"]} == {"kvm"}
    assert doc["exit_code"] == code
    suite = ET.parse(junit_path).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == str(len(chk.registry()))
    if not FACTS.kvm_usable:
        # Nothing could run: every check SKIP with the reason, exit 4 -- and
        # this test says so rather than pass (CI has /dev/kvm: a failure there).
        assert code == 4 and doc["totals"]["pass"] == 0, doc["totals"]
        pytest.skip(f"no usable /dev/kvm: {FACTS.kvm_error}: no kvm-backend check could pass")
    if FACTS.pv_host:
        pytest.skip("on a PV host the kvm backend runs the PV checks for real; their totals "
                    "are the real-host runbook's, not asserted here")  # fmt: skip
    # This host (x86): the no-PV interface check passes for real; the caps check (s390x
    # only) and the PV ones skip with the reason.
    assert code == 0
    assert "ok 2 kvm: pv_command_without_pv_host" in lines
    assert any("prepare_success # SKIP" in ln and "180" in ln for ln in results)
    assert any("pv_caps_report_host # SKIP needs s390x" in ln for ln in results), out
    assert doc["totals"]["pass"] == 1


def test_cli_all_skipped_exit_4(capsys: pytest.CaptureFixture[str]) -> None:
    if FACTS.pv_async:
        pytest.skip("on a PV host prepare_success runs for real")
    code = main(["check", "--backend", "kvm", "-k", "prepare_success", "-k", "perform_*"])
    out = capsys.readouterr().out
    assert code == 4, out
    assert "pass:0 fail:0" in out and "# SKIP" in out


@needs_sim
def test_cli_auto_all_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    json_path = tmp_path / "auto.json"
    threads_before = threading.active_count()
    code = main(["check", "--json", str(json_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert threading.active_count() == threads_before  # every check joined its threads
    doc = json.loads(json_path.read_text())
    schema = load_schema()  # the results-file schema that `kvmpv exercise` embeds this in
    jsonschema.validate(doc, {"$defs": schema["$defs"], **schema["$defs"]["check"]})
    assert doc["totals"]["fail"] == 0 and doc["totals"]["error"] == 0
    assert doc["totals"]["pass"] == len(chk.registry())
    for line in out.splitlines():
        if line.startswith(("ok ", "not ok ")):
            assert " sim: " in line or " kvm: " in line, line
    if FACTS.pv_reason():
        assert f"# simulator used for the PV checks because: {FACTS.pv_reason()}" in out


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-k", "no_such_check_xyz"]) == 2
    assert main(["check", "--backend", "bogus"]) == 2
    assert (
        main(["check", "--junit", "/nonexistent-dir/x.xml", "-k", "caps", "--backend", "kvm"]) == 2
    )
    err = capsys.readouterr().err
    assert "no check matches" in err and "cannot write /nonexistent-dir/x.xml" in err
    assert "Traceback" not in err


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    for c in chk.registry():
        assert c.name in out


# ---------------------------------------------------------------------------
# The harness: soft checks, deferred cleanup, errors, signals
# ---------------------------------------------------------------------------


def _synthetic(name: str, fn: Any) -> chk.Check:
    return chk.Check(name, fn, "synthetic", "test")


def _dummy_factory(config: chk.SimConfig) -> Syscalls:
    return object()  # type: ignore[return-value]


DUMMY_REQ = chk.CheckRequest(sim_factory=_dummy_factory, facts=FACTS)


def test_soft_check_continues_and_fails() -> None:
    seen: list[str] = []

    def fn(ctx: chk.CheckContext) -> None:
        ctx.check_eq(1, 2, "first")
        seen.append("after first")
        ctx.check_true(True, "fine")

    case = chk.run_one(_synthetic("soft", fn), "sim", FACTS, DUMMY_REQ)
    assert case.status is Status.FAIL
    assert seen == ["after first"]
    assert any(
        "Check| At test_check.py" in d and "first: expected 2, got 1" in d for d in case.diagnostics
    )


def test_cleanup_is_lifo_and_runs_on_failure() -> None:
    order: list[int] = []

    def fn(ctx: chk.CheckContext) -> None:
        ctx.defer(order.append, 1)
        ctx.defer(order.append, 2)
        raise chk.CheckFailed("stop")

    case = chk.run_one(_synthetic("lifo", fn), "sim", FACTS, DUMMY_REQ)
    assert case.status is Status.FAIL and order == [2, 1]


def test_cleanup_error_fails_a_passing_check() -> None:
    ran: list[str] = []

    def boom() -> None:
        raise OSError(9, "bad fd")

    def fn(ctx: chk.CheckContext) -> None:
        ctx.defer(ran.append, "outer")
        ctx.defer(boom)

    case = chk.run_one(_synthetic("cleanup", fn), "sim", FACTS, DUMMY_REQ)
    assert case.status is Status.FAIL
    assert ran == ["outer"]  # the remaining cleanup still ran
    assert any(d.startswith("sim: Cleanup| ") for d in case.diagnostics)


def test_bug_in_check_is_error_not_fail() -> None:
    def fn(ctx: chk.CheckContext) -> None:
        raise TypeError("oops")

    case = chk.run_one(_synthetic("bug", fn), "sim", FACTS, DUMMY_REQ)
    assert case.status is Status.ERROR
    assert case.reason == "TypeError: oops"
    assert any(d.startswith("sim: Exception| ") for d in case.diagnostics)


def test_sigterm_runs_cleanup_then_bails_out(monkeypatch: pytest.MonkeyPatch) -> None:
    cleaned = threading.Event()

    def first(ctx: chk.CheckContext) -> None:
        pass

    def second(ctx: chk.CheckContext) -> None:
        ctx.defer(cleaned.set)
        raise Interrupted(signal.SIGTERM)  # what cli's SIGTERM handler raises

    def third(ctx: chk.CheckContext) -> None:
        raise AssertionError("must not run")

    registry = [
        _synthetic("first", first),
        _synthetic("second", second),
        _synthetic("third", third),
    ]
    monkeypatch.setattr(harness, "_REGISTRY", registry)
    buf = io.StringIO()
    with pytest.raises(Interrupted):
        chk.run_checks(
            chk.CheckRequest(backend="sim", sim_factory=_dummy_factory, facts=FACTS), stream=buf
        )
    assert cleaned.is_set()
    lines = buf.getvalue().splitlines()
    assert "ok 1 sim: first" in lines
    assert lines[-3] == "Bail out! interrupted by signal 15, cleanup done"
    assert lines[-2] == "# Planned tests != run tests (3 != 1)"
    assert lines[-1].startswith("# Totals: pass:1 ")
    assert not any("third" in ln for ln in lines)


@needs_sim
def test_sigterm_subprocess_exit_143() -> None:
    """A real SIGTERM to ``kvmpv check``: Bail out!, totals, exit 143, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmpv", "check", "--backend", "sim"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("ok 1 "):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=60)
    text = "".join(seen) + out
    assert proc.returncode == 143, text + err
    assert "Bail out! interrupted by signal 15, cleanup done" in text
    assert text.rstrip().splitlines()[-1].startswith("# Totals:")
    assert "Traceback" not in err


def test_zero_fraction_reads_memory() -> None:
    from kvmpv.memory import GuestMemory

    with GuestMemory(1 << 20) as mem:
        ctypes.memset(mem.addr, 0, mem.size)
        assert chk.zero_fraction(mem) == 1.0
        ctypes.memset(mem.addr, 0xA5, 4096)
        assert chk.zero_fraction(mem) == pytest.approx(1 - 4096 / (1 << 20))


def test_docs_document_every_check() -> None:
    page = (REPO / "docs" / "check.md").read_text()
    section = page.split("<!-- section: check -->")[1].split("<!-- /section: check -->")[0]
    missing = [c.name for c in chk.registry() if f"`{c.name}`" not in section]
    assert not missing, f"docs/check.md's check section lacks {missing}"


@needs_sim
def test_fd_left_open_fails_the_check() -> None:
    """A check that leaks a simulator fd fails at cleanup (and the fd is closed)."""
    leaked: list[Any] = []

    def fn(ctx: chk.CheckContext) -> None:
        from kvmpv.kvm import Kvm

        leaked.append(ctx.sys)
        Kvm(ctx.sys)  # never closed

    case = chk.run_one(_synthetic("leak", fn), "sim", FACTS, chk.CheckRequest(facts=FACTS))
    assert case.status is Status.FAIL
    assert "fd(s) left open" in case.reason
    assert leaked[0].open_fds() == 0


@needs_sim
def test_sigterm_with_a_vcpu_in_run_kicks_and_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while a vCPU thread sits in KVM_RUN: cleanup kicks it, joins it, closes every fd."""
    seen: dict[str, Any] = {}

    def fn(ctx: chk.CheckContext) -> None:
        guest = chk.make_vm(ctx)
        vcpu = guest.vcpus[0]
        start_vcpu(vcpu, protected=True)
        ctx.sim.pause_at("run:slice")  # the booting guest stays inside KVM_RUN

        def kick() -> None:
            vcpu.kick()
            ctx.sim.resume("run:slice")

        worker = ctx.thread(lambda: chk._run_once(vcpu), "vcpu0")
        worker.kick = kick
        chk._wait_in_run(ctx, vcpu)
        seen.update(worker=worker, host=ctx.sys)
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(harness, "_REGISTRY", [_synthetic("blocked", fn)])
    before = threading.active_count()
    buf = io.StringIO()
    with pytest.raises(Interrupted):
        chk.run_checks(chk.CheckRequest(backend="sim", facts=FACTS), stream=buf)
    assert not seen["worker"].is_alive()
    assert seen["host"].open_fds() == 0
    assert threading.active_count() == before
    assert "Bail out! interrupted by signal 15, cleanup done" in buf.getvalue()


def test_no_dev_kvm_everything_skips_with_the_reason() -> None:
    """A host without /dev/kvm (CI container): --backend kvm is all SKIP, exit 4; auto uses sim."""
    facts = probe_mod.HostFacts(
        "x86_64", "6.18.0", kvm_error="open(/dev/kvm) failed: errno 2 (ENOENT)"
    )
    result = chk.run_checks(chk.CheckRequest(backend="kvm", facts=facts))
    assert result.exit_code == 4
    assert {c.status for c in result.results} == {Status.SKIP}
    pv_case = next(c for c in result.results if c.name == "prepare_success")
    assert pv_case.reason == "no usable /dev/kvm: open(/dev/kvm) failed: errno 2 (ENOENT)"
    assert {b for _, b in chk.plan(chk.registry(), "auto", facts)} == {"sim"}


def test_pv_host_plan_runs_pv_checks_for_real() -> None:
    """On an s390x PV host with cap 224, auto picks the real kernel for the PV checks."""
    facts = probe_mod.HostFacts(
        "s390x", "6.8.0", cap_protected=1, cap_async=1, async_destroy_param=1, destroy_fast=False
    )
    where = {c.name: b for c, b in chk.plan(chk.registry(), "auto", facts)}
    assert where["prepare_success"] == "kvm"
    assert where["reboot_race_second_prepare"] == "kvm"
    assert where["perform_success_rc"] == "kvm"
    assert where["perform_fast_rc_untouched"] == "sim"  # this UV has no Destroy-Fast
    assert where["pv_command_without_pv_host"] == "sim"  # the host has PV
    assert where["async_destroy_off"] == "sim"  # async_destroy is 1
    assert where["perform_destroy_eio"] == "sim"  # fault injection
    assert facts.pv_reason() == ""


def test_worker_waits_use_done_not_join() -> None:
    """``Worker.wait``/``join_or_fail`` wait for the thread's body, not for join().

    gh-90882 (CPython 3.9.8-3.12): after a Ctrl-C interrupted a join,
    join()/is_alive() report a running thread as stopped; a check trusting
    them would close its VM under a running PERFORM or KVM_RUN.  That state
    is imposed on the thread object here while its body is held for 0.3 s.
    """
    import time

    from kvmpv.scenarios.check import Worker

    for method in ("wait", "join_or_fail"):
        gate = threading.Event()
        finished: list[float] = []

        def body(gate: threading.Event = gate, finished: list[float] = finished) -> int:
            gate.wait(10)
            finished.append(time.monotonic())
            return 7

        w = Worker(body, name=f"held-{method}")
        w.start()
        w.is_alive = lambda: False  # type: ignore[method-assign]
        w.join = lambda timeout=None: None  # type: ignore[method-assign]
        threading.Timer(0.3, gate.set).start()
        if method == "wait":
            assert w.wait(30) == 7
        else:
            w.join_or_fail()
        assert finished, f"Worker.{method} returned while the thread was still running"


@needs_sim
@pytest.mark.parametrize("host_class", ["HaltingHost", "LenientHost"])
def test_s390_vcpu_protocol_fails_on_a_wrong_simulator(host_class: str) -> None:
    """The protocol check fails against a simulator that answers HLT or runs a STOPPED vCPU."""
    import _deviating

    wrong = getattr(_deviating, host_class)

    def factory(config: chk.SimConfig) -> Syscalls:
        host: Syscalls = wrong.build(config)
        return host

    select = ("s390_vcpu_protocol",)
    right = chk.run_checks(chk.CheckRequest(backend="sim", select=select, facts=FACTS))
    assert [c.status for c in right.results] == [Status.PASS]
    req = chk.CheckRequest(backend="sim", select=select, sim_factory=factory, facts=FACTS)
    result = chk.run_checks(req, stream=io.StringIO())
    statuses = {c.name: c.status for c in result.results}
    assert statuses["s390_vcpu_protocol"] is Status.FAIL, result.ktap()
    assert result.exit_code == 1
    reasons = " ".join(c.reason for c in result.results)
    if host_class == "HaltingHost":
        assert "KVM_EXIT_HLT" in reasons
    else:
        assert "KVM_RUN on a STOPPED vCPU after a PV command" in reasons
