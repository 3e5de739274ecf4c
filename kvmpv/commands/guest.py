# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv guest: write kvmpv's s390x payload as a bootable image.

The payload stores each 4 KiB page's own guest address (big-endian, the
first 8 bytes of the page) into every page above its image, finding the end
of memory by itself (the host never writes into a protected guest), then
stops with a disabled wait at 0xfff.  The image has the layout of an s390
kernel image (IPL PSW at 0, code at 0x10000), so

  qemu-system-s390x -kernel FILE            boots it (TCG: the run ends as a
                                            guest shutdown), and
  pvimg create -i FILE -k HKD.crt ... -o SE  makes it a Secure Execution image.

On KVM the end is KVM_EXIT_S390_SIEIC with icptcode 0x1c.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import s390guest
from ..errors import EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch",
        required=True,
        choices=["s390x"],
        help="the payload's architecture (the x86 guest is built in memory, not as an image)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the image")


def run(args: argparse.Namespace) -> int:
    size = s390guest.write_image(Path(args.out))
    print(
        f"kvmpv guest: s390x payload, {size} bytes, entry {s390guest.ENTRY:#x}, writes pages "
        f"from {s390guest.FIRST_PAGE:#x} up -> {args.out}",
        file=sys.stdout,
    )
    return EXIT_OK
