"""Clustering and classification metrics: ARI, NMI, Hungarian accuracy, purity, F1, ECE."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm


def _codes(values: Sequence) -> np.ndarray:
    return pd.factorize(pd.Series(np.asarray(values)).astype(str))[0]


def ari(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Adjusted Rand index."""
    return float(skm.adjusted_rand_score(_codes(labels_true), _codes(labels_pred)))


def nmi(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Normalised mutual information (arithmetic normalisation, as scikit-learn)."""
    return float(skm.normalized_mutual_info_score(_codes(labels_true), _codes(labels_pred)))


def contingency(labels_true: Sequence, labels_pred: Sequence) -> pd.DataFrame:
    """Counts of cells per (cluster, label) pair; clusters as rows."""
    return pd.crosstab(
        pd.Series(np.asarray(labels_pred)).astype(str).to_numpy(),
        pd.Series(np.asarray(labels_true)).astype(str).to_numpy(),
    )


def hungarian_accuracy(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Accuracy after the one-to-one matching of clusters to labels that maximises it.

    Clusters left unmatched (more clusters than labels) count as wrong.
    """
    table = contingency(labels_true, labels_pred).to_numpy()
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def purity(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Fraction of cells carrying their cluster's majority label (the seed's measure).

    Many small clusters inflate it; report it beside Hungarian accuracy, never instead.
    """
    table = contingency(labels_true, labels_pred).to_numpy()
    return float(table.max(1).sum() / table.sum())


def accuracy(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Fraction of cells whose predicted label equals the true one."""
    t = pd.Series(np.asarray(labels_true)).astype(str).to_numpy()
    p = pd.Series(np.asarray(labels_pred)).astype(str).to_numpy()
    return float((t == p).mean())


def macro_f1(labels_true: Sequence, labels_pred: Sequence) -> float:
    """F1 averaged over the true labels (each label weighs the same)."""
    t = pd.Series(np.asarray(labels_true)).astype(str).to_numpy()
    p = pd.Series(np.asarray(labels_pred)).astype(str).to_numpy()
    return float(skm.f1_score(t, p, labels=np.unique(t), average="macro", zero_division=0))


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 15
) -> float:
    """ECE of the top-class confidence over ``n_bins`` equal-width bins in [0, 1].

    Sum over bins of (fraction of cells in the bin) * |accuracy - mean confidence|.
    """
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError("confidence and correct must be 1-D and of the same length.")
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)  # confidence 1.0 -> last bin
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.mean() * abs(hit[inside].mean() - conf[inside].mean())
    return float(total)


def clustering_scores(labels_true: Sequence, labels_pred: Sequence) -> dict[str, float]:
    """ARI, NMI, Hungarian accuracy and purity in one dict."""
    return {
        "ari": ari(labels_true, labels_pred),
        "nmi": nmi(labels_true, labels_pred),
        "accuracy": hungarian_accuracy(labels_true, labels_pred),
        "purity": purity(labels_true, labels_pred),
    }


# ------------------------------------------------------------------------ synthetic cells
def log_cp10k(matrix: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """Dense log1p(counts / library * 1e4), float32; the scale synthetic cells are judged on."""
    x = matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)
    x = x.astype(np.float32)
    library = np.maximum(x.sum(1, keepdims=True), 1.0)
    return np.log1p(x / library * 1e4)


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


def mmd_rbf(a: np.ndarray, b: np.ndarray, *, max_cells: int = 2000, seed: int = 0) -> float:
    """Squared MMD (biased estimate) with an RBF kernel whose bandwidth is the median heuristic."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    a = a[rng.permutation(len(a))[:max_cells]]
    b = b[rng.permutation(len(b))[:max_cells]]
    pooled = np.vstack([a, b])
    sq = cdist(pooled, pooled, "sqeuclidean")
    bandwidth = np.median(sq[np.triu_indices(len(pooled), 1)]) or 1.0
    kernel = np.exp(-sq / bandwidth)
    n = len(a)
    return float(kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean())


def moment_correlations(real: np.ndarray, synthetic: np.ndarray) -> dict[str, float]:
    """Pearson r of per-gene means and of per-gene variances (real vs synthetic)."""
    from scipy.stats import pearsonr

    return {
        "mean_r": float(pearsonr(real.mean(0), synthetic.mean(0))[0]),
        "var_r": float(pearsonr(real.var(0), synthetic.var(0))[0]),
    }


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
def r2_pearson(real: Sequence[float], predicted: Sequence[float]) -> float:
    """scGen's "R²": the squared Pearson correlation (``linregress(...).rvalue ** 2``)."""
    from scipy.stats import linregress

    return float(linregress(np.asarray(real, float), np.asarray(predicted, float)).rvalue ** 2)


def r2_determination(real: Sequence[float], predicted: Sequence[float]) -> float:
    """Coefficient of determination with ``real`` as the truth (``sklearn.metrics.r2_score``,
    as CPA reports); unlike the squared correlation it penalises offsets and scale errors."""
    return float(skm.r2_score(np.asarray(real, float), np.asarray(predicted, float)))


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


def energy_distance(a: np.ndarray, b: np.ndarray, *, max_cells: int = 2000, seed: int = 0) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic) between two sets of
    cells (rows, e.g. PC scores); 0 when the distributions coincide."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    a = np.asarray(a, float)[rng.permutation(len(a))[:max_cells]]
    b = np.asarray(b, float)[rng.permutation(len(b))[:max_cells]]
    return float(2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())


def perturbation_scores(
    real: np.ndarray,
    predicted: np.ndarray,
    genes: Sequence[str],
    degs: Sequence[str],
    *,
    pcs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """R² of per-gene means and variances, predicted vs real treated cells, on all genes and
    on ``degs``; energy distance on ``pcs`` = (real scores, predicted scores) when given.

    ``real`` and ``predicted`` are log1p-CP10k matrices (cells x genes) with columns ``genes``.
    Keys: ``{mean,var}_r2[_deg]`` (squared Pearson, the headline) and
    ``{mean,var}_r2_sklearn[_deg]`` (coefficient of determination), ``energy_distance``.
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
    if pcs is not None:
        scores["energy_distance"] = energy_distance(*pcs)
    return scores
