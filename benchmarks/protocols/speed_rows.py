"""One row of the speed protocol, run in a fresh interpreter so that its peak RSS is its own:
``python -m benchmarks.protocols.speed_rows SPEC_JSON`` prints the row as JSON on its last
line. Also writes the simulated h5ad files the rows read (:func:`simulated_file`)."""

from __future__ import annotations

import inspect
import json
import math
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

POOL_CELLS = 20_000  # larger files resample rows of a pool this size
CHUNK_CELLS = 50_000  # rows written at a time


# ---------------------------------------------------------------------------------- data
def simulated_file(workdir: Path, n_cells: int, n_genes: int, n_types: int, seed: int) -> Path:
    """An h5ad of simulated counts (CSR in ``X``), written once: directly when small, else
    chunk by chunk from a pool of simulated cells (no dense matrix is ever built)."""
    import anndata as ad
    import h5py
    from anndata.io import sparse_dataset, write_elem

    from gmmvae.datasets import simulate

    path = workdir / f"sim_{n_cells}x{n_genes}_k{n_types}_s{seed}.h5ad"
    if path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    pool = simulate(min(n_cells, POOL_CELLS), n_genes, n_types, seed=seed)
    del pool.layers["counts"]
    partial = path.with_suffix(".partial")
    if n_cells <= POOL_CELLS:
        pool.write_h5ad(partial)
    else:
        picks = np.random.default_rng(seed).integers(0, pool.n_obs, n_cells)
        with h5py.File(partial, "w") as f:
            for start in range(0, n_cells, CHUNK_CELLS):
                chunk = pool.X[picks[start : start + CHUNK_CELLS]]
                if start == 0:
                    write_elem(f, "X", chunk)
                    matrix = sparse_dataset(f["X"])
                else:
                    matrix.append(chunk)
            obs = pool.obs.iloc[picks].copy()
            obs.index = [f"cell_{i}" for i in range(n_cells)]
            write_elem(f, "obs", obs)
            write_elem(f, "var", pool.var)
        ad.read_h5ad(partial, backed="r").file.close()  # readable as AnnData
    os.replace(partial, path)
    return path


