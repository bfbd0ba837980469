"""Synthetic cells (DESIGN.md §2 "Synthetic data"): held-out real cells against generated ones.

Per dataset and seed, a stratified 30 % of the cells (by type, and by condition for Kang) is
held out; every generator trains on the other 70 % and makes, for each type (and condition),
as many cells as the held-out 30 % has. Scores on log1p CP10k, pooled over all types and per
type (types with at least :data:`MIN_CELLS` held-out cells): classifier two-sample AUC, MMD on
pooled PCs, Pearson r of per-gene means and variances, top-20 marker overlap; "real vs real"
scores two halves of the held-out cells the same way (the ceiling).

Generators: gmmvae (``model.generate``), scVI posterior predictive samples of training cells
of the type, and scVI prior samples (z ~ N(0, I) through scVI's decoder). One scVI training
serves both scVI rows. A task on ``zheng_fine`` (:mod:`benchmarks.protocols.augmentation`)
asks whether synthetic cells of a rare type help classify it from few labels.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import methods
from benchmarks.protocols import Settings, Unit, augmentation, single, stratified_split

NAME = "synthetic"
TITLE = "Synthetic cells: held-out real vs generated"
DATASETS = ("kang", "zheng_fine")
GENERATORS = ("gmmvae", "gmmvae_ppc", "gmmvae_prior", "scvi_ppc", "scvi_prior", "real_vs_real")
# gmmvae's other two samplers, from the same training: the like of each scVI row.
NAMES = {
    "gmmvae_ppc": "gmmvae posterior predictive",
    "gmmvae_prior": "gmmvae prior samples",
}
METHODS = (*GENERATORS, *augmentation.METHODS[1:])  # gmmvae is in both tasks
METRICS = ("c2st_auc", "mmd", "mean_r", "var_r", "marker_overlap", "n_real")
HEADLINE = "c2st_auc"
LOWER_IS_BETTER = ("c2st_auc", "mmd")
POOLED = "all types"
SUMMARY_TASKS = (POOLED,)
SUMMARY_PEERS = ("scvi_ppc", "scvi_prior")  # real vs real is the ceiling, not a peer
HELD_OUT = 0.3
MIN_CELLS = 40  # per-type rows for types with at least this many held-out cells
QUICK_MIN_CELLS = 10
N_MARKERS = 20
TRAINED = ("gmmvae", "gmmvae_ppc", "gmmvae_prior", "scvi_ppc", "scvi_prior")
DESCRIPTION = (
    "Per seed a stratified 30 % of the cells (by type; Kang: by type and condition) is held "
    "out; every generator trains on the other 70 % and makes, for each type (Kang: each type "
    "and condition), as many cells as are held out. gmmvae: `GMMVAE.setup_anndata(train, "
    "labels_key='cell_type', condition_key='condition')` (every training cell labelled; no "
    "condition on Zheng), `GMMVAE(train, seed=seed).train(seed=seed)` with its defaults, then "
    "`model.generate({type: n, ...}, condition=c, seed=...)` at its default "
    "`latent='embedding'`: y given, z and the library size drawn jointly from a Gaussian "
    "fitted to the training cells of the type under the condition (latent means, log "
    "library), counts from the NB likelihood with a per-gene dispersion refitted to the "
    "training cells at their latent means (rows from before 2026-12-02: one Gaussian per "
    "type, the decoder's learned dispersion). From the same gmmvae training: *gmmvae "
    "posterior predictive*, `model.posterior_predictive_sample(train, indices=...)` on the "
    "same training cells as scVI's row below (z ~ q(z|x,y), the decoder's learned "
    "dispersion; beside scVI's it compares the two noise models with z taken from real "
    "cells), and *gmmvae prior samples*, `generate(..., latent='prior')` (z ~ p(z|y)). scVI: "
    "`SCVI.setup_anndata(train, batch_key='condition')` (Kang; no batch on Zheng), `SCVI(train)`"
    " trained with its defaults (ZINB). *scVI posterior predictive*: "
    "`posterior_predictive_sample(indices=..., n_samples=1)` on n training cells of the type "
    "(and condition), drawn without replacement unless the type has fewer than n (rows from "
    "before 2026-12-07: drawn with another random stream): a noisy "
    "reconstruction of real training cells, z ~ q(z|x). *scVI prior samples*: scVI has no "
    "per-type prior, so z ~ N(0, I) is decoded by `model.module.generative(z, log(l), "
    "condition)` with library sizes l drawn from the type's (and condition's) training cells "
    "and counts drawn from its ZINB (`px.sample()`): what a single-Gaussian prior gives "
    "without the encoder, the like of gmmvae's p(z|y) sampling. *Real vs real*: two random "
    "halves of the held-out cells (stratified like the split) scored against each other, "
    "the ceiling of each score. Scores on log1p CP10k of held-out real vs synthetic cells: "
    "`c2st_auc` = `gmmvae.evaluation.c2st_auc` (PCA(50) on the pooled real + synthetic cells, "
    "random forest, 5-fold ROC-AUC; 0.5 = indistinguishable, lower is better); `mmd` = "
    "`gmmvae.metrics.mmd_rbf` (squared MMD, RBF kernel, median bandwidth) on "
    "`gmmvae.evaluation.pooled_pcs`; `mean_r`, `var_r` = Pearson r of per-gene means and "
    "variances (`moment_correlations`); `marker_overlap` = share of a type's top-20 Wilcoxon "
    "one-vs-rest markers among the held-out real cells that are also its top-20 among the "
    "synthetic cells (`gmmvae.evaluation.marker_overlap`, all types ranked together; types "
    "with fewer than 3 cells in a set are left out of that ranking; pooled = mean over the "
    "per-type rows). `all types` pools every type, small ones included; per-type rows for "
    f"types with ≥ {MIN_CELLS} held-out cells (`n_real`). The real-vs-real halves have half "
    "as many cells, so their MMD (a biased estimate) is somewhat inflated. `seconds`: "
    "training + generation (on the `all types` row; the per-type rows reuse them). Context "
    "(other data and splits): a random forest told real from synthetic PBMCs with AUC 0.59 "
    "for scGAN (Marouf et al. 2020) and 0.76 for scDesign2 (Sun et al. 2021)."
)


# ------------------------------------------------------------------------------ split
def strata(ds) -> pd.Series:
    """What the split is stratified by: the type, and the condition for Kang."""
    groups = ds.truth
    if condition_key(ds):
        groups = groups + " | " + ds.adata.obs["condition"].astype(str)
    return groups.reset_index(drop=True)


def condition_key(ds) -> str | None:
    return "condition" if "condition" in ds.adata.obs and ds.name == "kang" else None


def held_out_mask(ds, seed: int) -> np.ndarray:
    return stratified_split(strata(ds), HELD_OUT, seed)


def wanted_cells(ds, held_out: np.ndarray) -> dict[str | None, dict[str, int]]:
    """{condition (None without one): {type: held-out cells}}."""
    obs = ds.adata.obs[held_out]
    key = condition_key(ds)
    conditions = obs[key].astype(str) if key else pd.Series("", index=obs.index)
    out: dict[str | None, dict[str, int]] = {}
    for (cond, cell_type), n in obs.groupby([conditions, ds.truth[held_out]]).size().items():
        if n:
            out.setdefault(cond if key else None, {})[str(cell_type)] = int(n)
    return out


def scored_types(ds, held_out: np.ndarray, quick: bool) -> list[str]:
    counts = ds.truth[held_out].value_counts()
    floor = QUICK_MIN_CELLS if quick else MIN_CELLS
    return sorted(str(t) for t, n in counts.items() if n >= floor)


# ------------------------------------------------------------------------------ generators
def run_gmmvae(ds, train, wanted, seed: int, max_epochs) -> dict[str, Any]:
    """gmmvae trained on ``train`` (all labelled); synthetic counts and their types."""
    model = methods.gmmvae_model(
        train,
        ds,
        seed=seed,
        max_epochs=max_epochs,
        labels_key=ds.labels_key,
        condition_key=condition_key(ds),
    )
    out: dict[str, Any] = {"epochs": methods.gmmvae_extra(model)["epochs"]}
    for method, latent in (("gmmvae", "embedding"), ("gmmvae_prior", "prior")):
        parts, types = [], []
        for i, (cond, plan) in enumerate(wanted.items()):
            # a distinct seed per call: the same seed would reuse the same noise across calls
            syn = model.generate(plan, condition=cond, latent=latent, seed=seed * 1000 + i)
            parts.append(syn.layers["counts"].toarray())
            types.append(syn.obs["gmmvae_label"].astype(str).to_numpy())
        out[method] = (np.vstack(parts), np.concatenate(types))
    # Posterior predictive of training cells of the type, picked as for scVI's.
    chosen, labels = training_cells(ds, train, wanted, seed)
    sample = model.posterior_predictive_sample(train, indices=chosen, seed=seed)
    out["gmmvae_ppc"] = (sample.toarray(), labels)
    return out


def _pool(ds, train, cell_type: str, cond: str | None) -> np.ndarray:
    """Positions of the training cells of ``cell_type`` under ``cond`` (any, without one)."""
    key = condition_key(ds) or ds.batch_key
    cells = train.obs[ds.labels_key].astype(str).to_numpy() == cell_type
    if key:
        cells &= train.obs[key].astype(str).to_numpy() == (cond or "")
    return np.flatnonzero(cells)


def training_cells(ds, train, wanted, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (condition, type) of ``wanted``, that many training cells of the type under the
    condition, without replacement unless it has fewer; (positions, their types)."""
    rng = np.random.default_rng(seed)
    chosen, labels = [], []
    for cond, plan in wanted.items():
        for cell_type, n in plan.items():
            pool = _pool(ds, train, cell_type, cond)
            chosen.append(np.sort(rng.choice(pool, n, replace=n > len(pool))))
            labels.append(np.full(n, cell_type))
    return np.concatenate(chosen), np.concatenate(labels)


