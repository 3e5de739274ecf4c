# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv probe: real facts of this host, and the synthetic s390x trees under fixtures/sysfs/."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Optional

import pytest

from kvmpv import uapi
from kvmpv.cli import main
from kvmpv.errors import UsageError
from kvmpv.scenarios import probe as probe_mod
from kvmpv.scenarios.probe import KvmFacts, format_table, parse_facilities, probe_host

TREES = Path(__file__).resolve().parent.parent / "fixtures" / "sysfs"
FAST_MASK = uapi.UV_FACILITY_DESTROY_SEC_CONF_FAST_MASK


def pv_kernel_caps(tree: Path) -> KvmFacts:
    """What a real s390x kernel would answer for this tree (spec 2.2), labelled injected.

    cap 180 = is_prot_virt_host; cap 224 = async_destroy && is_prot_virt_host.
    """
    pvh = (tree / "sys/firmware/uv/prot_virt_host").read_text().strip() == "1"
    param = tree / "sys/module/kvm/parameters/async_destroy"
    async_on = param.exists() and param.read_text().strip() == "1"
    # Kernels before 6.2 do not know cap 224: KVM_CHECK_EXTENSION answers 0.
    return KvmFacts.injected({180: int(pvh), 217: int(pvh), 224: int(pvh and async_on)})


def mount_of(fstype: str) -> Optional[str]:
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == fstype:
                return fields[1]
    return None


# --------------------------------------------------------------------------
# This host, for real
# --------------------------------------------------------------------------


def test_host_facts_are_real() -> None:
    p = probe_host()
    assert not p.synthetic and p.root == "/"
    assert p.arch == platform.machine()
    assert p.kernel_release == os.uname().release
    assert p.python.endswith(platform.python_version())
    assert p.cgroups.v2_mount == mount_of("cgroup2")
    if mount_of("cgroup") is not None:
        assert p.cgroups.v1_controllers
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists():
        assert f"[{p.thp_mode}]" in thp.read_text()
    else:
        # No THP in this kernel: s390 offers it only with EDAT-1
        # (has_transparent_hugepage(): MACHINE_HAS_EDAT1); Debian's s390x
        # kernels under qemu-system-s390x 7.2 (TCG) have none, also with
        # -cpu max: tox -e s390x-kernel found it (FileNotFoundError before).
        assert p.thp_mode is None
    assert p.verdict and "\n" not in p.verdict


def test_host_kvm_facts_match_the_device(kvm: object) -> None:
    """Needs /dev/kvm (the kvm fixture skips otherwise); the probe must agree with it."""
    p = probe_host()
    assert p.kvm.source == "ioctl" and p.kvm.access == "ok"
    assert p.kvm.api_version == 12 and p.kvm_usable
    if platform.machine() == "x86_64":
        assert p.kvm.caps == {180: 0, 217: 0, 224: 0}
        assert p.prot_virt_host is None and p.destroy_fast is None
        assert p.async_destroy_param is None
        assert not p.pv_async_usable
        assert p.pv_reason.startswith("not s390x (arch x86_64)")
        assert "(224) is 0" in p.pv_reason
        assert p.scenarios["reboot"].mode == "sim" and p.scenarios["check"].mode == "sim"
        assert p.scenarios["shutdown --vm"].mode == "real"


def test_host_probe_leaks_no_fd() -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    probe_host()
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_host_probe_json_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["arch"] == platform.machine()
    assert data["synthetic"] is False
    assert set(data["kvm"]["caps"]) == {"180", "217", "224"}
    assert data["kvm"]["caps"]["224"]["name"] == "KVM_CAP_S390_PROTECTED_ASYNC_DISABLE"
    for key in ("pv_async_usable", "pv_reason", "kvm_usable", "verdict", "taskstats", "cgroups"):
        assert key in data
    assert isinstance(data["pv_async_usable"], bool)


def test_host_probe_table_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("arch")
    assert out.rstrip().splitlines()[-1].startswith("verdict: ")


# --------------------------------------------------------------------------
# Synthetic s390x trees
# --------------------------------------------------------------------------

