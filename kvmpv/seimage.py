# SPDX-License-Identifier: GPL-2.0-only
"""Secure Execution images: the layouts s390-tools writes, the SE header, the IPL-block components.

An SE image made by s390-tools' ``pvimg create`` (``genprotimg`` is the older
name) is loaded at guest address 0 and starts unprotected: its loader,
stage3a, hands the machine an IPL parameter block of type PV (DIAG 308
subcode 8) and asks for a protected boot (subcode 10).  QEMU then does the
host side (``s390_machine_protect()``, spec 10.3) with what that block says:
the SE header's address and length, and per component its address, length
and tweak prefix.  kvmpv does the same host side without running stage3a, so
it reads those values from the image itself.  Two layouts exist (spec 10.6):

* **pvimg** (the Rust tool, s390-tools >= 2.33; ``rust/pvimg/src/se_img.rs``,
  ``rust/pv/src/brcb.rs``): metadata at 0xc000 (stage3a's BSS), packed
  big-endian ``{magic "SeImgLnx", hdr_off u64, version u32 (1), ipib_off
  u64}`` (``SeImgMetaData``); stage3a at 0x10000 with its arguments as its
  last 24 bytes; the components (kernel, ramdisk, command line, stage3b) from
  the first page after stage3a; then the SE header, then the IPL block, each
  appended page aligned.  The IPL block carries the header's address and size
  (``create_ipib``).  pvimg's "legacy" mode places the header at 0x14000
  instead; the metadata says where in both cases.
* **genprotimg** (the C tool, removed in s390-tools commit 195579cf):
  stage3a's arguments, three big-endian u64 ``{hdr_offs, hdr_size,
  ipib_offs}``, are stage3a's last 24 bytes, the offsets counted from the
  arguments' own address; the IPL block follows on the next page (``len`` at
  least a page, ``pv_hdr_addr`` 0: stage3a fills it in), then the header
  (``stage3a_set_data()`` in ``genprotimg/src/pv/pv_stage3.c``).  No metadata.

The IPL block (QEMU ``hw/s390x/ipl.h`` ``IPLBlockPV``, pvimg
``bootloader/ipl.rs``): header ``len`` u32 at 0, block type ``pbt`` 5 (PV) at
0x0c, ``num_comp`` u32 at 0x74, ``pv_hdr_addr`` u64 at 0x78,
``pv_hdr_size`` u64 at 0x80, components ``{tweak_pref, addr, len}`` (3 x
u64) from 0x88.  The SE header (``BootHdrHead`` in ``brcb.rs``,
``SeHdrAadV1`` in ``rust/pvimg/src/pv_utils/se_hdr/hdr_v1.rs``): the 416-byte
plaintext head (magic ``IBMSecEx``, version 0x100, size ``sehs``, IV,
``nks`` key slots, ``sea`` bytes of encrypted area, ``nep`` pages, ``pcf``,
the customer public key, pld/ald/tld), ``nks`` key slots of 80 bytes, the
encrypted area, the 16-byte GCM tag.

Anything else is refused with one line naming what was looked for.  A file
is refused before it is read if it is not a regular file (``/dev/zero``
would be read forever) or larger than ``MAX_IMAGE_BYTES``.

An image kvmpv builds (``se_image()``; ``kvmpv guest --se-image``) has
pvimg's layout and real cryptography (``kvmpv.sehdr``): a key slot per host
key, the encrypted header part, AES-XTS pages, pld/ald/tld over the
encrypted pages; kvmpv's payload is its code component, started directly by
the header's PSW (no stage3a/stage3b runs: kvmpv does the host side itself).
A *synthetic* image (``synthetic_image()``, ``kvmpv guest --se-synthetic``)
is one made for the FAKE host key of the simulated machine
(``sehdr.fake_host_key()``), deterministic, and labelled synthetic wherever it
appears; a real host refuses it (rc 0x108 rrc 0x05).  Data only: no I/O
beyond ``read_file()`` reading a file.
"""

