"""In-run baselines on the same data as benchmarks/variants.py: PCA + k-means / Leiden
(clustering) and logistic regression on 50 PCs (semi-supervised, 10 % stratified labels).

    python benchmarks/baselines.py [--seeds 0 1 2]

Needs the `bench` extra (igraph, leidenalg) for Leiden.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scanpy as sc
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression

import gmmvae
from common import ResultStore, load_dataset, mean_sd_table, write_section
from gmmvae import metrics
from peers import leiden_with_k

DATASETS = ("pbmc68k_reduced", "kang_pbmc_2k")


def log_pca(adata, likelihood: str, seed: int) -> np.ndarray:
    """50 PCs of log1p-CP10k data (log data as it ships for the Gaussian datasets)."""
    adata = adata.copy()
    if likelihood != "gaussian":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=50, random_state=seed)
    return adata.obsm["X_pca"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    store = ResultStore("baselines")
    for name in DATASETS:
        adata, labels_key, likelihood = load_dataset(name)
        truth = adata.obs[labels_key].astype(str)
        k = truth.nunique()
        for seed in args.seeds:
            if store.done(dataset=name, seed=seed):
                continue
            start = time.perf_counter()
            pcs = log_pca(adata, likelihood, seed)
            pca_seconds = time.perf_counter() - start
            t = time.perf_counter()
            km = KMeans(k, n_init=10, random_state=seed).fit_predict(pcs)
            km_row = {
                "method": "PCA(50) + k-means",
                "task": "clustering",
                "seconds": pca_seconds + time.perf_counter() - t,
                **metrics.clustering_scores(truth, km),
            }
            t = time.perf_counter()
            ld = leiden_with_k(pcs, k, seed)
            ld_row = {
                "method": "PCA(50) + Leiden",
                "task": "clustering",
                "seconds": pca_seconds + time.perf_counter() - t,
                **metrics.clustering_scores(truth, ld),
            }
            masked = gmmvae.datasets.mask_labels(truth, 0.1, seed=seed)
            hidden = (masked == "Unknown").to_numpy()
            t = time.perf_counter()
            lr = LogisticRegression(max_iter=3000).fit(pcs[~hidden], truth[~hidden])
            proba = lr.predict_proba(pcs[hidden])
            pred = lr.classes_[proba.argmax(1)]
            lr_row = {
                "method": "logistic regression (50 PCs)",
                "task": "semi-supervised",
                "seconds": pca_seconds + time.perf_counter() - t,
                "accuracy": metrics.accuracy(truth[hidden], pred),
                "macro_f1": metrics.macro_f1(truth[hidden], pred),
                "ece": metrics.expected_calibration_error(
                    proba.max(1), pred == truth[hidden].to_numpy()
                ),
            }
            for row in (km_row, ld_row, lr_row):
                store.add({"dataset": name, "seed": seed, **row})
                print(name, seed, {k_: v for k_, v in row.items()}, flush=True)
    rows = store.rows()
    clus = [r for r in rows if r["task"] == "clustering"]
    semi = [r for r in rows if r["task"] == "semi-supervised"]
    text = [
        "## Simple baselines on the same data",
        "",
        f"Command: `python benchmarks/baselines.py --seeds {' '.join(map(str, args.seeds))}` "
        f"(date {rows[0]['date']}; same genes, labels and 10 % label masks as the variant table).",
        "PCA on log1p-CP10k (pbmc68k: its log data as shipped); Leiden resolution bisected to "
        "give K clusters; logistic regression trained on the labelled cells' PCs.",
        "",
        mean_sd_table(clus, ["dataset", "method"], ["ari", "nmi", "accuracy", "purity", "seconds"]),
        "",
        mean_sd_table(semi, ["dataset", "method"], ["accuracy", "macro_f1", "ece", "seconds"]),
    ]
    write_section("baselines", "\n".join(text))


if __name__ == "__main__":
    main()
