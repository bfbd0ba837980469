"""Synthetic cells from a trained model: composition and library sizes, then z | y, then x | z.

:func:`gmmvae.generation_summary.training_summary` records what generation needs from the
training data so that a saved model generates without the data; ``generate`` samples cells
from it. Both use only the model's interface (``_encode``, ``_sample_prior``, ``_decode``,
``_categories``, ``_obs_key``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from gmmvae._seed import seeded_rng
from gmmvae.distributions import sample_counts
from gmmvae.errors import GMMVAEInputError
from gmmvae.generation_summary import CHUNK, QUANTILES
from gmmvae.options import (
    DEFAULT_GENERATION_LATENT,
    DEFAULT_KEY,
    GENERATION_LATENTS,
    GenerationLatent,
    check_choice,
)

if TYPE_CHECKING:
    from gmmvae.model import GMMVAE


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
    position = u * (len(QUANTILES) - 1)
    lower = np.minimum(position.astype(int), len(QUANTILES) - 2)
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
    when that group had too few cells (:func:`gmmvae.generation_summary.embedding_gaussians`).

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
    Gaussian fitted, after training, to the training cells of the component under the requested
    condition (the component's cells of every condition when that group has fewer than 10):
    their posterior means E[z | x, y] and their library sizes. Counts are then drawn around the
    decoder's mean with a per-gene dispersion refitted to the training cells at their posterior
    means (NB and ZINB; :func:`gmmvae.generation_summary.refit_inverse_dispersion`), since the
    learned one also covers the spread of z ~ q(z|x). ``latent="prior"`` draws z from the
    learned p(z|y) with the learned dispersion instead; the KL term keeps p(z|y) broader than
    the cells' embedding, so its cells are more spread than real ones. Which choice moved which
    score, measured on inner splits of the benchmark's training cells, is in BENCHMARKS.md
    (synthetic cells).

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
        for start in range(0, n, CHUNK):
            part = slice(start, start + CHUNK)
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
