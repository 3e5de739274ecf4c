# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv probe: what this host supports, and which kvmpv scenarios can run here for real.

Reads procfs/sysfs and asks /dev/kvm (API version, KVM_CHECK_EXTENSION of the
s390 PV capabilities 180/217/224) and creates and closes one throwaway VM: on
s390x a process without PGSTE page tables gets EINVAL for every VM, and then
"KVM usable" is no, whatever the caps say.  --root reads another
tree instead (the synthetic s390x trees in fixtures/sysfs/); what files
cannot say about such a tree (the KVM answers) is "not probed" unless given
with --inject-kvm, and is then labelled "injected".  The device node is
/dev/kvm, or $KVMPV_KVM_DEV.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import seimage
from ..errors import EXIT_OK, HostError, UsageError
from ..scenarios.probe import KvmFacts, format_table, probe_host
from ..units import parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the probe as JSON")
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="read procfs/sysfs below DIR instead of / (e.g. fixtures/sysfs/s390x-pv-async-fast)",
    )
    parser.add_argument(
        "--inject-kvm",
        metavar="SPEC",
        help="KVM answers to use instead of asking the device, labelled 'injected' "
        "(e.g. api=12,180=1,217=1,224=1); for synthetic trees",
    )
    parser.add_argument(
        "--run-guest",
        metavar="SIZE",
        help="also run kvmpv's tiny real guest (x86_64, or the s390x payload) over SIZE "
        "of memory (e.g. 64M) and check its writes",
    )
    parser.add_argument(
        "--se-image",
        metavar="FILE",
        help="with --run-guest on a Secure Execution host: boot this SE image (pvimg create) "
        "protected instead, as QEMU does, and report its boot steps",
    )
    parser.add_argument(
        "--require",
        choices=("kvm", "pv-async"),
        action="append",
        default=[],
        help="exit 3 with the reason unless this is usable here (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    guest_size = parse_size(args.run_guest) if args.run_guest is not None else None
    kvm = KvmFacts.parse_injection(args.inject_kvm) if args.inject_kvm is not None else None
    if args.se_image and guest_size is None:
        raise UsageError("--se-image goes with --run-guest SIZE")
    image = seimage.load(Path(args.se_image)) if args.se_image else None
    probe = probe_host(args.root, kvm=kvm, guest_size=guest_size, se_image=image)
    if args.json:
        json.dump(probe.to_dict(), sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        print(format_table(probe))
    if "kvm" in args.require and not probe.kvm_usable:
        raise HostError(f"KVM required but not usable: {probe.kvm_reason}")
    if "pv-async" in args.require and not probe.pv_async_usable:
        raise HostError(f"PV async destroy required but not usable: {probe.pv_reason}")
    return EXIT_OK
