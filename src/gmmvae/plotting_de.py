"""Plots of differential expression: a volcano per comparison and a marker dot plot.

They take what :func:`gmmvae.de.differential_expression` returns (or plain gene lists) and
the AnnData, never a model. Meant to be exposed as ``gmmvae.pl.de_volcano`` and
``gmmvae.pl.marker_dotplot``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from gmmvae.errors import GMMVAEInputError, MissingKeyError
from gmmvae.validation import check_obs_key, get_matrix

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _finish(fig: Figure, *, save: str | None, show: bool) -> Figure:
    if save:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return fig


def _fdr_column(frame: pd.DataFrame) -> str | None:
    found = [c for c in frame.columns if str(c).startswith("is_de_fdr_")]
    return found[0] if found else None


# --------------------------------------------------------------------------------- volcano
def de_volcano(
    de_frame: pd.DataFrame,
    *,
    comparison: str | Sequence[str] | None = None,
    x: str = "lfc_mean",
    y: str = "proba_de",
    n_labels: int = 8,
    ncols: int = 3,
    show: bool = False,
    save: str | None = None,
) -> Figure:
    """Volcano plot of a differential-expression result, one panel per comparison.

    Genes called DE (the frame's ``is_de_fdr_*`` column) are drawn in red, the others in
    grey; dashed lines mark ``±delta`` (from ``de_frame.attrs``); the ``n_labels`` genes with
    the highest ``y`` (ties: largest ``|x|``) are named.

    Parameters
    ----------
    de_frame
        Output of :func:`gmmvae.de.differential_expression` (index: genes), possibly several
        comparisons stacked (its ``comparison`` column).
    comparison
        The comparison(s) to draw, e.g. ``"type_0 vs Rest"``; default all.
    x, y
        Columns on the axes (e.g. ``y="bayes_factor"``).
    n_labels
        Genes named per panel.
    ncols
        Panels per row.
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The figure, one axes per comparison (titled by it).
    """
    for column in (x, y):
        if column not in de_frame.columns:
            raise MissingKeyError(
                f"de_frame has no column {column!r}; columns are {list(de_frame.columns)}. "
                "Pass the output of differential_expression (mode='change' for proba_de)."
            )
    names = list(pd.unique(de_frame["comparison"])) if "comparison" in de_frame else ["comparison"]
    if comparison is not None:
        wanted = [comparison] if isinstance(comparison, str) else list(comparison)
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise GMMVAEInputError(
                f"comparison {unknown} is not in de_frame; its comparisons are {names}."
            )
        names = wanted
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.4 * nrows), squeeze=False)
    fdr = _fdr_column(de_frame)
    delta = de_frame.attrs.get("delta")
    for ax, name in zip(axes.ravel(), names, strict=False):
        part = de_frame[de_frame["comparison"] == name] if "comparison" in de_frame else de_frame
        _volcano_panel(ax, part, x, y, fdr, delta, n_labels)
        ax.set_title(name, fontsize=10)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _finish(fig, save=save, show=show)


def _volcano_panel(
    ax: Axes,
    part: pd.DataFrame,
    x: str,
    y: str,
    fdr: str | None,
    delta: float | None,
    n_labels: int,
) -> None:
    xs, ys = part[x].to_numpy(float), part[y].to_numpy(float)
    called = part[fdr].to_numpy(bool) if fdr else np.zeros(len(part), bool)
    ax.scatter(xs[~called], ys[~called], s=6, color="0.6", linewidths=0, label="not DE")
    if called.any():
        ax.scatter(xs[called], ys[called], s=8, color="tab:red", linewidths=0, label=fdr)
        ax.legend(frameon=False, fontsize=7, loc="lower right")
    if delta and x.startswith("lfc"):
        for side in (-delta, delta):
            ax.axvline(side, color="0.3", lw=0.7, ls="--")
    top = np.lexsort((-np.abs(xs), -ys))[:n_labels]
    # Top genes often share y (proba_de = 1): stagger the labels of neighbours along x.
    for k, i in enumerate(top[np.argsort(xs[top])]):
        ax.annotate(
            str(part.index[i]),
            (xs[i], ys[i]),
            fontsize=6,
            xytext=(2, 2 - 7 * (k % 3)),
            textcoords="offset points",
        )
    ax.set_xlabel(x)
    ax.set_ylabel(y)


# ------------------------------------------------------------------------------ dot plot
def _marker_genes(
    markers: pd.DataFrame | Mapping[str, Sequence[str]] | Sequence[str],
    n_genes: int,
    min_fraction: float | None = None,
    min_bayes_factor: float | None = None,
) -> dict[str, list[str]]:
    """Genes per heading: the top up-regulated genes of each group1 of a DE frame (those
    passing the thresholds that are given), a mapping as given, or one untitled block for a
    plain list."""
    if isinstance(markers, pd.DataFrame):
        if "lfc_mean" not in markers:
            raise MissingKeyError(
                "markers is a DataFrame without an lfc_mean column; pass the output of "
                "differential_expression, a {group: genes} mapping or a list of genes."
            )
        keep = (markers["lfc_mean"] > 0).to_numpy()
        thresholds = (
            ("non_zeros_proportion1", min_fraction, "min_fraction"),
            ("bayes_factor", min_bayes_factor, "min_bayes_factor"),
        )
        for column, threshold, option in thresholds:
            if threshold is None:
                continue
            if column not in markers:
                raise MissingKeyError(
                    f"markers has no {column} column for {option}={threshold}; pass the "
                    f"output of differential_expression, or {option}=None."
                )
            keep &= (markers[column] > threshold).to_numpy()
        groups = markers["group1"] if "group1" in markers else pd.Series("", markers.index)
        picked: dict[str, list[str]] = {}
        seen: set[str] = set()
        for group in pd.unique(groups):
            part = markers[(groups == group).to_numpy() & keep]
            genes = [str(g) for g in part.index if str(g) not in seen][:n_genes]
            seen.update(genes)
            picked[str(group)] = genes
        return picked
    if isinstance(markers, Mapping):
        return {str(k): [str(g) for g in v] for k, v in markers.items()}
    if isinstance(markers, str):
        return {"": [markers]}
    return {"": [str(g) for g in markers]}


def _group_summaries(
    adata: AnnData, genes: list[str], groupby: str, layer: str | None, log_normalize: bool | None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Group names, mean expression and fraction of cells with a nonzero value (groups x
    genes)."""
    matrix = get_matrix(adata, layer)
    columns = adata.var_names.get_indexer(genes)
    if (columns < 0).any():
        missing = [g for g, c in zip(genes, columns, strict=True) if c < 0]
        raise MissingKeyError(
            f"{len(missing)} marker gene(s) are not in adata.var_names, e.g. {missing[:10]}; "
            "pass the AnnData the markers were computed on, or drop those genes."
        )
    values = matrix[:, columns]
    values = values.toarray() if sparse.issparse(values) else np.asarray(values, dtype=float)
    values = values.astype(np.float64)
    if log_normalize is None:  # raw counts: non-negative integers
        log_normalize = bool((values >= 0).all() and (values == np.round(values)).all())
    nonzero = values != 0
    if log_normalize:
        library = np.asarray(matrix.sum(1)).ravel().astype(np.float64)
        values = np.log1p(values / np.maximum(library, 1.0)[:, None] * 1e4)
    column = adata.obs[groupby]
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = [str(c) for c in column.cat.categories]
    else:
        names = sorted({str(v) for v in column[column.notna()]})
    codes = pd.Categorical(column.astype(str).where(column.notna()), categories=names).codes
    onehot = np.zeros((len(names), adata.n_obs))
    inside = codes >= 0
    onehot[codes[inside], np.flatnonzero(inside)] = 1.0
    sizes = onehot.sum(1, keepdims=True)
    keep = sizes.ravel() > 0
    sizes = np.maximum(sizes, 1.0)
    means, fractions = onehot @ values / sizes, onehot @ nonzero / sizes
    return [n for n, k in zip(names, keep, strict=True) if k], means[keep], fractions[keep]


def marker_dotplot(
    adata: AnnData,
    markers: pd.DataFrame | Mapping[str, Sequence[str]] | Sequence[str],
    groupby: str,
    *,
    n_genes: int = 5,
    min_fraction: float | None = 0.1,
    min_bayes_factor: float | None = 3.0,
    layer: str | None = None,
    log_normalize: bool | None = None,
    standard_scale: Literal["var"] | None = "var",
    cmap: str = "Reds",
    show: bool = False,
    save: str | None = None,
) -> Figure:
    """Dot plot of marker genes by group: dot size the fraction of cells with a count, colour
    the mean expression, as ``sc.pl.dotplot`` draws it.

    Parameters
    ----------
    adata
        Cells with their values in ``X`` or ``layers[layer]`` and ``obs[groupby]``.
    markers
        The output of :func:`gmmvae.de.differential_expression` (the first ``n_genes``
        up-regulated genes of each ``group1`` that pass ``min_fraction`` and
        ``min_bayes_factor``, in the frame's order, each gene once), a mapping
        ``{heading: genes}``, or a list of genes.
    groupby
        obs column of the groups drawn as rows (for components, the ``gmmvae_label`` that
        :meth:`~gmmvae.GMMVAE.predict` writes).
    n_genes
        Genes per group taken from a DE frame.
    min_fraction, min_bayes_factor
        For a DE frame: take only genes seen in more than this share of group 1's cells
        (``non_zeros_proportion1``) and with a Bayes factor above this
        (``bayes_factor``, log odds), scvi-tools' quick-start marker recipe. Without them a
        gene seen in a handful of cells, certain to be higher and with a huge fold change,
        can outrank the group's broad markers. ``None`` drops a threshold.
    layer
        Layer with the values; ``None`` uses ``X``.
    log_normalize
        Show log1p CP10k of the values; ``None`` (default) does so when they are counts
        (non-negative integers) and uses them as given otherwise.
    standard_scale
        ``"var"``: scale each gene's means to [0, 1] (scanpy's option); ``None``: raw means.
    cmap
        Colour map of the means.
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The figure: the dot plot's axes first (genes on x, groups on y, headings above the
    gene blocks), then the colour bar's.
    """
    check_obs_key(adata, groupby, "groupby")
    picked = _marker_genes(markers, n_genes, min_fraction, min_bayes_factor)
    blocks = {k: v for k, v in picked.items() if v}
    genes = [g for block in blocks.values() for g in block]
    if not genes:
        raise GMMVAEInputError("markers names no genes; pass at least one gene.")
    names, means, fractions = _group_summaries(adata, genes, groupby, layer, log_normalize)
    if standard_scale == "var":
        low, high = means.min(0), means.max(0)
        means = (means - low) / np.where(high > low, high - low, 1.0)
    fig, ax = plt.subplots(
        figsize=(3.6 + 0.38 * len(genes), 1.8 + 0.38 * len(names)), layout="constrained"
    )
    gx, gy = np.meshgrid(np.arange(len(genes)), np.arange(len(names)))
    dots = ax.scatter(
        gx.ravel(),
        gy.ravel(),
        s=fractions.ravel() * 160 + 1e-3,
        c=means.ravel(),
        cmap=cmap,
        edgecolors="0.3",
        linewidths=0.3,
    )
    ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(-0.6, len(genes) - 0.4)
    ax.set_ylim(len(names) - 0.4, -0.6)
    ax.set_ylabel(groupby)
    start = 0
    for heading, block in blocks.items():
        if heading:
            ax.annotate(
                heading,
                ((start + start + len(block) - 1) / 2, -0.7),
                ha="center",
                va="bottom",
                fontsize=8,
                annotation_clip=False,
            )
        start += len(block)
    label = "mean expression" + (" (scaled per gene)" if standard_scale == "var" else "")
    fig.colorbar(dots, ax=ax, label=label, shrink=0.6)
    for share in (0.25, 0.5, 1.0):
        ax.scatter([], [], s=share * 160, color="0.5", label=f"{share:.0%}")
    ax.legend(
        title="cells with a count",
        frameon=False,
        fontsize=7,
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
    )
    return _finish(fig, save=save, show=show)
