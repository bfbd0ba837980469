"""Validation errors that say how to fix the input, and sparse-until-the-minibatch loading."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from gmmvae import GMMVAE, GMMVAEInputError, MissingKeyError
from gmmvae import data as gmmvae_data
from gmmvae.data import (
    REGISTRY_KEY,
    CellData,
    ChunkedBatchSampler,
    MixedBatchSampler,
    align_genes,
    encode,
    get_registry,
    make_loader,
)


# ------------------------------------------------------------------------- setup_anndata
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


def test_missing_layer(small):
    with pytest.raises(MissingKeyError, match=r"layer 'raw'.*\['counts'\]"):
        GMMVAE.setup_anndata(small, layer="raw")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("as_sparse", [True, False])
def test_nan_or_inf_values(small, bad, as_sparse):
    X = small.X.toarray()
    X[5, 7] = bad
    small.X = sparse.csr_matrix(X) if as_sparse else X
    with pytest.raises(GMMVAEInputError, match="NaN or infinite"):
        GMMVAE.setup_anndata(small)


def test_non_finite_values_in_layer_name_the_layer(small):
    X = small.layers["counts"].toarray()
    X[0, 0] = np.nan
    small.layers["counts"] = X
    with pytest.raises(GMMVAEInputError, match=r"adata.layers\['counts'\] contains NaN"):
        GMMVAE.setup_anndata(small, layer="counts")


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda X: X - 1.0, "negative values"),
        (lambda X: np.log1p(X), "non-integer values"),
    ],
)
def test_count_likelihood_refuses_non_counts_at_construction(small, transform, message):
    small.X = transform(small.X.toarray())
    GMMVAE.setup_anndata(small)  # not an error yet: the likelihood is not known
    with pytest.raises(GMMVAEInputError, match=message):
        GMMVAE(small, n_components=3, likelihood="nb")
    with pytest.raises(GMMVAEInputError, match="likelihood='gaussian'"):
        GMMVAE(small, n_components=3, likelihood="poisson")
    GMMVAE(small, n_components=3, likelihood="gaussian")  # log data is fine here


def test_integer_dtype_counts_accepted(small):
    small.X = small.X.toarray().astype(np.int32)
    GMMVAE.setup_anndata(small)
    GMMVAE(small, n_components=3)


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


# ------------------------------------------------------------------------ encode / genes
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


def test_align_genes(small):
    names = list(small.var_names)
    assert align_genes(small, names) is None
    order = np.random.default_rng(0).permutation(small.n_vars)
    shuffled = small[:, order].copy()
    index = align_genes(shuffled, names)
    assert list(shuffled.var_names[index]) == names
    # A superset of genes is fine: only the model's genes are picked.
    index = align_genes(small, names[10:20])
    assert list(small.var_names[index]) == names[10:20]


def test_align_genes_names_missing(small):
    names = [*list(small.var_names), "MYGENE1", "MYGENE2"]
    with pytest.raises(GMMVAEInputError, match=r"lacks 2 of.*\['MYGENE1', 'MYGENE2'\]"):
        align_genes(small, names)


# ------------------------------------------------------------------------------- sampler
def test_mixed_sampler_with_one_percent_labels():
    n = 1000
    labels = np.full(n, -1)
    labelled = np.random.default_rng(0).choice(n, 10, replace=False)
    labels[labelled] = np.arange(10) % 3
    sampler = MixedBatchSampler(labels, 64, seed=0)
    for _ in range(2):  # two epochs, reshuffled
        batches = list(sampler)
        assert len(batches) == len(sampler)
        seen_unlabelled = []
        for batch in batches:
            batch = np.asarray(batch)
            assert len(batch) <= 64
            assert np.isin(batch, labelled).sum() >= 1
            seen_unlabelled.extend(batch[labels[batch] < 0])
        # Every unlabelled cell exactly once per epoch.
        assert sorted(seen_unlabelled) == sorted(np.flatnonzero(labels < 0))


def test_mixed_sampler_reshuffles_per_epoch_and_is_seeded():
    labels = np.where(np.arange(200) % 10 == 0, 0, -1)
    a, b = MixedBatchSampler(labels, 32, seed=1), MixedBatchSampler(labels, 32, seed=1)
    first = list(a)
    assert list(a) == first  # the epoch, not the number of passes, picks the order
    a.set_epoch(1)
    second = list(a)
    assert first == list(b)
    assert first != second
    b.set_epoch(1)
    assert list(b) == second  # a resumed run sees the same batches


@pytest.mark.parametrize("labels", [np.full(100, -1), np.arange(100) % 4])
def test_plain_sampler_without_or_with_all_labels(labels):
    batches = list(MixedBatchSampler(labels, 32, seed=0))
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    assert sorted(np.concatenate(batches)) == list(range(100))


def test_mixed_sampler_batch_size_one():
    labels = np.array([0, -1, -1, 1, -1])
    batches = list(MixedBatchSampler(labels, 1, seed=0))
    assert sorted(i for b in batches for i in b if labels[i] < 0) == [1, 2, 4]


# ------------------------------------------------------------------------------ CellData
def test_cell_data_dense_and_sparse_identical(small):
    X = small.X
    n = small.n_obs
    gene_index = np.random.default_rng(0).permutation(small.n_vars)
    for rows in (np.arange(n), np.arange(0, n, 3)):
        m = len(rows)
        covariates = (np.arange(m) % 3 - 1, np.zeros(m), np.arange(m) % 2)
        kwargs = {"gene_index": gene_index, "rows": rows}
        dense = CellData(X.toarray(), *covariates, **kwargs)
        csr = CellData(X, *covariates, **kwargs)
        csc = CellData(X.tocsc(), *covariates, **kwargs)
        assert len(dense) == len(csr) == len(csc)
        for loader_args in ({"shuffle": False}, {"shuffle": True, "seed": 3}):
            for b_d, b_s, b_c in zip(
                make_loader(dense, 16, **loader_args),
                make_loader(csr, 16, **loader_args),
                make_loader(csc, 16, **loader_args),
                strict=True,
            ):
                for key in b_d:
                    torch.testing.assert_close(b_d[key], b_s[key], rtol=0, atol=0)
                    torch.testing.assert_close(b_d[key], b_c[key], rtol=0, atol=0)
                assert b_d["x"].dtype == torch.float32


def test_cell_data_rows_and_genes(small):
    X = small.X.toarray()
    data = CellData(small.X, np.zeros(300), np.zeros(300), np.zeros(300))
    sub = data.subset(np.array([5, 2]))
    item = sub[[0, 1]]
    np.testing.assert_array_equal(item["x"].numpy(), X[[5, 2]])
    assert sub.matrix is data.matrix  # no copy of the data
    reordered = CellData(small.X, np.zeros(300), np.zeros(300), np.zeros(300), np.array([3, 0]))
    np.testing.assert_array_equal(reordered[[7]]["x"].numpy(), X[[7]][:, [3, 0]])


def test_sequential_loader_covers_all_cells_in_order(small):
    data = CellData(small.X, np.arange(300), np.zeros(300), np.zeros(300))
    labels = torch.cat([b["label"] for b in make_loader(data, 64, shuffle=False)])
    torch.testing.assert_close(labels, torch.arange(300))


# ------------------------------------------------------------ data-parallel and on-disk data
@pytest.mark.parametrize("world", [2, 3])
def test_samplers_split_batches_across_ranks(monkeypatch, world):
    """Under DDP every rank gets the same number of distinct batches; together they cover all."""
    labels = np.where(np.arange(1000) % 20 == 0, 1, -1)
    samplers = {
        "mixed": lambda: MixedBatchSampler(labels, 64, seed=4),
        "chunked": lambda: ChunkedBatchSampler(np.arange(1000), 64, seed=4, block_rows=300),
    }
    for make in samplers.values():
        single = make()
        single.set_epoch(2)
        everything = [tuple(b) for b in single]
        per_rank = []
        for rank in range(world):
            monkeypatch.setattr(gmmvae_data, "distributed_rank", lambda r=rank: (r, world))
            sampler = make()
            sampler.set_epoch(2)  # every rank builds the same epoch order from seed and epoch
            per_rank.append([tuple(b) for b in sampler])
            assert len(per_rank[-1]) == len(sampler)
        monkeypatch.setattr(gmmvae_data, "distributed_rank", lambda: (0, 1))
        assert len({len(batches) for batches in per_rank}) == 1  # equal steps: no rank waits
        shared = [b for batches in per_rank for b in batches]
        assert set(shared) == set(everything)  # wrapped-around padding repeats, never drops
        assert len(shared) - len(everything) < world


def test_chunked_sampler_keeps_batches_inside_blocks():
    rows = np.sort(np.random.default_rng(0).choice(5000, 3000, replace=False))
    sampler = ChunkedBatchSampler(rows, 100, seed=1, block_rows=512)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(np.concatenate(batches)) == list(range(3000))  # each cell once per epoch
    for batch in batches:
        blocks = np.unique(rows[batch] // 512)
        assert len(blocks) == 1
        assert 50 <= len(batch) <= 100
    sampler.set_epoch(1)
    assert [list(b) for b in sampler] != [list(b) for b in batches]


@pytest.fixture
def backed(small, tmp_path):
    path = tmp_path / "small.h5ad"
    small.write_h5ad(path)
    yield anndata.read_h5ad(path, backed="r"), small
    # the file handle is closed with the object


def test_backed_cell_data_matches_in_memory(backed):
    on_disk, in_memory = backed
    assert gmmvae_data.is_on_disk(on_disk.X) and not gmmvae_data.is_on_disk(in_memory.X)
    covariates = (np.arange(300) % 3, np.zeros(300), np.zeros(300))
    rows = np.sort(np.random.default_rng(2).choice(300, 200, replace=False))
    disk = CellData(on_disk.X, *covariates, rows=rows)
    memory = CellData(in_memory.X, *covariates, rows=rows)
    for index in ([0, 5, 3], list(range(199, 150, -1)), [0, 199]):  # one block, reversed, far
        torch.testing.assert_close(disk[index]["x"], memory[index]["x"], rtol=0, atol=0)
    np.testing.assert_allclose(
        gmmvae_data.row_sums(on_disk.X), gmmvae_data.row_sums(in_memory.X), rtol=1e-6
    )
    loader = make_loader(disk, 32, shuffle=True, seed=0)
    assert isinstance(loader.sampler, ChunkedBatchSampler)
    assert sum(len(b["x"]) for b in loader) == 200


def test_backed_dense_matrix_is_read_in_blocks(small, tmp_path):
    small.X = small.X.toarray()
    small.write_h5ad(tmp_path / "dense.h5ad")
    on_disk = anndata.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    data = CellData(on_disk.X, np.zeros(300), np.zeros(300), np.zeros(300))
    np.testing.assert_array_equal(data[[4, 2]]["x"].numpy(), small.X[[4, 2]])


def test_view_of_a_backed_file_is_loaded_into_memory_with_warning(backed):
    on_disk, _ = backed
    view = on_disk[on_disk.obs["cell_type"] == "type_0"]
    with pytest.warns(UserWarning, match="view of the backed file"):
        GMMVAE.setup_anndata(view)
    assert not view.is_view and not view.isbacked
    assert view.n_obs == (on_disk.obs["cell_type"] == "type_0").sum()
    assert on_disk.isbacked  # the whole object still reads from its file
