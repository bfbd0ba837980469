"""Clustering against the peers (DESIGN.md §2): labels hidden, K = number of types.

gmmvae (exact, dirichlet) vs PCA(50) + Leiden, PCA(50) + k-means and scVI latent + Leiden, on
pbmc68k_reduced and Kang (all cells with and without the condition, control cells only);
ARI, NMI, Hungarian accuracy, purity. Rows go to benchmarks/results/clustering.jsonl (a rerun
skips finished rows); the table goes into BENCHMARKS.md between the `clustering` markers.

    python benchmarks/clustering.py [--max-epochs 100] [--seeds 0 1 2] [--datasets ...]
"""

from __future__ import annotations

import argparse

import numpy as np

import peers
from common import ResultStore, write_section
from gmmvae import metrics

METHODS = (
    "gmmvae exact",
    "PCA(50) + Leiden",
    "PCA(50) + k-means",
    "scVI + Leiden",
    "gmmvae dirichlet",
)
# gmmvae method -> (variant, model kwargs); the extra ones are improvement experiments.
GMMVAE_METHODS: dict[str, tuple[str, dict, dict]] = {
    "gmmvae exact": ("exact", {}, {}),
    "gmmvae dirichlet": ("dirichlet", {}, {}),
    "gmmvae exact, learned π": ("exact", {"learn_mixture_weights": True}, {}),
    # scVI's batch size: twice the optimiser steps within the same epoch cap.
    "gmmvae exact, batch 128": ("exact", {}, {"batch_size": 128}),
}
EXPERIMENTS = (
    "gmmvae exact, learned π",
    "gmmvae exact latent + Leiden",
    "gmmvae pre-training only, latent + Leiden",
    "gmmvae exact, batch 128",
)


def run(data: peers.Data, method: str, seed: int, max_epochs: int) -> tuple[dict, np.ndarray]:
    truth = data.truth
    k = truth.nunique()
    row: dict = {}
    if method in GMMVAE_METHODS:
        variant, model_kwargs, train_kwargs = GMMVAE_METHODS[method]
        model = peers.gmmvae_model(
            data,
            data.adata,
            seed,
            max_epochs,
            variant=variant,
            n_components=k,
            condition_key=data.condition_key,
            model_kwargs=model_kwargs,
            train_kwargs=train_kwargs,
        )
        probs = model.predict(model.adata)
        predicted = probs.to_numpy().argmax(1)
        row["epochs"] = len(model.history)
    elif method in ("gmmvae exact latent + Leiden", "gmmvae pre-training only, latent + Leiden"):
        # Pre-training only: the mixture is never placed (a plain VAE for every epoch), which
        # shows what the latent offers before the mixture shapes it.
        plain = {"mixture_init_epoch": max_epochs} if "pre-training" in method else {}
        model = peers.gmmvae_model(
            data,
            data.adata,
            seed,
            max_epochs,
            n_components=k,
            condition_key=data.condition_key,
            train_kwargs=plain,
        )
        predicted = peers.leiden_with_k(model.get_latent(model.adata), k, seed)
        row["epochs"] = len(model.history)
    elif method.startswith("PCA"):
        (pcs,) = peers.pca_fit(peers.log_data(data), seed)
        if "Leiden" in method:
            predicted = peers.leiden_with_k(pcs, k, seed)
        else:
            from sklearn.cluster import KMeans

            predicted = KMeans(k, n_init=10, random_state=seed).fit_predict(pcs)
    elif method == "scVI + Leiden":
        latent, epochs, bs = peers.scvi_latent(data, seed, max_epochs)
        predicted = peers.leiden_with_k(latent, k, seed)
        row.update(epochs=epochs, batch_size=bs)
    else:
        raise ValueError(method)
    row.update(metrics.clustering_scores(truth, predicted))
    row["n_clusters"] = len(np.unique(predicted))
    return row, predicted


