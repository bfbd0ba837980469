"""Leiden with K clusters: exactly K, merges and splits."""

from __future__ import annotations

import numpy as np

from gmmvae.clustering import exactly_k, leiden_with_k


def _three_blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, -8.0, 4.0]])
    latent = np.concatenate([c + rng.normal(0, 0.5, (60, 3)) for c in centres])
    return latent, np.repeat([0, 1, 2], 60)


def test_exactly_k_merges_and_splits():
    latent, _ = _three_blobs()
    too_many = np.arange(len(latent)) % 7  # 7 clusters
    assert len(np.unique(exactly_k(latent, too_many, 3, seed=0))) == 3
    too_few = np.zeros(len(latent), dtype=int)
    fixed = exactly_k(latent, too_few, 3, seed=0)
    assert sorted(np.unique(fixed)) == [0, 1, 2]


def test_leiden_with_k_recovers_blobs_and_leaves_global_rng_alone():
    import random

    from gmmvae.metrics import ari

    latent, truth = _three_blobs()
    state, py_state = np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    clusters = leiden_with_k(latent, 3, seed=0)
    assert clusters.dtype == np.int64 and sorted(np.unique(clusters)) == [0, 1, 2]
    assert ari(truth, clusters) == 1.0
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    assert random.getstate() == py_state
    for k in (2, 5):  # fewer or more clusters than blobs: still exactly k
        assert len(np.unique(leiden_with_k(latent, k, seed=0))) == k
