"""Treatment-effect prediction for a cell type never seen treated: gmmvae against scGen.

DESIGN.md §2 "Treatment-effect prediction (scGen protocol)". Data: kang_pbmc_2k (top 2,000
HVGs, seurat_v3 on counts). For each held-out type t (CD4 T, CD14 Mono, NK, B, FCGR3A Mono;
DC apart as a small type) and seed: train on every cell except the stimulated cells of t,
predict them from the control cells of t, and score against the real stimulated cells of t
on log1p CP10k. One gmmvae model per (type, seed) gives every prediction method
(``transfer``/``latent_shift``/``decoder`` x donor weighting); scGen (pertpy 1.0.3 ``Scgen``)
trains on the same cells with the same epoch cap; baselines: the control cells unchanged,
control + the mean log1p-CP10k shift of the other types, and the real-vs-real split-half
ceiling. Rows go to benchmarks/results/perturbation.jsonl (rerunning skips finished units);
tables into BENCHMARKS.md between the ``perturbation`` markers, figures into
benchmarks/figures/perturbation_*.png.

Needs the ``bench-scgen`` extra (pertpy) in its own environment:

    python benchmarks/perturbation.py [--max-epochs 100] [--seeds 0 1 2] [--types ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

import gmmvae
from common import ROOT, ResultStore, load_dataset, versions, write_section
from gmmvae import metrics

DATASET = "kang_pbmc_2k"
MAIN_TYPES = ("CD4 T", "CD14 Mono", "NK", "B", "FCGR3A Mono")
SMALL_TYPES = ("DC",)
SOURCE, TARGET = "control", "stimulated"
N_DEGS = 100
MIN_SHIFT_CELLS = 5  # a type lends its mean shift to the baseline with this many cells per arm
GMMVAE_METHODS = (
    ("transfer", "similarity"),
    ("transfer", "uniform"),
    ("latent_shift", "similarity"),
    ("latent_shift", "uniform"),
    ("decoder", None),
)
HEADLINE = ["mean_r2", "mean_r2_deg", "mean_r2_sklearn", "mean_r2_sklearn_deg"]
SECONDARY = ["var_r2", "var_r2_deg", "var_r2_sklearn_deg", "energy_distance"]
FIGURES = ROOT / "figures"
MODEL_CACHE: Path | None = None  # set by --model-cache
COMMAND = "python benchmarks/perturbation.py --max-epochs {epochs} --seeds {seeds}"


def method_name(method: str, weighting: str | None) -> str:
    return f"gmmvae {method}" + (f" ({weighting})" if weighting else "")


# ------------------------------------------------------------------------------ data / split
def load():
    """Kang PBMCs on the protocol's genes, with string categories for type and condition."""
    adata, labels_key, _ = load_dataset(DATASET)
    adata.obs["cell_type"] = adata.obs[labels_key].astype(str).astype("category")
    adata.obs["condition"] = adata.obs["condition"].astype(str).astype("category")
    return adata


class Split:
    """The cells of one leave-one-type-out unit, and what every method is scored against."""

    def __init__(self, adata, held_out: str) -> None:
        types = adata.obs["cell_type"].astype(str).to_numpy()
        cond = adata.obs["condition"].astype(str).to_numpy()
        is_t = types == held_out
        self.held_out = held_out
        self.train = adata[~(is_t & (cond == TARGET))].copy()
        self.control = adata[is_t & (cond == SOURCE)].copy()
        self.stimulated = adata[is_t & (cond == TARGET)].copy()
        self.genes = [str(g) for g in adata.var_names]
        self.real = metrics.log_cp10k(self.stimulated.X)
        self.real_control = metrics.log_cp10k(self.control.X)
        self.degs = metrics.top_degs(self.real, self.real_control, self.genes, N_DEGS)
        # PCs of the real cells of t (both conditions): a fixed space for every method.
        pooled = np.vstack([self.real, self.real_control])
        n_pcs = min(50, len(pooled) - 1)
        self.pca = PCA(n_pcs, random_state=0).fit(pooled)
        # Baseline: control + the type-balanced mean shift of the other types.
        logs = metrics.log_cp10k(adata.X)
        shifts = []
        for s in sorted(set(types) - {held_out}):
            stim, ctrl = (types == s) & (cond == TARGET), (types == s) & (cond == SOURCE)
            if stim.sum() >= MIN_SHIFT_CELLS and ctrl.sum() >= MIN_SHIFT_CELLS:
                shifts.append(logs[stim].mean(0) - logs[ctrl].mean(0))
        self.mean_shift = np.mean(shifts, axis=0)

    def score(self, predicted: np.ndarray, real: np.ndarray | None = None) -> dict[str, float]:
        real = self.real if real is None else real
        pcs = (self.pca.transform(real), self.pca.transform(predicted))
        return metrics.perturbation_scores(real, predicted, self.genes, self.degs, pcs=pcs)


