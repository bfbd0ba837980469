"""Choosing the number of components K, against a true number of types.

``python -m benchmarks choose_k``. DESIGN.md §2 has no K-selection protocol; this one follows
its rules (each method at its defaults, three seeds, independent truth).

- gmmvae: ``gmmvae.select_n_components(adata, candidates, held_out=0.1, seed=seed,
  n_mc_samples=50)``: one default training per candidate on the same 90 % of the cells,
  scored by the importance-sampled marginal log-likelihood of the other 10 %; the choice is
  the smallest K within one standard error of the best (its one-SE rule). The row also
  records the K of the largest mean held-out log p(x) (``argmax_k``, no one-SE rule) and the
  whole table (``extra.table``).
- PCA(50) + GaussianMixture BIC (the peer): ``sklearn.mixture.GaussianMixture(k,
  random_state=seed)`` (its defaults: full covariances, k-means initialisation, one init)
  fitted to ``sc.pp.pca(n_comps=50)`` of log1p CP10k of all cells for every candidate; the
  choice is the K of the smallest BIC (``extra.table`` has BIC and AIC per K).

Datasets: ``gmmvae.datasets.simulate(n_cells=3000, n_genes=500, n_types=K, seed=seed)`` with
K = 4, 8, 12 (all genes; the seed changes the simulation and the training), candidates
``max(2, K - 3) .. K + 3``; Zheng sorted PBMCs (:mod:`benchmarks.datasets`, top 2,000 HVGs),
``zheng_coarse`` (all cells, 5 populations, candidates 2..8) and ``zheng_fine`` (the 7
mutually exclusive populations, candidates 4..10).

Cost at the defaults: every candidate is one full gmmvae training (its own schedule: at least
4,000 optimiser steps on data this small, early stopping from step 3,000; 4-8 minutes per
candidate on one CPU thread), so the full grid is 34 candidates x 3 seeds = 102 trainings,
about 7-14 CPU hours; the BIC peer takes seconds. ``--cap N`` adds rows with
``max_epochs=N`` per candidate (``--cap 100``: about a quarter of the steps). A unit is one
whole selection: a run killed inside it redoes that dataset and seed.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import methods
from benchmarks.protocols import Result, Settings, Unit, single

NAME = "choose_k"
TITLE = "Choosing the number of components K"
SIMULATED = {"simulated_k4": 4, "simulated_k8": 8, "simulated_k12": 12}
DATASETS = (*SIMULATED, "zheng_coarse", "zheng_fine")
QUICK_DATASETS = ("simulated_k4", "zheng_fine")
METHODS = ("gmmvae", "gmm_bic")
# Display names of the methods that methods.NAMES lacks (report.py merges them).
NAMES = {"gmm_bic": "PCA(50) + GaussianMixture BIC"}
METRICS = ("abs_error", "chosen_k", "exact", "true_k", "argmax_k")
HEADLINE = "abs_error"
LOWER_IS_BETTER = ("abs_error",)
SHAPE = {"n_cells": 3000, "n_genes": 500}
QUICK_SHAPE = {"n_cells": 600, "n_genes": 200}
SPREAD = 3  # candidates: true K - 3 .. true K + 3 (at least 2)
QUICK_SPREAD = 1
HELD_OUT = 0.1
QUICK_HELD_OUT = 0.2  # the quick Zheng subsample has 300 cells; 50 must be held out
N_MC_SAMPLES = 50
OCCUPIED = 0.01  # BIC rows: a component "holds cells" when it takes >= 1 % of them
DESCRIPTIONS = {
    name: f"`gmmvae.datasets.simulate(n_cells=3000, n_genes=500, n_types={k}, seed=seed)`, "
    f"all genes, true K = {k}"
    for name, k in SIMULATED.items()
}
DESCRIPTION = (
    "The number of components chosen by each method, against the true number of types. "
    "gmmvae: `GMMVAE.setup_anndata(adata)`, `gmmvae.select_n_components(adata, candidates, "
    "held_out=0.1, seed=seed, n_mc_samples=50)`: one default `GMMVAE(n_components=k, "
    "seed=seed).train(seed=seed)` per candidate on the same 90 % of the cells, scored by the "
    "importance-sampled marginal log-likelihood of the other 10 %; it picks the smallest K "
    "within one standard error of the best (`argmax K` is the best mean held-out log p(x) "
    "without that rule). Peer: scikit-learn `GaussianMixture(k, random_state=seed)` at its "
    "defaults (full covariances) on `sc.pp.pca(n_comps=50)` of log1p CP10k of all cells, K "
    "of the smallest BIC over the same candidates (PCs as float64; a K whose fit fails with "
    "ill-defined covariances is left out and listed in `extra.failed_k`). No label is seen "
    "by either. Simulated: `gmmvae.datasets.simulate(n_cells=3000, n_genes=500, n_types=K, "
    "seed=seed)`, K = 4, 8, 12, all genes, candidates max(2, K − 3) .. K + 3; the seed "
    "changes the simulation. Zheng (top 2,000 HVGs): coarse (all cells, 5 populations, "
    "candidates 2..8) and fine (the 7 mutually exclusive populations, candidates 4..10). "
    "The headline is |chosen − true| (`abs error`, lower is better); `exact` the seeds that "
    "chose the true K. `seconds`: the whole selection (every candidate's training and "
    "scoring). Each row's `extra.table` holds the full likelihood (or BIC) table; the "
    "per-candidate tables show gmmvae's gap to the best mean held-out log p(x) (nats per "
    "cell) and the peer's BIC minus its minimum."
)


# ------------------------------------------------------------------------------- datasets
def true_k(ds) -> int:
    return int(ds.n_types)


def candidates(k: int, quick: bool) -> list[int]:
    spread = QUICK_SPREAD if quick else SPREAD
    return list(range(max(2, k - spread), k + spread + 1))


def simulated(name: str, seed: int, quick: bool):
    """A simulated dataset with ``SIMULATED[name]`` types, as a benchmark Dataset."""
    import gmmvae
    from benchmarks.datasets import Dataset

    shape = QUICK_SHAPE if quick else SHAPE
    adata = gmmvae.datasets.simulate(**shape, n_types=SIMULATED[name], seed=seed)
    description = DESCRIPTIONS[name]
    if quick:
        description = f"QUICK: simulate({shape}) instead of: {description}"
    return Dataset(name, adata, "cell_type", "nb", None, description)


# -------------------------------------------------------------------------------- methods
def run_gmmvae(ds, seed: int, ks: list[int], held_out: float, max_epochs: int | None) -> Result:
    import gmmvae

    start = time.perf_counter()
    adata = ds.adata.copy()
    gmmvae.GMMVAE.setup_anndata(adata, batch_key=ds.batch_key)
    table = gmmvae.select_n_components(
        adata,
        ks,
        held_out=held_out,
        seed=seed,
        n_mc_samples=N_MC_SAMPLES,
        model_kwargs={"likelihood": ds.likelihood},
        train_kwargs={} if max_epochs is None else {"max_epochs": max_epochs},
    )
    seconds = time.perf_counter() - start
    chosen = int(table.attrs["n_components"])
    argmax = int(table.loc[table["marginal_ll"].idxmax(), "n_components"])
    extra = {
        "table": table.to_dict("records"),
        "candidates": ks,
        "params": table.attrs.get("params", {}),
        "argmax_abs_error": abs(argmax - true_k(ds)),
    }
    return {"scores": _scores(ds, chosen, argmax), "seconds": seconds, "extra": extra}


def run_bic(ds, seed: int, ks: list[int]) -> Result:
    from sklearn.mixture import GaussianMixture

    start = time.perf_counter()
    pcs, _ = methods.pca(ds.log_expression(), seed)
    pcs = np.asarray(pcs, dtype=np.float64)  # float32 PCs make full covariances fail sooner
    rows = []
    for k in ks:
        try:
            fit = GaussianMixture(k, random_state=seed).fit(pcs)
        except ValueError as err:  # ill-defined covariances: this K cannot be fitted
            rows.append({"n_components": k, "bic": np.nan, "aic": np.nan, "error": str(err)})
            continue
        shares = np.bincount(fit.predict(pcs), minlength=k) / len(pcs)
        rows.append(
            {
                "n_components": k,
                "bic": float(fit.bic(pcs)),
                "aic": float(fit.aic(pcs)),
                "converged": bool(fit.converged_),
                "n_iter": int(fit.n_iter_),
                "n_occupied": int((shares >= OCCUPIED).sum()),
            }
        )
    table = pd.DataFrame(rows)
    if table["bic"].isna().all():
        raise ValueError(f"GaussianMixture failed for every candidate: {rows[0]['error']}")
    table["delta_bic"] = table["bic"] - table["bic"].min()
    chosen = int(table.loc[table["bic"].idxmin(), "n_components"])
    table["selected"] = table["n_components"] == chosen
    seconds = time.perf_counter() - start
    extra = {
        "table": table.to_dict("records"),
        "candidates": ks,
        "aic_k": int(table.loc[table["aic"].idxmin(), "n_components"]),
        "failed_k": [int(k) for k in table.loc[table["bic"].isna(), "n_components"]],
    }
    return {"scores": _scores(ds, chosen), "seconds": seconds, "extra": extra}


def _scores(ds, chosen: int, argmax: int | None = None) -> dict[str, float]:
    truth = true_k(ds)
    out = {
        "abs_error": float(abs(chosen - truth)),
        "chosen_k": float(chosen),
        "exact": float(chosen == truth),
        "true_k": float(truth),
    }
    if argmax is not None:
        out["argmax_k"] = float(argmax)
    return out


def options(
    ds, method: str, ks: list[int], held_out: float, max_epochs, quick: bool
) -> dict[str, Any]:
    """What a row's key records of a method's run."""
    common: dict[str, Any] = {"candidates": ks, "true_k": true_k(ds)}
    if ds.name in SIMULATED:
        common["simulation"] = {**(QUICK_SHAPE if quick else SHAPE), "n_types": true_k(ds)}
    if method == "gmmvae":
        return {
            **methods.gmmvae_options(ds, max_epochs),
            **common,
            "held_out": held_out,
            "n_mc_samples": N_MC_SAMPLES,
            "rule": "one standard error",
        }
    return {
        **common,
        "n_comps": methods.N_PCS,
        "input": "log1p CP10k",
        "gaussian_mixture": "defaults (covariance_type='full')",
        "criterion": "min BIC",
    }


def grid_units(settings: Settings, data_dir) -> list[Unit]:
    """Per dataset and seed: gmmvae's selection (per epoch cap) and the BIC peer."""
    from benchmarks import datasets

    held_out = QUICK_HELD_OUT if settings.quick else HELD_OUT
    out = []
    for name in settings.datasets:
        for seed in settings.seeds:
            if name in SIMULATED:
                ds = simulated(name, seed, settings.quick)
            else:
                ds = datasets.load(name, data_dir, settings.quick)
            ks = candidates(true_k(ds), settings.quick)
            if "gmmvae" in settings.methods:
                for max_epochs in settings.epochs:
                    fn = partial(run_gmmvae, ds, seed, ks, held_out, max_epochs)
                    opts = options(ds, "gmmvae", ks, held_out, max_epochs, settings.quick)
                    opts = {"gmmvae": opts}
                    out.append(Unit(name, "", seed, opts, single("gmmvae", fn)))
            if "gmm_bic" in settings.methods:
                fn = partial(run_bic, ds, seed, ks)
                opts = {"gmm_bic": options(ds, "gmm_bic", ks, held_out, None, settings.quick)}
                out.append(Unit(name, "", seed, opts, single("gmm_bic", fn)))
    return out


