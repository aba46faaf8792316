"""PNG plots of a load-test report (matplotlib, Agg backend: no display needed).

Called by ``report.write_report`` with the records, the summary and the time series it computed:
latency CDF per class, throughput and queue depth over time, per-tenant share against weights.
matplotlib is the ``loadtest`` extra (``pip install 'genmedia[loadtest]'``), imported only when
a plot is drawn; ``pyplot()`` is also what the simulator's study and the benchmarks plot with.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from genmedia.loadtests.records import RequestRecord

COLORS = {"all": "black", "interactive": "tab:red", "batch": "tab:blue"}


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed: the ``loadtest`` extra is missing."""


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend; ``PlotsUnavailable`` naming the extra if the
    ``loadtest`` extra is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(
            "plots need matplotlib, the 'loadtest' extra: pip install 'genmedia[loadtest]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(path: Path, records: list[RequestRecord], summary: dict) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    for cls, color in COLORS.items():
        if cls == "all":
            continue
        lat = np.sort([r.latency for r in records if r.priority == cls and r.status == "COMPLETED"])
        if lat.size == 0:
            continue
        ax.step(lat, np.arange(1, lat.size + 1) / lat.size, where="post", color=color, label=cls)
        drawn = True
        slo = summary["slo_s"].get(cls)
        if slo is not None:
            ax.axvline(slo, color=color, linestyle=":", linewidth=1, label=f"{cls} SLO {slo:g} s")
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (s, log scale)")
    ax.set_ylabel("fraction of completed requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no completed request", ha="center", transform=ax.transAxes)
    ax.set_title(f"{summary['scenario']}: latency CDF per class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def over_time(path: Path, summary: dict, series: dict) -> Path:
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    t = np.asarray(series["t"]) + series["bin_s"] / 2
    for cls, color in COLORS.items():
        if cls != "all" and cls not in summary["classes"]:
            continue
        top.plot(t, series["throughput"][cls], color=color, label=cls, linewidth=1.2)
        bottom.step(series["queue_t"], series["queue_depth"][cls], color=color, label=cls)
    top.set_ylabel(f"completed images / s ({series['bin_s']:.3g} s bins)")
    top.set_title(f"{summary['scenario']}: throughput and queue depth")
    bottom.set_ylabel("requests queued")
    bottom.set_xlabel("time since start (s)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tenant_share(path: Path, summary: dict) -> Path:
    tenants = list(summary["tenants"])
    stats = summary["tenants"]
    bars = [
        ("share of completed images", [stats[t]["share"] or 0.0 for t in tenants], "tab:green"),
        (
            "share while all served",
            [stats[t]["contested_share"] or 0.0 for t in tenants],
            "tab:olive",
        ),
        ("weight share", [stats[t]["weight_share"] for t in tenants], "tab:gray"),
    ]
    x = np.arange(len(tenants))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(tenants) + 2), 4))
    for k, (label, values, color) in enumerate(bars):
        ax.bar(x + (k - 1) * 0.27, values, 0.27, label=label, color=color)
    ax.set_xticks(x, tenants)
    ax.set_ylabel("fraction")
    ax.set_title(f"{summary['scenario']}: per-tenant share")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(
    out_dir: Path, records: list[RequestRecord], summary: dict, series: dict
) -> list[str]:
    """Every plot of a report into ``out_dir``; returns the file names."""
    paths = [
        latency_cdf(out_dir / "latency_cdf.png", records, summary),
        over_time(out_dir / "over_time.png", summary, series),
        tenant_share(out_dir / "tenant_share.png", summary),
    ]
    return [p.name for p in paths]