# ---------------------------------------------------------------------------------- methods
def run_gmmvae(split: Split, seed: int, max_epochs: int, figures: bool) -> list[dict]:
    start = time.perf_counter()
    train = split.train
    gmmvae.GMMVAE.setup_anndata(train, labels_key="cell_type", condition_key="condition")
    # Trained models are kept (outside the repo, if --model-cache is given) so that a new
    # prediction method can be scored on the same models; the training time is stored with it.
    cached = MODEL_CACHE and MODEL_CACHE / f"{split.held_out.replace(' ', '_')}_{seed}_{max_epochs}"
    if cached and (cached / "config.json").exists():
        model = gmmvae.GMMVAE.load(cached, adata=train)
        train_seconds = float((cached / "train_seconds.txt").read_text())
    else:
        model = gmmvae.GMMVAE(train, likelihood="nb", seed=seed)
        model.train(max_epochs, seed=seed, progress_bar=False)
        train_seconds = time.perf_counter() - start
        if cached:
            model.save(cached, overwrite=True)
            (cached / "train_seconds.txt").write_text(f"{train_seconds:.1f}")
    rows = []
    for method, weighting in GMMVAE_METHODS:
        t0 = time.perf_counter()
        pred = model.predict_perturbation(
            split.control,
            source=SOURCE,
            target=TARGET,
            method=method,
            weighting=weighting or "similarity",
            seed=seed,
        )
        seconds = train_seconds + time.perf_counter() - t0
        name = method_name(method, weighting)
        outputs = {"mean": pred.layers["log_mean"], "sampled": metrics.log_cp10k(pred.X)}
        for output, values in outputs.items():
            rows.append({"method": name, "output": output, **split.score(values)})
            rows[-1].update(seconds=seconds, epochs=len(model.history))
        if figures and (method, weighting) == ("transfer", "similarity"):
            draw_figures(split, pred, "gmmvae")
    return rows


def run_scgen(split: Split, seed: int, max_epochs: int, figures: bool) -> list[dict]:
    import anndata as ad
    import pertpy as pt
    import scvi

    scvi.settings.seed = seed
    start = time.perf_counter()
    train = ad.AnnData(
        metrics.log_cp10k(split.train.X), obs=split.train.obs[["cell_type", "condition"]].copy()
    )
    train.var_names = split.genes
    pt.tl.Scgen.setup_anndata(train, batch_key="condition", labels_key="cell_type")
    model = pt.tl.Scgen(train)
    model.train(
        max_epochs=max_epochs,
        batch_size=32,
        early_stopping=True,
        early_stopping_patience=25,
        enable_progress_bar=False,
    )
    pred, _ = model.predict(ctrl_key=SOURCE, stim_key=TARGET, celltype_to_predict=split.held_out)
    values = np.asarray(pred.X, dtype=np.float32)
    seconds = time.perf_counter() - start
    epochs = len(model.history["elbo_train"]) if "elbo_train" in model.history else max_epochs
    if figures:
        predicted = ad.AnnData(np.zeros_like(values), var=pd.DataFrame(index=split.genes))
        predicted.layers["log_mean"] = values
        draw_figures(split, predicted, "scgen")
    row = {"method": "scGen (pertpy)", "output": "mean", **split.score(values)}
    return [{**row, "seconds": seconds, "epochs": epochs}]


def run_baselines(split: Split, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split.real))
    half = len(order) // 2
    a, b = split.real[order[:half]], split.real[order[half:]]
    control = split.real_control
    return [
        {"method": "control unchanged", "output": "mean", **split.score(control)},
        {
            "method": "control + mean shift of other types",
            "output": "mean",
            **split.score(control + split.mean_shift),
        },
        {"method": "real split-half (ceiling)", "output": "mean", **split.score(b, real=a)},
    ]


# ---------------------------------------------------------------------------------- figures
def draw_figures(split: Split, predicted, name: str) -> None:
    FIGURES.mkdir(exist_ok=True)
    slug = split.held_out.replace(" ", "_")
    gmmvae.pl.perturbation_scatter(
        split.stimulated,
        predicted,
        degs=split.degs,
        title=f"{name}: {split.held_out} (held out), predicted vs real stimulated",
        save=str(FIGURES / f"perturbation_scatter_{name}_{slug}.png"),
    )
    if name == "gmmvae":
        gmmvae.pl.perturbation_violin(
            split.stimulated,
            predicted,
            gene=split.degs[0],
            control=split.control,
            save=str(FIGURES / f"perturbation_violin_{slug}_{split.degs[0]}.png"),
        )
    import matplotlib.pyplot as plt

    plt.close("all")


