"""What a user asks of a trained model after clustering: decoded (normalised, batch-corrected)
expression and posterior predictive counts. Differential expression is in :mod:`gmmvae.de`.

Every function takes the model first (as ``model``) so that it binds as a method, like
:func:`gmmvae.generation.generate`, and uses only the model's interface (``_cells``,
``_encode``, ``_decode``, ``_categories``, ``_obs_key``). Each cell's latent is drawn from
q(z | x, y), y being its label where the model has labels and ``adata`` carries them, else its
most probable component (the ``component`` field of :mod:`gmmvae.inference`). Python loops run
over posterior draws, chunks of cells and batches, never over single cells or genes.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from gmmvae._seed import seeded_rng
from gmmvae.distributions import sample_counts
from gmmvae.errors import GMMVAEInputError, MissingKeyError
from gmmvae.validation import ensure_actual

if TYPE_CHECKING:
    from gmmvae.data import CellData
    from gmmvae.model import GMMVAE

CHUNK = 2048  # cells decoded at a time, so memory stays bounded
POSTERIOR_FIELDS = ("component_mean", "component_logvar", "component", "library")


# ------------------------------------------------------------------------ shared helpers
def resolve_adata(model: GMMVAE, adata: AnnData | None) -> AnnData:
    """``adata``, or the model's own data; errors when the model is untrained or has none."""
    if not model.is_trained:
        raise GMMVAEInputError("Train the model first (model.train()).")
    adata = model.adata if adata is None else adata
    if adata is None:
        raise GMMVAEInputError("This model holds no AnnData (it was loaded); pass adata=.")
    if adata.n_obs == 0:
        raise GMMVAEInputError("adata has no cells; pass at least one cell.")
    return adata


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise GMMVAEInputError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def cell_positions(indices: Sequence[int] | np.ndarray | None, n_obs: int) -> np.ndarray:
    """Integer positions of the cells asked for (all cells for ``None``; a mask is allowed)."""
    if indices is None:
        return np.arange(n_obs)
    positions = np.asarray(indices)
    if positions.dtype == bool:
        if positions.shape != (n_obs,):
            raise GMMVAEInputError(
                f"indices is a boolean mask of length {len(positions)}, but adata has {n_obs} "
                "cells; pass one value per cell."
            )
        positions = np.flatnonzero(positions)
    if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
        raise GMMVAEInputError(
            "indices must be integer positions or a boolean mask over adata's cells, got "
            f"dtype {positions.dtype}; for cell names use adata.obs_names.get_indexer(names)."
        )
    if len(positions) == 0:
        raise GMMVAEInputError("indices selects no cells; pass at least one.")
    if positions.min() < -n_obs or positions.max() >= n_obs:
        raise GMMVAEInputError(f"indices must lie in [0, {n_obs}) for adata's {n_obs} cells.")
    return positions % n_obs


