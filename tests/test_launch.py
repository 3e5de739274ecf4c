# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv launch``: exit status, errors, children, and real third-party programs.

The third-party programs (Debian's python3, sqlite3, redis-server) are
installed by the ``debian_programs`` session fixture with apt-get when the
tests run as root and they are missing; otherwise those tests are skipped with
the reason.  For each one: the exit is seen by a pidfd waiter, the memory is
freed afterwards by a cleaner named ``cleanup/<pid>`` (its exit), numbers are
printed (``-s``), and only generous bounds are asserted.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import pytest
from conftest import ARMED_PIDS, PYTHON3, ROOT, tree_env

from kvmpv import teardown
from kvmpv.errors import HostError
from kvmpv.scenarios import launch as launcher

AVAILABLE, WHY = teardown.native_available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"native cleaner unavailable: {WHY}")
MODES = [pytest.param(None, id="plain"), pytest.param(2, id="parallel2")]


def kvmpv_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmpv", "launch", *args]


def run_launch(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = tree_env()
    return subprocess.run(
        kvmpv_cmd(*args), cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=60, **kw
    )  # type: ignore[call-overload, no-any-return]


def wait_fd(fd: int, timeout: float) -> Optional[float]:
    ready, _, _ = select.select([fd], [], [], timeout)
    return time.monotonic() if ready else None


def need(programs: dict[str, Optional[str]], *names: str) -> None:
    for name in names:
        if not programs.get(name):
            pytest.skip(f"{name} not installed (and could not be installed with apt-get)")


class Launched:
    """``kvmpv launch -- CMD`` (exec in place): the waited-for pid is CMD itself."""

    def __init__(self, argv: list[str], parallel: Optional[int], **popen: object) -> None:
        opts = ["--parallel", str(parallel)] if parallel else []
        env = tree_env()
        self.proc = subprocess.Popen(
            kvmpv_cmd(*opts, "--", *argv),
            cwd=str(ROOT),
            env=env,
            text=True,
            **popen,  # type: ignore[call-overload]
        )
        ARMED_PIDS.add(self.proc.pid)
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.cfd: Optional[int] = None
        self.cleaner: Optional[int] = None

    def find_cleaner(self, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = teardown.find_cleaners(self.proc.pid)
            if found:
                self.cleaner = found[0]
                self.cfd = os.pidfd_open(self.cleaner)
                return self.cleaner
            time.sleep(0.01)
        raise AssertionError(f"no cleanup/{self.proc.pid} appeared")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.cfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.cfd, signal.SIGKILL)
            wait_fd(self.cfd, 5)
            os.close(self.cfd)
        os.close(self.pidfd)


@pytest.fixture
def launched() -> Iterator[list[Launched]]:
    items: list[Launched] = []
    yield items
    for item in items:
        item.close()


# --- exit status and errors ----------------------------------------------------


def test_exit_status_is_the_programs() -> None:
    r = run_launch("--", "sh", "-c", "exit 7")
    assert r.returncode == 7, r.stderr
    assert r.stderr == ""


def test_killed_by_signal_is_seen_as_such() -> None:
    # Exec in place (the default): the waiter sees the program's own death by
    # the signal; --wait: kvmpv's exit status says 128 + N, as a shell would.
    r = run_launch("--", "sh", "-c", "kill -KILL $$")
    assert r.returncode == -signal.SIGKILL
    r = run_launch("--wait", "--", "sh", "-c", "kill -KILL $$")
    assert r.returncode == 128 + signal.SIGKILL


def test_exec_in_place_by_default_wait_keeps_a_parent() -> None:
    code = "import os; print(os.getpid(), os.getppid())"
    for opts, same in (((), True), (("--exec",), True), (("--wait",), False)):
        env = tree_env()
        proc = subprocess.Popen(
            kvmpv_cmd(*opts, "--", PYTHON3 or sys.executable, "-c", code),
            cwd=str(ROOT), env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, _ = proc.communicate(timeout=60)
        pid, ppid = map(int, out.split())
        assert (pid == proc.pid) is same, (opts, pid, proc.pid)
        assert (ppid == proc.pid) is not same, (opts, ppid, proc.pid)
    r = run_launch("--wait", "--exec", "--", "true")
    assert r.returncode == 2 and "exclude each other" in r.stderr


@pytest.mark.parametrize("wait", [False, True], ids=["exec", "wait"])
def test_sigterm_reaches_the_program(wait: bool) -> None:
    env = tree_env()
    opts = ["--wait"] if wait else []
    proc = subprocess.Popen(
        kvmpv_cmd(*opts, "-v", "--", "sleep", "30"),
        cwd=str(ROOT),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "armed" in proc.stderr.readline()  # the program runs
        proc.send_signal(signal.SIGTERM)
        # --wait forwards it and reports 128 + N; exec'd, sleep itself got it
        want = 128 + signal.SIGTERM if wait else -signal.SIGTERM
        assert proc.wait(timeout=10) == want
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_command_not_found_is_127() -> None:
    r = run_launch("--", "kvmpv-no-such-command")
    assert r.returncode == launcher.EXIT_NOT_FOUND
    assert r.stderr.strip() == "kvmpv: error: kvmpv-no-such-command: command not found"


def test_not_executable_is_126(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("not a program\n")
    r = run_launch("--", str(path))
    assert r.returncode == launcher.EXIT_NOT_EXECUTABLE
    assert "Permission denied" in r.stderr and "Traceback" not in r.stderr


def test_no_command_is_a_usage_error() -> None:
    r = run_launch()
    assert r.returncode == 2
    assert "no command given" in r.stderr


def _static_binary() -> Optional[str]:
    for cand in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(cand):
            info = launcher.read_elf(cand)
            if info is not None and info.interpreter is None:
                return cand
    return None


def test_static_binary_is_refused() -> None:
    static = _static_binary()
    if static is None:
        pytest.skip("no statically linked program on this host")
    r = run_launch("--", static, "--version")
    assert r.returncode == 3
    assert "statically linked" in r.stderr and "Traceback" not in r.stderr


def test_elf_reader_sees_the_interpreter() -> None:
    info = launcher.read_elf("/bin/sh")
    assert info is not None and info.interpreter and "ld" in info.interpreter
    assert launcher.read_elf(str(Path(__file__))) is None


# --- children ---------------------------------------------------------------------

PROBE = (
    "import os\n"
    "maps = open('/proc/self/maps').read()\n"
    "me = os.getpid()\n"
    "name = ('cleanup/%d' % me)[:15]\n"
    "def comm(p):\n"
    "    try:\n"
    "        return open('/proc/%s/comm' % p).read().strip()\n"
    "    except OSError:\n"
    "        return ''\n"
    "armed = any(comm(p) == name for p in os.listdir('/proc') if p.isdigit())\n"
    "print(me, 'libkvmpv-cleaner' in maps, armed, os.environ.get('LD_PRELOAD', '-'))\n"
)


def _probe_children(*opts: str) -> tuple[str, list[str]]:
    r = run_launch("-v", *opts, "--", "sh", "-c", f'echo "$LD_PRELOAD"; {PYTHON3} -c "$0"', PROBE)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()[:2]
    return first, second.split()


def test_children_are_not_armed_by_default(debian_programs: dict[str, Optional[str]]) -> None:
    need(debian_programs, "python3")
    sh_preload, (_pid, loaded, armed, preload) = _probe_children()
    assert sh_preload == ""  # the shell itself no longer carries it
    assert (loaded, armed, preload) == ("False", "False", "-")


def test_children_option_arms_children(debian_programs: dict[str, Optional[str]]) -> None:
    need(debian_programs, "python3")
    sh_preload, (pid, loaded, armed, _preload) = _probe_children("--children")
    ARMED_PIDS.add(int(pid))
    assert "libkvmpv-cleaner.so" in sh_preload
    assert (loaded, armed) == ("True", "True")


# --- real third-party programs -------------------------------------------------


def _python3_run(
    parallel: Optional[int], armed: bool, launched: list[Launched]
) -> tuple[float, Optional[float]]:
    # os._exit: no interpreter finalization, so the kernel frees the 256 MiB
    # at exit (a plain exit() would munmap it in user space first).
    code = (
        "import os, sys; b = b'x' * (256 << 20); print('ready', flush=True); "
        "sys.stdin.readline(); os._exit(0)"
    )
    pipes: dict[str, object] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    if armed:
        item = Launched([PYTHON3, "-c", code], parallel, **pipes)
    else:
        proc = subprocess.Popen([PYTHON3, "-c", code], text=True, **pipes)  # type: ignore[call-overload]
        item = Launched.__new__(Launched)
        item.proc, item.pidfd, item.cfd, item.cleaner = proc, os.pidfd_open(proc.pid), None, None
    launched.append(item)
    assert item.proc.stdout is not None and item.proc.stdin is not None
    assert item.proc.stdout.readline().strip() == "ready"
    if armed:
        cleaner = item.find_cleaner()
        assert Path(f"/proc/{cleaner}/comm").read_text().strip() == f"cleanup/{item.proc.pid}"[:15]
    t0 = time.monotonic()
    item.proc.stdin.close()
    t_exit = wait_fd(item.pidfd, 10)
    assert t_exit is not None
    t_free = wait_fd(item.cfd, 10) if item.cfd is not None else None
    assert item.proc.wait() == 0
    return t_exit - t0, (t_free - t_exit) if t_free is not None else None


@pytest.mark.parametrize("parallel", MODES)
def test_debian_python3_allocating_memory(
    debian_programs: dict[str, Optional[str]], launched: list[Launched], parallel: Optional[int]
) -> None:
    need(debian_programs, "python3")
    sync_exit, _ = _python3_run(parallel, False, launched)
    armed_exit, freed = _python3_run(parallel, True, launched)
    assert freed is not None, "the cleaner did not exit after python3"
    print(
        f"\npython3 256 MiB, os._exit: exit {sync_exit * 1e3:.1f} ms plain, "
        f"{armed_exit * 1e3:.1f} ms under kvmpv launch ({parallel or 1} task(s)), "
        f"freed {freed * 1e3:.1f} ms after the exit"
    )
    assert freed < 10


def test_sqlite3_in_memory_database(
    debian_programs: dict[str, Optional[str]], launched: list[Launched]
) -> None:
    need(debian_programs, "sqlite3")
    item = Launched(
        [str(debian_programs["sqlite3"]), ":memory:"],
        None,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    launched.append(item)
    assert item.proc.stdin is not None and item.proc.stdout is not None
    item.proc.stdin.write(
        "PRAGMA cache_size = -400000;\n"
        "CREATE TABLE t(x);\n"
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c LIMIT 200000)\n"
        "  INSERT INTO t SELECT randomblob(600) FROM c;\n"
        "SELECT count(*) FROM t;\n"
    )
    item.proc.stdin.flush()
    assert item.proc.stdout.readline().strip() == "200000"
    item.find_cleaner()
    assert item.cfd is not None and item.cleaner is not None
    rss_kb = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{item.cleaner}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
    )
    assert rss_kb > 100 * 1024  # the cleaner shares (and reports) sqlite's memory
    t0 = time.monotonic()
    item.proc.stdin.close()  # EOF: sqlite3 exits
    t_exit = wait_fd(item.pidfd, 10)
    t_free = wait_fd(item.cfd, 10)
    assert t_exit is not None and t_free is not None
    assert item.proc.wait() == 0
    print(
        f"\nsqlite3 {rss_kb >> 10} MiB: exit {(t_exit - t0) * 1e3:.1f} ms after EOF, "
        f"freed {(t_free - t_exit) * 1e3:.1f} ms later"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _redis_cli(cli: str, port: int, *args: str) -> str:
    r = subprocess.run(
        [cli, "-p", str(port), *args], capture_output=True, text=True, timeout=60, check=False
    )
    return r.stdout.strip()


def _redis_run(
    programs: dict[str, Optional[str]], launched: list[Launched], armed: bool
) -> tuple[float, float, Optional[float]]:
    """Start redis (armed or not), fill it, SHUTDOWN NOSAVE; return the timings."""
    server, cli = str(programs["redis-server"]), str(programs["redis-cli"])
    port = _free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    argv += ["no", "--enable-debug-command", "yes", "--loglevel", "warning"]
    if armed:
        item = Launched(argv, None, stdout=subprocess.DEVNULL)
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        item = Launched.__new__(Launched)
        item.proc, item.pidfd, item.cfd, item.cleaner = proc, os.pidfd_open(proc.pid), None, None
    launched.append(item)
    # A liveness bound, not a speed claim: each redis-cli PING is a process
    # start, about a second under TCG (tox -e s390x-kernel), where 20 s ran out
    # on a loaded 2-core host in Linux 6.1.
    deadline = time.monotonic() + 90
    while _redis_cli(cli, port, "PING") != "PONG":
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    assert _redis_cli(cli, port, "DEBUG", "POPULATE", "1000000", "key", "100") == "OK"
    used = int(_redis_cli(cli, port, "INFO", "memory").split("used_memory:")[1].split()[0])
    if armed:
        item.find_cleaner()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        # RESP by hand: a redis-cli process would add its start-up time.
        t0 = time.monotonic()
        conn.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
    t_exit = wait_fd(item.pidfd, 20)
    assert t_exit is not None
    t_free = wait_fd(item.cfd, 20) if item.cfd is not None else None
    assert item.proc.wait(timeout=10) == 0
    return used, t_exit - t0, (t_free - t_exit) if t_free is not None else None


def test_redis_server_filled_then_shut_down(
    debian_programs: dict[str, Optional[str]], launched: list[Launched]
) -> None:
    need(debian_programs, "redis-server", "redis-cli")
    used, plain_exit, _ = _redis_run(debian_programs, launched, armed=False)
    used2, armed_exit, freed = _redis_run(debian_programs, launched, armed=True)
    assert freed is not None, "the cleaner did not exit after redis-server"
    print(
        f"\nredis-server {used >> 20} MiB: SHUTDOWN NOSAVE -> exit {plain_exit * 1e3:.1f} ms "
        f"without cleaner, {armed_exit * 1e3:.1f} ms with kvmpv launch; "
        f"cleaner freed {used2 >> 20} MiB {freed * 1e3:.1f} ms after the exit"
    )
    assert freed < 10


def test_python_api_sees_the_preloaded_cleaner() -> None:
    # One shared object, one state: arm() under the launcher returns the
    # preload's cleaner instead of creating a second one.
    code = (
        "import os; from kvmpv import teardown\n"
        "before = teardown.status(); after = teardown.arm()\n"
        "found = teardown.find_cleaners(os.getpid())\n"
        "print(os.getpid(), before.pid, after.pid, len(found))\n"
    )
    r = run_launch("-v", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    pid, before, after, count = r.stdout.split()
    ARMED_PIDS.add(int(pid))
    assert before == after != "None"
    assert count == "1"
    assert f"armed (pid {before}, parallel 1)" in r.stderr


def test_script_runs_armed_through_its_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nexit 9\n")
    script.chmod(0o755)
    r = run_launch("-v", "--", str(script))
    assert r.returncode == 9
    assert "armed (pid" in r.stderr


def test_setuid_program_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a set-user-ID copy owned by another user")
    prog = tmp_path / "true-suid"
    shutil.copy("/bin/true", prog)
    os.chown(prog, 65534, 65534)
    prog.chmod(0o4755)
    r = run_launch("--", str(prog))
    assert r.returncode == 3
    assert "set-user/group-ID" in r.stderr


def test_preload_reports_a_failed_clone(pids_cgroup_of_one: Path) -> None:
    # The shell joins a cgroup allowing one task, then execs (no new task) a
    # program with the preload: the cleaner's clone() must fail, be reported
    # on stderr, and the program must still run.
    lib = teardown.library_path()
    assert lib is not None
    script = (
        f"echo $$ > {pids_cgroup_of_one}/cgroup.procs && "
        f'exec env LD_PRELOAD={lib} KVMPV_CLEANER_ARM=1 sh -c "echo ran; exit 4"'
    )
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode == 4 and r.stdout == "ran\n"
    assert "kvmpv: cleaner not armed in" in r.stderr
    assert "clone failed: Resource temporarily unavailable" in r.stderr


def test_launch_runs_the_program_when_the_cleaner_cannot_be_armed(
    pids_cgroup_of_one: Path,
) -> None:
    # The same through `kvmpv launch` (exec in place: kvmpv itself is the one
    # task the cgroup allows): the program runs, one line on stderr says why.
    cmd = " ".join(kvmpv_cmd("--", "sh", "-c", "'echo ran; exit 4'"))
    script = f"echo $$ > {pids_cgroup_of_one}/cgroup.procs && exec {cmd}"
    env = tree_env()
    r = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=env
    )
    assert r.returncode == 4 and r.stdout == "ran\n", r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "cleaner not armed" in lines[0] and "clone failed" in lines[0]


def _pin_to(cpus: set[int]) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, cpus)


def test_parallel_without_n_uses_the_cpuset(monkeypatch: pytest.MonkeyPatch) -> None:
    # The launcher started on one CPU, then on two (where there are two):
    # as many tasks as CPUs it may use.
    mine = sorted(os.sched_getaffinity(0))
    for cpus in ({mine[0]}, set(mine[:2])):
        r = run_launch("-v", "--parallel", "--", "true", preexec_fn=_pin_to(cpus))
        assert r.returncode == 0, r.stderr
        assert f"parallel {len(cpus)})" in r.stderr, (cpus, r.stderr)
    # ... and no more than 8 on a big machine
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert teardown.default_parallel() == 8


def test_no_fd_left_when_the_environment_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    # The report pipe exists before the preload environment names its fd; an
    # error building that environment must close both ends.
    def refuse(*args: object, **kw: object) -> dict[str, str]:
        raise HostError("native cleaner not built (test)")

    monkeypatch.setattr(launcher, "preload_environment", refuse)
    true = shutil.which("true")
    assert true is not None
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(HostError, match="not built"):
        launcher.launch(launcher.LaunchRequest([true]))
    assert sorted(os.listdir("/proc/self/fd")) == before