# ---------------------------------------------------------------------------------- report
def _latest(rows: list[dict]) -> pd.DataFrame:
    keyed = {(r["held_out"], r["method"], r["output"], r["seed"]): r for r in rows}
    return pd.DataFrame(list(keyed.values()))


def _table(frame: pd.DataFrame, types, cols: list[str], output: str) -> str:
    frame = frame[frame["output"] == output]
    methods = list(dict.fromkeys(frame["method"]))
    lines = ["| held-out type | method | " + " | ".join(cols) + " | seeds |"]
    lines.append("|" + "---|" * (len(cols) + 3))
    for t in [*types, "mean"]:
        for m in methods:
            group = frame[frame["method"] == m]
            if t == "mean":
                group = group[group["held_out"].isin(types)]
                # mean over types of the per-type mean over seeds
                per_type = group.groupby("held_out")[cols].mean()
                if len(per_type) < len(types):
                    continue
                values = per_type.mean()
                n_seeds = group.groupby("held_out").size().min()
                cells = ["**mean**", m] + [f"**{values[c]:.3f}**" for c in cols]
            else:
                group = group[group["held_out"] == t]
                if group.empty:
                    continue
                n_seeds = len(group)
                sd = group[cols].std(ddof=1) if n_seeds > 1 else group[cols].mean() * 0
                cells = [t, m] + [
                    f"{group[c].mean():.3f} ± {sd[c]:.3f}"
                    if n_seeds > 1
                    else f"{group[c].mean():.3f}"
                    for c in cols
                ]
            lines.append("| " + " | ".join(cells) + f" | {n_seeds} |")
    return "\n".join(lines)


SUMMARY = (
    ("real split-half (ceiling)", "mean"),
    ("control unchanged", "mean"),
    ("control + mean shift of other types", "mean"),
    ("scGen (pertpy)", "mean"),
    ("gmmvae transfer (similarity)", "mean"),
    ("gmmvae transfer (similarity)", "sampled"),
    ("gmmvae latent_shift (uniform)", "mean"),
    ("gmmvae decoder", "mean"),
)


