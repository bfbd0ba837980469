"""One function per method, each run as a user runs it (its own defaults unless stated).

- gmmvae: ``GMMVAE.setup_anndata`` + ``GMMVAE(adata, ...).train(seed=seed)``: its own epochs
  (``min(400, 20000 / n * 400)``) and early stopping;
- PCA: log1p CP10k, ``sc.pp.pca(n_comps=50)``; Leiden via ``gmmvae.clustering.leiden_with_k``
  for every "+ Leiden" method; k-means from scikit-learn;
- scVI / scANVI (scvi-tools 1.4): defaults; scANVI from the scVI model pre-trained with
  defaults; scArches (``SCANVI.load_query_data``) when the query brings a new batch. The batch
  size is scvi-tools' 128 unless that leaves a one-cell training minibatch (scANVI's BatchNorm
  crashes on one); then the largest smaller size that does not (row ``extra.batch_size``);
- CellTypist 1.7: ``celltypist.train(..., check_expression=False)`` on the reference's log1p
  CP10k, ``celltypist.annotate(model=...)``; nothing is downloaded;
- logistic regression (scikit-learn defaults, ``max_iter=5000``) on 50 PCs.

Every function takes an explicit ``seed``; ``max_epochs=None`` means the method's default.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

UNKNOWN = "Unknown"
# The covariate a query brings that its reference lacks (Kang: stimulated vs control cells).
SURGERY_BATCH_KEY = "condition"
N_PCS = 50
LOGREG_MAX_ITER = 5000
NAMES = {
    "gmmvae": "gmmvae",
    "gmmvae_leiden": "gmmvae latent + Leiden",
    "pca_leiden": "PCA + Leiden",
    "pca_kmeans": "PCA + k-means",
    "scvi_leiden": "scVI + Leiden",
    "scanvi": "scANVI",
    "celltypist": "CellTypist",
    "logreg": "logistic regression",
    "gmmvae_shared": "gmmvae shared",
    "gmmvae_dirichlet": "gmmvae dirichlet (seed model)",
    # synthetic cells
    "scvi_ppc": "scVI posterior predictive",
    "scvi_prior": "scVI prior samples",
    "real_vs_real": "real vs real (control)",
    "logreg_synthetic": "logistic regression + synthetic",
    "gmmvae_synthetic": "gmmvae + synthetic",
    # speed
    "gmmvae_full": "gmmvae, all K decoded",
    "scvi": "scVI",
    "gmmvae_loader": "gmmvae backed-h5ad loader",
    "annbatch": "annbatch Loader",
}
GMMVAE_METHODS = ("gmmvae", "gmmvae_leiden")
# The same training as "gmmvae" with another variant=; own table, not in the summary.
VARIANT_METHODS = {"gmmvae_shared": "shared", "gmmvae_dirichlet": "dirichlet"}
# Methods whose results depend on gmmvae's code although their ids do not start with gmmvae
# (e.g. a classifier trained on gmmvae's synthetic cells).
USES_GMMVAE: set[str] = {"logreg_synthetic", "similarity_shift", "mean_shift"}
TRAINED = ("gmmvae", "gmmvae_leiden", "scvi_leiden", "scanvi", *VARIANT_METHODS)  # max_epochs


def scope(method: str) -> str:
    """Fingerprint scope of a method's rows (see :mod:`benchmarks.store`): "gmmvae" for
    every ``gmmvae*`` id and :data:`USES_GMMVAE`, else "peer"."""
    return "gmmvae" if method.startswith("gmmvae") or method in USES_GMMVAE else "peer"


def top(probs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(label of the most probable column, its probability) per row."""
    p = probs.to_numpy()
    return probs.columns.to_numpy().astype(str)[p.argmax(1)], p.max(1)


# ------------------------------------------------------------------------------------ gmmvae
def gmmvae_options(ds, max_epochs: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "likelihood": ds.likelihood,
        "batch_key": ds.batch_key,
        "max_epochs": max_epochs,
        **extra,
    }


def gmmvae_model(
    adata,
    ds,
    *,
    seed: int,
    max_epochs: int | None = None,
    labels_key: str | None = None,
    n_components: int | None = None,
    condition_key: str | None = None,
    **model_options: Any,
):
    """A gmmvae trained on a copy of ``adata`` (the model holds the copy in ``model.adata``);
    ``model_options`` go to ``GMMVAE(...)`` (e.g. ``variant=``)."""
    import gmmvae

    adata = adata.copy()
    gmmvae.GMMVAE.setup_anndata(
        adata,
        labels_key=labels_key,
        batch_key=ds.batch_key,
        condition_key=condition_key,
        unlabeled_category=UNKNOWN,
    )
    model = gmmvae.GMMVAE(
        adata, n_components=n_components, likelihood=ds.likelihood, seed=seed, **model_options
    )
    return model.train(max_epochs, seed=seed, progress_bar=False)


