"""Model-agnostic scores on arrays: clustering (ARI, NMI, Hungarian accuracy, purity),
classification (accuracy, macro-F1, calibration error), distances between sets of cells (MMD,
energy distance) and agreement of per-gene statistics (R², moment correlations).

Scores that fit a model or run a scanpy analysis (two-sample classifiers, DEGs, marker overlap,
treatment-effect scores) are in :mod:`gmmvae.evaluation`.
"""

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


# ------------------------------------------------------------------ treatment-effect prediction
def r2_pearson(real: Sequence[float], predicted: Sequence[float]) -> float:
    """scGen's "R²": the squared Pearson correlation (``linregress(...).rvalue ** 2``); NaN
    when either side is constant (no correlation is defined)."""
    from scipy.stats import linregress

    real, predicted = np.asarray(real, float), np.asarray(predicted, float)
    if np.ptp(real) == 0 or np.ptp(predicted) == 0:
        return float("nan")
    return float(linregress(real, predicted).rvalue ** 2)


def r2_determination(real: Sequence[float], predicted: Sequence[float]) -> float:
    """Coefficient of determination with ``real`` as the truth (``sklearn.metrics.r2_score``,
    as CPA reports); unlike the squared correlation it penalises offsets and scale errors."""
    return float(skm.r2_score(np.asarray(real, float), np.asarray(predicted, float)))


def energy_distance(a: np.ndarray, b: np.ndarray, *, max_cells: int = 2000, seed: int = 0) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic) between two sets of
    cells (rows, e.g. PC scores); 0 when the distributions coincide."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    a = np.asarray(a, float)[rng.permutation(len(a))[:max_cells]]
    b = np.asarray(b, float)[rng.permutation(len(b))[:max_cells]]
    return float(2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())
