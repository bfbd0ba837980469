"""Novelty (DESIGN.md §2): one population held out of the reference; can a method tell its
query cells from the known types?

On the Zheng fine populations (exclusive subset), the stratified 50/50 split of the query
protocol, with every cell of the held-out type removed from the reference (its query cells
stay). Held out in turn: B, CD14 Mono and NK, chosen before any result was seen because each is
its own lineage (B lymphoid, myeloid, innate lymphoid) with no near relative left in the
reference, so "novel" means a new cell type rather than a finer split of a known one (holding
out one CD4 T subset would ask that), and they span the sizes of the populations (129, 299,
702 cells). Scores on the query: AUROC of the novelty score for held-out-type cells vs the
rest (for every method with 1 - top confidence, and with the method's own novelty score:
gmmvae's ``obs["gmmvae_novelty_score"]``, the others' 1 - top confidence), the flags' catch
rate and false-flag rate, and accuracy on the known-type cells.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from benchmarks import methods
from benchmarks.protocols import (
    Result,
    Settings,
    Unit,
    epoch_options,
    single,
    stratified_split,
    timed,
)

NAME = "novelty"
TITLE = "Novelty: one population held out of the reference"
DATASETS = ("zheng_fine",)
METHODS = ("gmmvae", "scanvi", "celltypist", "logreg")
HELD_OUT = ("B", "CD14 Mono", "NK")
METRICS = (
    "auroc_own",
    "auroc",
    "auroc_p_free",
    "catch_rate",
    "false_flag_rate",
    "known_accuracy",
)
HEADLINE = "auroc_own"
LOWER_IS_BETTER = ("false_flag_rate",)
DESCRIPTION = (
    "Zheng fine populations; the 50/50 split of the query table with every cell of the "
    "held-out type removed from the reference; methods trained as in the query table. "
    "`auroc_own`: AUROC of the method's own novelty score for held-out-type query cells vs "
    "known-type query cells (the summary uses it): gmmvae's `obs['gmmvae_novelty_score']` "
    "(mean latent distance to the 15 nearest training cells), 1 - top-class confidence for "
    "the others, which have no other score. `auroc`: AUROC of 1 - top-class confidence for "
    "every method. `auroc_p_free`: "
    "gmmvae's probability of its free component(s) (the columns of `model.predict(query)` "
    "not in the labels). `catch_rate` / `false_flag_rate`: share of held-out-type / known-type "
    "query cells flagged by the method's own call: gmmvae's `obs['gmmvae_novel']` (the "
    "novelty score above the 95 % quantile of its validation cells' scores, or a free "
    "component wins), CellTypist's 'Unassigned' of its "
    "probability-match mode (no class above 0.5); scANVI and logistic regression have no such "
    "call (–). `known_accuracy`: accuracy on the known-type query cells. Held out: B, CD14 "
    "Mono and NK, each its own lineage with no near relative left in the reference (chosen "
    "before any result was seen)."
)


def task_name(held_out: str) -> str:
    return f"held out: {held_out}"


def run(ds, held_out: str, seed: int, method: str, max_epochs, threads: int) -> Result:
    truth = ds.truth.to_numpy()
    query_mask = stratified_split(ds.truth, 0.5, seed)
    ref_mask = ~query_mask & (truth != held_out)
    novel = truth[query_mask] == held_out

    def fn():
        if method == "gmmvae":
            probs, extra = _gmmvae(ds, ref_mask, query_mask, seed, max_epochs)
        else:
            probs, extra = methods.transfer(
                ds, ref_mask, query_mask, method, seed=seed, threads=threads, max_epochs=max_epochs
            )
        return scores(probs, extra, truth[query_mask], novel, method), _clean(extra)

    return timed(fn)


def _gmmvae(ds, ref_mask, query_mask, seed: int, max_epochs):
    """gmmvae trained on the reference as ``methods.transfer`` trains it; the query's
    probabilities, flags and novelty scores."""
    key = ds.labels_key
    ref = ds.adata[ref_mask].copy()
    ref.obs[key] = ref.obs[key].astype(str).astype("category")
    query = ds.adata[query_mask].copy()
    model = methods.gmmvae_model(ref, ds, seed=seed, max_epochs=max_epochs, labels_key=key)
    probs = model.predict(query)
    extra = {
        **methods.gmmvae_extra(model),
        "novel": query.obs["gmmvae_novel"].to_numpy(bool),
        "novelty_score": query.obs["gmmvae_novelty_score"].to_numpy(),
        "free": [c for c in model.component_names if c.startswith("free_")],
        "novelty_score_threshold": query.uns["gmmvae"]["params"]["novelty_score_threshold"],
    }
    return probs.reset_index(drop=True), extra


def scores(probs, extra: dict, truth: np.ndarray, novel: np.ndarray, method: str) -> dict:
    from sklearn.metrics import roc_auc_score

    predicted, confidence = methods.top(probs)
    own = extra["novelty_score"] if method == "gmmvae" else 1.0 - confidence
    out = {
        "auroc_own": float(roc_auc_score(novel, own)),
        "auroc": float(roc_auc_score(novel, 1.0 - confidence)),
        "known_accuracy": float((predicted[~novel] == truth[~novel]).mean()),
        "n_novel": int(novel.sum()),
    }
    flag = None
    if method == "gmmvae":
        out["auroc_p_free"] = float(roc_auc_score(novel, probs[extra["free"]].sum(1)))
        flag = extra["novel"]
    elif method == "celltypist":
        flag = confidence < 0.5
    if flag is not None:
        out["catch_rate"] = float(flag[novel].mean())
        out["false_flag_rate"] = float(flag[~novel].mean())
    return out


def _clean(extra: dict) -> dict:
    return {k: v for k, v in extra.items() if k not in ("novel", "free", "novelty_score")}


def units(ds, seed: int, settings: Settings, held_out=HELD_OUT) -> list[Unit]:
    out = []
    for held in held_out:
        for method in (m for m in METHODS if m in settings.methods):
            for max_epochs in epoch_options(settings, method):
                fn = partial(run, ds, held, seed, method, max_epochs, settings.threads)
                opts = {method: methods.transfer_options(ds, method, max_epochs, False)}
                out.append(Unit(ds.name, task_name(held), seed, opts, single(method, fn)))
    return out
