"""Where ``generate`` draws z from: the embedding's Gaussian, the aggregate posterior, p(z|y).

Inner split of the synthetic protocol's Kang training cells: the protocol's seed-0 split
holds out 30 % (scored by the benchmark, never touched here); of the other 70 %, a stratified
30 % (seed 1) is held out again and gmmvae trains on the rest (labels and condition, its
defaults). Per latent source, cells are generated for the inner held-out cells' types and
conditions and scored by the classifier two-sample AUC (pooled and per type), as the protocol
scores them.

    python -m benchmarks.experiments.generation_latent --threads 2 --train-seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from benchmarks import datasets
    from benchmarks.experiments._scoring import generated_auc
    from benchmarks.protocols import stratified_split
    from benchmarks.protocols import synthetic as protocol
    from gmmvae import GMMVAE, metrics

    ds = datasets.load("kang", args.data_dir)
    outer = protocol.held_out_mask(ds, 0)
    train = ds.adata[~outer].copy()
    inner = stratified_split(protocol.strata(ds)[~outer].reset_index(drop=True), 0.3, 1)
    fit, val = train[~inner].copy(), train[inner].copy()
    key = protocol.condition_key(ds)
    types = val.obs[ds.labels_key].astype(str)
    plans: dict[str, dict[str, int]] = {}
    for (cond, cell_type), n in val.obs.groupby([val.obs[key].astype(str), types]).size().items():
        if n:
            plans.setdefault(cond, {})[cell_type] = int(n)
    real = metrics.log_cp10k(val.X)
    for seed in args.train_seeds:
        GMMVAE.setup_anndata(fit, labels_key=ds.labels_key, condition_key=key)
        model = GMMVAE(fit, seed=seed).train(seed=seed, progress_bar=False)
        embedding = copy.deepcopy(model.generation_summary)
        for source in ("embedding", "aggregate posterior", "prior"):
            model.generation_summary = copy.deepcopy(embedding)
            if source == "aggregate posterior":
                add_posterior_variance(model, fit)
            latent = "prior" if source == "prior" else "embedding"
            pooled, per_type = generated_auc(
                model, plans, real, types.to_numpy(), latent=latent, seed=100, min_cells=25
            )
            print(f"train seed {seed}  {source:20s} pooled AUC {pooled:.3f}  {per_type}")


def add_posterior_variance(model, fit) -> None:
    """Turn the embedding's Gaussians into the aggregate posterior's: add each component's
    mean posterior variance of z to the z block of its covariance."""
    encoded = model._encode(model._cells(fit, labels=True), ["component", "component_logvar"])
    summary = model.generation_summary
    d = model.config.n_latent
    for k, cov in enumerate(summary["embedding_covariances"]):
        if cov is None:
            continue
        rows = encoded["component"] == k
        cov = np.array(cov)
        cov[:d, :d] += np.diag(np.exp(encoded["component_logvar"][rows]).mean(0))
        summary["embedding_covariances"][k] = cov.tolist()


if __name__ == "__main__":
    main()
