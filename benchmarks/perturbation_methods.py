"""Splits, scores and methods of the treatment-effect protocol (DESIGN.md §2, scGen protocol).

A :class:`Split` holds the cells of one leave-one-type-out: the training cells (every cell but
the stimulated cells of the held-out type, and of an outer held-out type for an inner split),
the control cells of the held-out type that every method predicts from, and what every method
is scored against (the real stimulated cells of that type, its top DEGs, PCs of its real cells).
Every method returns predicted log1p-CP10k cells for the same control cells:

- gmmvae: ``GMMVAE.setup_anndata(train, labels_key="cell_type", condition_key="condition")``,
  ``GMMVAE(train, seed=seed).train(seed=seed)`` at its defaults, then
  ``predict_perturbation(control, method=..., weighting=...)`` for each config of
  :data:`CONFIGS`; its mean layer and one draw of counts are scored;
- scGen: pertpy's ``Scgen`` on log1p CP10k of the same training cells, ``train()`` at its
  defaults, ``predict(celltype_to_predict=t)``;
- model-free: the control cells unchanged; control + the mean log1p-CP10k shift of the donor
  types, uniform over types or weighted by :func:`gmmvae.response.donor_weights` on PCA
  centroids; the real-vs-real split half (the ceiling).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

LABELS_KEY, CONDITION_KEY = "cell_type", "condition"
SOURCE, TARGET = "control", "stimulated"
N_DEGS = 100
N_PCS = 50
# gmmvae prediction configs, simplest first: a tie in the nested selection goes to the first.
# decoder: no donors at all; latent_shift: one latent vector per type; transfer: a decoded
# per-gene response; uniform weighting has no kernel, similarity does.
CONFIGS: dict[str, dict[str, str]] = {
    "gmmvae_decoder": {"method": "decoder"},
    "gmmvae_latent_shift_uniform": {"method": "latent_shift", "weighting": "uniform"},
    "gmmvae_latent_shift_similarity": {"method": "latent_shift", "weighting": "similarity"},
    "gmmvae_transfer_uniform": {"method": "transfer", "weighting": "uniform"},
    "gmmvae_transfer_similarity": {"method": "transfer", "weighting": "similarity"},
}
BASELINES = ("similarity_shift", "mean_shift", "control", "ceiling")


class Split:
    """The cells of one held-out type and what every method is scored against.

    Parameters
    ----------
    adata
        Every cell (counts in ``X``), ``obs`` with :data:`LABELS_KEY` and :data:`CONDITION_KEY`.
    held_out
        The type whose stimulated cells are left out and predicted.
    also_removed
        Types whose stimulated cells are also left out of training (the outer held-out type,
        for an inner split).
    """

    def __init__(self, adata: ad.AnnData, held_out: str, also_removed: tuple[str, ...] = ()):
        from sklearn.decomposition import PCA

        from gmmvae.evaluation import top_degs
        from gmmvae.metrics import log_cp10k

        types = adata.obs[LABELS_KEY].astype(str).to_numpy()
        stim = adata.obs[CONDITION_KEY].astype(str).to_numpy() == TARGET
        is_t = types == held_out
        removed = stim & np.isin(types, [held_out, *also_removed])
        self.held_out = held_out
        self.train = adata[~removed].copy()
        self.control = adata[is_t & ~stim].copy()
        self.stimulated = adata[is_t & stim].copy()
        self.genes = [str(g) for g in adata.var_names]
        self.real = log_cp10k(self.stimulated.X)
        self.real_control = log_cp10k(self.control.X)
        self.degs = top_degs(self.real, self.real_control, self.genes, N_DEGS)
        # PCs of the real cells of the type (both conditions): one space for every method.
        pooled = np.vstack([self.real, self.real_control])
        self.pca = PCA(min(N_PCS, len(pooled) - 1), random_state=0).fit(pooled)

    def score(self, predicted: np.ndarray, real: np.ndarray | None = None) -> dict[str, float]:
        """``gmmvae.evaluation.perturbation_scores`` against the real stimulated cells (or
        ``real``), with the real control cells and energy distance on the type's PCs."""
        from gmmvae.evaluation import perturbation_scores

        real = self.real if real is None else real
        pcs = (self.pca.transform(real), self.pca.transform(predicted))
        return perturbation_scores(
            real, predicted, self.genes, self.degs, control=self.real_control, pcs=pcs
        )


