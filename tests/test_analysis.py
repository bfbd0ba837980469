"""Decoded expression, differential expression, posterior predictive counts and their plots.

The data plant known marker genes per type (and a known batch effect), so that rankings,
directions and batch correction can be checked against the truth.
"""

from __future__ import annotations

import inspect

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse
from sklearn.metrics import average_precision_score

import gmmvae
from gmmvae import GMMVAEInputError, MissingKeyError, analysis, de, plotting_de

FAST = {"progress_bar": False, "batch_size": 64}
N_MARKERS = 6


def planted(
    n_cells: int = 450, n_genes: int = 80, n_types: int = 3, n_batches: int = 1, seed: int = 0
) -> AnnData:
    """NB counts where type t multiplies its own ``N_MARKERS`` genes by e^2 (disjoint sets,
    in ``uns["planted"]``) and each batch scales every gene by a random factor."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, n_genes)
    order = rng.permutation(n_genes)
    effect = np.zeros((n_types, n_genes))
    markers = {}
    for t in range(n_types):
        genes = order[t * N_MARKERS : (t + 1) * N_MARKERS]
        effect[t, genes] = 2.0
        markers[f"type_{t}"] = [f"g{i}" for i in sorted(genes)]
    batch_effect = rng.normal(0.0, 0.5, (n_batches, n_genes))
    types = rng.integers(0, n_types, n_cells)
    batches = rng.integers(0, n_batches, n_cells)
    logits = base + effect[types] + batch_effect[batches]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mean = p * rng.lognormal(np.log(600.0), 0.3, n_cells)[:, None]
    counts = rng.poisson(rng.gamma(5.0, mean / 5.0)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{t}" for t in types]),
            "batch": pd.Categorical([f"batch_{b}" for b in batches]),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    adata = AnnData(sparse.csr_matrix(counts), obs=obs)
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.uns["planted"] = markers
    return adata


def _trained(adata: AnnData, **kwargs) -> gmmvae.GMMVAE:
    model = gmmvae.GMMVAE(adata, n_components=3, seed=0, **kwargs)
    # A higher learning rate than the default: a short run that still separates the types.
    return model.train(40, seed=0, lr=3e-3, **FAST)


@pytest.fixture(scope="module")
def one_batch() -> tuple[gmmvae.GMMVAE, AnnData]:
    """Unsupervised K=3 model set up with a batch_key whose column has a single batch."""
    adata = planted()
    gmmvae.GMMVAE.setup_anndata(adata, batch_key="batch")
    return _trained(adata), adata


@pytest.fixture(scope="module")
def two_batches() -> tuple[gmmvae.GMMVAE, AnnData]:
    """Unsupervised K=3 model on two batches with a planted batch effect."""
    adata = planted(n_batches=2, seed=1)
    gmmvae.GMMVAE.setup_anndata(adata, batch_key="batch")
    return _trained(adata), adata


@pytest.fixture(scope="module")
def gaussian() -> tuple[gmmvae.GMMVAE, AnnData]:
    """Gaussian-likelihood model on log1p-CP10k values, no batch or condition."""
    adata = planted(seed=2)
    adata.X = gmmvae.metrics.log_cp10k(adata.X)
    gmmvae.GMMVAE.setup_anndata(adata)
    return _trained(adata, likelihood="gaussian"), adata


@pytest.fixture(scope="module")
def one_vs_rest(one_batch) -> pd.DataFrame:
    model, _ = one_batch
    return model_de(model, groupby="cell_type", n_samples=400)


def model_de(model, **kwargs) -> pd.DataFrame:
    return de.differential_expression(model, **kwargs)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------- normalised expression
def test_normalized_expression_sums_to_library_size(one_batch):
    model, adata = one_batch
    frame = analysis.get_normalized_expression(model)
    assert frame.shape == (adata.n_obs, adata.n_vars)
    assert list(frame.index) == list(adata.obs_names)
    assert list(frame.columns) == list(adata.var_names)
    np.testing.assert_allclose(frame.sum(1), 1e4, rtol=1e-4)
    latent = analysis.get_normalized_expression(model, library_size="latent", n_samples=2)
    library = np.asarray(adata.X.sum(1)).ravel()
    np.testing.assert_allclose(latent.sum(1), library, rtol=1e-4)
    # A gene subset is the same columns of the full result (same seed, same draws).
    subset = analysis.get_normalized_expression(model, gene_list=["g5", "g1"])
    np.testing.assert_allclose(subset, frame[["g5", "g1"]], rtol=1e-5)
    some = analysis.get_normalized_expression(model, indices=[3, 0], gene_list=["g5"])
    assert list(some.index) == ["cell_3", "cell_0"] and list(some.columns) == ["g5"]


def test_normalized_expression_draws_layer_and_markers(one_batch):
    model, adata = one_batch
    draws = analysis.get_normalized_expression(model, n_samples=4, return_mean=False, seed=3)
    assert isinstance(draws, np.ndarray) and draws.shape == (4, adata.n_obs, adata.n_vars)
    assert not np.allclose(draws[0], draws[1])  # each draw has its own z
    mean = analysis.get_normalized_expression(model, n_samples=4, seed=3)
    np.testing.assert_allclose(mean.to_numpy(), draws.mean(0), rtol=1e-4, atol=1e-3)
    # Decoded expression is higher for a type's planted markers in that type.
    types = adata.obs["cell_type"].to_numpy()
    for t, genes in adata.uns["planted"].items():
        ratio = mean.loc[types == t, genes].mean() / mean.loc[types != t, genes].mean()
        assert (ratio > 2.0).all(), (t, ratio)
    copy = adata.copy()
    frame = analysis.get_normalized_expression(model, copy, key_added="normalized")
    np.testing.assert_array_equal(copy.layers["normalized"], frame.to_numpy())
    assert copy.uns["normalized"]["params"]["library_size"] == 1e4
    with pytest.raises(GMMVAEInputError, match="indices=None"):
        analysis.get_normalized_expression(model, copy, indices=[0, 1], key_added="x")


def test_transform_batch_changes_a_two_batch_model(two_batches):
    model, adata = two_batches
    own = analysis.get_normalized_expression(model).to_numpy()
    b0 = analysis.get_normalized_expression(model, transform_batch="batch_0").to_numpy()
    b1 = analysis.get_normalized_expression(model, transform_batch="batch_1").to_numpy()
    assert np.abs(b0 - b1).max() > 10.0  # per 10^4 counts
    in_b0 = (adata.obs["batch"] == "batch_0").to_numpy()
    np.testing.assert_allclose(b0[in_b0], own[in_b0], rtol=1e-5)
    np.testing.assert_allclose(b1[~in_b0], own[~in_b0], rtol=1e-5)
    both = analysis.get_normalized_expression(model, transform_batch=["batch_0", "batch_1"])
    np.testing.assert_allclose(both.to_numpy(), (b0 + b1) / 2, rtol=1e-4, atol=1e-3)


def test_transform_batch_does_nothing_on_a_one_batch_model(one_batch):
    model, _ = one_batch
    own = analysis.get_normalized_expression(model)
    moved = analysis.get_normalized_expression(model, transform_batch="batch_0")
    np.testing.assert_array_equal(own.to_numpy(), moved.to_numpy())


def test_transform_condition(conditional_model):
    model, adata = conditional_model
    own = analysis.get_normalized_expression(model).to_numpy()
    stim = analysis.get_normalized_expression(model, transform_condition="stimulated").to_numpy()
    treated = (adata.obs["condition"] == "stimulated").to_numpy()
    np.testing.assert_allclose(stim[treated], own[treated], rtol=1e-5)
    assert np.abs(stim[~treated] - own[~treated]).max() > 1.0


# ------------------------------------------------------------------ posterior predictive
def test_posterior_predictive_counts(one_batch):
    model, adata = one_batch
    x = analysis.posterior_predictive_sample(model, seed=1)
    assert isinstance(x, sparse.csr_matrix) and x.shape == adata.shape
    values = x.toarray()
    assert (values >= 0).all() and (values == np.round(values)).all() and values.any()
    again = analysis.posterior_predictive_sample(model, seed=1)
    np.testing.assert_array_equal(again.toarray(), values)
    draws = analysis.posterior_predictive_sample(
        model, n_samples=3, indices=np.arange(10), gene_list=["g2", "g7"], seed=1
    )
    assert len(draws) == 3 and all(d.shape == (10, 2) for d in draws)
    assert not np.array_equal(draws[0].toarray(), draws[1].toarray())
    # Samples look like the data: per-gene means agree on the log scale.
    real = np.asarray(adata.X.mean(0)).ravel()
    r = np.corrcoef(np.log1p(real), np.log1p(values.mean(0)))[0, 1]
    assert r > 0.95, r


# ------------------------------------------------------------------- differential expression
def test_de_ranks_planted_markers_first(one_vs_rest, one_batch):
    _, adata = one_batch
    chance = N_MARKERS / adata.n_vars
    assert list(pd.unique(one_vs_rest["group1"])) == ["type_0", "type_1", "type_2"]
    for group, part in one_vs_rest.groupby("group1"):
        assert len(part) == adata.n_vars and set(part["group2"]) == {"Rest"}
        truth = part.index.isin(adata.uns["planted"][group])
        score = part["proba_de"] * (part["lfc_mean"] > 0)  # up in the group
        ap = average_precision_score(truth, score)
        assert ap > 0.8 > 5 * chance, (group, ap)
        up = part.index[part["lfc_mean"] > 0][:N_MARKERS]
        assert np.isin(up, adata.uns["planted"][group]).mean() >= 5 / 6
        called = part.index[part["is_de_fdr_0.05"]]
        assert set(adata.uns["planted"][group]) <= set(called)


def test_de_layout(one_vs_rest):
    expected = [
        "proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "pseudocounts",
        "delta", "lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max", "lfc_ci_low",
        "lfc_ci_high", "raw_mean1", "raw_mean2", "non_zeros_proportion1",
        "non_zeros_proportion2", "raw_normalized_mean1", "raw_normalized_mean2",
        "is_de_fdr_0.05", "comparison", "group1", "group2",
    ]  # fmt: skip
    assert list(one_vs_rest.columns) == expected
    part = one_vs_rest[one_vs_rest["comparison"] == "type_0 vs Rest"]
    np.testing.assert_allclose(part["proba_de"] + part["proba_not_de"], 1.0)
    assert (part["lfc_ci_low"] <= part["lfc_median"]).all()
    assert (part["lfc_median"] <= part["lfc_ci_high"]).all()
    assert (part["lfc_min"] <= part["lfc_ci_low"]).all()
    assert np.all(np.diff(part["proba_de"].to_numpy()) <= 0)  # sorted by proba_de
    for column in ("non_zeros_proportion1", "non_zeros_proportion2"):
        assert part[column].between(0, 1).all()
    np.testing.assert_allclose(part["scale1"].sum(), 1.0, rtol=1e-4)  # gene proportions
    assert one_vs_rest.attrs["delta"] == 0.25 and one_vs_rest.attrs["groupby"] == "cell_type"


def test_de_raw_statistics_match_the_data(one_vs_rest, one_batch):
    _, adata = one_batch
    counts = adata.X.toarray()
    in_group = (adata.obs["cell_type"] == "type_1").to_numpy()
    part = one_vs_rest[one_vs_rest["group1"] == "type_1"].loc[adata.var_names]
    np.testing.assert_allclose(part["raw_mean1"], counts[in_group].mean(0), rtol=1e-6)
    np.testing.assert_allclose(part["raw_mean2"], counts[~in_group].mean(0), rtol=1e-6)
    share = (counts[~in_group] > 0).mean(0)
    np.testing.assert_allclose(part["non_zeros_proportion2"], share, rtol=1e-6)
    cp10k = counts / counts.sum(1, keepdims=True) * 1e4
    np.testing.assert_allclose(part["raw_normalized_mean1"], cp10k[in_group].mean(0), rtol=1e-6)


def test_fdr_calls_are_the_top_of_the_ranking(one_vs_rest):
    for _, part in one_vs_rest.groupby("comparison"):
        p = part["proba_de"].to_numpy()
        called = part["is_de_fdr_0.05"].to_numpy()
        assert called.any() and not called.all()
        assert p[called].min() >= p[~called].max()
        assert (1 - p[called]).mean() <= 0.05
        next_best = np.sort(p[~called])[::-1][0]
        assert (np.sum(1 - p[called]) + 1 - next_best) / (called.sum() + 1) > 0.05


def test_fdr_calls_by_hand():
    p = np.array([0.5, 0.99, 0.1, 0.98, 0.9])
    # top 3 (0.99, 0.98, 0.9): mean(1 - p) = 0.043 <= 0.05; top 4 adds 0.5: 0.1575 > 0.05
    np.testing.assert_array_equal(de.fdr_de_calls(p, 0.05), [False, True, False, True, True])
    np.testing.assert_array_equal(de.fdr_de_calls(p, 0.01), [False, True, False, False, False])
    assert not de.fdr_de_calls(np.array([0.2, 0.3]), 0.05).any()


def test_de_between_components(one_batch):
    model, adata = one_batch
    result = model_de(model, n_samples=300)  # groupby=None: the model's components
    model.predict(adata)
    majority = pd.crosstab(adata.obs["gmmvae_label"], adata.obs["cell_type"]).idxmax(1)
    assert set(result["group1"]) == set(model.component_names)
    for component, part in result.groupby("group1"):
        up = part.index[part["lfc_mean"] > 0][:N_MARKERS]
        planted_genes = adata.uns["planted"][majority[component]]
        assert np.isin(up, planted_genes).mean() >= 5 / 6, component


def test_de_pairwise_direction_and_vanilla_mode(one_batch):
    model, adata = one_batch
    pair = model_de(model, groupby="cell_type", group1="type_0", group2="type_1", n_samples=300)
    assert set(pair["comparison"]) == {"type_0 vs type_1"} and len(pair) == adata.n_vars
    markers = adata.uns["planted"]
    assert (pair.loc[markers["type_0"], "lfc_mean"] > 1.0).all()
    assert (pair.loc[markers["type_1"], "lfc_mean"] < -1.0).all()
    vanilla = model_de(
        model, groupby="cell_type", group1="type_0", group2="type_1", mode="vanilla", n_samples=300
    )
    assert {"proba_m1", "proba_m2", "bayes_factor"} <= set(vanilla.columns)
    assert not any(c.startswith("is_de_fdr") for c in vanilla.columns)
    assert (vanilla.loc[markers["type_0"], "proba_m1"] > 0.9).all()
    assert (vanilla.loc[markers["type_1"], "proba_m1"] < 0.1).all()


def test_batch_correction_removes_batch_differences(two_batches):
    model, _ = two_batches
    options = {"groupby": "batch", "group1": "batch_0", "group2": "batch_1", "n_samples": 300}
    raw = model_de(model, **options)
    corrected = model_de(model, batch_correction=True, **options)
    assert raw["is_de_fdr_0.05"].sum() >= 10  # the planted batch effect is found ...
    assert corrected["is_de_fdr_0.05"].sum() <= 2  # ... and removed by batch correction
    assert corrected["lfc_mean"].abs().mean() < 0.3 * raw["lfc_mean"].abs().mean()


def test_gaussian_model(gaussian):
    model, adata = gaussian
    a = analysis.get_normalized_expression(model)
    b = analysis.get_normalized_expression(model, library_size=10.0)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())  # decoder mean, no library
    data_mean = np.asarray(adata.X.mean(0)).ravel()
    assert np.corrcoef(a.mean(0), data_mean)[0, 1] > 0.95  # on the data's log scale
    result = model_de(model, groupby="cell_type", group1="type_0", n_samples=300)
    assert result["raw_normalized_mean1"].isna().all()
    truth = result.index.isin(adata.uns["planted"]["type_0"])
    assert average_precision_score(truth, result["proba_de"] * (result["lfc_mean"] > 0)) > 0.8
    draws = analysis.posterior_predictive_sample(model, n_samples=2)
    assert isinstance(draws[0], np.ndarray) and draws[0].shape == adata.shape


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: model_de(m, groupby="cell_type", group1="type_9"), "groups with cells are"),
        (lambda m: model_de(m, group1="type_0"), "model.component_names"),
        (lambda m: model_de(m, groupby="cell_typ"), "Did you mean 'cell_type'"),
        (lambda m: model_de(m, groupby="cell_type", group1="type_0", group2="type_0"), "two"),
        (lambda m: model_de(m, groupby="batch"), "at least two"),
        (lambda m: model_de(m, mode="bayes"), "mode"),
        (lambda m: model_de(m, delta=-1), "delta must be"),
        (lambda m: model_de(m, n_samples=0), "positive integer"),
        (lambda m: analysis.get_normalized_expression(m, transform_batch="b9"), "known ones"),
        (lambda m: analysis.get_normalized_expression(m, transform_condition="x"), "condition_key"),
        (lambda m: analysis.get_normalized_expression(m, gene_list=["g1", "CD3D"]), "gene_names"),
        (lambda m: analysis.get_normalized_expression(m, library_size="big"), "'latent'"),
        (lambda m: analysis.get_normalized_expression(m, indices=[10_000]), "indices"),
        (lambda m: analysis.posterior_predictive_sample(m, gene_list=["gX"]), "gene_names"),
    ],
)
def test_bad_input_says_how_to_fix_it(one_batch, call, match):
    model, _ = one_batch
    with pytest.raises(GMMVAEInputError, match=match):
        call(model)


def test_missing_gene_is_a_key_error_and_untrained_model_refused(one_batch, gaussian):
    model, adata = one_batch
    with pytest.raises(MissingKeyError):
        analysis.get_normalized_expression(model, gene_list=["nope"])
    with pytest.raises(GMMVAEInputError, match="batch_key"):
        analysis.get_normalized_expression(gaussian[0], transform_batch="batch_0")
    fresh = gmmvae.GMMVAE(adata, n_components=3)
    with pytest.raises(GMMVAEInputError, match=r"model.train\(\)"):
        model_de(fresh)


def test_functions_bind_as_methods():
    # model first, then adata, then keyword-only options, all annotated (as GMMVAE methods).
    for f in (
        analysis.get_normalized_expression,
        analysis.posterior_predictive_sample,
        de.differential_expression,
    ):
        params = list(inspect.signature(f).parameters.values())
        assert [p.name for p in params[:2]] == ["model", "adata"]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
        assert all(p.annotation is not inspect.Parameter.empty for p in params[1:])
        assert "Returns" in inspect.getdoc(f)


# -------------------------------------------------------------------------------- plots
def test_de_volcano(one_vs_rest, tmp_path):
    fig = plotting_de.de_volcano(one_vs_rest, save=str(tmp_path / "v.png"))
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == [f"type_{t} vs Rest" for t in range(3)]
    red = shown[0].collections[1]  # the DE genes
    n_called = one_vs_rest.query("comparison == 'type_0 vs Rest'")["is_de_fdr_0.05"].sum()
    assert len(red.get_offsets()) == n_called
    assert (tmp_path / "v.png").stat().st_size > 0
    one = plotting_de.de_volcano(one_vs_rest, comparison="type_1 vs Rest", y="bayes_factor")
    assert len(one.axes) == 1 and one.axes[0].get_ylabel() == "bayes_factor"
    with pytest.raises(GMMVAEInputError, match="its comparisons are"):
        plotting_de.de_volcano(one_vs_rest, comparison="type_7 vs Rest")


def test_marker_dotplot(one_vs_rest, one_batch):
    _, adata = one_batch
    fig = plotting_de.marker_dotplot(adata, one_vs_rest, "cell_type", n_genes=3)
    ax = fig.axes[0]
    genes = [t.get_text() for t in ax.get_xticklabels()]
    assert len(genes) == 9 and len(set(genes)) == 9
    for t in range(3):  # each block holds its type's planted markers
        assert set(genes[3 * t : 3 * t + 3]) <= set(adata.uns["planted"][f"type_{t}"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["type_0", "type_1", "type_2"]
    sizes = ax.collections[0].get_sizes().reshape(3, 9)
    assert sizes[0, :3].mean() > sizes[1:, :3].mean()  # markers expressed in more cells
    fig = plotting_de.marker_dotplot(adata, {"T": ["g1", "g2"]}, "cell_type")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["g1", "g2"]
    with pytest.raises(MissingKeyError, match=r"not in adata\.var_names"):
        plotting_de.marker_dotplot(adata, ["g1", "CD3D"], "cell_type")


def test_marker_dotplot_skips_genes_of_few_cells(one_batch):
    _, adata = one_batch
    genes = list(adata.var_names[:4])
    frame = pd.DataFrame(
        {
            "lfc_mean": [9.0, 2.0, 1.5, 1.0],
            "bayes_factor": [18.0, 18.0, 1.0, 18.0],
            "non_zeros_proportion1": [0.02, 0.7, 0.6, 0.5],
            "group1": "type_0",
        },
        index=genes,
    )

    def shown(**kwargs):
        fig = plotting_de.marker_dotplot(adata, frame, "cell_type", n_genes=2, **kwargs)
        return [t.get_text() for t in fig.axes[0].get_xticklabels()]

    # The gene seen in 2 % of cells and the uncertain one are left out by default.
    assert shown() == [genes[1], genes[3]]
    assert shown(min_fraction=None, min_bayes_factor=None) == genes[:2]
    with pytest.raises(MissingKeyError, match="min_fraction=None"):
        plotting_de.marker_dotplot(adata, frame.drop(columns="non_zeros_proportion1"), "cell_type")
