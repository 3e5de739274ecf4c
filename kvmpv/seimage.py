# SPDX-License-Identifier: GPL-2.0-only
"""Secure Execution images: find the SE header and the IPL-block components, as QEMU needs them.

An SE image made by s390-tools' ``pvimg create`` (``genprotimg``) is loaded at
guest address 0 and starts unprotected: its loader, stage3a, hands the
machine an IPL parameter block of type PV (DIAG 308 subcode 8) and asks for
a protected boot (subcode 10).  QEMU then does the host side
(``s390_machine_protect()``, spec 10.3) with what that block says: the SE
header's address and length, and per component its address, length and
tweak prefix.  kvmpv does the same host side without running stage3a, so it
reads those values from the image itself:

* stage3a's arguments, three big-endian u64 ``{hdr_offs, hdr_size,
  ipib_offs}`` at the end of stage3a, the offsets counted from the
  arguments' own address (s390-tools ``stage3a.h``, ``pv_stage3.c``);
* the IPL parameter block (IPIB) there, page aligned: header ``len`` u32 at
  0, block type ``pbt`` 5 (PV) at 0x0c, ``num_comp`` u32 at 0x74,
  ``pv_header_addr`` u64 at 0x78 (0 in the file: stage3a fills it in),
  ``pv_header_len`` u64 at 0x80, components ``{tweak_pref, addr, size}``
  (3 x u64) from 0x88 (QEMU ``hw/s390x/ipl.h`` ``IPLBlockPV``);
* the SE header, starting with the magic ``IBMSecEx`` (``pv_hdr_def.h``).

The arguments are found by their meaning, not by stage3a's size (which
changes between s390-tools versions): the page-aligned IPIB of type PV, and
the 24 bytes before it whose ``ipib_offs`` points at it.

A *synthetic* image (``synthetic_image()``, ``kvmpv guest --se-synthetic``)
has the same layout with kvmpv's payload as its only code component and a
header the simulated Ultravisor accepts in place of an encrypted one: the
real head (magic, version, size, page count, ``pcf`` with "no decryption"),
the marker ``SYNTHETIC_IV`` where a real header has its GCM IV, digests the
simulator can recompute at VERIFY (``pld`` over the plaintext pages, ``ald``
over their addresses, ``tld`` over their tweaks: kvmpv's own definition,
modelled on pvimg's names), and the initial PSW in the clear.  A real host
refuses it (no key slot for its host key); it is labelled synthetic
wherever it appears.  Data only: no I/O beyond ``load()`` reading a file.
"""

from __future__ import annotations

import array
import hashlib
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import UsageError

PAGE = 4096
#: ``PV_MAGIC_NUMBER``: "IBMSecEx"
PV_MAGIC = 0x49424D5365634578
PV_VERSION_1 = 0x100
#: ``IPL_TYPE_PV`` / QEMU's ``S390_IPL_TYPE_PV``
IPL_TYPE_PV = 5
#: ``PV_PCF_NO_DECRYPTION``: the Ultravisor does not decrypt at UNPACK
PV_PCF_NO_DECRYPTION = 1 << 28
#: Stand-in for the GCM IV: what marks a header as kvmpv's synthetic one.
SYNTHETIC_IV = b"kvmpv-synth\x00"
#: Where the image keeps its parts (genprotimg's layout, README "Memory Layout").
STAGE3A_ENTRY = 0x11000
IPIB_OFFSET = 0x13000
HEADER_OFFSET = 0x14000
COMPONENTS_OFFSET = 0x15000
ARGS_SIZE = 24
#: struct pv_hdr_head is 416 bytes; the synthetic header then carries the
#: "encrypted" part in the clear: 3 x 32 key bytes, the PSW, scf, noi, res2,
#: and a 16-byte tag field.
_HEAD = struct.Struct(">QII12sIQQQQ160s64s64s64s")
_PSW_OFFSET = _HEAD.size + 96
SYNTHETIC_HEADER_SIZE = _PSW_OFFSET + 16 + 8 + 4 + 4 + 16
#: The tweak prefixes of the synthetic components (strictly increasing, as
#: pvimg requires).
SYNTHETIC_TWEAKS = (0x0001_0000_0000_0000, 0x0002_0000_0000_0000)


@dataclass(frozen=True)
class Component:
    """One IPL-block component: what one ``KVM_PV_UNPACK`` imports."""

    tweak: int
    addr: int
    size: int  # page aligned (QEMU unpacks TARGET_PAGE_ALIGN(size))

    @property
    def pages(self) -> int:
        return self.size // PAGE


