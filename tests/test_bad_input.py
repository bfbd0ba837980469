"""Catalogue of bad (and awkward-but-valid) inputs: each gives a clear error or a finite answer.

Every row of :data:`CATALOGUE` is a builder ``build(tmp_path) -> act`` plus what ``act()`` must
do: raise a given exception whose message names the problem *and* the fix (:class:`Raises`),
warn and still give finite outputs (:class:`Warns`), work with finite outputs of the right shape
(:class:`Works`, the checks live in the builder), or, for the command line, exit with code 1, a
message and no traceback (:class:`CliFails`). Nothing may surface as a bare torch, numpy, pandas
or scikit-learn exception, a NaN, or a silently wrong answer.

Rows marked ``xfail(strict=True)`` are bugs found in ``src``; the reason says what goes wrong.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse
from typer.testing import CliRunner

from gmmvae import GMMVAE, GMMVAEInputError, MissingKeyError
from gmmvae.cli import app
from gmmvae.datasets import simulate
from gmmvae.io import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE

# Small networks: every case here is about input handling, not about model quality.
NET = {"n_hidden": 32, "n_latent": 4}
TRAIN = {"max_epochs": 2, "progress_bar": False, "seed": 0}

Act = Callable[[], Any]
Builder = Callable[[Path], Act]


# ------------------------------------------------------------------------------ helpers
def _cells(n_cells: int = 60, n_genes: int = 20, n_types: int = 3, **kwargs: Any) -> AnnData:
    """Tiny simulated counts: CSR float32 in X and layers['counts'], cell_type/condition/batch.

    ~100 reads per cell, so that no cell is empty unless a case makes it so.
    """
    kwargs.setdefault("mean_library_size", 100.0)
    adata = simulate(n_cells, n_genes, n_types, seed=0, **kwargs)
    assert (adata.X.sum(1) > 0).all()
    return adata


def _dense(adata: AnnData, dtype: Any = np.float32) -> AnnData:
    adata.X = adata.X.toarray().astype(dtype)
    return adata


def _assert_outputs(model: GMMVAE, adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
    """predict + get_latent: one finite row per cell, probabilities summing to one."""
    probs = model.predict(adata).to_numpy()
    latent = model.get_latent(adata)
    assert probs.shape == (adata.n_obs, model.config.n_components)
    assert latent.shape == (adata.n_obs, model.config.n_latent)
    assert np.isfinite(probs).all(), "predict returned non-finite probabilities"
    assert np.isfinite(latent).all(), "get_latent returned non-finite values"
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (adata.obs["gmmvae_label"].astype(str) != "nan").all()
    return probs, latent


def _fit(
    adata: AnnData,
    *,
    n_components: int | None = 3,
    setup: dict | None = None,
    model: dict | None = None,
    **train: Any,
) -> GMMVAE:
    GMMVAE.setup_anndata(adata, **(setup or {}))
    m = GMMVAE(adata, n_components=n_components, seed=0, **{**NET, **(model or {})})
    m.train(**{**TRAIN, **train})
    assert m.is_trained
    assert np.isfinite(m.history["train_loss"]).all()
    return m


def _fit_and_check(adata: AnnData, **kwargs: Any) -> Act:
    def act() -> GMMVAE:
        m = _fit(adata, **kwargs)
        _assert_outputs(m, adata)
        return m

    return act


@functools.cache
def _reference() -> tuple[GMMVAE, AnnData]:
    """A briefly trained model with labels, two conditions and two batches (trained once)."""
    adata = _cells(120, 20, 3, n_conditions=2, n_batches=2)
    m = _fit(
        adata,
        n_components=None,
        setup={"labels_key": "cell_type", "condition_key": "condition", "batch_key": "batch"},
    )
    return m, adata


def _query() -> tuple[GMMVAE, AnnData]:
    model, adata = _reference()
    return model, adata.copy()


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    _reference()[0].save(path)
    return path


def _load(path: Path) -> Act:
    return lambda: GMMVAE.load(path)


def _setup(adata: AnnData, **kwargs: Any) -> Act:
    return lambda: GMMVAE.setup_anndata(adata, **kwargs)


def _construct(adata: AnnData, **kwargs: Any) -> Act:
    """setup_anndata must accept the data; GMMVAE(...) (knowing the likelihood) refuses it."""
    GMMVAE.setup_anndata(adata)
    return lambda: GMMVAE(adata, n_components=3, **NET, **kwargs)


def _with_value(
    adata: AnnData, value: float, *, as_sparse: bool, dtype: Any = np.float32
) -> AnnData:
    X = adata.X.toarray().astype(dtype)
    X[5, 7] = value
    adata.X = sparse.csr_matrix(X) if as_sparse else X
    return adata


# --------------------------------------------------------------------------- expectations
@dataclass(frozen=True)
class Raises:
    """``act()`` raises ``error`` whose message matches ``match`` (problem and fix)."""

    error: type[BaseException]
    match: str

    def check(self, act: Act) -> None:
        # (?s): some messages quote a multi-line error from torch after the explanation.
        with pytest.raises(self.error, match="(?s)" + self.match) as info:
            act()
        # An exception of ours (or a builtin file error), never one from torch/numpy/sklearn.
        module = type(info.value).__module__
        assert module.startswith("gmmvae") or module == "builtins", module


@dataclass(frozen=True)
class Warns:
    """``act()`` warns with ``category``/``match`` and succeeds (it checks its own outputs)."""

    category: type[Warning]
    match: str

    def check(self, act: Act) -> None:
        with pytest.warns(self.category, match=self.match):
            act()


@dataclass(frozen=True)
class Works:
    """``act()`` succeeds without raising and without warning about the input."""

    def check(self, act: Act) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*(view|no counts|not trained).*")
            act()


@dataclass(frozen=True)
class CliFails:
    """``act()`` runs the CLI: exit code 1, every phrase on stderr, no traceback.

    Whitespace is ignored when matching: rich wraps long messages (and paths) at 80 columns.
    """

    phrases: tuple[str, ...]

    def check(self, act: Act) -> None:
        result = act()
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output
        stderr = re.sub(r"\s+", "", result.stderr)
        assert stderr.startswith("Error:"), result.output
        for phrase in self.phrases:
            assert re.sub(r"\s+", "", phrase) in stderr, (phrase, result.output)


runner = CliRunner()


def _annotate(tmp_path: Path, data: Path) -> Act:
    model_dir = _saved(tmp_path)
    out = tmp_path / "out.h5ad"
    return lambda: runner.invoke(app, ["annotate", str(model_dir), str(data), "--out", str(out)])


# ----------------------------------------------------------------------------- obs keys
def misspelled_labels_key(tmp_path: Path) -> Act:
    return _setup(_cells(), labels_key="cell_typ")


def misspelled_condition_key(tmp_path: Path) -> Act:
    return _setup(_cells(), condition_key="conditon")


def misspelled_batch_key(tmp_path: Path) -> Act:
    return _setup(_cells(), batch_key="Batch")


def missing_labels_key(tmp_path: Path) -> Act:
    return _setup(_cells(), labels_key="zzz")


def missing_layer(tmp_path: Path) -> Act:
    return _setup(_cells(), layer="raw")


def layer_missing_at_query(tmp_path: Path) -> Act:
    adata = _cells()
    model = _fit(adata, setup={"layer": "counts"})
    query = adata.copy()
    del query.layers["counts"]
    return lambda: model.predict(query)


# ------------------------------------------------------------------------------- values
def _value_case(value: float, *, as_sparse: bool, dtype: Any = np.float32) -> Builder:
    def build(tmp_path: Path) -> Act:
        return _construct(_with_value(_cells(), value, as_sparse=as_sparse, dtype=dtype))

    return build


def _non_finite_case(value: float, *, as_sparse: bool) -> Builder:
    def build(tmp_path: Path) -> Act:
        return _setup(_with_value(_cells(), value, as_sparse=as_sparse))

    return build


def non_finite_in_layer(tmp_path: Path) -> Act:
    adata = _cells()
    X = adata.layers["counts"].toarray()
    X[0, 0] = np.inf
    adata.layers["counts"] = X
    return _setup(adata, layer="counts")


def log_data_under_poisson(tmp_path: Path) -> Act:
    adata = _cells()
    adata.X = np.log1p(adata.X.toarray())
    return _construct(adata, likelihood="poisson")


def negative_counts_at_query(tmp_path: Path) -> Act:
    model, query = _query()
    query.X = query.X.toarray() - 1.0
    return lambda: model.predict(query)


# ------------------------------------------------------------------------- cells, genes
def all_zero_cells(tmp_path: Path) -> Act:
    adata = _cells()
    X = adata.X.toarray()
    X[[0, 17, 59]] = 0
    adata.X = sparse.csr_matrix(X)

    def act() -> None:
        model = _fit(adata)
        assert model.train_params["n_train_cells"] == round(57 * 0.9)
        _assert_outputs(model, adata)  # the three empty cells get a finite row too

    return act


def all_zero_genes(tmp_path: Path) -> Act:
    adata = _dense(_cells())
    adata.X[:, [0, 4, 19]] = 0
    return _fit_and_check(adata)


def all_cells_empty(tmp_path: Path) -> Act:
    adata = _cells()
    adata.X = sparse.csr_matrix(adata.shape, dtype=np.float32)

    def act() -> None:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            try:
                _fit(adata)
            finally:
                assert any("60 of 60 cells have no counts" in str(w.message) for w in record)

    return act


def single_cell_training(tmp_path: Path) -> Act:
    adata = _cells(1, 20, 1)
    GMMVAE.setup_anndata(adata)
    model = GMMVAE(adata, n_components=1, **NET)
    return lambda: model.train(**TRAIN)


def single_cell_prediction(tmp_path: Path) -> Act:
    model, query = _query()
    one = query[[7]].copy()

    def act() -> None:
        probs, _ = _assert_outputs(model, one)
        expected = model.predict(query).to_numpy()[7]
        np.testing.assert_allclose(probs[0], expected, rtol=1e-5, atol=1e-6)

    return act


def single_gene(tmp_path: Path) -> Act:
    return _fit_and_check(_cells(60, 1, 2), n_components=2)


def boolean_matrix(tmp_path: Path) -> Act:
    adata = _cells()
    adata.X = adata.X.toarray() > 0  # binarised detection calls
    return _setup(adata)


def empty_query(tmp_path: Path) -> Act:
    model, query = _query()
    empty = query[[]].copy()
    assert empty.n_obs == 0

    def act() -> None:
        # An empty result or a clear refusal are both fine; a numpy traceback is not.
        try:
            probs = model.predict(empty)
            latent = model.get_latent(empty)
        except GMMVAEInputError as err:
            assert "0 cells" in str(err) or "no cells" in str(err)
            return
        assert probs.shape == (0, model.config.n_components)
        assert latent.shape == (0, model.config.n_latent)

    return act


def duplicate_gene_names(tmp_path: Path) -> Act:
    adata = _cells()
    adata.var_names = ["g0", "g0", *adata.var_names[2:]]
    return _setup(adata)


def duplicate_cell_names(tmp_path: Path) -> Act:
    adata = _cells()
    adata.obs_names = ["c0", "c0", *adata.obs_names[2:]]
    return _setup(adata)


def fewer_cells_than_components(tmp_path: Path) -> Act:
    adata = _cells(3, 20, 1)
    GMMVAE.setup_anndata(adata)
    return lambda: GMMVAE(adata, n_components=5, **NET)


def components_exceed_training_cells(tmp_path: Path) -> Act:
    # 10 cells, K=10: the constructor accepts it (10 >= 10), but the 90 % training split holds
    # 9 cells, too few for k-means to place 10 components (was a bare scikit-learn ValueError).
    adata = _cells(10, 20, 2)
    GMMVAE.setup_anndata(adata)
    model = GMMVAE(adata, n_components=10, **NET)
    return lambda: model.train(**TRAIN)


def components_exceed_non_empty_cells(tmp_path: Path) -> Act:
    adata = _cells(4, 20, 1)
    X = adata.X.toarray()
    X[0] = 0
    adata.X = sparse.csr_matrix(X)
    GMMVAE.setup_anndata(adata)
    model = GMMVAE(adata, n_components=4, **NET)

    def act() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "1 of 4 cells have no counts"
            model.train(**TRAIN, train_size=1.0)

    return act


# ------------------------------------------------------------------------------- labels
def integer_labels(tmp_path: Path) -> Act:
    adata = _cells()
    adata.obs["lab"] = np.arange(adata.n_obs) % 3 + 1  # int64 column: 1, 2, 3

    def act() -> None:
        model = _fit(adata, n_components=None, setup={"labels_key": "lab"})
        assert model.component_names == ["1", "2", "3", "free_0"]
        _assert_outputs(model, adata)

    return act


def integer_labels_with_integer_unlabeled(tmp_path: Path) -> Act:
    adata = _cells()
    labels = np.arange(adata.n_obs) % 3
    labels[::2] = -1  # -1 marks unlabelled cells, as is common with integer labels
    adata.obs["lab"] = labels

    def act() -> None:
        # -1 must mark unlabelled cells, not become a label (and a component) named '-1'.
        model = _fit(
            adata, n_components=None, setup={"labels_key": "lab", "unlabeled_category": -1}
        )
        assert adata.uns["_gmmvae"]["labels"] == ["0", "1", "2"]
        assert model.component_names == ["0", "1", "2", "free_0"]
        _assert_outputs(model, adata)

    return act


def nan_labels(tmp_path: Path) -> Act:
    adata = _cells()
    labels = adata.obs["cell_type"].astype(object)
    labels.iloc[[3, 10]] = np.nan
    adata.obs["lab"] = labels
    return _setup(adata, labels_key="lab")


def only_unlabeled_category(tmp_path: Path) -> Act:
    adata = _cells()
    adata.obs["lab"] = pd.Categorical(["Unknown"] * adata.n_obs)
    return _setup(adata, labels_key="lab")


def single_condition(tmp_path: Path) -> Act:
    # Decision: one condition is not an error; it trains as an unconditional model.
    adata = _cells()
    adata.obs["cond"] = "control"

    def act() -> None:
        model = _fit(adata, setup={"condition_key": "cond", "batch_key": "cond"})
        assert model.registry["conditions"] == ["control"]
        assert model.config.n_conditions == 1
        assert model.config.n_batches == 1
        _assert_outputs(model, adata)

    return act


def unknown_condition_at_query(tmp_path: Path) -> Act:
    model, query = _query()
    query.obs["condition"] = ["control"] * 60 + ["interferon"] * 60
    return lambda: model.predict(query)


def unknown_batch_at_query(tmp_path: Path) -> Act:
    """Decoding needs the batch: a new one must be mapped first (load_query_data)."""
    model, query = _query()
    query.obs["batch"] = "batch_9"
    return lambda: model.get_normalized_expression(query)


def unknown_batch_latent_and_labels(tmp_path: Path) -> Act:
    """The encoder does not read the batch, so a new one needs no mapping for latents/labels."""
    model, query = _query()
    known = model.predict(query.copy()).to_numpy()
    query.obs["batch"] = "batch_9"

    def act() -> None:
        probs, _ = _assert_outputs(model, query)
        np.testing.assert_array_equal(probs, known)

    return act


def condition_column_missing_at_query(tmp_path: Path) -> Act:
    model, query = _query()
    query.obs = query.obs.rename(columns={"condition": "Condition"})
    return lambda: model.predict(query)


def anndata_view(tmp_path: Path) -> Act:
    parent = _cells(80)
    view = parent[:60]
    assert view.is_view

    def act() -> None:
        GMMVAE.setup_anndata(view)  # warns: copied in place
        assert not view.is_view
        model = GMMVAE(view, n_components=3, seed=0, **NET).train(**TRAIN)
        _assert_outputs(model, view)
        assert "gmmvae_label" not in parent.obs

    return act


# ---------------------------------------------------------------------------- CLI files
def cli_missing_h5ad(tmp_path: Path) -> Act:
    return _annotate(tmp_path, tmp_path / "nope.h5ad")


def cli_not_hdf5(tmp_path: Path) -> Act:
    path = tmp_path / "cells.h5ad"
    path.write_text("cell,gene_0\nc0,1\n")
    return _annotate(tmp_path, path)


def cli_empty_file(tmp_path: Path) -> Act:
    path = tmp_path / "cells.h5ad"
    path.write_bytes(b"")
    return _annotate(tmp_path, path)


def cli_missing_model_dir(tmp_path: Path) -> Act:
    data = tmp_path / "cells.h5ad"
    _query()[1].write_h5ad(data)
    out = tmp_path / "out.h5ad"
    return lambda: runner.invoke(
        app, ["annotate", str(tmp_path / "no_model"), str(data), "--out", str(out)]
    )


# --------------------------------------------------------------------------- model dirs
def missing_weights(tmp_path: Path) -> Act:
    path = _saved(tmp_path)
    (path / WEIGHTS_FILE).unlink()
    return _load(path)


def corrupted_weights(tmp_path: Path) -> Act:
    path = _saved(tmp_path)
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[:100] + b"\x00garbage" * 8)
    return _load(path)


def weights_of_another_model(tmp_path: Path) -> Act:
    path = _saved(tmp_path)
    torch.save({"w": torch.zeros(3)}, path / WEIGHTS_FILE)
    return _load(path)


def missing_config(tmp_path: Path) -> Act:
    path = _saved(tmp_path)
    (path / CONFIG_FILE).unlink()
    return _load(path)


def corrupted_config(tmp_path: Path) -> Act:
    path = _saved(tmp_path)
    (path / CONFIG_FILE).write_text((path / CONFIG_FILE).read_text()[:200])
    return _load(path)


def config_not_an_object(tmp_path: Path) -> Act:
    path = _saved(tmp_path)
    (path / CONFIG_FILE).write_text("[1, 2, 3]")  # valid JSON, but not a gmmvae config
    return _load(path)


def config_without_genes(tmp_path: Path) -> Act:
    path = _saved(tmp_path)
    config = json.loads((path / CONFIG_FILE).read_text())
    del config["gene_names"]
    (path / CONFIG_FILE).write_text(json.dumps(config))
    return _load(path)


def newer_format_version(tmp_path: Path) -> Act:
    path = _saved(tmp_path)
    config = json.loads((path / CONFIG_FILE).read_text())
    config["format_version"] = FORMAT_VERSION + 1
    (path / CONFIG_FILE).write_text(json.dumps(config))
    return _load(path)


def model_dir_is_a_file(tmp_path: Path) -> Act:
    path = tmp_path / "model"
    path.write_text("not a directory")
    return _load(path)


def model_dir_copied_without_config(tmp_path: Path) -> Act:
    src = _saved(tmp_path)
    dst = tmp_path / "copy"
    dst.mkdir()
    shutil.copy(src / WEIGHTS_FILE, dst / WEIGHTS_FILE)
    return _load(dst)


# -------------------------------------------------------------------------------- genes
def genes_reordered(tmp_path: Path) -> Act:
    model, query = _query()
    order = np.random.default_rng(1).permutation(query.n_vars)
    shuffled = query[:, order].copy()

    def act() -> None:
        expected = model.predict(query).to_numpy()
        got, _ = _assert_outputs(model, shuffled)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(
            shuffled.obs["gmmvae_label"].astype(str), query.obs["gmmvae_label"].astype(str)
        )

    return act


def genes_partly_missing(tmp_path: Path) -> Act:
    model, query = _query()
    keep = [g for g in query.var_names if g not in ("gene_3", "gene_11")]
    subset = query[:, keep].copy()
    return lambda: model.predict(subset)


def genes_partly_missing_at_load(tmp_path: Path) -> Act:
    path = _saved(tmp_path)
    subset = _query()[1][:, 1:].copy()
    return lambda: GMMVAE.load(path, subset)


def duplicate_gene_names_at_query(tmp_path: Path) -> Act:
    model, query = _query()
    names = list(query.var_names)
    names[1] = names[0]  # gene_1 lost, gene_0 twice: which column is gene_0 is ambiguous
    query.var_names = names
    return lambda: model.predict(query)


# ------------------------------------------------------------------------------- dtypes
def _dtype_case(dtype: Any, layout: str = "dense") -> Builder:
    def build(tmp_path: Path) -> Act:
        adata = _cells()
        X = adata.X.toarray().astype(dtype)
        adata.X = {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[layout](
            X
        )
        assert adata.X.dtype == dtype
        return _fit_and_check(adata)

    return build


def dtypes_give_the_same_answer(tmp_path: Path) -> Act:
    def act() -> None:
        results = []
        for dtype in (np.float32, np.float64, np.float16, np.int32, np.int64):
            adata = _dense(_cells(), dtype)
            model = _fit(adata)
            results.append(_assert_outputs(model, adata)[0])
        for other in results[1:]:
            np.testing.assert_allclose(other, results[0], rtol=1e-4, atol=1e-5)

    return act


def extreme_library_sizes(tmp_path: Path) -> Act:
    adata = _dense(_cells(), np.float64)
    adata.X[0] = 0
    adata.X[0, :5] = 2e5  # 1e6 counts
    adata.X[1] = 0
    adata.X[1, 3] = 1  # a single count
    assert adata.X[0].sum() == 1e6
    return _fit_and_check(adata)


# ------------------------------------------------------------------------ batch options
def _train_option(**option: Any) -> Builder:
    def build(tmp_path: Path) -> Act:
        adata = _cells()
        GMMVAE.setup_anndata(adata)
        model = GMMVAE(adata, n_components=3, **NET)
        return lambda: model.train(**{**TRAIN, **option})

    return build


def _inference_batch_size(method: str, batch_size: int) -> Builder:
    def build(tmp_path: Path) -> Act:
        model, query = _query()
        return lambda: getattr(model, method)(query, batch_size=batch_size)

    return build


def _one_cell_last_batch(n_cells: int, batch_size: int, *, labels: bool = False) -> Builder:
    def build(tmp_path: Path) -> Act:
        adata = _cells(n_cells)
        # All cells labelled keeps plain batching, so the last minibatch holds one cell; the
        # classification term then also sees a one-cell batch.
        setup = {"labels_key": "cell_type"} if labels else {}

        def act() -> None:
            model = _fit(
                adata,
                n_components=None if labels else 3,
                setup=setup,
                batch_size=batch_size,
                train_size=1.0,
            )
            assert len(model.history) == TRAIN["max_epochs"]
            assert model.train_params["n_train_cells"] == n_cells
            assert model.train_params["epochs_run"] == TRAIN["max_epochs"]
            _assert_outputs(model, adata)
            # Prediction in batches that also leave one cell equals one pass over all cells.
            split = model.predict(adata, batch_size=batch_size).to_numpy()
            whole = model.predict(adata, batch_size=n_cells).to_numpy()
            np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-6)

        return act

    return build


# ------------------------------------------------------------------------------ the table
ERR, KEY = GMMVAEInputError, MissingKeyError
NOT_COUNTS = r"a count likelihood needs raw counts\. Pass layer= .*likelihood='gaussian'"
NON_FINITE = r"adata\.X contains NaN or infinite values; remove or impute them first"
BATCH_SIZE = r"batch_size must be a positive integer, got"
TOO_FEW_TRAINING_CELLS = (
    r"Use fewer components, a larger train_size \(1\.0 uses every cell\), or more cells"
)


def bug(reason: str) -> Any:
    return pytest.mark.xfail(strict=True, reason=reason)


def case(build: Builder, expect: Any, *, marks: Any = ()) -> Any:
    return pytest.param(build, expect, id=build.__name__.strip("_"), marks=marks)


def named(name: str, build: Builder) -> Builder:
    build.__name__ = name
    return build


CATALOGUE = [
    # obs keys and layers
    case(misspelled_labels_key, Raises(KEY, r"labels_key 'cell_typ'.*Did you mean 'cell_type'")),
    case(misspelled_condition_key, Raises(KEY, r"condition_key 'conditon'.*Did you mean 'condi")),
    case(misspelled_batch_key, Raises(KEY, r"batch_key 'Batch'.*Did you mean 'batch'\?")),
    case(missing_labels_key, Raises(KEY, r"labels_key 'zzz' is not a column.*columns are \[")),
    case(missing_layer, Raises(KEY, r"layer 'raw' .*\['counts'\]\. Pass layer=None")),
    case(layer_missing_at_query, Raises(KEY, r"layer 'counts' is not in adata\.layers")),
    # values under a count likelihood (GMMVAE(...) knows the likelihood)
    case(named("negative_dense", _value_case(-1, as_sparse=False)), Raises(ERR, NOT_COUNTS)),
    case(named("negative_sparse", _value_case(-1, as_sparse=True)), Raises(ERR, NOT_COUNTS)),
    case(
        named("negative_int32", _value_case(-3, as_sparse=False, dtype=np.int32)),
        Raises(ERR, "negative values.*" + NOT_COUNTS),
    ),
    case(
        named("non_integer_dense", _value_case(0.5, as_sparse=False)),
        Raises(ERR, "non-integer values.*" + NOT_COUNTS),
    ),
    case(
        named("non_integer_sparse", _value_case(2.25, as_sparse=True)),
        Raises(ERR, "non-integer values.*" + NOT_COUNTS),
    ),
    case(log_data_under_poisson, Raises(ERR, "non-integer values.*" + NOT_COUNTS)),
    case(negative_counts_at_query, Raises(ERR, "negative values.*" + NOT_COUNTS)),
    # NaN / inf: refused by setup_anndata whatever the likelihood
    case(named("nan_dense", _non_finite_case(np.nan, as_sparse=False)), Raises(ERR, NON_FINITE)),
    case(named("nan_sparse", _non_finite_case(np.nan, as_sparse=True)), Raises(ERR, NON_FINITE)),
    case(named("inf_dense", _non_finite_case(np.inf, as_sparse=False)), Raises(ERR, NON_FINITE)),
    case(
        named("neg_inf_sparse", _non_finite_case(-np.inf, as_sparse=True)), Raises(ERR, NON_FINITE)
    ),
    case(non_finite_in_layer, Raises(ERR, r"adata\.layers\['counts'\] contains NaN or infinite")),
    # cells and genes
    case(all_zero_cells, Warns(UserWarning, r"3 of 60 cells have no counts.*filter_cells")),
    case(all_zero_genes, Works()),
    case(all_cells_empty, Raises(ERR, r"0 cell\(s\) with counts; training needs at least 2")),
    case(single_cell_training, Raises(ERR, r"1 cell\(s\) with counts; training needs at least 2")),
    case(single_cell_prediction, Works()),
    case(
        single_gene,
        Works(),
        # With one gene the library-normalised encoder input is the same for every cell, so
        # all cells share one latent position and k-means warns about duplicate points.
        marks=pytest.mark.filterwarnings("ignore:Number of distinct clusters"),
    ),
    case(boolean_matrix, Raises(ERR, r"adata\.X has dtype bool.*astype")),
    case(empty_query, Works()),
    case(duplicate_gene_names, Raises(ERR, r"var_names are not unique.*var_names_make_unique")),
    case(duplicate_cell_names, Raises(ERR, r"obs_names are not unique.*obs_names_make_unique")),
    case(
        fewer_cells_than_components,
        Raises(ERR, r"3 cells but the model has 5 components; use fewer components"),
    ),
    case(
        components_exceed_training_cells,
        Raises(
            ERR,
            r"Only 9 cells are left for training \(10 cells, 0 without counts, 1 held out for "
            r"validation by train_size=0\.9\), fewer than the 10 components\. "
            + TOO_FEW_TRAINING_CELLS,
        ),
    ),
    case(
        components_exceed_non_empty_cells,
        Raises(
            ERR,
            r"Only 3 cells are left for training \(4 cells, 1 without counts, .*"
            + TOO_FEW_TRAINING_CELLS,
        ),
    ),
    # labels and covariates
    case(integer_labels, Works()),
    case(integer_labels_with_integer_unlabeled, Works()),
    case(nan_labels, Raises(ERR, r"'lab' has 2 missing \(NaN\) values; fill them")),
    case(
        only_unlabeled_category,
        Raises(ERR, r"0 label\(s\) besides unlabeled_category='Unknown'.*labels_key=None"),
    ),
    case(single_condition, Works()),
    case(
        unknown_condition_at_query,
        Raises(ERR, r"\['interferon'\]; known ones are \['control', 'stimulated'\]"),
    ),
    case(
        unknown_batch_at_query,
        Raises(
            ERR, r"\['batch_9'\]; known ones are \['batch_0', .*load_query_data\(query, model\)"
        ),
    ),
    case(unknown_batch_latent_and_labels, Works()),
    case(
        condition_column_missing_at_query,
        Raises(KEY, r"condition_key 'condition'.*Did you mean 'Condition'"),
    ),
    case(anndata_view, Warns(UserWarning, r"adata is a view.*Pass adata\.copy\(\)")),
    # files, through the command line
    case(cli_missing_h5ad, CliFails(("nope.h5ad does not exist; check the path",))),
    case(cli_not_hdf5, CliFails(("cells.h5ad could not be read as an .h5ad file",))),
    case(cli_empty_file, CliFails(("cells.h5ad could not be read as an .h5ad file",))),
    case(cli_missing_model_dir, CliFails(("no_model is not a model directory",))),
    # model directories
    case(missing_weights, Raises(ERR, r"model\.pt is missing; .* not a complete gmmvae model")),
    case(corrupted_weights, Raises(ERR, r"corrupted or not a gmmvae model\. Re-save or retrain")),
    case(weights_of_another_model, Raises(ERR, r"do not fit together .*re-save the model")),
    case(missing_config, Raises(ERR, r"config\.json is missing; .* not a complete gmmvae model")),
    case(corrupted_config, Raises(ERR, r"config\.json is not valid JSON .*re-save the model")),
    case(
        config_not_an_object,
        Raises(ERR, r"config\.json holds a JSON list, not a gmmvae config object; re-save"),
    ),
    case(config_without_genes, Raises(ERR, r"do not fit together .*gene_names.*re-save")),
    case(
        newer_format_version,
        Raises(ERR, rf"model format {FORMAT_VERSION + 1}.*Upgrade gmmvae"),
    ),
    case(model_dir_is_a_file, Raises(FileNotFoundError, r"not a model directory")),
    case(model_dir_copied_without_config, Raises(ERR, r"config\.json is missing")),
    # genes at prediction time
    case(genes_reordered, Works()),
    case(
        genes_partly_missing,
        Raises(ERR, r"lacks 2 of the model's 20 genes, e\.g\. \['gene_3', 'gene_11'\].*Subset"),
    ),
    case(genes_partly_missing_at_load, Raises(ERR, r"lacks 1 of .*\['gene_0'\].*reindex")),
    case(
        duplicate_gene_names_at_query,
        Raises(ERR, r"var_names has duplicates, e\.g\. \['gene_0'\]; call .*var_names_make_unique"),
    ),
    # dtypes and library sizes
    case(named("float64", _dtype_case(np.float64)), Works()),
    case(named("float16", _dtype_case(np.float16)), Works()),
    case(named("int32", _dtype_case(np.int32)), Works()),
    case(named("int64", _dtype_case(np.int64)), Works()),
    case(named("int64_csr", _dtype_case(np.int64, "csr")), Works()),
    case(named("float64_csc", _dtype_case(np.float64, "csc")), Works()),
    case(dtypes_give_the_same_answer, Works()),
    case(extreme_library_sizes, Works()),
    # batch sizes and minibatch edge cases
    case(named("batch_size_zero", _train_option(batch_size=0)), Raises(ERR, BATCH_SIZE + " 0")),
    case(named("batch_size_negative", _train_option(batch_size=-8)), Raises(ERR, BATCH_SIZE)),
    case(
        named("predict_batch_size_zero", _inference_batch_size("predict", 0)),
        Raises(ERR, BATCH_SIZE + " 0"),
    ),
    case(
        named("latent_batch_size_negative", _inference_batch_size("get_latent", -1)),
        Raises(ERR, BATCH_SIZE + " -1"),
    ),
    case(
        named("train_size_above_one", _train_option(train_size=1.5)),
        Raises(ERR, r"train_size must be in \(0, 1\], got 1\.5"),
    ),
    case(
        named("train_size_leaves_no_training_cell", _train_option(train_size=0.001)),
        Raises(
            ERR,
            r"Only 0 cells are left for training .*train_size=0\.001.*" + TOO_FEW_TRAINING_CELLS,
        ),
    ),
    case(named("cells_257_batch_256", _one_cell_last_batch(257, 256)), Works()),
    case(named("cells_129_batch_64", _one_cell_last_batch(129, 64)), Works()),
    case(named("cells_129_batch_64_labels", _one_cell_last_batch(129, 64, labels=True)), Works()),
]


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
@pytest.mark.parametrize(("build", "expect"), CATALOGUE)
def test_bad_input(build: Builder, expect: Any, tmp_path: Path) -> None:
    act = build(tmp_path)
    expect.check(act)


def test_catalogue_is_large_and_ids_unique() -> None:
    ids = [p.id for p in CATALOGUE]
    assert len(ids) >= 25
    assert len(set(ids)) == len(ids)