def gmmvae_extra(model) -> dict[str, Any]:
    """Epochs run and the calibration temperature of a trained gmmvae (``train_params``,
    which the README documents for the temperature)."""
    params = model.train_params
    return {
        "epochs": int(params.get("epochs_run", len(model.history))),
        "temperature": float(params.get("temperature", 1.0)),
    }


# -------------------------------------------------------------------------------- PCA based
def pca(log_ref: np.ndarray, seed: int, query: np.ndarray | None = None):
    """50 PCs of ``log_ref`` (``sc.pp.pca``) and, if given, ``query`` projected on them.

    Returns
    -------
    (reference PCs, query PCs or None), float arrays (cells x components).
    """
    import scanpy as sc

    n_comps = min(N_PCS, log_ref.shape[0] - 1, log_ref.shape[1] - 1)
    holder = sc.AnnData(log_ref)
    sc.pp.pca(holder, n_comps=n_comps, random_state=seed)
    projected = None
    if query is not None:
        projected = (query - log_ref.mean(0)) @ holder.varm["PCs"]
    return holder.obsm["X_pca"], projected


def leiden(representation: np.ndarray, k: int, seed: int) -> np.ndarray:
    from gmmvae.clustering import leiden_with_k

    return leiden_with_k(representation, k, seed=seed)


def kmeans(representation: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=10, random_state=seed).fit_predict(representation)


