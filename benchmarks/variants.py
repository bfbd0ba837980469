"""Compare the three gmmvae variants (exact, shared, dirichlet) on real data.

Clustering (labels hidden, K = number of types) and semi-supervised annotation (a stratified
10 % of labels kept, scored on the hidden cells), three seeds, the same epoch cap for all.
Rows are appended to benchmarks/results/variants.jsonl (rerunning skips finished rows);
the table goes into BENCHMARKS.md.

    python benchmarks/variants.py [--max-epochs 100] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import torch

import gmmvae
from common import ResultStore, load_dataset, mean_sd_table, versions, write_section
from gmmvae import metrics

DATASETS = ("pbmc68k_reduced", "kang_pbmc_2k")
VARIANTS = ("exact", "shared", "dirichlet")
COMMAND = "python benchmarks/variants.py --max-epochs {epochs} --seeds {seeds}"


def run_one(adata, labels_key, likelihood, variant, task, seed, max_epochs) -> dict:
    adata = adata.copy()
    # "exact-k2": the exact variant decoding 2 components per cell (components_per_cell).
    variant, _, k = variant.partition("-k")
    # Plain "exact" is the full sum over K (the default decodes 2 components without labels).
    extra = {"components_per_cell": int(k) if k else None} if variant == "exact" else {}
    truth = adata.obs[labels_key].astype(str)
    start = time.perf_counter()
    if task == "clustering":
        gmmvae.GMMVAE.setup_anndata(adata)
        model = gmmvae.GMMVAE(
            adata,
            n_components=truth.nunique(),
            likelihood=likelihood,
            variant=variant,
            seed=seed,
            **extra,
        )
    else:
        adata.obs["masked"] = gmmvae.datasets.mask_labels(truth, 0.1, seed=seed)
        gmmvae.GMMVAE.setup_anndata(adata, labels_key="masked")
        model = gmmvae.GMMVAE(adata, likelihood=likelihood, variant=variant, seed=seed, **extra)
    model.train(max_epochs, seed=seed, progress_bar=False)
    seconds = time.perf_counter() - start
    model.predict(adata)
    predicted = adata.obs["gmmvae_label"].astype(str)
    row = {"seconds": seconds, "epochs": len(model.history)}
    if task == "clustering":
        row.update(metrics.clustering_scores(truth, predicted))
        row["components_used"] = int(predicted.nunique())
    else:
        hidden = (adata.obs["masked"] == "Unknown").to_numpy()
        row["accuracy"] = metrics.accuracy(truth[hidden], predicted[hidden])
        row["macro_f1"] = metrics.macro_f1(truth[hidden], predicted[hidden])
        conf = adata.obs["gmmvae_confidence"].to_numpy()[hidden]
        row["ece"] = metrics.expected_calibration_error(
            conf, (truth == predicted).to_numpy()[hidden]
        )
    return row


def render(store: ResultStore, max_epochs: int, seeds: list[int]) -> None:
    rows = store.rows()
    if not rows:
        return
    clus = [r for r in rows if r["task"] == "clustering"]
    semi = [r for r in rows if r["task"] == "semi-supervised"]
    dates = sorted({r["date"] for r in rows})
    text = [
        "## gmmvae variants side by side",
        "",
        f"Command: `{COMMAND.format(epochs=max_epochs, seeds=' '.join(map(str, seeds)))}` "
        f"(dates {dates[0]}–{dates[-1]}; 2 CPU cores; {versions('torch', 'lightning', 'scanpy')}).",
        "Datasets: `pbmc68k_reduced` (700 cells, 765 genes, log data, Gaussian likelihood, "
        "10 types) and `kang_pbmc_2k` (2,000 cells, top 2,000 HVGs seurat_v3, counts, NB "
        "likelihood, 7 types, both "
        "conditions, no condition key). Same epoch cap for every variant; early stopping on the "
        "validation ELBO; seconds = wall time of training on 2 CPU cores.",
        "",
        "### Clustering (labels hidden, K = number of types)",
        "",
        mean_sd_table(
            clus, ["dataset", "variant"], ["ari", "nmi", "accuracy", "purity", "seconds"]
        ),
        "",
        "### Semi-supervised (10 % stratified labels; scores on the hidden cells)",
        "",
        mean_sd_table(semi, ["dataset", "variant"], ["accuracy", "macro_f1", "ece", "seconds"]),
    ]
    write_section("variants", "\n".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--store", default="variants", help="results/<store>.jsonl")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    store = ResultStore(args.store)
    if not args.render_only:
        for name in args.datasets:
            adata, labels_key, likelihood = load_dataset(name)
            for seed in args.seeds:
                for task in ("clustering", "semi-supervised"):
                    for variant in args.variants:
                        key = {
                            "dataset": name,
                            "variant": variant,
                            "task": task,
                            "seed": seed,
                            "max_epochs": args.max_epochs,
                        }
                        if store.done(**key):
                            continue
                        row = run_one(
                            adata, labels_key, likelihood, variant, task, seed, args.max_epochs
                        )
                        store.add({**key, **row})
                        print(key, {k: round(v, 3) for k, v in row.items()}, flush=True)
                        if args.store == "variants":
                            render(store, args.max_epochs, args.seeds)
    if args.store == "variants":
        render(store, args.max_epochs, args.seeds)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
