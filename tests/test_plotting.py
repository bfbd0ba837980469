"""Plots return figures built from the data they are given."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import gmmvae


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_history_plots_requested_losses(tmp_path):
    history = pd.DataFrame(
        {"train_loss": [3.0, 2.0, 1.5], "validation_loss": [3.5, 2.5, 2.0], "other": 0.0},
        index=pd.Index([0.0, 1.0, 2.0], name="epoch"),
    )
    fig = gmmvae.pl.history(history, save=str(tmp_path / "h.png"))
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["train_loss", "validation_loss"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [3.0, 2.0, 1.5])
    assert (tmp_path / "h.png").stat().st_size > 0
    # Missing keys are skipped, not an error (train_size=1.0 has no validation loss).
    fig = gmmvae.pl.history(history[["train_loss"]])
    assert len(fig.axes[0].get_lines()) == 1


def test_history_of_a_trained_model(shared_model):
    fig = gmmvae.pl.history(shared_model.history)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert len(lines[0].get_xdata()) == len(shared_model.history)


def test_latent_umap_requires_the_representation(small):
    with pytest.raises(KeyError, match=r"'X_gmmvae' is not in adata.obsm.*get_latent"):
        gmmvae.pl.latent_umap(small, color="cell_type")


def test_latent_umap_leaves_the_users_graph_and_umap_alone(shared_model, clustering_data):
    import scanpy as sc

    adata = clustering_data
    sc.pp.pca(adata, n_comps=10)
    sc.pp.neighbors(adata, n_neighbors=5)  # the user's own analysis, on PCA
    sc.tl.umap(adata)
    before = (adata.obsp["connectivities"].copy(), adata.obsm["X_umap"].copy())
    params = dict(adata.uns["neighbors"]["params"])
    shared_model.get_latent(adata)
    fig = gmmvae.pl.latent_umap(adata, color="cell_type")
    assert len(fig.axes) >= 1
    assert (adata.obsp["connectivities"] != before[0]).nnz == 0
    np.testing.assert_array_equal(adata.obsm["X_umap"], before[1])
    assert adata.uns["neighbors"]["params"] == params
    coordinates = adata.obsm["X_gmmvae_umap"].copy()
    assert coordinates.shape == (adata.n_obs, 2)
    gmmvae.pl.latent_umap(adata, color="cell_type")  # reused, not recomputed
    np.testing.assert_array_equal(adata.obsm["X_gmmvae_umap"], coordinates)


def test_synthetic_plots(tmp_path):
    import gmmvae

    cells = gmmvae.datasets.simulate(300, 40, 2, seed=0)
    real, synthetic = cells[:150].copy(), cells[150:].copy()
    fig = gmmvae.pl.synthetic_umap(real, synthetic, save=str(tmp_path / "u.png"))
    assert len(fig.axes) >= 2
    assert (tmp_path / "u.png").stat().st_size > 5_000
    fig = gmmvae.pl.synthetic_moments(real, synthetic)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("per-gene mean, r = ")
    assert float(titles[0].split("= ")[1]) > 0.5


def test_perturbation_scatter_and_violin(tmp_path):
    cells = gmmvae.datasets.simulate(200, 40, 2, n_conditions=2, seed=0)
    real = cells[cells.obs["condition"] == "stimulated"].copy()
    predicted = real.copy()
    predicted.layers["gmmvae_log_mean"] = gmmvae.metrics.log_cp10k(real.X)
    degs = [str(g) for g in real.var_names[:12]]
    fig = gmmvae.pl.perturbation_scatter(
        real, predicted, degs=degs, n_labels=5, save=str(tmp_path / "s.png")
    )
    ax = fig.axes[0]
    # A perfect prediction: R² = 1 on all genes and on the DEGs; five genes labelled.
    assert ax.get_title() == "R² all genes = 1.000, top-12 DEGs = 1.000"
    assert [t.get_text() for t in ax.texts] == degs[:5]
    assert (tmp_path / "s.png").stat().st_size > 5_000
    control = cells[cells.obs["condition"] == "control"].copy()
    fig = gmmvae.pl.perturbation_scatter(real, control, synthetic_layer=None, title="control")
    title = fig.axes[0].get_title()
    assert title.startswith("control\nR² all genes = ") and "DEGs" not in title
    assert float(title.split("= ")[1]) < 1.0
    fig = gmmvae.pl.perturbation_violin(real, predicted, gene=degs[0], control=control)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert [label.split("\n")[0] for label in labels] == ["control", "predicted", "real"]
    assert labels[2] == f"real\n(n={real.n_obs})"
    with pytest.raises(KeyError, match="not in the real"):
        gmmvae.pl.perturbation_violin(real[:, 1:].copy(), predicted, gene=degs[0])
