"""Integration: how well a latent embedding mixes batches and keeps the biology apart.

Per dataset and seed, every method embeds the same cells; each embedding is scored on its own
with ``scib-metrics`` (Luecken et al. 2022, as its ``Benchmarker`` does, metric by metric):

- batch correction: batch ASW (``silhouette_batch``), iLISI (90 neighbours), kBET per label
  (50), graph connectivity (15), PCR comparison against the unintegrated PCA;
- bio conservation: isolated labels (ASW), NMI and ARI of k-means with K = number of labels,
  cell-type ASW (``silhouette_label``), cLISI (90);
- ``batch`` / ``bio``: the mean of each group, ``total = 0.4 batch + 0.6 bio`` (unscaled, as
  ``Benchmarker.get_results()``).

Datasets: ``cellbench`` (plate as the batch, the genotype's cell line as the label) and
``kang`` (condition, control vs IFN-β-stimulated, as the batch; its Leiden-made cell types as
the label, reported apart). Methods, each at its defaults: gmmvae (``batch_key`` = the batch),
scVI (``batch_key`` = the batch), Harmony (harmonypy on the PCA) and the unintegrated PCA(50)
of log1p CP10k, the baseline. The kNN graph of the scores is pynndescent with
``random_state=0``, as the ``Benchmarker``'s, the same for every method and seed.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any

import numpy as np

from benchmarks import methods
from benchmarks.protocols import Result, Settings, Unit, single

NAME = "integration"
TITLE = "Integration: batch mixing and biology conservation of the latent space (scib-metrics)"
DATASETS = ("cellbench", "kang")
METHODS = ("gmmvae", "scvi", "harmony", "pca")
# Display names of the methods that methods.NAMES lacks (report.py merges them).
NAMES = {"harmony": "Harmony", "pca": "PCA (unintegrated)"}
# The obs column used as the batch to correct for, per dataset.
BATCH_KEYS = {"cellbench": "plate", "kang": "condition"}
BATCH_METRICS = ("asw_batch", "ilisi", "kbet", "graph_conn", "pcr")
BIO_METRICS = ("iso_labels", "nmi", "ari", "asw_label", "clisi")
METRICS = ("total", "batch", "bio", *BATCH_METRICS, *BIO_METRICS)
HEADLINE = "total"
LOWER_IS_BETTER: tuple[str, ...] = ()
BATCH_WEIGHT = 0.4  # scib's total: 0.4 batch correction + 0.6 bio conservation
NEIGHBOURS = (15, 50, 90)  # the Benchmarker's kNN sizes
DESCRIPTION = (
    "Each method embeds every cell of the dataset (labels unseen); each embedding is scored on "
    "its own with scib-metrics, metric by metric as its `Benchmarker` does (scores in [0, 1], "
    "higher is better, not min-max scaled). Batch: cellbench `plate` (3 plates); kang "
    "`condition` (control / IFN-β-stimulated), so on kang batch mixing rewards removing the "
    "stimulation, and the cell types are Leiden clusters of PCA of these counts (reported "
    "apart). *Batch correction* (`batch`, their mean): `asw_batch` = `silhouette_batch` "
    "(1 − |silhouette| of the batches within each label), `ilisi` = `ilisi_knn` (90 "
    "neighbours, scaled), `kbet` = `kbet_per_label` (50), `graph_conn` = `graph_connectivity` "
    "(15), `pcr` = `pcr_comparison` (reduction of the variance the batch explains, against the "
    "unintegrated PCA(50) of the seed; 0 for that PCA itself). *Bio conservation* (`bio`): "
    "`iso_labels` = `isolated_labels` (ASW of the labels found in the fewest batches; every "
    "label here is in every batch, so every label counts), `nmi` / `ari` = "
    "`nmi_ari_cluster_labels_kmeans` (k-means, K = number of labels), `asw_label` = "
    "`silhouette_label`, `clisi` = `clisi_knn` (90). `total` = 0.4 `batch` + 0.6 `bio`, as "
    "scib. The kNN graph (pynndescent, 90 neighbours, `random_state=0`) is that of the "
    "`Benchmarker`; batch ASW is scib's (the `Benchmarker` of scib-metrics 0.5 puts BRAS in its "
    "place; BRAS is in each row's scores, not in `batch`). Methods, each at its own defaults: "
    "gmmvae `GMMVAE.setup_anndata(adata, batch_key=<batch>)`, `GMMVAE(adata, n_components=K, "
    "likelihood='nb', seed=seed).train(seed=seed)` (its default NB, epochs and early stopping), "
    "embedding `model.get_latent()`; scVI `SCVI.setup_anndata("
    "adata, batch_key=<batch>)`, `SCVI(adata)` trained with its defaults, "
    "`get_latent_representation()`; Harmony: harmonypy `run_harmony` (defaults, "
    "`random_state=seed`) on `sc.pp.pca(n_comps=50)` of log1p CP10k; PCA: that PCA(50), "
    "unintegrated (the baseline). `seconds`: wall time of the embedding (training, PCA, "
    "Harmony), not of the scoring (in the row's `extra.scoring_seconds`)."
)


def warm_up() -> None:
    """Import what the units use, so that no unit's wall time includes the imports."""
    import harmonypy  # noqa: F401
    import scib_metrics  # noqa: F401


def dataset(ds):
    """The dataset with its batch column as ``batch_key`` (kang: the condition), so that
    gmmvae and scVI correct for the batch that is scored."""
    key = BATCH_KEYS[ds.name]
    ds.log_expression()  # computed once, shared with the copy
    return ds if ds.batch_key == key else dataclasses.replace(ds, batch_key=key)


