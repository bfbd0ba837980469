"""Synthetic cells: shapes, integer counts, reproducibility, types the model recognises."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import gmmvae
from gmmvae import GMMVAEInputError, generation

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


# ------------------------------------------------------------------ embedding Gaussians
def test_embedding_summary_and_draws_match(trained):
    model, adata = trained
    summary = model.generation_summary
    dim = model.config.n_latent + 1
    assert len(summary["embedding_means"]) == model.config.n_components  # 3 types + 1 free
    # The labelled types have cells; a component with fewer than 10 has no Gaussian (None).
    means = np.array(summary["embedding_means"][:3])
    covs = np.array(summary["embedding_covariances"][:3])
    assert means.shape == (3, dim) and covs.shape == (3, dim, dim)
    np.testing.assert_allclose(covs, covs.transpose(0, 2, 1), atol=1e-7)
    assert (np.linalg.eigvalsh(covs) > 0).all()
    # The stored log library mean is that of the type's cells.
    lib = np.log(np.asarray(adata.X.sum(1)).ravel())
    type_0 = adata.obs["cell_type"].to_numpy() == "type_0"
    assert means[0, -1] == pytest.approx(lib[type_0].mean(), abs=0.1)
    # Per (component, condition) Gaussians too: each condition's cells of type_0 have theirs.
    by_condition = np.array(summary["embedding_condition_means"][0])
    assert by_condition.shape == (2, dim)
    condition = adata.obs["condition"].to_numpy()
    for c, name in enumerate(model._categories("conditions")):
        cells = type_0 & (condition == name)
        assert by_condition[c, -1] == pytest.approx(lib[cells].mean(), abs=0.1)
    # The draws follow the stored Gaussian of their (component, condition), library jointly.
    components = np.repeat([0, 2], 20_000)
    conditions = np.tile([0, 1], 20_000)
    rng = np.random.default_rng(0)
    z, log_lib, fitted = generation._embedding_draws(model, components, conditions, rng)
    assert fitted.all() and z.shape == (40_000, dim - 1)
    joint = np.column_stack([z, log_lib])
    for k in (0, 2):
        for c in (0, 1):
            part = joint[(components == k) & (conditions == c)]
            mean = np.array(summary["embedding_condition_means"][k][c])
            cov = np.array(summary["embedding_condition_covariances"][k][c])
            scale = np.sqrt(cov.diagonal())
            np.testing.assert_allclose(part.mean(0), mean, atol=0.06 * scale.max() + 1e-3)
            np.testing.assert_allclose(
                np.cov(part, rowvar=False), cov, atol=0.06 * np.abs(cov).max()
            )


def test_a_condition_with_too_few_cells_uses_its_types_gaussian(trained):
    model, _ = trained
    summary = model.generation_summary
    saved = [list(row) for row in summary["embedding_condition_means"]]
    try:
        summary["embedding_condition_means"][1][0] = None
        means, covs, fitted = generation._stacked_gaussians(model)
        np.testing.assert_allclose(means[1, 0], summary["embedding_means"][1])
        np.testing.assert_allclose(covs[1, 0], summary["embedding_covariances"][1])
        np.testing.assert_allclose(means[1, 1], summary["embedding_condition_means"][1][1])
        assert fitted[1].all()
        # the free component has no cells: not fitted, drawn from p(z|y)
        assert not fitted[-1].any()
    finally:
        summary["embedding_condition_means"] = saved


def test_embedding_cells_spread_less_than_prior_cells(trained):
    """Encoded back, cells drawn from the embedding's Gaussian spread less within their type
    than cells from p(z|y), which the KL term keeps broad."""
    model, _ = trained
    spreads = {}
    for latent in ("embedding", "prior"):
        synthetic = model.generate({"type_0": 300, "type_1": 300}, seed=2, latent=latent)
        assert synthetic.uns["gmmvae"]["params"]["latent"] == latent
        z = model.get_latent(synthetic)
        labels = synthetic.obs["gmmvae_label"].astype(str).to_numpy()
        spreads[latent] = np.mean([z[labels == t].var(0).sum() for t in ("type_0", "type_1")])
    assert spreads["embedding"] < spreads["prior"]


def test_models_saved_before_the_embedding_summary_fall_back_to_the_prior(trained):
    model, _ = trained
    saved = dict(model.generation_summary)
    try:
        del model.generation_summary["embedding_means"]
        with pytest.warns(UserWarning, match="latent='prior'"):
            old = model.generate(20, seed=0)
        assert old.uns["gmmvae"]["params"]["latent"] == "prior"
        prior = model.generate(20, seed=0, latent="prior")
        np.testing.assert_array_equal(old.X.toarray(), prior.X.toarray())
    finally:
        model.generation_summary = saved
    with pytest.raises(GMMVAEInputError, match="latent"):
        model.generate(5, latent="posterior")


# ------------------------------------------------------------------ refitted dispersion
def test_refitted_dispersion_matches_the_cells_zeros_better(trained):
    """Cells drawn at posterior means with the learned theta (which also covers z ~ q(z|x))
    carry more zeros than the real cells; the refitted theta brings them closer."""
    model, adata = trained
    summary = model.generation_summary
    inverse = np.asarray(summary["embedding_inverse_dispersion"])
    assert inverse.shape == (adata.n_vars,) and np.isfinite(inverse).all() and (inverse > 0).all()
    real = (adata.X.toarray() if sparse.issparse(adata.X) else adata.X) == 0
    plan = adata.obs["cell_type"].astype(str).value_counts().to_dict()
    gaps = {}
    saved = summary["embedding_inverse_dispersion"]
    try:
        for refit in (True, False):
            summary["embedding_inverse_dispersion"] = saved if refit else None
            fake = model.generate({t: 3 * n for t, n in plan.items()}, seed=5).X.toarray() == 0
            gaps[refit] = abs(fake.mean() - real.mean())
    finally:
        summary["embedding_inverse_dispersion"] = saved
    assert gaps[True] < gaps[False]


def test_no_refitted_dispersion_without_one_to_refit():
    adata = gmmvae.datasets.simulate(200, 30, 2, seed=0)
    gmmvae.GMMVAE.setup_anndata(adata, labels_key="cell_type")
    model = gmmvae.GMMVAE(adata, likelihood="poisson", seed=0).train(5, seed=0, **FAST)
    assert model.generation_summary["embedding_inverse_dispersion"] is None
    assert model.generate(10, seed=0).n_obs == 10
