"""Figures for BENCHMARKS.md, rendered sparingly: one bar chart per protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def bar_chart(frame: pd.DataFrame, metric: str, path: Path) -> Path | None:
    """Bars of ``metric`` (mean ± sd over seeds) per dataset and task, one bar per method.

    Returns
    -------
    ``path`` (a PNG), or None when no row has the metric.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = frame[frame["error"].isna()].dropna(subset=[metric]).copy() if metric in frame else None
    if ok is None or ok.empty:
        return None
    ok["group"] = ok["dataset"] + np.where(ok["task"] != "", "\n" + ok["task"], "")
    agg = ok.groupby(["group", "label"], sort=False)[metric].agg(["mean", "std"])
    groups, labels = list(dict.fromkeys(ok["group"])), list(dict.fromkeys(ok["label"]))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(2 + 1.4 * len(groups), 4.2))
    for i, name in enumerate(labels):
        means = [agg["mean"].get((g, name), np.nan) for g in groups]
        sds = np.nan_to_num([agg["std"].get((g, name), 0.0) for g in groups])
        ax.bar(np.arange(len(groups)) + i * width, means, width, yerr=sds, label=name, capsize=2)
    ax.set_xticks(np.arange(len(groups)) + width * (len(labels) - 1) / 2)
    ax.set_xticklabels(groups, fontsize=7)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, ncol=3, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
