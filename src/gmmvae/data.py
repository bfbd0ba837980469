"""Cells as a torch Dataset: sparse (or on disk) until the minibatch, densified per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch.utils.data import DataLoader, Sampler

from gmmvae.samplers import BACKED_BLOCK_ROWS, ChunkedBatchSampler, MixedBatchSampler
from gmmvae.validation import is_on_disk, read_rows


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
