"""Scanpy-style plots: latent UMAP, training history. Functions take data, not models' internals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

from gmmvae._labels import repel_labels
from gmmvae._palettes import FREE_COLOR, match_colors
from gmmvae.plotting_de import de_volcano, marker_dotplot

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
    reference: str | None = None,
    use_rep: str = "X_gmmvae",
    n_neighbors: int = 15,
    seed: int = 0,
    recompute: bool = False,
    show: bool = False,
    save: str | None = None,
) -> Figure:
    """UMAP of a latent representation coloured by obs columns (e.g. true and predicted type).

    Neighbours and UMAP are computed on a copy that holds only ``adata.obsm[use_rep]``, so the
    user's own ``obsp`` graph, ``uns["neighbors"]`` and ``obsm["X_umap"]`` are untouched; the
    coordinates are kept in ``adata.obsm[f"{use_rep}_umap"]`` and reused on the next call
    (``recompute=True`` computes them again).

    Parameters
    ----------
    adata
        Cells with ``obsm[use_rep]`` (``model.get_latent(adata)``) and the ``color`` columns.
    color
        obs columns (or genes) to colour by, one panel each.
    reference
        obs column whose colours the other categorical ``color`` columns reuse, so panels can
        be read side by side (e.g. ``"cell_type"``): predicted labels take the colour of the
        true label of the same name, clusters that of their best-overlapping true label
        (Hungarian matching), free components grey; see :func:`match_colors`. ``None``: each
        column keeps its own colours (``adata.uns[f"{key}_colors"]`` or scanpy's defaults).
    use_rep
        The representation in ``obsm`` to embed.
    n_neighbors, seed
        Options of the kNN graph and UMAP.
    recompute
        Compute the UMAP again even if ``obsm[f"{use_rep}_umap"]`` exists.
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The figure. Writes ``adata.obsm[f"{use_rep}_umap"]`` (float, n_obs x 2) and, with
    ``reference``, ``adata.uns[f"{key}_colors"]`` (hex strings in category order) for
    ``reference`` and each categorical ``color`` column.
    """
    import scanpy as sc

    if use_rep not in adata.obsm:
        raise KeyError(
            f"{use_rep!r} is not in adata.obsm ({list(adata.obsm)}); run model.get_latent(adata)."
        )
    basis = f"{use_rep}_umap"
    if recompute or basis not in adata.obsm:
        holder = AnnData(np.zeros((adata.n_obs, 0), dtype=np.float32))
        holder.obsm[use_rep] = np.asarray(adata.obsm[use_rep])
        sc.pp.neighbors(holder, use_rep=use_rep, n_neighbors=n_neighbors, random_state=seed)
        sc.tl.umap(holder, random_state=seed)
        adata.obsm[basis] = holder.obsm["X_umap"]
    colors = [color] if isinstance(color, str) else list(color)
    if reference is not None:
        match_colors(adata, reference=reference, keys=[c for c in colors if _is_labels(adata, c)])
    fig = sc.pl.embedding(adata, basis=basis, color=colors, show=False, return_fig=True, wspace=0.6)
    return _finish(fig, save=save, show=show)


def _is_labels(adata: AnnData, key: str) -> bool:
    """Whether obs[key] is a column of labels (categorical or strings), not numbers or a gene."""
    if key not in adata.obs:
        return False
    dtype = adata.obs[key].dtype
    return isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)


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


def n_components(table: pd.DataFrame, *, show: bool = False, save: str | None = None) -> Figure:
    """Held-out log p(x) per candidate K (``gmmvae.select_n_components``), +- one SE of the
    difference to the best K; the chosen K is marked."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks, values = table["n_components"], table["marginal_ll"]
    ax.errorbar(ks, values, yerr=table["gap_se"], marker="o", color="0.3", capsize=3)
    chosen = table.attrs.get("n_components")
    if chosen is not None:
        ax.axvline(chosen, color="tab:red", linestyle="--", label=f"chosen K = {chosen}")
        ax.legend(frameon=False)
    ax.set_xticks(list(ks))
    ax.set_xlabel("number of components K")
    ax.set_ylabel("held-out log p(x) per cell (nats)")
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


# ------------------------------------------------------------------ treatment-effect prediction
def _log_expression(adata: AnnData, layer: str | None) -> np.ndarray:
    """log1p-CP10k values: ``layers[layer]`` taken as already log-normalised, else from X."""
    from gmmvae.metrics import log_cp10k

    if layer is not None:
        if layer not in adata.layers:
            raise KeyError(f"layer {layer!r} is not in adata.layers ({list(adata.layers)}).")
        values = adata.layers[layer]
        return np.asarray(values.toarray() if hasattr(values, "toarray") else values, float)
    return log_cp10k(adata.X)


def perturbation_scatter(
    real: AnnData,
    synthetic: AnnData,
    *,
    degs: Sequence[str] | None = None,
    n_labels: int = 10,
    synthetic_layer: str | None = "gmmvae_log_mean",
    title: str | None = None,
    show: bool = False,
    save: str | None = None,
) -> Figure:
    """scGen-style scatter of per-gene mean expression, real against predicted treated cells.

    ``real`` holds the real treated cells (counts in ``X``); ``synthetic`` the predicted ones,
    the output of :meth:`gmmvae.GMMVAE.predict_perturbation` (its ``layers["gmmvae_log_mean"]`` by
    default; ``synthetic_layer=None`` scores its sampled counts in ``X``). Both on log1p
    CP10k, genes matched by name. The first ``n_labels`` of ``degs`` are labelled and all of
    them drawn in red; labels are moved apart so that none overlaps another (a thin line
    joins a moved label to its point). The title gives scGen's R² (squared Pearson) on all
    genes and on ``degs``.
    """
    from gmmvae.metrics import r2_pearson

    genes = [str(g) for g in real.var_names]
    order = pd.Index([str(g) for g in synthetic.var_names]).get_indexer(genes)
    if (order < 0).any():
        raise KeyError("synthetic lacks some of real's genes; pass cells with the same genes.")
    x = _log_expression(real, None).mean(0)
    y = _log_expression(synthetic, synthetic_layer)[:, order].mean(0)
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.scatter(x, y, s=5, color="0.55", alpha=0.6, linewidths=0)
    heading = [f"R² all genes = {r2_pearson(x, y):.3f}"]
    if degs:
        idx = pd.Index(genes).get_indexer([str(g) for g in degs])
        idx = idx[idx >= 0]
        ax.scatter(x[idx], y[idx], s=9, color="tab:red", linewidths=0, label="top DEGs")
        heading.append(f"top-{len(idx)} DEGs = {r2_pearson(x[idx], y[idx]):.3f}")
        labels = [
            ax.annotate(
                genes[i], (x[i], y[i]), fontsize=7, xytext=(3, 2), textcoords="offset points"
            )
            for i in idx[:n_labels]
        ]
        ax.legend(frameon=False, loc="upper left")
    top = float(max(x.max(), y.max()))
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("real mean expression (log1p CP10k)")
    ax.set_ylabel("predicted mean expression")
    ax.set_title(((title + "\n") if title else "") + ", ".join(heading), fontsize=9)
    fig.tight_layout()
    if degs:
        # After the layout, which moves the axes: offsets are in points, so no overlap
        # appears at another dpi either.
        repel_labels(ax, labels)
    return _finish(fig, save=save, show=show)


def perturbation_violin(
    real: AnnData,
    synthetic: AnnData,
    *,
    gene: str,
    control: AnnData | None = None,
    synthetic_layer: str | None = None,
    show: bool = False,
    save: str | None = None,
) -> Figure:
    """Violins of one gene (log1p CP10k) in control, predicted and real treated cells.

    ``real`` (real treated cells) and ``control`` (optional, the cells the prediction started
    from) hold counts in ``X``; for ``synthetic`` (the predicted cells) the sampled counts are
    used, or ``synthetic_layer="gmmvae_log_mean"`` for the predicted mean expression.
    """
    groups: dict[str, tuple[AnnData, str | None]] = {}
    if control is not None:
        groups["control"] = (control, None)
    groups["predicted"] = (synthetic, synthetic_layer)
    groups["real"] = (real, None)
    values = []
    for name, (adata, layer) in groups.items():
        names = [str(g) for g in adata.var_names]
        if gene not in names:
            raise KeyError(f"gene {gene!r} is not in the {name} cells' var_names.")
        values.append(_log_expression(adata, layer)[:, names.index(gene)])
    fig, ax = plt.subplots(figsize=(1.4 * len(values) + 0.8, 3.6))
    parts = ax.violinplot(values, showmeans=True)
    colors = {"control": "tab:blue", "predicted": "tab:orange", "real": "tab:green"}
    for body, name in zip(parts["bodies"], groups, strict=True):
        body.set_facecolor(colors[name])
        body.set_alpha(0.6)
    ticks = [f"{k}\n(n={len(v)})" for k, v in zip(groups, values, strict=True)]
    ax.set_xticks(range(1, len(values) + 1), ticks)
    ax.set_ylabel(f"{gene} (log1p CP10k)")
    fig.tight_layout()
    return _finish(fig, save=save, show=show)


__all__ = [
    "FREE_COLOR",
    "de_volcano",
    "history",
    "latent_umap",
    "marker_dotplot",
    "match_colors",
    "perturbation_scatter",
    "perturbation_violin",
    "synthetic_moments",
    "synthetic_umap",
]
