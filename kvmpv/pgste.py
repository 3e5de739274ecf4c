# SPDX-License-Identifier: GPL-2.0-only
"""PGSTE: the page-table extensions s390 KVM needs in every process that creates a VM.

On s390x ``KVM_CREATE_VM`` fails with EINVAL unless the calling process's mm
was created with PGSTEs (``kvm_arch_init_vm()`` -> ``s390_enable_sie()``,
kernels up to at least 6.19; spec 10.1).  The kernel decides at exec time
(``init_new_context()``): the sysctl ``vm.allocate_pgste`` is 1, or the binary
has a ``PT_S390_PGSTE`` program header (``-Wl,--s390-pgste``; QEMU and the
KVM selftests have it), or the process calling ``execve()`` already had
PGSTEs.  A CPython interpreter has none of these, so kvmpv restarts itself
once through ``kvmpv-pgste`` (``kvmpv/native/pgste.c``, built at install time
on s390x), which carries the header and execs the interpreter again.

This module answers "does this process have PGSTEs, and how" and builds the
restart; ``kvmpv.cli`` decides when to use it, ``kvmpv.kvm`` turns the EINVAL
into a one-line ``HostError`` naming both remedies.  It reads procfs, the
environment and ELF headers; it never execs anything itself.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

#: Set to 1 by ``kvmpv-pgste`` before it execs the interpreter: this process
#: has PGSTEs, and kvmpv must never restart itself again (exec-loop guard).
GUARD_ENV = "KVMPV_PGSTE"
#: Set by kvmpv right before it execs the launcher: if the launcher did not set
#: the guard (a broken build), the restarted kvmpv says so instead of looping.
TRIED_ENV = "KVMPV_PGSTE_TRIED"
LAUNCHER_NAME = "kvmpv-pgste"
#: Names a launcher built elsewhere (a lab's own build, the qemu-user tests).
LAUNCHER_ENV = "KVMPV_PGSTE_LAUNCHER"
SYSCTL = "/proc/sys/vm/allocate_pgste"
#: ``PT_S390_PGSTE`` (include/uapi/linux/elf.h): "this binary wants PGSTEs".
PT_S390_PGSTE = 0x70000000

REMEDY = (
    f"start kvmpv through {LAUNCHER_NAME} (built into kvmpv/native/ by 'pip install' on "
    "s390x; kvmpv does this by itself when it finds it) or set 'sysctl vm.allocate_pgste=1' "
    "before starting kvmpv"
)


@dataclass(frozen=True)
class PgsteStatus:
    """Whether this process's page tables have PGSTEs; ``how`` says why (or why not)."""

    arch: str
    needed: bool  # s390x only
    present: Optional[bool]  # None: not needed here
    how: str

    def to_dict(self) -> dict[str, object]:
        return {"needed": self.needed, "present": self.present, "how": self.how}


def elf_has_pgste(path: os.PathLike[str] | str) -> bool:
    """True if the ELF file has a ``PT_S390_PGSTE`` program header.

    A 64-bit ELF of either byte order (the ELF header says which), read
    with ``struct``: the cross-built launcher is checked on x86_64 hosts too.
    Raises ``ValueError`` for a file that is not a 64-bit ELF.
    """
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
            raise ValueError(f"{path}: not a 64-bit ELF file")
        order = "<" if ident[5] == 1 else ">"
        (phoff,) = struct.unpack_from(order + "Q", ident, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", ident, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    if len(table) < phentsize * phnum:
        raise ValueError(f"{path}: program header table cut short")
    return any(
        struct.unpack_from(order + "I", table, i * phentsize)[0] == PT_S390_PGSTE
        for i in range(phnum)
    )


def _sysctl() -> Optional[int]:
    try:
        return int(Path(SYSCTL).read_text().strip())
    except (OSError, ValueError):
        return None


def status(arch: Optional[str] = None) -> PgsteStatus:
    """How (or whether) this process got PGSTEs."""
    arch = arch or os.uname().machine
    if arch != "s390x":
        return PgsteStatus(arch, False, None, f"not needed on {arch}")
    if os.environ.get(GUARD_ENV) == "1":
        return PgsteStatus(arch, True, True, f"started through {LAUNCHER_NAME}")
    if _sysctl() == 1:
        return PgsteStatus(arch, True, True, "vm.allocate_pgste=1")
    try:
        if elf_has_pgste("/proc/self/exe"):
            return PgsteStatus(arch, True, True, "the interpreter itself has PT_S390_PGSTE")
    except (OSError, ValueError):
        pass
    return PgsteStatus(arch, True, False, f"no {LAUNCHER_NAME}, vm.allocate_pgste is not 1")


def launcher_path() -> Optional[Path]:
    """The launcher: ``$KVMPV_PGSTE_LAUNCHER``, else the one built next to this
    package's native code, else one on ``sys.path``."""
    env = os.environ.get(LAUNCHER_ENV)
    if env:
        return Path(env) if os.access(env, os.X_OK) else None
    here = Path(__file__).resolve().parent / "native" / LAUNCHER_NAME
    candidates = [here] + [Path(p) / "kvmpv" / "native" / LAUNCHER_NAME for p in sys.path if p]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def restart_argv(argv: list[str]) -> Optional[list[str]]:
    """The command line that restarts kvmpv through the launcher, or None if it should not.

    None when PGSTEs are not needed or already there, when a restart was
    already tried (``TRIED_ENV``: never a loop), or when there is no launcher.
    """
    st = status()
    if not st.needed or st.present or os.environ.get(TRIED_ENV):
        return None
    launcher = launcher_path()
    if launcher is None:
        return None
    return [str(launcher), sys.executable, "-m", "kvmpv", *argv]


def create_vm_hint() -> str:
    """Why KVM_CREATE_VM said EINVAL on s390x, for the one-line error."""
    st = status("s390x")
    if st.present:
        return f"this process has PGSTEs ({st.how}), so the cause is elsewhere (see dmesg)"
    if os.environ.get(TRIED_ENV) and not os.environ.get(GUARD_ENV):
        why = f"{LAUNCHER_NAME} was run but did not set {GUARD_ENV}=1 (a broken build?)"
    else:
        why = st.how
    return f"this process's page tables have no PGSTE, which s390 KVM requires ({why}): {REMEDY}"
