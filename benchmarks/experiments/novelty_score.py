"""Which novelty score should gmmvae offer? Measured on inner splits of the reference only.

The novelty protocol (``benchmarks/protocols/novelty.py``) scores 1 - top confidence of
q(y|x) on query cells, and gmmvae loses to the peers when B cells are the novel type. A
generative model has other scores a classifier lacks: how dense the mixture prior is at a
cell's latent mean, or how far the cell lies from the nearest component. This experiment
compares them without touching the cells the protocol scores:

For outer seed s and outer held-out type H (B, CD14 Mono, NK), the protocol's reference is
the stratified 50 % of the Zheng fine cells (its ``stratified_split``, seed s) minus every H
cell; its query is never read here. The reference is split again, stratified 50/50 (seed
s + 100): the inner reference drops one more type T (each of B, CD14 Mono, NK other than H);
gmmvae trains on it at its defaults, with labels, as the protocol trains it; the inner query
(the other half, T included) is scored. Scores (higher = more novel), AUROC of T cells
against the rest of the inner query:

- ``1 - confidence``: the protocol's score (1 - max q(y|x));
- ``p(free)``: probability of the free components (the protocol's ``auroc_p_free``);
- ``-log p(z)``: minus the mixture prior density at the posterior mean,
  ``log sum_y pi_y N(z; mu_y, sigma_y^2)``;
- ``-max_y log N``: minus the log density of the closest component alone;
- ``knn distance``: mean Euclidean distance of the latent mean to its 15 nearest inner-
  reference latent means (model-free given the latent);
- ``rank mean``: the mean of the ``1 - confidence`` and ``-log p(z)`` ranks.

    python -m benchmarks.experiments.novelty_score --threads 1 --outer-seeds 0  # and 1, 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HELD_OUT = ("B", "CD14 Mono", "NK")
SCORES = (
    "1 - confidence",
    "p(free)",
    "-log p(z)",
    "-max_y log N",
    "knn distance",
    "rank mean",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--outer-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--max-epochs", type=int, default=None, help="smoke checks only")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from benchmarks import datasets

    ds = datasets.load("zheng_fine", args.data_dir)
    results: dict[str, list[float]] = {s: [] for s in SCORES}
    for seed in args.outer_seeds:
        for outer in HELD_OUT:
            for inner in (t for t in HELD_OUT if t != outer):
                aurocs = inner_split(ds, seed, outer, inner, args.max_epochs)
                for name, value in aurocs.items():
                    results[name].append(value)
                shown = ", ".join(f"{k} {v:.3f}" for k, v in aurocs.items())
                print(f"seed {seed} outer {outer} inner {inner}: {shown}", flush=True)
    print("mean ± sd over inner splits:")
    for name, values in results.items():
        print(f"  {name}: {np.mean(values):.3f} ± {np.std(values):.3f} (n = {len(values)})")


def inner_split(ds, seed: int, outer: str, inner: str, max_epochs: int | None) -> dict[str, float]:
    """AUROC of each score for the ``inner`` type's cells of the inner query."""
    from benchmarks import methods
    from benchmarks.protocols import stratified_split

    truth = ds.truth.astype(str)
    reference = ~stratified_split(ds.truth, 0.5, seed) & (truth != outer).to_numpy()
    ref_cells = np.flatnonzero(reference)
    inner_query = stratified_split(ds.truth.iloc[ref_cells], 0.5, seed + 100)
    train = np.zeros(len(truth), dtype=bool)
    test = np.zeros(len(truth), dtype=bool)
    train[ref_cells[~inner_query]] = True
    test[ref_cells[inner_query]] = True
    train &= (truth != inner).to_numpy()

    key = ds.labels_key
    ref = ds.adata[train].copy()
    ref.obs[key] = ref.obs[key].astype(str).astype("category")
    query = ds.adata[test].copy()
    model = methods.gmmvae_model(ref, ds, seed=seed, max_epochs=max_epochs, labels_key=key)
    novel = truth[test].to_numpy() == inner
    return _aurocs(model, ref, query, novel)


def _aurocs(model, ref, query, novel: np.ndarray) -> dict[str, float]:
    import torch
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors

    from gmmvae.distributions import normal_log_prob

    probs = model.predict(query)
    free = [c for c in model.component_names if c.startswith("free_")]
    z = model.get_latent(query)
    z_ref = model.get_latent(ref)
    module = model.module
    with torch.no_grad():
        latent = torch.as_tensor(z, device=model.device)
        mean, logvar = module.component_prior()
        per_component = normal_log_prob(latent.unsqueeze(-2), mean, logvar)
        log_pz = module.log_prior_density(latent).cpu().numpy()
        closest = per_component.max(-1).values.cpu().numpy()
    distance = NearestNeighbors(n_neighbors=15).fit(z_ref).kneighbors(z)[0].mean(1)
    one_minus = 1.0 - probs.to_numpy().max(1)
    scores = {
        "1 - confidence": one_minus,
        "p(free)": probs[free].to_numpy().sum(1) if free else np.zeros(len(novel)),
        "-log p(z)": -log_pz,
        "-max_y log N": -closest,
        "knn distance": distance,
        "rank mean": (rankdata(one_minus) + rankdata(-log_pz)) / 2,
    }
    return {name: float(roc_auc_score(novel, s)) for name, s in scores.items()}


if __name__ == "__main__":
    main()
