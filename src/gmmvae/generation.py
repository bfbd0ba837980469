"""Synthetic cells from a trained model: composition and library sizes, then z | y, then x | z.

``training_summary`` records what generation needs from the training data (component
frequencies, library-size quantiles per component, condition and batch frequencies, the
(z, log library) Gaussians per component and per component and condition, a dispersion
refitted at the cells' latent means) so that a saved model generates without the data.
``generate`` samples cells from it. Both use only the model's interface (``_encode``,
``_sample_prior``, ``_decode``, ``_categories``, ``_obs_key``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from gmmvae._seed import seeded_rng
from gmmvae.data import CellData, make_loader
from gmmvae.distributions import THETA_MAX, sample_counts
from gmmvae.errors import GMMVAEInputError
from gmmvae.options import (
    DEFAULT_GENERATION_LATENT,
    DEFAULT_KEY,
    GENERATION_LATENTS,
    GenerationLatent,
    check_choice,
)

if TYPE_CHECKING:
    from gmmvae.model import GMMVAE

_QUANTILES = np.linspace(0.0, 1.0, 101)
_MIN_CELLS_PER_COMPONENT = 10  # fewer cells than this: use every cell's library sizes
_CHUNK = 2048  # cells decoded at a time, so memory stays bounded
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
        per_component.append(np.quantile(source, _QUANTILES).round(5).tolist())
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
    for batch in make_loader(data, _CHUNK, shuffle=False):
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


def _codes_for(
    requested: str | Sequence[str] | None, names: list[str], role: str, hint: str = ""
) -> list[int] | None:
    if requested is None:
        return None
    wanted = [requested] if isinstance(requested, str) else list(requested)
    unknown = [w for w in wanted if str(w) not in names]
    if unknown:
        raise GMMVAEInputError(f"Unknown {role} {unknown}; known ones are {names}.{hint}")
    return [names.index(str(w)) for w in wanted]


def plan_cells(
    model: GMMVAE,
    n_cells: int | Mapping[str, int],
    cell_type: str | Sequence[str] | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Component code of every cell to generate."""
    names = model.component_names
    hint = (
        ""
        if model._categories("labels")
        else " This model was trained without labels, so its components are numbered; ask "
        "for a component by its number, e.g. cell_type='0', and compare with model.predict()."
    )
    if isinstance(n_cells, Mapping):
        codes = _codes_for(list(n_cells), names, "cell type", hint) or []
        counts = [int(n) for n in n_cells.values()]
        if any(n < 1 for n in counts):
            raise GMMVAEInputError(f"n_cells values must be >= 1, got {dict(n_cells)}.")
        return np.repeat(codes, counts)
    if int(n_cells) < 1:
        raise GMMVAEInputError(f"n_cells must be >= 1, got {n_cells}.")
    codes = _codes_for(cell_type, names, "cell type", hint)
    if codes is not None:
        return np.repeat(codes, int(n_cells))
    freq = np.asarray(model.generation_summary["component_frequencies"])
    return rng.choice(len(names), int(n_cells), p=freq / freq.sum())


def _covariate_codes(
    requested: str | None,
    names: list[str],
    freq: list[float],
    n: int,
    role: str,
    rng: np.random.Generator,
) -> np.ndarray:
    if not names:
        if requested is not None:
            raise GMMVAEInputError(f"The model was trained without a {role}_key; drop {role}=.")
        return np.zeros(n, dtype=np.int64)
    if requested is not None:
        return np.full(n, _codes_for(requested, names, role)[0], dtype=np.int64)
    p = np.asarray(freq)
    return rng.choice(len(names), n, p=p / p.sum())


def _library_sizes(
    model: GMMVAE, components: np.ndarray, library_size: str | float, rng: np.random.Generator
) -> np.ndarray:
    if library_size != "empirical":
        value = float(library_size)
        if not np.isfinite(value) or value <= 0:
            raise GMMVAEInputError(
                f"library_size must be 'empirical' or a positive number, got {library_size!r}."
            )
        return np.full(len(components), value)
    quantiles = np.asarray(model.generation_summary["log_library_quantiles"])  # (K, 101)
    u = rng.uniform(size=len(components))
    # Inverse CDF per cell, vectorised: the bracketing quantile of each draw, interpolated.
    position = u * (len(_QUANTILES) - 1)
    lower = np.minimum(position.astype(int), len(_QUANTILES) - 2)
    frac = position - lower
    rows = quantiles[components]
    log_lib = (
        rows[np.arange(len(u)), lower] * (1 - frac) + rows[np.arange(len(u)), lower + 1] * frac
    )
    return np.round(np.exp(log_lib))


