"""CellData: sparse, dense and on-disk matrices give the same minibatches."""

from __future__ import annotations

import anndata
import numpy as np
import torch

from gmmvae import validation as gmmvae_validation
from gmmvae.data import CellData, make_loader
from gmmvae.samplers import ChunkedBatchSampler


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


def test_backed_cell_data_matches_in_memory(backed):
    on_disk, in_memory = backed
    assert gmmvae_validation.is_on_disk(on_disk.X) and not gmmvae_validation.is_on_disk(in_memory.X)
    covariates = (np.arange(300) % 3, np.zeros(300), np.zeros(300))
    rows = np.sort(np.random.default_rng(2).choice(300, 200, replace=False))
    disk = CellData(on_disk.X, *covariates, rows=rows)
    memory = CellData(in_memory.X, *covariates, rows=rows)
    for index in ([0, 5, 3], list(range(199, 150, -1)), [0, 199]):  # one block, reversed, far
        torch.testing.assert_close(disk[index]["x"], memory[index]["x"], rtol=0, atol=0)
    np.testing.assert_allclose(
        gmmvae_validation.row_sums(on_disk.X), gmmvae_validation.row_sums(in_memory.X), rtol=1e-6
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
