"""Treatment-effect prediction: counterfactual cells of a trained conditional GMMVAE.

Cells under the ``source`` condition are encoded (z ~ q(z|x, y, c=source), y = their label)
and decoded under the ``target`` condition in one of three ways (``method=``):

``"transfer"``
    Keep the cell's own reconstruction and add, on the log1p-CP10k scale, the model's
    response of the types seen under both conditions (their decoded treated cells minus their
    decoded control cells), weighted towards the types whose latent centroid is closest, so
    that a held-out monocyte borrows mostly from monocytes. scGen's arithmetic, done on the
    decoder's output rather than on z.
``"latent_shift"``
    scGen's latent arithmetic inside the conditional model: add the mean latent difference
    (target minus source) of the donor types, then decode under ``target``.
``"decoder"``
    The seed's approach (Kolb & Vingron 2022): keep z, flip the decoder's condition. For a
    type never seen treated the decoder must extrapolate.

Donor types are weighted by latent similarity (``weighting="similarity"``) or equally
(``"uniform"``, scGen's cell-type-balanced mean). Which wins on a held-out type is measured
by ``python -m benchmarks perturbation``. Everything is vectorised over cells; the Python loops run
over minibatches, draws and the (few) donor types.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from gmmvae._seed import seeded_rng
from gmmvae.distributions import sample_counts
from gmmvae.errors import GMMVAEInputError
from gmmvae.options import (
    DEFAULT_KEY,
    DEFAULT_PERTURBATION_METHOD,
    DEFAULT_SHIFT_WEIGHTING,
    PERTURBATION_METHODS,
    SHIFT_WEIGHTINGS,
    PerturbationMethod,
    ShiftWeighting,
    check_choice,
)
from gmmvae.response import (
    LOG_SCALE,
    between_type_draws,
    bootstrap_responses,
    bootstrap_shifts,
    donor_cells,
    donor_weights,
    latent_shifts,
    leave_one_out_errors,
    observed_responses,
)
from gmmvae.validation import check_obs_key

if TYPE_CHECKING:
    from gmmvae.data import CellData
    from gmmvae.model import GMMVAE


# ------------------------------------------------------------------------------ validation
def _conditions(model: GMMVAE, source: str, target: str) -> tuple[list[str], int, int]:
    known = model._categories("conditions")
    if model._obs_key("condition") is None or not known:
        raise GMMVAEInputError(
            "This model was trained without a condition; treatment-effect prediction needs "
            "one. Set it up with GMMVAE.setup_anndata(adata, condition_key='condition', ...) "
            "and train again."
        )
    for role, value in (("source", source), ("target", target)):
        if str(value) not in known:
            raise GMMVAEInputError(
                f"{role}={value!r} is not a condition the model was trained on; known ones are "
                f"{known}."
            )
    if str(source) == str(target):
        raise GMMVAEInputError(
            f"source and target are both {source!r}; pass two different conditions of {known}."
        )
    return known, known.index(str(source)), known.index(str(target))


def _check_source_cells(adata: AnnData, key: str, source: str, target: str) -> None:
    """Every cell must be under ``source``; an absent condition column means all are."""
    if key not in adata.obs:
        return
    values = adata.obs[key].astype(str).to_numpy()
    wrong = values != str(source)
    if wrong.any():
        found = pd.Series(values[wrong]).value_counts().to_dict()
        hint = " (already the target condition)" if str(target) in found else ""
        raise GMMVAEInputError(
            f"{int(wrong.sum())} of {adata.n_obs} cells are not under source={source!r} in "
            f"obs[{key!r}]: {found}{hint}. Pass only the {source!r} cells, e.g. "
            f"adata[adata.obs[{key!r}] == {source!r}].copy()."
        )


_ENCODED = ("component_mean", "component_logvar", "component", "library")


def _encode(model: GMMVAE, data: CellData, batch_size: int) -> dict[str, np.ndarray]:
    """q(z | x, y, c) at each cell's component (its label, else its most probable one), the
    component and the library size, under the condition codes in ``data``."""
    out = model._encode(data, _ENCODED, batch_size=batch_size)
    return {
        "mean": out["component_mean"],
        "logvar": out["component_logvar"],
        "component": out["component"],
        "library": out["library"],
    }


@torch.no_grad()
def _observe(
    model: GMMVAE,
    z: np.ndarray,
    library: np.ndarray,
    condition: int,
    batches: np.ndarray,
    response: np.ndarray | None,
    *,
    n_draws: int,
    n_mc: int,
    chunk: int = 1024,
) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """Expected log1p-CP10k expression per cell (n, G; None when ``n_mc`` is 0) and
    ``n_draws`` draws of counts.

    The expectation is over the likelihood, estimated from ``n_mc`` draws each normalised by
    its own library, as real cells are: it is what a cell's log1p-CP10k values average to,
    unlike log1p of the decoder's mean, which Jensen's inequality puts above it for sparse
    genes. ``response`` (n, G), if given, is added to the decoder's expression on the log1p
    CP10k scale, which is then renormalised (the ``"transfer"`` method). For a Gaussian
    model the expectation is the decoder's mean.
    """
    likelihood = model.config.likelihood
    means, draws = [], [[] for _ in range(n_draws)]
    for start in range(0, len(z), chunk):
        part = slice(start, start + chunk)
        params = model._decode(z[part], library[part], condition, batches[part])
        if response is not None:
            device = next(iter(params.values())).device
            delta = torch.as_tensor(response[part], dtype=torch.float32, device=device)
            if likelihood == "gaussian":
                params["mean"] = params["mean"] + delta
            else:
                lib = params["mu"].sum(-1, keepdim=True)
                log_moved = torch.log1p(params["mu"] / lib * LOG_SCALE) + delta
                # No gene can pass 1e4 per 10k; the cap keeps an extreme response finite.
                moved = torch.expm1(log_moved.clamp(max=math.log1p(LOG_SCALE)))
                moved = moved.clamp(min=0.0) + 1e-8
                params["mu"] = lib * moved / moved.sum(-1, keepdim=True)
        for i in range(n_draws):
            draws[i].append(sample_counts(likelihood, params).cpu().numpy().astype(np.float32))
        if n_mc == 0:  # only draws wanted
            continue
        if likelihood == "gaussian":
            means.append(params["mean"].cpu().numpy())
            continue
        total = torch.zeros_like(params["mu"])
        for _ in range(n_mc):
            x = sample_counts(likelihood, params)
            total += torch.log1p(x / x.sum(-1, keepdim=True).clamp(min=1.0) * LOG_SCALE)
        means.append((total / n_mc).cpu().numpy())
    mean = np.concatenate(means).astype(np.float32) if means else None
    return mean, [np.concatenate(d) for d in draws]


# ------------------------------------------------------------------------------------ main
def predict_perturbation(
    model: GMMVAE,
    adata: AnnData,
    *,
    source: str = "control",
    target: str = "stimulated",
    n_samples: int = 1,
    seed: int = 0,
    method: PerturbationMethod = DEFAULT_PERTURBATION_METHOD,
    reference: AnnData | None = None,
    weighting: ShiftWeighting = DEFAULT_SHIFT_WEIGHTING,
    n_mc: int = 32,
    interval: float | None = 0.9,
    n_interval_draws: int = 100,
    batch_size: int = 1024,
    key_added: str = DEFAULT_KEY,
) -> AnnData:
    """Counterfactual cells: how the given ``source`` cells would look under ``target``.

    Each cell is encoded under ``source`` with its type (its label when the model has
    labels and ``adata`` carries them, else its most probable component) and decoded
    under ``target``. Works with any number of conditions; the predicted cell type may
    have had no ``target`` cells in training.

    Parameters
    ----------
    adata
        The cells to predict, all under ``source`` (e.g. control cells of one type):
        every value of the condition column must be ``source``; without that column all
        cells are taken to be. Genes are matched by name.
    source, target
        Conditions seen in training.
    n_samples
        Draws of counts per cell, each from its own z ~ q(z|x,y,c).
    seed
        Seed of the draws (local to the call).
    method
        ``"transfer"`` (default): the cell's reconstruction plus the model's response
        (decoded treated minus decoded control cells, on the log1p-CP10k scale) of the
        types seen under both conditions, weighted by ``weighting``.
        ``"latent_shift"``: z plus those types' mean latent difference target - source
        (scGen's arithmetic), decoded under ``target``. ``"decoder"``: the seed's
        approach, only the decoder's condition is flipped. A type seen under both
        conditions uses its own response.
    reference
        Cells under both conditions, with types, from which ``"transfer"`` and
        ``"latent_shift"`` take the response; default the training data (required for a
        model loaded without it).
    weighting
        ``"similarity"`` (default): a type not seen under ``target`` borrows from the
        others with a Gaussian kernel of latent-centroid distance (nearest weighs most);
        ``"uniform"``: every type weighs the same, as scGen's balanced mean.
    n_mc
        Draws per cell for the expected log1p-CP10k expression in the mean layer.
    interval
        Level of the per-gene interval for the predicted mean expression of these cells
        (log1p CP10k; ``None`` skips it). Each of ``n_interval_draws`` draws resamples the
        donor types' reference cells with replacement (how well their response is known),
        draws every cell's z ~ q(z|x,y,c) and its counts, averages the cells' log1p CP10k
        and, for cells of a type that borrows its response, adds a draw of how far a type's
        own response may lie from the one it borrows: Gaussian with the spread of the
        donors' leave-one-out errors (each donor's observed response, its treated minus its
        control cells' mean log1p CP10k, against the others' decoded responses weighted by
        ``weighting``: what the model would lend it), widened to a Student-t prediction
        interval from that many donors. The interval is the draws' central quantiles: an
        interval for the mean of as many cells as were given, so it includes their sampling
        noise. With a single donor type nothing tells how types differ, and the interval
        leaves that part out; ``method="decoder"`` borrows nothing, so its interval has only
        the other parts.
    n_interval_draws
        Draws behind the interval.
    batch_size
        Cells encoded at a time.
    key_added
        Prefix of the layer, obs columns and ``uns`` entry written.

    Returns
    -------
    AnnData with ``n_obs * n_samples`` cells and the model's genes: sampled counts in
    ``X`` and ``layers["counts"]`` (CSR float32; for a Gaussian model, sampled values in
    ``X`` and no counts layer); ``layers[f"{key_added}_log_mean"]`` (dense float32), the
    predicted mean expression of each cell normalised like real cells (the expectation of
    log1p CP10k under the likelihood; the decoder's mean for a Gaussian model), the same
    for every sample of a cell; ``var[f"{key_added}_mean"]`` (the cells' mean of that layer)
    and, with ``interval``, ``var[f"{key_added}_mean_lower"]`` and ``..._mean_upper``;
    ``obs`` copied from ``adata`` with the condition column set
    to ``target``, ``obs[f"{key_added}_predicted"]`` (True) and
    ``obs[f"{key_added}_sample"]`` (int, 0-based draw); parameters and donor weights in
    ``uns[key_added]``. Names get ``-i`` suffixes when ``n_samples > 1``.
    """
    check_choice("method", method, PERTURBATION_METHODS)
    check_choice("weighting", weighting, SHIFT_WEIGHTINGS)
    if interval is not None and not 0.0 < float(interval) < 1.0:
        raise GMMVAEInputError(f"interval must be in (0, 1) or None, got {interval!r}.")
    for name, value in (
        ("n_samples", n_samples),
        ("n_mc", n_mc),
        ("n_interval_draws", n_interval_draws),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise GMMVAEInputError(f"{name} must be a positive integer, got {value!r}.")
    if not model.is_trained:
        raise GMMVAEInputError("Train the model before predicting (model.train()).")
    if adata.n_obs == 0:
        raise GMMVAEInputError("adata has no cells; pass at least one control cell.")
    known, src, tgt = _conditions(model, source, target)
    _check_source_cells(adata, model._obs_key("condition"), source, target)
    codes = np.full(adata.n_obs, src, dtype=np.int64)
    query_data = model._cells(adata, labels="if_present", conditions=codes)
    query = _encode(model, query_data, batch_size)
    move = _movement(model, query, method, weighting, reference, known, src, tgt, batch_size)
    batches = query_data.batches.numpy()
    rng = np.random.default_rng(seed)
    z_mean, response, condition = move["z_mean"], move["response"], move["condition"]
    with seeded_rng(seed):
        log_mean, _ = _observe(
            model, z_mean, query["library"], condition, batches, response, n_draws=0, n_mc=n_mc
        )
        # Each sample draws its own z ~ q(z|x,y,c), moved like the mean, then counts.
        noise = rng.standard_normal((n_samples, *z_mean.shape))
        draws = [
            _observe(
                model,
                z_mean + np.exp(0.5 * query["logvar"]) * noise[i],
                query["library"],
                condition,
                batches,
                response,
                n_draws=1,
                n_mc=0,
            )[1][0]
            for i in range(n_samples)
        ]
        bounds = None
        if interval is not None:
            cells = (query, batches, condition)
            bounds = _mean_interval(model, cells, move, float(interval), n_interval_draws, rng)
    params = {
        "source": str(source),
        "target": str(target),
        "n_samples": int(n_samples),
        "seed": int(seed),
        "method": method,
        "weighting": weighting if method != "decoder" else None,
        "n_mc": int(n_mc),
        "interval": None if interval is None else float(interval),
        "n_interval_draws": int(n_interval_draws) if interval is not None else None,
    }
    result = _as_anndata(model, adata, key_added, target, log_mean, draws, params, move["info"])
    result.var[f"{key_added}_mean"] = log_mean.mean(0)
    if bounds is not None:
        result.var[f"{key_added}_mean_lower"], result.var[f"{key_added}_mean_upper"] = bounds
    return result


def _mean_interval(model, cells, move, level, n_draws, rng) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` interval per gene of the cells' mean log1p CP10k (see
    :func:`predict_perturbation`'s ``interval``): (lower, upper), each (G,)."""
    query, batches, condition = cells
    scale = np.exp(0.5 * query["logvar"])
    # Share of the cells whose type borrows its response, per component: each such type
    # gets its own draw of how far its response lies from the borrowed one.
    K = model.config.n_components
    borrowing = np.bincount(query["component"], minlength=K) / len(query["component"])
    borrowing[move["lenders"]] = 0.0
    means = []
    for _ in range(n_draws):
        z_mean, response = move["resample"](rng)
        z = z_mean + scale * rng.standard_normal(z_mean.shape)
        counts = _observe(
            model, z, query["library"], condition, batches, response, n_draws=1, n_mc=0
        )[1][0]
        if model.config.likelihood == "gaussian":
            mean = counts.mean(0)
        else:
            total = np.maximum(counts.sum(1, keepdims=True), 1.0)
            mean = np.log1p(counts / total * LOG_SCALE).mean(0)
        if move["errors"] is not None:
            mean = mean + borrowing @ between_type_draws(move["errors"], K, level, rng)
        means.append(mean)
    tail = (1.0 - level) / 2.0
    lower, upper = np.quantile(np.stack(means), [tail, 1.0 - tail], axis=0)
    return lower.astype(np.float32), upper.astype(np.float32)


def _movement(model, query, method, weighting, reference, known, src, tgt, batch_size):
    """How the query's cells move to the target: the latent to decode, a response added on
    the log1p-CP10k scale (``transfer``) and the condition to decode under; donor info, the
    donors' leave-one-out errors and how to resample what they lend (for the interval)."""
    move = {"z_mean": query["mean"], "response": None, "condition": tgt, "info": {}}
    move["resample"] = lambda rng: (query["mean"], None)  # nothing lent, nothing to resample
    move.update(errors=None, lenders=np.zeros(0, dtype=int))
    if method == "decoder":
        return move
    reference = model.adata if reference is None else reference
    if reference is None:
        raise GMMVAEInputError(
            f"method={method!r} needs reference cells under both conditions with cell "
            "types (the training data), and this model holds none (it was loaded from "
            "disk). Pass reference=training_adata, or use method='decoder'."
        )
    key = model._obs_key("condition")
    check_obs_key(reference, key, "condition_key")
    ref_data = model._cells(reference, labels="if_present")
    ref_conditions = ref_data.conditions.numpy()
    ref = _encode(model, ref_data, batch_size)
    K = model.config.n_components
    donors = donor_weights(ref, ref_conditions, query, src, tgt, K, weighting=weighting)
    donors["target"] = tgt
    names = model.component_names
    move["info"] = {
        "donors": [names[k] for k in donors["donors"]],
        "weights": {
            names[k]: donors["weights"][k].round(4).tolist() for k in np.unique(query["component"])
        },
    }
    move["lenders"] = donors["donors"]
    comp = query["component"]
    cells = donor_cells(model, ref, ref_conditions, ref_data.batches.numpy(), donors, src)
    own = np.stack([treated.mean(0) - control.mean(0) for treated, control in cells])
    log_scale = model.config.likelihood != "gaussian"
    observed = observed_responses(
        ref_data, ref["component"], ref_conditions, donors, src, log_scale=log_scale
    )
    move["errors"] = leave_one_out_errors(observed, donors, lent=own)
    if method == "latent_shift":
        move["z_mean"] = query["mean"] + latent_shifts(donors)[comp]

        def resample_shift(rng):
            return query["mean"] + bootstrap_shifts(ref, ref_conditions, donors, src, rng)[
                comp
            ], None

        move["resample"] = resample_shift
        return move
    # transfer: the donors' decoder response on top of the cell's own reconstruction
    move.update(response=(donors["weights"] @ own)[comp], condition=src)
    move["resample"] = lambda rng: (
        query["mean"],
        bootstrap_responses(cells, donors["weights"], rng)[comp],
    )
    return move


def _as_anndata(model, adata, key, target, log_mean, draws, params, info) -> AnnData:
    n_samples = len(draws)
    obs = pd.concat([adata.obs] * n_samples) if n_samples > 1 else adata.obs.copy()
    sample_index = np.repeat(np.arange(n_samples), adata.n_obs)
    if n_samples > 1:
        obs.index = [f"{name}-{i}" for i, name in zip(sample_index, obs.index, strict=True)]
    obs[model._obs_key("condition")] = pd.Categorical(
        [str(target)] * len(obs), categories=model._categories("conditions")
    )
    obs[f"{key}_predicted"] = True
    obs[f"{key}_sample"] = sample_index
    var = pd.DataFrame(index=pd.Index(model.gene_names))
    values = np.concatenate(draws)
    uns = {
        key: {
            "params": {k: v for k, v in params.items() if v is not None},
            "variant": model.config.variant,
            "likelihood": model.config.likelihood,
            **({"donors": info} if info else {}),
        }
    }
    mean_layer = np.tile(log_mean, (n_samples, 1))
    if model.config.likelihood == "gaussian":
        result = AnnData(X=values, obs=obs, var=var, uns=uns)
    else:
        counts = sparse.csr_matrix(values)
        result = AnnData(X=counts, obs=obs, var=var, uns=uns)
        result.layers["counts"] = counts.copy()
    result.layers[f"{key}_log_mean"] = mean_layer
    return result
