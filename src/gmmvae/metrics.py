"""Clustering and classification metrics: ARI, NMI, Hungarian accuracy, purity, F1, ECE."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
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
