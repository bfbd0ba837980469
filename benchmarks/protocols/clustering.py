"""Clustering (DESIGN.md §2): labels hidden, K = number of labels, ARI/NMI/accuracy/purity.

gmmvae (its own cluster assignment, argmax q(y|x)), gmmvae's latent + Leiden (the same
trained model, no second training), PCA(50) + Leiden, PCA(50) + k-means and scVI latent +
Leiden. Every "+ Leiden" is ``gmmvae.clustering.leiden_with_k`` with K clusters.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from benchmarks import methods
from benchmarks.protocols import Result, Settings, Unit, single, timed

NAME = "clustering"
TITLE = "Clustering (labels hidden, K = number of labels)"
DATASETS = ("zheng_fine", "zheng_coarse", "cellbench", "pbmc68k_reduced", "kang")
METHODS = ("gmmvae", "gmmvae_leiden", "pca_leiden", "pca_kmeans", "scvi_leiden")
EXTRA_METHODS = tuple(methods.VARIANT_METHODS)  # --methods only; the "gmmvae variants" table
METRICS = ("ari", "nmi", "accuracy", "purity", "n_clusters")
HEADLINE = "ari"
LOWER_IS_BETTER: tuple[str, ...] = ()
DESCRIPTION = (
    "Labels hidden; K = the number of labels. gmmvae: `GMMVAE.setup_anndata(adata, "
    "batch_key=...)`, `GMMVAE(adata, n_components=K, likelihood=..., seed=seed)"
    ".train(seed=seed)` (its own epochs and early stopping); clusters = argmax q(y|x). "
    "gmmvae latent + Leiden: the same trained model's `get_latent()` clustered like the PCs. "
    "PCA: log1p CP10k (pbmc68k: as shipped), `sc.pp.pca(n_comps=50)`. scVI: "
    "`SCVI(adata)` with `batch_key` where the dataset has one, `.train()` with its defaults. "
    "Leiden: `gmmvae.clustering.leiden_with_k` (scanpy kNN graph, 15 neighbours, resolution "
    "bisected, then merged/split to exactly K). k-means: scikit-learn, `n_init=10`. Accuracy "
    "after Hungarian matching; purity is the seed model's measure, shown beside it. "
    "`seconds`: wall time of the whole method (PCA, training and clustering included). "
    "gmmvae variants (`--methods gmmvae_shared gmmvae_dirichlet`): the gmmvae row's training "
    "with `variant='shared'` / `'dirichlet'`, clusters = argmax q(y|x)."
)


def scores(truth, clusters) -> dict[str, float]:
    from gmmvae import metrics

    return {**metrics.clustering_scores(truth, clusters), "n_clusters": len(np.unique(clusters))}


def run_gmmvae(ds, seed: int, max_epochs: int | None, todo: list[str]) -> dict[str, Result]:
    """One gmmvae training; its own clusters and/or its latent + Leiden."""
    start = time.perf_counter()
    model = methods.gmmvae_model(
        ds.adata, ds, seed=seed, max_epochs=max_epochs, n_components=ds.n_types
    )
    clusters = model.predict(model.adata).to_numpy().argmax(1)
    trained = time.perf_counter() - start
    common = {"epochs": methods.gmmvae_extra(model)["epochs"], "extra": {}}
    out: dict[str, Result] = {}
    if "gmmvae" in todo:
        out["gmmvae"] = {"scores": scores(ds.truth, clusters), "seconds": trained, **common}
    if "gmmvae_leiden" in todo:
        start = time.perf_counter()
        latent = methods.leiden(model.get_latent(model.adata), ds.n_types, seed)
        seconds = trained + time.perf_counter() - start
        out["gmmvae_leiden"] = {"scores": scores(ds.truth, latent), "seconds": seconds, **common}
    return out


def run_variant(ds, seed: int, method: str, max_epochs: int | None) -> Result:
    """gmmvae with another variant, trained like the default; its own clusters."""

    def fn():
        model = methods.gmmvae_model(
            ds.adata,
            ds,
            seed=seed,
            max_epochs=max_epochs,
            n_components=ds.n_types,
            variant=methods.VARIANT_METHODS[method],
        )
        clusters = model.predict(model.adata).to_numpy().argmax(1)
        return scores(ds.truth, clusters), methods.gmmvae_extra(model)

    return timed(fn)


def run_pca(ds, seed: int, method: str) -> Result:
    def fn():
        pcs, _ = methods.pca(ds.log_expression(), seed)
        cluster = methods.leiden if method == "pca_leiden" else methods.kmeans
        return scores(ds.truth, cluster(pcs, ds.n_types, seed)), {}

    return timed(fn)


def run_scvi(ds, seed: int, max_epochs: int | None, threads: int) -> Result:
    def fn():
        latent, epochs, size = methods.scvi_latent(
            ds, seed=seed, threads=threads, max_epochs=max_epochs
        )
        clusters = methods.leiden(latent, ds.n_types, seed)
        return scores(ds.truth, clusters), {"epochs": epochs, "batch_size": size}

    return timed(fn)


def units(ds, seed: int, settings: Settings) -> list[Unit]:
    """The units of one dataset and seed: one per training (and per epoch cap)."""
    wanted = [m for m in (*METHODS, *EXTRA_METHODS) if m in settings.methods]
    out = []
    k = {"n_components": ds.n_types}
    for max_epochs in settings.epochs:
        gm = {
            m: methods.gmmvae_options(ds, max_epochs, **k)
            for m in wanted
            if m in ("gmmvae", "gmmvae_leiden")
        }
        if gm:
            out.append(Unit(ds.name, "", seed, gm, partial(run_gmmvae, ds, seed, max_epochs)))
        for m in (m for m in EXTRA_METHODS if m in wanted):
            options = methods.gmmvae_options(
                ds, max_epochs, **k, variant=methods.VARIANT_METHODS[m]
            )
            run = partial(run_variant, ds, seed, m, max_epochs)
            out.append(Unit(ds.name, "", seed, {m: options}, single(m, run)))
        if "scvi_leiden" in wanted:
            options = methods.scvi_options(ds, max_epochs, n_clusters=ds.n_types)
            run = partial(run_scvi, ds, seed, max_epochs, settings.threads)
            out.append(
                Unit(ds.name, "", seed, {"scvi_leiden": options}, single("scvi_leiden", run))
            )
    for m in ("pca_leiden", "pca_kmeans"):
        if m in wanted:
            options = {"n_comps": methods.N_PCS, "n_clusters": ds.n_types}
            run = partial(run_pca, ds, seed, m)
            out.append(Unit(ds.name, "", seed, {m: options}, single(m, run)))
    return out
