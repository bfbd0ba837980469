"""Preprocessing before a model: gene selection on raw counts, and a warning for many genes."""

from __future__ import annotations

import warnings

import numpy as np
from anndata import AnnData

#: Genes above which :func:`warn_many_genes` warns.
MANY_GENES = 5000
# Measured time of one optimiser step (exact variant, K = 9, 256 cells, 2 components per
# cell, 1 CPU thread on a shared 2-core machine; medians of 5 x 5 interleaved steps, two runs)
# relative to 2,000 genes: the cost grows about in proportion to the number of genes.
_MEASURED_GENES = (2000, 5000, 8863, 13714)
_MEASURED_RATIO = (1.0, 2.35, 4.65, 8.0)


def select_genes(
    adata: AnnData,
    n_top_genes: int = 2000,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    subset: bool = True,
) -> AnnData:
    """Top highly variable genes by ``seurat_v3`` on raw counts (the benchmarks' selection).

    What ``sc.pp.highly_variable_genes(adata, n_top_genes=..., flavor="seurat_v3")`` does, on
    ``layers[layer]`` or ``X``; a training step on 2,000 genes takes about an eighth of one on
    a whole 10x run (13,714 genes; :func:`warn_many_genes` has the measurements).

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``X`` or ``layers[layer]``.
    n_top_genes
        Genes to keep; with fewer genes than this, ``adata`` is returned as is.
    layer
        Layer with the counts; ``None`` uses ``X``.
    batch_key
        obs column of batches: genes are ranked within each batch, then merged (scanpy's rule).
    subset
        Return a new AnnData with the selected genes only; ``False`` only marks them in
        ``adata.var["highly_variable"]`` and returns ``adata``.

    Returns
    -------
    AnnData with the selected genes (a copy) when ``subset``, else ``adata`` itself with
    ``var["highly_variable"]`` (bool), ``var["highly_variable_rank"]`` and the scanpy columns.
    """
    import scanpy as sc

    if adata.n_vars <= n_top_genes:
        return adata
    sc.pp.highly_variable_genes(
        adata, n_top_genes=n_top_genes, flavor="seurat_v3", layer=layer, batch_key=batch_key
    )
    if not subset:
        return adata
    return adata[:, adata.var["highly_variable"].to_numpy()].copy()


def step_cost_ratio(n_genes: int) -> float:
    """Measured cost of a training step on ``n_genes`` genes relative to 2,000 genes.

    Interpolated between the measurements (2,000: 1x, 5,000: 2.35x, 8,863: 4.65x,
    13,714: 8x); proportional to the number of genes beyond them.
    """
    if n_genes > _MEASURED_GENES[-1]:
        return _MEASURED_RATIO[-1] * n_genes / _MEASURED_GENES[-1]
    return float(np.interp(n_genes, _MEASURED_GENES, _MEASURED_RATIO))


def warn_many_genes(n_genes: int, *, threshold: int = MANY_GENES, stacklevel: int = 3) -> None:
    """Warn (``UserWarning``) that a model on more than ``threshold`` genes trains slowly.

    Meant to be called by ``GMMVAE.__init__`` with ``adata.n_vars``; the default
    ``stacklevel`` points the warning at the user's line that built the model. The message
    gives the measured cost (:func:`step_cost_ratio`) and the fix: select highly variable
    genes first.

    Parameters
    ----------
    n_genes
        Genes the model is built on.
    threshold
        Warn above this many genes.
    stacklevel
        Passed to :func:`warnings.warn`.

    Returns
    -------
    None. Nothing is written.
    """
    if n_genes <= threshold:
        return
    warnings.warn(
        f"The model is built on {n_genes:,} genes. Each training step costs about "
        f"{step_cost_ratio(n_genes):.1f}x as much as on 2,000 genes (measured on CPU: 2.4x at "
        "5,000 genes, 4.7x at 8,863, 8x at 13,714; the cost grows with the number of genes). "
        "Select 2,000 highly variable genes on the raw counts first: "
        "adata = gmmvae.pp.select_genes(adata, 2000), or sc.pp.highly_variable_genes(adata, "
        "n_top_genes=2000, flavor='seurat_v3', subset=True); then setup_anndata and build the "
        "model again.",
        UserWarning,
        stacklevel=stacklevel,
    )