def logistic_regression(
    x_train: np.ndarray, y_train, x_test: np.ndarray, seed: int
) -> pd.DataFrame:
    """Class probabilities of the test cells (columns: classes)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(max_iter=LOGREG_MAX_ITER, random_state=seed)
    lr.fit(x_train, np.asarray(y_train).astype(str))
    return pd.DataFrame(lr.predict_proba(x_test), columns=lr.classes_)


def celltypist_probs(
    ref_log: np.ndarray, ref_labels, query_log: np.ndarray, genes, seed: int
) -> pd.DataFrame:
    """CellTypist trained on the reference, probabilities of the query cells.

    Its probabilities are one-vs-rest sigmoids (need not sum to 1); the top one is the
    confidence ``celltypist.annotate`` reports.
    """
    import anndata as ad
    import celltypist

    var = pd.DataFrame(index=[str(g) for g in genes])
    ref = ad.AnnData(ref_log, var=var)
    ref.obs["label"] = np.asarray(ref_labels).astype(str)
    state = np.random.get_state()  # noqa: NPY002 (CellTypist draws from the global RNG)
    np.random.seed(seed)  # noqa: NPY002
    try:
        model = celltypist.train(ref, "label", check_expression=False, n_jobs=1)
        result = celltypist.annotate(
            ad.AnnData(query_log, var=var), model=model, majority_voting=False
        )
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return result.probability_matrix.reset_index(drop=True)


# ------------------------------------------------------------------------------ scVI family
def scvi_options(ds, max_epochs: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "gene_likelihood": ds.scvi_likelihood,
        "batch_key": ds.batch_key,
        "max_epochs": max_epochs,
        "batch_size": "128 unless a one-cell minibatch",
        **extra,
    }


def scvi_batch_size(n_cells: int, n_labelled: int = 0, default: int = 128) -> int:
    """scvi-tools' default batch size, or the largest smaller one that leaves no one-cell
    training minibatch (scvi-tools trains on ceil(0.9 n) cells; scANVI splits labelled and
    unlabelled cells apart and also iterates the labelled ones alone)."""
    n_unlabelled = n_cells - n_labelled
    sizes = {math.ceil(0.9 * n_cells), math.floor(0.9 * n_cells)}
    for f in (math.ceil, math.floor) if n_labelled else ():
        sizes.add(f(0.9 * n_labelled))
        for g in (math.ceil, math.floor):
            sizes.add(f(0.9 * n_labelled) + g(0.9 * n_unlabelled))
    for size in range(default, 16, -1):
        if all(s % size != 1 for s in sizes if s > 0):
            return size
    return default


def _scvi(seed: int, threads: int):
    import scvi

    scvi.settings.seed = seed
    scvi.settings.num_threads = threads
    scvi.settings.dl_num_workers = 0
    return scvi


def _train(model, max_epochs: int | None, batch_size: int, **kwargs: Any) -> int:
    """Train a scvi-tools model with its defaults; the number of epochs run."""
    model.train(max_epochs=max_epochs, batch_size=batch_size, enable_progress_bar=False, **kwargs)
    return len(model.history["elbo_train"])


def scvi_latent(ds, *, seed: int, threads: int, max_epochs: int | None = None):
    """scVI latent of every cell (labels hidden); (latent, epochs, batch size)."""
    scvi = _scvi(seed, threads)
    adata = ds.adata.copy()
    scvi.model.SCVI.setup_anndata(adata, batch_key=ds.batch_key)
    model = scvi.model.SCVI(adata, gene_likelihood=ds.scvi_likelihood)
    size = scvi_batch_size(adata.n_obs)
    epochs = _train(model, max_epochs, size)
    return model.get_latent_representation(), epochs, size


def scanvi(
    ref,
    ds,
    *,
    labels_key: str,
    seed: int,
    threads: int,
    max_epochs: int | None = None,
    query=None,
    surgery: bool = False,
    batch_key: str | None = None,
) -> tuple[pd.DataFrame, dict[str, int], int]:
    """scANVI from an scVI model pre-trained on ``ref`` (unlabelled cells: ``Unknown``).

    Predicts ``ref`` itself (semi-supervised) or ``query``: directly with the reference model,
    or, with ``surgery`` (the query holds a batch the reference lacks, in ``batch_key``,
    default ``ds.batch_key``), by scArches: ``SCANVI.load_query_data`` and query training with
    ``weight_decay=0`` as the scvi-tools tutorial does.

    Returns
    -------
    (soft predictions, epochs per phase, batch size).
    """
    scvi = _scvi(seed, threads)
    ref = ref.copy()
    n_labelled = int((ref.obs[labels_key].astype(str) != UNKNOWN).sum())
    size = scvi_batch_size(ref.n_obs, n_labelled)
    batch_key = ds.batch_key if batch_key is None else batch_key
    scvi.model.SCVI.setup_anndata(ref, labels_key=labels_key, batch_key=batch_key)
    vae = scvi.model.SCVI(ref, gene_likelihood=ds.scvi_likelihood)
    epochs = {"scvi": _train(vae, max_epochs, size)}
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNKNOWN)
    epochs["scanvi"] = _train(model, max_epochs, size)
    if query is None:
        return model.predict(soft=True), epochs, size
    query = query.copy()
    query.obs[labels_key] = UNKNOWN  # query labels are never seen
    if not surgery:
        return model.predict(query, soft=True), epochs, size
    scvi.model.SCANVI.prepare_query_anndata(query, model)
    mapped = scvi.model.SCANVI.load_query_data(query, model)
    epochs["query"] = _train(
        mapped, max_epochs, scvi_batch_size(query.n_obs), plan_kwargs={"weight_decay": 0.0}
    )
    return mapped.predict(soft=True), epochs, size


# ------------------------------------------------------------------- reference -> query
def transfer_options(ds, method: str, max_epochs: int | None, surgery: bool) -> dict[str, Any]:
    """Options of :func:`transfer` for ``method`` (what a row's key records)."""
    if method == "gmmvae":
        return gmmvae_options(ds, max_epochs)
    if method == "scanvi":
        batch = SURGERY_BATCH_KEY if surgery else ds.batch_key
        return {**scvi_options(ds, max_epochs), "batch_key": batch, "scarches": surgery}
    if method == "logreg":
        return {"n_comps": N_PCS, "pca_on": "reference", "max_iter": LOGREG_MAX_ITER}
    return {"check_expression": False, "feature_selection": False}


def transfer(
    ds,
    ref_mask: np.ndarray,
    query_mask: np.ndarray,
    method: str,
    *,
    seed: int,
    threads: int,
    max_epochs: int | None = None,
    surgery: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train ``method`` on the labelled reference cells, predict the query cells.

    Returns
    -------
    (probabilities of the query cells, one column per class or component, in query order;
    row extras: epochs and method-specific fields such as gmmvae's ``novel`` flags).
    """
    key = ds.labels_key
    ref = ds.adata[ref_mask].copy()
    # Only the types in the reference (a held-out type must not leave a category behind).
    ref.obs[key] = ref.obs[key].astype(str).astype("category")
    query = ds.adata[query_mask].copy()
    if method == "gmmvae":
        model = gmmvae_model(ref, ds, seed=seed, max_epochs=max_epochs, labels_key=key)
        probs = model.predict(query)
        extra = {
            **gmmvae_extra(model),
            "novel": query.obs["gmmvae_novel"].to_numpy(bool),
            "free": [c for c in model.component_names if c.startswith("free_")],
        }
        return probs.reset_index(drop=True), extra
    if method == "scanvi":
        probs, epochs, size = scanvi(
            ref,
            ds,
            labels_key=key,
            seed=seed,
            threads=threads,
            max_epochs=max_epochs,
            query=query,
            surgery=surgery,
            batch_key=SURGERY_BATCH_KEY if surgery else None,
        )
        extra = {"epochs": sum(epochs.values()), "epochs_detail": epochs, "batch_size": size}
        return probs.reset_index(drop=True), extra
    log = ds.log_expression()
    truth = ds.truth.to_numpy()
    if method == "celltypist":
        probs = celltypist_probs(
            log[ref_mask], truth[ref_mask], log[query_mask], ds.adata.var_names, seed
        )
        return probs, {}
    if method == "logreg":
        pcs_ref, pcs_query = pca(log[ref_mask], seed, log[query_mask])
        return logistic_regression(pcs_ref, truth[ref_mask], pcs_query, seed), {}
    raise ValueError(f"{method!r} cannot map a query; use gmmvae, scanvi, celltypist or logreg.")
