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