from __future__ import annotations

import array
import functools
import hashlib
import os
import stat
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import sehdr
from .errors import UsageError

PAGE = 4096
#: ``PV_MAGIC_NUMBER``: "IBMSecEx"
PV_MAGIC = 0x49424D5365634578
PV_VERSION_1 = 0x100
#: ``IPL_TYPE_PV`` / QEMU's ``S390_IPL_TYPE_PV``
IPL_TYPE_PV = 5
#: pvimg's image metadata (``SeImgMetaData``: at stage3a's BSS, 0xc000).
META_OFFSET = 0xC000
META_MAGIC = b"SeImgLnx"
META_VERSION_1 = 1
_META = struct.Struct(">8sQIQ")  # packed: 28 bytes
#: stage3a's load address (``STAGE3A_LOAD_ADDRESS``) and its entry one page on
STAGE3A_LOAD = 0x10000
STAGE3A_ENTRY = 0x11000
ARGS_SIZE = 24
#: genprotimg's places (its README "Memory Layout"), kept for the older layout's tests
GENPROTIMG_IPIB_OFFSET = 0x13000
GENPROTIMG_HEADER_OFFSET = 0x14000
#: pvimg's first component address with the s390-tools stage3a (its
#: ``test_comp_ctx_new``: ``next_addr == 0x13000``); the synthetic image uses it too.
COMPONENTS_OFFSET = 0x13000
#: The header's largest size (``SeHdrDataV1::MAX_SIZE``, two pages; QEMU and
#: the kernel refuse more at SET_SEC_PARMS).
MAX_HEADER_BYTES = 2 * PAGE
#: The largest file kvmpv reads as an SE image.  Not a format limit (the
#: IPL block's addresses are u64): kvmpv reads the whole image into memory and
#: copies it to guest address 0, and a pvimg image of a distribution kernel
#: plus initrd is tens of MiB.  The point is to refuse, before reading, what
#: cannot be an image kvmpv could boot.
MAX_IMAGE_BYTES = 4 << 30
#: struct pv_hdr_head (``BootHdrHead``) is 416 bytes; a key slot 80; the tag 16.
_HEAD = struct.Struct(">QII12sIQQQQ160s64s64s64s")
KEYSLOT_SIZE = 80
TAG_SIZE = 16
#: The encrypted area of a V1 header without optional items: CCK 32, XTS key
#: 64, PSW 16, scf 8, noi 4, reserved 4 (``SeHdrConfV1``).
SEA_V1 = 32 + 64 + 16 + 8 + 4 + 4
#: pvimg's component kinds (``ComponentKind``): the tweak prefix's first u16.
COMP_KERNEL, COMP_CMDLINE = 40, 60
#: The tweak prefixes of the synthetic components: pvimg's format (kind u16,
#: then 6 random bytes; here fixed, readable bytes), strictly increasing.
SYNTHETIC_TWEAKS = (
    (COMP_KERNEL << 48) | int.from_bytes(b"kvmpv0", "big"),
    (COMP_CMDLINE << 48) | int.from_bytes(b"kvmpv0", "big"),
)


@dataclass(frozen=True)
class Component:
    """One IPL-block component: what one ``KVM_PV_UNPACK`` imports."""

    tweak: int
    addr: int
    size: int  # page aligned (QEMU unpacks TARGET_PAGE_ALIGN(size))

    @property
    def pages(self) -> int:
        return self.size // PAGE

    def to_dict(self) -> dict[str, Any]:
        # The image is loaded at guest address 0: the file offset is the address.
        return {
            "addr_hex": f"{self.addr:x}",
            "size": self.size,
            "tweak_hex": f"{self.tweak:016x}",
            "kind": _KIND_NAMES.get(self.tweak >> 48, "unknown"),
            "offset": self.addr,
        }