# ------------------------------------------------------------------------------- timing
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM``, the high-water mark of its own address space.
    (Not ``ru_maxrss``: Linux carries the parent's RSS at fork into the child's across exec,
    so a child of a large runner would report the runner's size.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_timer(skip: int, stop_after: int | None):
    """A Lightning callback timing optimiser steps per phase, stopping after ``stop_after``.

    Intervals between consecutive step ends inside one epoch are summed per phase ("pretrain"
    while gmmvae's ``pretraining`` flag is set, else "main"); the first ``skip`` steps, the
    first step of every epoch (epoch-boundary work) and the first step of a new phase (the
    placement of the mixture, at an epoch boundary or between two steps) are left out.
    """
    import lightning.pytorch as pl
    import torch

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.steps = 0
            self.last: float | None = None
            self.last_phase = ""
            self.phase = {"pretrain": [0, 0.0], "main": [0, 0.0]}
            self.rss_fit_max = 0.0
            self.fit_start = self.fit_end = 0.0

        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_start(self, trainer, pl_module) -> None:
            self.fit_start = self._now()
            self.rss_fit_max = rss_mb()

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.last = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = self._now()
            self.steps += 1
            phase = "pretrain" if getattr(pl_module, "pretraining", False) else "main"
            if self.last is not None and self.steps > skip and phase == self.last_phase:
                # scANVI's semi-supervised loader yields (all-cells batch, labelled batch): the
                # cells of an epoch are those of the first.
                main = batch[0] if isinstance(batch, list | tuple) else batch
                self.phase[phase][0] += len(next(iter(main.values())))
                self.phase[phase][1] += now - self.last
            self.last, self.last_phase = now, phase
            if self.steps % 50 == 0:
                self.rss_fit_max = max(self.rss_fit_max, rss_mb())
            if stop_after is not None and self.steps >= stop_after:
                trainer.should_stop = True

        def on_train_end(self, trainer, pl_module) -> None:
            self.fit_end = self._now()
            self.rss_fit_max = max(self.rss_fit_max, rss_mb())

    return StepTimer()


def place_first(train) -> dict[str, int]:
    """The ``train`` option that places the mixture before the first step (its name has
    changed across gmmvae versions: ``pretrain_steps`` or ``mixture_init_epoch``)."""
    params = inspect.signature(train).parameters
    return next(({n: 0} for n in ("pretrain_steps", "mixture_init_epoch") if n in params), {})


def _mask_labels(adata, fraction: float | None, seed: int) -> str | None:
    """Keep a random ``fraction`` of the simulated types in obs["label"] ("Unknown" else)."""
    if not fraction:
        return None
    keep = np.random.default_rng(seed).random(adata.n_obs) < fraction
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    adata.obs["label"] = pd.Categorical(np.where(keep, truth, "Unknown"))
    return "label"


# ---------------------------------------------------------------------------------- rows
def training_row(spec: dict[str, Any]) -> dict[str, Any]:
    """Train gmmvae or scVI as ``spec`` says: fixed epochs (throughput, with ARI) or a fixed
    number of steps with the mixture placed first (scaling)."""
    import anndata as ad

    rss_start = rss_mb()
    adata = ad.read_h5ad(spec["path"], backed="r" if spec["backed"] else None)
    rss_data = rss_mb()
    k, seed = spec["components"], spec["seed"]
    steps = spec.get("steps")
    per_epoch = math.ceil(adata.n_obs / spec["batch_size"])
    epochs = spec.get("epochs") or math.ceil((steps + 1) / per_epoch)
    timer = step_timer(spec.get("skip_steps", 20), steps)
    common = {
        "batch_size": spec["batch_size"],
        "train_size": 1.0,
        "early_stopping": False,
        "accelerator": spec["accelerator"],
        "devices": 1,
        "callbacks": [timer],
    }
    labels_key = _mask_labels(adata, spec.get("label_fraction"), seed)
    start = time.perf_counter()
    predicted = None
    if spec["method"] == "scanvi":
        import scvi

        scvi.settings.seed = seed
        scvi.settings.dl_num_workers = 0
        scvi.model.SCANVI.setup_anndata(adata, labels_key=labels_key, unlabeled_category="Unknown")
        model = scvi.model.SCANVI(adata, n_hidden=128, n_latent=16, n_layers=1)
        model.train(max_epochs=epochs, enable_progress_bar=False, **common)
        epochs_run = len(model.history["elbo_train"])
        total = time.perf_counter() - start
        if spec["score"]:
            predicted = np.asarray(model.predict()).astype(str)
    elif spec["method"] == "scvi":
        import scvi

        scvi.settings.seed = seed
        scvi.settings.dl_num_workers = 0
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(adata, n_hidden=128, n_latent=16, n_layers=1)
        model.train(max_epochs=epochs, enable_progress_bar=False, **common)
        epochs_run = len(model.history["elbo_train"])
        total = time.perf_counter() - start
        if spec["score"]:
            from sklearn.cluster import KMeans

            latent = model.get_latent_representation()
            predicted = KMeans(k, n_init=10, random_state=seed).fit_predict(latent)
    else:
        import gmmvae

        gmmvae.GMMVAE.setup_anndata(adata, labels_key=labels_key)
        model = gmmvae.GMMVAE(
            adata, n_components=k, n_hidden=128, n_latent=16, seed=seed, **spec["gmmvae_options"]
        )
        first = place_first(model.train) if steps else {}
        model.train(epochs, seed=seed, progress_bar=False, **first, **common)
        epochs_run = len(model.history)
        total = time.perf_counter() - start
        if spec["score"]:
            predicted = np.asarray(model.predict(adata).to_numpy().argmax(1))
    cells, seconds = timer.phase["main"]
    pre_cells, pre_seconds = timer.phase["pretrain"]
    fit = timer.fit_end - timer.fit_start
    row = {
        "cells_per_s": cells / seconds if seconds else float("nan"),
        "pretrain_cells_per_s": pre_cells / pre_seconds if pre_seconds else float("nan"),
        "timed_steps": round(cells / spec["batch_size"]),
        "steps": timer.steps,
        "fit_seconds": fit,
        "other_seconds": fit - seconds - pre_seconds,  # placement, epoch ends, warm-up steps
        "total_seconds": total,
        "peak_rss_mb": peak_rss_mb(),
        "rss_start_mb": rss_start,
        "rss_after_data_mb": rss_data,
        "rss_fit_max_mb": timer.rss_fit_max,
        "epochs": epochs_run,
    }
    row["epoch_seconds"] = adata.n_obs / row["cells_per_s"] if seconds else float("nan")
    if predicted is not None:
        from gmmvae import metrics

        row["ari"] = metrics.ari(adata.obs["cell_type"].astype(str).to_numpy(), predicted)
    return row


def loader_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One shuffled epoch of gmmvae's backed-h5ad block loader, densified batches."""
    import anndata as ad

    from gmmvae.data import CellData, make_loader

    rss_imports = rss_mb()
    adata = ad.read_h5ad(spec["path"], backed="r")
    n = adata.n_obs
    zeros = np.zeros(n, dtype=np.int64)
    data = CellData(adata.X, np.full(n, -1), zeros, zeros)
    loader = make_loader(data, spec["batch_size"], shuffle=True, seed=spec["seed"])
    start = time.perf_counter()
    first, cells, batches = None, 0, 0
    for batch in loader:
        x = batch["x"]  # (B, G) dense float32 tensor
        cells += len(x)
        batches += 1
        if first is None:
            first = time.perf_counter() - start
    seconds = time.perf_counter() - start
    return {
        "cells_per_s": cells / seconds,
        "epoch_seconds": seconds,
        "first_batch_seconds": first,
        "batches": batches,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_imports,
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    import logging

    import torch

    torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "gmmvae"):
        logging.getLogger(name).setLevel(logging.ERROR)
    start = time.perf_counter()
    row = loader_row(spec) if spec["method"] == "gmmvae_loader" else training_row(spec)
    row["wall_seconds"] = time.perf_counter() - start
    if torch.cuda.is_available() and spec["accelerator"] not in ("cpu",):
        row["gpu"] = torch.cuda.get_device_name()
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(row))


if __name__ == "__main__":
    main()