#: tree -> (prot_virt_host, destroy_fast, async_destroy param, pv_async_usable, reason part)
EXPECTED = {
    "s390x-pv-async-fast": (1, True, 1, True, "with Destroy-Fast UVC"),
    "s390x-pv-async-nofast": (1, False, 1, True, "without Destroy-Fast UVC"),
    "s390x-pv-async-disabled": (1, True, 0, False, "kvm.async_destroy=0"),
    "s390x-no-pv": (0, True, 1, False, "prot_virt_host is 0"),
    "s390x-pv-pre-6.2": (1, False, None, False, "no kvm.async_destroy parameter"),
}


def test_every_tree_is_labelled_synthetic() -> None:
    trees = sorted(d.name for d in TREES.iterdir() if d.is_dir())
    assert trees == sorted(EXPECTED)
    for name in trees:
        assert (TREES / name / "SYNTHETIC").read_text().startswith("SYNTHETIC")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tree_with_kernel_answers(name: str) -> None:
    tree = TREES / name
    pvh, fast, param, usable, why = EXPECTED[name]
    p = probe_host(str(tree), kvm=pv_kernel_caps(tree))
    assert p.synthetic and p.synthetic_label.startswith("SYNTHETIC")
    assert p.arch == "s390x"
    assert p.prot_virt_host == pvh
    assert p.destroy_fast is fast
    assert p.async_destroy_param == param
    assert p.pv_async_usable is usable
    assert why in p.pv_reason
    assert p.kvm.source == "injected" and p.kvm_usable
    assert p.verdict.startswith(f"SYNTHETIC tree {tree}")
    assert p.scenarios["reboot"].mode == ("real" if usable else "sim")
    # Host-only facts are not invented for a tree.
    assert p.taskstats.available is None and "not probed" in p.taskstats.reason
    assert p.cgroups.layout == "unified (cgroup2 only)"
    assert "memory" in (p.cgroups.v2_controllers or [])
    # kvmpv's s390x payload is the plain guest there.
    assert p.scenarios["shutdown --vm"].mode == "real"
    assert "s390x payload" in p.scenarios["shutdown --vm"].reason
    table = format_table(p)
    assert table.splitlines()[0].startswith("SYNTHETIC") and "[injected]" in table


def test_tree_without_injection_is_not_probed() -> None:
    p = probe_host(str(TREES / "s390x-pv-async-fast"))
    assert p.kvm.source == "not probed" and p.kvm.api_version is None and p.kvm.caps == {}
    assert not p.kvm_usable and not p.pv_async_usable
    assert "not probed" in p.pv_reason
    # The files still say what they say.
    assert p.prot_virt_host == 1 and p.destroy_fast is True and p.async_destroy_param == 1


def test_injected_caps_can_say_no() -> None:
    """The verdict follows the caps: the same PV tree with cap 224 = 0 is not usable."""
    p = probe_host(str(TREES / "s390x-pv-async-fast"), kvm=KvmFacts.injected({180: 1, 224: 0}))
    assert not p.pv_async_usable
    assert p.pv_reason == "KVM_CAP_S390_PROTECTED_ASYNC_DISABLE (224) is 0"
    p = probe_host(str(TREES / "s390x-pv-async-fast"), kvm=KvmFacts.injected({}, api_version=11))
    assert not p.kvm_usable and "API version 11" in p.kvm_reason


