"""Data for tests and the demo: simulated counts, and scanpy's bundled ``pbmc68k_reduced``.

Nothing here downloads: ``pbmc68k_reduced`` ships inside scanpy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def _condition_names(n: int) -> list[str]:
    return ["control", "stimulated"] if n == 2 else [f"condition_{i}" for i in range(n)]


def simulate(
    n_cells: int = 1000,
    n_genes: int = 500,
    n_types: int = 5,
    n_conditions: int = 1,
    n_batches: int = 1,
    *,
    seed: int = 0,
    marker_fraction: float = 0.05,
    marker_log_fold: float = 1.5,
    mean_library_size: float | None = None,
    response_log_fold: float = 1.5,
) -> AnnData:
    """Simulate negative-binomial counts with cell types, treatment responses and batches.

    Gene proportions are log-normal (a few genes take most reads, as in real data), each type
    up-regulates its own marker genes, each condition after the first shifts a shared set of
    response genes with a type-specific strength plus a few type-specific response genes, and
    each batch scales every gene by a small random factor. Library sizes are log-normal.

    Parameters
    ----------
    n_cells, n_genes
        Shape of the matrix.
    n_types, n_conditions, n_batches
        Number of cell types, conditions (two are named ``control``/``stimulated``) and batches.
    seed
        Seed of the local random generator.
    marker_fraction
        Fraction of genes that are markers of each type.
    marker_log_fold
        Mean natural-log fold change of a marker gene in its type.
    mean_library_size
        Geometric mean of the library sizes; default ``0.5 * n_genes`` reads, which gives the
        85-90 % zeros of droplet data.
    response_log_fold
        Mean natural-log fold change of the shared response genes under a condition after the
        first, before each type's strength (uniform in [0.5, 1.5]) scales it.

    Returns
    -------
    AnnData with integer-valued counts in ``X`` (CSR, float32) and ``layers["counts"]``,
    ``obs["cell_type"]``, ``obs["condition"]``, ``obs["batch"]`` (categorical) and the
    simulation parameters in ``uns["simulation"]``.
    """
    rng = np.random.default_rng(seed)
    if mean_library_size is None:
        mean_library_size = 0.5 * n_genes
    n_markers = max(1, int(marker_fraction * n_genes))
    base = rng.normal(0.0, 1.5, n_genes)  # log gene proportions before normalising

    type_effect = rng.normal(0.0, 0.2, (n_types, n_genes))
    for t in range(n_types):
        markers = rng.choice(n_genes, n_markers, replace=False)
        type_effect[t, markers] += rng.normal(marker_log_fold, 0.4, n_markers)

    response = np.zeros((n_conditions, n_types, n_genes))
    shared_genes = rng.choice(n_genes, max(1, n_genes // 10), replace=False)
    for c in range(1, n_conditions):
        shared = rng.normal(response_log_fold, 0.5, len(shared_genes))
        strength = rng.uniform(0.5, 1.5, n_types)  # types respond to different degrees
        response[c][:, shared_genes] = strength[:, None] * shared
        for t in range(n_types):
            own = rng.choice(n_genes, max(1, n_genes // 50), replace=False)
            response[c, t, own] += rng.normal(1.0, 0.3, len(own))
    batch_effect = rng.normal(0.0, 0.3, (n_batches, n_genes))

    type_of = rng.choice(n_types, n_cells, p=rng.dirichlet(np.full(n_types, 5.0)))
    condition_of = rng.integers(0, n_conditions, n_cells)
    batch_of = rng.integers(0, n_batches, n_cells)
    log_rate = (
        base + type_effect[type_of] + response[condition_of, type_of] + batch_effect[batch_of]
    )
    proportions = np.exp(log_rate - log_rate.max(1, keepdims=True))
    proportions /= proportions.sum(1, keepdims=True)
    library = rng.lognormal(np.log(mean_library_size), 0.35, n_cells)
    mean = proportions * library[:, None]
    theta = rng.lognormal(np.log(3.0), 0.5, n_genes)  # per-gene inverse dispersion
    counts = rng.poisson(rng.gamma(theta, mean / theta)).astype(np.float32)

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(type_of, [f"type_{t}" for t in range(n_types)]),
            "condition": pd.Categorical.from_codes(condition_of, _condition_names(n_conditions)),
            "batch": pd.Categorical.from_codes(batch_of, [f"batch_{b}" for b in range(n_batches)]),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    X = sparse.csr_matrix(counts)
    adata = AnnData(X=X, obs=obs, var=var)
    adata.layers["counts"] = X.copy()
    adata.uns["simulation"] = {
        "seed": seed,
        "n_types": n_types,
        "n_conditions": n_conditions,
        "n_batches": n_batches,
        "marker_fraction": marker_fraction,
        "marker_log_fold": marker_log_fold,
        "mean_library_size": mean_library_size,
        "response_log_fold": response_log_fold,
    }
    return adata


def pbmc68k() -> AnnData:
    """scanpy's bundled ``pbmc68k_reduced`` as log-normalised data with 10 labelled types.

    Its ``X`` is scaled (negative values), so the log-normalised ``.raw`` (765 genes) is used.

    Returns
    -------
    AnnData (700 cells x 765 genes) with log1p-normalised values in ``X`` (dense float32) and
    the cell types in ``obs["bulk_labels"]``; use ``likelihood="gaussian"``.
    """
    import scanpy as sc  # heavy import, only needed here

    reduced = sc.datasets.pbmc68k_reduced()
    adata = reduced.raw.to_adata()
    adata.X = np.asarray(adata.X.toarray() if sparse.issparse(adata.X) else adata.X, np.float32)
    adata.obs = reduced.obs[["bulk_labels", "n_genes", "n_counts"]].copy()
    adata.obsm["X_umap_original"] = reduced.obsm["X_umap"]
    return adata


def mask_labels(
    labels: pd.Series | np.ndarray,
    fraction: float,
    *,
    seed: int = 0,
    unlabeled_category: str = "Unknown",
) -> pd.Series:
    """Keep a stratified random ``fraction`` of labels (at least one per type), hide the rest.

    The semi-supervised protocol of DESIGN.md: hidden labels become ``unlabeled_category``.

    Returns
    -------
    Categorical Series (same index as ``labels`` if it is a Series) of kept labels and
    ``unlabeled_category``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    series = pd.Series(labels).astype(str)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(series), dtype=bool)
    for _, positions in series.groupby(series.to_numpy()).indices.items():
        n_keep = max(1, round(fraction * len(positions)))
        keep[rng.choice(positions, n_keep, replace=False)] = True
    masked = series.where(keep, unlabeled_category)
    return masked.astype("category")