# -------------------------------------------------------------------------------- gmmvae
def train_gmmvae(split: Split, seed: int, max_epochs: int | None):
    """A conditional gmmvae trained on a copy of the split's training cells, at its defaults
    (``max_epochs=None``)."""
    import gmmvae

    train = split.train.copy()
    gmmvae.GMMVAE.setup_anndata(train, labels_key=LABELS_KEY, condition_key=CONDITION_KEY)
    model = gmmvae.GMMVAE(train, seed=seed)
    return model.train(max_epochs, seed=seed, progress_bar=False)


def predict_gmmvae(model, split: Split, config: str, seed: int) -> tuple[ad.AnnData, float]:
    """``model.predict_perturbation`` of the split's control cells under one config of
    :data:`CONFIGS`; (the predicted AnnData, seconds)."""
    start = time.perf_counter()
    pred = model.predict_perturbation(
        split.control, source=SOURCE, target=TARGET, seed=seed, **CONFIGS[config]
    )
    return pred, time.perf_counter() - start


def gmmvae_scores(split: Split, pred: ad.AnnData, *, sampled: bool = True) -> dict[str, float]:
    """Scores of the predicted mean (``layers["gmmvae_log_mean"]``), the share of the top
    DEGs (and of all genes) whose real mean lies in the predicted 90 % interval
    (``coverage_deg``, ``coverage``) and, with ``sampled``, of the sampled counts
    (``log_cp10k(pred.X)``), the latter prefixed ``sampled_``."""
    from gmmvae.metrics import log_cp10k

    scores = split.score(np.asarray(pred.layers["gmmvae_log_mean"]))
    if "gmmvae_mean_lower" in pred.var:  # does the 90 % interval hold the real mean?
        degs = pd.Index(split.genes).get_indexer(split.degs)
        real = split.real.mean(0)
        lower = pred.var["gmmvae_mean_lower"].to_numpy()
        upper = pred.var["gmmvae_mean_upper"].to_numpy()
        inside = (real >= lower) & (real <= upper)
        scores["coverage_deg"] = float(inside[degs].mean())
        scores["coverage"] = float(inside.mean())
    if sampled:
        drawn = split.score(log_cp10k(pred.X))
        scores.update({f"sampled_{k}": v for k, v in drawn.items()})
    return scores


# --------------------------------------------------------------------------------- scGen
SCGEN_OPTIONS = {
    "package": "pertpy",
    "input": "log1p CP10k",
    "n_hidden": 800,
    "n_latent": 100,
    "n_layers": 2,
    "batch_size": 128,
    "early_stopping": False,
}


def _limit_jax_threads(threads: int) -> None:
    """One XLA CPU thread when the benchmark runs single-threaded (read when jax first
    computes, so it works after jax was imported)."""
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ.setdefault("XLA_FLAGS", flags)


def scgen(
    split: Split, seed: int, max_epochs: int | None, threads: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """pertpy's scGen on the split's training cells; (predicted log1p CP10k, row extras).

    Its defaults as a user runs it: ``Scgen(adata)`` (800 hidden, 100 latent, 2 layers),
    ``train()`` (scvi-tools' epoch heuristic, batch size 128, no early stopping),
    ``predict(ctrl_key, stim_key, celltype_to_predict=t)``: the control cells of t plus the
    latent difference of the type-balanced stimulated and control cells, decoded.
    """
    _limit_jax_threads(threads)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)  # "no TPU" on CPU hosts
    import pertpy as pt
    import scvi

    from gmmvae.metrics import log_cp10k

    scvi.settings.seed = seed
    obs = split.train.obs[[LABELS_KEY, CONDITION_KEY]].copy()
    for key in obs:
        obs[key] = obs[key].astype(str).astype("category")
    train = ad.AnnData(log_cp10k(split.train.X), obs=obs, var=pd.DataFrame(index=split.genes))
    pt.tl.Scgen.setup_anndata(train, batch_key=CONDITION_KEY, labels_key=LABELS_KEY)
    model = pt.tl.Scgen(train)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    pred, _ = model.predict(ctrl_key=SOURCE, stim_key=TARGET, celltype_to_predict=split.held_out)
    history = getattr(model, "history", None) or {}
    epochs = len(history["elbo_train"]) if "elbo_train" in history else max_epochs
    return np.asarray(pred.X, dtype=np.float32), {"epochs": epochs}


