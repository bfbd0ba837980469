"""The AnnData-facing model: clustering, annotation, outputs, inputs, errors, reproducibility."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import gmmvae
from gmmvae import GMMVAE, GMMVAEInputError, metrics
from gmmvae.datasets import simulate


def _fit(adata, *, n_components=3, seed=0, max_epochs=8, setup=None, model=None, **train):
    """Set up, build and briefly train a small model."""
    GMMVAE.setup_anndata(adata, **(setup or {}))
    m = GMMVAE(adata, n_components=n_components, seed=seed, **(model or {}))
    options = {"progress_bar": False, "batch_size": 64, "seed": seed, **train}
    return m.train(max_epochs=max_epochs, **options)


@pytest.fixture(scope="module")
def reference(_small):
    """A small unsupervised model on sparse counts in X, seed 0: (model, predictions)."""
    model = _fit(_small.copy())
    return model, model.predict(_small.copy()).to_numpy()


# ----------------------------------------------------------------------------- clustering
def test_shared_variant_clusters_separated_types(shared_model, clustering_data):
    shared_model.predict(clustering_data)
    truth, pred = clustering_data.obs["cell_type"], clustering_data.obs["gmmvae_label"]
    assert metrics.ari(truth, pred) >= 0.9
    assert metrics.nmi(truth, pred) >= 0.9


def test_default_variant_clusters_separated_types(clustering_data, fast):
    GMMVAE.setup_anndata(clustering_data)
    model = GMMVAE(clustering_data, n_components=5, seed=0)
    model.train(max_epochs=60, seed=0, **fast)
    model.predict(clustering_data)
    truth, pred = clustering_data.obs["cell_type"], clustering_data.obs["gmmvae_label"]
    assert metrics.ari(truth, pred) >= 0.9


# ------------------------------------------------------------------------- classification
def test_semi_supervised_beats_chance(semi_supervised):
    model, adata, kept = semi_supervised
    assert model.config.variant == "exact"  # the default
    assert kept.mean() == pytest.approx(0.1, abs=0.01)
    assert set(adata.obs["label"][kept]) == set(adata.obs["cell_type"])  # every type labelled
    result = adata.copy()
    model.predict(result)
    truth = adata.obs["cell_type"].astype(str).to_numpy()[~kept]
    pred = result.obs["gmmvae_label"].astype(str).to_numpy()[~kept]
    chance = pd.Series(truth).value_counts(normalize=True).max()
    assert chance < 0.35
    assert metrics.accuracy(truth, pred) > 0.8
    assert metrics.macro_f1(truth, pred) > 0.7


def test_fully_supervised_reference_to_query(fast):
    adata = simulate(500, 150, 4, seed=3, marker_log_fold=2.5)
    order = np.random.default_rng(0).permutation(adata.n_obs)
    ref, query = adata[order[:350]].copy(), adata[order[350:]].copy()
    GMMVAE.setup_anndata(ref, labels_key="cell_type")
    model = GMMVAE(ref, n_free_components=0, seed=0)
    assert model.component_names == ["type_0", "type_1", "type_2", "type_3"]
    model.train(max_epochs=40, seed=0, **fast)
    model.predict(query)
    acc = metrics.accuracy(query.obs["cell_type"], query.obs["gmmvae_label"])
    assert acc > 0.9


# ------------------------------------------------------------------------------- outputs
def test_predict_writes_documented_fields(semi_supervised):
    model, adata, _ = semi_supervised
    adata = adata.copy()
    X_before = adata.X.copy()
    probs = model.predict(adata, novelty_quantile=0.9, confidence_threshold=0.7)
    names = [*sorted(adata.obs["cell_type"].unique()), "free_0"]
    assert model.component_names == names

    assert isinstance(probs, pd.DataFrame)
    assert list(probs.columns) == names
    assert list(probs.index) == list(adata.obs_names)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)

    label = adata.obs["gmmvae_label"]
    assert isinstance(label.dtype, pd.CategoricalDtype)
    assert list(label.cat.categories) == names
    np.testing.assert_array_equal(label.astype(str), np.array(names)[probs.to_numpy().argmax(1)])

    confidence = adata.obs["gmmvae_confidence"]
    assert confidence.dtype == np.float32
    np.testing.assert_allclose(confidence, probs.max(1), rtol=1e-6)

    score = adata.obs["gmmvae_novelty_score"]
    assert score.dtype == np.float32
    threshold = model.novelty_reference.threshold(0.9)
    novel = adata.obs["gmmvae_novel"]
    assert novel.dtype == bool
    expected = (
        (label == "free_0").to_numpy()
        | (confidence < 0.7).to_numpy()
        | (score > threshold).to_numpy()
    )
    np.testing.assert_array_equal(novel, expected)

    assert adata.obsm["gmmvae_probs"].shape == (adata.n_obs, len(names))
    assert adata.obsm["gmmvae_probs"].dtype == np.float32
    np.testing.assert_allclose(adata.obsm["gmmvae_probs"], probs.to_numpy())

    params = adata.uns["gmmvae"]["params"]
    assert params["confidence_threshold"] == 0.7
    assert params["novelty_quantile"] == 0.9
    assert params["novelty_score_threshold"] == pytest.approx(threshold)
    assert params["component_names"] == names
    assert params["n_components"] == len(names)
    assert params["variant"] == model.config.variant
    assert (adata.X != X_before).nnz == 0  # X is never overwritten


def test_get_latent_writes_obsm(shared_model, clustering_data):
    latent = shared_model.get_latent(clustering_data)
    n_latent = shared_model.config.n_latent
    assert latent.shape == (clustering_data.n_obs, n_latent)
    assert latent.dtype == np.float32
    assert np.isfinite(latent).all()
    np.testing.assert_array_equal(clustering_data.obsm["X_gmmvae"], latent)
    assert clustering_data.uns["gmmvae"]["params"]["n_latent"] == n_latent
    assert latent.std(0).min() > 0  # cells are not all mapped to one point


def test_key_added_changes_prefix(shared_model, clustering_data):
    shared_model.predict(clustering_data, key_added="mine")
    shared_model.get_latent(clustering_data, key_added="mine")
    for key in ("mine_label", "mine_confidence", "mine_novel"):
        assert key in clustering_data.obs
    assert "mine_probs" in clustering_data.obsm
    assert "X_mine" in clustering_data.obsm
    assert "params" in clustering_data.uns["mine"]
    assert not any(c.startswith("gmmvae") for c in clustering_data.obs.columns)
    assert "X_gmmvae" not in clustering_data.obsm
    assert "gmmvae" not in clustering_data.uns


def test_predict_on_view_copies_with_warning(shared_model, clustering_data):
    view = clustering_data[:50]
    with pytest.warns(UserWarning, match="is a view"):
        shared_model.predict(view)
    assert not view.is_view
    assert "gmmvae_label" in view.obs
    assert "gmmvae_label" not in clustering_data.obs


def test_history(shared_model):
    history = shared_model.history
    assert {"train_loss", "validation_loss"} <= set(history.columns)
    assert len(history) == shared_model.train_params["epochs_run"] == 60
    assert np.isfinite(history["train_loss"]).all()
    # Validation runs every validation_interval steps: each epoch shows the latest check.
    checked = history["step"] >= shared_model.train_params["validation_interval"]
    assert np.isfinite(history.loc[checked, "validation_loss"]).all()
    assert history.loc[~checked, "validation_loss"].isna().all()
    assert list(history["step"]) == sorted(history["step"])
    # Loss per cell falls over training (compare the first and last few epochs).
    assert history["train_loss"].iloc[-5:].mean() < history["train_loss"].iloc[:5].mean()


# -------------------------------------------------------------------------------- inputs
def test_genes_reordered_give_same_predictions(shared_model, clustering_data):
    expected = shared_model.predict(clustering_data.copy()).to_numpy()
    order = np.random.default_rng(0).permutation(clustering_data.n_vars)
    shuffled = clustering_data[:, order].copy()
    np.testing.assert_allclose(shared_model.predict(shuffled).to_numpy(), expected, atol=1e-6)
    # Extra genes (here in front) are ignored.
    extra = anndata.AnnData(
        X=sparse.csr_matrix(np.ones((clustering_data.n_obs, 3), np.float32)),
        obs=pd.DataFrame(index=clustering_data.obs_names),
        var=pd.DataFrame(index=["extra_0", "extra_1", "extra_2"]),
    )
    joined = anndata.concat([extra, clustering_data], axis=1)
    assert joined.n_vars == clustering_data.n_vars + 3
    np.testing.assert_allclose(shared_model.predict(joined).to_numpy(), expected, atol=1e-6)


def test_missing_genes_are_named(shared_model, clustering_data):
    subset = clustering_data[:, 2:].copy()
    with pytest.raises(GMMVAEInputError, match=r"lacks 2 of.*\['gene_0', 'gene_1'\]"):
        shared_model.predict(subset)
    with pytest.raises(GMMVAEInputError, match="gene_0"):
        shared_model.get_latent(subset)


def test_counts_layer_dense_and_sparse_give_same_result(reference, small):
    _, expected = reference
    dense = small.copy()
    dense.X = dense.X.toarray()
    model = _fit(dense)
    np.testing.assert_array_equal(model.predict(dense).to_numpy(), expected)

    # Log data in X, counts in a layer: the layer is what the model reads.
    layered = small.copy()
    layered.X = np.log1p(layered.X.toarray())
    model = _fit(layered, setup={"layer": "counts"})
    assert model.registry["layer"] == "counts"
    np.testing.assert_array_equal(model.predict(layered).to_numpy(), expected)


def test_same_seed_same_model_and_global_rng_untouched(reference, small):
    ref_model, expected = reference
    torch.manual_seed(123)
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002 -- the global state is the point
    model = _fit(small.copy())
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002

    reference_state = ref_model.module.state_dict()
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(value, reference_state[key], rtol=0, atol=0, msg=key)
    np.testing.assert_array_equal(model.predict(small).to_numpy(), expected)

    other = _fit(small.copy(), seed=1)
    assert not torch.equal(other.module.decoder_out.weight, ref_model.module.decoder_out.weight)


def test_predict_leaves_global_rng_untouched(reference, small):
    model, _ = reference
    state = torch.random.get_rng_state()
    model.predict(small)
    model.get_latent(small)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_no_files_left_in_working_directory(small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(small, max_epochs=2)
    assert not (tmp_path / "lightning_logs").exists()
    assert list(tmp_path.iterdir()) == []


def test_gaussian_likelihood_on_pbmc68k():
    adata = gmmvae.datasets.pbmc68k()
    GMMVAE.setup_anndata(adata)
    with pytest.raises(GMMVAEInputError, match="non-integer"):
        GMMVAE(adata, n_components=10)  # log data under the default count likelihood
    model = GMMVAE(adata, n_components=10, likelihood="gaussian", seed=0)
    model.train(max_epochs=3, progress_bar=False)
    probs = model.predict(adata)
    latent = model.get_latent(adata)
    assert probs.shape == (700, 10)
    assert np.isfinite(probs.to_numpy()).all()
    assert latent.shape == (700, model.config.n_latent)
    assert np.isfinite(latent).all()
    assert np.isfinite(model.history["train_loss"]).all()


def test_conditions_and_batches(conditional_model):
    model, adata = conditional_model
    assert model.config.n_conditions == 2
    assert model.config.n_batches == 2
    assert model.registry["conditions"] == ["control", "stimulated"]
    assert model.registry["batches"] == ["batch_0", "batch_1"]
    result = adata.copy()
    probs = model.predict(result)
    latent = model.get_latent(result)
    assert probs.shape == (adata.n_obs, 4)  # 3 labels + 1 free component
    assert np.isfinite(probs.to_numpy()).all()
    assert np.isfinite(latent).all()
    assert len(model.history) == 10


def test_unknown_condition_at_predict_lists_known(conditional_model):
    model, adata = conditional_model
    query = adata[:20].copy()
    query.obs["condition"] = ["control"] * 10 + ["interferon"] * 10
    with pytest.raises(GMMVAEInputError, match=r"\['interferon'\].*\['control', 'stimulated'\]"):
        model.predict(query)
    query.obs["condition"] = "control"
    query.obs["batch"] = "batch_7"
    model.predict(query)  # the encoder does not read the batch: labels need no mapping
    with pytest.raises(GMMVAEInputError, match=r"batch_7.*\['batch_0', 'batch_1'\]"):
        model.get_elbo(query)  # decoding does


def test_empty_cells_skipped_with_warning(small):
    X = small.X.toarray()
    X[[3, 50, 51, 200, 299]] = 0
    small.X = sparse.csr_matrix(X)
    GMMVAE.setup_anndata(small)
    model = GMMVAE(small, n_components=3, seed=0)
    with pytest.warns(UserWarning, match="5 of 300 cells have no counts") as record:
        model.train(max_epochs=2, progress_bar=False)
    assert record[0].filename == __file__  # points at the caller
    assert model.train_params["n_train_cells"] == round(295 * 0.9)
    probs = model.predict(small)
    latent = model.get_latent(small)
    assert probs.shape == (300, 3)
    assert latent.shape == (300, model.config.n_latent)
    assert np.isfinite(probs.to_numpy()).all()
    assert np.isfinite(latent).all()


def test_too_few_cells_with_counts(small):
    tiny = small[:3].copy()
    tiny.X = sparse.csr_matrix(np.vstack([tiny.X[:1].toarray(), np.zeros((2, tiny.n_vars))]))
    GMMVAE.setup_anndata(tiny)
    model = GMMVAE(tiny, n_components=1)
    with pytest.warns(UserWarning), pytest.raises(GMMVAEInputError, match="at least 2"):
        model.train(max_epochs=1, progress_bar=False)


def test_dataset_smaller_than_batch_size(small):
    tiny = small[:40].copy()
    model = _fit(tiny, max_epochs=3, batch_size=256)
    assert model.train_params["batch_size"] == 36
    assert model.train_params["n_train_cells"] == 36
    assert len(model.history) == 3
    assert np.isfinite(model.predict(tiny).to_numpy()).all()


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_training_without_validation(small):
    model = _fit(small, max_epochs=2, train_size=1.0)
    assert "validation_loss" not in model.history
    assert model.train_params["n_train_cells"] == 300


def test_dirichlet_variant_trains(small):
    model = _fit(small, max_epochs=3, model={"variant": "dirichlet"})
    assert model.train_params["pretrain_steps"] >= 0  # pre-trained and placed like the others
    assert {"train_kl_w", "train_kl_d"} <= set(model.history.columns)
    assert np.isfinite(model.predict(small).to_numpy()).all()


def test_predict_before_training_warns(small):
    GMMVAE.setup_anndata(small)
    model = GMMVAE(small, n_components=3)
    assert not model.is_trained
    with pytest.warns(UserWarning, match="not trained"):
        model.predict(small)


def test_untrained_warning_points_at_caller(small):
    GMMVAE.setup_anndata(small)
    model = GMMVAE(small, n_components=3)
    with pytest.warns(UserWarning, match="not trained") as record:
        model.predict(small)
    assert record[0].filename == __file__


# -------------------------------------------------------------------------------- errors
def test_fewer_cells_than_components(small):
    tiny = small[:4].copy()
    GMMVAE.setup_anndata(tiny)
    with pytest.raises(GMMVAEInputError, match="4 cells but the model has 5 components"):
        GMMVAE(tiny, n_components=5)


def test_n_components_smaller_than_labels(small):
    GMMVAE.setup_anndata(small, labels_key="cell_type")
    with pytest.raises(GMMVAEInputError, match="n_components=2 is smaller than the 3 labels"):
        GMMVAE(small, n_components=2)
    assert GMMVAE(small).config.n_components == 4  # 3 labels + 1 free component
    assert GMMVAE(small, n_components=3).component_names == ["type_0", "type_1", "type_2"]


def test_no_labels_needs_n_components(small):
    GMMVAE.setup_anndata(small)
    with pytest.raises(GMMVAEInputError, match="n_components=K"):
        GMMVAE(small)
    with pytest.raises(GMMVAEInputError, match="n_components must be >= 1"):
        GMMVAE(small, n_components=0)


@pytest.mark.parametrize(
    ("option", "message"),
    [({"likelihood": "normal"}, "likelihood 'normal'"), ({"variant": "vade"}, "variant 'vade'")],
)
def test_unknown_options(small, option, message):
    GMMVAE.setup_anndata(small)
    with pytest.raises(GMMVAEInputError, match=message):
        GMMVAE(small, n_components=3, **option)


@pytest.mark.parametrize(
    ("option", "message"),
    [({"batch_size": 0}, "batch_size"), ({"train_size": 0.0}, "train_size")],
)
def test_invalid_train_options(small, option, message):
    GMMVAE.setup_anndata(small)
    model = GMMVAE(small, n_components=3)
    with pytest.raises(GMMVAEInputError, match=message):
        model.train(max_epochs=1, progress_bar=False, **option)
    assert not model.is_trained


def test_repr(shared_model):
    text = repr(shared_model)
    assert "variant='shared'" in text
    assert "K=5" in text
    assert "trained=True" in text


@pytest.mark.parametrize("k", [0, 1])
def test_components_per_cell_below_two_is_refused(small, k):
    GMMVAE.setup_anndata(small)
    with pytest.raises(GMMVAEInputError, match="components_per_cell"):
        GMMVAE(small, n_components=3, components_per_cell=k)


def test_components_per_cell_trains_and_is_saved(small, tmp_path):
    GMMVAE.setup_anndata(small)
    model = GMMVAE(small, n_components=3, components_per_cell=2, seed=0)
    model.train(2, seed=0, progress_bar=False, batch_size=64)
    model.save(tmp_path / "m")
    assert GMMVAE.load(tmp_path / "m").config.components_per_cell == 2


def test_a_short_run_fits_every_phase(small):
    # 270 training cells at batch 64: 5 steps per epoch, 40 in 8 epochs, far fewer than the
    # schedule's default phases: they shrink so that the run ends under the full ELBO.
    model = _fit(small, max_epochs=8)
    params = model.train_params
    assert params["max_steps"] == params["steps_run"] == 40
    # Pre-training takes 70 %; the warm-up ends halfway through the 12 mixture steps.
    assert params["pretrain_steps"] == 28 and params["kl_warmup_steps"] == 34
    assert model.history["kl_weight"].iloc[-1] == 1.0
    assert model.train_params["mixture_placement"] == "leiden"


def test_unknown_mixture_placement_is_a_clear_error(small):
    GMMVAE.setup_anndata(small)
    model = GMMVAE(small, n_components=3)
    with pytest.raises(GMMVAEInputError, match="mixture_placement 'spectral'"):
        model.train(2, mixture_placement="spectral", progress_bar=False)


def test_model_stays_on_its_training_device_and_moves_on_request(shared_model, clustering_data):
    import torch

    assert shared_model.device == torch.device("cpu")  # trained with accelerator="auto"
    expected = shared_model.predict(clustering_data).to_numpy()
    assert shared_model.to_device("cpu") is shared_model
    assert all(p.device.type == "cpu" for p in shared_model.module.parameters())
    np.testing.assert_allclose(shared_model.predict(clustering_data).to_numpy(), expected)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_gpu_training_keeps_inference_on_the_gpu():
    import torch

    adata = simulate(300, 100, 3, n_conditions=2, seed=0)
    GMMVAE.setup_anndata(adata, labels_key="cell_type", condition_key="condition")
    model = GMMVAE(adata, seed=0).train(3, accelerator="gpu", devices=1, progress_bar=False)
    assert model.device.type == "cuda"
    on_gpu = model.predict(adata).to_numpy()
    model.generate(10)
    control = adata[adata.obs["condition"] == "control"].copy()
    for method in ("transfer", "latent_shift", "decoder"):  # one device throughout
        model.predict_perturbation(control, method=method, n_mc=2)
    cpu = model.to_device("cpu").predict(adata).to_numpy()
    assert model.device == torch.device("cpu")
    np.testing.assert_allclose(cpu, on_gpu, atol=1e-4)