def run_scvi(ds, train, wanted, seed: int, max_epochs, threads: int) -> dict[str, Any]:
    """One scVI training on ``train``; posterior predictive and prior samples per type."""
    import torch

    scvi = methods._scvi(seed, threads)
    train = train.copy()
    key = condition_key(ds) or ds.batch_key
    scvi.model.SCVI.setup_anndata(train, batch_key=key)
    model = scvi.model.SCVI(train, gene_likelihood=ds.scvi_likelihood)
    epochs = methods._train(model, max_epochs, methods.scvi_batch_size(train.n_obs))
    # The same training cells as gmmvae's posterior predictive row.
    chosen, labels = training_cells(ds, train, wanted, seed)
    sample = model.posterior_predictive_sample(indices=chosen, n_samples=1)
    ppc = np.asarray(sample.todense(), dtype=np.float32).reshape(len(chosen), -1)
    rng = np.random.default_rng(seed + 1)  # library sizes of the prior samples
    library = np.asarray(train.X.sum(1)).ravel()
    batch_codes = (
        list(model.adata_manager.get_state_registry("batch").categorical_mapping) if key else [""]
    )
    prior = []
    calls = 0  # a distinct seed per prior draw: z ~ N(0, I) must not repeat across types
    for cond, plan in wanted.items():
        for cell_type, n in plan.items():
            pool = _pool(ds, train, cell_type, cond)
            code = batch_codes.index(cond) if key else 0
            lib = library[rng.choice(pool, n, replace=True)]
            prior.append(scvi_prior_sample(model, lib, code, seed * 1000 + calls, torch))
            calls += 1
    return {
        "scvi_ppc": (ppc, labels),
        "scvi_prior": (np.vstack(prior), labels),
        "epochs": epochs,
    }


