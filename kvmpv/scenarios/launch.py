# SPDX-License-Identifier: GPL-2.0-only
"""Run an unmodified program with the teardown cleaner armed (``kvmpv launch``).

The program gets ``libkvmpv-cleaner.so`` in ``LD_PRELOAD``; the library's
constructor arms the cleaner before ``main()`` (see ``kvmpv/native/preload.c``)
and, by default, removes itself from the environment so the program's own
children are neither preloaded nor armed.  This module checks that the program
can be preloaded at all (dynamically linked, same ELF class and machine, not
set-user-ID), builds the environment, and either ``exec``\\ s the program in
place (``exec_``: the pid a supervisor started becomes the program's, as with
``nice`` or ``taskset``; libvirt tracks QEMU by that pid) or runs it as a child
and returns its exit status (128 + N when killed by signal N).

What it touches: the program's file (ELF header and program headers, or the
``#!`` line of a script), the environment of the child, signal handlers of
the calling process while the child runs (restored afterwards); before an
exec, the dispositions Python changed at startup (SIGPIPE, SIGXFSZ ignored).
File descriptors the caller inherited (not close-on-exec) reach the program
in both modes: a supervisor hands the program fds (libvirt: QEMU's monitor,
taps, ``-add-fd``).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any, Callable, Optional

from ..closing import signals_held
from ..errors import HostError, KvmpvError, UsageError
from ..teardown import MAX_PARALLEL, default_parallel, library_path

#: Shell conventions for a command that cannot be run.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126

PT_INTERP = 3
#: Signals passed on to the child while we wait for it.  SIGINT and SIGQUIT are
#: ignored instead: a terminal sends them to the whole foreground process group,
#: so the child already has them (system(3) does the same).
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
IGNORED = (signal.SIGINT, signal.SIGQUIT)


class CommandError(KvmpvError):
    """The command cannot be run: not found (127) or not executable (126)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ElfInfo:
    """What the loader needs to know about an ELF file."""

    elf_class: int  # 1: 32-bit, 2: 64-bit
    data: int  # 1: little endian, 2: big endian
    machine: int
    interpreter: Optional[str]  # PT_INTERP; None: statically linked


