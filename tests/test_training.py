"""Training plan pieces: KL warm-up, epoch heuristic, mixture initialisation, finiteness."""

from __future__ import annotations

import pytest
import torch

from gmmvae.module import GMMVAEModule, LossOutput, ModuleConfig
from gmmvae.training import TrainingPlan, default_max_epochs, kl_warmup_weight


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
