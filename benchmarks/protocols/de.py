"""Differential expression: each cell type against the rest, scored against known markers.

``python -m benchmarks de``. DESIGN.md §2 has no DE protocol; this one follows its rules (each
method at its defaults, three seeds, independent truth). Every method ranks the genes of
each type against all other cells, grouping the cells by the truth labels, as a user who
compares annotated groups does; the models are trained without labels.

Simulated data (``simulated``)
    ``gmmvae.datasets.simulate(n_cells=2000, n_genes=1000, n_types=5, seed=seed)`` (its
    other defaults: 5 % of the genes are markers of each type, natural-log fold change
    N(1.5, 0.4) over a N(0, 0.2) type effect on every gene), all genes. The returned AnnData
    does not record which genes are markers, so :func:`planted_markers` replays the
    simulation's random draws from ``uns["simulation"]`` up to the draw of the cell types and
    refuses to score if that replay does not reproduce ``obs["cell_type"]`` (which would mean
    ``simulate`` changed). A type's true up-regulated genes are its planted markers; the score
    is the AUPRC (``sklearn.metrics.average_precision_score``) of each method's ranking
    against them, per type and the mean over types. The seed changes the simulation and the
    training.
Real data (``zheng_fine``, ``zheng_coarse``)
    The bead-sorted Zheng PBMCs of :mod:`benchmarks.datasets` (top 2,000 HVGs; every
    canonical marker below is among them). Per population, the 10 genes each method ranks
    highest, and which of the population's canonical markers are among them: B MS4A1/CD79A,
    CD14 Mono CD14/LYZ, NK GNLY/NKG7, CD8 T (coarse) and CD8 naive T (fine) CD8A/CD8B. The
    CD4 populations have no canonical marker here; their top-10 lists are in the rows.

Methods (each at its defaults):

- gmmvae: ``GMMVAE.setup_anndata(adata)``, ``GMMVAE(adata, n_components=K,
  seed=seed).train(seed=seed)``, then ``model.differential_expression(groupby=<truth>,
  seed=seed)`` (``mode="change"``, delta 0.25, 5,000 draws per group);
- scVI: ``SCVI.setup_anndata(adata)``, ``SCVI(adata)`` trained with its defaults, then
  ``model.differential_expression(groupby=<truth>, mode="change")``;
- Wilcoxon: ``sc.tl.rank_genes_groups(<log1p CP10k>, <truth>, method="wilcoxon")``
  (reference "rest", all genes).

Rankings. gmmvae and scVI: genes with ``lfc_mean > 0`` first, then by ``proba_de`` (the
``bayes_factor`` orders them the same way), ties (many genes reach ``proba_de = 1``) by
``lfc_mean``; Wilcoxon: its ``scores`` (the signed z statistic). ``auprc_lfc`` ranks by the
estimated log fold change alone (``lfc_mean``; Wilcoxon ``logfoldchanges``).

Each tool's documented marker recipe, reported beside the headline (``*_recipe``; added
2026-12-07 without changing the headline ranking): what a user who follows the tool's own
tutorial puts in a dot plot. gmmvae and scVI (one layout, so one recipe): scvi-tools'
quick-start filter, genes with ``lfc_mean > 0``, ``bayes_factor > 3`` and
``non_zeros_proportion1 > 0.1``, in the ranking above, then every other gene. Wilcoxon:
``sc.tl.filter_rank_genes_groups`` at its defaults (in-group fraction >= 0.25, fold change
>= 2, out-group fraction <= 0.5), the kept genes in score order, then every other gene.
``tied_at_top``: genes per group with ``lfc_mean > 0`` and ``proba_de = 1`` (every draw past
delta), whose order only the tie-break decides (Bayesian methods only).

Cost at the defaults, one CPU thread: per seed and dataset one gmmvae training (at least
4,000 optimiser steps on data this small, 4-8 minutes) and one scVI training (400 epochs,
3-4 minutes); each DE call takes seconds. Three datasets x three seeds: about 1.5-3 h.
"""

from __future__ import annotations

import time
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import methods
from benchmarks.protocols import Result, Settings, Unit, single

