# SPDX-License-Identifier: GPL-2.0-only
"""``kvmpv.uapi`` against the real Linux 6.12 headers, both architectures.

The fixtures ``fixtures/uapi/{x86_64,s390x}.json`` were produced by compiling
``fixtures/uapi/probe.c`` against Debian trixie's linux-libc-dev (6.12) with
gcc (x86_64) and s390x-linux-gnu-gcc run under qemu-s390x-static (s390x);
``fixtures/uapi/regen.sh --check`` proves they still match.  Here every
constant, struct size and field offset of the binding is compared with both,
the ioctl numbers with the spec's table, and the ``_IOC``/``be_struct``
helpers with the headers' macros and with ``struct`` packing.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import pytest
from _uapi_fixture import ARCHES, fill, flat_offsets, layout_for, load, read

from kvmpv import uapi

# Binding names that are not in any uapi header.  They are checked against the
# values in shared/spec/kvm-pv-async.md instead (section numbers below), NOT
# against the headers.
SPEC_VALUES = {
    # 2.4: UVC commands, rc codes, destroy-fast installed-call bit
    "UVC_CMD_DESTROY_SEC_CONF": 0x0101,
    "UVC_CMD_DESTROY_SEC_CONF_FAST": 0x0102,
    "UVC_CMD_DESTROY_SEC_CPU": 0x0121,
    "UVC_CMD_CONV_FROM_SEC_STOR": 0x0201,
    "UVC_CMD_DESTR_SEC_STOR": 0x0202,
    "UVC_RC_EXECUTED": 0x0001,
    "UVC_RC_INV_CMD": 0x0002,
    "UVC_RC_INV_STATE": 0x0003,
    "UVC_RC_INV_LEN": 0x0005,
    "UVC_RC_NO_RESUME": 0x0007,
    "UVC_RC_NEED_DESTROY": 0x8000,
    "BIT_UVC_CMD_DESTROY_SEC_CONF_FAST": 23,
    # 2.4 and 7: "mask 0x0000010000000000 on the first 64-bit word"
    "UV_FACILITY_DESTROY_SEC_CONF_FAST_MASK": 0x0000010000000000,
    # 3.3 / 3.9: PREPARE reports the synthetic rc 1, rrc 42
    "KVM_PV_ASYNC_SYNTHETIC_RC": 1,
    "KVM_PV_ASYNC_SYNTHETIC_RRC": 42,
    # 3.3 / 3.10 (FIX2G): the VM memory limit must exceed 2 GiB
    "PV_ASYNC_MIN_LIMIT": 1 << 31,
    # 1.2: s390 memslots must be 1 MiB aligned
    "S390_MEMSLOT_ALIGN": 1 << 20,
    # 10.2: the "guest finished" intercepts (kernel ICPT_WAIT, ICPT_STOP)
    "ICPT_WAIT": 0x1C,
    "ICPT_STOP": 0x28,
}

# shared/spec/kvm-pv-async.md table 1.2 (computed there against the 6.1 headers).
SPEC_IOCTLS = {
    "KVM_GET_API_VERSION": 0x0000AE00,
    "KVM_CREATE_VM": 0x0000AE01,
    "KVM_CHECK_EXTENSION": 0x0000AE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0x0000AE04,
    "KVM_CREATE_VCPU": 0x0000AE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_RUN": 0x0000AE80,
    "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_SET_DEVICE_ATTR": 0x4018AEE1,
    "KVM_GET_DEVICE_ATTR": 0x4018AEE2,
    "KVM_HAS_DEVICE_ATTR": 0x4018AEE3,
    "KVM_S390_PV_COMMAND": 0xC020AEC5,
    "KVM_S390_PV_CPU_COMMAND": 0xC020AED0,
}

# Layout differences the binding knowingly has: its kvm_run describes the x86
# header.  On s390 the 6.12 header puts psw_mask/psw_addr (2 x u64) before the
# exit union (#ifdef __KVM_S390), so the union (and io) starts at 48, not 32.
# kvmpv only decodes kvm_run.io for real x86 guests.
ARCH_LAYOUT = {("kvm_run", "io"): ("x86_64", {"s390x": 48})}

PARTIAL_STRUCTS = {"kvm_run": uapi.kvm_run, "kvm_run.io": uapi.kvm_run_io}
#: The s390 view of the same header: only the s390x fixture has it.
S390_PARTIAL_STRUCTS = {
    "kvm_run_s390": uapi.kvm_run_s390,
    "kvm_run.s390_sieic": uapi.kvm_run_s390_sieic,
    "kvm_sync_regs": uapi.kvm_sync_regs,
}


def test_kvm_run_s390_layout() -> None:
    """psw_mask/psw_addr at 32/40 and s390_sieic at 48 (spec 10.2), as the s390x header says."""
    doc = load("s390x")
    for name, cls in S390_PARTIAL_STRUCTS.items():
        expect = doc["structs"][name]
        assert ctypes.sizeof(cls) <= expect["size"], name
        for field, off in flat_offsets(cls).items():
            assert off == expect["offsets"][field], f"s390x {name}.{field}"
    assert "kvm_run_s390" not in load("x86_64")["structs"]
    assert uapi.kvm_run_s390.psw_mask.offset == 32
    assert uapi.kvm_run_s390.s390_sieic.offset == 48
    assert uapi.kvm_run_s390.s.offset == 320  # kvm_run.s.regs: prefix, then gprs at 328


def test_every_binding_constant_is_covered() -> None:
    """Each constant is in at least one header fixture, or explicitly not uapi."""
    covered = set()
    for arch in ARCHES:
        doc = load(arch)
        covered |= set(doc["constants"])
        assert set(doc["not_from_uapi"]) == set(SPEC_VALUES), arch
    uncovered = sorted(set(uapi.constants()) - covered - set(SPEC_VALUES))
    assert not uncovered, f"binding constants checked against no header: {uncovered}"


@pytest.mark.parametrize("arch", ARCHES)
def test_constants_match_headers(arch: str) -> None:
    doc = load(arch)
    binding = uapi.constants()
    stale = sorted(set(doc["constants"]) - set(binding))
    assert not stale, f"{arch} fixture has names the binding lacks (run regen.sh): {stale}"
    wrong = {
        name: (hex(binding[name]), hex(value))
        for name, value in doc["constants"].items()
        if binding[name] != value
    }
    assert not wrong, f"binding != {arch} 6.12 headers (binding, header): {wrong}"
    # Everything else the binding defines is accounted for on this arch.
    rest = set(binding) - set(doc["constants"])
    unexplained = rest - set(doc["missing"]) - set(doc["not_probed"]) - set(SPEC_VALUES)
    assert not unexplained, f"{arch}: neither probed nor explained: {sorted(unexplained)}"


def test_arch_specific_constants_are_where_expected() -> None:
    """What one arch lacks, the other has (so the coverage above is real)."""
    x86, s390 = load("x86_64"), load("s390x")
    assert "KVM_S390_VM_MEM_LIMIT_SIZE" in x86["missing"]
    assert s390["constants"]["KVM_S390_VM_MEM_LIMIT_SIZE"] == uapi.KVM_S390_VM_MEM_LIMIT_SIZE
    assert "KVM_NR_INTERRUPTS" in s390["missing"]
    assert x86["constants"]["KVM_NR_INTERRUPTS"] == uapi.KVM_NR_INTERRUPTS
    assert "KVM_PV_ASYNC_CLEANUP_PERFORM" in x86["not_probed"]
    assert s390["constants"]["KVM_PV_ASYNC_CLEANUP_PERFORM"] == 10
    assert "KVM_GET_REGS" in s390["not_probed"]
    assert x86["constants"]["KVM_GET_REGS"] == uapi.KVM_GET_REGS


def test_not_from_uapi_checked_against_spec_values() -> None:
    """UVC_*, the UV facility mask, the synthetic rc/rrc, PV_ASYNC_MIN_LIMIT and
    S390_MEMSLOT_ALIGN are not in any uapi header (asm/uv.h is kernel-internal,
    the rest are behaviours): they are checked against the spec's values."""
    binding = uapi.constants()
    for name, value in SPEC_VALUES.items():
        assert binding[name] == value, f"{name}: binding {binding[name]:#x} != spec {value:#x}"
    assert uapi.UV_FACILITY_DESTROY_SEC_CONF_FAST_MASK == 1 << (
        63 - uapi.BIT_UVC_CMD_DESTROY_SEC_CONF_FAST
    )


