# SPDX-License-Identifier: GPL-2.0-only
"""SE images: the parser finds what QEMU needs, the synthetic image, and the protected boot.

The boot runs against the simulated Ultravisor, which accepts only kvmpv's
synthetic header; each refusal is checked in the order the kernel and the UV
refuse (spec 10.3), and the checks are shown to fail against an Ultravisor
that accepts the wrong order.  Under ``tox -e s390x`` all of this runs as
big-endian s390x.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from _deviating import PermissiveUvHost

from kvmpv import s390guest, sehdr, seimage, uapi
from kvmpv.cli import main
from kvmpv.errors import EXIT_OK, EXIT_USAGE, UsageError
from kvmpv.kvm import Kvm
from kvmpv.memory import GuestMemory
from kvmpv.pv import BootError, load_image, pv_enable, s390_machine_protect
from kvmpv.report.cases import Status
from kvmpv.runner import run_until_finished
from kvmpv.scenarios import check as chk
from kvmpv.scenarios import probe as probe_mod
from kvmpv.seimage import SeImage
from kvmpv.sim import SimulatedHost
from kvmpv.syscalls import Syscalls

DATA = seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64)
IMAGE = seimage.parse(DATA, "synthetic")
MiB = 1 << 20


def test_parser_reads_pvimgs_layout() -> None:
    """Metadata at 0xc000 (SeImgMetaData), components from 0x13000, then header, then IPIB."""
    assert IMAGE.layout == "pvimg" and IMAGE.synthetic
    meta = DATA[0xC000 : 0xC000 + 28]
    assert meta[:8] == b"SeImgLnx"
    hdr_off, version, ipib_off = struct.unpack(">QIQ", meta[8:])
    assert version == 1 and (hdr_off, ipib_off) == (IMAGE.header_offset, IMAGE.ipib_offset)
    assert [(c.addr, c.size) for c in IMAGE.components] == [(0x13000, 4096), (0x14000, 4096)]
    assert IMAGE.header_offset == 0x15000 and IMAGE.ipib_offset == 0x16000
    assert IMAGE.header[:8] == b"IBMSecEx"
    # the IPL block carries the header's address and size (pvimg's create_ipib)
    assert struct.unpack(">QQ", DATA[0x16078:0x16088]) == (0x15000, IMAGE.header_size)
    # stage3a's arguments are its last 24 bytes, below 0x13000, relative to themselves
    args = IMAGE.args_offset
    assert args == 0x13000 - 24
    offs = struct.unpack(">QQQ", DATA[args : args + 24])
    assert (args + offs[0], offs[1], args + offs[2]) == (0x15000, IMAGE.header_size, 0x16000)
    # pvimg's tweak prefix: component kind (40 kernel, 60 command line), then 6 bytes
    assert [c.tweak >> 48 for c in IMAGE.components] == [40, 60]
    # the header opens with the FAKE host key; the payload is encrypted in the image
    fields = sehdr.open_header(IMAGE.header, sehdr.fake_host_key())
    assert fields.nep == 2 and fields.psw == (s390guest.PSW_MASK_64, 0x13000)
    code = DATA[0x13000:0x14000]
    assert code[: len(s390guest.CODE)] != s390guest.CODE
    plain = sehdr.xts_pages(fields.xts, code, IMAGE.components[0].tweak, encrypt=False)
    assert plain[: len(s390guest.CODE)] == s390guest.CODE
    parts = [(DATA[c.addr : c.addr + c.size], c.addr, c.tweak) for c in IMAGE.components]
    assert seimage.page_digests(parts) == (fields.pld, fields.ald, fields.tld)
    # another tweak or address gives other digests
    moved = [(p, a + 4096, t) for p, a, t in parts]
    assert seimage.page_digests(moved)[1] != fields.ald
    retweaked = [(p, a, t + 1) for p, a, t in parts]
    assert seimage.page_digests(retweaked)[2] != fields.tld


def test_tld_is_sha512_over_the_128_bit_page_tweaks() -> None:
    """pvimg: first page's tweak = {prefix, 0}, each next one + 4096 as a 128-bit number."""
    content, tweak = bytes(3 * 4096), 0x0028_0102_0304_0506
    tweaks = b"".join(((tweak << 64) + i * 4096).to_bytes(16, "big") for i in range(3))
    addrs = b"".join((0x20000 + i * 4096).to_bytes(8, "big") for i in range(3))
    pld, ald, tld = seimage.page_digests([(content, 0x20000, tweak)])
    assert tld == hashlib.sha512(tweaks).digest()
    assert ald == hashlib.sha512(addrs).digest()
    assert pld == hashlib.sha512(content).digest()


