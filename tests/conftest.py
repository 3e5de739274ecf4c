# SPDX-License-Identifier: GPL-2.0-only
"""Shared test fixtures: what the host offers, and leftovers after the suite."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from skip_allowlist import Allowed, allowed

from kvmpv.errors import KvmpvError
from kvmpv.kvm import Kvm
from kvmpv.memory import mem_available  # noqa: F401  (re-exported: tests size memory to it)

#: the source tree under test; children started by the tests import kvmpv from it
ROOT = Path(__file__).resolve().parent.parent


def tree_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that must run this tree's kvmpv."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


#: the unprivileged user of the "no permission, no guess" tests
NOBODY = 65534


@dataclass(frozen=True)
class Nobody:
    """How to run this tree's kvmpv as uid 65534: ``argv`` (setpriv and an
    interpreter it may execute) and ``env(**extra)`` (PYTHONPATH at a copy it
    can read)."""

    argv: list[str]
    tree: str

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": self.tree, "PYTHONDONTWRITEBYTECODE": "1", **extra}


@pytest.fixture(scope="session")
def nobody() -> Iterator[Nobody]:
    """The one way the tests drop to user nobody.

    A checkout below a 0700 directory (``mktemp -d``, /root) is out of uid
    65534's reach whatever kvmpv does, so the imported kvmpv (with its native
    library) is copied to a world-readable directory first; a pyenv
    interpreter below /root may not be usable by it either, so the system one
    is tried first.  SKIP with the reason when neither works.
    """
    import sys
    import tempfile

    import kvmpv
    from kvmpv import teardown

    if os.geteuid() != 0:
        pytest.skip("needs root to switch to uid 65534")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    d = tempfile.mkdtemp(prefix="kvmpv-nobody-")
    try:
        pkg = os.path.join(d, "kvmpv")
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(Path(kvmpv.__file__).parent, pkg, ignore=ignore)
        lib = teardown.library_path()
        native = os.path.join(pkg, "native")
        if lib is not None and not os.path.exists(os.path.join(native, lib.name)):
            shutil.copy(lib, native)
        os.chmod(d, 0o755)
        for base, dirs, files in os.walk(d):
            for n in dirs:
                os.chmod(os.path.join(base, n), 0o755)
            for n in files:
                os.chmod(os.path.join(base, n), 0o755 if n.endswith(".so") else 0o644)
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        # The system interpreter first: one below /root runs for uid 65534
        # but cannot start itself again (kvmpv shutdown's worker: EACCES).
        for python in ("/usr/bin/python3", sys.executable):
            who = Nobody([*prefix, python], d)
            probe = subprocess.run(
                [*who.argv, "-c", "import sys, kvmpv; assert sys.version_info >= (3, 9)"],
                cwd="/", env=who.env(), capture_output=True, timeout=60,
            )  # fmt: skip
            if probe.returncode == 0:
                yield who
                return
        pytest.skip(f"uid {NOBODY} cannot run a Python interpreter that imports kvmpv from {d}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _kvm_unavailable_reason() -> str:
    try:
        with Kvm():
            return ""
    except KvmpvError as err:
        return str(err)


KVM_UNAVAILABLE = _kvm_unavailable_reason()
IS_ROOT = os.geteuid() == 0

needs_kvm = pytest.mark.skipif(
    bool(KVM_UNAVAILABLE), reason=f"no usable /dev/kvm: {KVM_UNAVAILABLE}"
)
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (cgroups, taskstats)")

#: KVMPV_REQUIRE_PRIVILEGED=1 (set by .ci/run): every skip fails unless its
#: reason is on the reviewed allow-list (tests/skip_allowlist.py: what the CI
#: machine, x86_64 with root, /dev/kvm, cgroups and every tool .ci/run
#: installs, cannot be), so CI cannot pass vacuously on a machine that lost a
#: privilege, a tool or memory.  The accepted skips are listed at the end.
REQUIRE_PRIVILEGED = os.environ.get("KVMPV_REQUIRE_PRIVILEGED") == "1"
#: (node id, reason, allow-list entry) of every accepted skip of this run
ALLOWED_SKIPS: list[tuple[str, str, Allowed]] = []


def _skip_reason(longrepr: object) -> str:
    """The reason a skip report gives, without pytest's "Skipped: " prefix."""
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    return reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason


def _police_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under KVMPV_REQUIRE_PRIVILEGED=1: fail a skip the allow-list does not accept."""
    if not (REQUIRE_PRIVILEGED and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report.longrepr)
    entry = allowed(reason)
    if entry is not None:
        ALLOWED_SKIPS.append((report.nodeid, reason, entry))
        return
    report.outcome = "failed"
    report.longrepr = (
        "KVMPV_REQUIRE_PRIVILEGED=1: skipped for a reason not on the allow-list "
        f"(tests/skip_allowlist.py), and CI must run it: {reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _police_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    # A whole module skipped at import (pytest.importorskip, allow_module_level).
    outcome = yield
    _police_skip(outcome.get_result())  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The accepted skips, grouped by allow-list entry, at the end of the run."""
    if not REQUIRE_PRIVILEGED:
        return
    tr = terminalreporter
    tr.section("skips accepted by tests/skip_allowlist.py (KVMPV_REQUIRE_PRIVILEGED=1)")
    if not ALLOWED_SKIPS:
        tr.write_line("none")
        return
    by_entry: dict[Allowed, list[tuple[str, str]]] = {}
    for nodeid, reason, entry in ALLOWED_SKIPS:
        by_entry.setdefault(entry, []).append((nodeid, reason))
    for entry, hits in by_entry.items():
        tr.write_line(f"{len(hits)} x /{entry.pattern}/: {entry.why}")
        for nodeid, reason in hits:
            tr.write_line(f"    {nodeid}: {reason}")


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    if KVM_UNAVAILABLE:
        pytest.skip(f"no usable /dev/kvm: {KVM_UNAVAILABLE}")
    with Kvm() as handle:
        yield handle


