# SPDX-License-Identifier: GPL-2.0-only
"""Reboot a protected (Secure Execution) VM K times, async vs sync teardown.

Async: KVM_PV_ASYNC_CLEANUP_PREPARE, then KVM_PV_ASYNC_CLEANUP_PERFORM on a
thread named async_cleanup while the new guest already runs (Linux 6.2+, QEMU
8.0+).  Sync: KVM_PV_DISABLE.  Per cycle: reboot latency, PERFORM duration,
how long the new guest ran during PERFORM, the teardown CPU time, and whether
that CPU was charged to the VM's cgroup.  "auto" uses the real /dev/kvm where
kvmpv probe says PV async destroy is usable, otherwise the simulated s390x
kernel; every line and the JSON say which ("[sim]", "backend": "sim").
"""

from __future__ import annotations

import argparse
import json
import sys

from ..report.cases import ensure_writable, write_text
from ..scenarios.reboot import (
    BACKENDS,
    CHARGE_TO,
    MODES,
    RebootRequest,
    RebootResult,
    run_reboot,
)
from ..units import parse_size
from ._options import add_cgroup_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="real /dev/kvm, simulator, or auto"
    )
    parser.add_argument("--memory", default="4G", help="guest RAM, e.g. 4G (default 4G)")
    parser.add_argument("--vcpus", type=int, default=1, help="vCPUs (default 1)")
    parser.add_argument(
        "--cycles", type=int, default=3, help="reboots per mode (default 3; 'both' does 2x)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="reboots per mode before the measured cycles, reported as warm-up and left out "
        "of the medians (default 0; the first reboot after boot is slower whatever its mode)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="both",
        help="async (PREPARE+PERFORM), sync (DISABLE), or both interleaved (default)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout)")
    add_cgroup_option(parser)
    parser.add_argument(
        "--mem-limit",
        metavar="SIZE",
        help="KVM_S390_VM_MEM_LIMIT_SIZE (default: the RAM size, as QEMU; <= 2G forces sync)",
    )
    # Negative control of the accounting check, for tests and the doubtful:
    # do the teardown work outside the VM's cgroup; the verdict must say so.
    parser.add_argument(
        "--debug-charge-to", choices=CHARGE_TO, default="vm", help=argparse.SUPPRESS
    )
    parser.add_argument("--boot-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--se-image",
        metavar="FILE",
        help="a Secure Execution image (pvimg create) to boot on every cycle, as QEMU does; "
        "on a real PV host without it no guest memory is secure (every output says so). "
        "The simulator boots kvmpv's synthetic image by default",
    )
    parser.add_argument(
        "--no-overlap",
        action="store_true",
        help="keep the new guest paused until PERFORM has finished (measures the cleanup's own "
        "CPU without memory-bandwidth contention from the running guest; overlap is then 0)",
    )


def run(args: argparse.Namespace) -> int:
    req = RebootRequest(
        backend=args.backend,
        memory=parse_size(args.memory),
        vcpus=args.vcpus,
        cycles=args.cycles,
        warmup=args.warmup,
        mode=args.mode,
        mem_limit=parse_size(args.mem_limit) if args.mem_limit else None,
        hierarchy=args.cgroup,
        charge_to=args.debug_charge_to,
        boot_timeout_s=args.boot_timeout,
        guest_during_perform=not args.no_overlap,
        se_image=args.se_image,
    )
    if args.json and args.json != "-":
        ensure_writable(args.json)  # before minutes of measuring, not after

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr if args.json == "-" else sys.stdout, flush=True)

    result = run_reboot(req, progress)
    out = sys.stderr if args.json == "-" else sys.stdout
    label = result.label
    summary = result.summary()
    for mode in ("async", "sync"):
        s = summary.get(mode)
        if not s:
            continue
        perform = f", perform {s['perform_s']:.3f}s" if s["perform_s"] is not None else ""
        overlap = f", overlap {s['overlap_s']:.3f}s" if s["overlap_s"] is not None else ""
        print(
            f"{label} {mode:5s} median of {s['cycles']}: latency {s['reboot_latency_s']:.3f}s"
            f"{perform}{overlap}, cleanup cpu {s['cleanup_cpu_s']:.3f}s, "
            f"verdicts {','.join(s['verdicts'])}",
            file=out,
        )
    if "async_over_sync_latency" in summary:
        print(
            f"{label} async/sync latency {summary['async_over_sync_latency']:.3f}, "
            f"cleanup cpu async/sync {summary.get('async_over_sync_cleanup_cpu', 0):.3f}",
            file=out,
        )
    acct = result.accounting
    if acct and not acct.get("usable"):
        print(f"{label} accounting verdict SKIP: {acct.get('reason')}", file=out)
    for failure in result.failures:
        print(f"{label} FAIL {failure}", file=out)
    _write_json(args, result)
    return result.exit_code


def _write_json(args: argparse.Namespace, result: RebootResult) -> None:
    if not args.json:
        return
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    if args.json == "-":
        print(text, end="")
    else:
        write_text(args.json, text)


def on_interrupt(args: argparse.Namespace, exc: BaseException) -> None:
    """SIGINT/SIGTERM: --json still gets the cycles that finished, ``"interrupted": N``."""
    partial = getattr(exc, "reboot_result", None)
    if partial is not None:
        _write_json(args, partial)
