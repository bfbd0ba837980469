"""Training plan pieces: KL warm-up, epoch heuristic, mixture initialisation, finiteness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmmvae.module import GMMVAEModule, LossOutput, ModuleConfig
from gmmvae.training import TrainingPlan, default_max_epochs, initial_mixture, kl_warmup_weight


@pytest.mark.parametrize(
    ("epoch", "n_warmup", "expected"),
    [
        (0, 10, 0.0),
        (5, 10, 0.5),
        (10, 10, 1.0),
        (25, 10, 1.0),
        (3, 4, 0.75),
        (0, None, 1.0),
        (0, 0, 1.0),
        (7, None, 1.0),
    ],
)
def test_kl_warmup_weight(epoch, n_warmup, expected):
    assert kl_warmup_weight(epoch, n_warmup) == pytest.approx(expected)


def test_kl_warmup_weight_is_monotone():
    weights = [kl_warmup_weight(e, 30) for e in range(50)]
    assert weights == sorted(weights)
    assert weights[0] == 0.0
    assert weights[-1] == 1.0


@pytest.mark.parametrize(
    ("n_cells", "expected"),
    [(0, 400), (1, 400), (500, 400), (20_000, 400), (40_000, 200), (100_000, 80), (10**7, 10)],
)
def test_default_max_epochs(n_cells, expected):
    assert default_max_epochs(n_cells) == expected


def _three_blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, -8.0, 4.0]])
    latent = np.concatenate([c + rng.normal(0, 0.5, (60, 3)) for c in centres])
    truth = np.repeat([0, 1, 2], 60)
    return latent, truth, centres


def test_initial_mixture_with_labels_uses_labelled_means():
    latent, truth, _ = _three_blobs()
    labels = np.full(len(truth), -1)
    # Labels name blob 2 as component 0 and blob 0 as component 1; blob 1 is unlabelled.
    labels[120:125], labels[0:7] = 0, 1
    means, logvars = initial_mixture(latent, labels, 3, seed=0)
    assert means.shape == logvars.shape == (3, 3)
    assert means.dtype == np.float32
    np.testing.assert_allclose(means[0], latent[labels == 0].mean(0), rtol=1e-5)
    np.testing.assert_allclose(means[1], latent[labels == 1].mean(0), rtol=1e-5)
    floor = 1e-3 * latent.var(0).mean() + 1e-6
    np.testing.assert_allclose(logvars[1], np.log(latent[labels == 1].var(0) + floor), rtol=1e-5)
    # The free component goes to the blob that no label explains.
    np.testing.assert_allclose(means[2], latent[60:120].mean(0), atol=0.3)


def test_initial_mixture_without_labels_finds_the_blobs():
    latent, _, centres = _three_blobs()
    means, logvars = initial_mixture(latent, np.full(len(latent), -1), 3, seed=0)
    assert np.isfinite(logvars).all()
    # Every blob centre has a component mean near it.
    dist = np.linalg.norm(centres[:, None] - means[None], axis=-1)
    assert (dist.min(1) < 0.3).all()


@pytest.mark.xfail(
    reason="initial_mixture appends labelled means only for labels with >= 2 labelled cells, "
    "so a label with a single labelled cell shifts every later label's mean to the wrong "
    "component (label k's mean lands in component k-1) and the free centres fill the end",
    raises=AssertionError,
    strict=True,
)
def test_initial_mixture_label_with_one_labelled_cell():
    latent, truth, _ = _three_blobs()
    labels = np.full(len(truth), -1)
    labels[0] = 0  # one labelled cell of type 0, as 1 % labels with "at least one per type" gives
    labels[60:70] = 1
    means, _ = initial_mixture(latent, labels, 3, seed=0)
    np.testing.assert_allclose(means[1], latent[labels == 1].mean(0), rtol=1e-5)


def _plan():
    torch.manual_seed(0)
    config = ModuleConfig(n_genes=10, n_components=2, n_latent=2, n_hidden=8)
    return TrainingPlan(GMMVAEModule(config), lr=1e-2, n_epochs_kl_warmup=4)


def test_training_plan_optimiser_covers_trainable_parameters():
    plan = _plan()
    optimiser = plan.configure_optimizers()
    assert isinstance(optimiser, torch.optim.Adam)
    params = {id(p) for group in optimiser.param_groups for p in group["params"]}
    trainable = {id(p) for p in plan.module.parameters() if p.requires_grad}
    assert params == trainable
    assert optimiser.param_groups[0]["lr"] == 1e-2


def test_training_plan_refuses_non_finite_loss():
    plan = _plan()
    terms = {"elbo": torch.tensor([1.0, float("nan")]), "kl_z": torch.ones(2)}
    with pytest.raises(FloatingPointError, match=r"training loss became non-finite.*'elbo'"):
        plan._check_finite(LossOutput(torch.tensor(float("nan")), terms), "training")
    plan._check_finite(LossOutput(torch.tensor(1.0), terms), "training")  # finite loss: fine
