"""Checks of user input, with errors that say how to fix it, and block-wise matrix access.

Matrices are read in bounded blocks (in memory or from a backed h5ad), so that validating or
summing a large matrix allocates little beyond the data itself.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from gmmvae.errors import GMMVAEInputError, MissingKeyError

_CHUNK = 10_000  # rows checked at a time, so that validating dense data allocates little


def ensure_actual(adata: AnnData) -> None:
    """Turn a view into an actual AnnData in place (with a warning), as scanpy does.

    A view of a backed (on-disk) AnnData cannot be copied without writing a new file; its
    cells are loaded into memory instead, which is what a subset is usually meant for.
    """
    if not adata.is_view:
        return
    if adata.isbacked:
        warnings.warn(
            f"adata is a view of the backed file {adata.filename}; gmmvae writes results into "
            f"it, so its {adata.n_obs} cells were loaded into memory (the file is untouched). "
            "Pass adata.to_memory() to silence this warning, or pass the whole backed object "
            "to keep the matrix on disk.",
            UserWarning,
            stacklevel=3,
        )
        adata._init_as_actual(adata.to_memory())
        return
    warnings.warn(
        "adata is a view; gmmvae writes results into it, so it was copied into an actual "
        "AnnData in place. Pass adata.copy() to silence this warning.",
        UserWarning,
        stacklevel=3,
    )
    adata._init_as_actual(adata.copy())


def check_obs_key(adata: AnnData, key: str, role: str) -> None:
    """Raise a :class:`MissingKeyError` naming the closest existing column."""
    if key in adata.obs.columns:
        return
    columns = [str(c) for c in adata.obs.columns]
    close = difflib.get_close_matches(str(key), columns, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    msg = f"{role} {key!r} is not a column of adata.obs; columns are {columns}.{hint}"
    raise MissingKeyError(msg)


def get_matrix(adata: AnnData, layer: str | None) -> Any:
    """``adata.layers[layer]`` or ``adata.X``, sparse or dense, without copying."""
    if layer is None:
        if adata.X is None:
            raise GMMVAEInputError("adata.X is empty; pass layer= naming the layer with the data.")
        return adata.X
    if layer not in adata.layers:
        msg = (
            f"layer {layer!r} is not in adata.layers; layers are {list(adata.layers)}. "
            "Pass layer=None to use adata.X."
        )
        raise MissingKeyError(msg)
    return adata.layers[layer]


def is_on_disk(matrix: Any) -> bool:
    """True for a backed matrix (``read_h5ad(..., backed="r")``), read lazily from the file."""
    return not (sparse.issparse(matrix) or isinstance(matrix, np.ndarray))


def read_rows(matrix: Any, rows: slice | np.ndarray) -> Any:
    """Rows of an in-memory or on-disk matrix, in memory: CSR if sparse, else an ndarray."""
    block = matrix[rows]
    if sparse.issparse(block):
        return block if isinstance(block, sparse.csr_matrix) else sparse.csr_matrix(block)
    return np.asarray(block)


def row_blocks(matrix: Any, size: int = _CHUNK) -> Iterator[Any]:
    """Consecutive blocks of ``size`` rows, in memory one at a time (bounded memory on disk)."""
    for start in range(0, matrix.shape[0], size):
        yield read_rows(matrix, slice(start, start + size))


def row_sums(matrix: Any, *, absolute: bool = False) -> np.ndarray:
    """Per-cell sums (of absolute values), block by block: no temporary copy of the matrix."""
    sums = [np.asarray((abs(b) if absolute else b).sum(axis=1)).ravel() for b in row_blocks(matrix)]
    return np.concatenate(sums) if sums else np.zeros(0)


def _row_chunks(matrix: Any) -> Iterator[np.ndarray]:
    """The stored values in bounded pieces, so that checks allocate little beyond the data."""
    if sparse.issparse(matrix):
        values = np.asarray(matrix.data)
        for start in range(0, len(values), _CHUNK * 1000):
            yield values[start : start + _CHUNK * 1000]
        if not len(values):
            yield values
        return
    for block in row_blocks(matrix):
        yield np.asarray(block.data) if sparse.issparse(block) else block


def check_values(matrix: Any, *, counts: bool, where: str) -> None:
    """Refuse NaN/inf always, and negative or non-integer values when ``counts`` is true."""
    for chunk in _row_chunks(matrix):
        if not np.issubdtype(chunk.dtype, np.number) or chunk.dtype == np.bool_:
            raise GMMVAEInputError(
                f"{where} has dtype {chunk.dtype}; expected numbers. Convert it, e.g. "
                "adata.X = adata.X.astype(np.float32)."
            )
        if np.issubdtype(chunk.dtype, np.floating) and not np.isfinite(chunk).all():
            raise GMMVAEInputError(
                f"{where} contains NaN or infinite values; remove or impute them first "
                "(e.g. np.nan_to_num) and check how the matrix was produced."
            )
        if not counts:
            continue
        if (chunk < 0).any():
            raise GMMVAEInputError(
                f"{where} has negative values, but a count likelihood needs raw counts. Pass "
                "layer= naming the raw-count layer, or use likelihood='gaussian' for log data."
            )
        if np.issubdtype(chunk.dtype, np.floating) and (chunk != np.round(chunk)).any():
            raise GMMVAEInputError(
                f"{where} has non-integer values, but a count likelihood needs raw counts. Pass "
                "layer= naming the raw-count layer (e.g. layer='counts'), or use "
                "likelihood='gaussian' for log-normalised data."
            )


def describe_matrix(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def align_genes(adata: AnnData, gene_names: Sequence[str]) -> np.ndarray | None:
    """Column indices that put ``adata``'s genes in the model's order; ``None`` if already so."""
    var_names = adata.var_names
    if not var_names.is_unique:
        duplicated = sorted(set(var_names[var_names.duplicated()].astype(str)))
        raise GMMVAEInputError(
            f"adata.var_names has duplicates, e.g. {duplicated[:10]}; call "
            "adata.var_names_make_unique() or sum duplicated genes before predicting."
        )
    if len(var_names) == len(gene_names) and (var_names == pd.Index(gene_names)).all():
        return None
    position = pd.Index(var_names).get_indexer(list(gene_names))
    if (position < 0).any():
        missing = [g for g, p in zip(gene_names, position, strict=True) if p < 0]
        msg = (
            f"adata lacks {len(missing)} of the model's {len(gene_names)} genes, e.g. "
            f"{missing[:10]}. Subset or reindex adata to the genes the model was trained on "
            "(model.gene_names), filling absent genes with zeros if that is appropriate."
        )
        raise GMMVAEInputError(msg)
    return position
