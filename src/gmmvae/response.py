"""The treatment response a type borrows from the types seen under both conditions.

Donor types are those with enough reference cells under both conditions; each component gets
weights over them (latent-centroid similarity or uniform) and borrows either their latent
shift (scGen's arithmetic) or their decoded response on the log1p-CP10k scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats

from gmmvae.data import CellData, make_loader
from gmmvae.errors import GMMVAEInputError
from gmmvae.options import ShiftWeighting

if TYPE_CHECKING:
    from gmmvae.model import GMMVAE

MIN_SHIFT_CELLS = 5  # a type needs this many reference cells per condition for its own shift
LOG_SCALE = 1e4  # log1p(counts per 10k), the scale every score in the protocol uses


def _group_means(values: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, ...]:
    """Per-group means (n_groups, d) and counts; empty groups get NaN."""
    counts = np.bincount(groups, minlength=n_groups).astype(float)
    sums = np.zeros((n_groups, values.shape[1]))
    np.add.at(sums, groups, values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def donor_weights(
    reference: dict[str, np.ndarray],
    reference_conditions: np.ndarray,
    query: dict[str, np.ndarray],
    source: int,
    target: int,
    n_components: int,
    *,
    weighting: ShiftWeighting = "similarity",
    min_cells: int = MIN_SHIFT_CELLS,
) -> dict[str, np.ndarray]:
    """Which reference types lend their response to each component, and how much.

    Donors are the components with at least ``min_cells`` reference cells under both
    conditions. Each component k gets weights over the donors (rows sum to 1): with
    ``"similarity"`` a Gaussian kernel of the distance between k's latent centroid under
    ``source`` and each donor's, with half the distance to the nearest donor as bandwidth (a
    donor 1.5 times as far as the nearest weighs about a twelfth as much, one twice as far
    next to nothing); with ``"uniform"`` every donor weighs the same (scGen's
    cell-type-balanced mean). A donor component gets all its weight on its own response. The
    query's own cells give the centroid of a component where it has them (a held-out type),
    else the reference's.

    Returns ``donors`` (D,), ``weights`` (K, D), ``loo_weights`` (D, D: each donor's
    weights over the others, by the same rule, as if it were the held-out type) and the
    source/target latent centroids (K, d).
    """
    K = n_components
    comp = reference["component"]
    src, tgt = reference_conditions == source, reference_conditions == target
    mean_src, n_src = _group_means(reference["mean"][src], comp[src], K)
    mean_tgt, n_tgt = _group_means(reference["mean"][tgt], comp[tgt], K)
    donors = np.flatnonzero((n_src >= min_cells) & (n_tgt >= min_cells))
    if len(donors) == 0:
        raise GMMVAEInputError(
            f"No cell type has {min_cells} or more reference cells under both conditions, so "
            "there is no treatment response to transfer. Pass reference= with treated and "
            "control cells of at least one type, or use method='decoder'."
        )
    q_mean, q_n = _group_means(query["mean"], query["component"], K)
    centroid = np.where(q_n[:, None] > 0, q_mean, mean_src)  # (K, d)
    dist = np.linalg.norm(centroid[:, None, :] - mean_src[donors][None], axis=-1)  # (K, D)
    weights = _kernel(np.nan_to_num(dist, nan=np.inf), weighting)
    ok = np.isfinite(weights).all(1, keepdims=True) & (weights.sum(1, keepdims=True) > 0)
    weights = np.where(ok, weights, 1.0)  # a component with no centroid: uniform
    weights = weights / weights.sum(1, keepdims=True)
    weights[donors] = np.eye(len(donors))
    return {
        "donors": donors,
        "weights": weights,
        "loo_weights": _leave_one_out_weights(mean_src[donors], weighting),
        "mean_src": mean_src,
        "mean_tgt": mean_tgt,
    }


def _kernel(dist: np.ndarray, weighting: ShiftWeighting) -> np.ndarray:
    """Unnormalised donor weights from centroid distances (rows: receivers; an infinite
    distance weighs nothing)."""
    if weighting == "uniform":
        return np.isfinite(dist).astype(float)
    nearest = np.maximum(dist.min(1, keepdims=True), 1e-8)
    with np.errstate(invalid="ignore"):
        return np.exp(-2.0 * (dist / nearest) ** 2)


def _leave_one_out_weights(centroids: np.ndarray, weighting: ShiftWeighting) -> np.ndarray:
    """(D, D): the weights each donor would get over the other donors were its own treated
    cells unseen, by the same rule as a held-out type's; zero diagonal, rows sum to 1 (all
    zero with a single donor)."""
    if len(centroids) < 2:
        return np.zeros((len(centroids), len(centroids)))
    dist = np.linalg.norm(centroids[:, None, :] - centroids[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    weights = np.nan_to_num(_kernel(dist, weighting))
    total = weights.sum(1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def observed_responses(
    data: CellData,
    components: np.ndarray,
    conditions: np.ndarray,
    donors: dict[str, np.ndarray],
    source: int,
    *,
    log_scale: bool = True,
    chunk: int = 2048,
) -> np.ndarray:
    """Each donor's observed response: the mean log1p CP10k of its target cells minus that of
    its source cells (a Gaussian model's values as given, ``log_scale=False``); (D, G).

    One pass over the reference counts, nothing decoded: these are the data the benchmark's
    truth is made of, noise of a finite number of cells included.
    """
    idx = donors["donors"]
    position = np.full(int(components.max(initial=-1)) + 1, -1)
    position[idx] = np.arange(len(idx))
    target = conditions == donors["target"]
    group = np.where(target | (conditions == source), position[components] * 2 + target, -1)
    group[position[components] < 0] = -1
    sums = counts = None
    start = 0
    for batch in make_loader(data, chunk, shuffle=False):
        x = batch["x"].numpy().astype(np.float64)
        part = group[start : start + len(x)]
        start += len(x)
        if log_scale:
            x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1.0) * LOG_SCALE)
        keep = part >= 0
        if sums is None:
            sums, counts = np.zeros((2 * len(idx), x.shape[1])), np.zeros(2 * len(idx))
        np.add.at(sums, part[keep], x[keep])
        counts += np.bincount(part[keep], minlength=2 * len(idx))
    means = (sums / np.maximum(counts, 1.0)[:, None]).reshape(len(idx), 2, -1)
    return means[:, 1] - means[:, 0]


def leave_one_out_errors(
    own: np.ndarray, donors: dict[str, np.ndarray], lent: np.ndarray | None = None
) -> np.ndarray:
    """How far each donor's own response ``own`` (D, G) lies from what it would borrow from
    the others, their ``lent`` responses (default ``own``) weighted by the rule a held-out
    type borrows with; (D, G). The only evidence at hand of how much a type's response can
    differ from the one it borrows. With ``own`` observed (:func:`observed_responses`) and
    ``lent`` decoded, an error holds what a held-out type's does: how types differ, the
    model's error on the responses it lends, and the noise of a finite number of cells."""
    return own - donors["loo_weights"] @ (own if lent is None else lent)


def between_type_draws(
    residuals: np.ndarray, n_draws: int, level: float, rng: np.random.Generator
) -> np.ndarray:
    """``n_draws`` draws of a type's own response minus the one it borrows; (n_draws, ...).

    Gaussian, with the second moment of the donors' leave-one-out residuals, widened by
    t_nu / z at the interval's ``level`` (nu = D - 1) so that the central ``level`` interval
    of the draws is a prediction interval from D observed types, as a Student t gives. Zero
    with fewer than two donors (nothing tells how types differ).
    """
    n_donors = len(residuals)
    if n_donors < 2:
        return np.zeros((n_draws, *residuals.shape[1:]))
    upper = (1.0 + level) / 2.0
    widen = stats.t.ppf(upper, n_donors - 1) / stats.norm.ppf(upper)
    multipliers = rng.standard_normal((n_draws, n_donors)) * (widen / np.sqrt(n_donors))
    return (multipliers @ residuals.reshape(n_donors, -1)).reshape(n_draws, *residuals.shape[1:])


def latent_shifts(donors: dict[str, np.ndarray]) -> np.ndarray:
    """scGen's latent arithmetic per component: the weighted mean of the donors' differences
    of target and source latent centroids; (K, d)."""
    idx = donors["donors"]
    return donors["weights"] @ (donors["mean_tgt"][idx] - donors["mean_src"][idx])


def decoder_responses(
    model: GMMVAE,
    reference: dict[str, np.ndarray],
    reference_conditions: np.ndarray,
    reference_batches: np.ndarray,
    donors: dict[str, np.ndarray],
    source: int,
) -> np.ndarray:
    """The model's treatment response of each donor type, transferred to every component.

    For a donor type, the mean over its target cells of log1p(1e4 rho(z, target)) minus the
    mean over its source cells of log1p(1e4 rho(z, source)), each cell decoded from its own
    posterior mean: the model's (denoised) estimate of how the type's mean expression moves,
    on the log1p-CP10k scale. It includes the part of the effect that the encoder puts into
    z, which flipping only the decoder's condition misses (that flip gave a response 10-35 %
    smaller than the data's on Kang). Each component gets the weighted mean of its donors'
    responses; (K, G). The log1p scale (not log rho) lets a response switch on a gene that
    the receiving type barely expresses, as interferon-stimulated genes are switched on.
    """
    cells = donor_cells(model, reference, reference_conditions, reference_batches, donors, source)
    own = [treated.mean(0) - control.mean(0) for treated, control in cells]
    return donors["weights"] @ np.stack(own)  # (K, G)


def donor_cells(
    model: GMMVAE,
    reference: dict[str, np.ndarray],
    reference_conditions: np.ndarray,
    reference_batches: np.ndarray,
    donors: dict[str, np.ndarray],
    source: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per donor type, the decoded log1p(1e4 rho) of its target cells and of its source cells
    ((n_target, G), (n_source, G)), each cell from its own posterior mean."""
    target = donors["target"]
    out = []
    for k in donors["donors"]:
        pair = []
        for condition in (target, source):
            cells = (reference["component"] == k) & (reference_conditions == condition)
            z, lib = reference["mean"][cells], reference["library"][cells]
            pair.append(_decode_log1p(model, z, lib, condition, reference_batches[cells]))
        out.append((pair[0], pair[1]))
    return out


def bootstrap_responses(
    cells: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One bootstrap draw of :func:`decoder_responses`: each donor's treated and control
    cells resampled with replacement; (K, G)."""
    own = []
    for treated, control in cells:
        t = treated[rng.integers(0, len(treated), len(treated))]
        c = control[rng.integers(0, len(control), len(control))]
        own.append(t.mean(0) - c.mean(0))
    return weights @ np.stack(own)


def bootstrap_shifts(
    reference: dict[str, np.ndarray],
    reference_conditions: np.ndarray,
    donors: dict[str, np.ndarray],
    source: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One bootstrap draw of :func:`latent_shifts` (each donor's cells resampled); (K, d)."""
    own = []
    for k in donors["donors"]:
        means = []
        for condition in (donors["target"], source):
            idx = np.flatnonzero(
                (reference["component"] == k) & (reference_conditions == condition)
            )
            means.append(reference["mean"][rng.choice(idx, len(idx))].mean(0))
        own.append(means[0] - means[1])
    return donors["weights"] @ np.stack(own)


# -------------------------------------------------------------------------------- decoding
def _decode_log1p(model, z, library, condition, batches, chunk: int = 2048) -> np.ndarray:
    """log1p(1e4 rho) of the decoder (count likelihoods) or its mean (Gaussian); (n, G)."""
    parts = []
    for start in range(0, len(z), chunk):
        part = slice(start, start + chunk)
        params = model._decode(z[part], library[part], condition, batches[part])
        if "mean" in params:
            parts.append(params["mean"].cpu().numpy())
        else:
            mu = params["mu"].cpu()
            parts.append(torch.log1p(mu / mu.sum(-1, keepdim=True) * LOG_SCALE).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.config.n_genes), np.float32)