OLD = seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64, layout="genprotimg")


def test_parser_reads_genprotimgs_layout() -> None:
    image = seimage.parse(OLD, "old")
    assert image.layout == "genprotimg" and OLD[0xC000:0xC008] == bytes(8)
    assert (image.ipib_offset, image.header_offset) == (0x13000, 0x14000)
    assert image.args_offset == 0x13000 - 24
    assert [c.addr for c in image.components] == [0x15000, 0x16000]


def test_parser_finds_the_arguments_wherever_stage3a_ends() -> None:
    """stage3a's size differs between s390-tools versions: the arguments are found by meaning."""
    data = bytearray(OLD)
    args = 0x13000 - 24
    hdr_offs, hdr_size, ipib_offs = struct.unpack(">QQQ", data[args : args + 24])
    data[args : args + 24] = bytes(24)
    new = args - 37  # a stage3a 37 bytes shorter (sizes need not be multiples of 8)
    data[new : new + 24] = struct.pack(">QQQ", hdr_offs + 37, hdr_size, ipib_offs + 37)
    image = seimage.parse(bytes(data), "moved")
    assert image.args_offset == new and image.header_offset == 0x14000


def _broken(offset: int, value: bytes, data: bytes = DATA) -> bytes:
    out = bytearray(data)
    out[offset : offset + len(value)] = value
    return bytes(out)


