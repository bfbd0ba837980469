"""setup_anndata and the registry: what is recorded, and errors that say how to fix input."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest

from gmmvae import GMMVAE, GMMVAEInputError, MissingKeyError
from gmmvae.registry import REGISTRY_KEY, encode, get_registry


def test_setup_records_registry(small):
    GMMVAE.setup_anndata(small, layer="counts", labels_key="cell_type", condition_key="condition")
    assert REGISTRY_KEY in small.uns
    reg = get_registry(small)
    assert reg["layer"] == "counts"
    assert reg["labels_key"] == "cell_type"
    assert reg["labels"] == ["type_0", "type_1", "type_2"]
    assert reg["conditions"] == ["condition_0"]
    assert reg["batch_key"] is None
    assert reg["unlabeled_category"] == "Unknown"


def test_registry_survives_h5ad_round_trip(small, tmp_path):
    GMMVAE.setup_anndata(small, labels_key="cell_type", batch_key="batch")
    small.write_h5ad(tmp_path / "a.h5ad")
    reg = get_registry(anndata.read_h5ad(tmp_path / "a.h5ad"))
    assert reg == get_registry(small)
    assert reg["layer"] is None
    assert reg["labels"] == ["type_0", "type_1", "type_2"]


def test_not_set_up_raises(small):
    with pytest.raises(GMMVAEInputError, match="setup_anndata"):
        GMMVAE(small, n_components=3)


def test_missing_obs_key_suggests_closest(small):
    with pytest.raises(MissingKeyError, match="Did you mean 'cell_type'") as err:
        GMMVAE.setup_anndata(small, labels_key="cell_types")
    assert "labels_key 'cell_types'" in str(err.value)
    assert isinstance(err.value, KeyError)  # also catchable as a KeyError
    with pytest.raises(MissingKeyError, match=r"batch_key 'zzz'.*columns are"):
        GMMVAE.setup_anndata(small, batch_key="zzz")


def test_single_label_category(small):
    small.obs["one"] = pd.Categorical(["a"] * 150 + ["Unknown"] * 150)
    with pytest.raises(GMMVAEInputError, match=r"1 label\(s\).*\['a'\].*labels_key=None"):
        GMMVAE.setup_anndata(small, labels_key="one")


def test_nan_labels(small):
    labels = small.obs["cell_type"].astype(object)
    labels.iloc[[3, 10]] = np.nan
    small.obs["with_nan"] = labels
    with pytest.raises(GMMVAEInputError, match="'with_nan' has 2 missing"):
        GMMVAE.setup_anndata(small, labels_key="with_nan")


def test_duplicated_names(small):
    dup_obs = small.copy()
    dup_obs.obs_names = ["c"] * small.n_obs
    with pytest.raises(GMMVAEInputError, match="obs_names_make_unique"):
        GMMVAE.setup_anndata(dup_obs)
    dup_var = small.copy()
    dup_var.var_names = ["g"] * small.n_vars
    with pytest.raises(GMMVAEInputError, match="var_names_make_unique"):
        GMMVAE.setup_anndata(dup_var)


def test_empty_adata(small):
    with pytest.raises(GMMVAEInputError, match="needs cells and genes"):
        GMMVAE.setup_anndata(small[:, []].copy())


def test_view_is_copied_with_warning(small):
    view = small[:100]
    assert view.is_view
    with pytest.warns(UserWarning, match="is a view") as record:
        GMMVAE.setup_anndata(view)
    assert record[0].filename == __file__  # points at the caller
    assert not view.is_view
    assert REGISTRY_KEY in view.uns
    assert REGISTRY_KEY not in small.uns  # the parent is untouched
    assert view.n_obs == 100


def test_unlabeled_category_is_not_a_label(small):
    small.obs["label"] = small.obs["cell_type"].astype(str)
    small.obs.loc[small.obs_names[::2], "label"] = "?"
    GMMVAE.setup_anndata(small, labels_key="label", unlabeled_category="?")
    assert small.uns[REGISTRY_KEY]["labels"] == ["type_0", "type_1", "type_2"]


def test_unused_categories_are_dropped(small):
    small.obs["cell_type"] = small.obs["cell_type"].cat.add_categories(["never"])
    GMMVAE.setup_anndata(small, labels_key="cell_type")
    assert "never" not in small.uns[REGISTRY_KEY]["labels"]


def test_encode_codes_and_missing(small):
    small.obs["lab"] = ["b", "Unknown", "a"] * 100
    codes = encode(small, "lab", ["a", "b"], "labels_key", missing="Unknown")
    np.testing.assert_array_equal(codes[:6], [1, -1, 0, 1, -1, 0])
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(encode(small, None, [], "batch_key", missing=None), 0)


def test_encode_unknown_categories_lists_known(small):
    small.obs["cond"] = ["ctrl", "stim", "new"] * 100
    with pytest.raises(GMMVAEInputError, match=r"\['new'\].*known ones are \['ctrl', 'stim'\]"):
        encode(small, "cond", ["ctrl", "stim"], "condition_key", missing=None)


def test_view_of_a_backed_file_is_loaded_into_memory_with_warning(backed):
    on_disk, _ = backed
    view = on_disk[on_disk.obs["cell_type"] == "type_0"]
    with pytest.warns(UserWarning, match="view of the backed file"):
        GMMVAE.setup_anndata(view)
    assert not view.is_view and not view.isbacked
    assert view.n_obs == (on_disk.obs["cell_type"] == "type_0").sum()
    assert on_disk.isbacked  # the whole object still reads from its file
