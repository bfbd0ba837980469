"""Choosing the number of components K by held-out marginal likelihood.

One model per candidate K is trained on the same cells (a random ``1 - held_out`` of them)
and scored on the rest with :func:`gmmvae.likelihood.cell_marginal_ll`. The largest mean
log p(x) wins unless a smaller K lies within one standard error of it (the one-standard-error
rule, Hastie et al.): extra components that explain held-out cells no better than noise are
not worth their parameters. The standard error is that of the per-cell *difference* to the
best K, since all candidates score the same cells.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from gmmvae._seed import seeded_rng
from gmmvae.errors import GMMVAEInputError
from gmmvae.likelihood import cell_marginal_ll
from gmmvae.registry import REGISTRY_KEY

MIN_HELD_OUT_CELLS = 50
OCCUPIED_FRACTION = 0.01  # a component "holds cells" when it takes >= 1% of held-out cells


def _check_candidates(candidates: Sequence[int]) -> list[int]:
    values = list(candidates)
    if not values or any(isinstance(k, bool) or int(k) != k or k < 1 for k in values):
        raise GMMVAEInputError(
            f"candidates must be positive integers (numbers of components), got {values!r}."
        )
    if len(set(values)) != len(values):
        raise GMMVAEInputError(f"candidates has duplicates: {values!r}.")
    return sorted(int(k) for k in values)


def split_held_out(n_obs: int, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions of the training and held-out cells (a random ``held_out`` share)."""
    if not 0.0 < held_out < 1.0:
        raise GMMVAEInputError(f"held_out must be in (0, 1), got {held_out}.")
    n_held = round(held_out * n_obs)
    if n_held < MIN_HELD_OUT_CELLS or n_obs - n_held < MIN_HELD_OUT_CELLS:
        raise GMMVAEInputError(
            f"{n_obs} cells with held_out={held_out} leave {n_held} held-out cells; at least "
            f"{MIN_HELD_OUT_CELLS} are needed on each side. Pass a larger held_out or more cells."
        )
    order = np.random.default_rng(seed).permutation(n_obs)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def one_standard_error_choice(per_cell: Mapping[int, np.ndarray]) -> tuple[int, pd.DataFrame]:
    """The smallest K whose mean log p(x) is within one SE of the best, and the table.

    ``per_cell`` maps K to the held-out cells' log p(x) (the same cells, in the same order).
    """
    ks = sorted(per_cell)
    means = {k: float(np.mean(per_cell[k])) for k in ks}
    best = max(ks, key=means.__getitem__)
    rows = []
    for k in ks:
        diff = per_cell[best] - per_cell[k]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        rows.append(
            {
                "n_components": k,
                "marginal_ll": means[k],
                "marginal_ll_se": float(per_cell[k].std(ddof=1) / np.sqrt(len(per_cell[k]))),
                "gap_to_best": float(diff.mean()),
                "gap_se": se,
            }
        )
    table = pd.DataFrame(rows)
    within = table[table["gap_to_best"] <= table["gap_se"]]
    return int(within["n_components"].min()), table


def select_n_components(
    adata: AnnData,
    candidates: Sequence[int],
    *,
    held_out: float = 0.1,
    seed: int = 0,
    n_mc_samples: int = 50,
    model_kwargs: Mapping[str, Any] | None = None,
    train_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Train one model per candidate K and pick K by held-out marginal likelihood.

    The cells are split once (``seed``) into training cells and ``held_out`` cells; every
    candidate trains on the same training cells with the same seed and is scored by
    :meth:`~gmmvae.GMMVAE.get_marginal_ll` on the same held-out cells. The choice is the
    smallest K within one standard error (of the per-cell difference) of the best mean
    log p(x). With labels the number of components is the number of labels, so ``adata``
    must be registered without ``labels_key``.

    Parameters
    ----------
    adata
        Cells registered with :meth:`gmmvae.GMMVAE.setup_anndata` (counts, batch/condition
        keys as for training).
    candidates
        Numbers of components to try, e.g. ``range(4, 13)``.
    held_out
        Share of cells scored (not trained on); at least 50 cells on each side.
    seed
        Seed of the split, of every model and of the importance samples.
    n_mc_samples
        Importance samples per held-out cell.
    model_kwargs, train_kwargs
        Passed to :class:`~gmmvae.GMMVAE` and :meth:`~gmmvae.GMMVAE.train` for every candidate
        (e.g. ``{"max_epochs": 50}`` to bound the cost; each candidate is one full training).

    Returns
    -------
    DataFrame, one row per candidate: ``n_components``, ``marginal_ll`` (mean held-out
    log p(x) per cell, nats) and its ``marginal_ll_se``, ``gap_to_best`` and ``gap_se`` (the
    mean and SE of the per-cell difference to the best K), ``elbo`` (mean held-out ELBO),
    ``n_occupied`` (components taking >= 1% of held-out cells), ``seconds`` (training and
    scoring) and ``selected``. ``table.attrs["n_components"]`` is the choice; plot with
    :func:`gmmvae.pl.n_components`.
    """
    from gmmvae.likelihood import cell_elbo
    from gmmvae.model import GMMVAE

    ks = _check_candidates(candidates)
    if REGISTRY_KEY not in adata.uns:
        raise GMMVAEInputError(
            "adata is not registered; call gmmvae.GMMVAE.setup_anndata(adata, ...) first."
        )
    if adata.uns[REGISTRY_KEY].get("labels_key") is not None:
        raise GMMVAEInputError(
            "adata is registered with labels_key, which fixes K to the number of labels; "
            "register it again without labels_key to choose K."
        )
    train_pos, held_pos = split_held_out(adata.n_obs, held_out, seed)
    train_adata, held_adata = adata[train_pos].copy(), adata[held_pos].copy()
    per_cell, extra = {}, {}
    for k in ks:
        start = time.perf_counter()
        model = GMMVAE(train_adata, n_components=k, seed=seed, **dict(model_kwargs or {}))
        model.train(seed=seed, **{"progress_bar": False, **dict(train_kwargs or {})})
        data = model._cells(held_adata)
        with seeded_rng(seed):
            per_cell[k] = cell_marginal_ll(model.module, data, n_mc_samples)
        assigned = model._encode(data, ["probs"])["probs"].argmax(1)
        shares = np.bincount(assigned, minlength=k) / len(assigned)
        extra[k] = {
            "elbo": float(cell_elbo(model.module, data).mean()),
            "n_occupied": int((shares >= OCCUPIED_FRACTION).sum()),
            "seconds": time.perf_counter() - start,
        }
    chosen, table = one_standard_error_choice(per_cell)
    for column in ("elbo", "n_occupied", "seconds"):
        table[column] = [extra[k][column] for k in table["n_components"]]
    table["selected"] = table["n_components"] == chosen
    table.attrs["n_components"] = chosen
    table.attrs["params"] = {"held_out": held_out, "seed": seed, "n_mc_samples": n_mc_samples}
    return table