def _summary(frame: pd.DataFrame, types, metric: str) -> str:
    """One metric, types as rows and the main methods as columns (mean over seeds)."""
    names = [f"{m}{' (sampled)' if o == 'sampled' else ''}" for m, o in SUMMARY]
    lines = ["| held-out type | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    per_type = frame.groupby(["held_out", "method", "output"])[metric].mean()
    for t in [*types, "mean"]:
        cells = []
        for m, o in SUMMARY:
            if t == "mean":
                values = [per_type.get((s, m, o)) for s in types]
                ok = all(v is not None for v in values)
                cells.append(f"**{np.mean(values):.3f}**" if ok else "–")
            else:
                v = per_type.get((t, m, o))
                cells.append("–" if v is None else f"{v:.3f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(store: ResultStore, max_epochs: int, seeds: list[int]) -> None:
    rows = [r for r in store.rows() if r["max_epochs"] == max_epochs]
    if not rows:
        return
    frame = _latest(rows)
    dates = sorted(set(frame["date"]))
    command = COMMAND.format(epochs=max_epochs, seeds=" ".join(map(str, seeds)))
    seconds = frame.groupby("method")["seconds"].mean().dropna()
    text = [
        "## Treatment-effect prediction: held-out cell type (scGen protocol)",
        "",
        f"Command: `{command}` in the `bench-scgen` environment (dates {dates[0]}–{dates[-1]}; "
        "2 shared CPU cores, one thread per process; "
        f"{versions('gmmvae', 'pertpy', 'scvi-tools', 'jax', 'torch', 'scanpy')}). "
        f"Seeds {sorted(set(frame['seed']))}; wall seconds per unit (training + prediction, "
        "mean): " + ", ".join(f"{m} {s:.0f}" for m, s in seconds.items()) + ".",
        f"Data: `{DATASET}`, top 2,000 HVGs (seurat_v3 on counts). For each held-out type t, "
        "every method trains on all cells except the stimulated cells of t (same cells, "
        f"epoch cap {max_epochs}, early stopping as each method's default), predicts them from "
        "the control cells of t, and is scored against the real stimulated cells of t on "
        "log1p CP10k. gmmvae: NB likelihood, default (`exact`) variant, `labels_key="
        "'cell_type'`, `condition_key='condition'`, one model per (type, seed) for every "
        "prediction method: `transfer` (the cell's reconstruction plus the decoder's "
        "condition response of the types seen treated, on the log scale), `latent_shift` "
        "(scGen's latent arithmetic inside the conditional model), `decoder` (the seed's "
        "flip of the decoder's condition); donor types weighted by latent-centroid "
        "similarity or uniformly. scGen: pertpy 1.0.3 `Scgen` defaults (800 hidden, 100 "
        "latent, 2 layers), on log1p-CP10k of the same genes, batch size 32, early-stopping "
        "patience 25, `predict(celltype_to_predict=t)` (its balanced latent mean "
        "difference; pertpy draws the balancing subsample without a seed). Baselines: the "
        f"control cells unchanged; control + mean shift of the other types (each type with "
        f"≥ {MIN_SHIFT_CELLS} cells per condition weighs the same); the ceiling compares two "
        "random halves of the real stimulated cells of t.",
        "Scores: `mean_r2` = scGen's R² (squared Pearson of per-gene means, predicted vs "
        f"real), `_deg` on the top-{N_DEGS} DEGs of t (Wilcoxon, real stimulated vs control "
        "of t, by score), `_sklearn` = coefficient of determination (`r2_score`, penalises "
        "offsets), `var_` the same on per-gene variances, `energy_distance` on the first 50 "
        "PCs of the real cells of t (both conditions). Headline: gmmvae's predicted mean "
        "expression per cell (`layers['log_mean']`: the expected log1p CP10k under the "
        "likelihood), scGen's decoded values; gmmvae's sampled counts (one draw per cell) are "
        "in the second table. The mean is over the five main types.",
        "Energy distance and the variance scores compare cell-level spread: read them for "
        "gmmvae from the sampled-counts table; the noise-free mean outputs (gmmvae's mean "
        "rows, scGen's decoded values) lack the cells' sampling noise by construction.",
        "",
        f"### Summary: R² on the top-{N_DEGS} DEGs (mean over seeds)",
        "",
        _summary(frame, MAIN_TYPES, "mean_r2_deg"),
        "",
        "### Summary: R² on all genes (mean over seeds)",
        "",
        _summary(frame, MAIN_TYPES, "mean_r2"),
        "",
        "### Predicted mean expression (headline), all scores",
        "",
        _table(frame, MAIN_TYPES, HEADLINE + SECONDARY, "mean"),
        "",
        "### gmmvae sampled counts (one draw per cell)",
        "",
        _table(frame, MAIN_TYPES, HEADLINE + SECONDARY, "sampled"),
        "",
        f"### Small type: {', '.join(SMALL_TYPES)} (13 control / 16 stimulated cells)",
        "",
        _table(frame, SMALL_TYPES, HEADLINE + SECONDARY, "mean"),
        "",
        "Figures (seed 0): `benchmarks/figures/perturbation_scatter_{gmmvae,scgen}_<type>.png` "
        "(per-gene means, top DEGs in red, R² in the title) and "
        "`perturbation_violin_<type>_<gene>.png` (the type's top DEG in control, predicted, "
        "real stimulated cells).",
    ]
    write_section("perturbation", "\n".join(text))


# ------------------------------------------------------------------------------------ main
UNITS = ("baselines", "gmmvae", "scgen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--types", nargs="+", default=[*MAIN_TYPES, *SMALL_TYPES])
    parser.add_argument("--units", nargs="+", default=list(UNITS), choices=UNITS)
    parser.add_argument("--store", default="perturbation", help="results/<store>.jsonl")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--model-cache", type=Path, help="keep trained gmmvae models here (outside the repo)"
    )
    parser.add_argument("--no-render", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric", "scvi", "pertpy", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    store = ResultStore(args.store)
    global MODEL_CACHE
    MODEL_CACHE = args.model_cache

    def report() -> None:
        if not args.no_render:
            render(store, args.max_epochs, args.seeds)

    if not args.render_only:
        adata = load()
        for seed in args.seeds:
            for held_out in args.types:
                split = None
                for unit in args.units:
                    key = {
                        "dataset": DATASET,
                        "held_out": held_out,
                        "unit": unit,
                        "seed": seed,
                        "max_epochs": args.max_epochs,
                    }
                    if store.done(**key):
                        continue
                    split = split or Split(adata, held_out)
                    figures = seed == args.seeds[0]
                    t0 = time.perf_counter()
                    if unit == "gmmvae":
                        rows = run_gmmvae(split, seed, args.max_epochs, figures)
                    elif unit == "scgen":
                        rows = run_scgen(split, seed, args.max_epochs, figures)
                    else:
                        rows = run_baselines(split, seed)
                    for row in rows:
                        store.add({**key, **row, "seconds": row.get("seconds")})
                    best = {r["method"]: round(r["mean_r2_deg"], 3) for r in rows}
                    print(
                        seed, held_out, unit, f"{time.perf_counter() - t0:.0f}s", best, flush=True
                    )
                report()
    report()


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    np.seterr(all="ignore")
    main()
