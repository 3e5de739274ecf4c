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
import io
import struct
from pathlib import Path

import pytest
from _deviating import PermissiveUvHost

from kvmpv import s390guest, seimage, uapi
from kvmpv.cli import main
from kvmpv.errors import EXIT_OK, UsageError
from kvmpv.kvm import Kvm
from kvmpv.memory import GuestMemory
from kvmpv.pv import BootError, load_image, pv_enable, s390_machine_protect
from kvmpv.report.cases import Status
from kvmpv.runner import run_until_finished
from kvmpv.scenarios import check as chk
from kvmpv.scenarios import probe as probe_mod
from kvmpv.sim import SimulatedHost
from kvmpv.syscalls import Syscalls

DATA = seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64)
IMAGE = seimage.parse(DATA, "synthetic")
MiB = 1 << 20


def test_parser_finds_header_ipib_and_components() -> None:
    assert IMAGE.synthetic and IMAGE.header_offset == seimage.HEADER_OFFSET
    assert IMAGE.ipib_offset == seimage.IPIB_OFFSET
    assert IMAGE.args_offset == seimage.IPIB_OFFSET - 24
    assert IMAGE.header[:8] == b"IBMSecEx"
    assert [(c.addr, c.size) for c in IMAGE.components] == [(0x15000, 4096), (0x16000, 4096)]
    assert IMAGE.data[0x15000 : 0x15000 + len(s390guest.CODE)] == s390guest.CODE
    fields = seimage.synthetic_header_fields(IMAGE.header)
    assert fields is not None and fields.pages == 2
    assert fields.psw == (s390guest.PSW_MASK_64, 0x15000)
    parts = [(DATA[c.addr : c.addr + c.size], c.addr, c.tweak) for c in IMAGE.components]
    assert seimage.page_digests(parts) == (fields.pld, fields.ald, fields.tld)
    # another tweak or address gives other digests
    moved = [(p, a + 4096, t) for p, a, t in parts]
    assert seimage.page_digests(moved)[1] != fields.ald
    retweaked = [(p, a, t + 1) for p, a, t in parts]
    assert seimage.page_digests(retweaked)[2] != fields.tld


def test_parser_finds_the_arguments_wherever_stage3a_ends() -> None:
    """stage3a's size differs between s390-tools versions: the arguments are found by meaning."""
    data = bytearray(DATA)
    args = seimage.IPIB_OFFSET - 24
    hdr_offs, hdr_size, ipib_offs = struct.unpack(">QQQ", data[args : args + 24])
    data[args : args + 24] = bytes(24)
    new = args - 40  # a stage3a 40 bytes shorter: the arguments move, the offsets grow
    data[new : new + 24] = struct.pack(">QQQ", hdr_offs + 40, hdr_size, ipib_offs + 40)
    image = seimage.parse(bytes(data), "moved")
    assert image.args_offset == new and image.header_offset == seimage.HEADER_OFFSET


def _broken(offset: int, value: bytes) -> bytes:
    data = bytearray(DATA)
    data[offset : offset + len(value)] = value
    return bytes(data)


@pytest.mark.parametrize(
    "data, message",
    [
        (DATA[:0x1000], "too small"),
        (_broken(seimage.IPIB_OFFSET + 0x0C, b"\x02"), "no IPL parameter block of type PV"),
        (_broken(seimage.HEADER_OFFSET, b"NOTSECEX"), "no SE header magic"),
        (_broken(seimage.IPIB_OFFSET + 0x88 + 24, bytes(8)), "tweak prefixes do not grow"),
        (bytes(0x20000), "no IPL parameter block"),
    ],
)
def test_parser_refuses_what_is_not_an_se_image(data: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        seimage.parse(data, "bad")


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
    arg = uapi.kvm_pv_cmd(cmd=cmd, data=data)
    ret = vm.pv_ioctl(arg)  # type: ignore[attr-defined]
    return ret, int(arg.rc)


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
        assert _raw(vm, verify) == (-errno.EINVAL, 0x0102)  # one component missing
        assert unpack(c1.addr, c1.tweak + 1) == (0, 1)  # unpacked with another tweak
        assert _raw(vm, verify) == (-errno.EINVAL, 0x0102)
    finally:
        vm.close()  # type: ignore[attr-defined]
        kvm.close()
        mem.close()


def test_a_real_header_is_refused_as_not_for_this_host() -> None:
    data = bytearray(DATA)
    iv = seimage.HEADER_OFFSET + 16
    data[iv : iv + 12] = bytes(12)  # no longer synthetic: a real (encrypted) header
    image = seimage.parse(bytes(data), "real-looking")
    assert not image.synthetic
    host = SimulatedHost()
    kvm, vm, mem = _vm(host)
    try:
        vcpu = vm.vcpu_add(0)  # type: ignore[attr-defined]
        load_image(vm, image)  # type: ignore[arg-type]
        with pytest.raises(BootError) as info:
            s390_machine_protect(vm, image, [vcpu])  # type: ignore[arg-type]
        msg = str(info.value)
        assert "SET_SEC_PARMS" in msg and "rc 0x0108" in msg and "not made for this host" in msg
        assert not host.vm_info(vm.fd).protected  # type: ignore[attr-defined]  # torn down again
    finally:
        vm.close()  # type: ignore[attr-defined]
        kvm.close()
        mem.close()


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
        host: Syscalls = PermissiveUvHost(SimulatedHost(**config.kwargs()))  # type: ignore[assignment]
        return host

    req = chk.CheckRequest(
        backend="sim", select=BOOT_CHECKS, sim_factory=factory, facts=probe_mod.probe_facts()
    )
    wrong = chk.run_checks(req, stream=io.StringIO())
    assert [c.status for c in wrong.results] == [Status.FAIL] * len(BOOT_CHECKS), wrong.ktap()
