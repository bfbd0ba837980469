"""Value and gene checks with actionable errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from gmmvae import GMMVAE, GMMVAEInputError, MissingKeyError
from gmmvae.validation import align_genes


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