def test_every_struct_is_covered() -> None:
    covered = set()
    for arch in ARCHES:
        covered |= set(load(arch)["structs"])
    assert not set(uapi.STRUCTS) - covered
    assert set(load("x86_64")["structs"]).isdisjoint(uapi.S390_ONLY_STRUCTS)
    assert set(load("s390x")["structs"]).isdisjoint(uapi.X86_ONLY_STRUCTS)


@pytest.mark.parametrize("arch", ARCHES)
def test_struct_sizes_and_offsets(arch: str) -> None:
    doc = load(arch)
    wrong = []
    for name, expect in doc["structs"].items():
        if name in PARTIAL_STRUCTS or name in S390_PARTIAL_STRUCTS:
            continue
        cls = uapi.STRUCTS[name]
        if ctypes.sizeof(cls) != expect["size"]:
            wrong.append(f"sizeof({name}) {ctypes.sizeof(cls)} != {expect['size']}")
        got = flat_offsets(cls)
        if got != expect["offsets"]:
            wrong.append(f"offsets({name}) {got} != {expect['offsets']}")
        # uapi.field_offsets() agrees wherever there is no anonymous member.
        for field, off in uapi.field_offsets(cls).items():
            if field in expect["offsets"] and off != expect["offsets"][field]:
                wrong.append(f"field_offsets({name}).{field} {off}")
    assert not wrong, f"binding != {arch} 6.12 headers: {wrong}"


