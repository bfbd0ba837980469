"""Input validation with actionable errors, and sparse-until-the-minibatch loading."""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from torch.utils.data import DataLoader, Sampler

REGISTRY_KEY = "_gmmvae"
_CHUNK = 10_000  # rows checked at a time, so that validating dense data allocates little
# Rows read at once from a backed (on-disk) matrix; minibatches are drawn within such blocks.
BACKED_BLOCK_ROWS = 8192


class GMMVAEInputError(ValueError):
    """Raised for input that gmmvae cannot use; the message says how to fix it."""


class MissingKeyError(GMMVAEInputError, KeyError):
    """Raised when an obs column, layer or gene that was asked for does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# ------------------------------------------------------------------------------ validation
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


def describe_matrix(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


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
    adata: AnnData, key: str | None, categories: Sequence[str], role: str, *, missing: str | None
) -> np.ndarray:
    """Integer codes of ``adata.obs[key]`` in ``categories``; ``missing`` maps to -1.

    Values outside ``categories`` (other than ``missing``) raise an error listing the known ones.
    """
    if key is None:
        return np.zeros(adata.n_obs, dtype=np.int64)
    check_obs_key(adata, key, role)
    values = adata.obs[key].astype(str).to_numpy()
    lookup = {c: i for i, c in enumerate(categories)}
    if missing is not None:
        lookup[missing] = -1
    unknown = sorted(set(values) - set(lookup))
    if unknown:
        msg = (
            f"obs[{key!r}] ({role}) has categories the model does not know: {unknown[:10]}; "
            f"known ones are {list(categories)}."
        )
        raise GMMVAEInputError(msg)
    return np.array([lookup[v] for v in values], dtype=np.int64)


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


# --------------------------------------------------------------------------------- loading
class CellData(torch.utils.data.Dataset):
    """Cells of a (sparse or dense) matrix plus integer covariates; densified per minibatch."""

    def __init__(
        self,
        matrix: Any,
        labels: np.ndarray,
        conditions: np.ndarray,
        batches: np.ndarray,
        gene_index: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        if sparse.issparse(matrix) and not isinstance(matrix, sparse.csr_matrix | sparse.csr_array):
            matrix = sparse.csr_matrix(matrix)  # row slicing needs CSR
        self.matrix = matrix
        self.on_disk = is_on_disk(matrix)
        self._block: tuple[int, int, Any] | None = None  # rows [start, stop) of a backed file
        self.gene_index = gene_index
        self.rows = np.arange(matrix.shape[0]) if rows is None else np.asarray(rows)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.conditions = torch.as_tensor(conditions, dtype=torch.long)
        self.batches = torch.as_tensor(batches, dtype=torch.long)

    def subset(self, positions: np.ndarray) -> CellData:
        """The cells at ``positions``, sharing the matrix (no copy of the data)."""
        return CellData(
            self.matrix,
            self.labels[positions].numpy(),
            self.conditions[positions].numpy(),
            self.batches[positions].numpy(),
            gene_index=self.gene_index,
            rows=self.rows[positions],
        )

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, rows: np.ndarray) -> Any:
        """Rows of a backed matrix: from the block in memory, reading a new block if needed.

        Minibatches from :class:`ChunkedBatchSampler` fall inside one block of
        ``BACKED_BLOCK_ROWS`` consecutive rows, so each block is read from disk once per epoch
        and at most one block is held in memory.
        """
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if self._block is None or lo < self._block[0] or hi > self._block[1]:
            if hi - lo > BACKED_BLOCK_ROWS:  # scattered rows: read just those, in file order
                order = np.argsort(rows, kind="stable")
                block = read_rows(self.matrix, rows[order])
                return block[np.argsort(order, kind="stable")]
            start = lo // BACKED_BLOCK_ROWS * BACKED_BLOCK_ROWS
            stop = min(max(start + BACKED_BLOCK_ROWS, hi), self.matrix.shape[0])
            self._block = (start, stop, read_rows(self.matrix, slice(start, stop)))
        start, _, block = self._block
        return block[rows - start]

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers (ddp_spawn) reopen nothing: the cached block is not pickled.
        return {**self.__dict__, "_block": None}

    def __getitem__(self, index: Sequence[int]) -> dict[str, torch.Tensor]:
        index = np.asarray(index)
        rows = self._read(self.rows[index]) if self.on_disk else self.matrix[self.rows[index]]
        rows = rows.toarray() if sparse.issparse(rows) else np.asarray(rows)
        if self.gene_index is not None:
            rows = rows[:, self.gene_index]
        return {
            "x": torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)),
            "label": self.labels[index],
            "condition": self.conditions[index],
            "batch": self.batches[index],
        }


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) inside a torch.distributed job (DDP), (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochBatchSampler(Sampler[list[int]]):
    """Minibatches of indices, reshuffled every epoch and split across data-parallel ranks.

    Each epoch's batches come from ``seed`` and the epoch that Lightning passes to
    :meth:`set_epoch`, so a resumed run sees the same batches and every DDP rank builds the
    same list. Rank r of w takes batches r, r + w, ...; the list wraps around so that every
    rank runs the same number of steps (a rank that finished early would hang the others),
    as torch's ``DistributedSampler`` does with samples.
    """

    def __init__(self, batch_size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    @property
    def n_batches(self) -> int:
        """Batches per epoch over all ranks."""
        raise NotImplementedError

    def epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The epoch's batches (index arrays), before splitting across ranks."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (as for DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n_batches / distributed_rank()[1])

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(np.random.default_rng([self.seed, self.epoch]))
        rank, world = distributed_rank()
        if world > 1:
            padded = math.ceil(len(batches) / world) * world
            batches = (batches * math.ceil(padded / max(len(batches), 1)))[:padded][rank::world]
        for batch in batches:
            yield batch.tolist()


class MixedBatchSampler(EpochBatchSampler):
    """Shuffled minibatches in which labelled cells appear in every batch.

    With few labels (say 1 %), uniform batches would hold two or three labelled cells; here each
    batch gets ``max(ceil(batch_size * fraction), batch_size // 8)`` labelled cells, cycling over
    a fresh permutation of them, and the rest unlabelled. Without labels, or with all cells
    labelled, it is plain shuffled batching.
    """

    def __init__(
        self, labels: np.ndarray, batch_size: int, *, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(batch_size, shuffle=shuffle, seed=seed)
        self.labelled = np.flatnonzero(labels >= 0)
        self.unlabelled = np.flatnonzero(labels < 0)
        n = len(labels)
        # A one-cell batch cannot hold both kinds: fall back to plain shuffling.
        self.mixed = 0 < len(self.labelled) < n and batch_size >= 2
        if self.mixed:
            share = max(math.ceil(batch_size * len(self.labelled) / n), batch_size // 8, 1)
            self.n_labelled_per_batch = min(share, len(self.labelled), batch_size - 1)
            per_batch = batch_size - self.n_labelled_per_batch
            self._n_batches = math.ceil(len(self.unlabelled) / per_batch)
        else:
            self._n_batches = math.ceil(n / batch_size)

    @property
    def n_batches(self) -> int:
        return self._n_batches

    def epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation if self.shuffle else np.asarray
        if not self.mixed:
            idx = order(np.arange(len(self.labelled) + len(self.unlabelled)))
            return [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        unlabelled = order(self.unlabelled)
        per_batch = self.batch_size - self.n_labelled_per_batch
        n_needed = self.n_batches * self.n_labelled_per_batch
        reps = math.ceil(n_needed / len(self.labelled))
        labelled = np.concatenate([order(self.labelled) for _ in range(reps)])
        k = self.n_labelled_per_batch
        return [
            np.concatenate(
                [unlabelled[b * per_batch : (b + 1) * per_batch], labelled[b * k : (b + 1) * k]]
            )
            for b in range(self.n_batches)
        ]


class ChunkedBatchSampler(EpochBatchSampler):
    """Shuffled minibatches drawn within blocks of consecutive rows, for backed (on-disk) data.

    Random rows of an h5ad file cost one disk read each; here the blocks of
    ``block_rows`` consecutive rows come in a random order and each block's cells are shuffled
    and cut into near-equal batches, so training reads every block once per epoch, in order
    within the block. Labelled cells are not spread over batches as
    :class:`MixedBatchSampler` does (that would read scattered rows).
    """

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        block_rows: int = BACKED_BLOCK_ROWS,
    ) -> None:
        super().__init__(batch_size, shuffle=shuffle, seed=seed)
        block_of = np.asarray(rows) // block_rows
        starts = np.flatnonzero(np.r_[True, block_of[1:] != block_of[:-1]])
        # Positions grouped by block (rows are sorted, as subsets of the split are).
        self.blocks = np.split(np.arange(len(rows)), starts[1:])
        self._n_batches = sum(math.ceil(len(b) / batch_size) for b in self.blocks)

    @property
    def n_batches(self) -> int:
        return self._n_batches

    def epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation if self.shuffle else np.asarray
        batches: list[np.ndarray] = []
        for b in order(np.arange(len(self.blocks))):
            cells = order(self.blocks[b])
            batches += np.array_split(cells, math.ceil(len(cells) / self.batch_size))
        return batches


def make_loader(data: CellData, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """DataLoader that slices whole minibatches at once (one sparse slice per batch)."""
    if shuffle and data.on_disk:
        sampler: Sampler = ChunkedBatchSampler(data.rows, batch_size, shuffle=True, seed=seed)
    elif shuffle:
        sampler = MixedBatchSampler(data.labels.numpy(), batch_size, shuffle=True, seed=seed)
    else:
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.SequentialSampler(data), batch_size, drop_last=False
        )
    # An explicit generator: otherwise each iteration draws a seed from torch's global RNG.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, sampler=sampler, batch_size=None, generator=generator)
