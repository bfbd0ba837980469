"""Synthetic cells: shapes, integer counts, reproducibility, types the model recognises."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import gmmvae
from gmmvae import GMMVAEInputError

FAST = {"progress_bar": False, "batch_size": 64}


@pytest.fixture(scope="module", params=["exact", "dirichlet"])
def trained(request):
    adata = gmmvae.datasets.simulate(600, 80, 3, n_conditions=2, seed=3, marker_log_fold=2.5)
    gmmvae.GMMVAE.setup_anndata(adata, labels_key="cell_type", condition_key="condition")
    model = gmmvae.GMMVAE(adata, variant=request.param, seed=0)
    model.train(100, seed=0, **FAST)
    return model, adata


def test_counts_shapes_and_metadata(trained):
    model, adata = trained
    synthetic = model.generate(200, seed=1)
    assert synthetic.shape == (200, adata.n_vars)
    assert list(synthetic.var_names) == list(adata.var_names)
    assert sparse.issparse(synthetic.X)
    values = synthetic.X.toarray()
    assert (values >= 0).all() and (values == np.round(values)).all()
    assert (synthetic.layers["counts"] != synthetic.X).nnz == 0
    assert synthetic.obs["gmmvae_synthetic"].all()
    # the type under the model's labels_key and as predict() writes it, so concat lines up
    assert synthetic.obs["cell_type"].equals(synthetic.obs["gmmvae_label"])
    assert model.generate(5, seed=0, key_added="syn").obs["syn_synthetic"].all()
    assert set(synthetic.obs["condition"].astype(str)) <= {"control", "stimulated"}
    assert synthetic.uns["gmmvae"]["params"]["seed"] == 1
    # Library sizes follow the training ones (same order of magnitude).
    ratio = synthetic.X.sum(1).mean() / adata.X.sum(1).mean()
    assert 0.7 < ratio < 1.4


def test_same_seed_same_cells_other_seed_other_cells(trained):
    model, _ = trained
    a, b, c = (model.generate(50, seed=s).X.toarray() for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_requested_types_and_conditions(trained):
    model, _ = trained
    synthetic = model.generate({"type_0": 30, "type_2": 10}, condition="stimulated", seed=0)
    counts = synthetic.obs["cell_type"].value_counts()
    assert counts["type_0"] == 30 and counts["type_2"] == 10
    assert (synthetic.obs["condition"] == "stimulated").all()
    assert model.generate(5, cell_type=["type_1", "type_2"]).n_obs == 10


def test_synthetic_cells_are_recognised_as_their_type(trained):
    model, _ = trained
    synthetic = model.generate(300, seed=2)
    model.predict(synthetic, key_added="check")
    hits = synthetic.obs["check_label"].astype(str) == synthetic.obs["cell_type"].astype(str)
    assert hits.mean() > 0.75  # chance is about 1/3


def test_fixed_library_size(trained):
    model, _ = trained
    synthetic = model.generate(100, library_size=5000, seed=0)
    assert 4000 < synthetic.X.sum(1).mean() < 6000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cells": 0}, "n_cells must be >= 1"),
        ({"n_cells": -3}, "n_cells must be >= 1"),
        ({"n_cells": {"type_0": 0}}, "n_cells values must be >= 1"),
        ({"n_cells": 5, "cell_type": "T cell"}, "known ones are"),
        ({"n_cells": 5, "condition": "heat shock"}, r"known ones are \['control', 'stimulated'\]"),
        ({"n_cells": 5, "batch": "b1"}, "without a batch_key"),
        ({"n_cells": 5, "library_size": -1}, "positive number"),
    ],
)
def test_bad_requests(trained, kwargs, match):
    model, _ = trained
    with pytest.raises(GMMVAEInputError, match=match):
        model.generate(**kwargs)


def test_unlabelled_model_explains_numbered_components():
    adata = gmmvae.datasets.simulate(200, 40, 2, seed=0)
    gmmvae.GMMVAE.setup_anndata(adata)
    model = gmmvae.GMMVAE(adata, n_components=2).train(5, **FAST)
    with pytest.raises(GMMVAEInputError, match="components are numbered"):
        model.generate(5, cell_type="type_0")
    assert model.generate(5, cell_type="1").obs["gmmvae_label"].eq("1").all()


def test_untrained_model_refuses():
    adata = gmmvae.datasets.simulate(100, 30, 2, seed=0)
    gmmvae.GMMVAE.setup_anndata(adata)
    with pytest.raises(GMMVAEInputError, match="Train the model"):
        gmmvae.GMMVAE(adata, n_components=2).generate(5)


def test_gaussian_model_generates_log_values():
    adata = gmmvae.datasets.pbmc68k()[:300].copy()
    gmmvae.GMMVAE.setup_anndata(adata, labels_key="bulk_labels")
    model = gmmvae.GMMVAE(adata, likelihood="gaussian").train(5, **FAST)
    synthetic = model.generate(20, seed=0)
    assert "counts" not in synthetic.layers
    assert "log-normalised" in synthetic.uns["gmmvae"]["values"]
    assert np.isfinite(synthetic.X).all()


def test_generation_survives_save_and_load(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m")
    loaded = gmmvae.GMMVAE.load(tmp_path / "m")
    np.testing.assert_array_equal(
        loaded.generate(40, seed=4).X.toarray(), model.generate(40, seed=4).X.toarray()
    )
