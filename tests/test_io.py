"""Save/load: round trip, overwrite semantics, and clear errors for damaged model directories."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from gmmvae import GMMVAE, GMMVAEInputError
from gmmvae.io import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, load_directory, save_directory


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_round_trip_equal_weights_and_predictions(shared_model, clustering_data, tmp_path):
    path = tmp_path / "model"
    shared_model.save(path)
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert config["module"]["variant"] == "shared"

    loaded = GMMVAE.load(path, clustering_data)
    _assert_same_state(shared_model.module.state_dict(), loaded.module.state_dict())
    assert loaded.config == shared_model.config
    assert loaded.gene_names == shared_model.gene_names
    assert loaded.component_names == shared_model.component_names
    assert loaded.is_trained
    assert loaded.train_params == shared_model.train_params
    pd.testing.assert_frame_equal(loaded.history, shared_model.history)

    a, b = clustering_data, clustering_data.copy()
    np.testing.assert_array_equal(loaded.predict(a).to_numpy(), shared_model.predict(b).to_numpy())
    np.testing.assert_array_equal(loaded.get_latent(a), shared_model.get_latent(b))
    np.testing.assert_array_equal(a.obs["gmmvae_label"], b.obs["gmmvae_label"])


def test_round_trip_with_labels_and_covariates(conditional_model, tmp_path):
    model, adata = conditional_model
    model.save(tmp_path / "m")
    loaded = GMMVAE.load(tmp_path / "m")
    assert loaded.adata is None
    assert loaded.registry["condition_key"] == "condition"
    assert loaded.registry["conditions"] == model.registry["conditions"]
    assert loaded.component_names == model.component_names
    expected = model.predict(adata.copy())
    got = loaded.predict(adata.copy())
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())
    assert list(got.columns) == list(expected.columns)


def test_load_without_adata_needs_adata_to_predict(shared_model, tmp_path):
    shared_model.save(tmp_path / "m")
    loaded = GMMVAE.load(tmp_path / "m")
    with pytest.raises(GMMVAEInputError, match="pass adata="):
        loaded.predict()


def test_load_with_missing_genes_fails_early(shared_model, clustering_data, tmp_path):
    shared_model.save(tmp_path / "m")
    with pytest.raises(GMMVAEInputError, match="gene_0"):
        GMMVAE.load(tmp_path / "m", clustering_data[:, 1:].copy())


def test_save_refuses_existing_directory_unless_overwrite(shared_model, tmp_path):
    path = tmp_path / "m"
    path.mkdir()
    (path / "keep.txt").write_text("user file")
    with pytest.raises(GMMVAEInputError, match="overwrite=True") as err:
        shared_model.save(path)
    assert isinstance(err.value, FileExistsError)  # also catchable as the builtin
    assert (path / "keep.txt").exists()  # nothing was touched
    shared_model.save(path, overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary or old copies left


def test_overwrite_replaces_the_model(tmp_path):
    path = tmp_path / "m"
    save_directory(path, {"tag": "first"}, {"w": torch.zeros(2)})
    save_directory(path, {"tag": "second"}, {"w": torch.ones(3)}, overwrite=True)
    config, state = load_directory(path)
    assert config["tag"] == "second"
    torch.testing.assert_close(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_failed_save_leaves_previous_model(tmp_path):
    path = tmp_path / "m"
    save_directory(path, {"tag": "first"}, {"w": torch.zeros(2)})
    with pytest.raises(TypeError):  # not JSON-serialisable: fails while writing
        save_directory(path, {"tag": object()}, {"w": torch.ones(2)}, overwrite=True)
    config, state = load_directory(path)
    assert config["tag"] == "first"
    torch.testing.assert_close(state["w"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_save_creates_parent_directories(tmp_path):
    path = save_directory(tmp_path / "a" / "b" / "m", {}, {"w": torch.zeros(1)})
    assert (path / WEIGHTS_FILE).is_file()


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m"
    save_directory(path, {"module": {}}, {"w": torch.arange(4.0)})
    return path


def test_load_directory_reads_back(saved):
    config, state = load_directory(saved)
    assert config == {"format_version": FORMAT_VERSION, "module": {}}
    torch.testing.assert_close(state["w"], torch.arange(4.0))


def test_load_not_a_directory(tmp_path):
    with pytest.raises(GMMVAEInputError, match="not a model directory") as err:
        GMMVAE.load(tmp_path / "nothing")
    assert isinstance(err.value, FileNotFoundError)  # also catchable as the builtin


def test_load_missing_weights(saved):
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(GMMVAEInputError, match=r"model\.pt is missing"):
        GMMVAE.load(saved)


def test_load_missing_config(saved):
    (saved / CONFIG_FILE).unlink()
    with pytest.raises(GMMVAEInputError, match=r"config\.json is missing"):
        GMMVAE.load(saved)


@pytest.mark.parametrize("garbage", [b"\x00\x01garbage\xff" * 10, b""])
def test_load_corrupted_weights(saved, garbage):
    (saved / WEIGHTS_FILE).write_bytes(garbage)
    with pytest.raises(GMMVAEInputError, match="corrupted or not a gmmvae model"):
        GMMVAE.load(saved)


def test_load_truncated_weights(saved):
    data = (saved / WEIGHTS_FILE).read_bytes()
    (saved / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(GMMVAEInputError, match="could not be read"):
        GMMVAE.load(saved)


def test_load_invalid_json(saved):
    (saved / CONFIG_FILE).write_text('{"format_version": 1, ')
    with pytest.raises(GMMVAEInputError, match="not valid JSON"):
        GMMVAE.load(saved)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, "1", None])
def test_load_unsupported_format_version(saved, version):
    (saved / CONFIG_FILE).write_text(json.dumps({"format_version": version}))
    with pytest.raises(GMMVAEInputError, match=f"reads up to format {FORMAT_VERSION}.*Upgrade"):
        GMMVAE.load(saved)


def test_load_weights_that_do_not_fit_the_config(shared_model, tmp_path):
    shared_model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    config["module"]["n_latent"] += 1
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(GMMVAEInputError, match="do not fit together"):
        GMMVAE.load(tmp_path / "m")


def test_weights_load_without_pickle_code_execution(tmp_path):
    # weights_only=True: a pickle that would call a function is refused, not executed.
    path = tmp_path / "m"
    save_directory(path, {}, {"w": torch.zeros(1)})
    torch.save({"w": torch.zeros(1), "f": print}, path / WEIGHTS_FILE)
    with pytest.raises(GMMVAEInputError, match="could not be read"):
        load_directory(path)


def test_load_leaves_global_rng_untouched(shared_model, tmp_path):
    shared_model.save(tmp_path / "m")
    state = torch.random.get_rng_state()
    GMMVAE.load(tmp_path / "m")
    assert torch.equal(torch.random.get_rng_state(), state)
