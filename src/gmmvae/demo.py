"""The demo workflow behind ``gmmvae demo``: cluster, annotate with few labels, score, plot."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from anndata import AnnData

from gmmvae import metrics
from gmmvae.datasets import mask_labels
from gmmvae.model import GMMVAE
from gmmvae.options import Likelihood, Variant

#: The phases of a demo run, in order, and how the result table names them.
PHASES = {
    "train_unsupervised": "training, labels hidden",
    "train_labelled": "training with labels",
    "scoring": "predicting and scoring",
    "plotting_writing": "UMAP, figure and h5ad",
}


@dataclass
class DemoResult:
    """Scores and outputs of one demo run.

    ``timings`` holds the wall-clock seconds of each phase (the keys of :data:`PHASES`):
    setting up and training the model with labels hidden, setting up and training it with
    labels, predicting with both models and scoring, and computing the UMAP, drawing the
    figure and writing the h5ad. ``seconds`` is their sum, the whole run.
    """

    n_cells: int
    n_genes: int
    n_types: int
    clustering: dict[str, float]
    components_used: int
    semi_supervised: dict[str, float]
    label_fraction: float
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


class _Stopwatch:
    """Seconds spent in named phases: ``with watch("name"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed


def run_demo(
    adata: AnnData,
    *,
    labels_key: str,
    likelihood: Likelihood,
    layer: str | None = None,
    variant: Variant | None = None,
    label_fraction: float = 0.1,
    max_epochs: int | None = None,
    seed: int = 0,
    out_dir: str | Path = "gmmvae_demo",
    progress_bar: bool = True,
) -> DemoResult:
    """Cluster with labels hidden, then train with a stratified ``label_fraction`` of labels.

    Writes ``annotated.h5ad`` (latent in ``obsm["X_gmmvae"]``, predictions in ``obs``, clusters
    in ``obs["gmmvae_cluster"]``, matched colours in ``uns[f"{key}_colors"]``) and
    ``latent_umap.png`` (true labels, predicted labels and clusters, in the true labels'
    colours) into ``out_dir``; the result holds the scores and the seconds of each phase.
    """
    watch = _Stopwatch()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = adata.obs[labels_key].astype(str)
    n_types = truth.nunique()
    options = {"likelihood": likelihood}
    if variant is not None:
        options["variant"] = variant

    # 1. Clustering: labels hidden, K = number of types.
    with watch("train_unsupervised"):
        GMMVAE.setup_anndata(adata, layer=layer)
        clusterer = GMMVAE(adata, n_components=n_types, seed=seed, **options)
        clusterer.train(max_epochs, seed=seed, progress_bar=progress_bar)
    with watch("scoring"):
        clusterer.predict(adata, key_added="gmmvae_cluster")
        clusters = adata.obs["gmmvae_cluster_label"]
        clustering = metrics.clustering_scores(truth, clusters)
        components_used = int((clusters.value_counts() > 0).sum())
        adata.obs["gmmvae_cluster"] = clusters

    # 2. Semi-supervised: keep a stratified fraction of labels, score on the hidden cells.
    with watch("train_labelled"):
        adata.obs["demo_labels"] = mask_labels(truth, label_fraction, seed=seed)
        GMMVAE.setup_anndata(adata, layer=layer, labels_key="demo_labels")
        annotator = GMMVAE(adata, seed=seed, **options)
        annotator.train(max_epochs, seed=seed, progress_bar=progress_bar)
    with watch("scoring"):
        annotator.predict(adata)
        annotator.get_latent(adata)
        hidden = (adata.obs["demo_labels"] == "Unknown").to_numpy()
        predicted = adata.obs["gmmvae_label"].astype(str)
        correct = (predicted == truth).to_numpy()
        semi = {
            "accuracy": metrics.accuracy(truth[hidden], predicted[hidden]),
            "macro_f1": metrics.macro_f1(truth[hidden], predicted[hidden]),
            "ece": metrics.expected_calibration_error(
                adata.obs["gmmvae_confidence"].to_numpy()[hidden], correct[hidden]
            ),
        }

    outputs = {"h5ad": str(out_dir / "annotated.h5ad"), "figure": str(out_dir / "latent_umap.png")}
    with watch("plotting_writing"):
        _write_outputs(adata, labels_key, outputs)
    timings = {phase: watch.seconds.get(phase, 0.0) for phase in PHASES}
    return DemoResult(
        n_cells=adata.n_obs,
        n_genes=adata.n_vars,
        n_types=n_types,
        clustering=clustering,
        components_used=components_used,
        semi_supervised=semi,
        label_fraction=label_fraction,
        seconds=sum(timings.values()),
        timings=timings,
        outputs=outputs,
    )


def _write_outputs(adata: AnnData, labels_key: str, outputs: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless machines; no-op where a backend is set
    import matplotlib.pyplot as plt

    from gmmvae.plotting import latent_umap

    # Predicted labels and clusters in the true labels' colours, so the panels read together.
    fig = latent_umap(
        adata, color=[labels_key, "gmmvae_label", "gmmvae_cluster"], reference=labels_key
    )
    fig.savefig(outputs["figure"], dpi=110, bbox_inches="tight")
    plt.close(fig)
    adata.obs["gmmvae_confidence"] = adata.obs["gmmvae_confidence"].astype(np.float32)
    adata.write_h5ad(outputs["h5ad"])
