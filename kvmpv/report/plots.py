# SPDX-License-Identifier: GPL-2.0-only
"""PNG plots of a results document (optional extra: ``pip install .[plot]``).

matplotlib is imported lazily with the Agg backend: kvmpv never needs a
display, and hosts without the extra get a clear ``HostError`` from the plot
step instead of an ImportError at start-up.

Each series has a fixed colour from ``PALETTE`` and the plot functions return
a ``PlotInfo`` naming the series drawn with their colours, so tests can check
the PNG itself (every series colour present in its pixels), not only the
figure object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import HostError
from ..stats import median_of

PALETTE = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
]  # fmt: skip
GiB = float(1 << 30)


@dataclass(frozen=True)
class PlotInfo:
    path: str
    title: str
    xlabel: str
    ylabel: str
    series: list[tuple[str, str]] = field(default_factory=list)  # (label, colour)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise HostError(
            "plots need matplotlib: pip install 'kvmpv[plot]' (or pass no --plot)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def teardown_records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    bench = doc.get("bench") or {}
    records = list(bench.get("teardown") or [])
    return records or list((doc.get("shutdown") or {}).get("records") or [])


def plot_teardown(doc: dict[str, Any], path: str) -> PlotInfo:
    """Exit latency and release time vs size, one series per strategy and page size."""
    records = teardown_records(doc)
    if not records:
        raise HostError("no teardown measurements in the results file to plot")
    plt = _pyplot()
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((str(rec["strategy"]), bool(rec["thp"])), []).append(rec)
    fig, (ax_exit, ax_rel) = plt.subplots(1, 2, figsize=(11, 4.5))
    series = []
    for i, ((strategy, thp), recs) in enumerate(sorted(groups.items())):
        recs.sort(key=lambda r: int(r["size_bytes"]))
        label = f"{strategy} {'THP' if thp else '4 KiB'}"
        colour = PALETTE[i % len(PALETTE)]
        xs = [int(r["size_bytes"]) / GiB for r in recs]
        style = "--" if thp else "-"
        for ax, key in ((ax_exit, "exit_latency_s"), (ax_rel, "release_s")):
            pts = [(x, median_of(r.get(key))) for x, r in zip(xs, recs)]
            pts_ok = [(x, y) for x, y in pts if y is not None]
            if pts_ok:
                ax.plot(*zip(*pts_ok), style, marker="o", color=colour, label=label, linewidth=2)
        series.append((label, colour))
    title = "Process-exit teardown by size"
    ax_exit.set_title("exit latency seen by the waiter")
    # Exit latencies span 0.1 ms (cleaner) to seconds (sync): only a log
    # axis shows both; zero values (none measured) are simply not drawn.
    ax_exit.set_yscale("log")
    ax_rel.set_title("time until the memory is freed")
    for ax in (ax_exit, ax_rel):
        ax.set_xlabel("process size (GiB)")
        ax.set_ylabel("seconds (median)")
        ax.grid(True, alpha=0.3)
    ax_rel.legend(fontsize=8)
    host = doc.get("host", {})
    fig.suptitle(f"{title} -- {host.get('arch')} {host.get('kernel_release')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return PlotInfo(path, title, "process size (GiB)", "seconds (median)", series)


def reboot_runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    bench = doc.get("bench") or {}
    return list(bench.get("reboot_curve") or doc.get("reboot") or [])


def plot_reboot(doc: dict[str, Any], path: str) -> PlotInfo:
    """Reboot latency vs guest memory, async vs sync (labelled sim when simulated)."""
    runs = reboot_runs(doc)
    if not runs:
        raise HostError("no reboot measurements in the results file to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = []
    backends = sorted({str(r.get("backend")) for r in runs})
    for i, (backend, mode) in enumerate((b, m) for b in backends for m in ("async", "sync")):
        pts = []
        for run in runs:
            if str(run.get("backend")) != backend:
                continue
            lat = sorted(
                float(c["reboot_latency_s"]) for c in run["cycles"] if c.get("mode") == mode
            )
            if lat:
                pts.append((int(run["memory_bytes"]) / GiB, lat[len(lat) // 2]))
        if not pts:
            continue
        pts.sort()
        label = f"{mode} ({'simulated s390x kernel' if backend == 'sim' else backend})"
        colour = PALETTE[i % len(PALETTE)]
        ax.plot(*zip(*pts), "-", marker="o", color=colour, label=label, linewidth=2)
        series.append((label, colour))
    title = "Protected-VM reboot latency, async vs sync"
    if "sim" in backends:
        title += " [SIMULATED]"
    ax.set_title(title)
    ax.set_xlabel("guest memory (GiB)")
    ax.set_ylabel("reboot latency (s, median)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return PlotInfo(path, title, "guest memory (GiB)", "reboot latency (s, median)", series)


def plot_all(doc: dict[str, Any], prefix: str) -> tuple[list[PlotInfo], list[str]]:
    """Every plot the document has data for: (plots written, reasons for the ones not)."""
    done: list[PlotInfo] = []
    missing: list[str] = []
    if teardown_records(doc):
        done.append(plot_teardown(doc, f"{prefix}teardown.png"))
    else:
        missing.append("teardown plot: no teardown measurements")
    if reboot_runs(doc):
        done.append(plot_reboot(doc, f"{prefix}reboot.png"))
    else:
        missing.append("reboot plot: no reboot measurements")
    return done, missing


def plot_and_list(doc: dict[str, Any], prefix: str) -> list[str]:
    """``plot_all`` plus one printable line per plot written or skipped."""
    done, missing = plot_all(doc, prefix)
    lines = [f"plot: {p.path} ({', '.join(label for label, _ in p.series)})" for p in done]
    return lines + [f"plot: SKIP {reason}" for reason in missing]


__all__: Sequence[str] = (
    "PALETTE", "PlotInfo", "plot_all", "plot_and_list", "plot_reboot", "plot_teardown",
)  # fmt: skip