def read_elf(path: str) -> Optional[ElfInfo]:
    """Parse the ELF header and the PT_INTERP entry; ``None`` if not an ELF file."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF":
            return None
        elf_class, data = ident[4], ident[5]
        order = "<" if data == 1 else ">"
        (machine,) = struct.unpack_from(order + "H", ident, 18)
        if elf_class == 2:
            (phoff,) = struct.unpack_from(order + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 54)
        else:
            (phoff,) = struct.unpack_from(order + "I", ident, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 42)
        interpreter = None
        for i in range(min(phnum, 256)):
            f.seek(phoff + i * phentsize)
            ph = f.read(phentsize)
            if len(ph) < 16:
                break
            (p_type,) = struct.unpack_from(order + "I", ph, 0)
            if p_type != PT_INTERP:
                continue
            if elf_class == 2:
                off, _vaddr, _paddr, filesz = struct.unpack_from(order + "QQQQ", ph, 8)
            else:
                off, _vaddr, _paddr, filesz = struct.unpack_from(order + "IIII", ph, 4)
            f.seek(off)
            interpreter = f.read(min(filesz, 4096)).rstrip(b"\0").decode(errors="replace")
            break
        return ElfInfo(elf_class, data, machine, interpreter)


def resolve_command(name: str, env: Optional[dict[str, str]] = None) -> str:
    """Path of ``name`` as execvp would find it; CommandError 127/126 otherwise."""
    if "/" in name:
        path = name
        if not os.path.exists(path):
            raise CommandError(f"{name}: No such file or directory", EXIT_NOT_FOUND)
    else:
        found = shutil.which(name, path=(env or os.environ).get("PATH", os.defpath))
        if found is None:
            raise CommandError(f"{name}: command not found", EXIT_NOT_FOUND)
        path = found
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CommandError(f"{name}: Permission denied", EXIT_NOT_EXECUTABLE)
    return path


def _script_interpreter(path: str, env: Optional[dict[str, str]]) -> Optional[str]:
    with open(path, "rb") as f:
        head = f.read(256)
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return None
    interp = words[0]
    if os.path.basename(interp) == "env" and len(words) > 1 and not words[1].startswith("-"):
        return resolve_command(words[1], env)
    return interp


def check_preloadable(path: str, env: Optional[dict[str, str]] = None) -> str:
    """Raise HostError unless the dynamic loader will preload our library into ``path``.

    Follows ``#!`` scripts to their interpreter (the process that is armed).
    Returns the path of the ELF file that will actually run.
    """
    lib = library_path()
    if lib is None:
        raise HostError("native cleaner not built (install kvmpv with pip)")
    ours = read_elf(str(lib))
    target = path
    for _ in range(4):
        interp = _script_interpreter(target, env)
        if interp is None:
            break
        target = interp
    try:
        info = read_elf(target)
    except OSError as err:
        raise HostError(f"cannot read {target}: {err.strerror}") from None
    if info is None:
        raise HostError(f"{target} is not an ELF executable: cannot preload the cleaner")
    if info.interpreter is None:
        raise HostError(
            f"{target} is statically linked: LD_PRELOAD cannot arm the cleaner "
            "(call kvmpv.teardown.arm() in the program instead)"
        )
    if ours is not None and (info.elf_class, info.machine) != (ours.elf_class, ours.machine):
        raise HostError(
            f"{target} is built for another ABI (ELF class {info.elf_class}, machine "
            f"{info.machine}) than {lib.name}: cannot preload the cleaner"
        )
    st = os.stat(target)
    if (st.st_mode & stat.S_ISUID and st.st_uid != os.geteuid()) or (
        st.st_mode & stat.S_ISGID and st.st_gid not in (os.getegid(), *os.getgroups())
    ):
        raise HostError(
            f"{target} is set-user/group-ID: the loader ignores LD_PRELOAD (secure execution)"
        )
    return target


@dataclass
class LaunchRequest:
    """``kvmpv launch`` arguments."""

    argv: list[str]
    parallel: Optional[int] = None  # None: plain cleaner; 0: cpuset CPUs; N: N tasks
    children: bool = False  # arm exec'd and forked children too
    #: replace this process by the program (``kvmpv launch`` does by default;
    #: the library default keeps the caller alive)
    exec_: bool = False
    env: Optional[dict[str, str]] = None  # default: os.environ
    #: the preload says on stderr when the cleaner is armed (exec mode)
    verbose: bool = False


@dataclass
class LaunchResult:
    """What happened: the program's status and whether it ran armed."""

    exit_status: int  # what kvmpv exits with
    returncode: int  # subprocess convention: -N when killed by signal N
    pid: int
    armed: bool
    cleaner_pid: Optional[int]
    parallel: int
    report: str = ""  # the preload's one-line report
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parallel_tasks(parallel: Optional[int]) -> int:
    if parallel is None:
        return 1
    if parallel == 0:
        return default_parallel()
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"--parallel must be between 0 (auto) and {MAX_PARALLEL}")
    return parallel


def preload_environment(
    base: dict[str, str],
    parallel: int,
    children: bool,
    report_fd: Optional[int] = None,
    verbose: bool = False,
) -> dict[str, str]:
    """Environment that makes the dynamic loader arm the cleaner in the program."""
    lib = library_path()
    if lib is None:
        raise HostError("native cleaner not built (install kvmpv with pip)")
    env = dict(base)
    previous = env.get("LD_PRELOAD")
    env["LD_PRELOAD"] = f"{lib}:{previous}" if previous else str(lib)
    if previous is not None:
        env["KVMPV_CLEANER_LD_PRELOAD"] = previous
    else:
        env.pop("KVMPV_CLEANER_LD_PRELOAD", None)
    env["KVMPV_CLEANER_ARM"] = "1"
    env["KVMPV_CLEANER_PARALLEL"] = str(parallel)
    env["KVMPV_CLEANER_CHILDREN"] = "1" if children else "0"
    if report_fd is not None:
        env["KVMPV_CLEANER_REPORT_FD"] = str(report_fd)
    else:
        env.pop("KVMPV_CLEANER_REPORT_FD", None)
    if verbose:
        env["KVMPV_CLEANER_VERBOSE"] = "1"
    else:
        env.pop("KVMPV_CLEANER_VERBOSE", None)
    return env


def inherited_fds() -> list[int]:
    """Descriptors above stderr that an exec would pass on (no FD_CLOEXEC).

    Python opens everything close-on-exec (PEP 446), so these are the ones
    kvmpv itself inherited: what its own supervisor meant for the program.
    """
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                out.append(fd)
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return sorted(out)


