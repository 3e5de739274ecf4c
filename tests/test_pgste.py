# SPDX-License-Identifier: GPL-2.0-only
"""PGSTE: the launcher's ELF header, the restart, and the exec chain under qemu-user.

On x86_64 the launcher is cross-built with s390x-linux-gnu-gcc and its ELF
checked with kvmpv's own parser (and, as a control, a build without the
flag has no such header).  Under ``tox -e s390x`` (s390x Python under
qemu-user) ``tests/s390x/run.py`` cross-builds it into the root, and the
real chain runs: kvmpv (no PGSTE) -> kvmpv-pgste -> Python with the guard.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmpv import pgste
from kvmpv.errors import EXIT_ENV
from kvmpv.scenarios import probe as probe_mod

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "kvmpv" / "native" / "pgste.c"


def _cross_build(tmp_path: Path, *flags: str) -> Path:
    gcc = shutil.which("s390x-linux-gnu-gcc")
    if gcc is None:
        pytest.skip("s390x-linux-gnu-gcc not installed (apt-get install gcc-s390x-linux-gnu)")
    out = tmp_path / ("kvmpv-pgste" + "".join(flags).replace("-", "_").replace(",", "_"))
    cmd = [gcc, "-O2", "-Wall", "-Werror", *flags, "-o", str(out), str(SOURCE)]
    subprocess.run(cmd, check=True)
    return out


def test_launcher_elf_has_pt_s390_pgste(tmp_path: Path) -> None:
    with_flag = _cross_build(tmp_path, "-Wl,--s390-pgste")
    without = _cross_build(tmp_path)
    assert pgste.elf_has_pgste(with_flag)
    assert not pgste.elf_has_pgste(without)  # the check can say no
    readelf = shutil.which("s390x-linux-gnu-readelf")
    if readelf:  # the cross binutils agree with kvmpv's parser
        out = subprocess.run([readelf, "-lW", str(with_flag)], capture_output=True, text=True)
        assert "S390_PGSTE" in out.stdout


def test_elf_parser_rejects_what_is_not_elf64(tmp_path: Path) -> None:
    bad = tmp_path / "x"
    bad.write_bytes(b"#!/bin/sh\n" + bytes(100))
    with pytest.raises(ValueError):
        pgste.elf_has_pgste(bad)
    assert not pgste.elf_has_pgste(sys.executable)  # CPython has none


def test_status_and_restart_decisions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(pgste.GUARD_ENV, raising=False)
    monkeypatch.delenv(pgste.TRIED_ENV, raising=False)
    assert not pgste.status("x86_64").needed
    st = pgste.status("s390x")
    assert st.needed and st.present is False
    monkeypatch.setenv(pgste.GUARD_ENV, "1")
    assert pgste.status("s390x").present and "kvmpv-pgste" in pgste.status("s390x").how
    monkeypatch.delenv(pgste.GUARD_ENV)
    # restart_argv: only on s390x without PGSTE, only with a launcher, only once.
    fake = tmp_path / "kvmpv-pgste"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    lacking = pgste.PgsteStatus("s390x", True, False, "no")
    monkeypatch.setattr(pgste, "status", lambda arch=None: lacking)
    monkeypatch.setenv(pgste.LAUNCHER_ENV, str(fake))
    assert pgste.restart_argv(["probe"]) == [str(fake), sys.executable, "-m", "kvmpv", "probe"]
    monkeypatch.setenv(pgste.TRIED_ENV, "1")
    assert pgste.restart_argv(["probe"]) is None  # never a loop
    monkeypatch.delenv(pgste.TRIED_ENV)
    monkeypatch.setenv(pgste.LAUNCHER_ENV, str(tmp_path / "missing"))
    assert pgste.restart_argv(["probe"]) is None  # no launcher: VM creation says why


def test_create_vm_hint_names_both_remedies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pgste.GUARD_ENV, raising=False)
    monkeypatch.setenv(pgste.TRIED_ENV, "1")
    hint = pgste.create_vm_hint()
    assert "did not set KVMPV_PGSTE=1" in hint
    assert "kvmpv-pgste" in hint and "vm.allocate_pgste=1" in hint


def test_sim_without_pgste_check_exits_3_not_fail() -> None:
    """kvmpv check on a host where no VM can be created stops with exit 3, no FAIL verdict."""
    from kvmpv.errors import HostError
    from kvmpv.scenarios import check as chk
    from kvmpv.sim import SimulatedHost

    def factory(config: chk.SimConfig) -> SimulatedHost:
        return SimulatedHost(pgste=False, **config.kwargs())

    req = chk.CheckRequest(
        backend="sim",
        select=("prepare_success",),
        sim_factory=factory,
        facts=probe_mod.probe_facts(),
    )
    with pytest.raises(HostError) as info:
        chk.run_checks(req)
    assert info.value.exit_code == EXIT_ENV and "PGSTE" in str(info.value)


LAUNCHER = os.environ.get("KVMPV_TEST_PGSTE_LAUNCHER", "")


@pytest.mark.skipif(
    os.uname().machine != "s390x", reason="the exec chain needs s390x (tox -e s390x: qemu-user)"
)
def test_exec_chain_reaches_python_with_the_guard() -> None:
    """kvmpv on s390x without PGSTE restarts itself once through the launcher."""
    if not LAUNCHER:
        pytest.skip(
            "no cross-built kvmpv-pgste (tests/s390x/run.py builds it with s390x-linux-gnu-gcc)"
        )
    env = dict(os.environ)
    for name in (pgste.GUARD_ENV, pgste.TRIED_ENV):
        env.pop(name, None)
    env[pgste.LAUNCHER_ENV] = LAUNCHER
    r = subprocess.run(
        [sys.executable, "-m", "kvmpv", "-v", "probe", "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert f"restarting through {LAUNCHER}" in r.stderr, r.stderr
    probe = json.loads(r.stdout)
    assert probe["pgste"] == {"needed": True, "present": True, "how": "started through kvmpv-pgste"}
