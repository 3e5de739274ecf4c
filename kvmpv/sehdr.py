# SPDX-License-Identifier: GPL-2.0-only
"""The SE header's cryptography: what pvimg writes, what the Ultravisor opens.

Formats read from s390-tools (facts only; this code is kvmpv's): the header
(``rust/pvimg/src/pv_utils/se_hdr/hdr_v1.rs``, ``brcb.rs``), the key slot
(``rust/pv/src/req/keyslot.rs``), the key derivation (``rust/pv/src/crypto.rs``
``derive_aes256_gcm_key``), the component encryption
(``rust/pvimg/src/pv_utils/secured_comp.rs``); spec 10.6.  All big-endian.

* Customer key: an ECDH key on secp521r1; public keys are written as their
  x and y coordinates, each left padded with zeros to 80 bytes (160 bytes).
* Key slot (80 bytes), one per host-key document: SHA-256 of the host
  public key's 160 coordinate bytes (``phkh``), then the 32-byte header
  protection key encrypted with AES-256-GCM (IV 12 zero bytes, no AAD) under
  SHA-256(ECDH(customer private, host public) || 00 00 00 01), then that
  GCM tag.  ``tests/test_sehdr.py`` holds this to s390-tools' own known
  answer (``fixtures/se/keyslot.bin``).
* Header: the 416-byte plaintext head and the key slots are the AAD of an
  AES-256-GCM encryption, under the protection key and the header's IV, of
  the secret part (CCK 32, the AES-256-XTS key of all components 64, PSW
  16, secret control flags 8, number of optional items 4 = 0, reserved 4);
  the GCM tag closes the header.
* Components: padded to pages, each page encrypted with AES-256-XTS; the
  first page's tweak is the component's 16 bytes (tweak prefix, page offset
  0), each next page's the previous plus 4096 as a 128-bit number.  pld is
  SHA-512 over the encrypted pages, ald over their addresses, tld over their
  tweaks (``seimage.page_digests``).

``open_header()`` is the simulated Ultravisor's SET_SEC_PARMS: it refuses
as stage3a's ``enum UV_RC`` names the answers (rc 0x108 rrc 0x05: no key
slot for this host; 0x108 rrc 0x0b: a bad customer key; 0x104: version;
0x10a: anything that does not authenticate).

The *fake host key* (``fake_host_key()``) is derived from a fixed label: it
is no machine's key, its private half is public by construction, and
``fixtures/se/kvmpv-FAKE-host-key.crt`` is its host-key document, for the
simulator and tests only.  Production images come from ``pvimg create``.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PAGE = 4096
PV_MAGIC = 0x49424D5365634578  # "IBMSecEx"
PV_VERSION_1 = 0x100
COORD = 80
#: struct pv_hdr_head (``BootHdrHead``, 416 bytes)
HEAD = struct.Struct(">QII12sIQQQQ160s64s64s64s")
KEYSLOT = 80
TAG = 16
#: the secret part: CCK, XTS key, PSW, scf, noi, reserved (``SeHdrConfV1``)
SECRET = struct.Struct(">32s64sQQQII")
#: UV return codes at boot (s390-tools rust/pvimg/boot/stage3a.c, enum UV_RC)
RC_HDR_VERSION = 0x0104
RC_HOST_KEY_HASH = 0x0108
RRC_NO_KEY_SLOT = 0x05
RRC_BAD_ECDH_KEY = 0x0B
RC_HDR_CORRUPT = 0x010A
#: The label the fake host key is derived from (see the module doc).
FAKE_LABEL = b"kvmpv FAKE Secure Execution host key: no machine's key, tests and simulator only"


class UvRefusal(Exception):
    """What the Ultravisor answers to a header it does not accept: rc, rrc, why."""

    def __init__(self, rc: int, rrc: int, why: str) -> None:
        super().__init__(f"rc {rc:#06x} rrc {rrc:#06x}: {why}")
        self.rc, self.rrc, self.why = rc, rrc, why


def coords(key: ec.EllipticCurvePublicKey) -> bytes:
    """x and y, each zero padded to 80 bytes (``EcPubKeyCoord``)."""
    n = key.public_numbers()
    return n.x.to_bytes(COORD, "big") + n.y.to_bytes(COORD, "big")


def public_key_from_coords(data: bytes) -> ec.EllipticCurvePublicKey:
    """The secp521r1 public key of 160 coordinate bytes; ``ValueError`` if not on the curve."""
    x, y = int.from_bytes(data[:COORD], "big"), int.from_bytes(data[COORD:], "big")
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP521R1()).public_key()


def phkh(host: ec.EllipticCurvePublicKey) -> bytes:
    """The public host key hash of a key slot: SHA-256 of the coordinates."""
    return hashlib.sha256(coords(host)).digest()


def exchange_key(private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> bytes:
    """AES-256 key from ECDH: SHA-256(shared secret || 00 00 00 01) (``derive_aes256_gcm_key``)."""
    return hashlib.sha256(private.exchange(ec.ECDH(), public) + b"\x00\x00\x00\x01").digest()


def keyslot(
    host: ec.EllipticCurvePublicKey, customer: ec.EllipticCurvePrivateKey, prot_key: bytes
) -> bytes:
    """One 80-byte key slot: phkh, the wrapped protection key, its GCM tag (``KeyslotV1``)."""
    wrapped = AESGCM(exchange_key(customer, host)).encrypt(bytes(12), prot_key, None)
    return phkh(host) + wrapped


@functools.lru_cache(maxsize=1)
def fake_host_key() -> ec.EllipticCurvePrivateKey:
    """The simulated machine's host key: derived from ``FAKE_LABEL``, FAKE by construction."""
    scalar = int.from_bytes(hashlib.sha512(FAKE_LABEL).digest(), "big")
    return ec.derive_private_key(scalar, ec.SECP521R1())