def gene_positions(model: GMMVAE, gene_list: Sequence[str] | None) -> np.ndarray:
    """Positions of ``gene_list`` among the model's genes (all genes for ``None``)."""
    if gene_list is None:
        return np.arange(len(model.gene_names))
    wanted = [gene_list] if isinstance(gene_list, str) else [str(g) for g in gene_list]
    position = pd.Index(model.gene_names).get_indexer(wanted)
    missing = [g for g, p in zip(wanted, position, strict=True) if p < 0]
    if missing:
        close = difflib.get_close_matches(missing[0], model.gene_names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise MissingKeyError(
            f"gene_list has {len(missing)} gene(s) the model was not trained on, e.g. "
            f"{missing[:10]}.{hint} The model's {len(model.gene_names)} genes are in "
            "model.gene_names; drop the others, e.g. "
            "[g for g in gene_list if g in model.gene_names]."
        )
    if not len(wanted):
        raise GMMVAEInputError("gene_list is empty; pass at least one gene or None for all.")
    return position


def covariate_codes(
    model: GMMVAE, role: Literal["batch", "condition"], value: str | Sequence[str]
) -> list[int]:
    """Codes of the requested batch(es) / condition(s); errors name the known ones."""
    known = model._categories(f"{role}es" if role == "batch" else f"{role}s")
    option = f"transform_{role}"
    if model._obs_key(role) is None or not known:
        raise GMMVAEInputError(
            f"{option}={value!r}, but the model was trained without a {role}_key; drop "
            f"{option}=, or set the model up with GMMVAE.setup_anndata(adata, "
            f"{role}_key=...) and train again."
        )
    wanted = [value] if isinstance(value, str) else [str(v) for v in value]
    unknown = [w for w in wanted if str(w) not in known]
    if unknown or not wanted:
        raise GMMVAEInputError(
            f"{option}={value!r} names no {role} the model was trained on "
            f"(unknown: {unknown}); known ones are {known}."
        )
    return [known.index(str(w)) for w in wanted]


def sample_latents(
    encoded: dict[str, np.ndarray], n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """z ~ q(z | x, y = component) for every cell: (n_samples, n_cells, n_latent), float32."""
    mean, logvar = encoded["component_mean"], encoded["component_logvar"]
    noise = rng.standard_normal((n_samples, *mean.shape), dtype=np.float32)
    return mean + np.exp(0.5 * logvar) * noise


def decoded_expression(
    model: GMMVAE,
    z: np.ndarray,
    conditions: np.ndarray,
    batch_codes: Sequence[np.ndarray],
) -> np.ndarray:
    """Decoder expression for latents ``z`` (n, d), averaged over decoding under each entry of
    ``batch_codes`` (each (n,) codes): gene proportions rho (rows sum to 1) for a count
    likelihood, the decoder's mean for a Gaussian one. (n, G) float32."""
    gaussian = model.config.likelihood == "gaussian"
    ones = np.ones(len(z), dtype=np.float32)  # rho does not depend on the library
    values = []
    for batches in batch_codes:
        params = model._decode(z, ones, conditions, batches)
        values.append(params["mean"] if gaussian else torch.exp(params["log_p"]))
    mean = values[0] if len(values) == 1 else torch.stack(values).mean(0)
    return mean.cpu().numpy().astype(np.float32, copy=False)


def _library(library_size: float | str, encoded: dict[str, np.ndarray]) -> np.ndarray | float:
    if library_size == "latent":
        return encoded["library"].astype(np.float32)[:, None]
    try:
        value = float(library_size)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise GMMVAEInputError(
            f"library_size must be a positive number (e.g. 1e4) or 'latent' (each cell's "
            f"observed total counts), got {library_size!r}."
        )
    return value


# --------------------------------------------------------------- normalised expression
def get_normalized_expression(
    model: GMMVAE,
    adata: AnnData | None = None,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    transform_batch: str | Sequence[str] | None = None,
    transform_condition: str | None = None,
    library_size: float | Literal["latent"] = 1e4,
    n_samples: int = 1,
    return_mean: bool = True,
    gene_list: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    key_added: str | None = None,
) -> pd.DataFrame | np.ndarray:
    """Decoded (normalised, optionally batch-corrected) expression of each cell.

    Draws ``n_samples`` latents z ~ q(z | x, y) per cell (y: the cell's label where the model
    has labels and ``adata`` carries them, else its most probable component), decodes each
    into gene proportions rho (scVI's ``px_scale``) and scales them to ``library_size``. As in
    scvi-tools, a single sample is a draw, not the posterior mean.

    Parameters
    ----------
    adata
        Cells to use (genes matched to the model's by name); default the model's own data.
    indices
        Positions (or a boolean mask) of the cells of ``adata`` to use; default all.
    transform_batch
        Decode every cell under this batch instead of its own (batch-corrected expression);
        a list of batches averages rho over them. Names a category of the model's
        ``batch_key``.
    transform_condition
        Decode every cell under this condition (cells are still encoded under their own):
        the decoder's counterfactual. Names a category of the model's ``condition_key``.
    library_size
        Counts each cell's expression sums to (default 1e4, i.e. CP10k); ``"latent"`` uses
        each cell's observed total counts.
    n_samples
        Posterior draws per cell.
    return_mean
        Average over the draws. With ``False`` and ``n_samples > 1`` all draws are returned.
    gene_list
        Genes to return (names among ``model.gene_names``); default all.
    seed
        Seed of the draws (local to the call).
    batch_size
        Cells encoded at a time.
    key_added
        Also write the result into ``adata.layers[key_added]`` (needs all cells and one value
        per cell: ``indices=None`` and ``return_mean=True`` or ``n_samples=1``).

    Returns
    -------
    DataFrame (cells x genes, float32; index ``adata.obs_names``, columns the genes) whose
    rows sum to ``library_size`` over all the model's genes; with ``return_mean=False`` and
    ``n_samples > 1`` an ndarray of shape (n_samples, n_cells, n_genes). For a model with
    the ``"gaussian"`` likelihood the values are the decoder's mean on the data's own (log)
    scale and ``library_size`` is ignored. With ``key_added``: ``adata.layers[key_added]``
    (dense float32, adata's shape; genes the model lacks or not in ``gene_list`` are NaN)
    and ``adata.uns[key_added]["params"]``.
    """
    n_samples = check_positive_int("n_samples", n_samples)
    check_positive_int("batch_size", batch_size)
    adata = resolve_adata(model, adata)
    keep_draws = not return_mean and n_samples > 1
    if key_added is not None and (indices is not None or keep_draws):
        raise GMMVAEInputError(
            "key_added writes one value per cell of adata: pass indices=None (subset adata "
            "itself, adata[mask].copy(), instead) and return_mean=True or n_samples=1."
        )
    positions = cell_positions(indices, adata.n_obs)
    genes = gene_positions(model, gene_list)
    data = model._cells(adata, labels="if_present").subset(positions)
    batch_codes = _batch_codes(model, data, transform_batch)
    conditions = data.conditions.numpy()
    if transform_condition is not None:
        conditions = np.full(len(data), covariate_codes(model, "condition", transform_condition)[0])
    encoded = model._encode(data, POSTERIOR_FIELDS, batch_size=batch_size)
    gaussian = model.config.likelihood == "gaussian"
    scale = 1.0 if gaussian else _library(library_size, encoded)
    rng = np.random.default_rng(seed)
    z = sample_latents(encoded, n_samples, rng)  # (S, n, d)
    out = np.zeros((n_samples if keep_draws else 1, len(data), len(genes)), dtype=np.float32)
    for start in range(0, len(data), CHUNK):
        part = slice(start, start + CHUNK)
        codes = [b[part] for b in batch_codes]
        lib = scale if np.isscalar(scale) else scale[part]
        for s in range(n_samples):
            rho = decoded_expression(model, z[s, part], conditions[part], codes)
            values = (rho * lib)[:, genes]
            if keep_draws:
                out[s, part] = values
            else:
                out[0, part] += values / n_samples
    if keep_draws:
        return out
    frame = pd.DataFrame(
        out[0],
        index=adata.obs_names[positions].copy(),
        columns=pd.Index([model.gene_names[g] for g in genes]),
    )
    if key_added is not None:
        params = {
            "transform_batch": transform_batch,
            "transform_condition": transform_condition,
            "library_size": library_size,
            "n_samples": n_samples,
            "seed": seed,
            "likelihood": model.config.likelihood,
        }
        _write_layer(adata, frame, key_added, params)
    return frame


def _batch_codes(
    model: GMMVAE, data: CellData, transform_batch: str | Sequence[str] | None
) -> list[np.ndarray]:
    """The batch codes to decode under: the cells' own, or each requested batch in turn."""
    if transform_batch is None:
        return [data.batches.numpy()]
    return [np.full(len(data), c) for c in covariate_codes(model, "batch", transform_batch)]


def _write_layer(adata: AnnData, frame: pd.DataFrame, key: str, params: dict) -> None:
    ensure_actual(adata)
    layer = np.full(adata.shape, np.nan, dtype=np.float32)
    columns = adata.var_names.get_indexer(frame.columns)
    layer[:, columns] = frame.to_numpy()
    adata.layers[key] = layer
    entry = dict(adata.uns.get(key, {}))
    entry["params"] = {k: v for k, v in params.items() if v is not None}
    adata.uns[key] = entry


# ----------------------------------------------------------------- posterior predictive
def posterior_predictive_sample(
    model: GMMVAE,
    adata: AnnData | None = None,
    *,
    n_samples: int = 1,
    indices: Sequence[int] | np.ndarray | None = None,
    gene_list: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 1024,
) -> sparse.csr_matrix | np.ndarray | list[sparse.csr_matrix] | list[np.ndarray]:
    """Counts drawn from the posterior predictive p(x_new | x) of each cell.

    Each draw takes its own z ~ q(z | x, y) (y as in :func:`get_normalized_expression`) and
    then counts from the likelihood with the cell's observed library size, condition and
    batch; ``n_samples`` draws are independent.

    Parameters
    ----------
    adata
        Cells to use (genes matched to the model's by name); default the model's own data.
    n_samples
        Draws per cell.
    indices
        Positions (or a boolean mask) of the cells of ``adata`` to use; default all.
    gene_list
        Genes to return (names among ``model.gene_names``), in that order; default all.
    seed
        Seed of the draws (local to the call).
    batch_size
        Cells encoded at a time.

    Returns
    -------
    With ``n_samples=1``, a CSR matrix (n_cells x n_genes, float32, integer-valued counts;
    cells in the order of ``indices``, genes in the model's or ``gene_list``'s order). With
    ``n_samples > 1``, a list of ``n_samples`` such matrices, one per draw (scipy has no 3-D
    sparse arrays; scvi-tools' (n_cells, n_genes, n_samples) layout is
    ``np.stack([m.toarray() for m in draws], axis=-1)``). For a ``"gaussian"`` model the
    draws are dense float32 ndarrays of values on the data's scale.
    """
    n_samples = check_positive_int("n_samples", n_samples)
    check_positive_int("batch_size", batch_size)
    adata = resolve_adata(model, adata)
    positions = cell_positions(indices, adata.n_obs)
    genes = gene_positions(model, gene_list)
    data = model._cells(adata, labels="if_present").subset(positions)
    encoded = model._encode(data, POSTERIOR_FIELDS, batch_size=batch_size)
    conditions, batches = data.conditions.numpy(), data.batches.numpy()
    likelihood = model.config.likelihood
    z = sample_latents(encoded, n_samples, np.random.default_rng(seed))
    draws: list[list] = [[] for _ in range(n_samples)]
    with seeded_rng(seed):
        for s in range(n_samples):
            for start in range(0, len(data), CHUNK):
                part = slice(start, start + CHUNK)
                params = model._decode(
                    z[s, part], encoded["library"][part], conditions[part], batches[part]
                )
                x = sample_counts(likelihood, params).cpu().numpy().astype(np.float32)[:, genes]
                draws[s].append(x if likelihood == "gaussian" else sparse.csr_matrix(x))
    if likelihood == "gaussian":
        result: list = [np.concatenate(d) for d in draws]
    else:
        result = [sparse.vstack(d, format="csr") for d in draws]
    return result[0] if n_samples == 1 else result
