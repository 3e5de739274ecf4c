# SPDX-License-Identifier: GPL-2.0-only
"""Options several subcommands share, spelled and explained once."""

from __future__ import annotations

import argparse

from ..accounting import HIERARCHY_CHOICES


def add_cgroup_option(parser: argparse.ArgumentParser, *, old_name: str = "") -> None:
    """``--cgroup auto|v1|v2``: the hierarchy every accounting verdict uses.

    ``old_name`` keeps a former spelling working, hidden from ``--help``.
    """
    parser.add_argument(
        "--cgroup",
        choices=HIERARCHY_CHOICES,
        default="auto",
        help="cgroup hierarchy for the accounting verdicts: auto (v2 on cgroup2-only hosts, "
        "v1 on hybrid ones; the environment variable KVMPV_CGROUP overrides it), v1 or v2 "
        "(default: %(default)s)",
    )
    if old_name:
        parser.add_argument(
            old_name, dest="cgroup", choices=HIERARCHY_CHOICES, help=argparse.SUPPRESS
        )


def add_kcidb_options(parser: argparse.ArgumentParser) -> None:
    """``--kcidb FILE`` and ``--kcidb-origin NAME``: a KCIDB I/O submission of the run."""
    parser.add_argument(
        "--kcidb",
        metavar="FILE",
        help="also write the results as a KCIDB I/O submission (schema v5.3 of the kcidb-io "
        "package: one checkout and build for the running kernel, one test per check and "
        "measurement), for kcidb-submit to send to KernelCI's database (docs/engines.md)",
    )
    parser.add_argument(
        "--kcidb-origin",
        metavar="NAME",
        default="kvmpv",
        help="the KCIDB origin: the submitting CI system's name, which prefixes every id "
        "(lowercase letters, digits and _; KernelCI assigns one per submitter; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--kcidb-build",
        metavar="ID",
        help="attach the KCIDB tests to this existing build (ORIGIN:ID, e.g. the CI system's "
        "build of the kernel under test) instead of a checkout and build of the running kernel",
    )
