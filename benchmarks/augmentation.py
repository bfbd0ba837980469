"""Does adding synthetic cells of a rare type to a small labelled set help classify that type?

Kang PBMCs (top 2,000 HVGs): keep a stratified 5 % of labels (at least one per type). A gmmvae
model (default variant) is trained semi-supervised on all cells with those labels and
generates ``--n-synthetic`` cells of the rare type. Logistic regression on 50 PCs (PCA of
log1p-CP10k fitted on the real cells) is trained on (a) the labelled cells alone and (b) the
labelled cells plus the synthetic rare cells; both are scored on the hidden cells (F1 of the
rare type, macro-F1, accuracy). gmmvae's own prediction is reported beside them.

    python benchmarks/augmentation.py [--rare "FCGR3A Mono"] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

import gmmvae
from common import ResultStore, load_dataset, mean_sd_table, versions, write_section
from gmmvae import metrics


def run(adata, rare: str, seed: int, n_synthetic: int, max_epochs: int) -> list[dict]:
    truth = adata.obs["cell_type"].astype(str)
    adata = adata.copy()
    adata.obs["masked"] = gmmvae.datasets.mask_labels(truth, 0.05, seed=seed)
    hidden = (adata.obs["masked"] == "Unknown").to_numpy()
    start = time.perf_counter()
    gmmvae.GMMVAE.setup_anndata(adata, labels_key="masked")
    model = gmmvae.GMMVAE(adata, seed=seed).train(max_epochs, seed=seed, progress_bar=False)
    synthetic = model.generate(n_synthetic, cell_type=rare, seed=seed)
    seconds = time.perf_counter() - start
    model.predict(adata)

    real_log = metrics.log_cp10k(adata.X)
    pca = PCA(50, random_state=seed).fit(real_log)
    pcs, syn_pcs = pca.transform(real_log), pca.transform(metrics.log_cp10k(synthetic.X))
    y = truth.to_numpy()
    labelled = ~hidden

    def score(method: str, pred: np.ndarray, extra_seconds: float = 0.0) -> dict:
        t = y[hidden]
        return {
            "method": method,
            "rare_f1": float(f1_score(t == rare, pred == rare)),
            "macro_f1": metrics.macro_f1(t, pred),
            "accuracy": metrics.accuracy(t, pred),
            "n_rare_labelled": int((y[labelled] == rare).sum()),
            "seconds": extra_seconds,
        }

    plain = LogisticRegression(max_iter=3000).fit(pcs[labelled], y[labelled])
    augmented = LogisticRegression(max_iter=3000).fit(
        np.vstack([pcs[labelled], syn_pcs]), np.r_[y[labelled], np.full(len(syn_pcs), rare)]
    )
    gm = adata.obs["gmmvae_label"].astype(str).to_numpy()[hidden]
    return [
        score("logistic regression, labelled cells", plain.predict(pcs[hidden])),
        score(
            f"logistic regression, labelled + {n_synthetic} synthetic {rare}",
            augmented.predict(pcs[hidden]),
            seconds,
        ),
        score("gmmvae prediction (same model)", gm, seconds),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rare", default="FCGR3A Mono")
    parser.add_argument("--n-synthetic", type=int, default=200)
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    store = ResultStore("augmentation")
    adata, _, _ = load_dataset("kang_pbmc_2k")
    for seed in args.seeds:
        key = {"rare": args.rare, "seed": seed, "n_synthetic": args.n_synthetic}
        if store.done(**key):
            continue
        for row in run(adata, args.rare, seed, args.n_synthetic, args.max_epochs):
            store.add({**key, **row})
            print(seed, row, flush=True)
    rows = [r for r in store.rows() if r["rare"] == args.rare]
    text = [
        "## Synthetic cells as augmentation for a rare type",
        "",
        f"Command: `python benchmarks/augmentation.py --rare '{args.rare}' --n-synthetic "
        f"{args.n_synthetic} --max-epochs {args.max_epochs} --seeds "
        f"{' '.join(map(str, args.seeds))}` (date {rows[0]['date']}; "
        f"{versions('torch', 'scikit-learn')}).",
        f"`kang_pbmc_2k`, 5 % stratified labels ({rows[0]['n_rare_labelled']}–"
        f"{max(r['n_rare_labelled'] for r in rows)} labelled {args.rare} cells); scores on the "
        "hidden cells; seconds = gmmvae training + generation.",
        "",
        mean_sd_table(rows, ["method"], ["rare_f1", "macro_f1", "accuracy", "seconds"]),
    ]
    write_section("augmentation", "\n".join(text))


if __name__ == "__main__":
    main()
