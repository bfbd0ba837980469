"""Reproducibility on CPU: the same seed gives bit-identical weights and predictions.

Two training runs with the same seed, and a model reloaded from disk, must agree bit for bit
(with one intra-op thread, as conftest.py sets); different seeds must give different models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anndata import AnnData

from gmmvae import GMMVAE
from gmmvae.datasets import simulate

NET = {"n_hidden": 32, "n_latent": 4}
TRAIN = {"max_epochs": 3, "batch_size": 32, "progress_bar": False}

CONFIGS = {
    # name: (setup_anndata options, GMMVAE options)
    "exact": ({}, {"n_components": 3, "variant": "exact"}),
    "shared": ({}, {"n_components": 3, "variant": "shared"}),
    "dirichlet": ({}, {"n_components": 3, "variant": "dirichlet"}),
    "semi_supervised_conditional": (
        {"labels_key": "label", "condition_key": "condition", "batch_key": "batch"},
        {"likelihood": "zinb"},
    ),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (as conftest.py): reductions then run in a fixed order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cells() -> AnnData:
    adata = simulate(150, 40, 3, n_conditions=2, n_batches=2, seed=4)
    label = adata.obs["cell_type"].astype(str).to_numpy()
    label[np.arange(adata.n_obs) % 4 != 0] = "Unknown"  # a quarter labelled: mixed batches
    adata.obs["label"] = label
    return adata


def _train(cells: AnnData, config: str, *, seed: int = 0, train_seed: int | None = None):
    setup, options = CONFIGS[config]
    adata = cells.copy()
    GMMVAE.setup_anndata(adata, **setup)
    model = GMMVAE(adata, seed=seed, **NET, **options)
    model.train(seed=seed if train_seed is None else train_seed, **TRAIN)
    return model, adata


def _state(model: GMMVAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _assert_identical_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _outputs(model: GMMVAE, adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
    query = adata.copy()
    return model.predict(query).to_numpy(), model.get_latent(query)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_same_seed_bit_identical_training(cells, config):
    torch.manual_seed(1)  # the global RNG state must not matter
    first, adata = _train(cells, config)
    torch.manual_seed(2)
    np.random.seed(2)  # noqa: NPY002 -- perturbing the global state is the point
    second, _ = _train(cells, config)

    _assert_identical_state(_state(first), _state(second))
    assert first.train_params == second.train_params
    assert first.train_params["epochs_run"] == TRAIN["max_epochs"]
    np.testing.assert_array_equal(first.history.to_numpy(), second.history.to_numpy())
    probs_1, latent_1 = _outputs(first, adata)
    probs_2, latent_2 = _outputs(second, adata)
    np.testing.assert_array_equal(probs_1, probs_2)
    np.testing.assert_array_equal(latent_1, latent_2)
    # Training moved the weights: the equality above is not that of two untouched models.
    untrained = GMMVAE(adata, seed=0, **NET, **CONFIGS[config][1])
    assert not torch.equal(untrained.module.decoder_out.weight, first.module.decoder_out.weight)


@pytest.mark.parametrize("config", ["exact", "semi_supervised_conditional"])
def test_save_load_then_predict_bit_identical(cells, config, tmp_path: Path):
    model, adata = _train(cells, config)
    probs, latent = _outputs(model, adata)
    model.save(tmp_path / "m")

    torch.manual_seed(123)
    loaded = GMMVAE.load(tmp_path / "m", adata.copy())
    _assert_identical_state(_state(model), _state(loaded))
    got_probs, got_latent = _outputs(loaded, adata)
    np.testing.assert_array_equal(got_probs, probs)
    np.testing.assert_array_equal(got_latent, latent)

    # Loading twice, and predicting twice, changes nothing either.
    again = GMMVAE.load(tmp_path / "m")
    np.testing.assert_array_equal(again.predict(adata.copy()).to_numpy(), probs)
    np.testing.assert_array_equal(again.predict(adata.copy()).to_numpy(), probs)


def test_prediction_independent_of_global_rng(cells):
    model, adata = _train(cells, "exact")
    torch.manual_seed(7)
    probs_1, latent_1 = _outputs(model, adata)
    torch.manual_seed(8)
    probs_2, latent_2 = _outputs(model, adata)
    np.testing.assert_array_equal(probs_1, probs_2)
    np.testing.assert_array_equal(latent_1, latent_2)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_different_seeds_give_different_models(cells, config):
    base, adata = _train(cells, config, seed=0)
    other, _ = _train(cells, config, seed=1)
    state, other_state = _state(base), _state(other)
    initial = GMMVAE(adata, seed=0, **NET, **CONFIGS[config][1]).module.state_dict()
    # The parameters that training moves (the Dirichlet variant, say, never uses prior_logvar)
    # all depend on the seed: not only one layer, and not only the initialisation.
    trained = {k for k in state if not torch.equal(state[k], initial[k])}
    differing = {k for k in state if not torch.equal(state[k], other_state[k])}
    assert len(trained) >= 8
    assert trained <= differing
    assert not np.array_equal(_outputs(base, adata)[1], _outputs(other, adata)[1])
    assert not np.array_equal(_outputs(base, adata)[0], _outputs(other, adata)[0])


def test_training_seed_alone_changes_the_model(cells):
    """Same initialisation, different training seed (split, shuffling, sampling noise)."""
    base, _ = _train(cells, "exact", seed=0, train_seed=0)
    other, _ = _train(cells, "exact", seed=0, train_seed=1)
    assert not torch.equal(base.module.decoder_out.weight, other.module.decoder_out.weight)
    assert base.train_params["seed"] == 0
    assert other.train_params["seed"] == 1
