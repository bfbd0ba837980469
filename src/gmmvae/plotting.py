"""Scanpy-style plots: latent UMAP, training history. Functions take data, not models' internals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _finish(fig: Figure, *, save: str | None, show: bool) -> Figure:
    if save:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return fig


def latent_umap(
    adata: AnnData,
    *,
    color: str | Sequence[str],
    use_rep: str = "X_gmmvae",
    n_neighbors: int = 15,
    seed: int = 0,
    show: bool = False,
    save: str | None = None,
) -> Figure:
    """UMAP of a latent representation coloured by obs columns (e.g. true and predicted type).

    Computes neighbours and UMAP on ``adata.obsm[use_rep]`` into ``obsm["X_umap"]`` (and
    ``obsp``/``uns["neighbors"]``), as ``sc.pp.neighbors`` + ``sc.tl.umap`` would.
    """
    import scanpy as sc

    if use_rep not in adata.obsm:
        raise KeyError(
            f"{use_rep!r} is not in adata.obsm ({list(adata.obsm)}); run model.get_latent(adata)."
        )
    sc.pp.neighbors(adata, use_rep=use_rep, n_neighbors=n_neighbors, random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    colors = [color] if isinstance(color, str) else list(color)
    fig = sc.pl.umap(adata, color=colors, show=False, return_fig=True, wspace=0.6)
    return _finish(fig, save=save, show=show)


def history(
    history: pd.DataFrame,
    *,
    keys: Sequence[str] = ("train_loss", "validation_loss"),
    show: bool = False,
    save: str | None = None,
) -> Figure:
    """Per-epoch losses (``model.history``) against epoch."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in keys:
        if key in history:
            ax.plot(history.index, history[key], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (negative ELBO per cell)")
    ax.legend(frameon=False)
    fig.tight_layout()
    return _finish(fig, save=save, show=show)


def synthetic_umap(
    real: AnnData,
    synthetic: AnnData,
    *,
    groupby: str = "cell_type",
    n_pcs: int = 50,
    seed: int = 0,
    show: bool = False,
    save: str | None = None,
) -> Figure:
    """Real and synthetic cells on one UMAP (log1p CP10k, PCA on the pooled cells), coloured by
    type and by origin. Both need raw counts in ``X`` and ``obs[groupby]``."""
    import anndata as ad
    import scanpy as sc

    from gmmvae.metrics import log_cp10k

    pooled = ad.AnnData(
        np.vstack([log_cp10k(real.X), log_cp10k(synthetic.X)]),
        obs=pd.DataFrame(
            {
                groupby: np.r_[
                    real.obs[groupby].astype(str).to_numpy(),
                    synthetic.obs[groupby].astype(str).to_numpy(),
                ],
                "origin": ["real"] * real.n_obs + ["synthetic"] * synthetic.n_obs,
            }
        ),
    )
    pooled.obs_names_make_unique()
    sc.pp.pca(pooled, n_comps=min(n_pcs, min(pooled.shape) - 1), random_state=seed)
    sc.pp.neighbors(pooled, random_state=seed)
    sc.tl.umap(pooled, random_state=seed)
    fig = sc.pl.umap(pooled, color=[groupby, "origin"], show=False, return_fig=True, wspace=0.5)
    return _finish(fig, save=save, show=show)


def synthetic_moments(
    real: AnnData, synthetic: AnnData, *, show: bool = False, save: str | None = None
) -> Figure:
    """Per-gene mean and variance (log1p CP10k), real against synthetic, with Pearson r."""
    from gmmvae.metrics import log_cp10k, moment_correlations

    a, b = log_cp10k(real.X), log_cp10k(synthetic.X)
    scores = moment_correlations(a, b)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, (name, f, r) in zip(
        axes,
        [("mean", np.mean, scores["mean_r"]), ("variance", np.var, scores["var_r"])],
        strict=True,
    ):
        x, y = f(a, axis=0), f(b, axis=0)
        ax.scatter(x, y, s=4, alpha=0.5)
        top = max(x.max(), y.max())
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set_xlabel(f"real {name}")
        ax.set_ylabel(f"synthetic {name}")
        ax.set_title(f"per-gene {name}, r = {r:.3f}")
    fig.tight_layout()
    return _finish(fig, save=save, show=show)