def scvi_prior_sample(model, library: np.ndarray, batch_code: int, seed: int, torch):
    """Counts decoded by scVI from z ~ N(0, I) with the given library sizes and batch code.

    Uses ``model.module.generative`` (scvi-tools 1.4: ``library`` is the log library size,
    ``batch_index`` an (n, 1) code) and samples the returned ``px`` distribution.
    """
    module = model.module
    module.eval()
    device = next(module.parameters()).device
    n = len(library)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = torch.randn(n, module.n_latent, device=device)
        lib = torch.log(torch.as_tensor(library, dtype=torch.float32, device=device))
        batch = torch.full((n, 1), batch_code, dtype=torch.long, device=device)
        px = module.generative(z, lib.unsqueeze(1), batch)["px"]
        return px.sample().cpu().numpy().astype(np.float32)


# ------------------------------------------------------------------------------ scoring
_CACHE: dict[tuple, dict[str, Any]] = {}  # the synthetic cells of the latest training


def synthetic_cells(ds, seed: int, method: str, max_epochs, threads: int) -> dict[str, Any]:
    """Held-out real and synthetic log1p-CP10k cells of ``method``, trained once per
    (dataset, seed, generator, epochs) and kept for the per-type units that follow."""
    from gmmvae import metrics

    trainer = next((t for t in ("scvi", "gmmvae") if method.startswith(t)), method)
    key = (ds.name, ds.adata.n_obs, seed, trainer, max_epochs)
    if key not in _CACHE:
        _CACHE.clear()
        held_out = held_out_mask(ds, seed)
        real = metrics.log_cp10k(ds.adata.X[held_out])
        real_types = ds.truth[held_out].to_numpy()
        start = time.perf_counter()
        entry: dict[str, Any] = {"real": (real, real_types)}
        if trainer == "real_vs_real":
            half = stratified_split(strata(ds)[held_out].reset_index(drop=True), 0.5, seed)
            entry["real"] = (real[~half], real_types[~half])
            entry["real_vs_real"] = (real[half], real_types[half])
            entry["epochs"] = None
        else:
            train = ds.adata[~held_out].copy()
            wanted = wanted_cells(ds, held_out)
            if trainer == "gmmvae":
                entry.update(run_gmmvae(ds, train, wanted, seed, max_epochs))
            else:
                entry.update(run_scvi(ds, train, wanted, seed, max_epochs, threads))
        entry["seconds"] = time.perf_counter() - start
        _CACHE[key] = entry
    entry = _CACHE[key]
    real, real_types = entry["real"]
    counts, types = entry[method]
    syn = counts if method == "real_vs_real" else metrics.log_cp10k(counts)
    return {
        "real": real,
        "real_types": real_types,
        "syn": syn,
        "syn_types": np.asarray(types).astype(str),
        "seconds": entry["seconds"],
        "epochs": entry["epochs"],
        "cache": entry,
        "method": method,
    }


