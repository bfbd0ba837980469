"""Semi-supervised annotation (DESIGN.md §2): a stratified fraction of labels kept.

``gmmvae.datasets.mask_labels(truth, p, seed=seed)`` keeps p of each type (at least one);
accuracy, macro-F1 and ECE are scored on the hidden cells. gmmvae (with ``labels_key``),
scANVI (scVI pre-trained with defaults, then ``SCANVI.from_scvi_model``), logistic
regression on 50 PCs (PCA on all cells, the classifier on the labelled ones) and CellTypist
(trained on the labelled cells).
"""

from __future__ import annotations

from functools import partial

from benchmarks import methods
from benchmarks.protocols import (
    Result,
    Settings,
    Unit,
    classification_scores,
    epoch_options,
    single,
    timed,
)

NAME = "semi"
TITLE = "Semi-supervised annotation (a stratified fraction of labels kept)"
DATASETS = ("zheng_fine", "zheng_coarse", "cellbench", "pbmc68k_reduced")
METHODS = ("gmmvae", "scanvi", "logreg", "celltypist")
EXTRA_METHODS = tuple(methods.VARIANT_METHODS)  # --methods only; the "gmmvae variants" table
FRACTIONS = (0.01, 0.05, 0.1)
METRICS = ("accuracy", "macro_f1", "ece")
HEADLINE = "accuracy"
LOWER_IS_BETTER = ("ece",)
DESCRIPTION = (
    "A stratified fraction p of the labels kept (`gmmvae.datasets.mask_labels(truth, p, "
    "seed=seed)`, at least one per type), the rest hidden and scored: accuracy, macro-F1 and "
    "ECE (top-class confidence, 15 bins). gmmvae: `setup_anndata(labels_key=..., batch_key=...)`, "
    "`GMMVAE(adata, likelihood=..., seed=seed).train(seed=seed)` (labels + 1 free component; "
    "a cell assigned to the free component counts as wrong). scANVI: `SCVI` trained with "
    "defaults on all cells, then `SCANVI.from_scvi_model(..., unlabeled_category)` trained "
    "with defaults. Logistic regression: PCA(50) of log1p CP10k fitted on all cells, "
    "classifier on the labelled cells (`max_iter=5000`). CellTypist: `celltypist.train` on "
    "the labelled cells' log1p CP10k (`check_expression=False`), annotating the hidden ones. "
    "gmmvae variants (`--methods gmmvae_shared gmmvae_dirichlet`): the gmmvae row's training "
    "with `variant='shared'` / `'dirichlet'`."
)


def task_name(fraction: float) -> str:
    return f"{fraction:.0%} labels"


def masked_labels(ds, fraction: float, seed: int):
    import gmmvae

    return gmmvae.datasets.mask_labels(
        ds.truth, fraction, seed=seed, unlabeled_category=methods.UNKNOWN
    )


def run(ds, fraction: float, seed: int, method: str, max_epochs, threads: int) -> Result:
    """One method on one label mask; scores on the hidden cells."""
    masked = masked_labels(ds, fraction, seed)
    hidden = (masked == methods.UNKNOWN).to_numpy()
    truth = ds.truth.to_numpy()

    def fn():
        probs, extra = predict(ds, masked, hidden, method, seed, max_epochs, threads)
        predicted, confidence = methods.top(probs)
        extra["n_labelled"] = int((~hidden).sum())
        return classification_scores(truth[hidden], predicted, confidence), extra

    return timed(fn)


def predict(ds, masked, hidden, method: str, seed: int, max_epochs, threads: int):
    """(probabilities of the hidden cells, row extras)."""
    if method == "gmmvae" or method in methods.VARIANT_METHODS:
        adata = ds.adata.copy()
        adata.obs["masked"] = masked.to_numpy()
        variant = {"variant": methods.VARIANT_METHODS[method]} if method != "gmmvae" else {}
        model = methods.gmmvae_model(
            adata, ds, seed=seed, max_epochs=max_epochs, labels_key="masked", **variant
        )
        probs = model.predict(model.adata)
        return probs[hidden], methods.gmmvae_extra(model)
    if method == "scanvi":
        adata = ds.adata.copy()
        adata.obs["masked"] = masked.to_numpy()
        probs, epochs, size = methods.scanvi(
            adata, ds, labels_key="masked", seed=seed, threads=threads, max_epochs=max_epochs
        )
        extra = {"epochs": sum(epochs.values()), "epochs_detail": epochs, "batch_size": size}
        return probs[hidden], extra
    log, truth = ds.log_expression(), ds.truth.to_numpy()
    if method == "logreg":
        pcs, _ = methods.pca(log, seed)
        return methods.logistic_regression(pcs[~hidden], truth[~hidden], pcs[hidden], seed), {}
    if method == "celltypist":
        probs = methods.celltypist_probs(
            log[~hidden], truth[~hidden], log[hidden], ds.adata.var_names, seed
        )
        return probs, {}
    raise ValueError(f"unknown semi-supervised method {method!r}")


def options(ds, method: str, max_epochs) -> dict:
    if method == "gmmvae":
        return methods.gmmvae_options(ds, max_epochs)
    if method in methods.VARIANT_METHODS:
        return methods.gmmvae_options(ds, max_epochs, variant=methods.VARIANT_METHODS[method])
    if method == "scanvi":
        return methods.scvi_options(ds, max_epochs)
    if method == "logreg":
        return {
            "n_comps": methods.N_PCS,
            "pca_on": "all cells",
            "max_iter": methods.LOGREG_MAX_ITER,
        }
    return {"check_expression": False, "feature_selection": False}


def units(ds, seed: int, settings: Settings, fractions=FRACTIONS) -> list[Unit]:
    out = []
    for fraction in fractions:
        for method in (m for m in (*METHODS, *EXTRA_METHODS) if m in settings.methods):
            for max_epochs in epoch_options(settings, method):
                fn = partial(run, ds, fraction, seed, method, max_epochs, settings.threads)
                unit_methods = {method: options(ds, method, max_epochs)}
                out.append(
                    Unit(ds.name, task_name(fraction), seed, unit_methods, single(method, fn))
                )
    return out
