"""The demo workflow: phases timed one by one, and a figure whose panels share colours."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from scipy.optimize import linear_sum_assignment

import gmmvae
from gmmvae.demo import PHASES, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    adata = gmmvae.datasets.simulate(300, 60, 3, seed=1, marker_log_fold=2.5)
    out_dir = tmp_path_factory.mktemp("demo")
    result = run_demo(
        adata,
        labels_key="cell_type",
        likelihood="nb",
        label_fraction=0.2,
        max_epochs=8,
        out_dir=out_dir,
        progress_bar=False,
    )
    return result, adata


def _palette(adata, key: str) -> dict[str, str]:
    categories = adata.obs[key].cat.categories
    colors = list(adata.uns[f"{key}_colors"])
    assert len(colors) == len(categories)
    return {str(c): to_hex(colors[i]) for i, c in enumerate(categories)}


def test_demo_times_each_phase(demo):
    result, _ = demo
    assert list(result.timings) == list(PHASES)
    assert all(seconds > 0 for seconds in result.timings.values())
    assert result.seconds == pytest.approx(sum(result.timings.values()))
    # Training is the expensive part; drawing and writing are counted apart from it.
    training = result.timings["train_unsupervised"] + result.timings["train_labelled"]
    assert training > result.timings["scoring"]


def test_demo_writes_outputs_with_matched_colours(demo):
    result, adata = demo
    assert set(result.outputs) == {"h5ad", "figure"}
    written = ad.read_h5ad(result.outputs["h5ad"])
    with open(result.outputs["figure"], "rb") as figure:
        assert figure.read(8) == b"\x89PNG\r\n\x1a\n"
    for key in ("cell_type", "gmmvae_label", "gmmvae_cluster"):
        assert _palette(written, key) == _palette(adata, key)
    truth = _palette(written, "cell_type")
    labels = _palette(written, "gmmvae_label")
    for name, colour in labels.items():  # labels: the true colour, or grey when free
        assert colour == (truth[name] if name in truth else to_hex(gmmvae.pl.FREE_COLOR))
    assert "free_0" in labels
    # Clusters: the colour of the type that Hungarian matching on the cells pairs them with.
    table = pd.crosstab(written.obs["gmmvae_cluster"], written.obs["cell_type"])
    rows, cols = linear_sum_assignment(table.to_numpy(), maximize=True)
    clusters = _palette(written, "gmmvae_cluster")
    for r, c in zip(rows, cols, strict=True):
        if table.iat[r, c] > 0:
            assert clusters[str(table.index[r])] == truth[str(table.columns[c])]
    assert np.isin(list(clusters.values()), list(truth.values())).sum() >= 2
