# SPDX-License-Identifier: GPL-2.0-only
"""Helpers for the uapi header fixtures (``fixtures/uapi/<arch>.json``).

Loads the fixtures made by ``fixtures/uapi/regen.sh`` from the Linux 6.12
headers, and fills/reads ctypes structures from the nested value dicts the
fixtures record next to their golden bytes.  Reads files only.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from kvmpv import uapi

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "uapi"
ARCHES = ("x86_64", "s390x")


@cache
def load(arch: str) -> dict[str, Any]:
    with open(FIXTURE_DIR / f"{arch}.json") as f:
        doc: dict[str, Any] = json.load(f)
    assert doc["arch"] == arch
    return doc


def le_struct(struct: type[Any]) -> type[Any]:
    """Little-endian twin (the mirror of ``uapi.be_struct``), for big-endian hosts."""
    return uapi.endian_struct(struct, "little")


def layout_for(struct: type[Any], byteorder: str) -> type[Any]:
    """The class that lays ``struct`` out in ``byteorder``: the native class
    itself when the host has that byte order, else its swapped twin."""
    if byteorder == sys.byteorder:
        return struct
    return uapi.be_struct(struct) if byteorder == "big" else le_struct(struct)


def fill(obj: Any, values: dict[str, Any]) -> None:
    """Set fields of a ctypes structure from a nested dict/list of ints."""
    for name, value in values.items():
        if isinstance(value, dict):
            fill(getattr(obj, name), value)
        elif isinstance(value, list):
            arr = getattr(obj, name)
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    fill(arr[i], item)
                else:
                    arr[i] = item
        else:
            setattr(obj, name, value)


def read(obj: Any, like: dict[str, Any]) -> dict[str, Any]:
    """Read back the fields named in ``like`` (same shape)."""
    out: dict[str, Any] = {}
    for name, value in like.items():
        if isinstance(value, dict):
            out[name] = read(getattr(obj, name), value)
        elif isinstance(value, list):
            arr = getattr(obj, name)
            out[name] = [
                read(arr[i], item) if isinstance(item, dict) else int(arr[i])
                for i, item in enumerate(value)
            ]
        else:
            out[name] = int(getattr(obj, name))
    return out


def flat_offsets(struct: type[Any]) -> dict[str, int]:
    """Field offsets as C's ``offsetof`` sees them: anonymous unions flattened.

    (``uapi.field_offsets`` reports the anonymous member itself, e.g. ``u``.)
    """
    out: dict[str, int] = {}
    anonymous = set(getattr(struct, "_anonymous_", ()))
    for field in struct._fields_:
        name = field[0]
        if name in anonymous:
            for sub in field[1]._fields_:
                out[sub[0]] = getattr(struct, sub[0]).offset
        else:
            out[name] = getattr(struct, name).offset
    return out
