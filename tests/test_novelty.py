"""The kNN novelty score: geometry, the flag's threshold, persistence, and that it finds a type
the model never saw."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import gmmvae
from gmmvae import novelty
from gmmvae.datasets import simulate

FAST = {"progress_bar": False, "batch_size": 64}


def test_knn_distance_is_the_mean_distance_to_the_nearest_reference_cells():
    reference = np.arange(20, dtype=np.float32)[:, None]  # points 0, 1, ..., 19 on a line
    score = novelty.knn_distance(reference, np.array([[-10.0], [100.0]], np.float32))
    # the 15 nearest of 0..19 to -10 are 0..14: distances 10..24, mean 17
    np.testing.assert_allclose(score, [17.0, 100.0 - 12.0])


def test_leave_one_out_excludes_the_cell_itself():
    reference = np.array([[0.0], [1.0], [3.0]], np.float32)
    loo = novelty.knn_distance(reference, reference, leave_one_out=True)
    # each point's two others: (1 + 3) / 2, (1 + 2) / 2, (3 + 2) / 2
    np.testing.assert_allclose(loo, [2.0, 1.5, 2.5])


def test_threshold_is_the_quantile_of_validation_scores():
    rng = np.random.default_rng(0)
    train, validation = rng.normal(size=(500, 3)), rng.normal(size=(200, 3))
    reference = novelty.fit_reference(train, validation)
    scores = novelty.knn_distance(train.astype(np.float32), validation)
    assert reference.threshold(0.9) == pytest.approx(np.quantile(scores, 0.9), rel=1e-5)
    assert np.all(np.diff(reference.validation_scores) >= 0)
    with pytest.raises(ValueError, match="novelty_quantile"):
        reference.threshold(0.0)


def test_without_validation_cells_the_threshold_comes_from_leave_one_out():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(100, 2)).astype(np.float32)
    reference = novelty.fit_reference(train, np.zeros((0, 2), np.float32))
    loo = novelty.knn_distance(train, train, leave_one_out=True)
    np.testing.assert_allclose(reference.validation_scores, np.sort(loo))


def test_state_dict_round_trip_removes_its_keys():
    rng = np.random.default_rng(2)
    reference = novelty.fit_reference(rng.normal(size=(50, 2)), rng.normal(size=(10, 2)))
    state = {"encoder.weight": np.zeros(1), **reference.state_dict()}
    restored = novelty.NoveltyReference.from_state_dict(state)
    assert list(state) == ["encoder.weight"]
    np.testing.assert_array_equal(restored.latent, reference.latent)
    np.testing.assert_array_equal(restored.validation_scores, reference.validation_scores)
    assert novelty.NoveltyReference.from_state_dict({}) is None


def test_subsample_caps_the_reference():
    rng = np.random.default_rng(0)
    cells = novelty.subsample(1000, rng, limit=100)
    assert len(cells) == 100 and len(np.unique(cells)) == 100 and np.all(np.diff(cells) > 0)
    np.testing.assert_array_equal(novelty.subsample(50, rng, limit=100), np.arange(50))


@pytest.fixture(scope="module")
def held_out_type():
    """A labelled model trained without type 4; (model, query cells of every type, is_novel)."""
    adata = simulate(900, 150, 5, seed=3, marker_log_fold=2.5)
    types = adata.obs["cell_type"].astype(str).to_numpy()
    novel_type = sorted(set(types))[-1]
    rng = np.random.default_rng(0)
    query_cells = rng.random(adata.n_obs) < 0.4
    reference = adata[~query_cells & (types != novel_type)].copy()
    reference.obs["cell_type"] = reference.obs["cell_type"].astype(str).astype("category")
    gmmvae.GMMVAE.setup_anndata(reference, labels_key="cell_type")
    model = gmmvae.GMMVAE(reference, seed=0)
    model.train(max_epochs=40, seed=0, **FAST)
    query = adata[query_cells].copy()
    return model, query, types[query_cells] == novel_type


def test_novelty_score_finds_a_type_never_seen(held_out_type):
    model, query, is_novel = held_out_type
    model.predict(query)
    score = query.obs["gmmvae_novelty_score"].to_numpy()
    assert roc_auc_score(is_novel, score) > 0.9  # 0.954 when written
    flagged = query.obs["gmmvae_novel"].to_numpy()
    assert flagged[is_novel].mean() > 0.6  # 0.77 when written
    # new cells of known types: about 1 - novelty_quantile of them flagged
    assert flagged[~is_novel].mean() < 0.15  # 0.06 when written


def test_novelty_reference_survives_save_and_load(held_out_type, tmp_path):
    model, query, _ = held_out_type
    before = model.predict(query.copy(), novelty_quantile=0.9)
    first = query.copy()
    model.predict(first)
    model.save(tmp_path / "m")
    loaded = gmmvae.GMMVAE.load(tmp_path / "m")
    second = query.copy()
    after = loaded.predict(second)
    np.testing.assert_allclose(after.to_numpy(), model.predict(query.copy()).to_numpy())
    np.testing.assert_allclose(
        second.obs["gmmvae_novelty_score"], first.obs["gmmvae_novelty_score"], rtol=1e-6
    )
    np.testing.assert_array_equal(second.obs["gmmvae_novel"], first.obs["gmmvae_novel"])
    assert before.shape == after.shape


def test_models_saved_without_a_reference_still_predict(held_out_type, tmp_path):
    model, query, _ = held_out_type
    model.save(tmp_path / "m")
    loaded = gmmvae.GMMVAE.load(tmp_path / "m")
    loaded.novelty_reference = None  # as a model saved before the score existed
    loaded.predict(query)
    assert query.obs["gmmvae_novelty_score"].isna().all()
    assert query.uns["gmmvae"]["params"]["novelty_score_threshold"] is None