# ----------------------------------------------------------------------------- baselines
def donor_shift(split: Split, weighting: str, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The model-free shift: per donor type, mean log1p CP10k of its stimulated minus its
    control training cells, weighted by ``gmmvae.response.donor_weights`` (the weighting of
    gmmvae's ``transfer``) on the centroids of 50 PCs of the training cells' log1p CP10k
    (PCA fitted on the training cells). (shift per gene, donor weights by type name.)"""
    from benchmarks.methods import pca
    from gmmvae.metrics import log_cp10k
    from gmmvae.response import donor_weights

    log = log_cp10k(split.train.X)
    types = pd.Categorical(split.train.obs[LABELS_KEY].astype(str))
    codes = np.asarray(types.codes, dtype=np.int64)
    names = list(types.categories)
    conditions = (split.train.obs[CONDITION_KEY].astype(str) == TARGET).to_numpy().astype(int)
    pcs, _ = pca(log, seed)
    t = names.index(split.held_out)
    query = (codes == t) & (conditions == 0)  # the control cells of t, in training
    donors = donor_weights(
        {"mean": pcs, "component": codes},
        conditions,
        {"mean": pcs[query], "component": codes[query]},
        0,
        1,
        len(names),
        weighting=weighting,
    )
    means = [
        [log[(codes == d) & (conditions == c)].mean(0) for c in (1, 0)] for d in donors["donors"]
    ]
    shifts = np.stack([stim - ctrl for stim, ctrl in means])  # (donors, genes)
    weights = donors["weights"][t]
    shown = {names[d]: round(float(w), 4) for d, w in zip(donors["donors"], weights, strict=True)}
    return weights @ shifts, {"donor_weights": shown}


def baseline(split: Split, method: str, seed: int) -> dict[str, Any]:
    """Scores and row extras of one model-free baseline of :data:`BASELINES`."""
    extra: dict[str, Any] = {}
    if method == "ceiling":  # two random halves of the real stimulated cells
        order = np.random.default_rng(seed).permutation(len(split.real))
        half = len(order) // 2
        scores = split.score(split.real[order[half:]], real=split.real[order[:half]])
        return {"scores": scores, "extra": {"n_half": half}}
    predicted = split.real_control
    if method in ("mean_shift", "similarity_shift"):
        weighting = "uniform" if method == "mean_shift" else "similarity"
        shift, extra = donor_shift(split, weighting, seed)
        predicted = predicted + shift[None, :]
    return {"scores": split.score(predicted), "extra": extra}


def baseline_options(method: str) -> dict[str, Any]:
    """Row options of a baseline."""
    if method == "ceiling":
        return {"halves": "random, seeded"}
    if method == "control":
        return {}
    weighting = "uniform" if method == "mean_shift" else "similarity"
    return {"weighting": weighting, "n_comps": N_PCS, "pca_on": "training cells", "min_cells": 5}


# ------------------------------------------------------------------------------- figures
def scatter(split: Split, predicted: np.ndarray, name: str, title: str, folder) -> None:
    """scGen-style scatter of per-gene means, predicted vs real stimulated cells of the type
    (``gmmvae.pl.perturbation_scatter``), to ``folder/perturbation_scatter_<name>_<type>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import gmmvae

    holder = ad.AnnData(np.zeros_like(predicted), var=pd.DataFrame(index=split.genes))
    holder.layers["gmmvae_log_mean"] = predicted
    folder.mkdir(parents=True, exist_ok=True)
    slug = split.held_out.replace(" ", "_")
    gmmvae.pl.perturbation_scatter(
        split.stimulated,
        holder,
        degs=split.degs,
        title=f"{title}: {split.held_out} (held out), predicted vs real stimulated",
        save=str(folder / f"perturbation_scatter_{name}_{slug}.png"),
    )
    plt.close("all")
