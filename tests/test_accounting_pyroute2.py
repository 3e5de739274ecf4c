# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv's own taskstats decoder and family lookup against pyroute2's.

kvmpv speaks netlink itself (``kvmpv/accounting/netlink.py`` says why), so
pyroute2 -- the usual Python choice -- is only a test dependency here: a
second, independent reading of ``struct taskstats`` and of the generic
netlink family table.  Where both decode a field they must agree; where
pyroute2 stops (it reads versions other than 15 only up to
``cpu_scaled_run_real_total``), kvmpv's extra fields are the v16/v17 tail.
"""

from __future__ import annotations

import os
import random
import struct
from typing import Any

import pytest
from conftest import needs_root

from kvmpv.accounting import AccountingUnavailable, TaskStatsClient
from kvmpv.accounting import taskstats as ts

prts = pytest.importorskip(
    "pyroute2.netlink.taskstats", reason="pyroute2 (a test dependency) is not installed"
)

#: the attribute type pyroute2's decoder expects around the payload
TASKSTATS_TYPE_STATS = 3


def pyroute2_decode(payload: bytes) -> dict[str, Any]:
    """pyroute2's reading of a ``struct taskstats`` payload (its own layout pick)."""
    data = struct.pack("=HH", len(payload) + 4, TASKSTATS_TYPE_STATS) + payload
    cls = prts.TStatsBase.versioned_stats(prts.TStatsBase, data=data, offset=0)
    msg = cls(data=data, offset=0)
    msg.decode()
    out = {k: msg[k] for k in msg.keys() if not k.startswith("__")}
    comm = out.get("ac_comm")
    if isinstance(comm, bytes):  # its comm clean-up is shadowed by nla_struct.decode
        out["ac_comm"] = comm.split(b"\0", 1)[0].decode("utf-8", "replace")
    return out


def compare(payload: bytes) -> tuple[int, list[str]]:
    """(fields both decode, kvmpv's fields pyroute2 does not); asserts agreement."""
    ours = ts.decode_taskstats(payload)
    theirs = pyroute2_decode(payload)
    both = sorted(set(ours) & set(theirs))
    differ = {k: (ours[k], theirs[k]) for k in both if ours[k] != theirs[k]}
    assert not differ, f"decoders disagree: {differ}"
    assert not set(theirs) - set(ours), f"pyroute2 decodes fields kvmpv does not: {theirs}"
    return len(both), sorted(set(ours) - set(theirs))


@pytest.mark.parametrize("version", [8, 14, 15, 16, 17])
def test_decoders_agree_on_every_layout(version: int) -> None:
    # Random bytes under a version header: every offset both decoders know is
    # checked, whatever the kernel at hand speaks.  560 bytes: a v16 record.
    rng = random.Random(version)
    for _ in range(20):
        body = bytearray(rng.getrandbits(8) for _ in range(600))
        struct.pack_into("=H", body, 0, version)
        body[112 - 32 : 112] = b"kvmpv-comm".ljust(32, b"\0")  # a printable ac_comm
        n, extra = compare(bytes(body))
        assert n >= 40, n  # at least the fields every version has
    if version in (16, 17):
        # pyroute2 stops at cpu_scaled_run_real_total; the rest is kvmpv's
        assert "cpu_delay_max" in extra and "irq_delay_total" in extra
    if version == 15:
        assert extra == [] or all(k.endswith("_ts") for k in extra)


def _live_payload(pid: int) -> bytes:
    seen: list[bytes] = []
    real = ts.decode_taskstats

    def spy(payload: bytes) -> dict[str, Any]:
        seen.append(payload)
        return real(payload)

    ts.decode_taskstats = spy  # parse_taskstats_message looks it up at call time
    try:
        with TaskStatsClient() as client:
            client.thread(pid)
    finally:
        ts.decode_taskstats = real
    assert seen
    return seen[0]


@needs_root
def test_decoders_agree_on_this_kernels_record() -> None:
    try:
        payload = _live_payload(os.getpid())
    except AccountingUnavailable as exc:
        pytest.skip(f"taskstats unavailable: {exc.reason}")
    (version,) = struct.unpack_from("=H", payload, 0)
    n, extra = compare(payload)
    print(f"\ntaskstats v{version}, {len(payload)} bytes: {n} fields agree; kvmpv alone: {extra}")
    assert ts.decode_taskstats(payload)["ac_pid"] == os.getpid()


def test_both_resolve_the_same_family_id() -> None:
    try:
        with TaskStatsClient() as client:
            ours = client.family_id
    except AccountingUnavailable as exc:
        pytest.skip(f"taskstats unavailable: {exc.reason}")
    theirs = prts.TaskStats()
    try:
        theirs.bind()
        assert ours == theirs.prid
    finally:
        theirs.close()