def test_tree_json_cli(capsys: pytest.CaptureFixture[str]) -> None:
    tree = TREES / "s390x-pv-async-fast"
    argv = ["probe", "--json", "--root", str(tree), "--inject-kvm", "api=12,180=1,217=1,224=1"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["synthetic"] is True
    assert data["kvm"]["source"] == "injected"
    assert data["kvm"]["caps"]["224"]["value"] == 1
    assert data["prot_virt_host"] == 1 and data["destroy_fast"] is True
    assert data["async_destroy_param"] == 1 and data["pv_async_usable"] is True
    assert data["uv_facilities"][0] == "ff7fd13ff8fc0000"


def test_handmade_trees(tmp_path: Path) -> None:
    # An x86 tree: no UV, no async_destroy; a malformed facilities file.
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/arch").write_text("x86_64\n")
    p = probe_host(str(tmp_path), kvm=KvmFacts.injected({}))
    assert p.prot_virt_host is None and p.destroy_fast is None and p.uv_facilities is None
    assert p.pv_reason.startswith("not s390x (arch x86_64)")
    assert p.cgroups.layout == "none" and p.thp_mode is None and not p.synthetic_label
    (tmp_path / "proc/sys/kernel/arch").write_text("s390x\n")
    uv = tmp_path / "sys/firmware/uv"
    (uv / "query").mkdir(parents=True)
    (uv / "prot_virt_host").write_text("1\n")
    (uv / "query/facilities").write_text("not hex\n0\n0\n0\n")
    p = probe_host(str(tmp_path), kvm=KvmFacts.injected({180: 1, 224: 1}))
    assert p.destroy_fast is None  # unreadable, not "no"
    assert "no kvm.async_destroy parameter" in p.pv_reason


def test_facility_mask() -> None:
    assert FAST_MASK == 0x0000010000000000
    words = parse_facilities("10000000000\n0\n0\n0\n")
    assert words == [FAST_MASK, 0, 0, 0]
    assert not parse_facilities("fffffeffffffffff\n0\n0\n0\n")[0] & FAST_MASK


def test_bad_injection() -> None:
    for spec in ("api", "180", "x=1", "api=twelve"):
        with pytest.raises(UsageError, match="--inject-kvm"):
            KvmFacts.parse_injection(spec)
    assert KvmFacts.parse_injection("api=12, 224=1").caps == {224: 1}


def test_missing_cleaner_and_accounting_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kvmpv.teardown", None)  # import -> ImportError
    cleaner = probe_mod.native_cleaner()
    assert cleaner["available"] is False and cleaner["reason"].startswith("not built")
    import kvmpv.accounting

    monkeypatch.delattr(kvmpv.accounting, "capabilities", raising=False)
    acc = probe_mod._accounting_caps()
    assert acc["available"] is False and acc["reason"].startswith("not built")
    p = probe_host(str(TREES / "s390x-pv-async-fast"))
    assert p.scenarios["shutdown"].mode == "no"
    assert "not built" in p.scenarios["shutdown"].reason


#: /proc/cpuinfo of Debian's Linux 6.1 s390x kernel under qemu-system-s390x
#: 7.2 (TCG), captured by tests/s390x/kernel_guest.py: a CPU without SIE.
TCG_CPUINFO = Path(__file__).resolve().parent.parent / "fixtures" / "s390x-kernel" / "cpuinfo"


def test_s390x_without_sie_says_why_kvm_is_missing(tmp_path: Path) -> None:
    """An s390x kernel without /dev/kvm on a CPU without SIE: the reason names
    the missing facility (kvm_s390_init refuses to load), not only ENOENT."""
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/arch").write_text("s390x\n")
    cpuinfo = TCG_CPUINFO.read_text()
    features = next(ln for ln in cpuinfo.splitlines() if ln.startswith("features"))
    assert "sie" not in features.split(":", 1)[1].split()  # the capture is what it claims
    (tmp_path / "proc/cpuinfo").write_text(cpuinfo)
    absent = KvmFacts("ioctl", "/dev/kvm", False, "absent", "open(/dev/kvm) failed: errno 2")
    p = probe_host(str(tmp_path), kvm=absent)
    assert probe_mod.sie_facility(str(tmp_path)) is False
    assert not p.kvm_usable and "errno 2" in p.kvm_reason and "no SIE facility" in p.kvm_reason
    # The same CPU with SIE (an LPAR, a z/VM guest with it): KVM is just not loaded.
    (tmp_path / "proc/cpuinfo").write_text(cpuinfo.replace(features, features + " sie"))
    p = probe_host(str(tmp_path), kvm=absent)
    assert probe_mod.sie_facility(str(tmp_path)) is True and "SIE" not in p.kvm_reason
    # x86_64 cpuinfo has no "features" line: nothing is claimed.
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu vme vmx\n")
    assert probe_mod.sie_facility(str(tmp_path)) is None