NAME = "de"
TITLE = "Differential expression: each type against the rest, against known markers"
DATASETS = ("simulated", "zheng_fine", "zheng_coarse")
QUICK_DATASETS = ("simulated", "zheng_fine")
METHODS = ("gmmvae", "scvi", "wilcoxon")
# Display names of the methods that methods.NAMES lacks (report.py merges them).
NAMES = {"wilcoxon": "Wilcoxon (scanpy)"}
SIMULATED_METRICS = ("auprc", "auprc_lfc", "auprc_recipe", "auprc_min", "prevalence", "tied_at_top")
MARKER_METRICS = ("hit_fraction", "marker_rank_median", "hit_fraction_recipe", "tied_at_top")
METRICS = (*SIMULATED_METRICS, *MARKER_METRICS)
HEADLINE = "auprc"
LOWER_IS_BETTER = ("marker_rank_median",)
SIMULATION = {"n_cells": 2000, "n_genes": 1000, "n_types": 5}
QUICK_SIMULATION = {"n_cells": 300, "n_genes": 200, "n_types": 3}
TOP = 10
CANONICAL = {
    "B": ("MS4A1", "CD79A"),
    "CD14 Mono": ("CD14", "LYZ"),
    "NK": ("GNLY", "NKG7"),
    "CD8 T": ("CD8A", "CD8B"),
    "CD8 naive T": ("CD8A", "CD8B"),
}
DE_OPTIONS = {"mode": "change", "delta": 0.25, "n_samples": 5000}  # both models' defaults
RANKING = "lfc_mean > 0 first, then proba_de, then lfc_mean"
# scvi-tools' quick-start marker filter, applied to gmmvae's and scVI's frames alike.
SCVI_RECIPE = {"lfc_mean": 0.0, "bayes_factor": 3.0, "non_zeros_proportion1": 0.1}
WILCOXON_RECIPE = "sc.tl.filter_rank_genes_groups defaults"
DESCRIPTIONS = {
    "simulated": "`gmmvae.datasets.simulate(n_cells=2000, n_genes=1000, n_types=5, "
    "seed=seed)`, all 1,000 genes; truth: each type's 50 planted marker genes",
}
DESCRIPTION = (
    "Each type against all other cells, the cells grouped by the truth labels (as a user "
    "comparing annotated groups does); the models train without labels. Methods at their "
    "defaults: gmmvae `GMMVAE.setup_anndata(adata)`, `GMMVAE(adata, n_components=K, "
    "seed=seed).train(seed=seed)`, `model.differential_expression(groupby=<truth>, "
    "seed=seed)` (mode `change`, delta 0.25, 5,000 draws per group); scVI `SCVI(adata)` "
    "trained with its defaults, `differential_expression(groupby=<truth>, mode='change')`; "
    "Wilcoxon `sc.tl.rank_genes_groups(<log1p CP10k>, <truth>, method='wilcoxon')` "
    "(reference rest). Rankings: gmmvae and scVI put genes with `lfc_mean > 0` first, then "
    "order by `proba_de` (equivalently `bayes_factor`), ties by `lfc_mean`; Wilcoxon by its "
    "`scores` (signed z). *Simulated*: `gmmvae.datasets.simulate(n_cells=2000, n_genes=1000, "
    "n_types=5, seed=seed)`, all genes; its AnnData does not record the markers, so the "
    "benchmark replays the simulation's random draws from `uns['simulation']` (and checks "
    "that the replay reproduces every cell's type); a type's true up-regulated genes are its "
    "50 planted markers (log fold change N(1.5, 0.4) on top of a N(0, 0.2) effect on every "
    "gene). `auprc`: average precision (scikit-learn) of the method's ranking against them, "
    "mean over types; `auprc_min` the worst type; `auprc_lfc` the same with genes ranked by "
    "the estimated log fold change alone (`lfc_mean`; Wilcoxon `logfoldchanges`); "
    "`prevalence` the AUPRC of a random ranking (markers / genes). The seed changes the "
    "simulation and the training. *Zheng* (bead-sorted PBMCs, top 2,000 HVGs): per "
    "population the top-10 genes of each ranking; `hit_fraction` = the share of the "
    "canonical markers (B MS4A1/CD79A, CD14 Mono CD14/LYZ, NK GNLY/NKG7, CD8 (naive) T "
    "CD8A/CD8B) that are in their population's top 10; `marker_rank_median` their median "
    "rank (1 = first). *Each tool's own marker recipe* (`auprc_recipe`, "
    "`hit_fraction_recipe`; reported beside the headline, which keeps the ranking above): "
    "gmmvae and scVI, whose DE frames share scvi-tools' layout, by scvi-tools' quick-start "
    "filter (`lfc_mean > 0`, `bayes_factor > 3`, `non_zeros_proportion1 > 0.1`; the kept "
    "genes in the ranking above, then the rest); Wilcoxon by `sc.tl.filter_rank_genes_groups` "
    "at its defaults (in-group fraction >= 0.25, fold change >= 2, out-group fraction <= "
    "0.5; kept genes by score, then the rest). `tied_at_top`: genes per group with "
    "`lfc_mean > 0` and `proba_de = 1`, ordered only by the tie-break (mean over groups; "
    "Bayesian methods). `seconds`: training plus DE (the DE alone in `extra.de_seconds`)."
)


