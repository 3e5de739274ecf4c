# SPDX-License-Identifier: GPL-2.0-only
"""A Ctrl-C right after a resource was created must not lose it.

CPython runs a pending signal's handler at the next bytecode boundary, and
one of those lies between a system call that returns a new fd (or makes a
directory, or forks) and the statement that records it for cleanup.  CI
once caught a SIGINT there: an fd on a cgroup's ``tasks`` file leaked from
an interrupted ``kvmpv reboot`` run (about 1 in 80 interrupted runs).

Each test here wraps one creating call so that SIGINT is raised in the
calling thread the moment it returns: the exact window, every time.  With
the creation and its bookkeeping under ``signals_held()`` the signal stays
pending until the resource is recorded, the KeyboardInterrupt comes after,
and cleanup finds everything.  Without it the resource is lost and the
test fails (each was run against the code before the fix).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, cast

import pytest
from conftest import needs_root

from kvmpv import closing
from kvmpv.accounting import AccountingUnavailable, ExitWatcher, cgroup_scope, observe
from kvmpv.accounting import cgroups as cg_mod
from kvmpv.kvm import Kvm
from kvmpv.scenarios import check as chk
from kvmpv.scenarios import probe as probe_mod
from kvmpv.scenarios import shutdown as sd
from kvmpv.scenarios.reboot import RebootRequest, run_reboot
from kvmpv.sim import SimulatedHost
from kvmpv.uapi import KVM_CREATE_VCPU, KVM_CREATE_VM
from kvmpv.units import GiB, MiB


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _interrupt_after(fn: Callable[..., Any], when: Callable[..., bool]) -> tuple[Any, list[Any]]:
    """``fn`` that raises SIGINT in its caller's thread right after the first matching call."""
    fired: list[Any] = []

    def wrapper(*args: Any, **kw: Any) -> Any:
        ret = fn(*args, **kw)
        if not fired and when(*args):
            fired.append(args)
            # raise(3): this thread.  Blocked, it stays pending until the mask
            # is restored; unblocked, the handler runs before we return.
            signal.raise_signal(signal.SIGINT)
        return ret

    return wrapper, fired


@pytest.fixture(autouse=True)
def _main_thread_sigint() -> Iterator[None]:
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    # Nothing may stay blocked or pending after a test.
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.SIGINT not in signal.sigpending()


def test_signals_held_defers_and_restores() -> None:
    with pytest.raises(KeyboardInterrupt):
        with closing.signals_held():
            signal.raise_signal(signal.SIGINT)
            assert signal.SIGINT in signal.sigpending()
            reached = True  # the interrupt waits for the end of the block
    assert reached