@pytest.fixture(autouse=True)
def signal_mask_unchanged() -> Iterator[None]:
    """A test must leave the main thread's signal mask as it found it.

    Every child a later test starts inherits that mask through fork and exec
    (``subprocess`` resets some dispositions, never the mask): a SIGTERM left
    blocked here would make every later "SIGTERM stops kvmpv" test hang or
    pass for the wrong reason.  The mask is put back, and the test that
    changed it fails, naming what it left.
    """
    import signal

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    after = signal.pthread_sigmask(signal.SIG_SETMASK, before)
    if after != before:
        left = sorted(signal.Signals(s).name for s in after ^ before)
        pytest.fail(f"the test left the main thread's signal mask changed: {', '.join(left)}")


@pytest.fixture(scope="session", autouse=True)
def no_kvmpv_cgroup_left() -> Iterator[None]:
    """After the whole suite: no cgroup named *kvmpv* created during it is left.

    Runs last (session-scoped autouse finalizer); a leftover makes the session
    fail with an error naming the directories.  Cgroups whose creator (the pid
    in the name) is another live process are ignored: on a shared machine
    another kvmpv run may be busy; a dead creator's cgroup is a leftover.
    """
    import time

    from kvmpv.accounting.cgroups import find_leftovers

    started = time.time() - 1.0
    yield
    report = find_leftovers("/sys/fs/cgroup", since=started, ignore_live_other_creators=True)
    if report.leftovers:
        pytest.fail(f"kvmpv cgroups left behind by the test suite: {report.leftovers}")


#: Pids of the processes the tests armed (their cleaners are ``cleanup/<pid>``);
#: tests add to it, ``no_cleaner_left`` checks them after the suite.
ARMED_PIDS: set[int] = set()


@pytest.fixture(scope="session", autouse=True)
def no_cleaner_left() -> Iterator[None]:
    """After the whole suite: no ``cleanup/<pid>`` cleaner of a process the tests armed.

    Also catches any cleaner whose parent is this pytest process.  Cleaners of
    other users of the shared machine are not looked at.  A cleaner may still
    be freeing memory (or be a zombie waiting for init) for a moment: wait up
    to 10 s before failing.
    """
    import time

    from kvmpv.teardown import find_cleaners

    yield
    me = os.getpid()

    def leftovers() -> list[str]:
        names = {f"cleanup/{pid}"[:15] for pid in ARMED_PIDS | {me}}
        left = []
        for pid in find_cleaners():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if name in names or ppid == me:
                left.append(f"{pid} ({name})")
        return left

    deadline = time.monotonic() + 10
    left = leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftovers()
    if left:
        pytest.fail(f"cleaner processes left behind by the test suite: {left}")


@pytest.fixture
def pids_cgroup_of_one() -> Iterator[Path]:
    """A pids cgroup (v1 hierarchy or v2 root) with pids.max = 1 (root only)."""
    base = Path("/sys/fs/cgroup/pids")
    if not (base / "cgroup.procs").exists():
        base = Path("/sys/fs/cgroup")
        control = base / "cgroup.subtree_control"
        if not control.exists() or "pids" not in control.read_text().split():
            base = Path("/nonexistent")
    if os.geteuid() != 0 or not (base / "cgroup.procs").exists():
        pytest.skip("needs root and a pids cgroup controller to make clone() fail")
    path = base / f"kvmpv-h7clonefail-p{os.getpid()}-{secrets.token_hex(3)}"
    path.mkdir()
    try:
        (path / "pids.max").write_text("1")
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (base / "cgroup.procs").write_text(pid)
        path.rmdir()


#: program -> Debian package, for the ``debian_programs`` fixture.
DEBIAN_PACKAGES = {
    "sqlite3": "sqlite3",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "strace": "strace",
}
PYTHON3 = "/usr/bin/python3"  # Debian's interpreter, not the one running pytest


@pytest.fixture(scope="session")
def debian_programs() -> dict[str, Optional[str]]:
    """Paths of third-party programs the tests run, installing missing ones as root.

    Programs nobody here wrote, from Debian packages (``DEBIAN_PACKAGES``):
    apt-get install when root and missing (apt-get update first if that
    fails); a test needing one that is still missing skips with the reason.
    """
    missing = sorted({pkg for prog, pkg in DEBIAN_PACKAGES.items() if shutil.which(prog) is None})
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    found = {prog: shutil.which(prog) for prog in DEBIAN_PACKAGES}
    found["python3"] = PYTHON3 if os.access(PYTHON3, os.X_OK) else None
    return found
