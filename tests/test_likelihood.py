"""ELBO and importance-sampled marginal log-likelihood against an exact integral."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gmmvae import GMMVAE, GMMVAEInputError
from gmmvae.likelihood import cell_elbo, cell_marginal_ll

FAST = {"progress_bar": False, "batch_size": 64}


@pytest.fixture(scope="module")
def one_dimensional(request):
    """Models with a 1-d latent (so log p(x) can be integrated on a grid), briefly trained."""
    from gmmvae.datasets import simulate

    adata = simulate(200, 40, 3, seed=1)
    GMMVAE.setup_anndata(adata)
    models = {
        variant: GMMVAE(adata, n_components=3, n_latent=1, variant=variant, seed=0).train(
            max_epochs=15, seed=0, **FAST
        )
        for variant in ("exact", "shared")
    }
    return adata, models


def grid_log_px(model: GMMVAE, adata, n_cells: int = 20) -> np.ndarray:
    """log p(x) = log integral p(x|z) p(z) dz on a fine grid over the 1-d latent."""
    module = model.module.eval()
    data = model._cells(adata).subset(np.arange(n_cells))
    batch = data[np.arange(n_cells)]
    grid = torch.linspace(-12.0, 12.0, 6001)
    step = float(grid[1] - grid[0])
    with torch.no_grad():
        z = grid.view(1, -1, 1).expand(n_cells, -1, -1)  # (B, S, 1)
        x = batch["x"]
        params = module.generative(z, x.sum(-1), batch["condition"], batch["batch"])
        log_joint = module.log_likelihood(x, params) + module.log_prior_density(z)
        return (torch.logsumexp(log_joint, -1) + math.log(step)).numpy()


@pytest.mark.parametrize("variant", ["exact", "shared"])
def test_marginal_ll_matches_the_integral_and_bounds_it_from_below(one_dimensional, variant):
    adata, models = one_dimensional
    model = models[variant]
    exact = grid_log_px(model, adata)
    few = model.get_marginal_ll(adata, indices=np.arange(20), n_mc_samples=5, return_mean=False)
    many = model.get_marginal_ll(adata, indices=np.arange(20), n_mc_samples=3000, return_mean=False)
    elbo = model.get_elbo(adata, indices=np.arange(20), return_mean=False)
    assert many.shape == (20,)
    np.testing.assert_allclose(many, exact, atol=0.05)
    # In expectation: ELBO <= IS(5) <= IS(3000) <= log p(x).
    assert elbo.mean() < few.mean() + 0.05
    assert few.mean() <= many.mean() + 0.01
    assert many.mean() <= exact.mean() + 0.02


def test_means_seeds_and_cell_choice(one_dimensional):
    adata, models = one_dimensional
    model = models["exact"]
    per_cell = model.get_marginal_ll(adata, n_mc_samples=10, return_mean=False, seed=3)
    assert per_cell.shape == (adata.n_obs,) and np.isfinite(per_cell).all()
    assert model.get_marginal_ll(adata, n_mc_samples=10, seed=3) == pytest.approx(per_cell.mean())
    again = model.get_marginal_ll(adata, n_mc_samples=10, return_mean=False, seed=3)
    np.testing.assert_array_equal(per_cell, again)
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[:7] = True
    subset = model.get_marginal_ll(adata, indices=mask, n_mc_samples=10, return_mean=False, seed=3)
    assert subset.shape == (7,)
    assert isinstance(model.get_elbo(), float)


def test_cells_unlike_the_training_cells_score_lower(one_dimensional):
    adata, models = one_dimensional
    model = models["shared"]
    scrambled = adata.copy()
    counts = scrambled.X.toarray()
    rng = np.random.default_rng(0)
    scrambled.X = rng.permuted(counts, axis=1)  # each cell's counts over random genes
    real = model.get_marginal_ll(adata, n_mc_samples=20)
    fake = model.get_marginal_ll(scrambled, n_mc_samples=20)
    assert fake < real - 10


@pytest.mark.filterwarnings("ignore:The mixture collapsed")
def test_elbo_uses_the_mixture_and_ignores_labels(small, hide_labels):
    hide_labels(small, 0.5)
    GMMVAE.setup_anndata(small, labels_key="label")
    model = GMMVAE(small, seed=0).train(max_epochs=2, seed=0, **FAST)
    data = model._cells(small, labels=True)
    assert (data.labels.numpy() >= 0).any()
    torch.manual_seed(0)
    values = cell_elbo(model.module, data)
    assert values.shape == (small.n_obs,) and np.isfinite(values).all()
    assert np.isfinite(cell_marginal_ll(model.module, data, 4)).all()


def test_bad_arguments_and_the_dirichlet_variant(small):
    GMMVAE.setup_anndata(small)
    model = GMMVAE(small, n_components=3, variant="dirichlet", seed=0)
    with pytest.raises(GMMVAEInputError, match="Train the model"):
        model.get_elbo()
    model.train(max_epochs=2, seed=0, **FAST)
    assert np.isfinite(model.get_elbo())
    with pytest.raises(GMMVAEInputError, match="no marginal likelihood"):
        model.get_marginal_ll()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(GMMVAEInputError, match="n_mc_samples"):
            model.get_marginal_ll(n_mc_samples=bad)
    with pytest.raises(GMMVAEInputError, match="genes"):
        model.get_elbo(small[:, :50].copy())