@pytest.mark.parametrize("arch", ARCHES)
def test_kvm_run_header(arch: str) -> None:
    """The binding's partial kvm_run: each declared field where the header has it."""
    doc = load(arch)
    for name, cls in PARTIAL_STRUCTS.items():
        expect = doc["structs"][name]
        assert ctypes.sizeof(cls) <= expect["size"], name
        for field, off in flat_offsets(cls).items():
            owner = ARCH_LAYOUT.get((name, field))
            if owner is not None and owner[0] != arch:
                # Documented difference: check the header still says what we claim.
                assert expect["offsets"][field] == owner[1][arch], (name, field)
                continue
            assert off == expect["offsets"][field], f"{arch} {name}.{field}"


@pytest.mark.parametrize("name", sorted(SPEC_IOCTLS))
def test_ioctl_numbers_spec_table(name: str) -> None:
    assert getattr(uapi, name) == SPEC_IOCTLS[name]
    # Error messages name the ioctl by its number.
    assert uapi.IOCTL_NAMES[SPEC_IOCTLS[name]] == name


@pytest.mark.parametrize("arch", ARCHES)
def test_ioc_helpers_match_header_macros(arch: str) -> None:
    samples = load(arch)["ioc"]
    assert len(samples) >= 5
    for d, t, nr, size, value, dec_dir, dec_type, dec_nr, dec_size in samples:
        assert uapi._IOC(d, t, nr, size) == value, (d, t, nr, size)
        assert (uapi._IOC_DIR(value), uapi._IOC_TYPE(value)) == (dec_dir, dec_type)
        assert (uapi._IOC_NR(value), uapi._IOC_SIZE(value)) == (dec_nr, dec_size)


def test_ioc_wrappers() -> None:
    assert uapi._IO(uapi.KVMIO, 0x80) == uapi.KVM_RUN
    assert uapi._IOR(uapi.KVMIO, 0x81, uapi.kvm_regs) == uapi.KVM_GET_REGS
    assert uapi._IOW(uapi.KVMIO, 0x46, uapi.kvm_userspace_memory_region) == 0x4020AE46
    assert uapi._IOWR(uapi.KVMIO, 0xC5, uapi.kvm_pv_cmd) == 0xC020AEC5
    assert uapi._IOC_DIR(uapi.KVM_S390_PV_COMMAND) == uapi._IOC_READ | uapi._IOC_WRITE
    assert uapi._IOC_SIZE(uapi.KVM_S390_PV_COMMAND) == 32
    with pytest.raises(ValueError):
        uapi._IOC(uapi._IOC_READ, uapi.KVMIO, 0, 1 << 14)