def xts_pages(key: bytes, data: bytes, tweak: int, *, encrypt: bool, offset: int = 0) -> bytes:
    """``data`` (whole pages) through AES-256-XTS, page ``i`` with the tweak (prefix,
    ``offset`` + i * 4096): ``offset`` is the first page's offset in its component.

    One cipher per page: XTS's data unit is the page, each with its own
    tweak, as pvimg encrypts and the UV decrypts.  The loop is over the pages
    of an image's components (bounded by the image, never by guest memory).
    """
    out = bytearray(len(data))
    for off in range(0, len(data), PAGE):
        iv = ((tweak << 64) + offset + off).to_bytes(16, "big")
        ctx = Cipher(algorithms.AES(key), modes.XTS(iv))
        op = ctx.encryptor() if encrypt else ctx.decryptor()
        out[off : off + PAGE] = op.update(data[off : off + PAGE]) + op.finalize()
    return bytes(out)


@dataclass(frozen=True)
class Secrets:
    """The encrypted part of a V1 header."""

    cck: bytes
    xts: bytes
    psw: tuple[int, int]
    scf: int = 0


def build_header(
    *,
    hosts: Sequence[ec.EllipticCurvePublicKey],
    customer: ec.EllipticCurvePrivateKey,
    prot_key: bytes,
    iv: bytes,
    nep: int,
    pcf: int,
    digests: tuple[bytes, bytes, bytes],
    secrets: Secrets,
) -> bytes:
    """A V1 SE header as pvimg writes it (see the module doc)."""
    nks = len(hosts)
    sehs = HEAD.size + KEYSLOT * nks + SECRET.size + TAG
    pld, ald, tld = digests
    head = HEAD.pack(
        PV_MAGIC, PV_VERSION_1, sehs, iv, 0, nks, SECRET.size, nep, pcf,
        coords(customer.public_key()), pld, ald, tld,
    )  # fmt: skip
    aad = head + b"".join(keyslot(h, customer, prot_key) for h in hosts)
    secret = SECRET.pack(secrets.cck, secrets.xts, *secrets.psw, secrets.scf, 0, 0)
    return aad + AESGCM(prot_key).encrypt(iv, secret, aad)


@dataclass(frozen=True)
class OpenedHeader:
    """What the Ultravisor knows after SET_SEC_PARMS accepted a header."""

    nep: int
    pcf: int
    pld: bytes
    ald: bytes
    tld: bytes
    xts: bytes
    psw: tuple[int, int]


def open_header(header: bytes, host: ec.EllipticCurvePrivateKey) -> OpenedHeader:
    """The simulated Ultravisor's SET_SEC_PARMS: find the slot, unwrap, authenticate, decrypt.

    ``UvRefusal`` with the rc/rrc of stage3a's ``enum UV_RC``.  Where the
    sources do not say which rc a failure gets (a key slot or header whose
    GCM tag does not verify), it is 0x10a, "header corrupt".
    """
    if len(header) < HEAD.size:
        raise UvRefusal(RC_HDR_CORRUPT, 0, f"{len(header)} bytes, shorter than the header's head")
    magic, version, sehs, iv, _r, nks, sea, nep, pcf, cpk, pld, ald, tld = HEAD.unpack_from(header)
    if magic != PV_MAGIC:
        raise UvRefusal(RC_HDR_CORRUPT, 0, "no magic 'IBMSecEx'")
    if version != PV_VERSION_1:
        raise UvRefusal(RC_HDR_VERSION, 0, f"header version {version:#x}")
    end_slots = HEAD.size + KEYSLOT * nks
    if sehs > len(header) or sea != SECRET.size or end_slots + sea + TAG != sehs:
        raise UvRefusal(RC_HDR_CORRUPT, 0, "sizes do not add up")
    header = header[:sehs]
    want = phkh(host.public_key())
    slots = [header[o : o + KEYSLOT] for o in range(HEAD.size, end_slots, KEYSLOT)]
    slot = next((s for s in slots if s[:32] == want), None)
    if slot is None:
        raise UvRefusal(RC_HOST_KEY_HASH, RRC_NO_KEY_SLOT, "no key slot for this host key")
    try:
        customer = public_key_from_coords(cpk)
    except ValueError:
        raise UvRefusal(RC_HOST_KEY_HASH, RRC_BAD_ECDH_KEY, "bad customer ECDH key") from None
    try:
        prot_key = AESGCM(exchange_key(host, customer)).decrypt(bytes(12), slot[32:], None)
        secret = AESGCM(prot_key).decrypt(iv, header[end_slots:], header[:end_slots])
    except InvalidTag:
        raise UvRefusal(RC_HDR_CORRUPT, 0, "the header does not authenticate") from None
    _cck, xts, mask, addr, _scf, noi, _res = SECRET.unpack(secret)
    if noi:
        raise UvRefusal(RC_HDR_CORRUPT, 0, f"{noi} optional items")
    return OpenedHeader(nep, pcf, pld, ald, tld, xts, (mask, addr))


__all__ = [
    "OpenedHeader",
    "Secrets",
    "UvRefusal",
    "build_header",
    "coords",
    "exchange_key",
    "fake_host_key",
    "keyslot",
    "open_header",
    "phkh",
    "public_key_from_coords",
    "xts_pages",
]
