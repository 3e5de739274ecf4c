# SPDX-License-Identifier: GPL-2.0-only
"""A real QEMU under ``kvmpv launch``, directly and through a libvirt-style wrapper.

QEMU is the program the launcher exists for.  Each test starts
``qemu-system-x86_64`` with a small preallocated guest (paused), the way a
supervisor would: with a file descriptor of its own handed over (libvirt
passes QEMU its monitor, taps and ``-add-fd`` sets), then quits it over QMP.
Checked: the started pid *is* QEMU (exec in place), the fd arrives, the
cleaner ``cleanup/<pid>`` holds the guest's memory while QEMU runs and is gone
after the exit, the memory is released (the VM cgroup's memory counter,
where the host has one), and the exit status is QEMU's own.  ``.ci/run``
installs ``qemu-system-x86``; without it (or without a cgroup for the
memory check) these tests SKIP with the reason, which CI does not accept.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from conftest import ARMED_PIDS, tree_env

from kvmpv import teardown
from kvmpv.accounting import AccountingUnavailable, Cgroup, cgroup_scope

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import qemu_peer  # noqa: E402

ROOT = BENCH.parent
GUEST = 256 << 20
AVAILABLE, WHY = teardown.native_available()


def _qemu_or_skip() -> str:
    if not AVAILABLE:
        pytest.skip(f"native cleaner unavailable: {WHY}")
    try:
        return qemu_peer.find_qemu()
    except qemu_peer.Skip as exc:
        pytest.skip(str(exc))


@pytest.fixture
def vm_cgroup() -> Iterator[Cgroup]:
    """A private cgroup for QEMU, whose memory counter shows the release.

    Where no cgroup can be made (not root) the tests that need it SKIP with
    the reason, rather than drop the memory-released check without a word.
    """
    with contextlib.ExitStack() as stack:
        try:
            scope = stack.enter_context(cgroup_scope())
            cg = scope.create("vm")
        except AccountingUnavailable as err:
            pytest.skip(f"cgroup accounting unavailable, so no memory-released check: {err.reason}")
        yield cg


def _assert_released(cg: Cgroup, mem_after: Optional[int]) -> None:
    """The VM cgroup's memory counter after the release: (nearly) nothing left."""
    if mem_after is None:
        pytest.skip(f"the VM cgroup has no memory counter: {cg.memory_missing_reason()}")
    assert mem_after < GUEST // 4, f"{mem_after} bytes still charged after the release"


def _vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _run_quit(
    prefix: list[str], tmp_path: Path, cg: Optional[Cgroup], qemu: str
) -> tuple[subprocess.Popen[bytes], float, float, Optional[int]]:
    """Start QEMU under ``prefix`` with a pipe's read end as fd ``-add-fd``;
    check it there, quit; returns (process, exit s, release s, memory after).
    A ``prefix`` ending in "--" is a launcher (QEMU's path follows); any
    other is an emulator wrapper (QEMU's arguments only)."""
    qmp = str(tmp_path / "qmp.sock")
    r, w = os.pipe()
    os.set_inheritable(r, True)
    try:
        argv = qemu_peer.qemu_argv(
            qemu, GUEST, qmp, ["-add-fd", f"fd={r},set=7,opaque=kvmpv-test"]
        )
        argv = prefix + (argv if prefix[-1] == "--" else argv[1:])
        run = qemu_peer.start(argv, qmp, True, cg, pass_fds=(r,))
    finally:
        os.close(r)
    try:
        pid = run.proc.pid
        ARMED_PIDS.add(pid)
        # Exec in place: the pid the supervisor started is QEMU itself.
        assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(qemu)
        # The descriptor it was handed arrived (QEMU keeps it, or a dup of it, in fdset 7).
        sets = run.qmp.command("query-fdsets")
        assert [s["fdset-id"] for s in sets] == [7], sets
        assert os.fstat(w).st_ino in {os.stat(f"/proc/{pid}/fd/{f['fd']}").st_ino
                                      for f in sets[0]["fds"]}  # fmt: skip
        cleaners = qemu_peer.cleaners_of(pid)
        assert cleaners, f"no cleanup/{pid}: the preload did not arm the cleaner"
        for c in cleaners:
            ARMED_PIDS.add(c)
        # The cleaner holds QEMU's address space: the preallocated guest.
        assert _vm_rss(cleaners[0]) >= GUEST
        exit_s, release_s, _charged = qemu_peer.quit_and_measure(run, want_cleaner=True)
        # Exited (a zombie until init reaps it) means its exit_mmap is done.
        assert all(_state(c) in ("Z", "gone") for c in cleaners), [_state(c) for c in cleaners]
        mem = cg.memory() if cg is not None else None
        return run.proc, exit_s, release_s, None if mem is None else mem.current_bytes
    finally:
        os.close(w)
        qemu_peer.stop(run)


