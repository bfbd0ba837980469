"""Query mapping onto a trained reference (gmmvae.query): new batches learn, the rest is frozen."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from anndata import AnnData

from gmmvae import GMMVAE, GMMVAEInputError
from gmmvae.datasets import simulate

NET = {"n_hidden": 32, "n_latent": 4}
FIT = {"progress_bar": False, "seed": 0}


@functools.cache
def _reference() -> tuple[GMMVAE, AnnData]:
    """A model trained on two of three simulated batches; the third is the query."""
    adata = simulate(600, 40, 3, seed=0, n_batches=3, mean_library_size=400.0)
    reference = adata[adata.obs["batch"] != "batch_2"].copy()
    GMMVAE.setup_anndata(reference, batch_key="batch")
    model = GMMVAE(reference, n_components=3, seed=0, **NET)
    model.train(max_epochs=30, **FIT)
    return model, adata[adata.obs["batch"] == "batch_2"].copy()


def _query_model(**options) -> tuple[GMMVAE, GMMVAE, AnnData]:
    model, query = _reference()
    query = query.copy()
    return model, GMMVAE.load_query_data(query, model, **options), query


def test_without_the_encoder_only_the_new_batch_columns_train_and_labels_stay():
    reference, query_model, query = _query_model(train_encoder=False)
    labels = reference.predict(query.copy()).to_numpy()
    before = {k: v.clone() for k, v in query_model.module.state_dict().items()}
    elbo_before = query_model.get_elbo(query)
    query_model.train(max_epochs=20, **FIT)
    after = query_model.module.state_dict()
    changed = [k for k in before if not torch_equal(before[k], after[k])]
    assert changed == ["decoder.layers.0.linear.weight"]
    diff = (before[changed[0]] != after[changed[0]]).any(0).numpy()
    n_batches = len(query_model._categories("batches"))
    assert np.flatnonzero(diff).tolist() == [diff.size - 1]  # the new batch's column only
    assert query_model.config.n_batches == n_batches == 3
    # The encoder does not read the batch: labels are the reference's.
    np.testing.assert_array_equal(query_model.predict(query).to_numpy(), labels)
    # Fitting the batch's weights raises the query's ELBO (decoding it as the reference did
    # not account for its batch effect).
    assert query_model.get_elbo(query) > elbo_before
    # The reference is untouched.
    assert reference.config.n_batches == 2
    assert "query_batches" not in reference.registry
    assert query_model.train_params["temperature"] == reference.train_params["temperature"]


def test_by_default_the_encoder_trunk_learns_too():
    reference, query_model, query = _query_model()
    assert query_model.registry["query_train_encoder"] is True
    before = {k: v.clone() for k, v in query_model.module.state_dict().items()}
    elbo_before = query_model.get_elbo(query)
    query_model.train(max_epochs=20, **FIT)
    after = query_model.module.state_dict()
    changed = {k for k in before if not torch_equal(before[k], after[k])}
    trunk = {k for k in before if k.startswith("encoder.")}
    assert trunk and trunk <= changed
    assert changed - trunk == {"decoder.layers.0.linear.weight"}
    diff = before["decoder.layers.0.linear.weight"] != after["decoder.layers.0.linear.weight"]
    assert np.flatnonzero(diff.any(0).numpy()).tolist() == [diff.shape[1] - 1]
    assert query_model.get_elbo(query) > elbo_before
    # The reference's own encoder is untouched.
    for name, weight in reference.module.state_dict().items():
        if name.startswith("encoder."):
            assert torch_equal(weight, before[name])


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_query_model_saves_and_decodes_the_new_batch(tmp_path):
    _, query_model, query = _query_model()
    query_model.train(max_epochs=5, **FIT)
    query_model.save(tmp_path / "query")
    loaded = GMMVAE.load(tmp_path / "query", query)
    assert loaded.is_query and loaded.registry["query_batches"] == ["batch_2"]
    expected = query_model.get_normalized_expression(query).to_numpy()
    np.testing.assert_allclose(loaded.get_normalized_expression(query).to_numpy(), expected)


def test_reference_without_batch_key_is_refused():
    adata = simulate(120, 20, 2, seed=0, mean_library_size=200.0)
    GMMVAE.setup_anndata(adata)
    model = GMMVAE(adata, n_components=2, **NET).train(max_epochs=20, **FIT)
    with pytest.raises(GMMVAEInputError, match=r"without a batch_key.*reference.predict"):
        GMMVAE.load_query_data(adata.copy(), model)


def test_query_without_new_batch_has_nothing_to_train():
    reference, _ = _reference()
    same = reference.adata[:50].copy()
    query_model = GMMVAE.load_query_data(same, reference)
    with pytest.raises(GMMVAEInputError, match="no batch the reference lacks"):
        query_model.train(max_epochs=2, **FIT)


def test_query_without_batch_column_is_refused():
    reference, query = _reference()
    query = query.copy()
    del query.obs["batch"]
    with pytest.raises(GMMVAEInputError, match="batch"):
        GMMVAE.load_query_data(query, reference)
