# SPDX-License-Identifier: GPL-2.0-only
"""Size strings ("4G", "512M", "1T", "4096") and their display."""

from __future__ import annotations

import re

from .errors import UsageError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_SUFFIX = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes for a size string with binary suffixes: ``4G`` = ``4GiB`` = 4 * 2**30."""
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(
            f"invalid size {text!r}: use a number with an optional K, M, G or T suffix"
        )
    number, suffix = match.groups()
    value = float(number) * _SUFFIX[suffix.upper()]
    if value != int(value) or value <= 0:
        raise UsageError(f"invalid size {text!r}: must be a positive whole number of bytes")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    """A comma-separated list of sizes, e.g. ``1G,2G,4G``."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError(f"invalid size list {text!r}")
    return [parse_size(p) for p in parts]


def format_size(n: int) -> str:
    """Shortest exact binary form: 4294967296 -> ``4G``, 1536 MiB -> ``1536M``."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SUFFIX[suffix]
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)
