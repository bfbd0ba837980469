"""Which pseudocount should gmmvae's differential expression use? Chosen off the scored data.

The DE protocol (``benchmarks/protocols/de.py``) ranks each Zheng population's genes against
the rest and counts canonical markers in the top 10; gmmvae (pseudocount 0) put genes with
near-zero expression everywhere (KLK1, AC079767.4 for B cells) above CD79A: the decoder
gives such genes proportions of ~1e-9 outside their group, so their log fold change is huge
and certain, while a marker expressed at some level everywhere has a smaller one. scVI
estimates a pseudocount by default; gmmvae used none.

This experiment chooses between pseudocounts without reading the Zheng cells:

- ``kang_pbmc_2k`` (its own 2,000 HVGs, both conditions, ``cell_type`` grouping): the
  canonical PBMC markers of its types in each type's top 10 (B MS4A1/CD79A, CD14 Mono
  CD14/LYZ, NK GNLY/NKG7, FCGR3A Mono FCGR3A/MS4A7, DC FCER1A/CST3). Kang's types came from
  Leiden on PCA, which is no problem here: the markers are not the types' definition.
- simulated counts (``gmmvae.datasets.simulate`` as the DE protocol makes them, seeds 10 and
  11, not the protocol's 0-2): AUPRC of the ranking against the planted markers.

gmmvae trains once per dataset and seed at its defaults (no labels); the posterior draws of
each group are made once and every candidate is computed from the same draws. Candidates
(``pseudocount`` on gene proportions rho; ``count`` ones are c / the median library size of
the cells, i.e. c counts in a typical cell):

- ``0``: no pseudocount (gmmvae's default before this experiment);
- ``scvi``: scvi-tools' estimate (``estimate_pseudocounts_offset``: the 0.9 quantile over
  genes with mean count < 0.01 in a group of their largest drawn proportion, divided by the
  number of genes);
- ``count 0.1``, ``count 0.5``, ``count 1``.

Each candidate is applied to ``proba_de`` only (the LFC columns keep no pseudocount, as
scvi-tools reports them with 1e-3 of its pseudocount) and to both (``+lfc``). Rankings as in
the DE protocol: ``lfc_mean > 0`` first, then ``proba_de``, then ``lfc_mean``.

    python -m benchmarks.experiments.de_pseudocount --threads 2 --seeds 10 11

Result (``results/de_pseudocount.txt``): no candidate helps. Kang's marker hits stay at
0.7-0.8 whatever the pseudocount, and count-scale pseudocounts cost simulated AUPRC (0.93
without, 0.89 at 0.1 counts, 0.70 at 1 count). gmmvae keeps ``pseudocount=0``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

KANG_MARKERS = {
    "B": ("MS4A1", "CD79A"),
    "CD14 Mono": ("CD14", "LYZ"),
    "NK": ("GNLY", "NKG7"),
    "FCGR3A Mono": ("FCGR3A", "MS4A7"),
    "DC": ("FCER1A", "CST3"),
}
COUNTS = (0.1, 0.5, 1.0)
DELTA = 0.25
N_SAMPLES = 5000


def draws(model, adata, key: str, seed: int):
    """Per group: (group draws, rest draws, group cells, rest cells) of decoded proportions."""
    from gmmvae import de

    codes, names, data, encoded, _ = de._groups(model, adata, key, 1024)
    rng = np.random.default_rng(seed)
    out = {}
    for g, name in enumerate(names):
        inside = np.flatnonzero(codes == g)
        rest = np.flatnonzero((codes >= 0) & (codes != g))
        s1 = de._scale_samples(model, encoded, data, inside, N_SAMPLES, rng, False)
        s2 = de._scale_samples(model, encoded, data, rest, N_SAMPLES, rng, False)
        out[name] = (s1, s2, inside, rest)
    return out


def scvi_pseudocount(s1, s2, x, inside, rest, threshold: float = 0.01) -> float:
    """scvi-tools' ``estimate_pseudocounts_offset`` (quantile 0.9), as it calls it."""
    mean1 = np.asarray(x[inside].mean(0)).ravel()
    mean2 = np.asarray(x[rest].mean(0)).ravel()
    eps = []
    for s, zero in ((s1, mean1 < threshold), (s2, mean2 < threshold)):
        eps.append(np.quantile(s.max(0)[zero], 0.9) if zero.any() else 1e-10)
    return float(max(1e-10, max(eps) / s1.shape[1]))