#: pvimg's ``ComponentKind`` Display names, by tweak prefix kind.
_KIND_NAMES = {40: "Linux kernel", 50: "ramdisk", 60: "kernel cmdline", 70: "stage3b"}


@dataclass(frozen=True)
class KeySlot:
    """``BinaryKeySlotV1``: host key hash, wrapped protection key, GCM tag."""

    phkh: bytes
    wrpk: bytes
    kst: bytes


@dataclass(frozen=True)
class SeHeader:
    """A V1 SE header as ``pvimg info`` shows it (encrypted, not verified)."""

    version: int
    sehs: int
    iv: bytes
    nks: int
    sea: int
    nep: int
    pcf: int
    cust_pub_key: bytes
    pld: bytes
    ald: bytes
    tld: bytes
    keyslots: tuple[KeySlot, ...]
    encrypted: bytes
    tag: bytes

    def info_data(self) -> dict[str, Any]:
        """The ``data`` object of ``pvimg info --format json`` without ``--hdr-key``.

        Field names and encodings of ``SeHdrAadV1``'s serde attributes:
        lower-case hex without 0x, ``pcf_hex`` left padded to 16 digits, the
        encrypted area as ``cipher_data_b64`` (``rust/pvimg/schema/INFO_JSON_OUTPUT.md``).
        """
        import base64

        return {
            "kind": "se_hdr",
            "verified": False,
            "magic_hex": f"{PV_MAGIC:016x}",
            "version": "V1",
            "sehs": self.sehs,
            "iv_hex": self.iv.hex(),
            "nks": self.nks,
            "sea": self.sea,
            "nep": self.nep,
            "pcf_hex": f"{self.pcf:016x}",
            "cust_pub_key": {"coord_hex": self.cust_pub_key.hex()},
            "pld_hex": self.pld.hex(),
            "ald_hex": self.ald.hex(),
            "tld_hex": self.tld.hex(),
            "keyslots": [
                {"phkh_hex": k.phkh.hex(), "wrpk_hex": k.wrpk.hex(), "kst_hex": k.kst.hex()}
                for k in self.keyslots
            ],
            "tag_hex": self.tag.hex(),
            "cipher_data_b64": base64.b64encode(self.encrypted).decode(),
        }


@dataclass(frozen=True)
class SeImage:
    """What the host side of a protected boot needs from an SE image."""

    data: bytes  # the whole image, loaded at guest address 0
    args_offset: Optional[int]  # stage3a's arguments, where found
    header_offset: int
    header_size: int
    ipib_offset: int
    components: tuple[Component, ...]
    synthetic: bool
    source: str  # a path, or "synthetic"
    layout: str  # "pvimg" or "genprotimg"
    parsed_header: SeHeader

    @property
    def header(self) -> bytes:
        return self.data[self.header_offset : self.header_offset + self.header_size]

    @property
    def label(self) -> str:
        kind = "SYNTHETIC SE image" if self.synthetic else "SE image"
        n = len(self.components)
        return f"{kind} {self.source} ({n} components, header {self.header_size} B)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "synthetic": self.synthetic,
            "layout": self.layout,
            "size": len(self.data),
            "header_offset": self.header_offset,
            "header_size": self.header_size,
            "ipib_offset": self.ipib_offset,
            "components": [
                {"addr": c.addr, "size": c.size, "tweak": f"{c.tweak:#018x}"}
                for c in self.components
            ],
        }


def _u64(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 8], "big")


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 4], "big")


