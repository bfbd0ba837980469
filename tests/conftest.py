"""Shared fixtures: tiny seeded simulated data, and models trained once per session."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from sklearn.model_selection import train_test_split

import gmmvae
from gmmvae.datasets import simulate

# The models here are tiny: one intra-op thread is as fast as several, keeps results bit-for-bit
# reproducible, and avoids the 10-100x slowdown of OpenMP threads spinning against other
# processes when the CPUs are shared.
torch.set_num_threads(1)

# Options for a fast, quiet training run; tests add max_epochs and seed.
FAST = {"progress_bar": False, "batch_size": 64}


def pytest_configure(config: pytest.Config) -> None:
    # Third-party noise raised inside Lightning, not by gmmvae.
    config.addinivalue_line("filterwarnings", "ignore:.*LeafSpec.*:FutureWarning")


# ------------------------------------------------------------------------------------ data
@pytest.fixture(scope="session")
def _small() -> AnnData:
    return simulate(300, 100, 3, seed=0)


@pytest.fixture
def small(_small: AnnData) -> AnnData:
    """300 cells x 100 genes, 3 types, counts in X (CSR) and layers['counts']; a fresh copy."""
    return _small.copy()


@pytest.fixture(scope="session")
def _clustering_data() -> AnnData:
    return simulate(500, 150, 5, seed=0, marker_log_fold=2.5)


@pytest.fixture
def clustering_data(_clustering_data: AnnData) -> AnnData:
    """500 cells x 150 genes, 5 well-separated types (PCA + k-means reaches ARI ~0.99)."""
    return _clustering_data.copy()


@pytest.fixture
def backed(small, tmp_path):
    """(the small data read back with backed="r", the same data in memory)."""
    path = tmp_path / "small.h5ad"
    small.write_h5ad(path)
    yield anndata.read_h5ad(path, backed="r"), small


def _hide_labels(adata: AnnData, fraction: float, *, seed: int = 0) -> np.ndarray:
    """Keep a stratified ``fraction`` of obs['cell_type'] in obs['label'], the rest 'Unknown'.

    Returns the boolean mask of the cells whose label was kept.
    """
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    kept, _ = train_test_split(
        np.arange(adata.n_obs), train_size=fraction, stratify=truth, random_state=seed
    )
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[kept] = True
    adata.obs["label"] = pd.Categorical(np.where(mask, truth, "Unknown"))
    return mask


@pytest.fixture
def hide_labels():
    """The function ``hide_labels(adata, fraction, *, seed=0) -> kept mask``."""
    return _hide_labels


@pytest.fixture
def fast() -> dict:
    """Options for a fast, quiet training run; tests add max_epochs and seed."""
    return dict(FAST)


# ---------------------------------------------------------------------------------- models
@pytest.fixture(scope="session")
def shared_model(_clustering_data: AnnData) -> gmmvae.GMMVAE:
    """Unsupervised 'shared' (VaDE-style) model with K=5 on the clustering data."""
    adata = _clustering_data.copy()
    gmmvae.GMMVAE.setup_anndata(adata)
    model = gmmvae.GMMVAE(adata, n_components=5, variant="shared", seed=0)
    model.train(max_epochs=60, seed=0, **FAST)
    return model


@pytest.fixture(scope="session")
def semi_supervised() -> tuple[gmmvae.GMMVAE, AnnData, np.ndarray]:
    """Default-variant model trained with 10 % stratified labels; (model, adata, kept mask)."""
    adata = simulate(500, 150, 5, seed=1, marker_log_fold=2.5)
    kept = _hide_labels(adata, 0.1)
    gmmvae.GMMVAE.setup_anndata(adata, labels_key="label")
    model = gmmvae.GMMVAE(adata, seed=0)
    model.train(max_epochs=60, seed=0, **FAST)
    return model, adata, kept


@pytest.fixture(scope="session")
def conditional_model() -> tuple[gmmvae.GMMVAE, AnnData]:
    """Model with two conditions and two batches, briefly trained; (model, adata)."""
    adata = simulate(300, 100, 3, n_conditions=2, n_batches=2, seed=2)
    gmmvae.GMMVAE.setup_anndata(
        adata, labels_key="cell_type", condition_key="condition", batch_key="batch"
    )
    model = gmmvae.GMMVAE(adata, seed=0)
    model.train(max_epochs=10, seed=0, **FAST)
    return model, adata