def batches(ds) -> np.ndarray:
    return ds.adata.obs[ds.batch_key].astype(str).to_numpy()


def unintegrated(ds, seed: int) -> np.ndarray:
    """The unintegrated PCA(50) of log1p CP10k of the seed: the ``pca`` method's embedding,
    Harmony's input and the "before" of the PCR comparison."""
    pcs, _ = methods.pca(ds.log_expression(), seed)
    return np.asarray(pcs, dtype=np.float32)


def scores(embedding, labels, batch, unintegrated_pcs, *, threads: int = 1) -> dict[str, float]:
    """scib-metrics scores of one embedding, the group means and the total."""
    import scib_metrics as sm
    from scib_metrics.nearest_neighbors import pynndescent

    x = np.ascontiguousarray(embedding, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    batch = np.asarray(batch).astype(str)
    k = min(max(NEIGHBOURS), len(x) - 1)
    graph = pynndescent(x, n_neighbors=k, random_state=0, n_jobs=threads)
    nn = {n: graph.subset_neighbors(n=min(n, k)) for n in NEIGHBOURS}
    clustering = sm.nmi_ari_cluster_labels_kmeans(x, labels)
    batch_scores = {
        "asw_batch": sm.silhouette_batch(x, labels, batch),
        "ilisi": sm.ilisi_knn(nn[90], batch),
        "kbet": sm.kbet_per_label(nn[50], batch, labels),
        "graph_conn": sm.graph_connectivity(nn[15], labels),
        "pcr": sm.pcr_comparison(unintegrated_pcs, x, batch, categorical=True),
    }
    bio_scores = {
        "iso_labels": sm.isolated_labels(x, labels, batch),
        "nmi": clustering["nmi"],
        "ari": clustering["ari"],
        "asw_label": sm.silhouette_label(x, labels),
        "clisi": sm.clisi_knn(nn[90], labels),
    }
    out = {name: float(value) for name, value in {**batch_scores, **bio_scores}.items()}
    batch_mean = float(np.nanmean([out[m] for m in BATCH_METRICS]))
    bio_mean = float(np.nanmean([out[m] for m in BIO_METRICS]))
    total = BATCH_WEIGHT * batch_mean + (1 - BATCH_WEIGHT) * bio_mean
    return {
        "total": total,
        "batch": batch_mean,
        "bio": bio_mean,
        **out,
        "bras": float(sm.bras(x, labels, batch)),
    }


# --------------------------------------------------------------------------- embeddings
def embed(ds, seed: int, method: str, max_epochs: int | None, threads: int):
    """(embedding, extra) of one method on every cell of ``ds``."""
    if method == "gmmvae":
        model = methods.gmmvae_model(
            ds.adata, ds, seed=seed, max_epochs=max_epochs, n_components=ds.n_types
        )
        return model.get_latent(model.adata), {"epochs": methods.gmmvae_extra(model)["epochs"]}
    if method == "scvi":
        latent, epochs, size = methods.scvi_latent(
            ds, seed=seed, threads=threads, max_epochs=max_epochs
        )
        return latent, {"epochs": epochs, "batch_size": size}
    pcs = unintegrated(ds, seed)
    if method == "pca":
        return pcs, {}
    if method == "harmony":
        import harmonypy

        fit = harmonypy.run_harmony(
            pcs,
            ds.adata.obs[[ds.batch_key]].astype(str),
            ds.batch_key,
            random_state=seed,
            verbose=False,
            ncores=threads,
        )
        corrected = np.asarray(fit.Z_corr)
        if corrected.shape[0] != pcs.shape[0]:  # older harmonypy: components x cells
            corrected = corrected.T
        return corrected, {"harmony_iterations": len(fit.objective_harmony)}
    raise ValueError(f"unknown integration method {method!r}; known: {list(METHODS)}")


def run(ds, seed: int, method: str, max_epochs: int | None, threads: int) -> Result:
    """Embed, then score; ``seconds`` is the embedding's wall time."""
    start = time.perf_counter()
    embedding, extra = embed(ds, seed, method, max_epochs, threads)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    before = embedding if method == "pca" else unintegrated(ds, seed)
    result = scores(embedding, ds.truth, batches(ds), before, threads=threads)
    extra.update(
        scoring_seconds=time.perf_counter() - start,
        n_latent=int(np.shape(embedding)[1]),
        n_batches=len(np.unique(batches(ds))),
    )
    epochs = extra.pop("epochs", None)
    return {"scores": result, "seconds": seconds, "epochs": epochs, "extra": extra}


def options(ds, method: str, max_epochs: int | None) -> dict[str, Any]:
    """What a row's key records of a method's run."""
    if method == "gmmvae":
        return methods.gmmvae_options(ds, max_epochs, n_components=ds.n_types)
    if method == "scvi":
        return methods.scvi_options(ds, max_epochs)
    common = {"n_comps": methods.N_PCS, "input": "log1p CP10k"}
    if method == "harmony":
        return {**common, "batch_key": ds.batch_key, "harmonypy": "defaults"}
    return common


def units(ds, seed: int, settings: Settings) -> list[Unit]:
    """One unit per method (and per epoch cap for the trained ones)."""
    ds = dataset(ds)
    out = []
    for method in (m for m in METHODS if m in settings.methods):
        trained = method in ("gmmvae", "scvi")
        for max_epochs in settings.epochs if trained else [None]:
            fn = partial(run, ds, seed, method, max_epochs, settings.threads)
            opts = {method: options(ds, method, max_epochs)}
            out.append(Unit(ds.name, "", seed, opts, single(method, fn)))
    return out
