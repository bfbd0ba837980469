"""Minibatch samplers: labelled cells in every batch, per-epoch shuffling, DDP shares, blocks."""

from __future__ import annotations

import numpy as np
import pytest

from gmmvae import samplers as gmmvae_samplers
from gmmvae.samplers import ChunkedBatchSampler, MixedBatchSampler


def test_mixed_sampler_with_one_percent_labels():
    n = 1000
    labels = np.full(n, -1)
    labelled = np.random.default_rng(0).choice(n, 10, replace=False)
    labels[labelled] = np.arange(10) % 3
    sampler = MixedBatchSampler(labels, 64, seed=0)
    for _ in range(2):  # two epochs, reshuffled
        batches = list(sampler)
        assert len(batches) == len(sampler)
        seen_unlabelled = []
        for batch in batches:
            batch = np.asarray(batch)
            assert len(batch) <= 64
            assert np.isin(batch, labelled).sum() >= 1
            seen_unlabelled.extend(batch[labels[batch] < 0])
        # Every unlabelled cell exactly once per epoch.
        assert sorted(seen_unlabelled) == sorted(np.flatnonzero(labels < 0))


def test_mixed_sampler_reshuffles_per_epoch_and_is_seeded():
    labels = np.where(np.arange(200) % 10 == 0, 0, -1)
    a, b = MixedBatchSampler(labels, 32, seed=1), MixedBatchSampler(labels, 32, seed=1)
    first = list(a)
    assert list(a) == first  # the epoch, not the number of passes, picks the order
    a.set_epoch(1)
    second = list(a)
    assert first == list(b)
    assert first != second
    b.set_epoch(1)
    assert list(b) == second  # a resumed run sees the same batches


@pytest.mark.parametrize("labels", [np.full(100, -1), np.arange(100) % 4])
def test_plain_sampler_without_or_with_all_labels(labels):
    batches = list(MixedBatchSampler(labels, 32, seed=0))
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    assert sorted(np.concatenate(batches)) == list(range(100))


def test_mixed_sampler_batch_size_one():
    labels = np.array([0, -1, -1, 1, -1])
    batches = list(MixedBatchSampler(labels, 1, seed=0))
    assert sorted(i for b in batches for i in b if labels[i] < 0) == [1, 2, 4]


@pytest.mark.parametrize("world", [2, 3])
def test_samplers_split_batches_across_ranks(monkeypatch, world):
    """Under DDP every rank gets the same number of distinct batches; together they cover all."""
    labels = np.where(np.arange(1000) % 20 == 0, 1, -1)
    samplers = {
        "mixed": lambda: MixedBatchSampler(labels, 64, seed=4),
        "chunked": lambda: ChunkedBatchSampler(np.arange(1000), 64, seed=4, block_rows=300),
    }
    for make in samplers.values():
        single = make()
        single.set_epoch(2)
        everything = [tuple(b) for b in single]
        per_rank = []
        for rank in range(world):
            monkeypatch.setattr(gmmvae_samplers, "distributed_rank", lambda r=rank: (r, world))
            sampler = make()
            sampler.set_epoch(2)  # every rank builds the same epoch order from seed and epoch
            per_rank.append([tuple(b) for b in sampler])
            assert len(per_rank[-1]) == len(sampler)
        monkeypatch.setattr(gmmvae_samplers, "distributed_rank", lambda: (0, 1))
        assert len({len(batches) for batches in per_rank}) == 1  # equal steps: no rank waits
        shared = [b for batches in per_rank for b in batches]
        assert set(shared) == set(everything)  # wrapped-around padding repeats, never drops
        assert len(shared) - len(everything) < world


def test_chunked_sampler_keeps_batches_inside_blocks():
    rows = np.sort(np.random.default_rng(0).choice(5000, 3000, replace=False))
    sampler = ChunkedBatchSampler(rows, 100, seed=1, block_rows=512)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(np.concatenate(batches)) == list(range(3000))  # each cell once per epoch
    for batch in batches:
        blocks = np.unique(rows[batch] // 512)
        assert len(blocks) == 1
        assert 50 <= len(batch) <= 100
    sampler.set_epoch(1)
    assert [list(b) for b in sampler] != [list(b) for b in batches]