def test_qemu_under_kvmpv_launch(tmp_path: Path, vm_cgroup: Cgroup) -> None:
    qemu = _qemu_or_skip()
    proc, exit_s, release_s, mem_after = _run_quit(
        qemu_peer.kvmpv_prefix(), tmp_path, vm_cgroup, qemu
    )
    print(f"\nQEMU {GUEST >> 20} MiB under kvmpv launch: exit {exit_s * 1e3:.1f} ms, "
          f"release {release_s * 1e3:.1f} ms, cgroup memory after: {mem_after}")  # fmt: skip
    assert proc.returncode == 0  # QEMU's own status after quit
    assert exit_s <= release_s
    _assert_released(vm_cgroup, mem_after)


def test_exit_status_is_qemus_own(tmp_path: Path) -> None:
    qemu = _qemu_or_skip()
    bad = [qemu, "-machine", "none", "-display", "none", "-device", "kvmpv-no-such-device"]
    plain = subprocess.run(bad, capture_output=True, text=True, timeout=60)
    env = tree_env()
    launched = subprocess.run(
        qemu_peer.kvmpv_prefix() + bad, capture_output=True, text=True, timeout=60, env=env
    )
    assert plain.returncode != 0
    assert launched.returncode == plain.returncode, launched.stderr
    assert "kvmpv-no-such-device" in launched.stderr


WRAPPER = """#!/bin/sh
exec kvmpv launch -- {qemu} "$@"
"""


def test_libvirt_emulator_wrapper(
    tmp_path: Path, vm_cgroup: Cgroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's <emulator> wrapper, two lines, run as libvirt runs the emulator.
    qemu = _qemu_or_skip()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # "kvmpv" on PATH is this tree's (the installed one may be older)
    shim = bindir / "kvmpv"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m kvmpv "$@"\n')
    wrapper = tmp_path / "qemu-kvmpv"
    wrapper.write_text(WRAPPER.format(qemu=qemu))
    for p in (shim, wrapper):
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    assert len(wrapper.read_text().splitlines()) == 2
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', os.defpath)}")
    t0 = time.monotonic()
    proc, exit_s, release_s, mem_after = _run_quit([str(wrapper)], tmp_path, vm_cgroup, qemu)
    print(f"\nwrapper: exit {exit_s * 1e3:.1f} ms, release {release_s * 1e3:.1f} ms "
          f"({time.monotonic() - t0:.1f} s in all)")  # fmt: skip
    assert proc.returncode == 0
    _assert_released(vm_cgroup, mem_after)


def test_wait_mode_keeps_a_parent_and_still_hands_over_fds(tmp_path: Path) -> None:
    # --wait: the started pid is kvmpv's (what the default avoids), and the
    # fds kvmpv inherited still reach QEMU (subprocess would close them).
    qemu = _qemu_or_skip()
    qmp = str(tmp_path / "qmp.sock")
    r, w = os.pipe()
    os.set_inheritable(r, True)
    prefix = qemu_peer.kvmpv_prefix()
    prefix.insert(prefix.index("launch") + 1, "--wait")
    argv = prefix + qemu_peer.qemu_argv(qemu, GUEST, qmp, ["-add-fd", f"fd={r},set=3"])
    try:
        run = qemu_peer.start(argv, qmp, True, None, pass_fds=(r,))
    finally:
        os.close(r)
    try:
        assert os.path.realpath(f"/proc/{run.proc.pid}/exe") != os.path.realpath(qemu)
        children = Path(f"/proc/{run.proc.pid}/task/{run.proc.pid}/children").read_text().split()
        (child,) = [int(c) for c in children]
        assert os.path.realpath(f"/proc/{child}/exe") == os.path.realpath(qemu)
        sets = run.qmp.command("query-fdsets")
        inodes = {os.stat(f"/proc/{child}/fd/{f['fd']}").st_ino for f in sets[0]["fds"]}
        assert os.fstat(w).st_ino in inodes
        for c in qemu_peer.cleaners_of(child):
            ARMED_PIDS.add(c)
        run.qmp.send("quit")
        assert run.proc.wait(timeout=60) == 0
    finally:
        os.close(w)
        qemu_peer.stop(run)
