# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv image info: what an SE image or SE header says, as ``pvimg info`` shows it.

FILE is a whole Secure Execution image (pvimg's layout, with its metadata at
0xc000, or genprotimg's older one) or a bare SE header (``pvextract-hdr``'s
output, or a header at a page start in the first 0x15 pages, where
``pvimg info`` looks).  The header is shown encrypted and not verified, as
``pvimg info`` shows it without ``--hdr-key``: kvmpv has no key to open it.

--json writes the document of ``pvimg info --format json`` (s390-tools'
``rust/pvimg/schema/info-v1.schema.json``: ``meta`` and ``data``; ``meta``'s
``version`` names kvmpv, not s390-tools), plus, for a whole image, a
top-level ``components`` list (kind from the tweak prefix, guest address =
file offset, size, tweak prefix), which the schema allows beside ``meta`` and
``data``.  Refused in one line: what is not a regular file, what is larger
than kvmpv reads, what holds no SE header.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import __version__, seimage
from ..errors import EXIT_OK, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser(
        "info",
        help="show an SE image's or SE header's fields (as 'pvimg info')",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("file", metavar="FILE", help="an SE image or a bare SE header")
    info.add_argument(
        "--json",
        action="store_true",
        help="write the JSON document of 'pvimg info --format json' (+ components)",
    )


def info_document(path: Path) -> dict[str, Any]:
    """The ``pvimg info --format json`` document for ``path``, plus ``components``."""
    data = seimage.read_file(path, "SE image or header")
    off = seimage.find_header(data)
    if off is None:
        raise UsageError(
            f"{path}: no SE header: looked for metadata 'SeImgLnx' at 0xc000 (pvimg) and for "
            "the magic 'IBMSecEx' at the first 0x15 page starts"
        )
    header = seimage.parse_header(data, str(path), off)
    now = time.time()
    doc: dict[str, Any] = {
        "meta": {
            "api_level": 1,
            "version": f"kvmpv {__version__}",
            "host": socket.gethostname(),
            "time_epoch": int(now),
            "time": datetime.fromtimestamp(now).astimezone().strftime("%Y-%m-%d %H:%M:%S%z"),
        },
        "data": header.info_data(),
    }
    if off != 0:  # a whole image: its IPL block lists the components
        image = seimage.parse(data, str(path))
        doc["components"] = [c.to_dict() for c in image.components]
        doc["layout"] = {
            "kind": image.layout,
            "header_offset": image.header_offset,
            "ipib_offset": image.ipib_offset,
            "synthetic": image.synthetic,
        }
    return doc


def run(args: argparse.Namespace) -> int:
    doc = info_document(Path(args.file))
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return EXIT_OK
    data = doc["data"]
    lines = [f"{args.file}: SE header (V1), encrypted, not verified (kvmpv has no key to open it)"]
    if "layout" in doc:
        lay = doc["layout"]
        kind = "SYNTHETIC image (kvmpv's)" if lay["synthetic"] else "image"
        lines.append(
            f"{kind} in {lay['kind']}'s layout: header at {lay['header_offset']:#x}, "
            f"IPL block at {lay['ipib_offset']:#x}"
        )
    # the labels of pvimg's full text output (SeHdrAadV1/SeHdrDataV1 Display, hdr_v1.rs)
    lines += [
        f"size: {data['sehs']} bytes",
        f"number of key slots: {data['nks']}",
        "key slots:",
        *(f" - phkh: {k['phkh_hex']}" for k in data["keyslots"]),
        f"customer public key:\n  coordinate: {data['cust_pub_key']['coord_hex']}",
        f"number of component pages: {data['nep']}",
        f"components content hash: {data['pld_hex']}",
        f"components address hash: {data['ald_hex']}",
        f"components tweak hash: {data['tld_hex']}",
        f"plaintext control flags: {data['pcf_hex']}",
        f"GCM tag: {data['tag_hex']}",
    ]
    for c in doc.get("components", []):
        lines.append(
            f"component {c['kind']}: address {int(c['addr_hex'], 16):#x}, {c['size']} bytes, "
            f"tweak prefix {c['tweak_hex']}"
        )
    print("\n".join(lines))
    return EXIT_OK
