"""Gene selection and the warning for models on many genes."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

import gmmvae
from gmmvae import pp


def _init(n_genes: int) -> None:
    """Stands in for GMMVAE.__init__, which calls warn_many_genes(adata.n_vars)."""
    pp.warn_many_genes(n_genes)


def test_warn_many_genes_gives_the_cost_and_the_fix():
    with pytest.warns(UserWarning) as record:
        line = inspect.currentframe().f_lineno + 1
        _init(13_714)
    message = str(record[0].message)
    assert "13,714 genes" in message
    assert "8.0x" in message  # the measured step-time ratio against 2,000 genes
    assert "gmmvae.pp.select_genes(adata, 2000)" in message
    assert "flavor='seurat_v3'" in message
    # The warning points at the user's line that built the model, not into gmmvae.
    assert (record[0].filename, record[0].lineno) == (__file__, line)


def test_no_warning_up_to_the_threshold():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pp.warn_many_genes(2000)
        pp.warn_many_genes(pp.MANY_GENES)
        pp.warn_many_genes(9000, threshold=10_000)
    with pytest.warns(UserWarning, match="5,001 genes"):
        pp.warn_many_genes(5001)


def test_step_cost_ratio_follows_the_measurements():
    assert pp.step_cost_ratio(2000) == pytest.approx(1.0)
    assert pp.step_cost_ratio(8863) == pytest.approx(4.65)
    assert pp.step_cost_ratio(27_428) == pytest.approx(16.0)  # proportional beyond
    ratios = [pp.step_cost_ratio(n) for n in (3000, 6000, 10_000, 20_000)]
    assert np.all(np.diff(ratios) > 0)


def test_select_genes_keeps_the_most_variable_genes():
    adata = gmmvae.datasets.simulate(300, 200, 3, seed=0)
    selected = pp.select_genes(adata, 50)
    assert selected.shape == (300, 50)
    assert selected.var["highly_variable"].all()
    marked = pp.select_genes(adata, 50, subset=False)
    assert marked is adata and adata.var["highly_variable"].sum() == 50
    assert list(selected.var_names) == list(adata.var_names[adata.var["highly_variable"]])
    assert pp.select_genes(adata, 500) is adata  # fewer genes than asked: unchanged