#: Signals Python ignores at startup; an exec would hand that on (subprocess
#: resets the same ones in its children, restore_signals=True).
PYTHON_IGNORED = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


def _exec(path: str, argv: list[str], env: dict[str, str]) -> None:
    """Become the program: streams flushed, Python's signal changes undone."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for sig in PYTHON_IGNORED:
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    try:
        os.execve(path, argv, env)
    except OSError as err:
        raise CommandError(f"{argv[0]}: {err.strerror}", EXIT_NOT_EXECUTABLE) from None


def exit_status_of(returncode: int) -> int:
    """Shell convention: the exit code, or 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _read_report(fd: int, out: list[str], on_start: Optional[Callable[[str], None]]) -> None:
    with os.fdopen(fd, "r", errors="replace") as f:
        line = f.readline().strip()
    out.append(line)
    if line and on_start is not None:
        on_start(line)


def launch(req: LaunchRequest, on_start: Optional[Callable[[str], None]] = None) -> LaunchResult:
    """Run ``req.argv`` with the cleaner armed; return when it has exited.

    ``on_start`` receives the preload's report line as soon as it arrives
    ("armed <pid> <cleaner pid> <parallel>" or "error <step> <errno>").
    With ``req.exec_`` this function does not return (it execs the program).
    """
    if not req.argv:
        raise UsageError("no command given (kvmpv launch [OPTIONS] -- CMD [ARGS...])")
    base = dict(os.environ if req.env is None else req.env)
    path = resolve_command(req.argv[0], base)
    check_preloadable(path, base)
    tasks = parallel_tasks(req.parallel)
    if req.exec_:
        _exec(path, req.argv, preload_environment(base, tasks, req.children, verbose=req.verbose))
    # Signals held from pipe() into the try (see signals_held), not across
    # Popen: CMD would inherit the blocked mask.
    with signals_held():
        rfd, wfd = os.pipe()  # both O_CLOEXEC; pass_fds makes wfd inheritable in the child
        try:
            env = preload_environment(base, tasks, req.children, report_fd=wfd)
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            raise
    report: list[str] = []
    previous: dict[int, Any] = {}
    try:
        # The fds our own caller gave us go on to the program, as an exec would.
        passed = (wfd, *inherited_fds())
        child = subprocess.Popen(req.argv, executable=path, env=env, pass_fds=passed)
    except BaseException as err:
        os.close(rfd)
        os.close(wfd)
        if isinstance(err, OSError):
            raise CommandError(f"{req.argv[0]}: {err.strerror}", EXIT_NOT_EXECUTABLE) from None
        raise
    os.close(wfd)
    reader = threading.Thread(target=_read_report, args=(rfd, report, on_start), daemon=True)
    with signals_held():  # inherited: SIGINT/SIGTERM go to the main thread
        reader.start()

    def forward(signo: int, frame: Optional[FrameType]) -> None:
        try:
            child.send_signal(signo)
        except OSError:
            pass

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in FORWARDED:
            previous[sig] = signal.signal(sig, forward)
        for sig in IGNORED:
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        returncode = child.wait()
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)
    reader.join(timeout=0.05)
    line = report[0] if report else ""
    warnings: list[str] = []
    armed = line.startswith("armed ")
    cleaner_pid: Optional[int] = None
    parallel = 0
    if armed:
        fields = line.split()
        cleaner_pid, parallel = int(fields[2]), int(fields[3])
    elif line:
        warnings.append(f"the program ran without the cleaner ({line})")
    else:
        warnings.append("the program ran without the cleaner (the preload did not report)")
    return LaunchResult(
        exit_status=exit_status_of(returncode),
        returncode=returncode,
        pid=child.pid,
        armed=armed,
        cleaner_pid=cleaner_pid,
        parallel=parallel,
        report=line,
        warnings=warnings,
    )


def split_command(argv: Sequence[str]) -> list[str]:
    """argparse REMAINDER keeps a leading ``--``: drop it."""
    args = list(argv)
    if args and args[0] == "--":
        args = args[1:]
    return args


__all__ = [
    "EXIT_NOT_EXECUTABLE",
    "EXIT_NOT_FOUND",
    "CommandError",
    "ElfInfo",
    "LaunchRequest",
    "LaunchResult",
    "check_preloadable",
    "exit_status_of",
    "inherited_fds",
    "launch",
    "parallel_tasks",
    "preload_environment",
    "read_elf",
    "resolve_command",
    "split_command",
]
