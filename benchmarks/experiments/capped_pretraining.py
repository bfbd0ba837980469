"""How much of a capped run pre-training should take (``schedule.CAPPED_PRETRAIN_SHARE``).

Simulated counts (``gmmvae.datasets.simulate``, 10^4 cells, 2,000 genes, K types, simulation
seed 11, unlike the speed benchmark's), ``max_epochs=10``; ARI of argmax q(y|x) against the
simulated types for pre-training shares of the run's steps (0 = the default rule).

    python -m benchmarks.experiments.capped_pretraining --k 10 --shares 0.25 0.5 0.7
"""

from __future__ import annotations

import argparse
import math
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.7])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from sklearn.metrics import adjusted_rand_score

    torch.set_num_threads(args.threads)
    from gmmvae import GMMVAE, datasets

    adata = datasets.simulate(10_000, 2000, args.k, seed=11)
    truth = adata.obs["cell_type"].to_numpy()
    steps_per_epoch = math.ceil(0.9 * adata.n_obs / 256)
    for share in args.shares:
        scores = []
        start = time.perf_counter()
        for seed in args.seeds:
            GMMVAE.setup_anndata(adata)
            model = GMMVAE(adata, n_components=args.k, seed=seed)
            pretrain = max(1, int(share * 10 * steps_per_epoch)) if share else None
            model.train(max_epochs=10, seed=seed, pretrain_steps=pretrain, progress_bar=False)
            clusters = model.predict(adata).to_numpy().argmax(1)
            scores.append(adjusted_rand_score(truth, clusters))
        steps = model.train_params["pretrain_steps"], model.train_params["max_steps"]
        print(
            f"K={args.k} share={share} pretrain/total steps={steps} "
            f"ARI={[round(s, 3) for s in scores]} ({time.perf_counter() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()
