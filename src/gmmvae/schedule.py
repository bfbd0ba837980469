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
PLACEMENT_CELLS = 50_000  # cells encoded to place the mixture components


@dataclass(frozen=True)
class Schedule:
    """When each phase of a run happens, in epochs."""

    max_epochs: int
    pretrain_epochs: int  # epochs before placement; -1: no placement (components as they are)
    warmup_epochs: int  # epochs over which the KL weight rises from 0 to 1 (0: none)


def default_max_epochs(n_cells: int) -> int:
    """Fewer passes over larger data, as scvi-tools does: 400 up to 20k cells, then ~ 1/n."""
    return int(max(min(round(20_000 / max(n_cells, 1) * 400), 400), 10))


def plan_schedule(
    *,
    n_train_cells: int,
    steps_per_epoch: int,
    max_epochs: int | None,
    places_mixture: bool,
    mixture_init_epoch: int | None,
    n_epochs_kl_warmup: int | None,
) -> Schedule:
    """The schedule of a run from the data size and the user's overrides (``None``: default).

    Pre-training lasts about :data:`PRETRAIN_STEPS` optimiser steps, at most three quarters of
    the epochs (short runs on small data give it most of their few steps): the latent must
    separate cell types before they are clustered. The KL warm-up lasts twice the pre-training
    (at least 10 epochs).
    """
    max_epochs = default_max_epochs(n_train_cells) if max_epochs is None else max_epochs
    if not places_mixture:
        mixture_init_epoch = -1
    elif mixture_init_epoch is None:
        pretrain = math.ceil(PRETRAIN_STEPS / max(steps_per_epoch, 1))
        mixture_init_epoch = min(pretrain, (3 * max_epochs) // 4)
    if n_epochs_kl_warmup is None:
        n_epochs_kl_warmup = max(2 * mixture_init_epoch, 10)
    return Schedule(max_epochs, mixture_init_epoch, n_epochs_kl_warmup)


@dataclass(frozen=True)
class CellSplit:
    """Positions of the training and validation cells (sorted)."""

    train: np.ndarray
    validation: np.ndarray


def check_train_options(batch_size, max_epochs, placement, train_size) -> None:
    """Errors that name the bad option of :meth:`gmmvae.GMMVAE.train`."""
    if batch_size < 1:
        raise GMMVAEInputError(f"batch_size must be a positive integer, got {batch_size}.")
    if max_epochs is not None and max_epochs < 1:
        raise GMMVAEInputError(f"max_epochs must be >= 1 (or None), got {max_epochs}.")
    check_choice("mixture_placement", placement, PLACEMENTS)
    if not 0.0 < train_size <= 1.0:
        raise GMMVAEInputError(f"train_size must be in (0, 1], got {train_size}.")


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
    cells: np.ndarray, n_obs: int, train_size: float, n_components: int, rng: np.random.Generator
) -> CellSplit:
    """A random ``train_size`` share of ``cells`` for training, the rest for validation."""
    order = rng.permutation(cells)
    n_val = round(len(order) * (1.0 - train_size))
    split = CellSplit(train=np.sort(order[n_val:]), validation=np.sort(order[:n_val]))
    if len(split.train) < max(n_components, 2):
        raise GMMVAEInputError(
            f"Only {len(split.train)} cells are left for training ({n_obs} cells, "
            f"{n_obs - len(cells)} without counts, {n_val} held out for validation by "
            f"train_size={train_size}), fewer than the {n_components} components. "
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
    **fit_options,
) -> list[dict[str, float]]:
    """Train ``module`` on ``data`` as ``schedule`` says; returns the per-epoch history.

    ``fit_options`` go to :func:`gmmvae.training.fit` (early stopping, checkpoints, trainer
    options). Randomness comes from ``seed`` (torch, inside a fork of its RNG) and ``rng``.
    """
    from gmmvae._seed import seeded_rng
    from gmmvae.initialisation import MixtureInitialisation
    from gmmvae.training import TrainingPlan, fit

    train_loader, val_loader = loaders
    callbacks = list(fit_options.pop("callbacks", []))
    if schedule.pretrain_epochs >= 0:
        cells = data.subset(placement_cells(split.train, rng))
        callbacks.append(MixtureInitialisation(cells, schedule.pretrain_epochs, seed, placement))
    plan = TrainingPlan(module, lr=lr, n_epochs_kl_warmup=schedule.warmup_epochs)
    module.train()
    with seeded_rng(seed):
        history = fit(
            plan,
            train_loader,
            val_loader,
            max_epochs=schedule.max_epochs,
            callbacks=callbacks,
            **fit_options,
        )
    module.eval()
    return history
