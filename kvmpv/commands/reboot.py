# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv reboot: NOT YET BUILT (placeholder while the issue is open)."""

from __future__ import annotations

import argparse

from ..errors import HostError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise HostError("kvmpv reboot is not built yet")
