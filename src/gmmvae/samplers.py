"""Minibatch samplers: reshuffled every epoch, seeded, split across data-parallel ranks."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

# Rows read at once from a backed (on-disk) matrix; minibatches are drawn within such blocks.
BACKED_BLOCK_ROWS = 8192


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

    @property
    def cell_weights(self) -> tuple[float, float]:
        """ELBO weights (labelled, unlabelled cells) that make a batch's mean ELBO an unbiased
        estimate of the mean over all cells; (1, 1) when cells are drawn uniformly."""
        return (1.0, 1.0)

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

    @property
    def cell_weights(self) -> tuple[float, float]:
        """Labelled cells are a share ``f`` of the cells but ``f_b`` of every batch: weights
        ``f / f_b`` and ``(1 - f) / (1 - f_b)`` undo the oversampling."""
        if not self.mixed:
            return (1.0, 1.0)
        share = len(self.labelled) / (len(self.labelled) + len(self.unlabelled))
        in_batch = self.n_labelled_per_batch / self.batch_size
        return (share / in_batch, (1.0 - share) / (1.0 - in_batch))

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
