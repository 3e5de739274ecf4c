# SPDX-License-Identifier: GPL-2.0-only
"""Byte order of the PV structures: the exact bytes an s390x kernel reads.

The golden bytes come from ``fixtures/uapi/s390x.json``: the s390x probe,
compiled against the Linux 6.12 headers and run under qemu-s390x-static,
filled each structure with known values and dumped its memory.

On a big-endian host (``tox -e s390x`` runs this suite as s390x under
qemu-user) the binding's NATIVE classes must produce and parse exactly those
bytes: that is what KVM_S390_PV_COMMAND copies in and out on a real s390x
host.  On x86_64 the same tests use the ``be_struct`` twins, which are what
the little-endian host can check.

``KVMPV_EXPECT_S390X=1`` (set by the s390x tox env) turns on the proof that
the run really is big-endian s390x, so a misconfigured env (e.g. the host
Python run by mistake) fails instead of passing on x86.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import pytest
from _uapi_fixture import fill, layout_for, load, read

from kvmpv import uapi

EXPECT_S390X = os.environ.get("KVMPV_EXPECT_S390X") == "1"

PV_CASES = sorted(
    case
    for case, golden in load("s390x")["golden"].items()
    if golden["struct"] in uapi.S390_ONLY_STRUCTS
)


def _s390x_class(struct_name: str) -> type[ctypes.Structure]:
    cls: type[ctypes.Structure] = layout_for(uapi.STRUCTS[struct_name], "big")
    if sys.byteorder == "big":
        assert cls is uapi.STRUCTS[struct_name]  # the native class, not a twin
    return cls


@pytest.mark.skipif(
    not EXPECT_S390X,
    reason="KVMPV_EXPECT_S390X is not 1: not the s390x env (tox -e s390x sets it)",
)
def test_really_big_endian_s390x() -> None:
    assert sys.byteorder == "big"
    assert platform.machine() == "s390x"
    assert ctypes.sizeof(ctypes.c_void_p) == 8
    # The interpreter's own view agrees with the probe's.
    assert load("s390x")["byteorder"] == sys.byteorder


def test_fixture_is_big_endian() -> None:
    doc = load("s390x")
    assert doc["byteorder"] == "big"
    assert doc["golden"]["kvm_pv_cmd"]["hex"].startswith("01020304")


def test_pv_cases_cover_every_pv_struct() -> None:
    wanted = {
        "kvm_pv_cmd",
        "kvm_s390_pv_info",
        "kvm_s390_pv_info_header",
        "kvm_s390_pv_info_vm",
        "kvm_s390_pv_info_dump",
        "kvm_s390_pv_dmp",
        "kvm_s390_pv_unp",
        "kvm_s390_pv_sec_parm",
    }
    assert wanted <= {load("s390x")["golden"][c]["struct"] for c in PV_CASES}


@pytest.mark.parametrize("case", PV_CASES)
def test_pack_pv_struct_to_s390x_bytes(case: str) -> None:
    golden = load("s390x")["golden"][case]
    obj = _s390x_class(golden["struct"])()
    fill(obj, golden["values"])
    assert bytes(obj).hex() == golden["hex"]


@pytest.mark.parametrize("case", PV_CASES)
def test_unpack_pv_struct_from_s390x_bytes(case: str) -> None:
    golden = load("s390x")["golden"][case]
    obj = _s390x_class(golden["struct"]).from_buffer_copy(bytes.fromhex(golden["hex"]))
    assert read(obj, golden["values"]) == golden["values"]


@pytest.mark.parametrize("case", ["kvm_userspace_memory_region", "kvm_device_attr"])
def test_generic_structs_s390x_bytes(case: str) -> None:
    golden = load("s390x")["golden"][case]
    obj = _s390x_class(golden["struct"])()
    fill(obj, golden["values"])
    assert bytes(obj).hex() == golden["hex"]


def test_async_prepare_reply_fields() -> None:
    """The reply KVM writes after PREPARE (rc 1, rrc 42), read field by field."""
    golden = load("s390x")["golden"]["kvm_pv_cmd:async_prepare_reply"]
    cmd = _s390x_class("kvm_pv_cmd").from_buffer_copy(bytes.fromhex(golden["hex"]))
    assert cmd.cmd == uapi.pv_cmd_id.KVM_PV_ASYNC_CLEANUP_PREPARE
    assert (cmd.rc, cmd.rrc) == (uapi.KVM_PV_ASYNC_SYNTHETIC_RC, uapi.KVM_PV_ASYNC_SYNTHETIC_RRC)


def test_pv_info_union_members_share_storage() -> None:
    """``vm`` and ``dump`` overlay each other right after the header (offset 16)."""
    golden = load("s390x")["golden"]["kvm_s390_pv_info"]
    info = _s390x_class("kvm_s390_pv_info").from_buffer_copy(bytes.fromhex(golden["hex"]))
    assert info.dump.dump_cpu_buffer_len == info.vm.inst_calls_list[0]
    assert info.vm.inst_calls_list[0] == int.from_bytes(bytes(range(0x11, 0x19)), "big")
