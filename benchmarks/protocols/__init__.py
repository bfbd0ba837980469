"""What every protocol shares: units of work, the resumable grid runner, scoring helpers.

A :class:`Unit` is one (dataset, task, seed) and the rows it writes, one per method, each
with its options. Methods that share one training (gmmvae and its latent + Leiden) are one
unit. The runner skips a unit whose rows all exist with the current fingerprint, appends its
rows as soon as it finishes, and turns an exception into error rows so the grid carries on.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import methods, store

MODULES = {
    "clustering": "clustering",
    "semi": "semi_supervised",
    "query": "query",
    "novelty": "novelty",
    "perturbation": "perturbation",
    "synthetic": "synthetic",
    "speed": "speed",
}
Result = dict[str, Any]  # {"scores": {...}, "seconds": float, "epochs": int, "extra": {...}}


def module(protocol: str):
    """The module of a protocol (a key of :data:`MODULES`)."""
    if protocol not in MODULES:
        raise ValueError(f"unknown protocol {protocol!r}; known: {list(MODULES)}")
    return importlib.import_module(f"benchmarks.protocols.{MODULES[protocol]}")


@dataclass
class Unit:
    """One piece of the grid.

    Attributes
    ----------
    dataset, task, seed
        What it runs on; ``task`` names the protocol's setting ("" if none).
    methods
        Method id -> options, for every row the unit writes.
    run
        Called with the method ids still to compute; returns one :data:`Result` per id.
    """

    dataset: str
    task: str
    seed: int
    methods: dict[str, dict[str, Any]]
    run: Callable[[list[str]], dict[str, Result]]


@dataclass
class Settings:
    """Options of one invocation that reach the methods."""

    seeds: list[int]
    datasets: list[str]
    methods: list[str]
    epochs: list[int | None]  # None = each method's default; then --cap values
    threads: int
    quick: bool
    retry_errors: bool = False


def key(protocol: str, unit: Unit, method: str) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "dataset": unit.dataset,
        "task": unit.task,
        "method": method,
        "options": unit.methods[method],
        "seed": unit.seed,
    }


def run_grid(protocol: str, units: Iterable[Unit], settings: Settings) -> int:
    """Run every unit not yet in the store; returns the number of rows written."""
    rows = store.Store(protocol, quick=settings.quick)
    written = 0
    for unit in units:
        todo = [
            m
            for m in unit.methods
            if not rows.has(
                key(protocol, unit, m),
                store.fingerprint(protocol, methods.scope(m)),
                retry_errors=settings.retry_errors,
            )
        ]
        if not todo:
            what = " ".join(filter(None, [unit.dataset, unit.task, f"seed {unit.seed}"]))
            print(f"skip {what}: rows are current")
            continue
        start = time.perf_counter()
        try:
            results = unit.run(todo)
        except Exception as exc:  # one method failing must not stop the grid
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"[:500]
            results = {m: {"error": error} for m in todo}
        elapsed = time.perf_counter() - start
        for m in todo:
            row = {
                **key(protocol, unit, m),
                **results[m],
                "seconds": results[m].get("seconds", elapsed),
                "quick": settings.quick,
                **store.provenance(protocol, methods.scope(m)),
            }
            rows.append(row)
            written += 1
            print(_line(row), flush=True)
    return written


def _line(row: dict[str, Any]) -> str:
    what = " ".join(
        filter(None, [row["dataset"], row["task"], row["method"], f"seed {row['seed']}"])
    )
    if "error" in row:
        return f"ERROR {what}: {row['error']}"
    scores = ", ".join(f"{k} {v:.3f}" for k, v in row["scores"].items() if isinstance(v, float))
    return f"{what}: {scores} ({row['seconds']:.1f} s)"


def timed(fn: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> Result:
    """Run ``fn`` -> (scores, extra) and return a :data:`Result` with its wall time."""
    start = time.perf_counter()
    scores, extra = fn()
    extra = dict(extra)
    return {
        "scores": scores,
        "seconds": time.perf_counter() - start,
        "epochs": extra.pop("epochs", None),
        "extra": extra,
    }


def single(method: str, run: Callable[[], Result]) -> Callable[[list[str]], dict[str, Result]]:
    """The ``run`` of a one-method unit."""
    return lambda todo: {method: run()}


def epoch_options(settings: Settings, method: str) -> list[int | None]:
    """The max_epochs values a method runs under: its default (None), then each --cap.
    Methods that do not train run once."""
    return settings.epochs if method in methods.TRAINED else [None]


# ------------------------------------------------------------------------------- scoring
def classification_scores(truth, predicted, confidence) -> dict[str, float]:
    """Accuracy, macro-F1 and ECE (15 bins, top-class confidence)."""
    from gmmvae import metrics

    truth = np.asarray(truth).astype(str)
    predicted = np.asarray(predicted).astype(str)
    return {
        "accuracy": metrics.accuracy(truth, predicted),
        "macro_f1": metrics.macro_f1(truth, predicted),
        "ece": metrics.expected_calibration_error(
            np.asarray(confidence, float), truth == predicted
        ),
    }


def stratified_split(labels: pd.Series, query_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of query cells: a random ``query_fraction`` of each type (seeded)."""
    rng = np.random.default_rng(seed)
    query = np.zeros(len(labels), dtype=bool)
    for _, pos in labels.groupby(labels.to_numpy()).indices.items():
        query[rng.choice(pos, round(query_fraction * len(pos)), replace=False)] = True
    return query
