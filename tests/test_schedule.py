"""The training schedule: phases in optimiser steps that always fit inside the run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gmmvae import GMMVAEInputError
from gmmvae.schedule import (
    CAPPED_PRETRAIN_SHARE,
    PATIENCE_STEPS,
    PRETRAIN_STEPS,
    default_max_epochs,
    plan_schedule,
    split_cells,
)


@pytest.mark.parametrize(
    ("n_cells", "expected"), [(100, 400), (20_000, 400), (40_000, 200), (10**6, 10), (10**7, 10)]
)
def test_default_max_epochs(n_cells, expected):
    assert default_max_epochs(n_cells) == expected


@pytest.mark.parametrize("n_cells", [1_000, 2_000, 10_000, 100_000, 1_000_000])
def test_default_schedule_finishes_at_every_size(n_cells):
    spe = -(-n_cells // 256)  # steps per epoch at batch 256
    plan = plan_schedule(n_train_cells=n_cells, steps_per_epoch=spe, places_mixture=True)
    assert plan.pretrain_steps == PRETRAIN_STEPS
    assert plan.pretrain_steps < plan.warmup_steps < plan.total_steps
    # Room under the full ELBO for early stopping to see its whole patience.
    assert plan.total_steps - plan.warmup_steps >= PATIENCE_STEPS
    assert plan.validation_interval * plan.patience >= PATIENCE_STEPS
    assert plan.validation_interval <= max(spe, 25)
    # Large data: a few passes (scvi-tools' heuristic), not thousands of epochs.
    assert plan.epochs <= max(default_max_epochs(n_cells), -(-4000 // spe))


@pytest.mark.parametrize(("max_epochs", "spe"), [(1, 2), (3, 8), (20, 8), (100, 8), (5, 4000)])
def test_a_capped_run_still_reaches_full_kl_and_places_the_mixture(max_epochs, spe):
    plan = plan_schedule(
        n_train_cells=spe * 256, steps_per_epoch=spe, places_mixture=True, max_epochs=max_epochs
    )
    assert plan.total_steps == max_epochs * spe
    # Pre-training keeps most of a short run (the mixture is placed on its latent) but always
    # leaves steps for the mixture.
    assert 0 <= plan.pretrain_steps <= int(CAPPED_PRETRAIN_SHARE * plan.total_steps)
    assert plan.pretrain_steps < plan.total_steps
    # The warm-up ends after the placement and halfway through the mixture phase at the
    # latest: the KL weight is low when the mixture is placed, 1 for the rest of the run.
    mixture = plan.total_steps - plan.pretrain_steps
    assert plan.warmup_steps <= plan.pretrain_steps + mixture // 2
    if mixture >= 2:
        assert plan.warmup_steps > plan.pretrain_steps
    assert plan.validation_interval <= max(plan.total_steps // 20, 1)


def test_overrides_and_their_errors():
    plan = plan_schedule(
        n_train_cells=2000, steps_per_epoch=8, places_mixture=True, pretrain_steps=50
    )
    assert (plan.pretrain_steps, plan.warmup_steps) == (50, 100)
    plan = plan_schedule(n_train_cells=2000, steps_per_epoch=8, places_mixture=True, warmup_steps=0)
    assert plan.warmup_steps == 0
    with pytest.raises(GMMVAEInputError, match="pretrain_steps=500 leaves no step"):
        plan_schedule(
            n_train_cells=2000,
            steps_per_epoch=8,
            places_mixture=True,
            max_epochs=10,
            pretrain_steps=500,
        )
    plan = plan_schedule(n_train_cells=2000, steps_per_epoch=8, places_mixture=False)
    assert plan.pretrain_steps == -1 and plan.warmup_steps > 0


def test_a_user_warmup_cut_by_the_cap_says_so():
    options = {"n_train_cells": 2000, "steps_per_epoch": 8, "places_mixture": True}
    with pytest.warns(UserWarning, match="kl_warmup_steps=1000 was shortened to"):
        plan = plan_schedule(**options, max_epochs=20, warmup_steps=1000)
    assert plan.warmup_steps < 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default warm-up shortens without a word
        plan_schedule(**options, max_epochs=20)
        plan_schedule(**options, max_epochs=20, warmup_steps=10)


def test_split_keeps_every_labelled_type_in_training():
    labels = np.full(1000, -1)
    labels[:1] = 0  # one labelled cell of type 0: it must never go to validation
    labels[1:3] = 1
    labels[3:53] = 2
    for seed in range(20):
        split = split_cells(np.arange(1000), labels, 0.9, 3, np.random.default_rng(seed))
        train_labels = labels[split.train]
        assert {0, 1, 2} <= set(train_labels)
        assert (labels[split.validation] == 2).sum() == 5  # 10 % of the 50 labelled
        assert len(split.validation) == 5 + round(947 * 0.1)
        assert len(np.intersect1d(split.train, split.validation)) == 0
