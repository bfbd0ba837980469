"""Simulated counts and the bundled PBMC data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from gmmvae.datasets import mask_labels, pbmc68k, simulate


def test_simulate_shapes_and_counts():
    adata = simulate(200, 80, 4, n_conditions=2, n_batches=3, seed=0)
    assert adata.shape == (200, 80)
    assert sparse.isspmatrix_csr(adata.X)
    X = adata.X.toarray()
    assert X.dtype == np.float32
    assert (X >= 0).all()
    np.testing.assert_array_equal(X, np.round(X))  # integer-valued
    assert (adata.layers["counts"] != adata.X).nnz == 0
    assert adata.layers["counts"] is not adata.X
    assert 0.6 <= 1 - adata.X.nnz / X.size <= 0.97
    assert (X.sum(1) > 0).mean() > 0.95  # nearly every cell has reads
    assert adata.obs_names.is_unique
    assert adata.var_names.is_unique
    assert adata.uns["simulation"]["seed"] == 0


def test_simulate_obs_columns():
    adata = simulate(300, 50, 4, n_conditions=2, n_batches=3, seed=0)
    for key in ("cell_type", "condition", "batch"):
        assert isinstance(adata.obs[key].dtype, pd.CategoricalDtype)
    assert list(adata.obs["cell_type"].cat.categories) == [f"type_{t}" for t in range(4)]
    assert list(adata.obs["condition"].cat.categories) == ["control", "stimulated"]
    assert list(adata.obs["batch"].cat.categories) == ["batch_0", "batch_1", "batch_2"]
    # Every type, condition and batch is present in 300 cells.
    for key, n in (("cell_type", 4), ("condition", 2), ("batch", 3)):
        assert adata.obs[key].nunique() == n
    three = simulate(30, 10, 2, n_conditions=3, seed=0)
    assert list(three.obs["condition"].cat.categories) == [f"condition_{i}" for i in range(3)]


def test_simulate_is_reproducible_and_seeded():
    a, b, c = simulate(100, 40, seed=5), simulate(100, 40, seed=5), simulate(100, 40, seed=6)
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert (a.X != c.X).nnz > 0


def test_simulate_does_not_touch_global_rng():
    state = np.random.get_state()[1].copy()  # noqa: NPY002 -- the global state is the point
    simulate(50, 20, seed=1)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_simulate_types_differ_more_with_larger_marker_fold():
    def spread(fold):
        adata = simulate(600, 200, 3, seed=0, marker_log_fold=fold)
        X = adata.X.toarray()
        X = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
        means = pd.DataFrame(X).groupby(adata.obs["cell_type"].to_numpy()).mean().to_numpy()
        return np.abs(means[:, None] - means[None]).max(-1).mean()

    assert spread(3.0) > spread(0.5)


def test_simulate_library_size_option():
    low = simulate(200, 100, seed=0, mean_library_size=20)
    high = simulate(200, 100, seed=0, mean_library_size=2000)
    assert high.X.sum(1).mean() > 20 * low.X.sum(1).mean()


def test_pbmc68k():
    adata = pbmc68k()
    assert adata.shape == (700, 765)
    assert adata.obs["bulk_labels"].nunique() == 10
    assert isinstance(adata.X, np.ndarray)
    assert adata.X.dtype == np.float32
    assert adata.X.min() >= 0
    assert np.isfinite(adata.X).all()
    assert adata.X.max() < 20  # log-normalised, not counts
    assert adata.obsm["X_umap_original"].shape == (700, 2)


def test_mask_labels_keeps_stratified_fraction():
    labels = pd.Series(["a"] * 500 + ["b"] * 300 + ["c"] * 5, index=[f"c{i}" for i in range(805)])
    masked = mask_labels(labels, 0.1, seed=0)
    assert isinstance(masked.dtype, pd.CategoricalDtype)
    assert list(masked.index) == list(labels.index)
    counts = masked.value_counts()
    assert counts["a"] == 50
    assert counts["b"] == 30
    assert counts["c"] == 1  # at least one per type
    assert counts["Unknown"] == 805 - 81
    kept = masked != "Unknown"
    assert (masked[kept] == labels[kept]).all()
    pd.testing.assert_series_equal(masked, mask_labels(labels, 0.1, seed=0))
    assert not masked.equals(mask_labels(labels, 0.1, seed=1))


def test_mask_labels_rejects_bad_fraction():
    with pytest.raises(ValueError, match="fraction"):
        mask_labels(["a", "b"], 0.0)