# ------------------------------------------------------------------------------- tables
def tables(frame: pd.DataFrame, *, quick: bool) -> list[str]:
    """The choices per dataset and method, then each dataset's likelihood / BIC table."""
    from benchmarks import datasets

    ok = frame[frame["error"].isna()]
    if ok.empty:
        return []
    described = {**datasets.DESCRIPTIONS, **DESCRIPTIONS}
    text = [f"- `{d}`: {described[d]}" for d in ok["dataset"].unique()]
    if quick:
        text += [
            f"- QUICK: simulated {QUICK_SHAPE['n_cells']} cells x {QUICK_SHAPE['n_genes']} "
            f"genes, Zheng a {datasets.QUICK_CELLS}-cell subsample, candidates K − "
            f"{QUICK_SPREAD} .. K + {QUICK_SPREAD}, held_out {QUICK_HELD_OUT}"
        ]
    text += ["", _choices(ok), ""]
    for name in (d for d in DATASETS if d in set(ok["dataset"])):
        part = ok[ok["dataset"] == name]
        for label in part.loc[part["method"] == "gmmvae", "label"].unique():
            text += [f"### `{name}`: {label}, held-out log p(x) per candidate", ""]
            text += [_candidates(part, label), ""]
    return text


def _choices(ok: pd.DataFrame) -> str:
    from benchmarks import report

    head = ["data", "true K", "candidates", "method", "chosen K per seed", "abs error"]
    head += ["exact", "argmax K per seed", "seeds", "seconds", "vs gmmvae", "made by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ds, part in ok.groupby("dataset", sort=False):
        for name, group in part.groupby("label", sort=False):
            group = group.sort_values("seed")
            ours = part[(part["method"] == "gmmvae") & (part["cap"] == group["cap"].iloc[0])]
            error = report.stats(group["abs_error"])
            verdict = "–"
            if group["method"].iloc[0] != "gmmvae" and len(ours):
                verdict = report.call(report.stats(ours["abs_error"]), error, lower_is_better=True)
            ks = group["options"].iloc[0].get("candidates", [])
            argmax = "–"
            if "argmax_k" in group and group["argmax_k"].notna().any():
                argmax = ", ".join(str(int(v)) for v in group["argmax_k"])
            cells = [
                ds,
                str(int(group["true_k"].iloc[0])),
                f"{min(ks)}..{max(ks)}" if ks else "–",
                name,
                ", ".join(str(int(v)) for v in group["chosen_k"]),
                report.fmt(*error, digits=2),
                f"{int(group['exact'].sum())}/{len(group)}",
                argmax,
                str(group["seed"].nunique()),
                report.fmt(*report.stats(group["seconds"]), digits=0),
                verdict,
                report.made_by(group),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _candidates(part: pd.DataFrame, label: str) -> str:
    """Per candidate K: gmmvae's gap to the best held-out log p(x) (nats per cell, mean ± sd
    over seeds), its SE, occupied components and how often chosen; the BIC peer's ΔBIC."""
    from benchmarks import report

    def long(rows: pd.DataFrame) -> pd.DataFrame:
        records = [
            {**r, "seed": seed}
            for seed, extra in zip(rows["seed"], rows["extra"], strict=True)
            for r in extra.get("table", [])
        ]
        return pd.DataFrame(records)

    gm = long(part[part["label"] == label])
    bic = long(part[part["method"] == "gmm_bic"])
    head = ["K", "gap to best (nats/cell)", "gap SE", "occupied", "chosen (seeds)"]
    if not bic.empty:
        head += ["ΔBIC", "BIC occupied", "BIC chosen (seeds)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ks = sorted(set(gm["n_components"]) | set(bic.get("n_components", [])))
    for k in ks:
        g = gm[gm["n_components"] == k]
        cells = [str(int(k))]
        cells += [report.fmt(*report.stats(g.get("gap_to_best", pd.Series())), digits=2)]
        cells += [report.fmt(*report.stats(g.get("gap_se", pd.Series())), digits=2)]
        cells += [report.fmt(*report.stats(g.get("n_occupied", pd.Series())), digits=1)]
        cells += [str(int(g["selected"].sum())) if len(g) else "–"]
        if not bic.empty:
            b = bic[bic["n_components"] == k]
            cells += [report.fmt(*report.stats(b["delta_bic"]), digits=0)]
            cells += [report.fmt(*report.stats(b["n_occupied"]), digits=1)]
            cells += [str(int(b["selected"].sum())) if len(b) else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(frame: pd.DataFrame) -> tuple[list[str], dict[str, int]]:
    """The summary's lines: |chosen − true| of gmmvae against the BIC peer."""
    from benchmarks import report

    if frame.empty:
        return [], {}
    ok = frame[frame["error"].isna() & frame["default"]]
    if ok.empty:
        return [], {}
    lines, tally = report._summary_table(ok, sys.modules[__name__], ["gmm_bic"])
    return ["", f"**{TITLE}: |chosen − true|**", "", *lines], tally