@pytest.mark.parametrize("case", sorted(load("x86_64")["golden"]))
def test_golden_bytes_x86_64(case: str) -> None:
    """Generic structs packed to the bytes the x86_64 probe dumped (LE twin on s390x)."""
    golden = load("x86_64")["golden"][case]
    cls = layout_for(uapi.STRUCTS[golden["struct"]], "little")
    obj = cls()
    fill(obj, golden["values"])
    assert bytes(obj).hex() == golden["hex"]
    back = cls.from_buffer_copy(bytes.fromhex(golden["hex"]))
    assert read(back, golden["values"]) == golden["values"]


# --------------------------------------------------------------------------
# be_struct, checked with the struct module (independent of ctypes' swapping)
# --------------------------------------------------------------------------

_FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _leaves(cls: Any, base: int = 0) -> list[tuple[int, Any]]:
    """(absolute offset, scalar ctype) of every scalar of a native struct."""
    out: list[tuple[int, Any]] = []
    fields = cls._fields_
    if issubclass(cls, ctypes.Union):
        fields = [max(fields, key=lambda f: ctypes.sizeof(f[1]))]
    for name, ctype in fields:
        off = base + getattr(cls, name).offset
        out.extend(_leaves_of(ctype, off))
    return out


def _leaves_of(ctype: Any, off: int) -> list[tuple[int, Any]]:
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        return _leaves(ctype, off)
    if issubclass(ctype, ctypes.Array):
        step = ctypes.sizeof(ctype._type_)
        out = []
        for i in range(ctype._length_):
            out.extend(_leaves_of(ctype._type_, off + i * step))
        return out
    return [(off, ctype)]


def _values(obj: Any) -> Any:
    """Nested dict/list of a structure's scalars (unions: largest member)."""
    if isinstance(obj, (ctypes.Structure, ctypes.Union)):
        cls = type(obj)
        fields = cls._fields_
        if isinstance(obj, ctypes.Union):
            fields = [max(fields, key=lambda f: ctypes.sizeof(f[1]))]
        out: dict[str, Any] = {}
        for field in fields:
            name = field[0]
            value = _values(getattr(obj, name))
            if name in getattr(cls, "_anonymous_", ()):
                out.update(value)
            else:
                out[name] = value
        return out
    if isinstance(obj, ctypes.Array):
        return [_values(item) for item in obj]
    return int(obj)


@pytest.mark.parametrize("name", sorted(uapi.STRUCTS))
def test_be_struct_round_trip(name: str) -> None:
    native = uapi.STRUCTS[name]
    be = uapi.be_struct(native)
    assert ctypes.sizeof(be) == ctypes.sizeof(native)
    assert flat_offsets(be) == flat_offsets(native)
    # Distinct values for every scalar, laid out by the struct module: "=" is
    # this host's order, ">" is s390x's.  Independent of ctypes' byte swapping.
    native_bytes = bytearray(ctypes.sizeof(native))
    big_bytes = bytearray(ctypes.sizeof(native))
    for i, (off, ctype) in enumerate(_leaves(native)):
        n = ctypes.sizeof(ctype)
        value = (0x0102030405060708 * (i + 1) + i) & ((1 << (8 * n)) - 1)
        struct.pack_into("=" + _FMT[n], native_bytes, off, value)
        struct.pack_into(">" + _FMT[n], big_bytes, off, value)
    values = _values(native.from_buffer_copy(bytes(native_bytes)))
    twin = be()
    fill(twin, values)
    assert bytes(twin) == bytes(big_bytes)
    assert _values(be.from_buffer_copy(bytes(big_bytes))) == values
    # The native class lays the same values out in this host's order (on s390x
    # that is big-endian: the same bytes as the twin).
    obj = native()
    fill(obj, values)
    assert bytes(obj) == bytes(native_bytes)