def _embedding_draws(
    model: GMMVAE, components: np.ndarray, conditions: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, log library) from each cell's (component, condition) Gaussian, or its component's
    when that group had too few cells (:func:`embedding_gaussians`).

    Returns z (n, d), log library (n,) and a mask of the cells that got a Gaussian (the
    others are to be drawn from p(z|y)).
    """
    means, covs, fitted = _stacked_gaussians(model)  # (K, C, d + 1), (K, C, d + 1, d + 1)
    factors = np.linalg.cholesky(covs[components, conditions])
    noise = rng.standard_normal((len(components), means.shape[-1]))
    joint = means[components, conditions] + np.einsum("nij,nj->ni", factors, noise)
    return joint[:, :-1], joint[:, -1], fitted[components, conditions]


def _stacked_gaussians(model: GMMVAE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored Gaussians as arrays indexed [component, condition], each missing group
    filled with its component's Gaussian (or a placeholder marked not fitted)."""
    summary = model.generation_summary
    dim = model.config.n_latent + 1
    n_conditions = model.config.n_conditions
    pooled = list(zip(summary["embedding_means"], summary["embedding_covariances"], strict=True))
    # Models saved before per-condition Gaussians existed have only the pooled ones.
    by_condition = summary.get("embedding_condition_means") or [[None] * n_conditions] * len(pooled)
    cond_covs = summary.get("embedding_condition_covariances") or by_condition
    means = np.zeros((len(pooled), n_conditions, dim))
    covs = np.broadcast_to(np.eye(dim), (len(pooled), n_conditions, dim, dim)).copy()
    fitted = np.zeros((len(pooled), n_conditions), dtype=bool)
    for k, (mean, cov) in enumerate(pooled):
        for c in range(n_conditions):
            own = by_condition[k][c] is not None
            m, v = (by_condition[k][c], cond_covs[k][c]) if own else (mean, cov)
            if m is not None:
                means[k, c], covs[k, c], fitted[k, c] = m, v, True
    return means, covs, fitted


def _uses_embedding(model: GMMVAE, latent: str) -> bool:
    check_choice("latent", latent, GENERATION_LATENTS)
    if latent == "prior":
        return False
    if model.generation_summary.get("embedding_means") is None:
        warnings.warn(
            "This model was saved before generation from the cells' embedding existed; "
            "cells are drawn from p(z|y) (latent='prior'). Retrain to use latent='embedding'.",
            UserWarning,
            stacklevel=3,
        )
        return False
    return True