def markers(cells: dict[str, Any], genes) -> dict[str, float]:
    """Marker overlap per type (cached with the cells); types with < 3 cells in either set
    are left out of the rankings."""
    from gmmvae.evaluation import marker_overlap

    store = cells["cache"].setdefault("markers", {})
    if cells["method"] not in store:

        def keep(types):
            names, counts = np.unique(types, return_counts=True)
            return np.isin(types, names[counts >= 3])

        r, s = keep(cells["real_types"]), keep(cells["syn_types"])
        store[cells["method"]] = marker_overlap(
            cells["real"][r],
            cells["real_types"][r],
            cells["syn"][s],
            cells["syn_types"][s],
            [str(g) for g in genes],
            n=N_MARKERS,
        )
    return store[cells["method"]]


def score(real: np.ndarray, syn: np.ndarray, seed: int) -> dict[str, float]:
    from gmmvae import evaluation, metrics

    pcs_real, pcs_syn = evaluation.pooled_pcs(real, syn, seed=seed)
    return {
        "c2st_auc": evaluation.c2st_auc(real, syn, seed=seed),
        "mmd": metrics.mmd_rbf(pcs_real, pcs_syn, seed=seed),
        **metrics.moment_correlations(real, syn),
        "n_real": len(real),
        "n_synthetic": len(syn),
    }


