"""Bayesian differential expression from posterior samples of the decoded expression.

For each group of cells, ``n_samples`` cells are drawn uniformly (with replacement) from the
group, each with its own z ~ q(z | x, y), and decoded into gene proportions rho (scVI's
``px_scale``). Draw i of group 1 is paired with draw i of group 2 (both are in random order,
so this is a random pairing) and the log2 fold change of each pair is
``log2(rho1 + pseudocount) - log2(rho2 + pseudocount)``. ``"change"`` mode (Boyeau et al.
2019, scvi-tools' default) reports per gene the posterior probability that |LFC| > delta and
calls genes DE by controlling the posterior expected false discovery rate; ``"vanilla"``
(Lopez et al. 2018) the probability that rho1 > rho2. The result is the DataFrame layout of
scvi-tools' ``differential_expression``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from gmmvae.analysis import (
    CHUNK,
    POSTERIOR_FIELDS,
    check_positive_int,
    decoded_expression,
    resolve_adata,
    sample_latents,
)
from gmmvae.data import make_loader
from gmmvae.errors import GMMVAEInputError
from gmmvae.validation import check_obs_key

if TYPE_CHECKING:
    from gmmvae.data import CellData
    from gmmvae.model import GMMVAE

REST = "Rest"
_GENE_CHUNK = 1024  # genes summarised at a time: (n_samples, chunk) temporaries
_EPS = 1e-8
_MODES = ("change", "vanilla")


def fdr_de_calls(proba_de: np.ndarray, fdr_target: float) -> np.ndarray:
    """DE calls that keep the posterior expected false discovery rate at ``fdr_target``.

    Genes are ranked by ``proba_de``; the top d are called, d the largest number whose mean
    posterior probability of not being DE, ``mean(1 - proba_de)``, is at most ``fdr_target``.
    That mean only grows with d, so the calls are the top of the ranking.

    Returns
    -------
    Boolean array, one value per gene, in the order of ``proba_de``.
    """
    proba_de = np.asarray(proba_de, dtype=np.float64)
    order = np.argsort(-proba_de, kind="stable")
    expected_fdr = np.cumsum(1.0 - proba_de[order]) / np.arange(1, len(order) + 1)
    n_de = int(np.sum(expected_fdr <= fdr_target + 1e-12))
    calls = np.zeros(len(proba_de), dtype=bool)
    calls[order[:n_de]] = True
    return calls


# ------------------------------------------------------------------------------ groups
def _groups(
    model: GMMVAE, adata: AnnData, groupby: str | None, batch_size: int
) -> tuple[np.ndarray, list[str], CellData, dict[str, np.ndarray], str]:
    """Group code per cell (-1: in no group), group names, the cells, their posterior and a
    description of the grouping for messages."""
    if groupby is None:
        data = model._cells(adata)  # no labels: component = the most probable component
        encoded = model._encode(data, POSTERIOR_FIELDS, batch_size=batch_size)
        return encoded["component"], list(model.component_names), data, encoded, "component"
    check_obs_key(adata, groupby, "groupby")
    column = adata.obs[groupby]
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = [str(c) for c in column.cat.categories]
    else:
        names = sorted({str(v) for v in column[column.notna()]})
    values = column.astype(str).where(column.notna())
    codes = pd.Categorical(values, categories=names).codes.astype(np.int64)
    data = model._cells(adata, labels="if_present")
    encoded = model._encode(data, POSTERIOR_FIELDS, batch_size=batch_size)
    return codes, names, data, encoded, f"obs[{groupby!r}]"


def _comparisons(
    names: list[str],
    sizes: np.ndarray,
    group1: str | Sequence[str] | None,
    group2: str | None,
    where: str,
) -> list[tuple[int, int | None]]:
    """(group1 code, group2 code or None for the rest) of every comparison asked for."""
    present = [names[i] for i in np.flatnonzero(sizes)]

    def code(group: object, option: str) -> int:
        if str(group) not in names:
            hint = ""
            if where == "component":
                hint = " (groupby=None compares the model's components, model.component_names)"
            raise GMMVAEInputError(
                f"{option}={group!r} is not a group of {where}{hint}; groups with cells are "
                f"{present}. Pass one of them, or groupby= naming the obs column to group by."
            )
        c = names.index(str(group))
        if sizes[c] == 0:
            raise GMMVAEInputError(
                f"{option}={group!r} has no cells in adata; groups with cells are {present}."
            )
        return c

    second = None if group2 is None else code(group2, "group2")
    if group1 is None:
        firsts = [c for c in np.flatnonzero(sizes) if c != second]
    else:
        wanted = [group1] if isinstance(group1, str) else list(group1)
        firsts = [code(g, "group1") for g in wanted]
    if second is not None and second in firsts:
        raise GMMVAEInputError(
            f"group1 and group2 are both {names[second]!r}; pass two different groups of "
            f"{present}, or group2=None to compare with all other cells."
        )
    if second is None and len(present) < 2:
        raise GMMVAEInputError(
            f"{where} has cells in a single group ({present}); one-vs-rest needs at least two "
            "groups. Pass groupby= naming another obs column."
        )
    if not firsts:
        raise GMMVAEInputError(f"Nothing to compare: {where} has no group besides group2.")
    return [(int(c), second) for c in firsts]


def _raw_statistics(
    data: CellData, codes: np.ndarray, n_groups: int, batch_size: int, normalise: bool
) -> dict[str, np.ndarray]:
    """Per group (n_groups, G) sums of counts, of nonzero entries and of counts per 10^4,
    in one streamed pass over the cells."""
    totals = {"raw": 0.0, "nonzero": 0.0, "normalised": 0.0}
    start = 0
    for batch in make_loader(data, batch_size, shuffle=False):
        x = batch["x"].double()
        part = codes[start : start + len(x)]
        start += len(x)
        onehot = torch.zeros(len(x), n_groups, dtype=torch.float64)
        inside = part >= 0
        onehot[np.flatnonzero(inside), part[inside]] = 1.0
        totals["raw"] = totals["raw"] + (onehot.T @ x).numpy()
        totals["nonzero"] = totals["nonzero"] + (onehot.T @ (x != 0).double()).numpy()
        if normalise:
            cp10k = x / x.sum(-1, keepdim=True).clamp(min=1.0) * 1e4
            totals["normalised"] = totals["normalised"] + (onehot.T @ cp10k).numpy()
    return totals


def _side(totals: dict[str, np.ndarray], sizes: np.ndarray, code: int | None, other: int):
    """Means of one side of a comparison: group ``code``, or every group but ``other``."""
    if code is None:
        n = sizes.sum() - sizes[other]
        return {k: (v.sum(0) - v[other]) / n for k, v in totals.items() if np.ndim(v)}
    return {k: v[code] / sizes[code] for k, v in totals.items() if np.ndim(v)}


# ------------------------------------------------------------------------------ samples
def _scale_samples(
    model: GMMVAE,
    encoded: dict[str, np.ndarray],
    data: CellData,
    cells: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
    batch_correction: bool,
) -> np.ndarray:
    """(n_samples, G) decoded expression of cells drawn uniformly from ``cells``."""
    pick = rng.choice(cells, n_samples, replace=True)
    z = sample_latents({k: encoded[k][pick] for k in POSTERIOR_FIELDS[:2]}, 1, rng)[0]
    conditions = data.conditions.numpy()[pick]
    batches = data.batches.numpy()[pick]
    n_batches = max(1, len(model._categories("batches")))
    out = np.empty((n_samples, len(model.gene_names)), dtype=np.float32)
    for start in range(0, n_samples, CHUNK):
        part = slice(start, start + CHUNK)
        n = len(z[part])
        codes = [np.full(n, b) for b in range(n_batches)] if batch_correction else [batches[part]]
        out[part] = decoded_expression(model, z[part], conditions[part], codes)
    return out


def _lfc_statistics(
    s1: np.ndarray,
    s2: np.ndarray,
    *,
    gaussian: bool,
    pseudocount: float,
    delta: float,
    credible_level: float,
) -> dict[str, np.ndarray]:
    """Per-gene summaries of the paired log2 fold changes, gene chunk by gene chunk."""
    tail = (1.0 - credible_level) / 2
    columns = ("proba_de", "proba_m1", "lfc_mean", "lfc_std", "lfc_min", "lfc_max")
    out = {k: np.empty(s1.shape[1]) for k in (*columns, "lfc_median", "lfc_lo", "lfc_hi")}
    for start in range(0, s1.shape[1], _GENE_CHUNK):
        g = slice(start, start + _GENE_CHUNK)
        a, b = s1[:, g].astype(np.float64), s2[:, g].astype(np.float64)
        if gaussian:  # log-scale means: the difference is a log fold change, in log2 units
            lfc = (a - b) / np.log(2.0)
        else:
            lfc = np.log2(np.maximum(a + pseudocount, 1e-30)) - np.log2(
                np.maximum(b + pseudocount, 1e-30)
            )
        out["proba_de"][g] = (np.abs(lfc) > delta).mean(0)
        out["proba_m1"][g] = (a > b).mean(0)
        out["lfc_mean"][g] = lfc.mean(0)
        out["lfc_std"][g] = lfc.std(0)
        out["lfc_min"][g] = lfc.min(0)
        out["lfc_max"][g] = lfc.max(0)
        lo, median, hi = np.quantile(lfc, [tail, 0.5, 1.0 - tail], axis=0)
        out["lfc_lo"][g], out["lfc_median"][g], out["lfc_hi"][g] = lo, median, hi
    return out


def _check_options(mode, delta, fdr_target, credible_level, pseudocount) -> None:
    if mode not in _MODES:
        raise GMMVAEInputError(f"mode {mode!r} is not one of {_MODES}.")
    checks = (
        ("delta", delta, 0.0, np.inf, "a log2 fold change, e.g. 0.25"),
        ("fdr_target", fdr_target, 0.0, 1.0, "e.g. 0.05"),
        ("credible_level", credible_level, 0.0, 1.0, "e.g. 0.95"),
    )
    for name, value, low, high, example in checks:
        if not (isinstance(value, int | float) and low < float(value) < high):
            raise GMMVAEInputError(
                f"{name} must be a number in ({low}, {high}) ({example}), got {value!r}."
            )
    if not (isinstance(pseudocount, int | float) and pseudocount >= 0):
        raise GMMVAEInputError(f"pseudocount must be a number >= 0, got {pseudocount!r}.")


# --------------------------------------------------------------------------------- main
def differential_expression(
    model: GMMVAE,
    adata: AnnData | None = None,
    *,
    groupby: str | None = None,
    group1: str | Sequence[str] | None = None,
    group2: str | None = None,
    mode: Literal["change", "vanilla"] = "change",
    delta: float = 0.25,
    fdr_target: float = 0.05,
    batch_correction: bool = False,
    n_samples: int = 5000,
    pseudocount: float = 0.0,
    credible_level: float = 0.95,
    seed: int = 0,
    batch_size: int = 1024,
) -> pd.DataFrame:
    """Bayesian differential expression between groups of cells (scvi-tools' layout).

    Compares decoded expression drawn from the posterior (see :mod:`gmmvae.de`): between
    mixture components (default), labels, conditions or any obs column.

    Parameters
    ----------
    adata
        Cells to use (genes matched to the model's by name); default the model's own data.
    groupby
        obs column defining the groups. ``None`` (default): the model's components, each
        cell in its most probable one (what :meth:`~gmmvae.GMMVAE.predict` writes as
        ``obs["gmmvae_label"]``), named by ``model.component_names``. Cells with a missing
        value are in no group.
    group1
        A group or a list of groups; each is compared in turn. ``None``: every group with
        cells.
    group2
        The group to compare with; ``None``: all cells of the other groups ("Rest").
    mode
        ``"change"``: P(|LFC| > delta) and FDR-controlled calls; ``"vanilla"``:
        P(rho1 > rho2).
    delta
        Smallest |log2 fold change| that counts as a change (``"change"`` mode).
    fdr_target
        Posterior expected false discovery rate of the calls in ``is_de_fdr_<fdr_target>``.
    batch_correction
        Decode every draw under each of the model's batches and average, so that groups are
        compared free of batch composition; otherwise each cell is decoded under its own
        batch. No effect for a model without a batch.
    n_samples
        Posterior draws per group (scvi-tools' default is 5,000 as well).
    pseudocount
        Added to the gene proportions before the log (0: none; softmax proportions are
        positive).
    credible_level
        Mass of the equal-tailed credible interval of the LFC.
    seed
        Seed of the draws (local to the call).
    batch_size
        Cells encoded and read at a time.

    Returns
    -------
    DataFrame, one row per gene and comparison (index: gene names), comparisons stacked in
    the order of ``group1``, each sorted by ``proba_de`` then ``|lfc_mean|`` (``"change"``)
    or by ``bayes_factor`` (``"vanilla"``), all descending. Columns: ``proba_de``,
    ``proba_not_de`` (1 - proba_de), ``bayes_factor`` (log odds of proba_de) and
    ``is_de_fdr_<fdr_target>`` (bool) in ``"change"`` mode, or ``proba_m1`` (P(rho1 >
    rho2)), ``proba_m2`` and ``bayes_factor`` (log proba_m1 / proba_m2) in ``"vanilla"``
    mode; ``scale1``, ``scale2`` (mean decoded gene proportion per group); ``pseudocounts``,
    ``delta``; ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max`` and the
    credible interval ``lfc_ci_low``, ``lfc_ci_high`` (log2(group1 / group2));
    ``raw_mean1``, ``raw_mean2`` (mean counts), ``non_zeros_proportion1``,
    ``non_zeros_proportion2`` (share of cells with a count), ``raw_normalized_mean1``,
    ``raw_normalized_mean2`` (mean counts per 10^4), ``comparison`` ("A vs B" or
    "A vs Rest"), ``group1``, ``group2``. ``frame.attrs`` holds the parameters. For a
    ``"gaussian"`` model, scales are decoded means on the data's (log) scale, the LFC is
    their difference divided by ln 2, and the raw columns describe the values as given
    (``raw_normalized_mean*`` is NaN).
    """
    _check_options(mode, delta, fdr_target, credible_level, pseudocount)
    n_samples = check_positive_int("n_samples", n_samples)
    check_positive_int("batch_size", batch_size)
    adata = resolve_adata(model, adata)
    codes, names, data, encoded, where = _groups(model, adata, groupby, batch_size)
    sizes = np.bincount(codes[codes >= 0], minlength=len(names))
    comparisons = _comparisons(names, sizes, group1, group2, where)
    gaussian = model.config.likelihood == "gaussian"
    totals = _raw_statistics(data, codes, len(names), batch_size, normalise=not gaussian)
    rng = np.random.default_rng(seed)

    def draw(cells: np.ndarray) -> np.ndarray:
        return _scale_samples(model, encoded, data, cells, n_samples, rng, batch_correction)

    fixed = {}  # group2's draws, shared by every comparison against it
    frames = []
    for first, second in comparisons:
        s1 = draw(np.flatnonzero(codes == first))
        if second is None:
            s2 = draw(np.flatnonzero((codes >= 0) & (codes != first)))
        else:
            if second not in fixed:
                fixed[second] = draw(np.flatnonzero(codes == second))
            s2 = fixed[second]
        stats = _lfc_statistics(
            s1,
            s2,
            gaussian=gaussian,
            pseudocount=float(pseudocount),
            delta=float(delta),
            credible_level=float(credible_level),
        )
        raw1, raw2 = _side(totals, sizes, first, first), _side(totals, sizes, second, first)
        label2 = REST if second is None else names[second]
        frame = _frame(model, stats, s1, s2, raw1, raw2, gaussian, mode, delta, pseudocount)
        if mode == "change":
            frame[f"is_de_fdr_{fdr_target}"] = fdr_de_calls(frame["proba_de"], fdr_target)
        frame["comparison"] = f"{names[first]} vs {label2}"
        frame["group1"] = names[first]
        frame["group2"] = label2
        frames.append(_sorted(frame, mode))
    result = pd.concat(frames)
    result.attrs = {
        "mode": mode,
        "delta": float(delta),
        "fdr_target": float(fdr_target),
        "n_samples": n_samples,
        "groupby": groupby,
        "batch_correction": bool(batch_correction),
        "credible_level": float(credible_level),
        "seed": seed,
        "likelihood": model.config.likelihood,
    }
    return result


def _frame(model, stats, s1, s2, raw1, raw2, gaussian, mode, delta, pseudocount) -> pd.DataFrame:
    first, second = ("proba_de", "proba_not_de") if mode == "change" else ("proba_m1", "proba_m2")
    p = stats[first]
    columns: dict[str, np.ndarray | float] = {
        first: p,
        second: 1.0 - p,
        "bayes_factor": np.log(p + _EPS) - np.log(1.0 - p + _EPS),  # log odds
    }
    columns.update(
        scale1=s1.mean(0, dtype=np.float64),
        scale2=s2.mean(0, dtype=np.float64),
        pseudocounts=float(pseudocount),
        delta=float(delta),
        lfc_mean=stats["lfc_mean"],
        lfc_median=stats["lfc_median"],
        lfc_std=stats["lfc_std"],
        lfc_min=stats["lfc_min"],
        lfc_max=stats["lfc_max"],
        lfc_ci_low=stats["lfc_lo"],
        lfc_ci_high=stats["lfc_hi"],
        raw_mean1=raw1["raw"],
        raw_mean2=raw2["raw"],
        non_zeros_proportion1=raw1["nonzero"],
        non_zeros_proportion2=raw2["nonzero"],
        raw_normalized_mean1=np.nan if gaussian else raw1["normalised"],
        raw_normalized_mean2=np.nan if gaussian else raw2["normalised"],
    )
    return pd.DataFrame(columns, index=pd.Index(model.gene_names))


def _sorted(frame: pd.DataFrame, mode: str) -> pd.DataFrame:
    if mode == "vanilla":
        return frame.sort_values("bayes_factor", ascending=False, kind="stable")
    order = np.lexsort((-frame["lfc_mean"].abs().to_numpy(), -frame["proba_de"].to_numpy()))
    return frame.iloc[order]
