# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv exercise: NOT YET BUILT (placeholder while the issue is open)."""

from __future__ import annotations

import argparse

from ..errors import HostError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise HostError("kvmpv exercise is not built yet")