def generate(
    model: GMMVAE,
    n_cells: int | Mapping[str, int],
    *,
    cell_type: str | Sequence[str] | None = None,
    condition: str | None = None,
    batch: str | None = None,
    library_size: str | float = "empirical",
    latent: GenerationLatent = DEFAULT_GENERATION_LATENT,
    seed: int = 0,
    key_added: str = DEFAULT_KEY,
) -> AnnData:
    """Synthetic cells sampled from the generative model.

    Draws a component y (the requested type, or from the training composition), then z and
    the library size, then counts from the likelihood.

    With ``latent="embedding"`` (default) z and the log library size are drawn jointly from a
    Gaussian fitted, after training, to the training cells of the component under the
    requested condition (the component's cells of every condition when that group has fewer
    than 10): their posterior means E[z | x, y] and their library sizes. Counts are then
    drawn around the decoder's mean with a per-gene dispersion refitted to the training
    cells at their posterior means (:func:`refit_inverse_dispersion`; NB and ZINB), since
    the learned one also covers the spread of z ~ q(z|x). ``latent="prior"`` draws z from
    the learned p(z|y) with the learned dispersion instead; the KL term keeps p(z|y) broader
    than the cells' embedding, so its cells are more spread than real ones. Which choice
    moved which score, measured on inner splits of the benchmark's training cells, is in
    BENCHMARKS.md (synthetic cells).

    Parameters
    ----------
    n_cells
        Number of cells, or a mapping ``{cell type: number}``.
    cell_type
        A type (component name) or a list of them; each gets ``n_cells`` cells. Default:
        types drawn with their training frequencies.
    condition, batch
        A condition / batch seen in training; default: drawn with training frequencies.
    library_size
        ``"empirical"`` (drawn with z from the embedding's Gaussian, or for
        ``latent="prior"`` from the training library sizes of the cell's type) or a fixed
        number of counts per cell.
    latent
        ``"embedding"`` (a Gaussian fitted to the type's training cells) or ``"prior"``
        (p(z|y)).
    seed
        Seed of every draw (local to the call).
    key_added
        Prefix of the obs columns and the ``uns`` entry written.

    Returns
    -------
    AnnData with the model's genes: counts in ``X`` (CSR, float32, integer-valued) and
    ``layers["counts"]`` (for a Gaussian model, log-normalised values in ``X`` and no counts
    layer); ``obs[f"{key_added}_label"]`` (categorical, the component name, as
    :meth:`~gmmvae.GMMVAE.predict` writes for real cells), the model's labels, condition and
    batch columns under their training names when it has them, ``obs[f"{key_added}_synthetic"]``
    (True), ``obs[f"{key_added}_library_size"]`` (float32, the library size drawn; count
    likelihoods only) and how the cells were made in ``uns[key_added]``.
    """
    if not model.is_trained or not model.generation_summary:
        raise GMMVAEInputError("Train the model before generating cells (model.train()).")
    rng = np.random.default_rng(seed)
    components = plan_cells(model, n_cells, cell_type, rng)
    n = len(components)
    summary = model.generation_summary
    conditions = _covariate_codes(
        condition,
        model._categories("conditions"),
        summary["condition_frequencies"],
        n,
        "condition",
        rng,
    )
    batches = _covariate_codes(
        batch, model._categories("batches"), summary["batch_frequencies"], n, "batch", rng
    )
    gaussian = model.config.likelihood == "gaussian"
    library = np.ones(n) if gaussian else _library_sizes(model, components, library_size, rng)
    embedding = _uses_embedding(model, latent)
    inverse_dispersion = summary.get("embedding_inverse_dispersion")
    if inverse_dispersion is not None:
        inverse_dispersion = np.asarray(inverse_dispersion, dtype=np.float64)
    if embedding:
        z_cells, log_lib, fitted = _embedding_draws(model, components, conditions, rng)
        if library_size == "empirical" and not gaussian:
            library = np.where(fitted, np.round(np.exp(log_lib)).clip(min=1.0), library)
    chunks = []
    with seeded_rng(seed):
        for start in range(0, n, _CHUNK):
            part = slice(start, start + _CHUNK)
            z = model._sample_prior(components[part])
            if embedding:
                from_cells = torch.as_tensor(fitted[part], device=z.device).unsqueeze(-1)
                drawn = torch.as_tensor(z_cells[part], dtype=z.dtype, device=z.device)
                z = torch.where(from_cells, drawn, z)
            params = model._decode(z, library[part], conditions[part], batches[part])
            if embedding and inverse_dispersion is not None:
                refit = torch.as_tensor(1.0 / inverse_dispersion, dtype=z.dtype, device=z.device)
                learned = params["theta"].expand_as(params["mu"])
                params["theta"] = torch.where(from_cells, refit.expand_as(learned), learned)
            x = sample_counts(model.config.likelihood, params)
            chunks.append(x.cpu().numpy().astype(np.float32))
    params = {
        "n_cells": n,
        "cell_type": cell_type,
        "condition": condition,
        "batch": batch,
        "library_size": library_size,
        "latent": "embedding" if embedding else "prior",
        "seed": seed,
    }
    cells = {"component": components, "conditions": conditions, "batches": batches}
    return _as_anndata(model, np.concatenate(chunks), cells, library, params, key_added)


def _as_anndata(model, values, cells, library, params, key) -> AnnData:
    obs = pd.DataFrame(
        {f"{key}_label": pd.Categorical.from_codes(cells["component"], model.component_names)},
        index=[f"synthetic_{i}" for i in range(len(values))],
    )
    labels_key = model._obs_key("labels")
    if labels_key is not None:
        obs[labels_key] = obs[f"{key}_label"].copy()
    for role, codes in (("condition", cells["conditions"]), ("batch", cells["batches"])):
        names = model._categories(f"{role}s")
        if names:
            obs[model._obs_key(role)] = pd.Categorical.from_codes(codes, names)
    obs[f"{key}_synthetic"] = True
    var = pd.DataFrame(index=pd.Index(model.gene_names, name=None))
    likelihood = model.config.likelihood
    info = {
        "params": {k: v for k, v in params.items() if v is not None and not isinstance(v, dict)},
        "variant": model.config.variant,
        "likelihood": likelihood,
    }
    if likelihood == "gaussian":
        info["values"] = "log-normalised (Gaussian likelihood): samples of the decoder's normal"
        return AnnData(X=values, obs=obs, var=var, uns={key: info})
    info["values"] = f"counts sampled from the {likelihood} likelihood"
    counts = sparse.csr_matrix(values)
    adata = AnnData(X=counts, obs=obs, var=var, uns={key: info})
    adata.layers["counts"] = counts.copy()
    adata.obs[f"{key}_library_size"] = library.astype(np.float32)
    return adata
