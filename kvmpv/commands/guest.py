# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv guest: write kvmpv's s390x payload as a bootable image.

The payload stores each 4 KiB page's own guest address (big-endian, the
first 8 bytes of the page) into every page above its image, finding the end
of memory by itself (the host never writes into a protected guest), then
stops with a disabled wait at 0xfff.  The image has the layout of an s390
Linux kernel image (IPL PSW at 0, a jump at 0x10000, "S390EP" at 0x10008, the
parameter area 0x10400-0x10800 left free, code from 0x10800), so

  qemu-system-s390x -kernel FILE            boots it (TCG: the run ends as a
                                            guest shutdown), and
  pvimg create -i FILE -k HKD.crt ... -o SE  makes it a Secure Execution image.

On KVM the end is KVM_EXIT_S390_SIEIC with icptcode 0x1c.

pvimg accepts it as its kernel ("S390EP" at 0x10008, a u64 at 0x10430:
s390-tools rust/pvimg/src/se_img_comps/kernel.rs).

--se-image --host-key-document CRT (repeatable) writes a Secure Execution image
around the payload instead, built by kvmpv with pvimg's layout and cryptography
(a key slot per host-key document, the encrypted header part, AES-XTS pages;
docs/secure-execution.md).  The certificate must hold an EC P-521 public key; its
chain is NOT checked (no CA certificates, no CRLs): use it for tests, and make
production images with pvimg create, which verifies the host-key document.

--se-synthetic writes such an image for the simulated machine's FAKE host key
(always the same bytes): the simulator boots it, a real host refuses it (rc 0x108
rrc 0x05).  'kvmpv image info FILE' shows what an image holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import s390guest, seimage
from ..errors import EXIT_OK, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch",
        required=True,
        choices=["s390x"],
        help="the payload's architecture (the x86 guest is built in memory, not as an image)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the image")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--se-image",
        action="store_true",
        help="write an SE image around the payload for the --host-key-document(s) "
        "(their chain is not checked; production images come from pvimg create)",
    )
    kind.add_argument(
        "--se-synthetic",
        action="store_true",
        help="write an SE image for the simulator's FAKE host key (for the simulator only)",
    )
    parser.add_argument(
        "--host-key-document",
        action="append",
        default=[],
        metavar="CRT",
        help="host-key document (X.509, PEM or DER, EC P-521) of a machine the --se-image "
        "may boot on; repeat for several",
    )


def load_host_key(path: str) -> Any:
    """The EC P-521 public key of a host-key document (no chain or CRL check)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    data = seimage.read_file(Path(path), "host-key document")
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_certificate(data)
        )
    except ValueError:  # the ASN.1 parser's text is no help on one line
        raise UsageError(
            f"host-key document {path}: not an X.509 certificate (PEM or DER)"
        ) from None
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp521r1":
        raise UsageError(f"host-key document {path}: its public key is not EC P-521 (secp521r1)")
    return key


def run(args: argparse.Namespace) -> int:
    if args.host_key_document and not args.se_image:
        raise UsageError("--host-key-document needs --se-image")
    if args.se_image and not args.host_key_document:
        raise UsageError("--se-image needs at least one --host-key-document")
    if args.se_synthetic or args.se_image:
        if args.se_synthetic:
            data = seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64)
        else:
            hosts = [load_host_key(p) for p in args.host_key_document]
            data = seimage.se_image(s390guest.CODE, s390guest.PSW_MASK_64, hosts)
        image = seimage.parse(data, args.out)
        try:
            Path(args.out).write_bytes(data)
        except OSError as err:
            raise UsageError(f"cannot write {args.out}: {err.strerror}") from None
        if args.se_synthetic:
            where = "the simulator boots it, a real host refuses it"
        else:
            where = f"key slots for {len(args.host_key_document)} host-key document(s)"
            if image.synthetic:
                where += ", one the simulator's FAKE host key"
        print(f"kvmpv guest: {image.label}; {where}")
        return EXIT_OK
    size = s390guest.write_image(Path(args.out))
    print(
        f"kvmpv guest: s390x payload, {size} bytes, entry {s390guest.ENTRY:#x}, writes pages "
        f"from {s390guest.FIRST_PAGE:#x} up -> {args.out}",
        file=sys.stdout,
    )
    return EXIT_OK
