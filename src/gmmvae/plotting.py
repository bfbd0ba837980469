"""Scanpy-style plots: latent UMAP, training history. Functions take data, not models' internals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd
from anndata import AnnData

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    if save:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return fig


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
    if save:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return fig
