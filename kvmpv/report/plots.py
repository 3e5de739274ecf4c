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
from ..stats import median, median_of
from ..units import format_size

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
    """The reboot runs of any results file: ``bench``'s curve, else ``exercise``'s reboots."""
    bench = doc.get("bench") or {}
    return list(bench.get("reboot_curve") or doc.get("reboot") or [])


def _median_by_size(
    runs: Sequence[dict[str, Any]], backend: str, mode: str, key: str
) -> list[tuple[float, float]]:
    """(guest GiB, median of ``key`` over the measured cycles of ``mode``), by size."""
    pts = []
    for run in runs:
        if str(run.get("backend")) != backend:
            continue
        med = median([c.get(key) for c in run.get("cycles") or [] if c.get("mode") == mode])
        if med is not None:
            pts.append((int(run["memory_bytes"]) / GiB, med))
    return sorted(pts)


def plot_reboot(doc: dict[str, Any], path: str) -> PlotInfo:
    """Reboot latency and teardown CPU vs guest memory, async vs sync, from zero.

    The point of async reboot is a flat latency curve: PREPARE destroys only
    the guest pages below 2 GiB (spec 3.3 step 7) while DISABLE destroys all
    of them before the new guest can start.  The CPU panel beside it shows
    that the work moves rather than shrinks (PREPARE + PERFORM against
    DISABLE).  Axes start at zero so the slopes are not exaggerated; results
    of the simulated s390x kernel say SIMULATED in the title and the legend.
    """
    runs = reboot_runs(doc)
    if not runs:
        raise HostError("no reboot measurements in the results file to plot")
    plt = _pyplot()
    fig, (ax_lat, ax_cpu) = plt.subplots(1, 2, figsize=(11, 4.5))
    series = []
    backends = sorted({str(r.get("backend")) for r in runs})
    top = max(int(r["memory_bytes"]) for r in runs) / GiB
    for i, (backend, mode) in enumerate((b, m) for b in backends for m in ("async", "sync")):
        lat = _median_by_size(runs, backend, mode, "reboot_latency_s")
        cpu = _median_by_size(runs, backend, mode, "cleanup_cpu_s")
        if not lat:
            continue
        what = "SIMULATED s390x kernel" if backend == "sim" else f"{backend}, real kernel"
        label = f"{mode} ({what})"
        colour = PALETTE[i % len(PALETTE)]
        # Distinct line styles and markers: where the CPU of both modes is the
        # same (the work moves, it does not shrink) one line covers the other.
        style, marker = ("-", "o") if mode == "async" else ("--", "s")
        for ax, pts in ((ax_lat, lat), (ax_cpu, cpu)):
            if pts:
                ax.plot(*zip(*pts), style, marker=marker, color=colour, label=label,
                        linewidth=2, markersize=7 if mode == "async" else 5)  # fmt: skip
        series.append((label, colour))
    title = "Protected-VM reboot, async vs sync"
    if "sim" in backends:
        title += " [SIMULATED s390x kernel]"
    ax_lat.set_title("reboot latency\n(until the new guest can run)", fontsize=11)
    ax_lat.set_ylabel("seconds (median)")
    ax_cpu.set_title("teardown CPU\n(async: PREPARE + PERFORM; sync: DISABLE)", fontsize=11)
    ax_cpu.set_ylabel("CPU seconds (median)")
    for ax in (ax_lat, ax_cpu):
        ax.set_xlabel("guest memory (GiB)")
        ax.set_xlim(0, top * 1.08)
        ax.set_ylim(bottom=0)
        ax.axvline(2, color="#7f7f7f", linewidth=1, linestyle=":")
        ax.grid(True, alpha=0.3)
    # The 2 GiB line: at or below it QEMU reboots synchronously; above it
    # PREPARE still destroys the first 2 GiB itself.
    ax_lat.text(2, 0, " 2 GiB", color="#7f7f7f", fontsize=8, va="bottom")
    for ax in (ax_lat, ax_cpu):
        ax.legend(fontsize=8, loc="upper left")
    cycles = sorted({len(r.get("cycles") or []) // 2 for r in runs})
    sizes = ", ".join(format_size(m) for m in sorted({int(r["memory_bytes"]) for r in runs}))
    host = doc.get("host", {})
    fig.suptitle(
        f"{title} -- {host.get('arch')} {host.get('kernel_release')}\n"
        f"guest sizes {sizes}; median of {'/'.join(map(str, cycles))} cycle(s) per mode",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return PlotInfo(path, title, "guest memory (GiB)", "seconds (median)", series)


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
