"""Reference → query annotation (DESIGN.md §2): train on labelled reference cells, predict
the query cells; accuracy, macro-F1 and ECE on the query.

Settings: a stratified 50/50 split of the Zheng cells (fine labels on the exclusive subset,
coarse labels on all cells; the seed draws the split), and Kang control (reference) →
stimulated (query), a real shift whose labels were made by Leiden on PCA (reported apart).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from benchmarks import methods
from benchmarks.protocols import (
    Result,
    Settings,
    Unit,
    classification_scores,
    epoch_options,
    single,
    stratified_split,
    timed,
)

NAME = "query"
TITLE = "Reference → query annotation (scores on the query)"
DATASETS = ("zheng_fine", "zheng_coarse", "kang")
METHODS = ("gmmvae", "scanvi", "celltypist", "logreg")
METRICS = ("accuracy", "macro_f1", "ece")
HEADLINE = "macro_f1"
LOWER_IS_BETTER = ("ece",)
SPLIT = "50/50 split"
SHIFT = "control → stimulated"
DESCRIPTION = (
    "Zheng: a stratified random 50/50 split per seed (reference / query). Kang: reference the "
    "control cells, query the IFN-β-stimulated cells (same for every seed; the seed sets each "
    "method's seed). gmmvae: trained on the reference with every label (`labels_key`, "
    "`batch_key` where the dataset has one; no condition, the reference has one), then "
    "`model.predict(query)`; a free component counts as a wrong label. scANVI: scVI then "
    "`SCANVI.from_scvi_model` on the reference with defaults; the reference model predicts a "
    "query from the same batch, and for Kang the condition is scVI's `batch_key` and the query "
    "is mapped by scArches (`SCANVI.load_query_data`, query training with defaults and "
    "`weight_decay=0`). CellTypist: `celltypist.train` on the reference's log1p CP10k "
    "(`check_expression=False`), its confidence the top one-vs-rest probability. Logistic "
    "regression: PCA(50) fitted on the reference, the query projected on it."
)


def split(ds, seed: int) -> tuple[str, np.ndarray, bool]:
    """(task name, boolean query mask, whether the query brings a new condition)."""
    if ds.name == "kang":
        return SHIFT, (ds.adata.obs["condition"] == "stimulated").to_numpy(), True
    return SPLIT, stratified_split(ds.truth, 0.5, seed), False


def run(ds, seed: int, method: str, max_epochs, threads: int) -> Result:
    _, query_mask, surgery = split(ds, seed)
    truth = ds.truth.to_numpy()[query_mask]

    def fn():
        probs, extra = methods.transfer(
            ds,
            ~query_mask,
            query_mask,
            method,
            seed=seed,
            threads=threads,
            max_epochs=max_epochs,
            surgery=surgery,
        )
        extra = {k: v for k, v in extra.items() if k not in ("novel", "free")}
        predicted, confidence = methods.top(probs)
        scores = classification_scores(truth, predicted, confidence)
        extra.update(n_reference=int((~query_mask).sum()), n_query=int(query_mask.sum()))
        return scores, extra

    return timed(fn)


def units(ds, seed: int, settings: Settings) -> list[Unit]:
    task, _, surgery = split(ds, seed)
    out = []
    for method in (m for m in METHODS if m in settings.methods):
        for max_epochs in epoch_options(settings, method):
            fn = partial(run, ds, seed, method, max_epochs, settings.threads)
            opts = {method: methods.transfer_options(ds, method, max_epochs, surgery)}
            out.append(Unit(ds.name, task, seed, opts, single(method, fn)))
    return out
