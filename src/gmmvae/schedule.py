"""The training schedule: which cells train and which validate, and what runs when.

A run is plain-VAE pre-training (N(0, I) prior), then the placement of the mixture components
on the pre-trained latent (:mod:`gmmvae.initialisation`), then training under the mixture
prior with the KL weight warming up from 0 to 1; early stopping watches the validation ELBO
from the placement on. Everything a run needs to know about its own timing is here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from gmmvae.errors import GMMVAEInputError
from gmmvae.options import PLACEMENTS, check_choice
from gmmvae.validation import row_sums

PRETRAIN_STEPS = 1000  # plain-VAE optimiser steps before the mixture is placed
WARMUP_PER_PRETRAIN = 2  # the KL weight reaches 1 at this multiple of the pre-training steps
# Before the placement the KL weight never rises faster than the default warm-up's (1 in
# 2,000 steps): a short run's pre-training stays close to an autoencoder, whose latent
# separates cell types best, and gets the full KL under the mixture prior. Measured on
# simulated counts (10^4 cells, 2,000 genes, 10 epochs = 360 steps, seeds 0, 1;
# benchmarks/experiments/placement_kl.py): K = 30, ARI 0.08 / 0.04 when the weight reached 1
# before the placement, 0.93 / 0.77 with this cap (~0.13 there); K = 10, 0.99 / 0.97 and 1.00 /
# 1.00.
# The default schedule is unchanged (weight 0.5 at step 1,000): 0.1 there lost 0.02 ARI.
MAX_PRETRAIN_KL_SLOPE = 1.0 / (WARMUP_PER_PRETRAIN * PRETRAIN_STEPS)
MIXTURE_STEPS = 1000  # budget under the full mixture ELBO, beside the patience
PATIENCE_STEPS = 1000  # steps without a better validation ELBO before early stopping
MAX_VALIDATION_INTERVAL = 250  # steps between validation checks, at most
PLACEMENT_CELLS = 50_000  # cells encoded to place the mixture components
# Under a cap, pre-training takes up to this share of the steps: the placed mixture is only as
# good as the pre-trained latent. Measured on simulated counts (10^4 cells, 2,000 genes, K = 10,
# 10 epochs = 360 steps; seeds 1, 2): ARI 0.19 with a quarter of the steps, 0.72 with half,
# 0.95 with 0.7.
CAPPED_PRETRAIN_SHARE = 0.7


@dataclass(frozen=True)
class Schedule:
    """When each phase of a run happens, in optimiser steps.

    ``pretrain_steps`` of plain-VAE training (N(0, I) prior), then the components are placed
    (-1: never); the KL weight (:func:`kl_warmup_weight`) rises from 0 at step 0 to 1 at
    ``warmup_steps``, before the placement no faster than the default warm-up; validation
    (always at full KL) runs every ``validation_interval`` steps; once the KL weight is 1,
    early stopping ends the run after ``patience`` checks without a better validation ELBO,
    and the weights kept are those of the best validation ELBO since the placement; the
    run ends at ``total_steps`` at the latest.
    """

    total_steps: int
    pretrain_steps: int
    warmup_steps: int
    validation_interval: int
    patience: int
    steps_per_epoch: int

    @property
    def epochs(self) -> int:
        """Passes over the training cells that ``total_steps`` amounts to (rounded up)."""
        return math.ceil(self.total_steps / max(self.steps_per_epoch, 1))


def kl_warmup_weight(
    step: int,
    warmup_steps: int | None,
    placement_step: int = -1,
    max_pretrain_slope: float | None = None,
) -> float:
    """KL weight at ``step`` of a warm-up that ends (weight 1) at ``warmup_steps`` (0 or None:
    no warm-up, always 1).

    Linear from 0 to 1, except that up to ``placement_step`` (if the placement falls inside
    the warm-up) it rises by at most ``max_pretrain_slope`` per step (default
    :data:`MAX_PRETRAIN_KL_SLOPE`, the default warm-up's), then linearly to 1. The default
    schedule (placement at 1,000, warm-up to 2,000) is the plain linear ramp; a capped run
    whose warm-up is short places its mixture at a low weight.
    """
    if not warmup_steps or step >= warmup_steps:
        return 1.0
    if not 0 < placement_step < warmup_steps:
        return step / warmup_steps
    slope = MAX_PRETRAIN_KL_SLOPE if max_pretrain_slope is None else max_pretrain_slope
    at_placement = min(placement_step / warmup_steps, slope * placement_step)
    if step <= placement_step:
        return at_placement * step / placement_step
    return at_placement + (1.0 - at_placement) * (step - placement_step) / (
        warmup_steps - placement_step
    )


def default_max_epochs(n_cells: int) -> int:
    """scvi-tools' epoch heuristic: 400 up to 20k cells, then ~ 1/n (at least 10)."""
    return int(max(min(round(20_000 / max(n_cells, 1) * 400), 400), 10))


def plan_schedule(
    *,
    n_train_cells: int,
    steps_per_epoch: int,
    places_mixture: bool,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    pretrain_steps: int | None = None,
    warmup_steps: int | None = None,
) -> Schedule:
    """The schedule of a run from the data size and the user's overrides (``None``: default).

    Defaults: :data:`PRETRAIN_STEPS` of pre-training, the KL weight at 1 after
    :data:`WARMUP_PER_PRETRAIN` times that, then a budget of at least :data:`MIXTURE_STEPS`
    plus :data:`PATIENCE_STEPS` under the full mixture ELBO, during which early stopping
    (patience :data:`PATIENCE_STEPS`) may end the run. The budget
    is the larger of that minimum and scvi-tools' epoch heuristic (``default_max_epochs``), so
    small data get enough steps and large data a few passes. ``max_epochs`` (passes over
    the training cells) and ``max_steps`` cap the budget;
    a run too short for the default phases shrinks them (pre-training at most
    :data:`CAPPED_PRETRAIN_SHARE` of the steps), so that every run it
    starts ends with the full ELBO optimised. The warm-up then ends halfway through the
    mixture phase at the latest (halfway through the run without a placement).
    """
    spe = max(steps_per_epoch, 1)
    pretrain = PRETRAIN_STEPS if pretrain_steps is None else pretrain_steps
    requested_warmup = warmup_steps
    if warmup_steps is None:
        warmup_steps = WARMUP_PER_PRETRAIN * max(pretrain, 0)
    pretrain = pretrain if places_mixture else -1
    warmup = warmup_steps
    minimum = max(warmup, pretrain, 0) + MIXTURE_STEPS + PATIENCE_STEPS
    total = max(default_max_epochs(n_train_cells) * spe, minimum)
    if max_epochs is not None or max_steps is not None:
        total = min(total, max_epochs * spe if max_epochs else total, max_steps or total)
        if pretrain_steps is None:
            pretrain = min(pretrain, int(CAPPED_PRETRAIN_SHARE * total))
        # Full KL for the second half of the mixture phase (of the run, without a placement).
        warmup = min(warmup, max(pretrain, 0) + (total - max(pretrain, 0)) // 2)
        if requested_warmup is not None and warmup < requested_warmup:
            warnings.warn(
                f"kl_warmup_steps={requested_warmup} was shortened to {warmup} so that this "
                f"run of {total} steps ({spe} per epoch) optimises the full ELBO for its "
                "second half; pass more max_epochs or max_steps to keep the longer warm-up.",
                UserWarning,
                stacklevel=3,  # the user's call to GMMVAE.train
            )
    if pretrain >= total:
        raise GMMVAEInputError(
            f"pretrain_steps={pretrain} leaves no step for the mixture in a run of {total} "
            f"steps ({spe} per epoch); pass fewer pretrain_steps or more max_epochs."
        )
    interval = int(min(max(spe, 25), MAX_VALIDATION_INTERVAL, max(total // 20, 1)))
    patience = max(math.ceil(PATIENCE_STEPS / interval), 3)
    return Schedule(total, pretrain, warmup, interval, patience, spe)


def describe(plan: Schedule) -> dict[str, int]:
    """The schedule as ``train_params`` records it."""
    return {
        "max_steps": plan.total_steps,
        "max_epochs": plan.epochs,
        "pretrain_steps": plan.pretrain_steps,
        "kl_warmup_steps": plan.warmup_steps,
        "validation_interval": plan.validation_interval,
        "early_stopping_patience": plan.patience,
    }


def check_train_options(batch_size, max_epochs, max_steps, placement, train_size) -> None:
    """Errors that name the bad option of :meth:`gmmvae.GMMVAE.train`."""
    if batch_size < 1:
        raise GMMVAEInputError(f"batch_size must be a positive integer, got {batch_size}.")
    for name, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise GMMVAEInputError(f"{name} must be >= 1 (or None), got {value}.")
    check_choice("mixture_placement", placement, PLACEMENTS)
    if not 0.0 < train_size <= 1.0:
        raise GMMVAEInputError(f"train_size must be in (0, 1], got {train_size}.")


@dataclass(frozen=True)
class CellSplit:
    """Positions of the training and validation cells (sorted)."""

    train: np.ndarray
    validation: np.ndarray


def nonempty_cells(matrix, n_obs: int) -> np.ndarray:
    """Positions of cells with counts; empty ones are skipped in training, with a warning."""
    keep = np.flatnonzero(row_sums(matrix, absolute=True) > 0)
    n_empty = n_obs - len(keep)
    if n_empty:
        warnings.warn(
            f"{n_empty} of {n_obs} cells have no counts and are skipped in training "
            "(they still get a latent position and a prediction). Filter them with "
            "sc.pp.filter_cells(adata, min_counts=1) to silence this.",
            UserWarning,
            stacklevel=3,
        )
    if len(keep) < 2:
        raise GMMVAEInputError(
            f"adata has {len(keep)} cell(s) with counts; training needs at least 2."
        )
    return keep


def split_cells(
    cells: np.ndarray,
    labels: np.ndarray,
    train_size: float,
    n_components: int,
    rng: np.random.Generator,
) -> CellSplit:
    """A random ``train_size`` share of ``cells`` for training, the rest for validation.

    Split per label (``labels``: codes of every cell, -1 unlabelled), so validation holds its
    share of each labelled type and every label keeps at least one labelled training cell: a
    type with a single label never loses it.
    """
    groups = labels[cells]
    validation = np.zeros(len(cells), dtype=bool)
    for group in np.unique(groups):  # the labels and the unlabelled cells (-1)
        members = rng.permutation(np.flatnonzero(groups == group))
        n_val = round(len(members) * (1.0 - train_size))
        if group >= 0:
            n_val = min(n_val, len(members) - 1)
        validation[members[:n_val]] = True
    split = CellSplit(train=np.sort(cells[~validation]), validation=np.sort(cells[validation]))
    if len(split.train) < max(n_components, 2):
        n_obs = len(labels)
        raise GMMVAEInputError(
            f"Only {len(split.train)} cells are left for training ({n_obs} cells, "
            f"{n_obs - len(cells)} without counts, {validation.sum()} held out for validation "
            f"by train_size={train_size}), fewer than the {n_components} components. "
            "Use fewer components, a larger train_size (1.0 uses every cell), or more cells."
        )
    return split


def placement_cells(train: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The training cells encoded to place the components: all, or a sample of
    :data:`PLACEMENT_CELLS` (read block by block when on disk)."""
    if len(train) <= PLACEMENT_CELLS:
        return train
    return np.sort(rng.choice(train, PLACEMENT_CELLS, replace=False))


def make_loaders(data, split: CellSplit, batch_size: int, seed: int):
    """Shuffled training batches and (if there is a validation split) sequential ones."""
    from gmmvae.data import make_loader

    train = make_loader(data.subset(split.train), batch_size, shuffle=True, seed=seed)
    if not len(split.validation):
        return train, None
    return train, make_loader(data.subset(split.validation), batch_size, shuffle=False)


def fit_module(
    module,
    data,
    split: CellSplit,
    schedule: Schedule,
    loaders,
    *,
    seed: int,
    lr: float,
    placement,
    rng: np.random.Generator,
    label_weights: tuple[float, float] = (1.0, 1.0),
    weight_decay: float | None = None,
    **fit_options,
):
    """Train ``module`` on ``data`` as ``schedule`` says.

    ``fit_options`` go to :func:`gmmvae.training.fit` (early stopping, checkpoints, trainer
    options); ``weight_decay`` overrides Adam's default (a query model trains without it).
    Randomness comes from ``seed`` (torch, inside a fork of its RNG) and ``rng``.

    Returns
    -------
    :class:`gmmvae.training.FitResult`; the module is left in eval mode.
    """
    from gmmvae._seed import seeded_rng
    from gmmvae.initialisation import MixtureInitialisation
    from gmmvae.training import TrainingPlan, fit

    train_loader, val_loader = loaders
    callbacks = list(fit_options.pop("callbacks", []))
    if schedule.pretrain_steps >= 0:
        cells = data.subset(placement_cells(split.train, rng))
        callbacks.append(MixtureInitialisation(cells, schedule.pretrain_steps, seed, placement))
    decay = {} if weight_decay is None else {"weight_decay": weight_decay}
    plan = TrainingPlan(
        module,
        lr=lr,
        kl_warmup_steps=schedule.warmup_steps,
        placement_step=schedule.pretrain_steps,
        label_weights=label_weights,
        **decay,
    )
    module.train()
    with seeded_rng(seed):
        result = fit(
            plan,
            train_loader,
            val_loader,
            max_steps=schedule.total_steps,
            validation_interval=min(schedule.validation_interval, schedule.total_steps),
            early_stopping_patience=schedule.patience,
            early_stopping_start=schedule.warmup_steps,
            best_weights_start=max(schedule.pretrain_steps, 0),
            callbacks=callbacks,
            **fit_options,
        )
    module.eval()
    return result
