"""How well a trained model explains cells: the ELBO and the marginal log-likelihood.

Both are per cell and *higher is better* (as scvi-tools' ``get_elbo`` / ``get_marginal_ll``),
computed on any AnnData with the model's genes, cells treated as unlabelled (the quantity is
log p(x), not log p(x, y)), conditional on each cell's observed library size, as the decoder is.

The marginal log-likelihood is an importance-sampling estimate,
``log p(x) ~ log mean_s p(x|z_s) p(z_s) / q(z_s|x)`` with ``z_s ~ q(z|x)`` and
``p(z) = sum_y pi_y N(z; mu_y, sigma_y^2)``: a lower bound in expectation that tightens as
``n_mc_samples`` grows (the ELBO is its one-sample limit). It compares models of the same
cells, e.g. numbers of components on held-out cells (:mod:`gmmvae.selection`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from anndata import AnnData

from gmmvae._seed import seeded_rng
from gmmvae.analysis import cell_positions, check_positive_int, resolve_adata
from gmmvae.data import CellData, make_loader
from gmmvae.errors import GMMVAEInputError
from gmmvae.inference import module_device
from gmmvae.module import GMMVAEModule, library_size

if TYPE_CHECKING:
    from gmmvae.model import GMMVAE

SAMPLES_PER_PASS = 16  # posterior draws decoded together, so memory stays bounded


def _cells(model: GMMVAE, adata: AnnData | None, indices) -> CellData:
    adata = resolve_adata(model, adata)
    data = model._cells(adata)
    return data.subset(cell_positions(indices, adata.n_obs))


def _batches(module: GMMVAEModule, data: CellData, batch_size: int):
    """Minibatches on the module's device, every cell unlabelled."""
    device = module_device(module)
    for batch in make_loader(data, batch_size, shuffle=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["label"] = torch.full_like(batch["label"], -1)
        yield batch


@torch.no_grad()
def cell_elbo(module: GMMVAEModule, data: CellData, batch_size: int = 256) -> np.ndarray:
    """The ELBO of every cell (n,), under the full mixture prior at KL weight 1."""
    was_training = module.training
    module.eval()
    out = []
    try:
        for batch in _batches(module, data, batch_size):
            out.append(module(batch, kl_weight=1.0, pretrain=False).terms["elbo"].cpu())
    finally:
        module.train(was_training)
    return torch.cat(out).numpy().astype(np.float64)


@torch.no_grad()
def cell_marginal_ll(
    module: GMMVAEModule, data: CellData, n_mc_samples: int, batch_size: int = 128
) -> np.ndarray:
    """Importance-sampled log p(x) of every cell (n,) from ``n_mc_samples`` draws of q(z|x)."""
    if not module.has_marginal_likelihood:
        raise GMMVAEInputError(
            f"The '{module.config.variant}' variant has no marginal likelihood estimate (its "
            "prior integrates over latents the sampler does not propose); use get_elbo(), or "
            "a model with variant='exact' or 'shared'."
        )
    was_training = module.training
    module.eval()
    out = []
    try:
        for batch in _batches(module, data, batch_size):
            x = batch["x"]
            q = module.inference(x, batch["condition"])
            library = library_size(x)
            log_weights = []
            for start in range(0, n_mc_samples, SAMPLES_PER_PASS):
                n = min(SAMPLES_PER_PASS, n_mc_samples - start)
                z, log_q = module.sample_proposal(q, n)  # (B, S, d), (B, S)
                params = module.generative(z, library, batch["condition"], batch["batch"])
                log_px = module.log_likelihood(x, params)  # (B, S)
                log_weights.append(log_px + module.log_prior_density(z) - log_q)
            log_w = torch.cat(log_weights, -1)
            out.append((torch.logsumexp(log_w, -1) - math.log(n_mc_samples)).cpu())
    finally:
        module.train(was_training)
    return torch.cat(out).numpy().astype(np.float64)


def get_elbo(
    model: GMMVAE,
    adata: AnnData | None = None,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 256,
    return_mean: bool = True,
    seed: int = 0,
) -> float | np.ndarray:
    """Evidence lower bound of the cells under the trained model (higher is better).

    Parameters
    ----------
    adata
        Cells with the model's genes (default: the training AnnData); labels are ignored.
    indices
        Positions (or a boolean mask) of the cells to score; default all.
    batch_size
        Cells per minibatch.
    return_mean
        Mean over cells (a float), or one value per cell (an array).
    seed
        Seed of the posterior draws (local to the call).

    Returns
    -------
    The mean ELBO per cell in nats, or the per-cell ELBO (n_cells,).
    """
    check_positive_int("batch_size", batch_size)
    data = _cells(model, adata, indices)
    with seeded_rng(seed):
        values = cell_elbo(model.module, data, batch_size)
    return float(values.mean()) if return_mean else values


def get_marginal_ll(
    model: GMMVAE,
    adata: AnnData | None = None,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    n_mc_samples: int = 100,
    batch_size: int = 128,
    return_mean: bool = True,
    seed: int = 0,
) -> float | np.ndarray:
    """Marginal log-likelihood log p(x) of the cells, estimated by importance sampling.

    ``log mean_s p(x|z_s) p(z_s) / q(z_s|x)`` over ``n_mc_samples`` draws z_s ~ q(z|x), with
    the mixture prior p(z) = sum_y pi_y N(z; mu_y, sigma_y^2); higher is better. It is a
    (slightly biased) lower estimate of log p(x) that tightens with more samples, and at least
    the ELBO on average. Cells are scored as unlabelled, at their own library size.

    Parameters
    ----------
    adata
        Cells with the model's genes (default: the training AnnData).
    indices
        Positions (or a boolean mask) of the cells to score; default all.
    n_mc_samples
        Importance samples per cell (cost grows linearly: each is one decoder pass).
    batch_size
        Cells per minibatch.
    return_mean
        Mean over cells (a float), or one value per cell (an array).
    seed
        Seed of the importance samples (local to the call).

    Returns
    -------
    The mean per cell in nats, or the per-cell values (n_cells,).

    Raises
    ------
    GMMVAEInputError
        For the ``dirichlet`` variant, whose prior needs latents the sampler does not propose.
    """
    check_positive_int("n_mc_samples", n_mc_samples)
    check_positive_int("batch_size", batch_size)
    data = _cells(model, adata, indices)
    with seeded_rng(seed):
        values = cell_marginal_ll(model.module, data, n_mc_samples, batch_size)
    return float(values.mean()) if return_mean else values