def warm_up() -> None:
    """A tiny gmmvae DE and a Wilcoxon test, so that no unit's wall time includes their
    first-call set-up."""
    import scanpy as sc

    import gmmvae

    tiny = gmmvae.datasets.simulate(n_cells=60, n_genes=20, n_types=2)
    gmmvae.GMMVAE.setup_anndata(tiny)
    model = gmmvae.GMMVAE(tiny, n_components=2).train(1, progress_bar=False)
    model.differential_expression(groupby="cell_type", n_samples=20)
    holder = sc.AnnData(np.log1p(tiny.X.toarray()), obs=tiny.obs[["cell_type"]])
    sc.tl.rank_genes_groups(holder, "cell_type", method="wilcoxon")


# ---------------------------------------------------------------------------- the truth
def planted_markers(adata) -> dict[str, np.ndarray]:
    """The marker genes ``gmmvae.datasets.simulate`` planted per type (sorted positions).

    Replays the simulation's draws from ``adata.uns["simulation"]`` in the order ``simulate``
    makes them, up to the draw of the cell types, and raises if that replay does not give
    ``obs["cell_type"]`` back (``simulate`` changed; update this replay).
    """
    p = adata.uns["simulation"]
    n_cells, n_genes = adata.shape
    n_types, n_conditions = int(p["n_types"]), int(p["n_conditions"])
    rng = np.random.default_rng(int(p["seed"]))
    n_markers = max(1, int(p["marker_fraction"] * n_genes))
    rng.normal(0.0, 1.5, n_genes)  # base log proportions
    rng.normal(0.0, 0.2, (n_types, n_genes))  # type effect on every gene
    markers = {}
    for t in range(n_types):
        markers[f"type_{t}"] = np.sort(rng.choice(n_genes, n_markers, replace=False))
        rng.normal(p["marker_log_fold"], 0.4, n_markers)
    rng.choice(n_genes, max(1, n_genes // 10), replace=False)  # shared response genes
    for _ in range(1, n_conditions):
        rng.normal(p["response_log_fold"], 0.5, max(1, n_genes // 10))
        rng.uniform(0.5, 1.5, n_types)
        for _ in range(n_types):
            rng.choice(n_genes, max(1, n_genes // 50), replace=False)
            rng.normal(1.0, 0.3, max(1, n_genes // 50))
    rng.normal(0.0, 0.3, (int(p["n_batches"]), n_genes))  # batch effect
    types = rng.choice(n_types, n_cells, p=rng.dirichlet(np.full(n_types, 5.0)))
    if not np.array_equal(types, adata.obs["cell_type"].cat.codes.to_numpy()):
        raise RuntimeError(
            "Replaying gmmvae.datasets.simulate's draws did not reproduce obs['cell_type']: "
            "simulate has changed, so its planted markers are unknown. Update "
            "benchmarks.protocols.de.planted_markers to the new order of draws."
        )
    return markers


def simulated(seed: int, quick: bool):
    """The simulated dataset of a seed, as a :class:`benchmarks.datasets.Dataset`, and its
    planted markers by type (gene names)."""
    import gmmvae
    from benchmarks.datasets import Dataset

    shape = QUICK_SIMULATION if quick else SIMULATION
    adata = gmmvae.datasets.simulate(**shape, seed=seed)
    markers = {t: adata.var_names[pos].to_numpy() for t, pos in planted_markers(adata).items()}
    description = DESCRIPTIONS["simulated"]
    if quick:
        description = f"QUICK: simulate({shape}) instead of: {description}"
    return Dataset("simulated", adata, "cell_type", "nb", None, description), markers


# ------------------------------------------------------------------------------ rankings
def bayes_ranking(frame: pd.DataFrame) -> pd.Series:
    """Score per gene (higher = more up in group1): ``lfc_mean > 0`` first, then
    ``proba_de``, then ``lfc_mean``; all scores distinct."""
    lfc = frame["lfc_mean"].to_numpy(float)
    order = np.lexsort((lfc, frame["proba_de"].to_numpy(float), lfc > 0))
    score = np.empty(len(frame))
    score[order] = np.arange(len(frame))
    return pd.Series(score, index=frame.index.astype(str))


def kept_first(score: pd.Series, kept: np.ndarray) -> pd.Series:
    """``score`` with the ``kept`` genes lifted above all others, each block in its order."""
    values = score.to_numpy(float)
    finite = values[np.isfinite(values)]
    lift = (finite.max() - finite.min() + 1.0) if len(finite) else 1.0
    return pd.Series(values + np.asarray(kept, dtype=bool) * lift, index=score.index)


def scvi_recipe_ranking(frame: pd.DataFrame) -> pd.Series:
    """scvi-tools' quick-start marker filter (:data:`SCVI_RECIPE`): genes passing every
    threshold first, in :func:`bayes_ranking` order, then the others."""
    kept = np.ones(len(frame), dtype=bool)
    for column, threshold in SCVI_RECIPE.items():
        kept &= frame[column].to_numpy(float) > threshold
    return kept_first(bayes_ranking(frame), kept)


def bayes_rankings(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per group1 of a DE frame in scvi-tools' layout (gmmvae's and scVI's): the ``primary``
    ranking, the ``lfc`` one, the ``recipe`` one and ``tied`` (up genes at proba_de = 1)."""
    out = {}
    for group, part in frame.groupby("group1", sort=False):
        lfc = pd.Series(part["lfc_mean"].to_numpy(float), index=part.index.astype(str))
        tied = int(((part["lfc_mean"] > 0) & (part["proba_de"] >= 1.0)).sum())
        out[str(group)] = {
            "primary": bayes_ranking(part),
            "lfc": lfc,
            "recipe": scvi_recipe_ranking(part),
            "tied": tied,
        }
    return out


def wilcoxon_rankings(holder) -> dict[str, dict[str, Any]]:
    """Per group of ``sc.tl.rank_genes_groups`` on ``holder``: its ``scores``, its
    ``logfoldchanges`` and the ``recipe`` ranking of ``sc.tl.filter_rank_genes_groups``."""
    import scanpy as sc

    sc.tl.filter_rank_genes_groups(holder)  # scanpy's defaults
    out = {}
    for group in holder.uns["rank_genes_groups"]["names"].dtype.names:
        table = sc.get.rank_genes_groups_df(holder, group=group)
        # Same order as the unfiltered table: the filter blanks the names it drops.
        filtered = sc.get.rank_genes_groups_df(
            holder, group=group, key="rank_genes_groups_filtered"
        )
        table = table.set_index("names")
        scores = table["scores"].astype(float)
        out[str(group)] = {
            "primary": scores,
            "lfc": table["logfoldchanges"].astype(float),
            "recipe": kept_first(scores, filtered["names"].notna().to_numpy()),
            "tied": None,
        }
    return out


def rank(ds, seed: int, method: str, max_epochs: int | None, threads: int):
    """(rankings per group, extra) of one method: trained and tested, or tested."""
    key = ds.labels_key
    start = time.perf_counter()
    if method == "gmmvae":
        model = methods.gmmvae_model(
            ds.adata, ds, seed=seed, max_epochs=max_epochs, n_components=ds.n_types
        )
        extra = {"epochs": methods.gmmvae_extra(model)["epochs"]}
        trained = time.perf_counter()
        frame = model.differential_expression(groupby=key, seed=seed)
        rankings = bayes_rankings(frame)
    elif method == "scvi":
        scvi = methods._scvi(seed, threads)
        adata = ds.adata.copy()
        scvi.model.SCVI.setup_anndata(adata, batch_key=ds.batch_key)
        model = scvi.model.SCVI(adata, gene_likelihood=ds.scvi_likelihood)
        size = methods.scvi_batch_size(adata.n_obs)
        extra = {"epochs": methods._train(model, max_epochs, size), "batch_size": size}
        trained = time.perf_counter()
        frame = model.differential_expression(groupby=key, mode="change", silent=True)
        rankings = bayes_rankings(frame)
    elif method == "wilcoxon":
        import scanpy as sc

        holder = sc.AnnData(
            ds.log_expression(),
            obs=pd.DataFrame({key: ds.truth.to_numpy()}, index=ds.adata.obs_names),
        )
        holder.var_names = ds.adata.var_names.astype(str)
        trained = time.perf_counter()
        extra = {}
        sc.tl.rank_genes_groups(holder, key, method="wilcoxon")
        rankings = wilcoxon_rankings(holder)
    else:
        raise ValueError(f"unknown DE method {method!r}; known: {list(METHODS)}")
    extra["de_seconds"] = time.perf_counter() - trained
    extra["train_seconds"] = trained - start
    return rankings, extra


def _finite(score: pd.Series, genes) -> np.ndarray:
    """Scores in ``genes`` order; missing or non-finite ones last."""
    values = score.reindex(genes).to_numpy(float)
    bad = ~np.isfinite(values)
    if bad.any():
        values[bad] = (np.min(values[~bad]) if (~bad).any() else 0.0) - 1.0
    return values


def top_genes(score: pd.Series, n: int = TOP) -> list[str]:
    return score.sort_values(ascending=False, kind="stable").index[:n].astype(str).tolist()


# ------------------------------------------------------------------------------- scoring
def score_simulated(rankings, markers: dict[str, np.ndarray], genes) -> tuple[dict, dict]:
    """AUPRC per type of the primary and the LFC ranking against the planted markers."""
    from sklearn.metrics import average_precision_score

    genes = np.asarray(genes).astype(str)
    per_type = {}
    for t, true in markers.items():
        y = np.isin(genes, true)
        per_type[t] = {
            f"auprc{suffix}": float(average_precision_score(y, _finite(rankings[t][kind], genes)))
            for kind, suffix in (("primary", ""), ("lfc", "_lfc"), ("recipe", "_recipe"))
        }
        per_type[t] |= {
            "n_true": int(y.sum()),
            "top": top_genes(rankings[t]["primary"]),
            "tied": rankings[t]["tied"],
        }
    metrics = ("auprc", "auprc_lfc", "auprc_recipe")
    values = {m: [v[m] for v in per_type.values()] for m in metrics}
    scores = {m: float(np.mean(values[m])) for m in metrics}
    scores |= {
        "auprc_min": float(np.min(values["auprc"])),
        "prevalence": float(np.mean([v["n_true"] / len(genes) for v in per_type.values()])),
        "tied_at_top": _mean_tied(rankings),
    }
    return scores, {"per_type": per_type}


def _mean_tied(rankings) -> float:
    """Mean over groups of the up genes at proba_de = 1 (NaN for a method without one)."""
    tied = [r["tied"] for r in rankings.values() if r.get("tied") is not None]
    return float(np.mean(tied)) if tied else float("nan")


def score_markers(rankings) -> tuple[dict, dict]:
    """Canonical markers in each population's top 10 (headline and recipe rankings), and
    their ranks in the headline one."""
    hits, recipe_hits, ranks, per_population = [], [], [], {}
    for population, ranking in rankings.items():
        order = top_genes(ranking["primary"], len(ranking["primary"]))
        recipe_top = top_genes(ranking["recipe"])
        entry: dict[str, Any] = {"top": order[:TOP], "top_recipe": recipe_top}
        entry["tied"] = ranking.get("tied")
        if population in CANONICAL:
            canonical = CANONICAL[population]
            position = {g: i + 1 for i, g in enumerate(order)}
            entry["canonical"] = list(canonical)
            entry["hits"] = [g for g in canonical if g in order[:TOP]]
            entry["hits_recipe"] = [g for g in canonical if g in recipe_top]
            entry["ranks"] = {g: position.get(g) for g in canonical}
            hits += [g in order[:TOP] for g in canonical]
            recipe_hits += [g in recipe_top for g in canonical]
            ranks += [r for r in entry["ranks"].values() if r is not None]
        per_population[population] = entry
    scores = {
        "hit_fraction": float(np.mean(hits)) if hits else float("nan"),
        "marker_rank_median": float(np.median(ranks)) if ranks else float("nan"),
        "hit_fraction_recipe": float(np.mean(recipe_hits)) if recipe_hits else float("nan"),
        "tied_at_top": _mean_tied(rankings),
    }
    return scores, {"per_population": per_population}


def run(ds, markers, seed: int, method: str, max_epochs: int | None, threads: int) -> Result:
    start = time.perf_counter()
    rankings, extra = rank(ds, seed, method, max_epochs, threads)
    seconds = time.perf_counter() - start
    if markers is not None:
        scores, more = score_simulated(rankings, markers, ds.adata.var_names)
        more["type_sizes"] = {str(k): int(v) for k, v in ds.truth.value_counts().items()}
    else:
        scores, more = score_markers(rankings)
    extra.update(more, n_cells=int(ds.adata.n_obs), n_genes=int(ds.adata.n_vars))
    epochs = extra.pop("epochs", None)
    return {"scores": scores, "seconds": seconds, "epochs": epochs, "extra": extra}


def options(ds, method: str, max_epochs: int | None, quick: bool) -> dict[str, Any]:
    """What a row's key records of a method's run."""
    if method == "gmmvae":
        out = methods.gmmvae_options(ds, max_epochs, n_components=ds.n_types)
        out |= {"de": DE_OPTIONS, "ranking": RANKING, "recipe": SCVI_RECIPE}
    elif method == "scvi":
        out = methods.scvi_options(ds, max_epochs)
        out |= {"de": DE_OPTIONS, "ranking": RANKING, "recipe": SCVI_RECIPE}
    else:
        out = {"input": "log1p CP10k", "method": "wilcoxon", "reference": "rest"}
        out |= {"ranking": "scores", "recipe": WILCOXON_RECIPE}
    if ds.name == "simulated":
        out["simulation"] = QUICK_SIMULATION if quick else SIMULATION
    return out


def grid_units(settings: Settings, data_dir) -> list[Unit]:
    """Per dataset and seed, one unit per method (and per epoch cap for the trained ones)."""
    from benchmarks import datasets

    out = []
    for name in settings.datasets:
        for seed in settings.seeds:
            if name == "simulated":
                ds, markers = simulated(seed, settings.quick)
            else:
                ds, markers = datasets.load(name, data_dir, settings.quick), None
            for method in (m for m in METHODS if m in settings.methods):
                trained = method in ("gmmvae", "scvi")
                for max_epochs in settings.epochs if trained else [None]:
                    fn = partial(run, ds, markers, seed, method, max_epochs, settings.threads)
                    opts = {method: options(ds, method, max_epochs, settings.quick)}
                    out.append(Unit(name, "", seed, opts, single(method, fn)))
    return out


# ------------------------------------------------------------------------------- tables
def _part(metrics: tuple[str, ...], headline: str):
    """A stand-in protocol for :func:`benchmarks.report.table` on some of the metrics."""
    return SimpleNamespace(METRICS=metrics, HEADLINE=headline, LOWER_IS_BETTER=LOWER_IS_BETTER)


def tables(frame: pd.DataFrame, *, quick: bool) -> list[str]:
    """Simulated: AUPRC table and per type; Zheng: marker hits and the top-10 lists."""
    from benchmarks import datasets, report

    ok = frame[frame["error"].isna()]
    text: list[str] = []
    sim = ok[ok["dataset"] == "simulated"]
    if not sim.empty:
        desc = "QUICK: " + str(QUICK_SIMULATION) if quick else DESCRIPTIONS["simulated"]
        text += ["### Simulated counts: AUPRC against the planted markers", "", desc, ""]
        text += [report.table(sim, _part(SIMULATED_METRICS, "auprc")), ""]
        text += ["AUPRC per type (one simulation per seed; types are not matched across seeds):"]
        text += ["", _per_type(sim), ""]
    real = ok[ok["dataset"] != "simulated"]
    if not real.empty:
        text += ["### Zheng sorted PBMCs: canonical markers in the top 10", ""]
        text += [f"- `{d}`: {datasets.DESCRIPTIONS[d]}" for d in real["dataset"].unique()]
        text += ["", report.table(real, _part(MARKER_METRICS, "hit_fraction")), ""]
        text += [
            "Per population: how many of its canonical markers are in the top 10, per seed, "
            "and the top 10 of the first seed (canonical markers in bold).",
            "",
            _per_population(real),
            "",
        ]
    return text


def _per_type(sim: pd.DataFrame) -> str:
    labels = list(dict.fromkeys(sim["label"]))
    head = ["seed", "type", "cells", "markers", *labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed, part in sim.groupby("seed", sort=True):
        first = part["extra"].iloc[0]["per_type"]
        sizes = part["extra"].iloc[0].get("type_sizes", {})
        for t in first:
            cells = [str(seed), t, str(sizes.get(t, "–")), str(first[t]["n_true"])]
            for name in labels:
                rows = part[part["label"] == name]
                value = rows["extra"].iloc[0]["per_type"][t]["auprc"] if len(rows) else None
                cells.append("–" if value is None else f"{value:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_population(real: pd.DataFrame) -> str:
    head = [
        "data",
        "population",
        "method",
        "hits per seed",
        "top 10 (first seed)",
        "recipe: hits per seed",
        "recipe: top 10 (first seed)",
        "tied at the top (first seed)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (ds, name), group in real.groupby(["dataset", "label"], sort=False):
        group = group.sort_values("seed")
        populations = group["extra"].iloc[0]["per_population"]
        for population in sorted(populations, key=lambda p: (p not in CANONICAL, p)):
            entry = populations[population]
            canonical = set(entry.get("canonical", ()))
            cells = [ds, population, name]
            for hits_key, top_key in (("hits", "top"), ("hits_recipe", "top_recipe")):
                counts = [
                    e["per_population"].get(population, {}).get(hits_key) for e in group["extra"]
                ]
                known = canonical and all(c is not None for c in counts)
                cells.append(", ".join(str(len(c)) for c in counts) if known else "–")
                top = entry.get(top_key)
                bold = (f"**{g}**" if g in canonical else g for g in top or ())
                cells.append(", ".join(bold) if top else "–")
            tied = entry.get("tied")
            cells.append("–" if tied is None else str(tied))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(frame: pd.DataFrame) -> tuple[list[str], dict[str, int]]:
    """The summary's lines: AUPRC on simulated data, marker hits on Zheng."""
    from benchmarks import report

    if frame.empty:
        return [], {}
    ok = frame[frame["error"].isna() & frame["default"]]
    text: list[str] = []
    tally: dict[str, int] = {}
    peers = [m for m in METHODS if m != "gmmvae"]
    is_sim = ok["dataset"] == "simulated"
    parts = (
        ("AUPRC, simulated", ok[is_sim], SIMULATED_METRICS, "auprc"),
        ("canonical markers in the top 10", ok[~is_sim], MARKER_METRICS, "hit_fraction"),
    )
    for title, part, metrics, headline in parts:
        if part.empty:
            continue
        lines, counts = report._summary_table(part, _part(metrics, headline), peers)
        text += ["", f"**{TITLE}: {title}**", "", *lines]
        for k, v in counts.items():
            tally[k] = tally.get(k, 0) + v
    return text, tally