def render(store: ResultStore, args) -> None:
    rows = peers.merged_rows("clustering", ["dataset", "method", "seed"], args.max_epochs)
    rows = [r for r in rows if r["method"] in METHODS]
    if not rows:
        return
    order = {m: i for i, m in enumerate(dict.fromkeys([*METHODS, *EXPERIMENTS]))}
    dsets = {d: i for i, d in enumerate(peers.DATASETS)}
    rows.sort(key=lambda r: (dsets.get(r["dataset"], 9), order.get(r["method"], 9)))
    dates = sorted({r["date"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    text = [
        "## Clustering against the peers (labels hidden, K = number of types)",
        "",
        f"Command: `python benchmarks/clustering.py --max-epochs {args.max_epochs} --seeds "
        f"{' '.join(map(str, seeds))}` (dates {dates[0]}–{dates[-1]}; {rows[-1]['versions']}).",
        peers.machines_note(rows),
        "Datasets: `pbmc68k_reduced` (700 cells, 765 genes, log data as shipped; gmmvae "
        "Gaussian likelihood, scVI `gene_likelihood='normal'`), `kang_all` (2,000 cells, top "
        "2,000 HVGs seurat_v3 on counts, gmmvae NB, scVI ZINB default), `kang_all_condition` "
        "(the same, gmmvae `condition_key='condition'`, scVI `batch_key='condition'`; the PCA "
        "rows do not use the condition and so equal `kang_all`), `kang_control` (the 1,000 "
        "control cells, same genes). Every method sees the same cells and genes; each training "
        f"phase is capped at {args.max_epochs} epochs (gmmvae early-stops on its validation "
        "ELBO; scVI runs the cap). Leiden: scanpy kNN graph (15 neighbours) on the PCs or the "
        "scVI latent, resolution bisected to give K clusters. seconds = wall time of the whole "
        "method (PCA included) on one thread.",
        "",
        peers.table(
            rows,
            ["dataset", "method"],
            ["ari", "nmi", "accuracy", "purity", "device_seconds", "cpu_seconds"],
        ),
        "",
        "![clustering ARI](benchmarks/figures/clustering_ari.png)",
    ]
    experiments = peers.experiment_rows(
        "clustering",
        ["dataset", "method", "seed"],
        list(EXPERIMENTS),
        ["gmmvae exact", "PCA(50) + Leiden"],
        args.max_epochs,
    )
    if experiments:
        experiments.sort(key=lambda r: (dsets.get(r["dataset"], 9), order.get(r["method"], 9)))
        text += [
            "",
            "### Improvement experiments (seed 0)",
            "",
            "`gmmvae pre-training only, latent + Leiden`: the mixture never placed (a plain VAE "
            "for every epoch), its latent clustered like the PCs (Leiden, resolution bisected to "
            "K): what the latent offers before the mixture shapes it. `gmmvae exact latent + "
            "Leiden`: the same on the default model's latent. `gmmvae exact, batch 128`: scVI's "
            "batch size instead of gmmvae's 256, i.e. twice the optimiser steps under the same "
            "epoch cap (1,000 cells at 256 give 400 steps in 100 epochs). Baselines of the same "
            "seed beside them.",
            "",
            peers.table(
                experiments, ["dataset", "method", "run on"], ["ari", "nmi", "accuracy", "purity"]
            ),
        ]
    write_section("clustering", "\n".join(text))
    peers.bar_chart(rows, "ari", peers.FIGURES / "clustering_ari.png")
    preds = peers.prediction_rows("clustering")
    for p in preds:
        if p["method"] in ("gmmvae exact", "PCA(50) + Leiden") and p["dataset"] == "kang_all":
            name = f"clustering_confusion_{p['dataset']}_{peers.slug(p['method'])}.png"
            peers.confusion_figure(
                p["truth"], p["predicted"], peers.FIGURES / name, f"{p['method']}, {p['dataset']}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(peers.DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--no-render", action="store_true")
    args = parser.parse_args()
    peers.quiet()
    store = peers.store("clustering")
    pred_store = peers.store("clustering_predictions")

    def jobs():
        for name in args.datasets:
            data = peers.load(name)
            for seed in args.seeds:
                for method in args.methods:
                    key = {
                        "dataset": name,
                        "method": method,
                        "seed": seed,
                        "max_epochs": args.max_epochs,
                    }

                    def job(data=data, method=method, seed=seed, key=key):
                        row, predicted = run(data, method, seed, args.max_epochs)
                        peers.save_predictions(pred_store, key, data.truth, predicted)
                        return row

                    yield key, job

    if not args.render_only:
        peers.run_rows(store, jobs(), None if args.no_render else lambda: render(store, args))
    if not args.no_render:
        render(store, args)


if __name__ == "__main__":
    main()