@pytest.mark.parametrize(
    "data, message",
    [
        (DATA[:0x1000], "not an SE image: no metadata 'SeImgLnx' at 0xc000"),
        (bytes(0x20000), "no IPL block of type PV"),
        (_broken(0xC010, b"\x00\x00\x00\x02"), "metadata version 2 at 0xc000, kvmpv reads"),
        (_broken(0x1600C, b"\x02"), "no IPL block of type PV \\(5\\) at 0x16000, where the meta"),
        (_broken(0x16078, (0x14000).to_bytes(8, "big")), "header address 0x14000 is not"),
        (_broken(0x15000, b"NOTSECEX"), "no magic 'IBMSecEx'"),
        (_broken(0x15008, b"\x00\x00\x02\x00"), "version 0x200, kvmpv reads 0x100"),
        (_broken(0x15028, (7).to_bytes(8, "big")), "is not its size 640"),
        (_broken(0x16088 + 24, bytes(8)), "tweak prefixes do not grow"),
        (_broken(0x1300C, b"\x02", OLD), "no IPL block of type PV"),
        (DATA[0x15000:], "a bare SE header, not a whole SE image"),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{len(v)}B",
)
def test_parser_refuses_what_is_not_an_se_image(data: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        seimage.parse(data, "bad")


def test_load_refuses_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """/dev/zero would be read forever; a FIFO would block the open; a huge file is no image."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.img"
    with open(huge, "wb") as f:
        f.truncate(seimage.MAX_IMAGE_BYTES + 1)  # sparse: nothing is written
    for path, message in (
        (Path("/dev/zero"), "not a regular file"),
        (fifo, "not a regular file"),
        (tmp_path, "not a regular file"),
        (huge, f"larger than kvmpv reads as an SE image \\({seimage.MAX_IMAGE_BYTES} bytes"),
        (tmp_path / "missing", "cannot read SE image"),
    ):
        with pytest.raises(UsageError, match=message):
            seimage.load(path)
    # through the command line: one line, exit 2, no traceback
    assert main(["image", "info", "/dev/zero"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kvmpv: error: SE image or header /dev/zero: not a regular file, refused "
                   "before reading it"]  # fmt: skip


# --------------------------------------------------------------------------
# A real header made by IBM's tools (fixtures/se/README.md)
# --------------------------------------------------------------------------

REAL_HDR = Path(__file__).resolve().parent.parent / "fixtures" / "se" / "secure_guest.hdr"
#: s390-tools' own expectation for this header (``EXP_HDR`` in rust/pv/src/brcb.rs).
EXP_PLD = (
    "be94b5eab3c1b118c757d7db7ea0f65d9b64823a8dc55bf8a8725b58072d9d42"
    "58c53e8a5da82dfb2192d91d07bc1c39b95d6321d3ba16a751a6e3e32f3e0161"
)
EXP_ALD = (
    "2858c3368b2a0af0c5ea0fde7905eb15af9cd1dd737165933cdaa2b850b6a8e2"
    "f0f42c7b36dd5381096288dc092daa8a6facec2534137bc94ca80bda4fcb9328"
)
EXP_TLD = (
    "4860ebcf7b9d24eb909a795356ad32c936b62165988a9ffcd66170dbc590c230"
    "10d7952fa882d1bb79558f9be0a549d8d7a94ae720e5c0760a825d479fe67af5"
)
EXP_TAG = "92309d4589b9a85b427f8753171d1520"
HEX = re.compile(r"^[0-9a-fA-F]+$")
B64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    """The rules of s390-tools' rust/pvimg/schema/info-v1.schema.json, written out.

    Top level: ``meta`` and ``data`` required (others allowed).  ``meta``:
    exactly api_level (const 1), version, host (strings), time_epoch (int),
    time (string).  ``data``: only the listed properties; the required ones
    present; ``*_hex`` hex strings without 0x; sehs/nks/sea/nep integers;
    kind in {decrypted_se_hdr, se_hdr}; keyslots at least one, each exactly
    phkh_hex/wrpk_hex/kst_hex; cust_pub_key exactly coord_hex; and exactly
    one of the three variants (decrypted+verified with psw/scf/cck/xts and
    no cipher data; se_hdr verified with cipher data; se_hdr not verified
    without psw/scf/cck/xts).
    """
    errs: list[str] = []
    if not isinstance(doc, dict) or not {"meta", "data"} <= doc.keys():
        return ["meta and data are required"]
    meta, data = doc["meta"], doc["data"]
    meta_types = {"api_level": int, "version": str, "host": str, "time_epoch": int, "time": str}
    if set(meta) != set(meta_types):
        errs.append(f"meta has {sorted(meta)}")
    errs += [f"meta.{k} not {t.__name__}" for k, t in meta_types.items()
             if not isinstance(meta.get(k), t) or isinstance(meta.get(k), bool)]  # fmt: skip
    if meta.get("api_level") != 1:
        errs.append("meta.api_level is not 1")
    if not re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}$", str(meta.get("time"))):
        errs.append("meta.time is not 'YYYY-MM-DD HH:MM:SS+ZZZZ'")
    required = {
        "kind", "verified", "magic_hex", "version", "sehs", "iv_hex", "nks", "sea", "nep",
        "pcf_hex", "cust_pub_key", "pld_hex", "ald_hex", "tld_hex", "keyslots", "tag_hex",
    }  # fmt: skip
    secrets = {"psw", "scf_hex", "cck_hex", "xts_hex"}
    allowed = required | secrets | {"cipher_data_b64"}
    errs += [f"data.{k} missing" for k in sorted(required - data.keys())]
    errs += [f"data.{k} not allowed" for k in sorted(data.keys() - allowed)]
    for k, v in data.items():
        if k.endswith("_hex") and not (isinstance(v, str) and HEX.match(v)):
            errs.append(f"data.{k} is not a hex string")
    for k in ("sehs", "nks", "sea", "nep"):
        if not isinstance(data.get(k), int) or isinstance(data.get(k), bool):
            errs.append(f"data.{k} is not an integer")
    if not isinstance(data.get("version"), str) or not isinstance(data.get("verified"), bool):
        errs.append("data.version/verified types")
    if data.get("kind") not in ("decrypted_se_hdr", "se_hdr"):
        errs.append("data.kind")
    if "cipher_data_b64" in data and not B64.match(str(data["cipher_data_b64"])):
        errs.append("data.cipher_data_b64 is not base64")
    cpk = data.get("cust_pub_key")
    if not isinstance(cpk, dict) or set(cpk) != {"coord_hex"} or not HEX.match(cpk["coord_hex"]):
        errs.append("data.cust_pub_key")
    slots = data.get("keyslots")
    if not isinstance(slots, list) or len(slots) < 1:
        errs.append("data.keyslots needs at least one item")
    else:
        for s in slots:
            if set(s) != {"phkh_hex", "wrpk_hex", "kst_hex"} or not all(
                isinstance(v, str) and HEX.match(v) for v in s.values()
            ):
                errs.append(f"data.keyslots item {s}")
    if "psw" in data and (
        set(data["psw"]) != {"mask_hex", "addr_hex"}
        or not all(isinstance(v, str) and HEX.match(v) for v in data["psw"].values())
    ):
        errs.append("data.psw")
    kind, verified, keys = data.get("kind"), data.get("verified"), data.keys()
    variants = [
        kind == "decrypted_se_hdr" and verified is True and secrets <= keys
        and "cipher_data_b64" not in keys,
        kind == "se_hdr" and verified is True and "cipher_data_b64" in keys,
        kind == "se_hdr" and verified is False and not (secrets & keys),
    ]  # fmt: skip
    if sum(variants) != 1:
        errs.append(f"data matches {sum(variants)} of the three variants, not one")
    return errs


def _info_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["image", "info", "--json", str(path)]) == EXIT_OK
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def test_image_info_json_on_a_real_pvimg_header(capsys: pytest.CaptureFixture[str]) -> None:
    doc = _info_json(REAL_HDR, capsys)
    assert _schema_errors(doc) == []
    data = doc["data"]
    assert (data["pld_hex"], data["ald_hex"], data["tld_hex"]) == (EXP_PLD, EXP_ALD, EXP_TLD)
    assert data["tag_hex"] == EXP_TAG
    assert (data["sehs"], data["nks"], data["sea"], data["version"]) == (640, 1, 128, "V1")
    assert data["magic_hex"] == "49424d5365634578" and "components" not in doc
    assert len(bytes.fromhex(data["cust_pub_key"]["coord_hex"])) == 160
    # the text form shows the same digests
    assert main(["image", "info", str(REAL_HDR)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"components content hash: {EXP_PLD}" in out and f"GCM tag: {EXP_TAG}" in out


def test_the_schema_rules_can_fail(capsys: pytest.CaptureFixture[str]) -> None:
    doc = _info_json(REAL_HDR, capsys)
    for mutate in (
        lambda d: d["data"].pop("tag_hex"),
        lambda d: d["data"].update(extra=1),
        lambda d: d["data"].update(pld_hex="0xbe94"),
        lambda d: d["data"].update(keyslots=[]),
        lambda d: d["data"].update(psw={"mask_hex": "0", "addr_hex": "1"}),
        lambda d: d["meta"].update(api_level=2),
        lambda d: d["data"]["cust_pub_key"].update(x="1"),
    ):
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        assert _schema_errors(bad), bad


def test_header_found_where_pvimg_looks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """brcb.rs's own cases: at a page start in the first 0x15 pages yes; off a page start no."""
    hdr = REAL_HDR.read_bytes()
    img = bytearray(0x13000)
    img[0x12000 : 0x12000 + len(hdr)] = hdr
    found = tmp_path / "at-0x12000.img"
    found.write_bytes(bytes(img))
    assert seimage.find_header(bytes(img)) == 0x12000
    lost = bytearray(4096)
    lost[8 : 8 + len(hdr)] = hdr
    assert seimage.find_header(bytes(lost)) is None
    assert seimage.find_header(hdr[1:]) is None
    path = tmp_path / "lost.img"
    path.write_bytes(bytes(lost))
    assert main(["image", "info", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no SE header: looked for metadata 'SeImgLnx' at 0xc000" in err[0]
    with pytest.raises(UsageError, match="is not its size 640"):
        seimage.parse_header(hdr[:0x28] + (2).to_bytes(8, "big") + hdr[0x30:])


def test_image_info_json_on_a_whole_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "se.img"
    path.write_bytes(DATA)
    doc = _info_json(path, capsys)
    assert _schema_errors(doc) == []
    fake = seimage.fake_phkh().hex()
    assert [k["phkh_hex"] for k in doc["data"]["keyslots"]] == [fake]
    assert doc["layout"]["kind"] == "pvimg" and doc["layout"]["synthetic"] is True
    comps = doc["components"]
    assert [(c["kind"], c["offset"], c["size"]) for c in comps] == [
        ("Linux kernel", 0x13000, 4096), ("kernel cmdline", 0x14000, 4096),
    ]  # fmt: skip
    assert [int(c["tweak_hex"], 16) for c in comps] == [c.tweak for c in IMAGE.components]
    assert doc["data"]["nep"] == 2 and doc["data"]["sea"] == seimage.SEA_V1


def test_guest_command_writes_the_synthetic_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "se.img"
    assert main(["guest", "--arch", "s390x", "--se-synthetic", "--out", str(out)]) == EXIT_OK
    assert out.read_bytes() == DATA
    assert "SYNTHETIC SE image" in capsys.readouterr().out


def _vm(host: SimulatedHost) -> tuple[Kvm, object, GuestMemory]:
    kvm = Kvm(host)
    vm = kvm.vm_create()
    mem = GuestMemory(16 * MiB, sys=host)
    vm.mem_add(mem)
    return kvm, vm, mem


def _raw(vm: object, cmd: int, data: int = 0) -> tuple[int, int]:
    ret, rc, _ = _raw3(vm, cmd, data)
    return ret, rc


def _raw3(vm: object, cmd: int, data: int = 0) -> tuple[int, int, int]:
    arg = uapi.kvm_pv_cmd(cmd=cmd, data=data)
    ret = vm.pv_ioctl(arg)  # type: ignore[attr-defined]
    return ret, int(arg.rc), int(arg.rrc)


def test_protected_boot_on_the_simulator() -> None:
    host = SimulatedHost()
    kvm, vm, mem = _vm(host)
    try:
        vcpu = vm.vcpu_add(0)  # type: ignore[attr-defined]
        load_image(vm, IMAGE)  # type: ignore[arg-type]
        boot = s390_machine_protect(vm, IMAGE, [vcpu])  # type: ignore[arg-type]
        assert boot.verified and [s.step for s in boot.steps][-2:] == ["VERIFY", "LOAD+OPERATING"]
        assert all(s.ok for s in boot.steps)
        assert run_until_finished(vcpu) == uapi.KVM_EXIT_S390_SIEIC
        assert vcpu.s390_run().psw_addr == 0xFFF
        info = host.vm_info(vm.fd)  # type: ignore[attr-defined]
        assert info.secure_bytes == 16 * MiB
        unpacks = host.uv_calls(0x0301)
        assert [c.pages for c in unpacks] == [1, 1]
    finally:
        vm.close()  # type: ignore[attr-defined]
        kvm.close()
        mem.close()
    assert host.open_fds() == 0


def test_refusals_in_the_kernel_and_uv_order() -> None:
    host = SimulatedHost()
    kvm, vm, mem = _vm(host)
    try:
        load_image(vm, IMAGE)  # type: ignore[arg-type]
        pv_enable(vm)  # type: ignore[arg-type]
        sec, unp = int(uapi.pv_cmd_id.KVM_PV_SET_SEC_PARMS), int(uapi.pv_cmd_id.KVM_PV_UNPACK)
        hdr = ctypes.create_string_buffer(IMAGE.header)

        def parms(length: int) -> tuple[int, int]:
            p = uapi.kvm_s390_pv_sec_parm(origin=ctypes.addressof(hdr), length=length)
            return _raw(vm, sec, ctypes.addressof(p))

        def unpack(addr: int, tweak: int) -> tuple[int, int]:
            u = uapi.kvm_s390_pv_unp(addr=addr, size=4096, tweak=tweak)
            return _raw(vm, unp, ctypes.addressof(u))

        c0, c1 = IMAGE.components
        # outside the memslots: the gmap fault comes before any UV state check
        assert unpack(32 * MiB, c0.tweak) == (-errno.EFAULT, 0)
        # before SET_SEC_PARMS: the UV refuses (invalid state)
        assert unpack(c0.addr, c0.tweak) == (-errno.EINVAL, uapi.UVC_RC_INV_STATE)
        assert parms(0) == (-errno.ENOMEM, 0)  # vmalloc(0), no UV call
        assert parms(3 * 4096) == (-errno.EINVAL, 0)  # above 8 KiB, no UV call
        assert parms(len(IMAGE.header)) == (0, 1)
        assert unpack(c0.addr, c0.tweak) == (0, 1)
        verify = int(uapi.pv_cmd_id.KVM_PV_VERIFY)
        # stage3a's enum UV_RC: 0x102 with rrc 0x1d page count, 0x1c TLD, 0x1a ALD
        assert _raw3(vm, verify) == (-errno.EINVAL, 0x0102, 0x1D)  # one component missing
        assert unpack(c1.addr, c1.tweak + 1) == (0, 1)  # unpacked with another tweak
        assert _raw3(vm, verify) == (-errno.EINVAL, 0x0102, 0x1C)
    finally:
        vm.close()  # type: ignore[attr-defined]
        kvm.close()
        mem.close()


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "se"


def _refused_at_sec_parms(data: bytes) -> tuple[str, SeImage]:
    image = seimage.parse(data, "refused")
    host = SimulatedHost()
    kvm, vm, mem = _vm(host)
    try:
        vcpu = vm.vcpu_add(0)  # type: ignore[attr-defined]
        load_image(vm, image)  # type: ignore[arg-type]
        with pytest.raises(BootError) as info:
            s390_machine_protect(vm, image, [vcpu])  # type: ignore[arg-type]
        assert not host.vm_info(vm.fd).protected  # type: ignore[attr-defined]  # torn down again
        return str(info.value), image
    finally:
        vm.close()  # type: ignore[attr-defined]
        kvm.close()
        mem.close()


def test_an_image_for_another_host_key_is_refused_no_key_slot() -> None:
    """Made for s390-tools' test host key document, not the simulated machine's: 0x108/0x05."""
    from cryptography import x509

    other = x509.load_pem_x509_certificate((FIXTURES / "host.pem.crt").read_bytes())
    data = seimage.se_image(s390guest.CODE, s390guest.PSW_MASK_64, [other.public_key()])
    msg, image = _refused_at_sec_parms(data)
    assert not image.synthetic
    assert "SET_SEC_PARMS" in msg and "rc 0x0108 rrc 0x0005" in msg
    assert "no key slot for this machine's host key" in msg


def test_a_corrupt_header_is_refused() -> None:
    """The header's IV or encrypted part changed: it no longer authenticates (0x10a)."""
    iv = IMAGE.header_offset + 16
    msg, _ = _refused_at_sec_parms(_broken(iv, bytes(12)))
    assert "rc 0x010a" in msg and "corrupt" in msg
    enc = IMAGE.header_offset + IMAGE.header_size - 20
    msg, _ = _refused_at_sec_parms(_broken(enc, bytes([DATA[enc] ^ 1])))
    assert "rc 0x010a" in msg


BOOT_CHECKS = (
    "unpack_before_sec_parms_einval",
    "verify_before_every_component_fails",
    "sec_parms_zero_length_enomem",
    "sec_parms_too_large_einval",
    "unpack_outside_memslots_efault",
)


def test_boot_checks_pass_and_fail_on_a_permissive_uv() -> None:
    right = chk.run_checks(
        chk.CheckRequest(backend="sim", select=BOOT_CHECKS, facts=probe_mod.probe_facts())
    )
    assert [c.status for c in right.results] == [Status.PASS] * len(BOOT_CHECKS)

    def factory(config: chk.SimConfig) -> Syscalls:
        host: Syscalls = PermissiveUvHost.build(config)
        return host

    req = chk.CheckRequest(
        backend="sim", select=BOOT_CHECKS, sim_factory=factory, facts=probe_mod.probe_facts()
    )
    wrong = chk.run_checks(req, stream=io.StringIO())
    assert [c.status for c in wrong.results] == [Status.FAIL] * len(BOOT_CHECKS), wrong.ktap()


def _boot_error(data: bytes) -> str:
    image = seimage.parse(data, "tampered")
    host = SimulatedHost()
    kvm, vm, mem = _vm(host)
    try:
        vcpu = vm.vcpu_add(0)  # type: ignore[attr-defined]
        load_image(vm, image)  # type: ignore[arg-type]
        with pytest.raises(BootError) as info:
            s390_machine_protect(vm, image, [vcpu])  # type: ignore[arg-type]
        return str(info.value)
    finally:
        vm.close()  # type: ignore[attr-defined]
        kvm.close()
        mem.close()


def test_tampered_images_fail_verify_with_the_rrc_naming_the_digest() -> None:
    """A flipped byte in a component: PLD (0x1b); the IPL block's components swapped (unpacked
    at each other's place in the digests' order): ALD (0x1a)."""
    code = IMAGE.components[0].addr
    flipped = _broken(code + 8, bytes([DATA[code + 8] ^ 0xFF]))
    msg = _boot_error(flipped)
    assert "VERIFY failed" in msg and "rc 0x0102 rrc 0x001b" in msg and "(PLD)" in msg
    c = IMAGE.ipib_offset + 0x88
    swapped = _broken(c, DATA[c + 24 : c + 48] + DATA[c : c + 24])
    with pytest.raises(UsageError, match="tweak prefixes do not grow"):
        seimage.parse(swapped, "swapped")  # kvmpv's parser refuses it already; the UV too:
    image = IMAGE
    reordered = seimage.SeImage(
        image.data, image.args_offset, image.header_offset, image.header_size,
        image.ipib_offset, image.components[::-1], False, "swapped", image.layout,
        image.parsed_header,
    )  # fmt: skip
    host = SimulatedHost()
    kvm, vm, mem = _vm(host)
    try:
        vcpu = vm.vcpu_add(0)  # type: ignore[attr-defined]
        load_image(vm, reordered)  # type: ignore[arg-type]
        with pytest.raises(BootError) as info:
            s390_machine_protect(vm, reordered, [vcpu])  # type: ignore[arg-type]
        assert "rc 0x0102 rrc 0x001a" in str(info.value) and "(ALD)" in str(info.value)
    finally:
        vm.close()  # type: ignore[attr-defined]
        kvm.close()
        mem.close()
