"""Augmentation, a task of the synthetic protocol: do synthetic cells of a rare type help to
classify it from few labels?

On ``zheng_fine`` a stratified 5 % of the labels is kept (``gmmvae.datasets.mask_labels``, at
least one per type). gmmvae, trained semi-supervised on every cell with those labels, generates
synthetic cells of the rare type. Logistic regression on 50 PCs (PCA of all real cells) and
gmmvae itself are trained without and with those synthetic cells added to the labelled ones;
rare-type F1, macro-F1 and accuracy are scored on the hidden real cells.

The rare type, CD8 naive T, was chosen before any result was seen: it is the smallest of the
seven bead-sorted populations (42 of 1,691 cells, so 2 labelled cells at 5 %), and its
nearest neighbours (CD4 naive T, the other T-cell populations) make it the hardest one to
label from two examples; the populations' labels are independent of the expression
(DESIGN.md §2), which Kang's are not.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import methods
from benchmarks.protocols import Result, Settings, Unit

DATASET = "zheng_fine"
RARE = "CD8 naive T"
FRACTION = 0.05
TASK_PREFIX = "augmentation"
TASK = f"{TASK_PREFIX}: {RARE}, {FRACTION:.0%} labels"
METHODS = ("gmmvae", "gmmvae_synthetic", "logreg", "logreg_synthetic")
NEEDS_GENERATOR = ("gmmvae", "gmmvae_synthetic", "logreg_synthetic")
METRICS = ("rare_f1", "macro_f1", "accuracy", "n_rare_labelled", "n_synthetic")
WITHOUT = {"gmmvae_synthetic": "gmmvae", "logreg_synthetic": "logreg"}


def n_synthetic(truth: np.ndarray, labelled: np.ndarray) -> int:
    """As many synthetic cells as the largest labelled type has labelled cells, so that the
    rare type is no longer the smallest labelled class (fixed before any result)."""
    others = pd.Series(truth[labelled & (truth != RARE)]).value_counts()
    return int(others.max()) if len(others) else 1


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    from gmmvae import metrics

    truth, predicted = truth.astype(str), np.asarray(predicted).astype(str)
    return {
        "rare_f1": float(f1_score(truth == RARE, predicted == RARE, zero_division=0)),
        "macro_f1": metrics.macro_f1(truth, predicted),
        "accuracy": metrics.accuracy(truth, predicted),
    }


def run(ds, seed: int, max_epochs, todo: list[str]) -> dict[str, Result]:
    """Every method of the task that is still to do, sharing one generator training."""
    import anndata as ad
    from scipy import sparse

    import gmmvae
    from gmmvae import metrics

    truth = ds.truth.to_numpy()
    masked = gmmvae.datasets.mask_labels(
        ds.truth, FRACTION, seed=seed, unlabeled_category=methods.UNKNOWN
    ).to_numpy()
    hidden = masked == methods.UNKNOWN
    counts = {"n_rare_labelled": int((truth[~hidden] == RARE).sum())}
    n_syn = n_synthetic(truth, ~hidden)
    log = ds.log_expression()
    out: dict[str, Result] = {}

    def result(predicted, seconds: float, epochs=None, n_added: int = 0) -> Result:
        return {
            "scores": {**scores(truth[hidden], predicted), **counts, "n_synthetic": n_added},
            "seconds": seconds,
            "epochs": epochs,
            "extra": {
                "n_hidden": int(hidden.sum()),
                "n_rare_hidden": int((truth[hidden] == RARE).sum()),
            },
        }

    def logreg(synthetic_log=None) -> np.ndarray:
        """Predicted labels of the hidden cells; synthetic cells projected on the real PCs."""
        pcs, syn_pcs = methods.pca(log, seed, synthetic_log)
        x, y = pcs[~hidden], truth[~hidden]
        if syn_pcs is not None:
            x, y = np.vstack([x, syn_pcs]), np.r_[y, np.full(len(syn_pcs), RARE)]
        probs = methods.logistic_regression(x, y, pcs[hidden], seed)
        return methods.top(probs)[0]

    if "logreg" in todo:
        start = time.perf_counter()
        out["logreg"] = result(logreg(), time.perf_counter() - start)
    if not any(m in todo for m in NEEDS_GENERATOR):
        return out
    start = time.perf_counter()
    adata = ds.adata.copy()
    adata.obs["masked"] = masked
    model = methods.gmmvae_model(adata, ds, seed=seed, max_epochs=max_epochs, labels_key="masked")
    trained, epochs = time.perf_counter() - start, methods.gmmvae_extra(model)["epochs"]
    if "gmmvae" in todo:
        predicted = methods.top(model.predict(model.adata))[0][hidden]
        out["gmmvae"] = result(predicted, time.perf_counter() - start, epochs)
    start = time.perf_counter()
    synthetic = model.generate({RARE: n_syn}, seed=seed)
    generated = trained + time.perf_counter() - start
    syn_counts = sparse.csr_matrix(synthetic.layers["counts"])
    if "logreg_synthetic" in todo:
        start = time.perf_counter()
        predicted = logreg(metrics.log_cp10k(syn_counts))
        out["logreg_synthetic"] = result(
            predicted, generated + time.perf_counter() - start, epochs, n_syn
        )
    if "gmmvae_synthetic" in todo:
        start = time.perf_counter()
        combined = ad.AnnData(
            X=sparse.vstack([sparse.csr_matrix(ds.adata.X), syn_counts]).tocsr(),
            obs=pd.DataFrame(
                {"masked": np.r_[masked, np.full(n_syn, RARE)]},
                index=[*map(str, ds.adata.obs_names), *synthetic.obs_names],
            ),
            var=pd.DataFrame(index=ds.adata.var_names),
        )
        retrained = methods.gmmvae_model(
            combined, ds, seed=seed, max_epochs=max_epochs, labels_key="masked"
        )
        probs = retrained.predict(retrained.adata).iloc[: ds.adata.n_obs]
        predicted = methods.top(probs)[0][hidden]
        seconds = generated + time.perf_counter() - start
        out["gmmvae_synthetic"] = result(
            predicted, seconds, methods.gmmvae_extra(retrained)["epochs"], n_syn
        )
    return out


def options(ds, method: str, max_epochs) -> dict[str, Any]:
    task = {"rare": RARE, "label_fraction": FRACTION}
    if method == "logreg":
        return {
            **task,
            "n_comps": methods.N_PCS,
            "pca_on": "all real cells",
            "max_iter": methods.LOGREG_MAX_ITER,
        }
    generator = methods.gmmvae_options(ds, max_epochs, labels="masked")
    syn = {"n_synthetic": "largest labelled count among the other types", "generator": generator}
    if method == "logreg_synthetic":
        return {**options(ds, "logreg", None), **syn}
    if method == "gmmvae_synthetic":
        return {**task, **syn, "retrained_on": "real cells + synthetic cells labelled rare"}
    return {**task, **generator}


def units(ds, seed: int, settings: Settings) -> list[Unit]:
    """One unit per epoch setting (logreg, which does not train, only in the first)."""
    out = []
    for i, max_epochs in enumerate(settings.epochs):
        wanted = [m for m in METHODS if m in settings.methods and (m != "logreg" or i == 0)]
        if wanted:
            unit_methods = {m: options(ds, m, max_epochs) for m in wanted}
            run_unit = lambda todo, e=max_epochs: run(ds, seed, e, todo)  # noqa: E731
            out.append(Unit(ds.name, TASK, seed, unit_methods, run_unit))
    return out


# ------------------------------------------------------------------------------- table
def table(frame: pd.DataFrame) -> list[str]:
    """Mean ± sd per method; the last column says whether adding synthetic cells helped."""
    from benchmarks import report

    rows = frame[(frame["task"] == TASK) & frame["error"].isna()]
    if rows.empty:
        return []
    head = ["method", "rare F1", "macro-F1", "accuracy", "labelled rare", "synthetic added"]
    head += ["seeds", "seconds", "vs without synthetic (rare F1; macro-F1)", "made by"]
    lines = [
        f"### Augmentation: {RARE} from {FRACTION:.0%} labels (`{DATASET}`)",
        "",
        "Scores on the hidden real cells; a difference within one sd (the larger) is a tie.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, group in rows.groupby("label", sort=False):
        method = group["method"].iloc[0]
        cells = [name] + [report.fmt(*report.stats(group[m]), digits=3) for m in METRICS[:3]]
        cells += [report.fmt(*report.stats(group[m]), digits=0) for m in METRICS[3:]]
        cells += [
            str(group["seed"].nunique()),
            report.fmt(*report.stats(group["seconds"]), digits=1),
        ]
        verdict = "–"
        if method in WITHOUT:
            base = rows[(rows["method"] == WITHOUT[method]) & (rows["cap"] == group["cap"].iloc[0])]
            verdict = "; ".join(_effect(group[m], base[m]) for m in ("rare_f1", "macro_f1"))
        lines.append("| " + " | ".join([*cells, verdict, report.made_by(group)]) + " |")
    return [*lines, ""]


def _effect(with_syn: pd.Series, without: pd.Series) -> str:
    from benchmarks import report

    (m1, s1, n1), (m2, s2, n2) = report.stats(with_syn), report.stats(without)
    if n1 < 2 or n2 < 2:
        return "no call (< 2 seeds)"
    if abs(m1 - m2) <= max(s1, s2):
        return "tie"
    return "helps" if m1 > m2 else "hurts"