def parse_header(data: bytes, source: str = "header", offset: int = 0) -> SeHeader:
    """The V1 SE header at ``offset``; ``UsageError`` naming what does not fit.

    The checks are pvimg's (``SeHdrAadV1``'s deku asserts: ``sehs`` at most
    8 KiB, ``nks`` and ``sea`` at most ``sehs``; version 0x100 only) plus the
    size identity of a header without optional items beyond ``sea``:
    head + key slots + encrypted area + tag = ``sehs``.
    """
    where = f"{source}: SE header at {offset:#x}"
    if len(data) - offset < _HEAD.size:
        raise UsageError(f"{where}: {len(data) - offset} bytes, a header has at least {_HEAD.size}")
    f = _HEAD.unpack_from(data, offset)
    magic, version, sehs, iv, _res, nks, sea, nep, pcf, cpk, pld, ald, tld = f
    if magic != PV_MAGIC:
        raise UsageError(f"{where}: no magic 'IBMSecEx'")
    if version != PV_VERSION_1:
        raise UsageError(f"{where}: version {version:#x}, kvmpv reads {PV_VERSION_1:#x} (V1)")
    if not _HEAD.size < sehs <= MAX_HEADER_BYTES or nks > sehs or sea > sehs:
        raise UsageError(f"{where}: size {sehs}, {nks} key slots, {sea} encrypted bytes: corrupt")
    if _HEAD.size + KEYSLOT_SIZE * nks + sea + TAG_SIZE != sehs:
        raise UsageError(
            f"{where}: {_HEAD.size} + {nks} x {KEYSLOT_SIZE} (key slots) + {sea} (encrypted) "
            f"+ {TAG_SIZE} (tag) is not its size {sehs}"
        )
    if len(data) - offset < sehs:
        raise UsageError(f"{where}: size {sehs} but only {len(data) - offset} bytes there")
    slots = []
    for i in range(nks):
        k = offset + _HEAD.size + KEYSLOT_SIZE * i
        slots.append(KeySlot(data[k : k + 32], data[k + 32 : k + 64], data[k + 64 : k + 80]))
    enc = offset + _HEAD.size + KEYSLOT_SIZE * nks
    end = offset + sehs
    return SeHeader(
        version, sehs, iv, nks, sea, nep, pcf, cpk, pld, ald, tld, tuple(slots),
        data[enc : enc + sea], data[end - TAG_SIZE : end],
    )  # fmt: skip


def find_header(data: bytes) -> Optional[int]:
    """Where ``pvimg info`` finds the header (``seek_se_hdr_start()``, ``brcb.rs``).

    With pvimg's metadata at 0xc000, at its ``hdr_off``; without, at the
    first of the first 0x15 page starts (0 .. 0x14000: a bare header, or
    genprotimg's 0x14000) that holds the magic.
    """
    if data[META_OFFSET : META_OFFSET + 8] == META_MAGIC and len(data) >= META_OFFSET + _META.size:
        off = _META.unpack_from(data, META_OFFSET)[1]
        return off if _u64(data, off) == PV_MAGIC else None
    for page in range(0x15):
        if _u64(data, page * PAGE) == PV_MAGIC and len(data) >= page * PAGE + 8:
            return page * PAGE
    return None


