# SPDX-License-Identifier: GPL-2.0-only
"""Plain-text tables of a results document (``kvmpv report``, ``exercise`` summary).

No colour, no terminal tricks: the same text goes to a terminal, a CI log and
a mail to a kernel list.  Simulated rows say ``sim`` in their backend column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..stats import median, median_of
from ..units import format_size

GB = 1e9


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned text columns separated by two spaces."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def shutdown_table(records: Sequence[dict[str, Any]], with_rate: bool = False) -> str:
    headers = ["strategy", "size", "pages", "exit latency s", "release s"]
    if with_rate:
        headers.append("release GB/s")
    headers += ["teardown cpu s", "charged to worker s", "verdict"]
    rows = []
    for rec in records:
        release = median_of(rec.get("release_s"))
        row: list[Any] = [
            rec.get("strategy"),
            format_size(int(rec.get("size_bytes", 0))),
            "thp" if rec.get("thp") else "4k",
            median_of(rec.get("exit_latency_s")),
            release,
        ]
        if with_rate:
            rate = rec["size_bytes"] / release / GB if release else None
            row.append(rate)
        row += [
            rec.get("teardown_cpu_s"),
            rec.get("charged_to_worker_cgroup_s"),
            rec.get("verdict"),
        ]
        rows.append(row)
    return format_table(headers, rows)


def reboot_table(runs: Sequence[dict[str, Any]]) -> str:
    headers = [
        "backend", "memory", "mode", "cycles", "reboot latency s", "perform s",
        "overlap s", "cleanup cpu s", "verdicts",
    ]  # fmt: skip
    rows = []
    for run in runs:
        for mode in ("async", "sync"):
            cycles = [c for c in run.get("cycles", []) if c.get("mode") == mode]
            if not cycles:
                continue
            rows.append(
                [
                    run.get("backend"),
                    format_size(int(run.get("memory_bytes", 0))),
                    mode,
                    len(cycles),
                    median([c.get("reboot_latency_s") for c in cycles]),
                    median([c.get("perform_s") for c in cycles]),
                    median([c.get("overlap_s") for c in cycles]),
                    median([c.get("cleanup_cpu_s") for c in cycles]),
                    ",".join(sorted({str(c.get("verdict")) for c in cycles})),
                ]
            )
    return format_table(headers, rows) + "\n(median over cycles)"


def reboot_curve_table(runs: Sequence[dict[str, Any]]) -> str:
    """What the reboot plot shows, as numbers: one row per backend and guest size, smallest first.

    Latency and teardown CPU are medians over the measured cycles of each
    mode; ``async/sync`` is the latency ratio (flat async, growing sync: the
    ratio falls as the guest grows).
    """
    headers = [
        "backend", "memory", "async latency s", "sync latency s", "async/sync",
        "async cpu s", "sync cpu s",
    ]  # fmt: skip
    rows = []
    for run in sorted(runs, key=lambda r: (str(r.get("backend")), int(r.get("memory_bytes", 0)))):
        cycles = run.get("cycles", [])
        lat = {m: median([c.get("reboot_latency_s") for c in cycles if c.get("mode") == m])
               for m in ("async", "sync")}  # fmt: skip
        cpu = {m: median([c.get("cleanup_cpu_s") for c in cycles if c.get("mode") == m])
               for m in ("async", "sync")}  # fmt: skip
        a, b = lat["async"], lat["sync"]
        rows.append(
            [
                run.get("backend"),
                format_size(int(run.get("memory_bytes", 0))),
                a, b, a / b if a is not None and b else None, cpu["async"], cpu["sync"],
            ]
        )  # fmt: skip
    return format_table(headers, rows)


def _reboot_heading(runs: Sequence[dict[str, Any]], what: str) -> str:
    simulated = any(r.get("backend") == "sim" or r.get("simulated") for r in runs)
    return f"{what} (sim = SIMULATED s390x kernel):" if simulated else f"{what}:"


def check_summary(check: dict[str, Any]) -> str:
    counts: dict[tuple[str, str], int] = {}
    for res in check.get("results", []):
        key = (str(res.get("backend")), str(res.get("status")))
        counts[key] = counts.get(key, 0) + 1
    rows = []
    for backend in sorted({b for b, _ in counts}):
        rows.append(
            [backend] + [counts.get((backend, s), 0) for s in ("pass", "fail", "skip", "error")]
        )
    return format_table(["backend", "pass", "fail", "skip", "error"], rows)


def extrapolation_table(rows: Sequence[dict[str, Any]]) -> str:
    body = [
        [r.get("strategy"), "thp" if r.get("thp") else "4k", format_size(int(r["size_bytes"])),
         r.get("release_s")]
        for r in rows
    ]  # fmt: skip
    return format_table(["strategy", "pages", "size", "release s (EXTRAPOLATED)"], body)


def render(doc: dict[str, Any]) -> str:
    """The whole document as text sections."""
    host = doc.get("host", {})
    out = [
        f"kvmpv {doc.get('kvmpv_version')} results of {doc.get('created')} on "
        f"{host.get('arch')} {host.get('kernel_release')}"
    ]
    if doc.get("check"):
        out += ["", "Checks (sim = simulated s390x kernel, kvm = this host's kernel):"]
        out.append(check_summary(doc["check"]))
    if doc.get("reboot"):
        runs = doc["reboot"]
        out += ["", _reboot_heading(runs, "Protected-VM reboot"), reboot_table(runs)]
        out += ["", _reboot_heading(runs, "Reboot curve by guest memory, as in reboot.png")]
        out.append(reboot_curve_table(runs))
    shutdown = (doc.get("shutdown") or {}).get("records")
    if shutdown:
        out += ["", "Process-exit teardown (median over repeats):", shutdown_table(shutdown)]
    bench = doc.get("bench") or {}
    if bench.get("teardown"):
        out += ["", "Teardown table (median over repeats):"]
        out.append(shutdown_table(bench["teardown"], with_rate=True))
    if bench.get("extrapolation"):
        out += ["", "Extrapolated from the measured rate (NOT measured):"]
        out.append(extrapolation_table(bench["extrapolation"]))
    if bench.get("reboot_curve"):
        runs = bench["reboot_curve"]
        out += ["", _reboot_heading(runs, "Reboot latency curve"), reboot_table(runs)]
        out += ["", _reboot_heading(runs, "Reboot curve by guest memory, as in reboot.png")]
        out.append(reboot_curve_table(runs))
    for skip in doc.get("skipped", []):
        out.append(f"SKIP {skip['step']}: {skip['reason']}")
    return "\n".join(out)
