"""Plots return figures built from the data they are given."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgb

import gmmvae
from gmmvae._labels import repel_boxes


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


# ------------------------------------------------------------------------- matched colours
TYPES = ["type_0", "type_1", "type_2", "type_3"]


@pytest.fixture
def labelled() -> pd.DataFrame:
    """Simulated cells with designed true labels, predicted labels and clusters.

    Clusters, by construction: "0" holds 66 type_0 and all 60 type_1 cells (its most common
    type is type_0), "1" the other 54 type_0 cells, "2" all type_2, "3" 100 of the 120 type_3
    cells and "4" the other 20; "5" is empty. Hungarian matching gives "0" -> type_1 and
    "1" -> type_0 (60 + 54 cells shared, against 66 + 0), "2" -> type_2, "3" -> type_3, and
    leaves "4" and "5" unmatched; taking each cluster's most common type would not.
    """
    adata = gmmvae.datasets.simulate(400, 20, 4, seed=0)
    truth = np.repeat(TYPES, [120, 60, 100, 120])
    clusters = np.repeat(["0", "1", "0", "2", "3", "4"], [66, 54, 60, 100, 100, 20])
    predicted = truth.copy()
    predicted[[0, 130, 250]] = "free_0"
    predicted[[1, 131]] = "free_1"
    predicted[[2, 3]] = "type_9"  # a label the reference does not have
    adata.obs["cell_type"] = pd.Categorical(truth)
    adata.obs["predicted"] = pd.Categorical(
        predicted, categories=["type_3", "free_1", "type_9", "type_1", "free_0", "type_0", "type_2"]
    )
    adata.obs["cluster"] = pd.Categorical(clusters, categories=[str(k) for k in range(6)])
    rng = np.random.default_rng(0)
    adata.obsm["X_gmmvae"] = rng.normal(size=(adata.n_obs, 4)).astype(np.float32)
    adata.obsm["X_gmmvae_umap"] = rng.normal(size=(adata.n_obs, 2))  # reused: no UMAP run
    return adata


def _palette(adata, key: str) -> dict[str, str]:
    """{category: hex colour} from adata.uns[f"{key}_colors"], as scanpy reads it."""
    categories = adata.obs[key].cat.categories
    colors = adata.uns[f"{key}_colors"]
    assert len(colors) == len(categories)
    return {str(c): to_hex(colors[i]) for i, c in enumerate(categories)}


def _is_grey(color: str) -> bool:
    r, g, b = to_rgb(color)
    return max(r, g, b) - min(r, g, b) < 1e-6


def test_match_colors_predicted_labels_reuse_the_true_colours(labelled):
    adata = labelled
    gmmvae.pl.match_colors(adata, reference="cell_type", keys=["predicted"])
    truth, predicted = _palette(adata, "cell_type"), _palette(adata, "predicted")
    assert len(set(truth.values())) == 4
    assert not any(_is_grey(c) for c in truth.values())  # no type looks like a free component
    for name in TYPES:  # same name, same colour, whatever the category order
        assert predicted[name] == truth[name]
    assert predicted["free_0"] == predicted["free_1"] == to_hex(gmmvae.pl.FREE_COLOR)
    assert _is_grey(predicted["free_0"])
    assert predicted["type_9"] not in {*truth.values(), predicted["free_0"]}


def test_match_colors_clusters_take_their_hungarian_label(labelled):
    adata = labelled
    gmmvae.pl.match_colors(adata, reference="cell_type", keys="cluster")
    truth, clusters = _palette(adata, "cell_type"), _palette(adata, "cluster")
    expected = {"0": "type_1", "1": "type_0", "2": "type_2", "3": "type_3"}
    for cluster, name in expected.items():
        assert clusters[cluster] == truth[name], cluster
    # Unmatched clusters: colours of their own, not a type's, not grey, not each other's.
    spare = {clusters["4"], clusters["5"]}
    assert len(spare) == 2
    assert not spare & set(truth.values())
    assert not any(_is_grey(c) for c in spare)


def test_match_colors_ignores_cells_without_a_label(labelled):
    adata = labelled
    truth = adata.obs["cell_type"].copy()
    truth[:130] = np.nan  # the cells of clusters "0" and "1" lose their true label
    adata.obs["cell_type"] = truth
    gmmvae.pl.match_colors(adata, reference="cell_type", keys=["cluster"])
    colours, clusters = _palette(adata, "cell_type"), _palette(adata, "cluster")
    assert clusters["2"] == colours["type_2"] and clusters["3"] == colours["type_3"]
    # The 50 type_1 cells left in cluster "0" now match it to type_1; "1" has no labelled cell.
    assert clusters["0"] == colours["type_1"]
    assert clusters["1"] not in colours.values()
    adata.obs["cluster_codes"] = adata.obs["cluster"].cat.codes  # numbers, not labels
    with pytest.raises(TypeError, match=r"make it categorical.*astype\(str\)"):
        gmmvae.pl.match_colors(adata, reference="cell_type", keys=["cluster_codes"])


def test_match_colors_keeps_a_users_palette_and_makes_strings_categorical(labelled):
    adata = labelled
    adata.uns["cell_type_colors"] = ["red", "green", "#7f7f7f", "purple"]  # tab10's grey
    adata.obs["predicted"] = adata.obs["predicted"].astype(str)  # plain strings
    gmmvae.pl.match_colors(adata, reference="cell_type", keys=["cell_type", "predicted"])
    assert isinstance(adata.obs["predicted"].dtype, pd.CategoricalDtype)
    truth, predicted = _palette(adata, "cell_type"), _palette(adata, "predicted")
    kept = {"type_0": "red", "type_1": "green", "type_3": "purple"}
    assert {name: truth[name] for name in kept} == {k: to_hex(c) for k, c in kept.items()}
    # The grey is replaced: grey means a free component.
    assert not _is_grey(truth["type_2"]) and truth["type_2"] not in map(to_hex, kept.values())
    assert all(predicted[name] == truth[name] for name in TYPES)
    with pytest.raises(KeyError, match=r"'nope' is not a column of adata\.obs"):
        gmmvae.pl.match_colors(adata, reference="nope", keys="predicted")


def _panel_colours(fig, adata) -> dict[str, np.ndarray]:
    """{panel title: hex colour of each cell, in obs order} read from the drawn scatters."""
    coords = adata.obsm["X_gmmvae_umap"]
    index = {tuple(np.round(xy, 6)): i for i, xy in enumerate(coords)}
    panels = {}
    for ax in fig.axes:
        points = [c for c in ax.collections if len(c.get_offsets()) == adata.n_obs]
        if not points:
            continue  # a colour bar or legend axis
        (scatter,) = points
        cells = [index[tuple(np.round(xy, 6))] for xy in np.asarray(scatter.get_offsets())]
        colours = np.empty(adata.n_obs, dtype=object)
        colours[cells] = [to_hex(c) for c in scatter.get_facecolors()]
        panels[ax.get_title()] = colours
    return panels


def test_latent_umap_panels_share_colours_with_a_reference(labelled, tmp_path):
    adata = labelled
    keys = ["cell_type", "predicted", "cluster"]
    fig = gmmvae.pl.latent_umap(
        adata, color=keys, reference="cell_type", save=str(tmp_path / "umap.png")
    )
    assert (tmp_path / "umap.png").stat().st_size > 10_000
    panels = _panel_colours(fig, adata)
    assert set(panels) == set(keys)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    predicted = adata.obs["predicted"].astype(str).to_numpy()
    clusters = adata.obs["cluster"].astype(str).to_numpy()
    # One colour per type in the truth panel, and distinct types get distinct colours.
    type_colour = {}
    for name in TYPES:
        (colour,) = set(panels["cell_type"][truth == name])
        type_colour[name] = colour
    assert len(set(type_colour.values())) == len(TYPES)
    # Predicted labels: the same colour as the same type in the truth panel; free cells grey.
    same = predicted == truth
    np.testing.assert_array_equal(panels["predicted"][same], panels["cell_type"][same])
    free = np.char.startswith(predicted.astype(str), "free_")
    assert free.sum() == 5
    assert all(_is_grey(c) for c in panels["predicted"][free])
    # Clusters: the colour of the type Hungarian matching gives them.
    for cluster, name in {"0": "type_1", "1": "type_0", "2": "type_2", "3": "type_3"}.items():
        assert set(panels["cluster"][clusters == cluster]) == {type_colour[name]}
    assert set(panels["cluster"][clusters == "4"]).isdisjoint(type_colour.values())


def test_latent_umap_without_a_reference_keeps_its_own_colours(labelled):
    adata = labelled
    fig = gmmvae.pl.latent_umap(adata, color=["cell_type", "cluster"])
    panels = _panel_colours(fig, adata)
    # scanpy's defaults: cluster "0" and type_0 both get the first colour, although
    # cluster "0" is mostly type_1 cells; matching is only done on request.
    assert panels["cluster"][adata.obs["cluster"] == "0"][0] == panels["cell_type"][0]


# ------------------------------------------------------------------ labels of the scatter
def _overlapping_pairs(texts, renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def test_perturbation_scatter_labels_do_not_overlap(tmp_path):
    cells = gmmvae.datasets.simulate(200, 40, 2, n_conditions=2, seed=0)
    real = cells[cells.obs["condition"] == "stimulated"].copy()
    counts = real.X.toarray()
    counts[:, 1:8] = counts[:, [0]]  # eight genes on one point: their labels all start there
    counts[:, 9] = counts[:, 8]  # and two more on another
    real.X = type(real.X)(counts)
    predicted = real.copy()
    predicted.layers["gmmvae_log_mean"] = gmmvae.metrics.log_cp10k(real.X)
    degs = [str(g) for g in real.var_names[:12]]
    fig = gmmvae.pl.perturbation_scatter(
        real, predicted, degs=degs, n_labels=10, save=str(tmp_path / "s.png")
    )
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == degs[:10]
    points = np.array([t.xy for t in ax.texts])
    assert len(np.unique(points, axis=0)) == 2  # the premise: labels would pile up unmoved
    for dpi in (100, 150):  # offsets are in points: no overlap at the saved dpi either
        fig.set_dpi(dpi)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert _overlapping_pairs(ax.texts, renderer) == []
        frame = ax.get_window_extent(renderer)
        for text in ax.texts:  # inside the axes
            box = text.get_window_extent(renderer)
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1
            assert frame.y0 <= box.y0 and box.y1 <= frame.y1
    # Moved labels are joined to their points by leader lines that start at the points.
    (leaders,) = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    starts = {tuple(np.round(segment[0], 6)) for segment in leaders.get_segments()}
    assert starts <= {tuple(np.round(p, 6)) for p in points}
    assert len(leaders.get_segments()) >= 7


def test_repel_boxes_separates_boxes_deterministically():
    rng = np.random.default_rng(0)
    anchors = rng.uniform(40, 60, (15, 2))  # fifteen labels crowded in a small area
    size = np.array([30.0, 8.0])
    boxes = np.hstack([anchors, anchors + size])
    bounds = np.array([0.0, 0.0, 200.0, 150.0])
    moved = repel_boxes(boxes, anchors, bounds=bounds, pad=1.0)
    np.testing.assert_array_equal(moved, repel_boxes(boxes, anchors, bounds=bounds, pad=1.0))
    np.testing.assert_allclose(moved[:, 2:] - moved[:, :2], np.tile(size, (15, 1)))
    for a, b in itertools.combinations(moved, 2):
        assert (
            a[2] + 1.0 <= b[0] + 1e-9
            or b[2] + 1.0 <= a[0] + 1e-9
            or (a[3] + 1.0 <= b[1] + 1e-9 or b[3] + 1.0 <= a[1] + 1e-9)
        )
    assert (moved[:, :2] >= bounds[:2]).all() and (moved[:, 2:] <= bounds[2:]).all()
