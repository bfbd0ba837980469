"""The response a type borrows: leave-one-out weights and errors, between-type draws."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gmmvae.response import _leave_one_out_weights, between_type_draws, leave_one_out_errors


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
    rng = np.random.default_rng(0)
    control = [rng.normal(size=(20, 4)) for _ in range(3)]
    response = np.array([1.0, -2.0, 0.0, 0.5])
    same = [(c + response, c) for c in control]
    donors = {"loo_weights": (1 - np.eye(3)) / 2}
    np.testing.assert_allclose(leave_one_out_errors(same, donors), 0.0, atol=1e-12)
    # One type responds twice as strongly on gene 0: its error is its excess over the
    # others' mean, theirs half that, the other way.
    strong = response + np.array([1.0, 0, 0, 0])
    differ = [(control[0] + strong, control[0]), *same[1:]]
    errors = leave_one_out_errors(differ, donors)
    np.testing.assert_allclose(errors[:, 0], [1.0, -0.5, -0.5], atol=1e-12)
    np.testing.assert_allclose(errors[:, 1:], 0.0, atol=1e-12)


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
