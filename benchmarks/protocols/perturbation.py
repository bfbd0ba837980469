"""Treatment-effect prediction for a cell type never seen treated (DESIGN.md §2, scGen
protocol), on Kang's IFN-β PBMCs.

For each held-out type t and seed: every method trains on all cells except the stimulated
cells of t, predicts them from the control cells of t, and is scored against the real
stimulated cells of t (:mod:`benchmarks.perturbation_methods`). Units per (t, seed):

- ``baselines``: control unchanged, control + uniform / similarity-weighted mean shift
  (model-free), the real split half (ceiling);
- ``scgen``: pertpy's scGen at its defaults;
- ``inner`` (one per other main type u): a gmmvae trained on the outer training cells minus
  the stimulated cells of u, every config of :data:`CONFIGS` predicting u, scored on u. Their
  rows (task ``held out: t; inner: u``) are only read by the nested selection;
- ``gmmvae``: one gmmvae on the outer training cells, every config predicting t (rows shown
  for context only), and ``gmmvae_nested``: the config with the best mean inner
  :data:`CRITERION` (ties within :data:`TIE` go to the simpler config, the first in
  :data:`CONFIGS`), applied to this model's prediction of t.

Inner units come before the outer unit of the same (t, seed), so a killed run resumes with the
inner rows it finished. Tables: :mod:`benchmarks.perturbation_tables` (not part of the
fingerprint, so a change to the tables reruns nothing).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks import FIGURES, QUICK_RESULTS, store
from benchmarks import perturbation_methods as pm
from benchmarks.protocols import Result, Settings, Unit, timed

NAME = "perturbation"
TITLE = "Treatment-effect prediction: a cell type never seen treated (scGen protocol)"
# The full account of how every method ran and every choice was made is rendered with the
# tables (benchmarks/perturbation_tables.py), so that editing it reruns nothing.
DESCRIPTION = (
    "Kang IFN-β PBMCs: for each cell type in turn, its stimulated cells are left out of "
    "training and predicted from its control cells; gmmvae's prediction config is chosen by an "
    "inner leave-one-type-out over the training types. How each method ran and how each choice "
    "was made is written out with the tables."
)
DATASETS = ("kang",)
MAIN_TYPES = ("CD4 T", "CD14 Mono", "NK", "B", "FCGR3A Mono")  # >= 40 cells per condition
SMALL_TYPES = ("DC",)  # 13 control / 16 stimulated cells: reported apart
TYPES = (*MAIN_TYPES, *SMALL_TYPES)
QUICK_TYPES = ("B",)
CONFIGS = tuple(pm.CONFIGS)
NESTED = "gmmvae_nested"
METHODS = (NESTED, "scgen", *pm.BASELINES, *CONFIGS)
# The nested selection, fixed before any result was seen: the mean over the inner held-out
# types of delta-PCC on the top-100 DEGs (the response the unchanged control cannot fake);
# configs within TIE of the best count as tied and the simplest of them is chosen.
CRITERION = "delta_pcc_deg"
TIE = 0.005
METRICS = (
    "mean_r2",
    "mean_r2_deg",
    "mean_r2_sklearn",
    "mean_r2_sklearn_deg",
    "var_r2",
    "var_r2_deg",
    "delta_pcc",
    "delta_pcc_deg",
    "deg_recovery",
    "direction_accuracy_deg",
    "energy_distance",
    "sampled_energy_distance",
    "coverage_deg",
)
HEADLINE = "mean_r2_deg"
LOWER_IS_BETTER = ("energy_distance", "sampled_energy_distance")


def task_name(held_out: str, inner: str | None = None) -> str:
    return f"held out: {held_out}" + (f"; inner: {inner}" if inner else "")


def inner_types(held_out: str, present: set[str]) -> list[str]:
    """The main types other than ``held_out`` that the data has, in :data:`MAIN_TYPES` order."""
    return [u for u in MAIN_TYPES if u != held_out and u in present]


# ------------------------------------------------------------------------------ options
def gmmvae_options(max_epochs: int | None) -> dict[str, Any]:
    return {
        "labels_key": pm.LABELS_KEY,
        "condition_key": pm.CONDITION_KEY,
        "likelihood": "nb",
        "max_epochs": max_epochs,
    }


def config_options(config: str, max_epochs: int | None) -> dict[str, Any]:
    return {**gmmvae_options(max_epochs), "predict": pm.CONFIGS[config]}


def nested_options(max_epochs: int | None, inner: list[str]) -> dict[str, Any]:
    selection = {"criterion": CRITERION, "tie": TIE, "order": list(CONFIGS), "inner": inner}
    return {**gmmvae_options(max_epochs), "selection": selection}


def scgen_options(max_epochs: int | None) -> dict[str, Any]:
    return {**pm.SCGEN_OPTIONS, "max_epochs": max_epochs}


# ---------------------------------------------------------------------------- the splits
_SPLITS: dict[tuple, pm.Split] = {}


def split_of(ds, held_out: str, also_removed: tuple[str, ...] = ()) -> pm.Split:
    """The split of one held-out type, computed once per process (DEGs and PCA included)."""
    key = (id(ds.adata), held_out, also_removed)
    if key not in _SPLITS:
        _SPLITS.clear()  # one outer type at a time: keep memory flat
        _SPLITS[key] = pm.Split(ds.adata, held_out, also_removed)
    return _SPLITS[key]


def figure_folder(quick: bool):
    return QUICK_RESULTS / "figures" if quick else FIGURES


# ----------------------------------------------------------------------------- the units
def run_baselines(ds, held_out: str, seed: int, todo: list[str]) -> dict[str, Result]:
    split = split_of(ds, held_out)
    out = {}
    for method in todo:  # one failing (e.g. a split half too small to score) spares the rest
        start = time.perf_counter()
        try:
            result = pm.baseline(split, method, seed)
        except Exception as exc:
            out[method] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        out[method] = {**result, "seconds": time.perf_counter() - start, "epochs": None}
    return out


def run_scgen(ds, held_out: str, seed: int, max_epochs, settings: Settings) -> Result:
    split = split_of(ds, held_out)

    def fn():
        predicted, extra = pm.scgen(split, seed, max_epochs, settings.threads)
        if seed == 0 and (max_epochs is None or settings.quick):
            pm.scatter(split, predicted, "scgen", "scGen", figure_folder(settings.quick))
        return split.score(predicted), extra

    return timed(fn)


def run_inner(ds, held_out: str, inner: str, seed: int, max_epochs) -> dict[str, Result]:
    """One inner model (outer training cells minus the stimulated cells of ``inner``); every
    config predicts ``inner`` and is scored on it (mean output only)."""
    start = time.perf_counter()
    split = pm.Split(ds.adata, inner, also_removed=(held_out,))
    model = pm.train_gmmvae(split, seed, max_epochs)
    trained = time.perf_counter() - start
    out = {}
    for config in CONFIGS:
        pred, seconds = pm.predict_gmmvae(model, split, config, seed)
        out[config] = {
            "scores": pm.gmmvae_scores(split, pred, sampled=False),
            "seconds": trained + seconds,
            "epochs": len(model.history),
            "extra": {"train_seconds": trained},
        }
    total = time.perf_counter() - start
    for result in out.values():
        result["extra"]["unit_seconds"] = total
    return out


def select(ds, held_out: str, seed: int, max_epochs, inner: list[str], quick: bool) -> dict:
    """The nested choice from the current inner rows: per config the mean :data:`CRITERION`
    over the inner types; the best, or the first of :data:`CONFIGS` within :data:`TIE` of it.

    Returns ``chosen``, ``inner_means`` (config -> mean), ``inner_seconds`` (sum of the inner
    units' wall time). Raises RuntimeError when an inner row is missing or failed.
    """
    rows = store.current_rows(store.Store(NAME, quick=quick).rows(), NAME)
    found: dict[tuple[str, str], dict] = {}
    for r in rows:
        method = r["method"]
        if r["dataset"] == ds.name and r["seed"] == seed and method in CONFIGS:
            if r["options"] == config_options(method, max_epochs):  # the same epoch cap
                found[(r["task"], method)] = r
    values: dict[str, list[float]] = {c: [] for c in CONFIGS}
    seconds = 0.0
    for u in inner:
        for config in CONFIGS:
            r = found.get((task_name(held_out, u), config))
            if r is None or "error" in r:
                why = "is missing" if r is None else f"failed ({r['error']})"
                raise RuntimeError(f"inner split {u} ({config}) {why}; rerun to compute it")
            values[config].append(float(r["scores"][CRITERION]))
        seconds += float(r["extra"]["unit_seconds"])
    means = {c: float(np.mean(v)) if len(v) else float("nan") for c, v in values.items()}
    finite = {c: m for c, m in means.items() if np.isfinite(m)}
    if not finite:
        raise RuntimeError(f"no config has a finite inner {CRITERION}")
    best = max(finite.values())
    chosen = next(c for c in CONFIGS if c in finite and finite[c] >= best - TIE)
    return {"chosen": chosen, "inner_means": means, "inner_seconds": seconds}


def run_gmmvae(ds, held_out: str, seed: int, max_epochs, inner, settings, todo):
    """The outer model: every config of ``todo`` and the nested choice predict t."""
    out: dict[str, Result] = {}
    choice = None
    if NESTED in todo:
        try:
            choice = select(ds, held_out, seed, max_epochs, inner, settings.quick)
        except RuntimeError as exc:
            out[NESTED] = {"error": f"RuntimeError: {exc}"[:500]}
            if todo == [NESTED]:
                return out
    start = time.perf_counter()
    split = split_of(ds, held_out)
    model = pm.train_gmmvae(split, seed, max_epochs)
    trained = time.perf_counter() - start
    wanted = [c for c in CONFIGS if c in todo or (choice and c == choice["chosen"])]
    for config in wanted:
        pred, seconds = pm.predict_gmmvae(model, split, config, seed)
        result = {
            "scores": pm.gmmvae_scores(split, pred),
            "seconds": trained + seconds,
            "epochs": len(model.history),
            "extra": {"train_seconds": trained},
        }
        if config in todo:
            out[config] = result
        if choice and config == choice["chosen"]:
            out[NESTED] = {
                **result,
                "seconds": result["seconds"] + choice["inner_seconds"],
                "extra": {**result["extra"], **choice},
            }
            if seed == 0 and (max_epochs is None or settings.quick):
                mean = np.asarray(pred.layers["gmmvae_log_mean"])
                title = f"gmmvae nested ({config.removeprefix('gmmvae_')})"
                pm.scatter(split, mean, "gmmvae_nested", title, figure_folder(settings.quick))
    return out


def units(ds, seed: int, settings: Settings, types=TYPES) -> list[Unit]:
    """Per held-out type: baselines, scGen, the inner units, then the outer gmmvae unit."""
    present = set(ds.truth)
    wanted = [m for m in METHODS if m in settings.methods]
    out = []
    for t in types:
        if t not in present:
            raise ValueError(f"held-out type {t!r} is not in {ds.name}; types: {sorted(present)}")
        task = task_name(t)
        base = {m: pm.baseline_options(m) for m in pm.BASELINES if m in wanted}
        if base:
            out.append(Unit(ds.name, task, seed, base, _bind(run_baselines, ds, t, seed)))
        inner = inner_types(t, present)
        for max_epochs in settings.epochs:
            if "scgen" in wanted:
                opts = {"scgen": scgen_options(max_epochs)}

                def scgen_run(todo, t=t, max_epochs=max_epochs):
                    return {"scgen": run_scgen(ds, t, seed, max_epochs, settings)}

                out.append(Unit(ds.name, task, seed, opts, scgen_run))
            if NESTED in wanted:
                for u in inner:
                    opts = {c: config_options(c, max_epochs) for c in CONFIGS}

                    def inner_run(todo, t=t, u=u, max_epochs=max_epochs):
                        return run_inner(ds, t, u, seed, max_epochs)

                    out.append(Unit(ds.name, task_name(t, u), seed, opts, inner_run))
            opts = {c: config_options(c, max_epochs) for c in CONFIGS if c in wanted}
            if NESTED in wanted:
                opts[NESTED] = nested_options(max_epochs, inner)
            if opts:

                def outer_run(todo, t=t, inner=inner, max_epochs=max_epochs):
                    return run_gmmvae(ds, t, seed, max_epochs, inner, settings, todo)

                out.append(Unit(ds.name, task, seed, opts, outer_run))
    return out


def _bind(fn, *args):
    return lambda todo: fn(*args, todo)


# ------------------------------------------------------------------------------- tables
def tables(frame, *, quick: bool = False) -> list[str]:
    """The section's tables (:mod:`benchmarks.perturbation_tables`, outside the fingerprint)."""
    from benchmarks import perturbation_tables

    return perturbation_tables.tables(frame, quick=quick)


def summary(frame) -> tuple[list[str], dict[str, int]]:
    """The summary's lines and verdict counts: gmmvae nested against scGen and the baselines."""
    from benchmarks import perturbation_tables

    return perturbation_tables.summary(frame)
