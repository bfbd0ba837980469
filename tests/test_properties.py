"""Property test: any small AnnData either trains and predicts finitely, or is refused clearly.

Hypothesis draws the shape, dtype, layout, sparsity and corruption (NaN, inf, negative or
non-integer values) of the matrix, optional obs columns used as labels/condition/batch with
random categories (including ``"Unknown"`` and integers), the likelihood, the variant and K.
Each example goes through ``setup_anndata`` -> ``GMMVAE(...)`` -> ``train(max_epochs=1)`` ->
``predict``/``get_latent`` and must either give finite outputs of the right shape or raise
:class:`gmmvae.GMMVAEInputError`. An oracle predicts which of the two, and which message,
from the input alone: valid data must never be refused, and invalid data must be refused for
the right reason.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import sparse

from gmmvae import GMMVAE, GMMVAEInputError

NET = {"n_hidden": 16, "n_latent": 4}
ROLES = {"labels_key": "lab", "condition_key": "cond", "batch_key": "bat"}
# Hypothesis favours the first and last elements of a sampled_from list: valid choices sit at
# both ends (and are repeated) so that most examples train, invalid ones in the middle.
# Category sets for the obs columns: strings, integers, mixtures, "Unknown" (the default
# unlabeled_category), and sets that leave fewer than two labels.
CATEGORY_SETS = [
    ["a", "b", "Unknown"],
    [0, 7, "Unknown"],
    ["a", "Unknown"],
    ["Unknown"],
    ["a"],
    ["c", 7, "a", "b"],
    [1, 2],
    ["a", "b"],
]
DENSITIES = [0.3, 1.0, 0.05, 0.0, 0.3, 1.0, 0.3]
CORRUPTIONS = [None] * 4 + ["nan", "inf", "-inf", "negative", "fraction"] + [None] * 4


@dataclass
class Example:
    adata: AnnData
    keys: dict[str, str]  # setup_anndata keyword -> obs column
    likelihood: str
    variant: str
    n_components: int | None
    batch_size: int
    train_size: float


@st.composite
def examples(draw: st.DrawFn) -> Example:
    n_cells = draw(st.integers(1, 60), label="n_cells")
    n_genes = draw(st.integers(1, 30), label="n_genes")
    dtype = draw(st.sampled_from(["float32", "float64", "int32", "float16"]), label="dtype")
    # scipy.sparse has no float16: float16 data is dense.
    layout = "dense" if dtype == "float16" else draw(st.sampled_from(["dense", "csr"]))
    density = draw(st.sampled_from(DENSITIES), label="density")
    mean = draw(st.sampled_from([3.0, 40.0, 0.5]), label="mean")
    corruption = draw(st.sampled_from(CORRUPTIONS), label="corruption")
    if dtype == "int32" and corruption not in (None, "negative"):
        corruption = None  # not representable in an integer matrix
    seed = draw(st.integers(0, 2**32 - 1), label="seed")

    rng = np.random.default_rng(seed)
    X = rng.poisson(mean, (n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    X = X.astype(np.float64)
    if corruption is not None:
        n_bad = int(rng.integers(1, 4))
        rows, cols = rng.integers(0, n_cells, n_bad), rng.integers(0, n_genes, n_bad)
        value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "negative": -2.0}.get(corruption)
        X[rows, cols] = X[rows, cols] + 0.5 if value is None else value
    X = X.astype(dtype)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n_cells)])
    keys = {}
    for role, column in ROLES.items():
        if not draw(st.booleans(), label=f"use {role}"):
            continue
        cats = draw(st.sampled_from(CATEGORY_SETS), label=f"{role} categories")
        values = [cats[i] for i in rng.integers(0, len(cats), n_cells)]
        obs[column] = pd.Categorical(values) if draw(st.booleans()) else values
        keys[role] = column
    adata = AnnData(
        X=sparse.csr_matrix(X) if layout == "csr" else X,
        obs=obs,
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )
    return Example(
        adata=adata,
        keys=keys,
        likelihood=draw(st.sampled_from(["nb", "zinb", "poisson", "gaussian"])),
        variant=draw(st.sampled_from(["exact", "shared", "dirichlet"])),
        n_components=None if "labels_key" in keys else draw(st.integers(1, 4)),
        batch_size=draw(st.sampled_from([1, 8, 256])),
        train_size=draw(st.sampled_from([0.9, 1.0])),
    )


def _dense(ex: Example) -> np.ndarray:
    X = ex.adata.X.toarray() if sparse.issparse(ex.adata.X) else ex.adata.X
    return np.asarray(X, dtype=np.float64)


def _n_labels(ex: Example) -> int:
    if "labels_key" not in ex.keys:
        return 0
    return len(set(ex.adata.obs[ex.keys["labels_key"]].astype(str)) - {"Unknown"})


def _n_components(ex: Example) -> int:
    n_labels = _n_labels(ex)
    return n_labels + 1 if n_labels else ex.n_components  # one free component by default


def _n_with_counts(ex: Example) -> int:
    return int((np.abs(_dense(ex)).sum(1) > 0).sum())


def expected_error(ex: Example) -> str | None:
    """The message (a regex) with which gmmvae must refuse ``ex``, or None if it must work."""
    dense = _dense(ex)
    if not np.isfinite(dense).all():
        return "NaN or infinite values; remove or impute them"
    if "labels_key" in ex.keys and _n_labels(ex) < 2:
        return r"label\(s\) besides unlabeled_category='Unknown'.*labels_key=None"
    if ex.likelihood != "gaussian" and ((dense < 0).any() or (dense != np.round(dense)).any()):
        return "(negative|non-integer) values, but a count likelihood needs raw counts"
    if ex.adata.n_obs < _n_components(ex):
        return "cells but the model has .* components; use fewer components"
    n_keep = _n_with_counts(ex)
    if n_keep < 2:
        return r"cell\(s\) with counts; training needs at least 2"
    n_train = n_keep - round(n_keep * (1.0 - ex.train_size))  # as GMMVAE.train splits
    if n_train < _n_components(ex):
        return r"cells are left for training .* Use fewer components, a larger train_size"
    return None


def run(ex: Example) -> tuple[GMMVAE, pd.DataFrame, np.ndarray]:
    adata = ex.adata
    GMMVAE.setup_anndata(adata, **ex.keys)
    model = GMMVAE(
        adata,
        n_components=ex.n_components,
        likelihood=ex.likelihood,
        variant=ex.variant,
        seed=0,
        **NET,
    )
    model.train(
        max_epochs=1,
        batch_size=ex.batch_size,
        train_size=ex.train_size,
        progress_bar=False,
        seed=0,
    )
    return model, model.predict(adata), model.get_latent(adata)


@pytest.mark.filterwarnings("ignore")
@settings(
    deadline=None,
    max_examples=30,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ex=examples())
def test_works_or_refuses_clearly(ex: Example) -> None:
    expected = expected_error(ex)
    event(f"expected: {expected or 'works'}")  # shown by --hypothesis-show-statistics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty cells, k-means on duplicate points, Lightning
        try:
            model, probs, latent = run(ex)
        except GMMVAEInputError as err:
            assert expected is not None, f"valid input refused: {err}"
            assert re.search(expected, str(err)), (expected, str(err))
            return
    assert expected is None, f"expected an error matching {expected!r}, but it worked"
    n, K = ex.adata.n_obs, model.config.n_components
    assert probs.shape == (n, K)
    assert latent.shape == (n, NET["n_latent"])
    assert np.isfinite(probs.to_numpy()).all()
    assert np.isfinite(latent).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-4)
    assert list(probs.index) == list(ex.adata.obs_names)
    assert set(ex.adata.obs["gmmvae_label"].astype(str)) <= set(model.component_names)
    assert model.is_trained
    assert np.isfinite(model.history["train_loss"]).all()