def ranking(s1, s2, p_de: float, p_lfc: float) -> pd.Series:
    lfc_de = np.log2(s1 + p_de + 1e-30) - np.log2(s2 + p_de + 1e-30)
    proba_de = (np.abs(lfc_de) > DELTA).mean(0)
    lfc = (np.log2(s1 + p_lfc + 1e-30) - np.log2(s2 + p_lfc + 1e-30)).mean(0)
    order = np.lexsort((lfc, proba_de, lfc > 0))
    score = np.empty(len(lfc))
    score[order] = np.arange(len(lfc))
    return score


def candidates(groups, x, library: float) -> dict[str, dict[str, tuple[float, float]]]:
    """Per candidate name, per group: (pseudocount for proba_de, pseudocount for the LFC)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, (s1, s2, inside, rest) in groups.items():
        values = {"0": 0.0, "scvi": scvi_pseudocount(s1, s2, x, inside, rest)}
        values |= {f"count {c:g}": c / library for c in COUNTS}
        for label, p in values.items():
            out.setdefault(label, {})[name] = (p, 0.0)
            if label != "0":
                out.setdefault(f"{label} +lfc", {})[name] = (p, p)
    return out


def train(adata, k: int, seed: int):
    import gmmvae

    adata = adata.copy()
    gmmvae.GMMVAE.setup_anndata(adata)
    model = gmmvae.GMMVAE(adata, n_components=k, seed=seed)
    return model.train(seed=seed, progress_bar=False), adata


def kang_scores(data_dir: Path, seed: int) -> dict[str, float]:
    from benchmarks import datasets

    ds = datasets.load("kang", data_dir)
    genes = ds.adata.var_names.astype(str)
    missing = [g for pair in KANG_MARKERS.values() for g in pair if g not in set(genes)]
    if missing:
        raise RuntimeError(f"markers not among Kang's 2,000 HVGs: {missing}")
    model, adata = train(ds.adata, ds.n_types, seed)
    groups = draws(model, adata, ds.labels_key, seed)
    library = float(np.median(np.asarray(ds.adata.X.sum(1)).ravel()))
    scores = {}
    for label, per_group in candidates(groups, ds.adata.X, library).items():
        hits = []
        for group, markers in KANG_MARKERS.items():
            s1, s2 = groups[group][:2]
            score = ranking(s1, s2, *per_group[group])
            top = set(genes[np.argsort(-score, kind="stable")[:10]])
            hits += [m in top for m in markers]
        scores[label] = float(np.mean(hits))
    return scores


def simulated_scores(seed: int) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    from benchmarks.protocols import de as protocol

    ds, markers = protocol.simulated(seed, quick=False)
    model, adata = train(ds.adata, ds.n_types, seed)
    groups = draws(model, adata, ds.labels_key, seed)
    genes = ds.adata.var_names.astype(str)
    library = float(np.median(np.asarray(ds.adata.X.sum(1)).ravel()))
    scores = {}
    for label, per_group in candidates(groups, ds.adata.X, library).items():
        values = []
        for group, true in markers.items():
            s1, s2 = groups[group][:2]
            values.append(
                average_precision_score(np.isin(genes, true), ranking(s1, s2, *per_group[group]))
            )
        scores[label] = float(np.mean(values))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        for dataset, scores in (
            ("kang: canonical markers in top 10", kang_scores(args.data_dir, seed)),
            ("simulated: AUPRC", simulated_scores(seed)),
        ):
            for label, value in scores.items():
                rows.append({"seed": seed, "data": dataset, "pseudocount": label, "score": value})
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    table = pd.DataFrame(rows).pivot_table(
        index="pseudocount", columns=["data", "seed"], values="score"
    )
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
