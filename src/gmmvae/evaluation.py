"""Evaluation that fits a model or runs a scanpy analysis: classifier two-sample tests,
marker overlap, differentially expressed genes and treatment-effect scores (DESIGN.md §2).

Inputs are log1p-CP10k matrices (cells x genes) unless a docstring says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from gmmvae.metrics import energy_distance, r2_determination, r2_pearson


# ---------------------------------------------------------------------- synthetic cells
def pooled_pcs(
    real: np.ndarray, synthetic: np.ndarray, n_pcs: int = 50, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """PCA fitted on the pooled real + synthetic cells; returns both sets of scores."""
    from sklearn.decomposition import PCA

    pooled = np.vstack([real, synthetic])
    n_pcs = min(n_pcs, pooled.shape[0] - 1, pooled.shape[1])
    scores = PCA(n_pcs, random_state=seed).fit_transform(pooled)
    return scores[: len(real)], scores[len(real) :]


def c2st_auc(real: np.ndarray, synthetic: np.ndarray, *, n_pcs: int = 50, seed: int = 0) -> float:
    """Classifier two-sample test: 5-fold ROC-AUC of a random forest telling real from synthetic.

    Inputs are log1p-CP10k matrices (cells x genes); 0.5 means indistinguishable.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    a, b = pooled_pcs(real, synthetic, n_pcs, seed)
    x = np.vstack([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    folds = StratifiedKFold(n_splits=min(5, len(a), len(b)), shuffle=True, random_state=seed)
    forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    return float(cross_val_score(forest, x, y, cv=folds, scoring="roc_auc").mean())


def _top_markers(log_data: np.ndarray, groups: np.ndarray, genes, n: int) -> dict[str, set]:
    import anndata as ad
    import scanpy as sc

    holder = ad.AnnData(log_data, obs=pd.DataFrame({"g": pd.Categorical(groups)}))
    holder.var_names = [str(g) for g in genes]
    sc.tl.rank_genes_groups(holder, "g", method="wilcoxon", n_genes=n)
    names = holder.uns["rank_genes_groups"]["names"]
    return {g: set(names[g][:n]) for g in names.dtype.names}


def marker_overlap(
    real: np.ndarray,
    real_groups: Sequence[str],
    synthetic: np.ndarray,
    synthetic_groups: Sequence[str],
    genes: Sequence[str],
    n: int = 20,
) -> dict[str, float]:
    """Per type, the fraction of its top-``n`` real markers (Wilcoxon, one-vs-rest) that are
    also top-``n`` markers of the synthetic cells of that type."""
    real_m = _top_markers(real, np.asarray(real_groups).astype(str), genes, n)
    syn_m = _top_markers(synthetic, np.asarray(synthetic_groups).astype(str), genes, n)
    return {g: len(real_m[g] & syn_m.get(g, set())) / n for g in real_m}


# ------------------------------------------------------------------ treatment-effect prediction
def top_degs(
    stimulated: np.ndarray,
    control: np.ndarray,
    genes: Sequence[str],
    n: int = 100,
) -> list[str]:
    """The first ``n`` genes of ``sc.tl.rank_genes_groups`` (Wilcoxon), stimulated vs control.

    Inputs are log1p-CP10k matrices (cells x genes) of real cells of one type; genes are
    ranked by the score of the stimulated group, as scGen's evaluation does.
    """
    import anndata as ad
    import scanpy as sc

    holder = ad.AnnData(
        np.vstack([stimulated, control]).astype(np.float32),
        obs=pd.DataFrame(
            {"g": pd.Categorical(["stim"] * len(stimulated) + ["ctrl"] * len(control))},
            index=[str(i) for i in range(len(stimulated) + len(control))],
        ),
    )
    holder.var_names = [str(g) for g in genes]
    sc.tl.rank_genes_groups(holder, "g", groups=["stim"], reference="ctrl", method="wilcoxon")
    return [str(g) for g in holder.uns["rank_genes_groups"]["names"]["stim"][:n]]


def perturbation_scores(
    real: np.ndarray,
    predicted: np.ndarray,
    genes: Sequence[str],
    degs: Sequence[str],
    *,
    control: np.ndarray | None = None,
    pcs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """How well predicted treated cells match the real ones (DESIGN.md §2, scGen protocol).

    ``real``, ``predicted`` (and ``control``, the cells the prediction started from) are
    log1p-CP10k matrices (cells x genes) with columns ``genes``; ``degs`` are the real top
    DEGs (e.g. :func:`top_degs` of real treated vs control cells).

    Keys: ``{mean,var}_r2[_deg]`` (scGen's squared Pearson of per-gene means / variances, on
    all genes and on ``degs``) and ``{mean,var}_r2_sklearn[_deg]`` (coefficient of
    determination). With ``control``: ``delta_pcc[_deg]`` (Pearson of predicted minus control
    mean with real minus control mean, which the unchanged control cannot game),
    ``direction_accuracy_deg`` (share of ``degs`` whose predicted change has the real sign)
    and ``deg_recovery`` (share of ``degs`` among the top ``len(degs)`` DEGs of predicted vs
    control cells). With ``pcs`` = (real scores, predicted scores): ``energy_distance``.
    """
    real, predicted = np.asarray(real, float), np.asarray(predicted, float)
    if real.shape[1] != predicted.shape[1] or real.shape[1] != len(genes):
        raise ValueError(
            f"real {real.shape} and predicted {predicted.shape} must have len(genes) = "
            f"{len(genes)} columns."
        )
    position = pd.Index([str(g) for g in genes]).get_indexer([str(g) for g in degs])
    if (position < 0).any():
        raise ValueError("every DEG must be one of genes.")
    scores: dict[str, float] = {}
    for name, stat in (("mean", np.mean), ("var", np.var)):
        r, p = stat(real, axis=0), stat(predicted, axis=0)
        for suffix, idx in (("", slice(None)), ("_deg", position)):
            scores[f"{name}_r2{suffix}"] = r2_pearson(r[idx], p[idx])
            scores[f"{name}_r2_sklearn{suffix}"] = r2_determination(r[idx], p[idx])
    if control is not None:
        scores.update(delta_scores(real, predicted, np.asarray(control, float), genes, degs))
    if pcs is not None:
        scores["energy_distance"] = energy_distance(*pcs)
    return scores


def delta_scores(
    real: np.ndarray,
    predicted: np.ndarray,
    control: np.ndarray,
    genes: Sequence[str],
    degs: Sequence[str],
) -> dict[str, float]:
    """Scores of the predicted change from control: delta-PCC on all genes and on ``degs``,
    direction accuracy and DEG recovery (see :func:`perturbation_scores`)."""
    from scipy.stats import pearsonr

    position = pd.Index([str(g) for g in genes]).get_indexer([str(g) for g in degs])
    base = control.mean(0)
    real_delta, predicted_delta = real.mean(0) - base, predicted.mean(0) - base
    scores = {}
    for suffix, idx in (("", slice(None)), ("_deg", position)):
        a, b = real_delta[idx], predicted_delta[idx]
        constant = np.allclose(a, a.flat[0]) or np.allclose(b, b.flat[0])
        scores[f"delta_pcc{suffix}"] = float("nan") if constant else float(pearsonr(a, b)[0])
    agree = np.sign(predicted_delta[position]) == np.sign(real_delta[position])
    scores["direction_accuracy_deg"] = float(agree.mean())
    predicted_degs = top_degs(predicted, control, genes, len(position))
    scores["deg_recovery"] = len(set(predicted_degs) & {str(g) for g in degs}) / len(position)
    return scores
