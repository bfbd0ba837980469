"""MLP blocks with covariates injected at every layer."""

from __future__ import annotations

import pytest
import torch

from gmmvae.nn import CovariateMLP, one_hot_covariates


def test_one_hot_covariates_concatenates_and_skips_single_level():
    codes = [torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]), torch.tensor([1, 0, 1])]
    out = one_hot_covariates(codes, [3, 1, 2])
    expected = torch.tensor(
        [[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 1]], dtype=torch.float32
    )
    torch.testing.assert_close(out, expected)


def test_one_hot_covariates_none_when_no_covariate_varies():
    assert one_hot_covariates([torch.zeros(4), torch.zeros(4)], [1, 1]) is None
    assert one_hot_covariates([], []) is None


def test_one_hot_covariates_requires_matching_lengths():
    with pytest.raises(ValueError):
        one_hot_covariates([torch.zeros(2)], [2, 3])


def test_covariates_enter_every_layer():
    mlp = CovariateMLP(10, n_hidden=8, n_layers=3, n_covariates=2)
    assert [layer["linear"].in_features for layer in mlp.layers] == [12, 10, 10]
    assert all(layer["linear"].out_features == 8 for layer in mlp.layers)


def test_covariate_mlp_shapes_and_covariate_effect():
    torch.manual_seed(0)
    mlp = CovariateMLP(6, n_hidden=5, n_layers=2, n_covariates=2, dropout_rate=0.0).eval()
    x = torch.randn(4, 6)
    c0 = torch.tensor([[1.0, 0.0]]).expand(4, 2)
    c1 = torch.tensor([[0.0, 1.0]]).expand(4, 2)
    out0, out1 = mlp(x, c0), mlp(x, c1)
    assert out0.shape == (4, 5)
    assert (out0 >= 0).all()  # ReLU output
    assert not torch.allclose(out0, out1)


def test_covariate_mlp_broadcasts_covariates_over_components():
    torch.manual_seed(0)
    mlp = CovariateMLP(3, n_hidden=7, n_layers=2, n_covariates=2, dropout_rate=0.0).eval()
    z = torch.randn(4, 5, 3)  # (B, K, d)
    cov = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0]), 2).float()  # (B, C)
    out = mlp(z, cov.unsqueeze(1))  # (B, 1, C) against (B, K, d)
    assert out.shape == (4, 5, 7)
    # Each (cell, component) row equals the 2-D call with that cell's covariates.
    for k in range(5):
        torch.testing.assert_close(out[:, k], mlp(z[:, k], cov))


def test_covariate_mlp_without_covariates_and_single_cell_batch():
    mlp = CovariateMLP(6, n_hidden=4, n_layers=2).train()  # LayerNorm: one cell is fine
    out = mlp(torch.randn(1, 6))
    assert out.shape == (1, 4)
    assert torch.isfinite(out).all()
