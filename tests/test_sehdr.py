# SPDX-License-Identifier: GPL-2.0-only
"""The SE header's cryptography (kvmpv.sehdr) against what nobody here wrote, and the
simulated Ultravisor opening it.

The key slot is held to s390-tools' own known answer (fixtures/se/README.md): the same
customer key, host key and protection key give the same 80 bytes pvimg's library gives.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from kvmpv import s390guest, sehdr, seimage
from kvmpv.cli import main
from kvmpv.errors import EXIT_OK, EXIT_USAGE
from kvmpv.kvm import Kvm
from kvmpv.memory import GuestMemory
from kvmpv.pv import load_image, payload_end, s390_machine_protect
from kvmpv.runner import reset_vcpus, run_until_finished
from kvmpv.sim import SimulatedHost

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "se"
MiB = 1 << 20


def _test_keys() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
    scalar = int.from_bytes((FIXTURES / "private_cust.bin").read_bytes(), "big")
    customer = ec.derive_private_key(scalar, ec.SECP521R1())
    host = x509.load_pem_x509_certificate((FIXTURES / "host.pem.crt").read_bytes()).public_key()
    assert isinstance(host, ec.EllipticCurvePublicKey)
    return customer, host


def test_keyslot_is_s390_tools_known_answer() -> None:
    customer, host = _test_keys()
    assert sehdr.coords(customer.public_key()) == (FIXTURES / "public_cust.bin").read_bytes()
    expected = (FIXTURES / "keyslot.bin").read_bytes()
    assert sehdr.keyslot(host, customer, b"\x17" * 32) == expected
    assert sehdr.keyslot(host, customer, b"\x16" * 32) != expected  # it can fail
    assert expected[:32] == hashlib.sha256(sehdr.coords(host)).digest()  # phkh


def _header(hosts: list[ec.EllipticCurvePublicKey]) -> tuple[bytes, sehdr.Secrets]:
    customer, _ = _test_keys()
    secrets = sehdr.Secrets(cck=b"c" * 32, xts=bytes(range(64)), psw=(0x180000000, 0x13000))
    digests = (b"p" * 64, b"a" * 64, b"t" * 64)
    hdr = sehdr.build_header(
        hosts=hosts, customer=customer, prot_key=b"k" * 32, iv=b"i" * 12, nep=3, pcf=0,
        digests=digests, secrets=secrets,
    )  # fmt: skip
    return hdr, secrets


def test_the_simulated_uv_opens_what_kvmpv_builds_and_refuses_the_rest() -> None:
    fake = sehdr.fake_host_key()
    _, other = _test_keys()
    hdr, secrets = _header([other, fake.public_key()])  # the second slot is this machine's
    assert len(hdr) == 416 + 2 * 80 + 128 + 16
    parsed = seimage.parse_header(hdr)  # pvimg's reading of the layout agrees
    assert parsed.nks == 2 and parsed.sea == 128 and parsed.nep == 3
    opened = sehdr.open_header(hdr, fake)
    assert (opened.xts, opened.psw, opened.nep) == (secrets.xts, secrets.psw, 3)
    assert (opened.pld, opened.ald, opened.tld) == (b"p" * 64, b"a" * 64, b"t" * 64)

    def refusal(data: bytes) -> tuple[int, int]:
        with pytest.raises(sehdr.UvRefusal) as info:
            sehdr.open_header(data, fake)
        return info.value.rc, info.value.rrc

    only_other, _ = _header([other])
    assert refusal(only_other) == (0x108, 0x05)  # no key slot for this host key
    for off in (16, 300, len(hdr) - 1, len(hdr) - 40, 416 + 80 + 40):  # IV, digest, tag, ...
        bad = bytearray(hdr)
        bad[off] ^= 1
        assert refusal(bytes(bad)) == (0x10A, 0)  # does not authenticate: corrupt
    bad = bytearray(hdr)
    bad[0x50:0xF0] = b"\x01" * 160  # the customer key: not a point on the curve
    assert refusal(bytes(bad)) == (0x108, 0x0B)
    bad = bytearray(hdr)
    bad[8:12] = (0x200).to_bytes(4, "big")
    assert refusal(bytes(bad)) == (0x104, 0)


def test_components_are_xts_encrypted_per_page_with_the_tweak() -> None:
    key = bytes(range(64))
    plain = bytes(range(256)) * 32  # two pages
    tweak = 0x0028_0102_0304_0506
    enc = sehdr.xts_pages(key, plain, tweak, encrypt=True)
    assert enc[:4096] != plain[:4096] and enc[:4096] != enc[4096:]
    assert sehdr.xts_pages(key, enc, tweak, encrypt=False) == plain
    # the second page alone, with its offset in the component: the same bytes
    assert sehdr.xts_pages(key, plain[4096:], tweak, encrypt=True, offset=4096) == enc[4096:]
    assert sehdr.xts_pages(key, enc, tweak + 1, encrypt=False) != plain


def test_fake_host_key_document_is_the_simulated_machines() -> None:
    cert = x509.load_pem_x509_certificate((FIXTURES / "kvmpv-FAKE-host-key.crt").read_bytes())
    assert "FAKE" in cert.subject.rfc4514_string()
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert sehdr.coords(key) == sehdr.coords(sehdr.fake_host_key().public_key())


def _boot(data: bytes) -> str:
    """Boot ``data`` on a fresh simulated machine (one memslot from 0) to the payload's end."""
    image = seimage.parse(data, "built")
    host = SimulatedHost()
    mem = GuestMemory(16 * MiB, sys=host)
    try:
        with Kvm(host) as kvm, kvm.vm_create() as vm:
            vm.mem_add(mem)
            vcpu = vm.vcpu_add(0)
            load_image(vm, image)
            reset_vcpus([vcpu])
            boot = s390_machine_protect(vm, image, [vcpu])
            run_until_finished(vcpu)
            end = payload_end(boot, vcpu)
            # UNPACK decrypted the payload in place: the plaintext code is in guest memory
            code = image.components[0].addr
            assert ctypes.string_at(mem.addr + code, len(s390guest.CODE)) == s390guest.CODE
            assert host.vm_info(vm.fd).secure_bytes == 16 * MiB
            return end.kind
    finally:
        mem.close()


