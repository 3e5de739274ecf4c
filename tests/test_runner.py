# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv.runner``: the one run loop and vCPU thread, on the real x86 KVM and on the simulator.

The kick (``immediate_exit`` + a signal to the vCPU's thread, as QEMU) is
tested on this machine's real KVM with a guest that spins forever: only a
kick that works gets it out of ``KVM_RUN``.  The negative control shows the
test can fail: without the signal, a spinning vCPU does not leave.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from _deviating import HaltingHost
from conftest import KVM_UNAVAILABLE

from kvmpv import uapi
from kvmpv.errors import KvmpvError
from kvmpv.kvm import Kvm, Vcpu
from kvmpv.memory import GuestMemory
from kvmpv.pv import pv_enable
from kvmpv.runner import (
    GuestExitError,
    VcpuGroup,
    VcpuRunner,
    guest_finished,
    run_until_finished,
    serve_pv_sclp,
    start_vcpu,
)
from kvmpv.sim import SimulatedHost
from kvmpv.syscalls import LINUX, kick_signal
from kvmpv.units import MiB

needs_x86_kvm = pytest.mark.skipif(
    bool(KVM_UNAVAILABLE) or os.uname().machine != "x86_64",
    reason=f"needs a real x86_64 /dev/kvm ({KVM_UNAVAILABLE or os.uname().machine})",
)

KICKS = 100


@pytest.fixture
def spinning() -> Iterator[Vcpu]:
    from kvmpv.x86guest import spinning_vcpu

    with Kvm() as kvm, kvm.vm_create() as vm, spinning_vcpu(vm) as vcpu:
        yield vcpu


def _wait_in_run(runner: VcpuRunner, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not runner.in_run():
        assert time.monotonic() < deadline, "the vCPU thread never entered KVM_RUN"
        time.sleep(0.0002)


@needs_x86_kvm
def test_kick_a_spinning_guest_100_times(spinning: Vcpu) -> None:
    """A guest in ``jmp $`` is kicked out of KVM_RUN every time, with no lost kick.

    Even iterations kick right after resume (the thread may not have entered
    KVM_RUN yet: immediate_exit must catch it), odd ones once the thread is
    inside (only the signal can get it out).
    """
    runner = VcpuRunner(spinning)
    runner.start()
    latencies: list[float] = []
    try:
        for i in range(KICKS):
            runner.resume()
            if i % 2:
                _wait_in_run(runner)
                time.sleep(0.001)  # well inside the guest loop
            t0 = time.monotonic()
            runner.request_stop()
            runner.wait_stopped(5.0)  # a lost kick is a timeout here
            latencies.append(time.monotonic() - t0)
            assert runner.error is None, runner.error
            assert not runner.finished.is_set()  # it never halts by itself
        assert spinning.exit_reason == uapi.KVM_EXIT_INTR
        inside = latencies[1::2]
        print(
            f"kick latency, vCPU inside KVM_RUN: median {statistics.median(inside) * 1e3:.3f} ms, "
            f"max {max(inside) * 1e3:.3f} ms over {len(inside)} kicks"
        )
    finally:
        runner.exit()
    assert runner.runs >= KICKS // 2  # every odd iteration really entered KVM_RUN


@needs_x86_kvm
def test_without_the_signal_a_spinning_vcpu_stays_in(
    spinning: Vcpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Negative control: immediate_exit alone does not stop a vCPU already inside KVM_RUN."""
    runner = VcpuRunner(spinning)
    runner.start()
    monkeypatch.setattr(LINUX, "kick", lambda fd, thread: None)
    try:
        runner.resume()
        _wait_in_run(runner)
        time.sleep(0.001)
        runner.request_stop()
        with pytest.raises(KvmpvError, match="did not leave KVM_RUN"):
            runner.wait_stopped(0.5)
    finally:
        monkeypatch.undo()  # the real kick again, so the thread can be stopped
        runner.exit()


@needs_x86_kvm
def test_kick_signal_has_a_handler_and_is_not_launchers() -> None:
    """The kick signal never kills the process, and is not one launch forwards."""
    import signal

    from kvmpv.scenarios.launch import FORWARDED
    from kvmpv.syscalls import ensure_kick_handler

    signo = ensure_kick_handler()
    assert signo == kick_signal() and signo not in FORWARDED
    assert signal.getsignal(signo) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    signal.pthread_kill(threading.get_ident(), signo)  # survives it


@contextmanager
def _sim_vm(host: SimulatedHost, protect: bool = True) -> Iterator[tuple[Any, Vcpu]]:
    with Kvm(host) as kvm, kvm.vm_create() as vm, GuestMemory(8 * MiB, sys=host) as mem:
        vm.mem_add(mem)
        vcpu = vm.vcpu_add(0)
        if protect:
            pv_enable(vm)
        yield vm, vcpu


def test_s390_finished_means_sieic_wait_or_stop() -> None:
    """run_until_finished on s390: SIEIC 0x1c (the simulated payload's disabled wait)."""
    with _sim_vm(SimulatedHost()) as (_vm, vcpu):
        with pytest.raises(KvmpvError):
            vcpu.run()  # ENABLE gave userspace the CPU state: still STOPPED
        start_vcpu(vcpu, protected=True)
        assert run_until_finished(vcpu) == uapi.KVM_EXIT_S390_SIEIC
        assert guest_finished(vcpu, uapi.KVM_EXIT_S390_SIEIC)
        run = vcpu.s390_run()
        run.s390_sieic.icptcode = uapi.ICPT_STOP
        assert guest_finished(vcpu, uapi.KVM_EXIT_S390_SIEIC)
        run.s390_sieic.icptcode = 0x04  # an instruction intercept is not "finished"
        assert not guest_finished(vcpu, uapi.KVM_EXIT_S390_SIEIC)
        assert not guest_finished(vcpu, uapi.KVM_EXIT_HLT)  # s390 never halts that way


def test_an_s390_guest_answering_hlt_is_an_error_naming_the_exit() -> None:
    host = HaltingHost(SimulatedHost())
    with _sim_vm(host) as (_vm, vcpu):  # type: ignore[arg-type]
        start_vcpu(vcpu, protected=True)
        with pytest.raises(GuestExitError) as info:
            run_until_finished(vcpu)
        msg = str(info.value)
        assert "KVM_EXIT_HLT (5)" in msg and "expected KVM_EXIT_S390_SIEIC" in msg
        assert "psw" in msg


def test_group_runs_pauses_and_finishes_on_the_simulator() -> None:
    host = SimulatedHost(run_slice_bytes=MiB)
    with _sim_vm(host) as (_vm, vcpu):
        group = VcpuGroup()
        try:
            group.add([vcpu])
            start_vcpu(vcpu, protected=True)
            group.resume()
            group.wait_finished(30)
            assert group.runners[0].finished.is_set() and group.cpu_ns() > 0
            group.pause()  # a finished runner is idle: pausing it is immediate
        finally:
            group.close()


def test_runner_exit_waits_for_the_thread_not_for_join() -> None:
    """``VcpuRunner.exit()`` returns only once the vCPU thread is done.

    It must not trust ``Thread.join()``/``is_alive()``: after a Ctrl-C
    interrupted a join (gh-90882, CPython 3.9.8-3.12) they report a running
    thread as stopped.  That state is imposed here on the thread object, and
    the thread is held in its body for 0.3 s: an exit() built on join or
    is_alive returns at once, before the thread is done.
    """
    vcpu = SimpleNamespace(
        id=0, fd=-1, backend="sim", thread=0, kick=lambda: None,
        run_struct=SimpleNamespace(immediate_exit=0),
    )  # fmt: skip
    runner = VcpuRunner(vcpu)  # type: ignore[arg-type]
    gate = threading.Event()
    finished: list[float] = []

    def held_body() -> None:
        gate.wait(10)
        finished.append(time.monotonic())

    runner._serve = held_body  # type: ignore[method-assign]
    runner.start()
    runner._thread.is_alive = lambda: False  # type: ignore[method-assign]
    runner._thread.join = lambda timeout=None: None  # type: ignore[method-assign]
    threading.Timer(0.3, gate.set).start()
    runner.exit()
    returned = time.monotonic()
    assert finished, "exit() returned while the vCPU thread was still running"
    assert finished[0] <= returned


def _booted_synthetic(host: SimulatedHost) -> Iterator[Vcpu]:
    from kvmpv import s390guest, seimage
    from kvmpv.pv import load_image, s390_machine_protect

    image = seimage.parse(seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64), "s")
    with Kvm(host) as kvm, kvm.vm_create() as vm, GuestMemory(8 * MiB, sys=host) as mem:
        vm.mem_add(mem)
        vcpu = vm.vcpu_add(0)
        load_image(vm, image)
        s390_machine_protect(vm, image, [vcpu])
        yield vcpu


def test_the_loader_sclp_call_is_served_through_the_sida() -> None:
    """A booted image's loader sets up the SCLP console (stage3b): served as QEMU serves it."""
    host = SimulatedHost()
    for vcpu in _booted_synthetic(host):
        assert run_until_finished(vcpu) == uapi.KVM_EXIT_S390_SIEIC
        assert vcpu.s390_run().psw_addr == 0xFFF  # the payload ran after the SCLP call
        assert host.sclp_answers == [0x0020]
        sccb = vcpu.s390_sida_read(0, 28)
        assert sccb[20:28] == bytes(8)  # the host's event masks: empty


def test_an_unserved_sclp_call_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import kvmpv.runner as runner

    monkeypatch.setattr(runner, "serve_pv_sclp", lambda vcpu, reason: False)
    for vcpu in _booted_synthetic(SimulatedHost()):
        with pytest.raises(GuestExitError, match="icptcode 0x68 ipa 0xb220"):
            run_until_finished(vcpu)


def test_without_the_service_signal_the_loader_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SCCB answer alone is not enough: the guest waits for the service interrupt."""
    from kvmpv.kvm import Vm

    monkeypatch.setattr(Vm, "s390_interrupt", lambda self, *a, **k: None)
    host = SimulatedHost()
    for vcpu in _booted_synthetic(host):
        group = VcpuGroup()
        try:
            group.add([vcpu])
            group.resume()
            with pytest.raises(KvmpvError, match="did not finish"):
                group.wait_finished(0.5)
            assert host.sclp_answers == [] and host.vcpu_in_run(vcpu.fd)
        finally:
            group.close()


def test_service_event_bits_reach_the_guest_as_injected() -> None:
    """__inject_service() keeps event bits apart from the SCCB answer; each reaches the guest.

    The event is delivered first (IRQ_PEND_EXT_SERVICE_EV is the higher
    priority), one interruption per entry for a protected CPU, then the SCCB
    answer with the guest's own SCCB address (the UV's saved copy).
    """
    from kvmpv.sim.kvm_host import EXT_IRQ_SERVICE_SIG, SCLP_GUEST_SCCB

    for events in (0x1, 0x2, 0x3, 0x0):
        host = SimulatedHost()
        for vcpu in _booted_synthetic(host):
            assert serve_pv_sclp(vcpu, vcpu.run(), events=events)
            assert run_until_finished(vcpu) == uapi.KVM_EXIT_S390_SIEIC
            want = [(EXT_IRQ_SERVICE_SIG, events)] if events else []
            want.append((EXT_IRQ_SERVICE_SIG, SCLP_GUEST_SCCB))
            assert host.guest_ext_interrupts(vcpu.fd) == want, hex(events)


def test_inject_service_ors_events_and_keeps_the_first_sccb() -> None:
    """Two service signals before delivery: events ORed, the second SCCB address ignored."""
    host = SimulatedHost()
    for vcpu in _booted_synthetic(host):
        assert vcpu.run() == uapi.KVM_EXIT_S390_SIEIC  # the loader's servc
        vcpu.vm.s390_interrupt(uapi.KVM_S390_INT_SERVICE, 0x4001)
        vcpu.vm.s390_interrupt(uapi.KVM_S390_INT_SERVICE, 0x8002)
        run_until_finished(vcpu)
        assert host.guest_ext_interrupts(vcpu.fd) == [(0x2401, 0x3), (0x2401, 0x10000)]


def test_serve_pv_sclp_refuses_what_is_no_event_bit() -> None:
    host = SimulatedHost()
    for vcpu in _booted_synthetic(host):
        with pytest.raises(ValueError, match="only the bits 0x3"):
            serve_pv_sclp(vcpu, vcpu.run(), events=0x4)


def test_an_external_interruption_loop_comes_back_as_icptcode_20() -> None:
    """handle_external_interrupt(): a protected guest looping on its clock comparator with an
    enabled ext new PSW makes KVM_RUN return SIEIC 0x14, and again on the next entry."""
    host = SimulatedHost()
    for vcpu in _booted_synthetic(host):
        host.guest_extint_loop(vcpu.fd)
        reason = vcpu.run()
        while serve_pv_sclp(vcpu, reason):
            reason = vcpu.run()
        run = vcpu.s390_run()
        assert (reason, int(run.s390_sieic.icptcode)) == (uapi.KVM_EXIT_S390_SIEIC, 0x14)
        assert int(run.psw_mask) & (1 << 56)  # the ext new PSW: external interrupts on
        assert vcpu.run() == uapi.KVM_EXIT_S390_SIEIC  # still looping: the same exit again
        assert int(run.s390_sieic.icptcode) == 0x14
        assert host.guest_ext_interrupts(vcpu.fd) == [(0x2401, 0x10000)]  # the SCLP answer
