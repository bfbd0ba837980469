"""The response a type borrows: leave-one-out weights and errors, between-type draws."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gmmvae import metrics
from gmmvae.data import CellData
from gmmvae.response import (
    _leave_one_out_weights,
    between_type_draws,
    leave_one_out_errors,
    observed_responses,
)


def test_leave_one_out_weights_follow_the_borrowing_rule():
    centroids = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    uniform = _leave_one_out_weights(centroids, "uniform")
    np.testing.assert_allclose(uniform, (1 - np.eye(3)) / 2)
    near = _leave_one_out_weights(centroids, "similarity")
    np.testing.assert_allclose(np.diag(near), 0.0)
    np.testing.assert_allclose(near.sum(1), 1.0)
    assert near[0, 1] > 0.99 and near[2, 1] > near[2, 0]  # the nearest other donor lends most
    np.testing.assert_array_equal(_leave_one_out_weights(centroids[:1], "uniform"), [[0.0]])


def test_leave_one_out_errors_are_zero_when_types_respond_alike():
    response = np.array([1.0, -2.0, 0.0, 0.5])
    donors = {"loo_weights": (1 - np.eye(3)) / 2}
    np.testing.assert_allclose(leave_one_out_errors(np.tile(response, (3, 1)), donors), 0.0)
    # One type responds twice as strongly on gene 0: its error is its excess over the
    # others' mean, theirs half that, the other way.
    differ = np.tile(response, (3, 1))
    differ[0, 0] += 1.0
    errors = leave_one_out_errors(differ, donors)
    np.testing.assert_allclose(errors[:, 0], [1.0, -0.5, -0.5], atol=1e-12)
    np.testing.assert_allclose(errors[:, 1:], 0.0, atol=1e-12)
    # Against what the others lend (e.g. their decoded responses, 0.2 too weak on gene 1):
    # every donor's error is its own response minus the lent mean of the others'.
    lent = np.tile(response, (3, 1))
    lent[:, 1] += 0.2
    errors = leave_one_out_errors(differ, donors, lent=lent)
    np.testing.assert_allclose(errors[:, 1], -0.2, atol=1e-12)
    np.testing.assert_allclose(errors[:, 0], [1.0, 0.0, 0.0], atol=1e-12)


def test_observed_responses_are_mean_log_cp10k_differences():
    """Per donor: its target cells' mean log1p CP10k minus its source cells', read in chunks;
    cells of other components and conditions are left out."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, (90, 6)).astype(np.float32)
    components = rng.integers(0, 4, 90)  # component 3 is no donor
    conditions = rng.integers(0, 3, 90)  # condition 2 is neither source nor target
    data = CellData(counts, components, conditions, np.zeros(90, dtype=int))
    donors = {"donors": np.array([2, 0]), "target": 1}
    got = observed_responses(data, components, conditions, donors, 0, chunk=16)
    logs = metrics.log_cp10k(counts)
    for row, k in enumerate((2, 0)):
        treated = logs[(components == k) & (conditions == 1)].mean(0)
        control = logs[(components == k) & (conditions == 0)].mean(0)
        np.testing.assert_allclose(got[row], treated - control, rtol=1e-5, atol=1e-6)
    raw = observed_responses(data, components, conditions, donors, 0, log_scale=False)
    expected = counts[(components == 2) & (conditions == 1)].mean(0)
    expected -= counts[(components == 2) & (conditions == 0)].mean(0)
    np.testing.assert_allclose(raw[0], expected, rtol=1e-5)


@pytest.mark.parametrize("n_donors", [3, 6])
def test_between_type_draws_give_a_student_t_prediction_interval(n_donors):
    residuals = np.linspace(-1.0, 1.0, n_donors)[:, None] * np.array([[1.0, 3.0]])
    draws = between_type_draws(residuals, 200_000, 0.9, np.random.default_rng(1))
    assert draws.shape == (200_000, 2)
    spread = np.sqrt((residuals**2).mean(0))
    expected = stats.t.ppf(0.95, n_donors - 1) * spread
    np.testing.assert_allclose(np.quantile(draws, 0.95, axis=0), expected, rtol=0.02)
    np.testing.assert_allclose(draws.mean(0), 0.0, atol=0.02 * spread.max())
    wider = between_type_draws(residuals, 200_000, 0.99, np.random.default_rng(1))
    assert (np.quantile(wider, 0.995, axis=0) > np.quantile(draws, 0.995, axis=0)).all()


def test_between_type_draws_need_two_donors():
    draws = between_type_draws(np.ones((1, 5)), 7, 0.9, np.random.default_rng(0))
    np.testing.assert_array_equal(draws, np.zeros((7, 5)))