def test_guest_se_image_for_a_host_key_document_boots_on_that_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "se.img"
    crt = FIXTURES / "kvmpv-FAKE-host-key.crt"
    argv = ["guest", "--arch", "s390x", "--se-image", "--host-key-document", str(crt)]
    assert main([*argv, "--out", str(out)]) == EXIT_OK
    assert "key slots for 1 host-key document(s), one the simulator's FAKE host key" in (
        capsys.readouterr().out
    )
    data = out.read_bytes()
    assert _boot(data) == "payload"
    # random keys, as pvimg makes them: a second image differs in every secret part
    assert main([*argv, "--out", str(tmp_path / "2.img")]) == EXIT_OK
    assert (tmp_path / "2.img").read_bytes()[0x13000:0x14000] != data[0x13000:0x14000]
    # refusals, one line each
    for bad in (["--se-image"], ["--host-key-document", str(crt)],
                ["--se-image", "--host-key-document", "/etc/hostname"]):  # fmt: skip
        assert main(["guest", "--arch", "s390x", *bad, "--out", str(out)]) == EXIT_USAGE
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_synthetic_image_boots_every_time() -> None:
    data = seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64)
    assert data == seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64)
    assert _boot(data) == "payload" and _boot(data) == "payload"


def test_unpack_outside_the_memslots_is_still_efault_first() -> None:
    """The gmap fault comes before the UV reads (or decrypts) anything."""
    image = seimage.parse(seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64), "s")
    host = SimulatedHost()
    mem = GuestMemory(16 * MiB, sys=host)
    try:
        with Kvm(host) as kvm, kvm.vm_create() as vm:
            vm.mem_add(mem)
            vm.vcpu_add(0)
            load_image(vm, image)
            from kvmpv.pv import pv_enable, pv_set_sec_parms, pv_unpack

            pv_enable(vm)
            hdr = ctypes.create_string_buffer(image.header, image.header_size)
            pv_set_sec_parms(vm, ctypes.addressof(hdr), image.header_size)
            res = pv_unpack(vm, 32 * MiB, 4096, image.components[0].tweak, check=False)
            assert res.errno == errno.EFAULT
    finally:
        mem.close()
