"""Experiment: should the perturbation interval's between-type part be measured on the donors'
observed responses instead of their decoded ones? Simulated data only (no scored cells).

Each run simulates six types under two conditions, holds out one type's stimulated cells,
trains a labelled conditional model and predicts that type from its control cells; the
coverage is the share of the held-out type's top-20 DEGs whose real stimulated mean
(log1p CP10k) falls inside the 90 % interval. Between-type errors:

- ``decoded``: each donor's decoded response against the others' (the rule at 632b09b);
- ``observed``: each donor's observed response (mean log1p CP10k of its stimulated minus its
  control cells) against the others' observed responses, same weights;
- ``mixed``: each donor's observed response against the others' decoded responses (what
  the model would lend it).

    python -m benchmarks.experiments.interval_observed --threads 1 --seeds 0 \
        --types type_0 type_1 type_2 type_3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

import gmmvae
from gmmvae import evaluation, metrics, perturbation, response
from gmmvae.datasets import simulate

RULES = ("decoded", "observed", "mixed")
METHODS = (("latent_shift", "uniform"), ("latent_shift", "similarity"), ("transfer", "similarity"))


def run(seed: int, held_out: str) -> list[dict]:
    adata = simulate(1800, 200, 6, n_conditions=2, seed=seed, marker_log_fold=2.0)
    obs = adata.obs
    train = adata[~((obs["cell_type"] == held_out) & (obs["condition"] == "stimulated"))].copy()
    gmmvae.GMMVAE.setup_anndata(train, labels_key="cell_type", condition_key="condition")
    model = gmmvae.GMMVAE(train, seed=seed)
    start = time.time()
    model.train(seed=seed, progress_bar=False)
    seconds = time.time() - start
    control = adata[(obs["cell_type"] == held_out) & (obs["condition"] == "control")].copy()
    real = metrics.log_cp10k(
        adata[(obs["cell_type"] == held_out) & (obs["condition"] == "stimulated")].X
    )
    unchanged = metrics.log_cp10k(control.X)
    genes = list(adata.var_names)
    degs = pd.Index(genes).get_indexer(evaluation.top_degs(real, unchanged, genes, 20))
    observed_rule, errors_rule = perturbation.observed_responses, perturbation.leave_one_out_errors

    def decoded_own(data, components, conditions, donors, source, **_):
        """Each donor's response decoded from its cells' latent means (as lent)."""
        ref = perturbation._encode(model, data, 1024)
        batches = data.batches.numpy()
        cells = response.donor_cells(model, ref, conditions, batches, donors, source)
        return np.stack([treated.mean(0) - control.mean(0) for treated, control in cells])

    def own_only(own, donors, lent=None):
        return errors_rule(own, donors)

    patches = {
        "decoded": {"observed_responses": decoded_own, "leave_one_out_errors": errors_rule},
        "observed": {"observed_responses": observed_rule, "leave_one_out_errors": own_only},
        "mixed": {"observed_responses": observed_rule, "leave_one_out_errors": errors_rule},
    }
    rows = []
    for rule in RULES:
        for name, fn in patches[rule].items():
            setattr(perturbation, name, fn)
        try:
            for method, weighting in METHODS:
                pred = model.predict_perturbation(
                    control, method=method, weighting=weighting, seed=seed
                ).var
                low = pred["gmmvae_mean_lower"].to_numpy()
                high = pred["gmmvae_mean_upper"].to_numpy()
                inside = (real.mean(0) >= low) & (real.mean(0) <= high)
                rows.append(
                    {
                        "seed": seed,
                        "held_out": held_out,
                        "rule": rule,
                        "config": f"{method}_{weighting}",
                        "coverage_deg": float(inside[degs].mean()),
                        "coverage_all": float(inside.mean()),
                        "width_deg": float((high - low)[degs].mean()),
                        "train_s": round(seconds, 1),
                    }
                )
        finally:
            perturbation.observed_responses = observed_rule
            perturbation.leave_one_out_errors = errors_rule
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--types", nargs="+", default=[f"type_{t}" for t in range(6)])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        for held_out in args.types:
            rows += run(seed, held_out)
            print(pd.DataFrame(rows[-9:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print(
        table.groupby(["rule", "config"])[["coverage_deg", "coverage_all", "width_deg"]]
        .agg(["mean", "std"])
        .round(3)
        .to_string()
    )


if __name__ == "__main__":
    main()
