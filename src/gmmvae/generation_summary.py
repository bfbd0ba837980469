"""What generation needs from the training cells, recorded once at the end of training.

``training_summary`` stores component frequencies, library-size quantiles per component,
condition and batch frequencies, the (z, log library) Gaussians per component and per
component and condition, and a dispersion refitted at the cells' latent means, so that a saved
model generates without the data (:mod:`gmmvae.generation` samples from it). Apart from the
sampler so that training loads only this part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gmmvae.data import CellData, make_loader
from gmmvae.distributions import THETA_MAX

if TYPE_CHECKING:
    from gmmvae.model import GMMVAE

QUANTILES = np.linspace(0.0, 1.0, 101)
_MIN_CELLS_PER_COMPONENT = 10  # fewer cells than this: use every cell's library sizes
CHUNK = 2048  # cells decoded at a time, so memory stays bounded
_RIDGE = 1e-5
_MAX_INVERSE_DISPERSION = 1e3  # theta >= 1e-3: a gene bursting that hard is a fitting artefact


def training_summary(model: GMMVAE, data: CellData) -> dict[str, Any]:
    """Frequencies, log-library quantiles and the latent Gaussian of each component of the
    training cells, JSON-ready.

    A cell's component is its label, or its most probable component when unlabelled.
    """
    fields = ["component", "component_mean", "library"]
    encoded = model._encode(data, fields)
    inverse_dispersion = refit_inverse_dispersion(
        model, data, encoded["component_mean"], encoded["library"]
    )
    components, library = encoded["component"], encoded["library"]
    c = model.config
    log_lib = np.log(np.maximum(library, 1.0))
    per_component = []
    for k in range(c.n_components):  # K quantile vectors, once after training
        cells = log_lib[components == k]
        source = cells if len(cells) >= _MIN_CELLS_PER_COMPONENT else log_lib
        per_component.append(np.quantile(source, QUANTILES).round(5).tolist())
    return {
        "component_frequencies": _frequencies(components, c.n_components),
        "condition_frequencies": _frequencies(data.conditions.numpy(), c.n_conditions),
        "batch_frequencies": _frequencies(data.batches.numpy(), c.n_batches),
        "log_library_quantiles": per_component,
        **embedding_gaussians(
            encoded, log_lib, data.conditions.numpy(), c.n_components, c.n_conditions
        ),
        "embedding_inverse_dispersion": inverse_dispersion,
    }


def embedding_gaussians(
    encoded: dict[str, np.ndarray],
    log_lib: np.ndarray,
    conditions: np.ndarray,
    n_components: int,
    n_conditions: int,
) -> dict[str, list]:
    """Per component, and per component and condition, a Gaussian over (z, log library)
    fitted to the training cells.

    z is each cell's posterior mean under its component, E[z | x, y]; the log library size is
    appended so that both are drawn jointly (deeper cells sit elsewhere in the latent).
    Stored: the joint mean and covariance (plus a small ridge) of each component
    (``embedding_means``, ``embedding_covariances``) and of each (component, condition)
    (``embedding_condition_means``, ``embedding_condition_covariances``, K x C). The
    encoder sees the condition, yet a type's treated cells still sit apart from its control
    cells in z, so one Gaussian per type blends both states into every cell it draws; on an
    inner split of Kang's training cells (2 trainings) the per-condition Gaussians lowered
    the two-sample AUC (see BENCHMARKS.md). Groups with fewer than
    ``_MIN_CELLS_PER_COMPONENT`` cells get ``None``: generation falls back to the
    component's Gaussian, then to p(z|y). Adding the cells' posterior variance (the full
    aggregate posterior) or resampling the cells themselves scored worse.
    """
    components = encoded["component"]
    joint = np.column_stack([encoded["component_mean"], log_lib]).astype(float)
    out: dict[str, list] = {"embedding_means": [], "embedding_covariances": []}
    out |= {"embedding_condition_means": [], "embedding_condition_covariances": []}
    for k in range(n_components):  # K (C + 1) small (d + 1)^2 covariances, once
        mean, cov = _gaussian(joint[components == k])
        out["embedding_means"].append(mean)
        out["embedding_covariances"].append(cov)
        per_condition = [
            _gaussian(joint[(components == k) & (conditions == c)]) for c in range(n_conditions)
        ]
        out["embedding_condition_means"].append([m for m, _ in per_condition])
        out["embedding_condition_covariances"].append([v for _, v in per_condition])
    return out


@torch.no_grad()
def refit_inverse_dispersion(
    model: GMMVAE, data: CellData, z: np.ndarray, library: np.ndarray
) -> list[float] | None:
    """Per-gene 1/theta of the training counts around the decoder's mean at each cell's
    posterior mean E[z | x, y], by moments; None for Poisson and Gaussian models.

    The learned theta is fitted with z sampled from q(z|x), so it also absorbs the spread of
    those samples around the posterior mean. Cells drawn from the embedding Gaussians sit at
    posterior means already, and with the learned theta they came out too dispersed: more
    zeros than real cells and a higher two-sample AUC. Moments, per gene g over cells i with
    decoder mean mu and (ZINB) kept fraction p = 1 - dropout: the excess variance
    sum((x - p mu)^2 - p mu - p (1 - p) mu^2) = (1/theta) sum(p mu^2). Genes without counts
    keep the learned value.
    """
    likelihood = model.config.likelihood
    if likelihood not in ("nb", "zinb"):
        return None
    excess = scale = learned = None
    start = 0
    for batch in make_loader(data, CHUNK, shuffle=False):
        part = slice(start, start + len(batch["x"]))
        start = part.stop
        codes = (batch["condition"].numpy(), batch["batch"].numpy())
        params = model._decode(z[part], library[part], *codes)
        mu, x = params["mu"], batch["x"].to(params["mu"].device)
        kept = torch.ones_like(mu)
        if likelihood == "zinb":
            kept = torch.sigmoid(-params["dropout_logits"])
        mean = kept * mu
        batch_excess = ((x - mean) ** 2 - mean - kept * (1 - kept) * mu**2).sum(0)
        batch_scale = (kept * mu**2).sum(0)
        excess = batch_excess if excess is None else excess + batch_excess
        scale = batch_scale if scale is None else scale + batch_scale
        learned = 1.0 / params["theta"].clamp(min=1e-8).expand_as(mu)[0]
    if excess is None:
        return None
    inverse = torch.where(scale > 0, excess / scale.clamp(min=1e-12), learned)
    return inverse.clamp(1.0 / THETA_MAX, _MAX_INVERSE_DISPERSION).cpu().round(decimals=6).tolist()


def _gaussian(cells: np.ndarray) -> tuple[list | None, list | None]:
    """Mean and ridged covariance of ``cells`` (n, d + 1), JSON-ready; None if too few."""
    if len(cells) < _MIN_CELLS_PER_COMPONENT:
        return None, None
    cov = np.cov(cells, rowvar=False) + _RIDGE * np.eye(cells.shape[1])
    return cells.mean(0).round(6).tolist(), cov.round(8).tolist()


def _frequencies(codes: np.ndarray, n: int) -> list[float]:
    counts = np.bincount(codes, minlength=n).astype(float)
    return (counts / max(counts.sum(), 1.0)).tolist()
