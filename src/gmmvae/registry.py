"""The registry: which AnnData fields a model uses (``setup_anndata``), and turning an AnnData
into the integer-coded :class:`~gmmvae.data.CellData` a model trains and predicts on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from gmmvae.data import CellData
from gmmvae.errors import GMMVAEInputError
from gmmvae.validation import (
    align_genes,
    check_obs_key,
    check_values,
    describe_matrix,
    ensure_actual,
    get_matrix,
)

REGISTRY_KEY = "_gmmvae"


def _categories(values: pd.Series) -> list[str]:
    if values.isna().any():
        raise GMMVAEInputError(
            f"obs column {values.name!r} has {int(values.isna().sum())} missing (NaN) values; "
            "fill them (e.g. with the unlabeled category) before setup_anndata."
        )
    if isinstance(values.dtype, pd.CategoricalDtype):
        used = set(values.astype(str))
        return [str(c) for c in values.cat.categories if str(c) in used]
    return sorted(set(values.astype(str)))


def setup_anndata(
    adata: AnnData,
    *,
    layer: str | None = None,
    labels_key: str | None = None,
    condition_key: str | None = None,
    batch_key: str | None = None,
    unlabeled_category: str = "Unknown",
) -> None:
    """Validate ``adata`` and record which fields gmmvae uses.

    Parameters
    ----------
    adata
        Cells x genes. A view is made an actual AnnData first (with a warning).
    layer
        Layer with the data (raw counts for count likelihoods); ``None`` uses ``adata.X``.
        Sparse matrices stay sparse until each minibatch.
    labels_key
        obs column with cell-type labels for (semi-)supervised training; cells whose value is
        ``unlabeled_category`` are unlabelled.
    condition_key
        obs column with the condition (treatment); enters encoder and decoder (cGMMVAE).
    batch_key
        obs column with the technical batch; enters the decoder.
    unlabeled_category
        Value marking unlabelled cells (compared as a string).

    Returns
    -------
    Nothing; writes ``adata.uns["_gmmvae"]`` (the keys and the category orders).
    """
    ensure_actual(adata)
    unlabeled_category = str(unlabeled_category)  # labels are compared as strings
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise GMMVAEInputError(f"adata has shape {adata.shape}; gmmvae needs cells and genes.")
    if not adata.obs_names.is_unique:
        raise GMMVAEInputError(
            "adata.obs_names are not unique; call adata.obs_names_make_unique()."
        )
    if not adata.var_names.is_unique:
        raise GMMVAEInputError(
            "adata.var_names are not unique; call adata.var_names_make_unique()."
        )
    matrix = get_matrix(adata, layer)
    check_values(matrix, counts=False, where=describe_matrix(layer))
    registry: dict[str, Any] = {
        "layer": layer,
        "labels_key": labels_key,
        "condition_key": condition_key,
        "batch_key": batch_key,
        "unlabeled_category": unlabeled_category,
    }
    for key, role in ((labels_key, "labels_key"), (condition_key, "condition_key")):
        if key is not None:
            check_obs_key(adata, key, role)
    if batch_key is not None:
        check_obs_key(adata, batch_key, "batch_key")
    if labels_key is not None:
        labels = [c for c in _categories(adata.obs[labels_key]) if c != unlabeled_category]
        if len(labels) < 2:
            msg = (
                f"labels_key {labels_key!r} has {len(labels)} label(s) besides "
                f"unlabeled_category={unlabeled_category!r}: {labels}. Classification needs at "
                "least two; for clustering without labels pass labels_key=None."
            )
            raise GMMVAEInputError(msg)
        registry["labels"] = labels
    if condition_key is not None:
        registry["conditions"] = _categories(adata.obs[condition_key])
    if batch_key is not None:
        registry["batches"] = _categories(adata.obs[batch_key])
    # h5ad cannot store None: keep only the fields that are set; get_registry fills the rest.
    adata.uns[REGISTRY_KEY] = {k: v for k, v in registry.items() if v is not None}


NEW_BATCH_HINT = (
    " Latents and labels of cells from a new batch need nothing more (the encoder does not "
    "read the batch); to decode them (normalised expression, DE, likelihoods), map them first: "
    "query_model = GMMVAE.load_query_data(query, model); query_model.train()."
)


def get_registry(adata: AnnData) -> dict[str, Any]:
    if REGISTRY_KEY not in adata.uns:
        raise GMMVAEInputError(
            "adata was not set up; call gmmvae.GMMVAE.setup_anndata(adata, ...) first."
        )
    stored = adata.uns[REGISTRY_KEY]
    registry = {k: None for k in ("layer", "labels_key", "condition_key", "batch_key")}
    registry["unlabeled_category"] = "Unknown"
    for key, value in stored.items():
        registry[key] = [str(v) for v in value] if isinstance(value, list | np.ndarray) else value
    return registry


def encode(
    adata: AnnData,
    key: str | None,
    categories: Sequence[str],
    role: str,
    *,
    missing: str | None,
    allow_unknown: bool = False,
    hint: str = "",
) -> np.ndarray:
    """Integer codes of ``adata.obs[key]`` in ``categories``; ``missing`` maps to -1.

    Values outside ``categories`` (other than ``missing``) raise an error listing the known
    ones (and ``hint``), or map to -1 with ``allow_unknown``.
    """
    if key is None:
        return np.zeros(adata.n_obs, dtype=np.int64)
    check_obs_key(adata, key, role)
    values = adata.obs[key].astype(str).to_numpy()
    lookup = {c: i for i, c in enumerate(categories)}
    if missing is not None:
        lookup[missing] = -1
    unknown = sorted(set(values) - set(lookup))
    if unknown and not allow_unknown:
        msg = (
            f"obs[{key!r}] ({role}) has categories the model does not know: {unknown[:10]}; "
            f"known ones are {list(categories)}.{hint}"
        )
        raise GMMVAEInputError(msg)
    return np.array([lookup.get(v, -1) for v in values], dtype=np.int64)


def cell_data(
    adata: AnnData,
    registry: dict[str, Any],
    gene_names: Sequence[str],
    *,
    counts: bool,
    labels: bool | str = False,
    conditions: np.ndarray | None = None,
    new_batches: bool = False,
) -> CellData:
    """The cells of ``adata`` as a model sees them: its genes in the model's order, checked
    values and integer codes of the registered labels, conditions and batches.

    Parameters
    ----------
    adata
        Cells to encode; genes are matched to ``gene_names`` by name.
    registry
        The model's registry (from :func:`get_registry` at construction).
    gene_names
        The model's genes, in its order.
    counts
        The model has a count likelihood: refuse negative or non-integer values.
    labels
        ``True``: encode the labels column (it must exist); ``"if_present"``: encode it when
        ``adata`` has it; ``False``: every cell unlabelled (-1).
    conditions
        Condition codes to use instead of the registered column (e.g. all ``source``).
    new_batches
        Let batches the model does not know through as code -1 (for the encoder, which does
        not read the batch); otherwise they raise an error that names
        :meth:`gmmvae.GMMVAE.load_query_data`.
    """
    matrix = get_matrix(adata, registry["layer"])
    gene_index = align_genes(adata, gene_names)
    check_values(matrix, counts=counts, where=describe_matrix(registry["layer"]))
    key = registry["labels_key"]
    codes = np.full(adata.n_obs, -1, dtype=np.int64)
    if key is not None and (labels is True or (labels == "if_present" and key in adata.obs)):
        missing = registry["unlabeled_category"]
        codes = encode(adata, key, registry["labels"], "labels_key", missing=missing)
    if conditions is None:
        known = registry.get("conditions", [])
        conditions = encode(adata, registry["condition_key"], known, "condition_key", missing=None)
    batches = encode(
        adata,
        registry["batch_key"],
        registry.get("batches", []),
        "batch_key",
        missing=None,
        allow_unknown=new_batches,
        hint=NEW_BATCH_HINT,
    )
    return CellData(matrix, codes, conditions, batches, gene_index=gene_index)