def test_cgroup_file_write(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "tasks"
    target.write_text("")
    wrapped, fired = _interrupt_after(os.open, lambda path, *a: path == str(target))
    monkeypatch.setattr(cg_mod.os, "open", wrapped)
    before = _fds()
    with pytest.raises(KeyboardInterrupt):
        cg_mod._write(str(target), "1234")
    monkeypatch.undo()
    assert fired
    assert _fds() == before, "the fd opened for the write leaked"
    assert target.read_text() == "1234", "the write was cut short"


@needs_root
def test_cgroup_mkdir(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        scope = cgroup_scope()
        scope.__enter__()
    except AccountingUnavailable as exc:
        pytest.skip(exc.reason)
    try:
        wrapped, fired = _interrupt_after(os.mkdir, lambda path, *a: "kvmpv-probe-" in str(path))
        monkeypatch.setattr(cg_mod.os, "mkdir", wrapped)
        try:
            with pytest.raises(KeyboardInterrupt):
                scope.create("probe")
        except AccountingUnavailable as exc:
            pytest.skip(exc.reason)
        monkeypatch.undo()
        assert fired
        made = scope.leftovers()
        assert made, "the directory made before the interrupt is unknown to the scope"
    finally:
        scope.__exit__(None, None, None)
    assert not [d for d in made if os.path.isdir(d)]


@pytest.mark.parametrize("request_", [KVM_CREATE_VM, KVM_CREATE_VCPU], ids=["vm", "vcpu"])
def test_kvm_handles(request_: int) -> None:
    host = SimulatedHost()
    before = _fds()
    kvm = Kvm(host)
    try:
        vm = kvm.vm_create(0) if request_ == KVM_CREATE_VCPU else None
        wrapped, fired = _interrupt_after(host.ioctl, lambda fd, req, *a: req == request_)
        host.ioctl = wrapped  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            if vm is None:
                kvm.vm_create(0)
            else:
                vm.vcpu_add(0)
        assert fired
        if vm is None:
            assert len(kvm.vms) == 1, "the VM fd is not on kvm.vms"
        else:
            assert len(vm.vcpus) == 1, "the vCPU fd is not on vm.vcpus"
    finally:
        kvm.close()
    assert _fds() == before


def test_check_context_kvm() -> None:
    host = SimulatedHost()
    before = _fds()
    ctx = chk.CheckContext(
        chk.Check("t", lambda ctx: None, "synthetic", "test"),
        "sim",
        host,
        probe_mod.HostFacts(arch="s390x", kernel="test"),
    )
    wrapped, fired = _interrupt_after(host.open, lambda path, *a: True)
    host.open = wrapped  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        ctx.kvm()
    assert fired
    assert ctx.flush_deferred() == []
    assert _fds() == before, "/dev/kvm was opened but never deferred for close"


def test_exit_watcher_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        before = _fds()
        watcher = ExitWatcher(use_connector=False)
        wrapped, fired = _interrupt_after(observe.pidfd_open, lambda pid: pid == proc.pid)
        monkeypatch.setattr(observe, "pidfd_open", wrapped)
        with pytest.raises(KeyboardInterrupt):
            watcher.watch(proc.pid)
        monkeypatch.undo()
        assert fired
        watcher.close()
        assert _fds() == before
    finally:
        proc.kill()
        proc.wait()


def _sigblk(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def test_shutdown_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _fds()
    wrapped, fired = _interrupt_after(os.pidfd_open, lambda pid, *a: True)
    monkeypatch.setattr(sd.os, "pidfd_open", wrapped)
    with pytest.raises(KeyboardInterrupt):
        with sd._Processes() as procs:
            procs.spawn("worker", ["--size", str(MiB)])
    monkeypatch.undo()
    assert fired
    assert len(procs.children) == 1, "the forked worker is not on the list"
    assert procs.children[0].proc.returncode is not None, "the worker was not killed and reaped"
    assert _fds() == before


def test_spawned_worker_takes_sigint_and_sigterm_back() -> None:
    # spawn() forks with both blocked and exec keeps the mask: the worker
    # must unblock them, or kill(1) would no longer stop it.
    with sd._Processes() as procs:
        child = procs.spawn("worker", ["--size", str(MiB)])
        child.expect("ready", 60)
        blocked = _sigblk(child.pid)
    mask = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    assert blocked & mask == 0, f"SigBlk {blocked:#x}"


def _tasks_file(path: str, *rest: Any) -> bool:
    return str(path).endswith(("/tasks", "/cgroup.threads", "/cgroup.procs"))


@needs_root
@pytest.mark.parametrize("nth", [1, 2, 5])
def test_reboot_run_interrupted_at_a_cgroup_write(
    monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    """The CI failure, made deterministic: SIGINT right after the nth cgroup file
    opened (on cgroup2 the first is this process moving into its own cgroup)."""
    try:
        with cgroup_scope() as scope:
            scope.thread_cgroups("vmm", ["probe"])["probe"].add_thread(threading.get_native_id())
    except AccountingUnavailable as exc:
        pytest.skip(f"per-thread cgroup accounting unavailable: {exc.reason}")
    own = Path("/proc/self/cgroup").read_text()
    req = RebootRequest(
        backend="sim", layout=((0, 16 * MiB), (2 * GiB, 48 * MiB)), cycles=3, mode="both"
    )
    run_reboot(req)  # imports and caches warm: they open files of their own
    before = _fds()
    threads = threading.active_count()
    seen: list[str] = []

    def nth_write(path: Any, *_: Any) -> bool:
        # The main thread's writes only: the async_cleanup thread blocks SIGINT,
        # and a signal raised there would stay pending on it and vanish.
        if _tasks_file(path) and threading.current_thread() is threading.main_thread():
            seen.append(str(path))
        return len(seen) == nth

    wrapped, fired = _interrupt_after(os.open, nth_write)
    monkeypatch.setattr(cg_mod.os, "open", wrapped)
    with pytest.raises(KeyboardInterrupt):
        run_reboot(req)
    monkeypatch.undo()
    assert fired
    assert _fds() == before
    assert threading.active_count() == threads
    mine = [c for c in cg_mod.iter_kvmpv_cgroups() if f"-p{os.getpid()}" in c]
    assert not mine, f"cgroups left: {mine}"
    assert Path("/proc/self/cgroup").read_text() == own, "process not moved back home"


def test_check_worker_threads_block_sigint_and_sigterm() -> None:
    # signals_held() in the main thread holds a process-directed signal only
    # if no other thread can take it: every thread kvmpv starts blocks both.
    ctx = chk.CheckContext(
        chk.Check("t", lambda ctx: None, "synthetic", "test"),
        "sim",
        SimulatedHost(),
        probe_mod.HostFacts(arch="s390x", kernel="test"),
    )
    seen: list[set[int]] = []
    ctx.thread(lambda: seen.append(signal.pthread_sigmask(signal.SIG_BLOCK, [])), "probe")
    assert ctx.flush_deferred() == []
    assert seen and {signal.SIGINT, signal.SIGTERM} <= seen[0]


# --------------------------------------------------------------------------
# SIGTERM is never an error that error handling may swallow
# --------------------------------------------------------------------------


def test_interrupted_is_outside_the_error_family() -> None:
    # Like KeyboardInterrupt: no ``except KvmpvError`` / ``except Exception``
    # on an error path can take the signal for an error and carry on.
    assert not issubclass(closing.Interrupted, Exception)
    assert closing.Interrupted(signal.SIGTERM).exit_code == 143


@pytest.fixture
def sigterm_raises() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, closing.raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.usefixtures("sigterm_raises")
def test_sigterm_during_the_probe_stops_the_reboot(
    kvm: Kvm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI failure: SIGTERM while ``kvmpv exercise``'s reboot step probes the host.

    The probe creates a VM to see whether this process may (s390x without
    PGSTE may not) and turns a failure into "failed: ..."; ``select_backend``
    turns a failed probe into "use the simulator".  A SIGTERM whose handler
    ran inside either was reported as a probe failure and the reboot went on
    for minutes to exit 0.  Here the VM creation takes the signal, every time.
    """

    def vm_create_with_sigterm(self: Kvm, *args: Any, **kw: Any) -> Any:
        vm = real_vm_create(self, *args, **kw)
        signal.raise_signal(signal.SIGTERM)  # handled before the next statement
        return vm

    real_vm_create = Kvm.vm_create
    monkeypatch.setattr(Kvm, "vm_create", vm_create_with_sigterm)
    from kvmpv.scenarios.reboot import select_backend

    with pytest.raises(closing.Interrupted):
        probe_mod.probe_kvm()
    with pytest.raises(closing.Interrupted):
        select_backend(RebootRequest(memory=GiB, cycles=1, backend="auto"))
    with pytest.raises(closing.Interrupted):
        probe_mod.probe_host()


# --------------------------------------------------------------------------
# The async-cleanup registry: a signal at its start never leaves an entry
# that can never be joined (the cleanup path spun on it)
# --------------------------------------------------------------------------


def _joined_within(seconds: float) -> closing.CompletionThread:
    """``pv.join_all_cleanups()`` on a thread, so that a spin fails the test instead of hanging."""
    from kvmpv import pv

    t = closing.CompletionThread(pv.join_all_cleanups, "join-all")
    t.start()
    t.done.wait(seconds)
    return t


def test_a_cleanup_never_started_is_an_error_not_a_spin() -> None:
    from kvmpv import pv

    never = pv.AsyncCleanup(cast(Any, None))
    with pv._live_lock:
        pv._live.add(never)  # what a signal in the old start() window left behind
    try:
        t = _joined_within(5)
        assert t.done.is_set(), "join_all_cleanups() spins on a cleanup that was never started"
        assert isinstance(t.error, RuntimeError) and "not started" in str(t.error)
    finally:
        with pv._live_lock:
            pv._live.discard(never)


def test_sigint_as_a_cleanup_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT right after the registry took the entry: raised after the thread's start."""
    from kvmpv import pv

    class SignallingSet(weakref.WeakSet):  # type: ignore[type-arg]
        def add(self, item: Any) -> None:
            super().add(item)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(pv, "_live", SignallingSet())
    cleanup = pv.AsyncCleanup(cast(Any, None))  # PERFORM on no VM: an error, recorded
    with pytest.raises(KeyboardInterrupt):
        cleanup.start()
    assert cleanup.running or cleanup.done  # started, not a registered ghost
    t = _joined_within(10)
    assert t.done.is_set() and t.error is None, t.error
    assert cleanup.done and cleanup.outcome.error is not None
