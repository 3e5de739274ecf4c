# SPDX-License-Identifier: GPL-2.0-only
"""Shared test fixtures: what the host offers, and leftovers after the suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kvmpv.errors import KvmpvError
from kvmpv.kvm import Kvm


def _kvm_unavailable_reason() -> str:
    try:
        with Kvm():
            return ""
    except KvmpvError as err:
        return str(err)


KVM_UNAVAILABLE = _kvm_unavailable_reason()
IS_ROOT = os.geteuid() == 0

needs_kvm = pytest.mark.skipif(bool(KVM_UNAVAILABLE), reason=f"no usable /dev/kvm: {KVM_UNAVAILABLE}")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (cgroups, taskstats)")


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    if KVM_UNAVAILABLE:
        pytest.skip(f"no usable /dev/kvm: {KVM_UNAVAILABLE}")
    with Kvm() as handle:
        yield handle


def mem_available() -> int:
    """MemAvailable in bytes (size test memory to it)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0