def _ipib_components(data: bytes, off: int) -> Optional[tuple[int, int, tuple[Component, ...]]]:
    """(header address, header length, components) if a PV IPIB starts at ``off``, else None."""
    if off < 0 or off + 0x88 > len(data) or data[off + 0x0C] != IPL_TYPE_PV:
        return None
    length, num = _u32(data, off), _u32(data, off + 0x74)
    if not 0x88 <= length <= PAGE or num == 0 or 0x88 + 24 * num > length:
        return None
    if off + 0x88 + 24 * num > len(data):
        return None
    comps = []
    for i in range(num):  # a handful of components, never pages
        c = off + 0x88 + 24 * i
        tweak, addr, size = _u64(data, c), _u64(data, c + 8), _u64(data, c + 16)
        comps.append(Component(tweak, addr, -(-size // PAGE) * PAGE))
    return _u64(data, off + 0x78), _u64(data, off + 0x80), tuple(comps)


def parse(data: bytes, source: str = "image") -> SeImage:
    """The IPL block, the header and the components of an SE image; ``UsageError`` if none."""
    if data[:8] == PV_MAGIC.to_bytes(8, "big"):
        raise UsageError(
            f"{source}: a bare SE header, not a whole SE image (booting needs the image; "
            "'kvmpv image info' reads a header)"
        )
    if data[META_OFFSET : META_OFFSET + 8] == META_MAGIC:
        return _parse_pvimg(data, source)
    found = _parse_genprotimg(data, source)
    if found is not None:
        return found
    raise UsageError(
        f"{source}: not an SE image: no metadata 'SeImgLnx' at 0xc000 (pvimg) and no IPL "
        "block of type PV (5) on a page after stage3a with stage3a's arguments pointing at "
        "it (genprotimg)"
    )


def _parse_pvimg(data: bytes, source: str) -> SeImage:
    if len(data) < META_OFFSET + _META.size:
        raise UsageError(f"{source}: ends inside the SE image metadata at 0xc000")
    _magic, hdr_off, version, ipib_off = _META.unpack_from(data, META_OFFSET)
    if version != META_VERSION_1:
        raise UsageError(
            f"{source}: SE image metadata version {version} at 0xc000, kvmpv reads version 1"
        )
    found = _ipib_components(data, ipib_off)
    if found is None:
        raise UsageError(
            f"{source}: no IPL block of type PV (5) at {ipib_off:#x}, where the metadata at "
            "0xc000 says"
        )
    hdr_addr, hdr_size, comps = found
    if hdr_addr != hdr_off:
        raise UsageError(
            f"{source}: the IPL block's header address {hdr_addr:#x} is not the metadata's "
            f"{hdr_off:#x}"
        )
    args = _find_args(data, hdr_off, hdr_size, ipib_off)
    return _checked(data, source, "pvimg", args, hdr_off, hdr_size, ipib_off, comps)


def _find_args(data: bytes, hdr: int, hdr_size: int, ipib: int) -> Optional[int]:
    """stage3a's arguments (its last 24 bytes, stage3a at 0x10000), found by meaning.

    stage3a's size changes between s390-tools versions and need not be a
    multiple of 8: look for ``hdr_size`` as a u64 and check the offsets
    around it (a few hits in a few pages, never a scan of the image).
    """
    needle = hdr_size.to_bytes(8, "big")
    lo, hi = STAGE3A_LOAD + 8, min(hdr, ipib, len(data)) - 16
    pos = data.find(needle, lo, hi + 8)
    while 0 <= pos <= hi:
        args = pos - 8
        if args + _u64(data, args) == hdr and args + _u64(data, args + 16) == ipib:
            return args
        pos = data.find(needle, pos + 1, hi + 8)
    return None


def _parse_genprotimg(data: bytes, source: str) -> Optional[SeImage]:
    """genprotimg's layout: the IPL block on a page after stage3a, the arguments before it."""
    for ipib in range(STAGE3A_ENTRY + PAGE, min(len(data), 1 << 20), PAGE):
        found = _ipib_components(data, ipib)
        if found is None:
            continue
        _hdr_addr, ipib_hdr_size, comps = found
        for args in range(ipib - ARGS_SIZE, ipib - PAGE, -1):  # at most a page of tries
            if _u64(data, args + 8) != ipib_hdr_size:
                continue
            hdr_offs, ipib_offs = _u64(data, args), _u64(data, args + 16)
            if args + ipib_offs == ipib:
                return _checked(
                    data, source, "genprotimg", args, args + hdr_offs, ipib_hdr_size, ipib, comps
                )
    return None


def _checked(
    data: bytes, source: str, layout: str, args: Optional[int], hdr: int, hdr_size: int,
    ipib: int, comps: tuple[Component, ...],
) -> SeImage:  # fmt: skip
    if not 0 < hdr_size <= len(data) - hdr or hdr < 0:
        raise UsageError(f"{source}: SE header at {hdr:#x} (+{hdr_size}) is outside the image")
    parsed = parse_header(data, source, hdr)
    if parsed.sehs != hdr_size:
        raise UsageError(
            f"{source}: the IPL block says the header has {hdr_size} bytes, "
            f"the header says {parsed.sehs}"
        )
    for prev, comp in zip(comps, comps[1:]):
        if comp.tweak <= prev.tweak:
            raise UsageError(f"{source}: component tweak prefixes do not grow")
    for comp in comps:
        if comp.addr % PAGE or comp.addr + comp.size > len(data) + PAGE:
            raise UsageError(
                f"{source}: component at {comp.addr:#x} (+{comp.size:#x}) is not in the image"
            )
    synthetic = any(k.phkh == fake_phkh() for k in parsed.keyslots)
    return SeImage(data, args, hdr, hdr_size, ipib, comps, synthetic, source, layout, parsed)


def read_file(path: Path, what: str = "SE image") -> bytes:
    """The bytes of ``path``, refusing before reading what cannot be an SE image.

    ``O_NONBLOCK`` so that opening a FIFO does not wait for a writer; the
    checks are on the opened file (``fstat``), so nothing changes between
    check and read but the file's own growth, which the bounded read catches.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{what} {path}: not a regular file, refused before reading it")
        if st.st_size > MAX_IMAGE_BYTES:
            raise UsageError(
                f"{what} {path}: {st.st_size} bytes, larger than kvmpv reads as an SE image "
                f"({MAX_IMAGE_BYTES} bytes)"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_IMAGE_BYTES:
        raise UsageError(f"{what} {path}: grew beyond {MAX_IMAGE_BYTES} bytes while read")
    return data


def load(path: Path) -> SeImage:
    return parse(read_file(path), str(path))


# --------------------------------------------------------------------------
# The digests of a synthetic header (computed by the builder and by the simulator)
# --------------------------------------------------------------------------


def _be_words(values: range) -> bytes:
    arr = array.array("Q", values)
    if sys.byteorder != "big":
        arr.byteswap()
    return arr.tobytes()


def page_digests(parts: Sequence[tuple[bytes, int, int]]) -> tuple[bytes, bytes, bytes]:
    """(pld, ald, tld) over the pages of ``parts``: (content, guest address, tweak) each.

    pvimg's definitions (``rust/pvimg/src/pv_utils/secured_comp.rs``, spec
    10.6): pld is SHA-512 over the page contents as unpacked (the encrypted
    pages; a synthetic image is plaintext, pcf "no decryption"), ald over
    each page's guest address as a big-endian u64, tld over each page's
    16-byte tweak: the component's tweak prefix and the page's byte offset in
    the component (the first page's tweak plus 4096 per page, as a 128-bit
    big-endian number; the two halves of the UNPACK tweak,
    ``kvm_s390_pv_unpack``).  One C-level hash update per part; the per-page
    words are built as arrays.
    """
    pld, ald, tld = hashlib.sha512(), hashlib.sha512(), hashlib.sha512()
    for content, addr, tweak in parts:
        addrs, tweaks = page_lists(len(content), addr, tweak)
        pld.update(content)
        ald.update(addrs)
        tld.update(tweaks)
    return pld.digest(), ald.digest(), tld.digest()


def page_lists(length: int, addr: int, tweak: int, offset: int = 0) -> tuple[bytes, bytes]:
    """The ald and tld input of ``length`` bytes of pages at ``addr`` with ``tweak``, the
    first page ``offset`` bytes into its component: big-endian u64 addresses, 16-byte
    tweaks (prefix, offset); built as arrays."""
    n = length // PAGE
    offsets = array.array("Q", range(offset, offset + n * PAGE, PAGE))
    pairs = array.array("Q", [tweak]) * (2 * n)
    pairs[1::2] = offsets
    if sys.byteorder != "big":
        pairs.byteswap()
    return _be_words(range(addr, addr + n * PAGE, PAGE)), pairs.tobytes()


@functools.cache
def fake_phkh() -> bytes:
    """The key-slot hash of the simulated machine's FAKE host key (``sehdr.fake_host_key``)."""
    return sehdr.phkh(sehdr.fake_host_key().public_key())


def _page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _ipib_bytes(comps: Sequence[tuple[int, int, int]], hdr_addr: int, hdr_size: int,
                length: int) -> bytes:  # fmt: skip
    """An IPL block of type PV (``create_ipib()``'s fields; ``length`` its ``len``)."""
    num = len(comps)
    blk = bytearray(max(length, 0x88 + 24 * num))
    blk[0:4] = length.to_bytes(4, "big")
    blk[7] = 1  # IPL_PARM_BLOCK_VERSION
    blk[8:12] = (0x88 + 24 * num - 8).to_bytes(4, "big")  # the PV block's own len
    blk[0x0C] = IPL_TYPE_PV
    blk[0x73] = 1  # IPL_PARM_BLOCK_PV_VERSION
    blk[0x74:0x78] = num.to_bytes(4, "big")
    blk[0x78:0x88] = struct.pack(">QQ", hdr_addr, hdr_size)
    for i, (tweak, addr, size) in enumerate(comps):
        blk[0x88 + 24 * i : 0x88 + 24 * (i + 1)] = struct.pack(">QQQ", tweak, addr, size)
    return bytes(blk)


def _keys(seed: Optional[bytes]) -> tuple[Any, bytes, bytes, bytes, bytes]:
    """(customer key, protection key, XTS key, CCK, IV): random as pvimg makes them, or,
    for the synthetic image, derived from ``seed`` so that it is the same every time."""
    if seed is None:
        from cryptography.hazmat.primitives.asymmetric import ec

        customer = ec.generate_private_key(ec.SECP521R1())
        return customer, os.urandom(32), os.urandom(64), os.urandom(32), os.urandom(12)
    from cryptography.hazmat.primitives.asymmetric import ec

    def part(name: bytes, n: int) -> bytes:
        return hashlib.shake_256(seed + name).digest(n)

    customer = ec.derive_private_key(int.from_bytes(part(b"cust", 64), "big"), ec.SECP521R1())
    xts = part(b"xts", 64)
    if xts[:32] == xts[32:]:  # XTS refuses two equal key halves
        raise ValueError("seed")
    return customer, part(b"prot", 32), xts, part(b"cck", 32), part(b"iv", 12)


#: What the synthetic image's keys are derived from (it is FAKE: see sehdr).
SYNTHETIC_SEED = b"kvmpv synthetic SE image for the FAKE host key"


def se_image(
    payload: bytes, entry_psw_mask: int, hosts: Sequence[Any], layout: str = "pvimg",
    *, seed: Optional[bytes] = None,
) -> bytes:  # fmt: skip
    """An SE image with pvimg's (or genprotimg's) layout around ``payload``, for ``hosts``.

    ``hosts``: the host public keys (EC P-521) that get a key slot.
    Components: the payload (position independent: it runs where it was
    unpacked, started by the header's PSW) and one page of zeros standing
    for an empty command line, each encrypted with AES-XTS.  The stand-in
    for stage3a, never run by kvmpv, is a disabled wait.
    ``layout="genprotimg"`` writes the older C tool's layout (IPL block at
    0x13000, header at 0x14000, no metadata), for the parser's tests.
    """
    if layout not in ("pvimg", "genprotimg"):
        raise ValueError(layout)
    customer, prot_key, xts, cck, iv = _keys(seed)
    hdr_size = _HEAD.size + KEYSLOT_SIZE * len(hosts) + SEA_V1 + TAG_SIZE
    old = layout == "genprotimg"
    code_pages = -(-len(payload) // PAGE)
    first = GENPROTIMG_HEADER_OFFSET + PAGE if old else COMPONENTS_OFFSET
    comp_addrs = (first, first + code_pages * PAGE)
    comp_sizes = (code_pages * PAGE, PAGE)
    comps = list(zip(SYNTHETIC_TWEAKS, comp_addrs, comp_sizes))
    if old:
        ipib_off, hdr_off = GENPROTIMG_IPIB_OFFSET, GENPROTIMG_HEADER_OFFSET
        end = comp_addrs[1] + PAGE
        args = ipib_off - ARGS_SIZE  # stage3a ends just below the IPL block
        ipib = _ipib_bytes(comps, 0, hdr_size, PAGE)  # genprotimg: len >= a page
    else:
        hdr_off = comp_addrs[1] + PAGE  # appended after the components (add_sehdr)
        ipib_off = _page_up(hdr_off + hdr_size)  # then the IPL block (add_ipib)
        ipib = _ipib_bytes(comps, hdr_off, hdr_size, 0x88 + 24 * len(comps))
        end = ipib_off + len(ipib)
        args = COMPONENTS_OFFSET - ARGS_SIZE  # stage3a's last 24 bytes
    image = bytearray(end)
    # Short IPL PSW to stage3a's entry; stage3a's first page branches there (brcl 15,+0x1000)
    image[0:8] = (0x0008000080000000 | STAGE3A_ENTRY).to_bytes(8, "big")
    image[STAGE3A_LOAD : STAGE3A_LOAD + 6] = bytes.fromhex("c0f400000800")
    # stage3a stand-in: "larl %r1,psw; lpswe 0(%r1)", nopr fill, then a disabled-wait PSW
    # at 0x5a3 (unprotected under QEMU it ends as a guest panic, never as the payload's
    # shutdown: such an image boots only through kvmpv's host-side protected boot)
    image[STAGE3A_ENTRY : STAGE3A_ENTRY + 32] = bytes.fromhex(
        "c01000000008b2b21000070707070707"  # larl, lpswe, nopr x3
        "0002000180000000"
        "00000000000005a3"  # the PSW: disabled wait, 64-bit, 0x5a3
    )
    plain = bytearray(comp_addrs[1] + PAGE)
    plain[comp_addrs[0] : comp_addrs[0] + len(payload)] = payload
    for tweak, addr, size in comps:  # the components, encrypted page by page
        image[addr : addr + size] = sehdr.xts_pages(
            xts, bytes(plain[addr : addr + size]), tweak, encrypt=True
        )
    image[ipib_off : ipib_off + len(ipib)] = ipib
    # stage3a's arguments, relative to their own address
    image[args : args + ARGS_SIZE] = struct.pack(">QQQ", hdr_off - args, hdr_size, ipib_off - args)
    if not old:
        image[META_OFFSET : META_OFFSET + _META.size] = _META.pack(
            META_MAGIC, hdr_off, META_VERSION_1, ipib_off
        )
    # the header: digests over the encrypted pages
    parts = [(bytes(image[a : a + s]), a, t) for t, a, s in comps]
    header = sehdr.build_header(
        hosts=hosts, customer=customer, prot_key=prot_key, iv=iv,
        nep=sum(comp_sizes) // PAGE, pcf=0, digests=page_digests(parts),
        secrets=sehdr.Secrets(cck=cck, xts=xts, psw=(entry_psw_mask, comp_addrs[0])),
    )  # fmt: skip
    assert len(header) == hdr_size
    image[hdr_off : hdr_off + hdr_size] = header
    return bytes(image)


def synthetic_image(payload: bytes, entry_psw_mask: int, layout: str = "pvimg") -> bytes:
    """The SE image for the simulated machine's FAKE host key (always the same bytes)."""
    fake = sehdr.fake_host_key().public_key()
    return se_image(payload, entry_psw_mask, [fake], layout, seed=SYNTHETIC_SEED)


__all__ = [
    "Component",
    "KeySlot",
    "SeHeader",
    "SeImage",
    "find_header",
    "load",
    "page_digests",
    "page_lists",
    "parse",
    "parse_header",
    "read_file",
    "se_image",
    "synthetic_image",
]
