"""Clustering and classification metrics against scikit-learn and hand-computed examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from gmmvae import metrics

TRUE = np.array(["a", "a", "a", "b", "b", "c", "c", "c", "c", "a"])
PRED = np.array([1, 1, 2, 2, 2, 0, 0, 0, 1, 1])


def test_ari_and_nmi_match_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(5):
        t, p = rng.integers(0, 4, 200), rng.integers(0, 6, 200)
        p[:100] = t[:100]  # partly informative
        assert metrics.ari(t, p) == pytest.approx(skm.adjusted_rand_score(t, p))
        assert metrics.nmi(t, p) == pytest.approx(skm.normalized_mutual_info_score(t, p))
    assert metrics.ari(TRUE, PRED) == pytest.approx(skm.adjusted_rand_score(TRUE, PRED))


def test_metrics_accept_strings_categoricals_and_numbers():
    as_cat = pd.Categorical(TRUE)
    assert metrics.ari(as_cat, PRED) == metrics.ari(list(TRUE), PRED.astype(str))
    assert metrics.ari(TRUE, TRUE) == 1.0
    assert metrics.nmi(TRUE, TRUE) == pytest.approx(1.0)


def test_hungarian_accuracy_of_permuted_labelling_is_one():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, 300)
    permuted = np.array([3, 0, 4, 1, 2])[truth]
    assert metrics.hungarian_accuracy(truth, permuted) == 1.0
    assert metrics.accuracy(truth, permuted) < 0.5  # plain accuracy is not permutation-free


def test_hungarian_accuracy_hand_computed():
    # Best matching: 1->a (3 of 4 '1' cells are 'a'), 2->b (2), 0->c (3): 8 of 10 correct.
    assert metrics.hungarian_accuracy(TRUE, PRED) == pytest.approx(0.8)
    # More clusters than labels: the extra cluster counts as wrong.
    assert metrics.hungarian_accuracy(["a", "a", "b", "b"], [0, 1, 2, 2]) == pytest.approx(0.75)


def test_purity():
    assert metrics.purity(TRUE, PRED) == pytest.approx(0.8)
    rng = np.random.default_rng(2)
    for _ in range(5):
        t, p = rng.integers(0, 4, 100), rng.integers(0, 7, 100)
        assert metrics.purity(t, p) >= metrics.hungarian_accuracy(t, p)
    singletons = np.arange(len(TRUE))
    assert metrics.purity(TRUE, singletons) == 1.0
    assert metrics.hungarian_accuracy(TRUE, singletons) == pytest.approx(0.3)


def test_contingency_rows_are_clusters():
    table = metrics.contingency(TRUE, PRED)
    assert list(table.index) == ["0", "1", "2"]
    assert list(table.columns) == ["a", "b", "c"]
    assert table.loc["1", "a"] == 3
    assert table.to_numpy().sum() == len(TRUE)


def test_accuracy_and_macro_f1_hand_computed():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    assert metrics.accuracy(truth, pred) == pytest.approx(4 / 6)
    # a: P=1, R=2/3 -> F1=0.8; b: P=1/2, R=1/2 -> 0.5; c: P=1/2, R=1 -> 2/3.
    assert metrics.macro_f1(truth, pred) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics.macro_f1(truth, pred) == pytest.approx(
        skm.f1_score(truth, pred, average="macro")
    )


def test_macro_f1_averages_over_true_labels_only():
    # 'x' is predicted but never true: it lowers recall of 'a' but is not averaged in.
    truth, pred = ["a", "a", "b", "b"], ["a", "x", "b", "b"]
    assert metrics.macro_f1(truth, pred) == pytest.approx((2 / 3 + 1.0) / 2)
    assert metrics.accuracy(truth, pred) == pytest.approx(0.75)


def test_expected_calibration_error_hand_computed():
    # 15 bins of width 1/15: 0.05 -> bin 0, 0.55 -> bin 8, 0.95 -> bin 14.
    confidence = [0.95, 0.95, 0.95, 0.95, 0.55, 0.55, 0.05, 0.05, 0.05, 0.05]
    correct = [1, 1, 1, 0, 1, 0, 0, 0, 0, 1]
    # bin 14: 4 cells, acc 0.75, conf 0.95 -> 0.4 * 0.20
    # bin 8:  2 cells, acc 0.5,  conf 0.55 -> 0.2 * 0.05
    # bin 0:  4 cells, acc 0.25, conf 0.05 -> 0.4 * 0.20
    expected = 0.4 * 0.2 + 0.2 * 0.05 + 0.4 * 0.2
    assert metrics.expected_calibration_error(confidence, correct) == pytest.approx(expected)


def test_expected_calibration_error_bins_are_fifteen_wide():
    # 0.61 and 0.69 fall in bins 9 and 10 of 15, but share bin 6 of 10.
    confidence, correct = [0.61, 0.69], [1, 0]
    separate = 0.5 * (1 - 0.61) + 0.5 * 0.69
    assert metrics.expected_calibration_error(confidence, correct) == pytest.approx(separate)
    shared = abs(0.5 - 0.65)
    assert metrics.expected_calibration_error(confidence, correct, n_bins=10) == pytest.approx(
        shared
    )


def test_expected_calibration_error_zero_when_calibrated():
    # Bin at 0.8 with 80 % correct, bin at 0.5 with 50 %, confidence 1.0 all correct.
    confidence = [0.8] * 10 + [0.5] * 4 + [1.0] * 3
    correct = [1] * 8 + [0] * 2 + [1, 0, 1, 0] + [1] * 3
    assert metrics.expected_calibration_error(confidence, correct) == pytest.approx(0.0)


def test_expected_calibration_error_worst_case_and_shape_check():
    assert metrics.expected_calibration_error([1.0, 1.0], [0, 0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        metrics.expected_calibration_error([0.5, 0.6], [1])


def test_clustering_scores_bundle():
    scores = metrics.clustering_scores(TRUE, PRED)
    assert scores == {
        "ari": metrics.ari(TRUE, PRED),
        "nmi": metrics.nmi(TRUE, PRED),
        "accuracy": metrics.hungarian_accuracy(TRUE, PRED),
        "purity": metrics.purity(TRUE, PRED),
    }


# ------------------------------------------------------------------- synthetic-cell metrics
def _two_clouds(shift: float, n: int = 150, genes: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (n, genes))
    b = rng.normal(shift, 1.0, (n, genes))
    return a, b


def test_log_cp10k_matches_hand_computation():
    from scipy import sparse

    counts = np.array([[1.0, 3.0], [0.0, 0.0]])
    expected = np.log1p(np.array([[2500.0, 7500.0], [0.0, 0.0]]))
    np.testing.assert_allclose(metrics.log_cp10k(sparse.csr_matrix(counts)), expected, rtol=1e-6)


def test_mmd_grows_with_the_shift():
    values = [metrics.mmd_rbf(*_two_clouds(s)) for s in (0.0, 0.5, 2.0)]
    assert values[0] < values[1] < values[2]
    assert values[0] < 0.02


def test_moment_correlations():
    rng = np.random.default_rng(0)
    real = rng.gamma(2.0, rng.uniform(0.1, 5, 40), (300, 40))
    scores = metrics.moment_correlations(real, real * 1.0)
    assert scores["mean_r"] == pytest.approx(1.0) and scores["var_r"] == pytest.approx(1.0)
    shuffled = metrics.moment_correlations(real, real[:, rng.permutation(40)])
    assert shuffled["mean_r"] < 0.6


# ------------------------------------------------------------------ treatment-effect prediction
def test_r2_pearson_is_scgens_and_r2_determination_is_sklearns():
    from scipy.stats import linregress

    rng = np.random.default_rng(3)
    real = rng.gamma(2.0, 1.0, 300)
    predicted = real + rng.normal(0, 0.5, 300)
    assert metrics.r2_pearson(real, predicted) == pytest.approx(
        linregress(real, predicted).rvalue ** 2
    )
    assert metrics.r2_determination(real, predicted) == pytest.approx(skm.r2_score(real, predicted))
    # An offset and a scale error leave the squared correlation at 1, not the determination.
    shifted = 2.0 * real + 1.0
    assert metrics.r2_pearson(real, shifted) == pytest.approx(1.0)
    assert metrics.r2_determination(real, shifted) < 0.0
    assert np.isnan(metrics.r2_pearson(real, np.ones_like(real)))  # constant: undefined


def test_energy_distance():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(200, 5))
    assert metrics.energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    near = metrics.energy_distance(a, rng.normal(size=(200, 5)))
    far = metrics.energy_distance(a, rng.normal(size=(200, 5)) + 2.0)
    assert 0.0 <= near < 0.2 < far
    assert metrics.energy_distance(a, a + 4.0) > far