def run_scope(ds, seed: int, method: str, scope: str, types: list[str], max_epochs, threads):
    """Scores of one generator on one scope (all types pooled, or one type)."""
    start = time.perf_counter()
    cells = synthetic_cells(ds, seed, method, max_epochs, threads)
    trained = time.perf_counter() - start
    overlap = markers(cells, ds.adata.var_names)
    if scope == POOLED:
        scores = score(cells["real"], cells["syn"], seed)
        scores["marker_overlap"] = float(np.mean([overlap.get(t, np.nan) for t in types]))
    else:
        real = cells["real"][cells["real_types"] == scope]
        syn = cells["syn"][cells["syn_types"] == scope]
        scores = {**score(real, syn, seed), "marker_overlap": overlap.get(scope, np.nan)}
    # The pooled row carries the training + generation time; per-type rows their scoring.
    seconds = time.perf_counter() - start - trained
    if scope == POOLED:
        seconds += cells["seconds"]
    extra = {"generation_seconds": cells["seconds"], "scored_types": types}
    return {"scores": scores, "seconds": seconds, "epochs": cells["epochs"], "extra": extra}


# -------------------------------------------------------------------------------- units
def options(ds, method: str, max_epochs) -> dict[str, Any]:
    split = {
        "held_out": HELD_OUT,
        "stratified_by": "type, condition" if condition_key(ds) else "type",
    }
    if method.startswith("gmmvae"):
        sampling = {
            "gmmvae": "model.generate (latent='embedding'), empirical library sizes",
            "gmmvae_prior": "model.generate (latent='prior'), empirical library sizes",
            "gmmvae_ppc": "model.posterior_predictive_sample of training cells of the type",
        }[method]
        return {
            **methods.gmmvae_options(
                ds, max_epochs, labels_key=ds.labels_key, condition_key=condition_key(ds)
            ),
            **split,
            "sampling": sampling,
        }
    if method in ("scvi_ppc", "scvi_prior"):
        sampling = {
            "scvi_ppc": "posterior_predictive_sample of training cells of the type",
            "scvi_prior": "z ~ N(0, I), module.generative, library sizes of the type",
        }[method]
        batch = condition_key(ds) or ds.batch_key
        return {
            **methods.scvi_options(ds, max_epochs, batch_key=batch),
            **split,
            "sampling": sampling,
        }
    return {**split, "halves": "of the held-out cells, stratified like the split"}


def units(ds, seed: int, settings: Settings) -> list[Unit]:
    """One unit per (generator, scope); the scopes of a generator share one training."""
    held_out = held_out_mask(ds, seed)
    types = scored_types(ds, held_out, settings.quick)
    out = []
    for method in (m for m in GENERATORS if m in settings.methods):
        for max_epochs in settings.epochs if method in TRAINED else [None]:
            for scope in [POOLED, *types]:
                run = partial(
                    run_scope, ds, seed, method, scope, types, max_epochs, settings.threads
                )
                unit_methods = {method: options(ds, method, max_epochs)}
                out.append(Unit(ds.name, scope, seed, unit_methods, single(method, run)))
    if ds.name == augmentation.DATASET:
        out += augmentation.units(ds, seed, settings)
    return out


# ------------------------------------------------------------------------------- tables
def tables(frame: pd.DataFrame, *, quick: bool) -> list[str]:
    """Pooled and per-type tables per dataset (Kang apart), then the augmentation task."""
    from benchmarks import datasets, report

    generation = frame[~frame["task"].astype(str).str.startswith(augmentation.TASK_PREFIX)]
    text: list[str] = []
    for name in (d for d in DATASETS if d in set(generation["dataset"])):
        part = generation[generation["dataset"] == name]
        ok = part[part["error"].isna()]
        heading = f"### `{name}`" + (
            " (labels from Leiden on PCA; generation per type and condition)"
            if name == report.LEIDEN_LABELS
            else ""
        )
        text += [heading, "", datasets.DESCRIPTIONS[name], ""]
        pooled = ok[ok["task"] == POOLED]
        per_type = ok[ok["task"] != POOLED]
        if not pooled.empty:
            text += ["All types pooled:", "", report.table(pooled, sys.modules[__name__]), ""]
        if not per_type.empty:
            floor = QUICK_MIN_CELLS if quick else MIN_CELLS
            text += [
                f"Per type (≥ {floor} held-out cells):",
                "",
                report.table(per_type, sys.modules[__name__]),
                "",
            ]
    text += augmentation.table(frame)
    return text
