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

--se-synthetic writes a SYNTHETIC Secure Execution image instead: the layout
pvimg makes (metadata at 0xc000, stage3a's arguments, the components, the SE
header, the IPL block of type PV) with the payload as its code component and a
header only kvmpv's simulated Ultravisor accepts (plaintext, with digests it
can recompute at VERIFY).  A real host refuses it; use pvimg with the host's
key document there.  'kvmpv image info FILE' shows what an image holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    parser.add_argument(
        "--se-synthetic",
        action="store_true",
        help="write a SYNTHETIC SE image around the payload (for the simulator, not real hosts)",
    )


def run(args: argparse.Namespace) -> int:
    if args.se_synthetic:
        data = seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64)
        image = seimage.parse(data, args.out)
        try:
            Path(args.out).write_bytes(data)
        except OSError as err:
            raise UsageError(f"cannot write {args.out}: {err.strerror}") from None
        print(f"kvmpv guest: {image.label}; the simulator boots it, a real host refuses it")
        return EXIT_OK
    size = s390guest.write_image(Path(args.out))
    print(
        f"kvmpv guest: s390x payload, {size} bytes, entry {s390guest.ENTRY:#x}, writes pages "
        f"from {s390guest.FIRST_PAGE:#x} up -> {args.out}",
        file=sys.stdout,
    )
    return EXIT_OK