@dataclass(frozen=True)
class SeImage:
    """What the host side of a protected boot needs from an SE image."""

    data: bytes  # the whole image, loaded at guest address 0
    args_offset: int
    header_offset: int
    header_size: int
    ipib_offset: int
    components: tuple[Component, ...]
    synthetic: bool
    source: str  # a path, or "synthetic"

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
            "size": len(self.data),
            "header_offset": self.header_offset,
            "header_size": self.header_size,
            "ipib_offset": self.ipib_offset,
            "components": [
                {"addr": c.addr, "size": c.size, "tweak": f"{c.tweak:#018x}"}
                for c in self.components
            ],
        }


@dataclass(frozen=True)
class SyntheticHeader:
    """The fields of a synthetic header the simulated Ultravisor uses."""

    pages: int  # nep
    pld: bytes
    ald: bytes
    tld: bytes
    psw: tuple[int, int]


def _u64(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 8], "big")


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 4], "big")


def _ipib_components(data: bytes, off: int) -> Optional[tuple[int, tuple[Component, ...]]]:
    """(header length, components) if a PV IPIB starts at ``off``, else None."""
    if off + 0x88 > len(data) or data[off + 0x0C] != IPL_TYPE_PV:
        return None
    length, num = _u32(data, off), _u32(data, off + 0x74)
    if not 0x88 <= length <= PAGE or num == 0 or 0x88 + 24 * num > length:
        return None
    comps = []
    for i in range(num):  # a handful of components, never pages
        c = off + 0x88 + 24 * i
        tweak, addr, size = _u64(data, c), _u64(data, c + 8), _u64(data, c + 16)
        comps.append(Component(tweak, addr, -(-size // PAGE) * PAGE))
    return _u64(data, off + 0x80), tuple(comps)


def parse(data: bytes, source: str = "image") -> SeImage:
    """The stage3a arguments, the IPIB and the header of an SE image; ``UsageError`` if none."""
    if len(data) < IPIB_OFFSET:
        raise UsageError(f"{source}: {len(data)} bytes, too small for an SE image")
    for ipib in range(STAGE3A_ENTRY + PAGE, min(len(data), 1 << 20), PAGE):
        found = _ipib_components(data, ipib)
        if found is None:
            continue
        ipib_hdr_size, comps = found
        for args in range(ipib - ARGS_SIZE, ipib - PAGE, -8):
            hdr_offs, hdr_size, ipib_offs = (_u64(data, args + 8 * i) for i in range(3))
            if args + ipib_offs == ipib and hdr_size == ipib_hdr_size:
                return _checked(data, source, args, args + hdr_offs, hdr_size, ipib, comps)
    raise UsageError(
        f"{source}: no IPL parameter block of type PV (5) with stage3a arguments pointing at "
        "it: not an SE image made by pvimg/genprotimg"
    )


def _checked(
    data: bytes, source: str, args: int, hdr: int, hdr_size: int, ipib: int,
    comps: tuple[Component, ...],
) -> SeImage:  # fmt: skip
    if not 0 < hdr_size <= len(data) - hdr or hdr < 0:
        raise UsageError(f"{source}: SE header at {hdr:#x} (+{hdr_size}) is outside the image")
    if _u64(data, hdr) != PV_MAGIC:
        raise UsageError(f"{source}: no SE header magic 'IBMSecEx' at {hdr:#x}")
    for prev, comp in zip(comps, comps[1:]):
        if comp.tweak <= prev.tweak:
            raise UsageError(f"{source}: component tweak prefixes do not grow")
    for comp in comps:
        if comp.addr % PAGE or comp.addr + comp.size > len(data) + PAGE:
            raise UsageError(
                f"{source}: component at {comp.addr:#x} (+{comp.size:#x}) is not in the image"
            )
    synthetic = data[hdr + 16 : hdr + 28] == SYNTHETIC_IV
    return SeImage(data, args, hdr, hdr_size, ipib, comps, synthetic, source)


def load(path: Path) -> SeImage:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read SE image {path}: {err.strerror}") from None
    return parse(data, str(path))


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

    pld hashes the page contents, ald the page addresses (big-endian u64),
    tld per page the tweak prefix and the page's offset in its component
    (the two halves of the UNPACK tweak, ``kvm_s390_pv_unpack``).  One C-level
    hash update per part; the per-page words are built as arrays.
    """
    pld, ald, tld = hashlib.sha512(), hashlib.sha512(), hashlib.sha512()
    for content, addr, tweak in parts:
        n = len(content) // PAGE
        pld.update(content)
        ald.update(_be_words(range(addr, addr + n * PAGE, PAGE)))
        offsets = array.array("Q", range(0, n * PAGE, PAGE))
        pairs = array.array("Q", [tweak]) * (2 * n)
        pairs[1::2] = offsets
        if sys.byteorder != "big":
            pairs.byteswap()
        tld.update(pairs.tobytes())
    return pld.digest(), ald.digest(), tld.digest()


def synthetic_header_fields(header: bytes) -> Optional[SyntheticHeader]:
    """The simulated UV's view of a header: None unless it is a synthetic one."""
    if len(header) < SYNTHETIC_HEADER_SIZE or header[16:28] != SYNTHETIC_IV:
        return None
    head = _HEAD.unpack_from(header)
    if head[0] != PV_MAGIC:
        return None
    psw = (_u64(header, _PSW_OFFSET), _u64(header, _PSW_OFFSET + 8))
    return SyntheticHeader(pages=head[7], pld=head[10], ald=head[11], tld=head[12], psw=psw)


def synthetic_image(payload: bytes, entry_psw_mask: int) -> bytes:
    """An SE image with genprotimg's layout and a synthetic header (see the module doc).

    Components: the payload (position independent: it runs where it was
    unpacked) and one page of zeros standing for an empty command line.  The
    header's initial PSW starts the payload; the stand-in for stage3a, never
    run by kvmpv, is a disabled wait.
    """
    code_pages = -(-len(payload) // PAGE)
    comp_addrs = (COMPONENTS_OFFSET, COMPONENTS_OFFSET + code_pages * PAGE)
    comp_sizes = (code_pages * PAGE, PAGE)
    image = bytearray(comp_addrs[1] + PAGE)
    # IPL PSW (short format) to stage3a, the branch at 0x10000 to it (brcl 15,+0x1000)
    image[0:8] = (0x0008000080000000 | STAGE3A_ENTRY).to_bytes(8, "big")
    image[0x10000:0x10006] = bytes.fromhex("c0f400000800")
    # stage3a stand-in: "larl %r1,psw; lpswe 0(%r1)", nopr fill, then a disabled-wait PSW
    # at 0x5a3 (unprotected under QEMU it ends as a guest panic, never as the payload's
    # shutdown: a synthetic image boots only through kvmpv's host-side protected boot)
    image[STAGE3A_ENTRY : STAGE3A_ENTRY + 32] = bytes.fromhex(
        "c01000000008b2b21000070707070707"  # larl, lpswe, nopr x3
        "0002000180000000"
        "00000000000005a3"  # the PSW: disabled wait, 64-bit, 0x5a3
    )
    image[comp_addrs[0] : comp_addrs[0] + len(payload)] = payload
    # IPIB
    num = len(comp_addrs)
    blk_len = 0x88 + 24 * num
    ipib = IPIB_OFFSET
    image[ipib : ipib + 4] = PAGE.to_bytes(4, "big")
    image[ipib + 7] = 1  # IPL_PARM_BLOCK_VERSION
    image[ipib + 8 : ipib + 12] = (blk_len - 8).to_bytes(4, "big")
    image[ipib + 0x0C] = IPL_TYPE_PV
    image[ipib + 0x74 : ipib + 0x78] = num.to_bytes(4, "big")
    image[ipib + 0x80 : ipib + 0x88] = SYNTHETIC_HEADER_SIZE.to_bytes(8, "big")
    for i, (addr, size, tweak) in enumerate(zip(comp_addrs, comp_sizes, SYNTHETIC_TWEAKS)):
        c = ipib + 0x88 + 24 * i
        image[c : c + 24] = struct.pack(">QQQ", tweak, addr, size)
    # stage3a arguments, relative to their own address
    args = IPIB_OFFSET - ARGS_SIZE
    image[args : args + ARGS_SIZE] = struct.pack(
        ">QQQ", HEADER_OFFSET - args, SYNTHETIC_HEADER_SIZE, IPIB_OFFSET - args
    )
    # the header
    parts = [
        (bytes(image[a : a + s]), a, t) for a, s, t in zip(comp_addrs, comp_sizes, SYNTHETIC_TWEAKS)
    ]
    pld, ald, tld = page_digests(parts)
    head = _HEAD.pack(
        PV_MAGIC, PV_VERSION_1, SYNTHETIC_HEADER_SIZE, SYNTHETIC_IV, 0, 0, 0,
        sum(s for s in comp_sizes) // PAGE, PV_PCF_NO_DECRYPTION, bytes(160), pld, ald, tld,
    )  # fmt: skip
    hdr = bytearray(SYNTHETIC_HEADER_SIZE)
    hdr[: len(head)] = head
    hdr[_PSW_OFFSET : _PSW_OFFSET + 16] = struct.pack(">QQ", entry_psw_mask, comp_addrs[0])
    image[HEADER_OFFSET : HEADER_OFFSET + len(hdr)] = hdr
    return bytes(image)


__all__ = [
    "Component",
    "SeImage",
    "SyntheticHeader",
    "load",
    "page_digests",
    "parse",
    "synthetic_header_fields",
    "synthetic_image",
]
