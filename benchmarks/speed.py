"""Training speed and memory: gmmvae against scVI, growth with cells, training from disk.

Every row runs in a fresh subprocess so that its peak memory is its own. Three grids:

``throughput``
    gmmvae (exact sum over K, exact with 2 components per cell, shared) and scVI on the same
    simulated counts, same epochs, batch size, hidden sizes and latent size, in the same run;
    cells/s over timed steps, seconds per epoch, peak RSS and clustering ARI (gmmvae's own
    components; KMeans with K clusters on scVI's latent).
``scaling``
    gmmvae on 10^4, 10^5 and 10^6 cells x 2,000 genes, a fixed number of optimiser steps, in
    memory and from a backed ``.h5ad`` (read lazily, block by block).
``render``
    Tables into BENCHMARKS.md.

The large files are written chunk by chunk (rows resampled from a pool of simulated cells, so
no dense matrix is ever built) into ``--workdir``.

    python benchmarks/speed.py throughput --cells 10000 --components 10 30 --epochs 10
    python benchmarks/speed.py scaling --cells 10000 100000 1000000 --steps 300
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ResultStore, versions, write_section

GMMVAE_METHODS = {  # name -> GMMVAE keyword arguments
    "gmmvae-exact": {"variant": "exact", "components_per_cell": None},  # the full sum
    "gmmvae-exact-k2": {"variant": "exact", "components_per_cell": 2},
    "gmmvae-shared": {"variant": "shared"},
}
HIDDEN, LATENT = 128, 16
POOL_CELLS = 20_000
CHUNK_CELLS = 50_000


# ---------------------------------------------------------------------------------- data
def simulated_file(workdir: Path, n_cells: int, n_genes: int, n_types: int, seed: int) -> Path:
    """An h5ad of simulated counts (CSR), written once: directly when small, else in chunks."""
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
    else:  # rows drawn from the pool, chunk by chunk: the matrix never sits in memory whole
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, pool.n_obs, n_cells)
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


# ------------------------------------------------------------------------------ one row
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _step_timer(skip: int):
    import lightning.pytorch as pl
    import torch

    class StepTimer(pl.Callback):
        """Wall time and cells of the optimiser steps after the first ``skip`` (warm-up)."""

        def __init__(self) -> None:
            self.steps = self.cells = 0
            self.start = self.end = self.fit_start = self.fit_end = None

        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_start(self, trainer, pl_module) -> None:
            self.fit_start = self._now()
            self.rss_fit_start = self.rss_fit_max = _rss_mb()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.steps == skip and self.start is None:
                self.start = self._now()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps += 1
            if self.steps > skip:
                self.cells += len(next(iter(batch.values())))
                self.end = self._now()
            if self.steps % 50 == 0:
                self.rss_fit_max = max(self.rss_fit_max, _rss_mb())

        def on_train_end(self, trainer, pl_module) -> None:
            self.fit_end = self._now()
            self.rss_fit_max = max(self.rss_fit_max, _rss_mb())

    return StepTimer()


def run_row(spec: dict) -> dict:
    """Train one method as ``spec`` says; timings, memory and (optionally) ARI."""
    import anndata as ad
    import torch

    torch.set_num_threads(spec["threads"])
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("scvi").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    rss_start = _rss_mb()
    adata = ad.read_h5ad(spec["path"], backed="r" if spec["backed"] else None)
    rss_data = _rss_mb()
    timer = _step_timer(spec["skip_steps"])
    limits = {"max_steps": spec["steps"]} if spec.get("steps") else {}
    epochs = spec.get("epochs") or 10_000
    accelerator = spec["accelerator"]
    K, B, seed = spec["components"], spec["batch_size"], spec["seed"]
    start = time.perf_counter()
    if spec["method"] == "scvi":
        import scvi
        from sklearn.cluster import KMeans

        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(adata, n_hidden=HIDDEN, n_latent=LATENT, n_layers=1)
        model.train(
            max_epochs=epochs,
            batch_size=B,
            train_size=1.0,
            early_stopping=False,
            accelerator=accelerator,
            devices=1,
            enable_progress_bar=False,
            callbacks=[timer],
            **limits,
        )
        total = time.perf_counter() - start
        predicted = None
        if spec["score"]:
            latent = model.get_latent_representation()
            predicted = KMeans(K, n_init=10, random_state=seed).fit_predict(latent)
    else:
        import gmmvae

        gmmvae.GMMVAE.setup_anndata(adata)
        model = gmmvae.GMMVAE(
            adata,
            n_components=K,
            n_hidden=HIDDEN,
            n_latent=LATENT,
            seed=seed,
            **GMMVAE_METHODS[spec["method"]],
        )
        model.train(
            epochs,
            batch_size=B,
            seed=seed,
            train_size=1.0,
            early_stopping=False,
            accelerator=accelerator,
            devices=1,
            progress_bar=False,
            callbacks=[timer],
            **limits,
        )
        total = time.perf_counter() - start
        predicted = None
        if spec["score"]:
            model.predict(adata)
            predicted = adata.obs["gmmvae_label"].astype(str).to_numpy()
    row = {
        "timed_steps": timer.steps - spec["skip_steps"],
        "cells_per_s": timer.cells / (timer.end - timer.start),
        "fit_seconds": timer.fit_end - timer.fit_start,
        "total_seconds": total,
        "steps": timer.steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_start_mb": rss_start,
        "rss_after_data_mb": rss_data,
        # RSS sampled every 50 steps during fitting (ru_maxrss also covers loading and the
        # pass over all cells after fitting).
        "rss_fit_start_mb": timer.rss_fit_start,
        "rss_fit_max_mb": timer.rss_fit_max,
        "rss_end_mb": _rss_mb(),
    }
    row["epoch_seconds"] = adata.n_obs / row["cells_per_s"]
    if torch.cuda.is_available():
        row["gpu"] = torch.cuda.get_device_name()
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if predicted is not None:
        from gmmvae import metrics

        row["ari"] = metrics.ari(adata.obs["cell_type"].astype(str).to_numpy(), predicted)
    return row


def spawn_row(spec: dict) -> dict:
    """``run_row`` in a fresh interpreter (own peak RSS); the last stdout line is the row."""
    command = [sys.executable, __file__, "_row", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"row {spec} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ module steps
def module_steps(args: argparse.Namespace) -> None:
    """ms per optimiser step of the torch module alone (no data loading, no Lightning), for
    profiling changes: ``PYTHONPATH=<old checkout>/src`` times an older version the same way."""
    import torch

    from gmmvae.module import GMMVAEModule, ModuleConfig

    torch.set_num_threads(args.threads)
    B, G = args.batch_size, args.genes
    x = torch.poisson(torch.rand(B, G, generator=torch.Generator().manual_seed(0)) * 0.5)
    batch = {
        "x": x,
        "label": torch.full((B,), -1),
        "condition": torch.zeros(B, dtype=torch.long),
        "batch": torch.zeros(B, dtype=torch.long),
    }
    for K in args.components:
        for method in args.methods:
            options = dict(GMMVAE_METHODS[method])
            truncating = options.get("components_per_cell") is not None
            if not hasattr(ModuleConfig, "components_per_cell"):  # an older version
                if truncating:
                    continue
                options.pop("components_per_cell", None)
            torch.manual_seed(0)
            module = GMMVAEModule(ModuleConfig(n_genes=G, n_components=K, **options))
            optimiser = torch.optim.Adam(module.parameters(), 1e-3)
            for i in range(3 + args.steps):  # 3 warm-up steps
                if i == 3:
                    start = time.perf_counter()
                module(batch, 1.0).loss.backward()
                optimiser.step()
                optimiser.zero_grad()
            ms = (time.perf_counter() - start) / args.steps * 1000
            print(f"{method} K={K}: {ms:.1f} ms/step, {B / ms * 1000:,.0f} cells/s", flush=True)


# --------------------------------------------------------------------------------- grids
def _device_name(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda"):
        import torch

        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"


def throughput(args: argparse.Namespace, store: ResultStore) -> None:
    for K in args.components:
        path = simulated_file(args.workdir, args.cells, args.genes, K, args.seed)
        for method in args.methods:
            key = {
                "grid": "throughput",
                "method": method,
                "components": K,
                "cells": args.cells,
                "genes": args.genes,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "accelerator": args.accelerator,
                "seed": args.seed,
                "run": args.run,
            }
            if store.done(**key):
                continue
            spec = {**key, "path": str(path), "backed": False, "score": True, "steps": None}
            spec["skip_steps"] = args.skip_steps
            if method in args.timed_only:  # too slow to train in full here: time a few steps
                spec.update(score=False, steps=args.timed_steps + 5, skip_steps=5)
            row = spawn_row(spec)
            row["device"] = _device_name(args.accelerator)
            row["command"] = " ".join(["python benchmarks/speed.py", *sys.argv[1:]])
            row["versions"] = versions("gmmvae", "scvi-tools", "torch", "lightning")
            store.add({**key, **row})
            summary = {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}
            print(method, K, summary, flush=True)


def scaling(args: argparse.Namespace, store: ResultStore) -> None:
    for n_cells in args.cells:
        path = simulated_file(args.workdir, n_cells, args.genes, args.components[0], args.seed)
        for backed in args.modes:
            for method in args.methods:
                key = {
                    "grid": "scaling",
                    "method": method,
                    "components": args.components[0],
                    "cells": n_cells,
                    "genes": args.genes,
                    "backed": backed == "backed",
                    "steps": args.steps,
                    "batch_size": args.batch_size,
                    "threads": args.threads,
                    "accelerator": args.accelerator,
                    "run": args.run,
                }
                if store.done(**key):
                    continue
                spec = {**key, "path": str(path), "score": False, "seed": args.seed}
                spec["skip_steps"] = args.skip_steps
                row = spawn_row(spec)
                row["file_mb"] = path.stat().st_size / 2**20
                row["device"] = _device_name(args.accelerator)
                row["command"] = " ".join(["python benchmarks/speed.py", *sys.argv[1:]])
                row["versions"] = versions("gmmvae", "torch", "lightning", "anndata")
                store.add({**key, **row})
                print(
                    n_cells,
                    backed,
                    method,
                    {k: round(v, 1) for k, v in row.items() if isinstance(v, float)},
                )


# -------------------------------------------------------------------------------- render
def render(store: ResultStore) -> None:
    import pandas as pd

    rows = pd.DataFrame(store.rows())
    if rows.empty:
        return
    text = [
        "## Speed and scale",
        "",
        "Rows come from `benchmarks/speed.py`; each row trains in its own process (peak RSS is "
        "that process's `ru_maxrss`). gmmvae-exact-k2 is the exact variant with "
        "`components_per_cell=2`.",
        "",
    ]
    through = rows[rows["grid"] == "throughput"]
    for (run, threads), runs in through.groupby(["run", "threads"]):
        first = runs.iloc[0]
        text += [
            f"**Throughput, run `{run}`** — {first['device']}, {threads} torch thread(s), "
            f"{int(first['cells']):,} simulated cells x {int(first['genes']):,} genes (NB), "
            f"{int(first['epochs'])} epochs, batch {first['batch_size']}, hidden {HIDDEN}, latent "
            f"{LATENT}, seed {int(first['seed'])}, {first['date']}. Command: `{first['command']}`. "
            "cells/s over the steps after the first "
            "warm-up steps; ARI: gmmvae's components, KMeans (K) on scVI's latent.",
            "",
            "| K | method | cells/s | s/epoch | peak RSS (MB) | ARI | cells/s ÷ scVI |",
            "|---|---|---|---|---|---|---|",
        ]
        for K, group in runs.groupby("components"):
            scvi = group.loc[group["method"] == "scvi", "cells_per_s"]
            ref = float(scvi.iloc[0]) if len(scvi) else float("nan")
            for _, r in group.iterrows():
                ratio = r["cells_per_s"] / ref
                text.append(
                    f"| {K} | {r['method']} | {r['cells_per_s']:,.0f} | {r['epoch_seconds']:.1f} "
                    f"| {r['peak_rss_mb']:,.0f} | {_ari_cell(r)} | "
                    f"{ratio:.2f} |"
                )
        text.append("")
    scale = rows[rows["grid"] == "scaling"]
    for run, runs in scale.groupby("run"):
        first = runs.iloc[0]
        text += [
            f"**Scaling, run `{run}`** — {first['device']}, {first['threads']} torch "
            f"thread(s), 2,000 genes, K = {first['components']}, batch {first['batch_size']}, "
            f"{first['steps']} optimiser steps timed after warm-up, {first['date']}. Command: "
            f"`{first['command']}`. s/epoch is extrapolated from the timed steps; peak RSS "
            "covers loading, training, and the pass over all cells that `train` ends with. "
            "Backed rows read a file that the OS may hold in its page cache (not counted in "
            "RSS; the machine has 24 GB), so they show the read path and memory, not a cold disk."
            + (
                " This run shared the 2 cores with other benchmarks: cells/s moved with their "
                "load (compare the quiet throughput run above), not with the number of cells."
                if "shared" in str(run)
                else ""
            ),
            "",
            "| cells | data | method | file (MB) | cells/s | s/epoch | RSS after loading (MB) "
            "| peak RSS (MB) | peak − loaded (MB) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in runs.sort_values(["backed", "cells"]).iterrows():
            text.append(
                f"| {r['cells']:,} | {'backed h5ad' if r['backed'] else 'in memory'} | "
                f"{r['method']} | {r['file_mb']:,.0f} | {r['cells_per_s']:,.0f} | "
                f"{r['epoch_seconds']:,.0f} | {r['rss_after_data_mb']:,.0f} | "
                f"{r['peak_rss_mb']:,.0f} | {r['peak_rss_mb'] - r['rss_after_data_mb']:,.0f} |"
            )
        text.append("")
    text += truncation_table()
    write_section("speed", "\n".join(text))


def _ari_cell(row) -> str:
    ari = row.get("ari")
    if ari is None or ari != ari:  # NaN: the row was only timed
        return f"timed only ({row['timed_steps']} steps)"
    return f"{ari:.3f}"


def truncation_table() -> list[str]:
    """Quality with and without component truncation (rows of ``variants.py --store
    truncation``): does decoding 2 components per cell cost accuracy?"""
    import pandas as pd

    rows = pd.DataFrame(ResultStore("truncation").rows())
    if rows.empty:
        return []
    first = rows.iloc[0]
    text = [
        "**Does decoding fewer components per cell cost quality?** Exact variant with all K "
        "components decoded per cell (`exact`) and with `components_per_cell` = 2 or 3; "
        f"real data, 100 epochs, seed(s) {sorted(int(s) for s in rows['seed'].unique())}, "
        f"{first['date']}. "
        "Command: `python benchmarks/variants.py --variants exact exact-k2 exact-k3 --seeds 0 "
        "--store truncation --threads 1`. Seconds are wall time on a machine shared with other "
        "benchmarks (not comparable across rows; see the throughput table for speed).",
        "",
        "| dataset | task | variant | ARI | accuracy (hidden) | macro-F1 | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in rows.sort_values(["dataset", "task", "variant"]).iterrows():
        ari = f"{r['ari']:.3f}" if pd.notna(r.get("ari")) else ""
        semi = r["task"] != "clustering"
        acc = f"{r['accuracy']:.3f}" if semi else ""
        f1 = f"{r['macro_f1']:.3f}" if semi else ""
        text.append(
            f"| {r['dataset']} | {r['task']} | {r['variant']} | {ari} | {acc} | {f1} "
            f"| {r['seconds']:.0f} |"
        )
    return [*text, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", choices=["throughput", "scaling", "steps", "render", "_row"])
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--components", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300, help="scaling: timed steps")
    parser.add_argument("--skip-steps", type=int, default=20, help="warm-up steps not timed")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=[*GMMVAE_METHODS, "scvi"])
    parser.add_argument("--modes", nargs="+", default=["memory", "backed"])
    parser.add_argument(
        "--timed-only",
        nargs="*",
        default=[],
        help="throughput: methods only timed over --timed-steps steps (no full training, no ARI)",
    )
    parser.add_argument("--timed-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", default="cpu", help="label grouping rows of one sitting")
    parser.add_argument("--store", default="speed")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gmmvae-speed"))
    args = parser.parse_args()
    if args.grid == "_row":
        print(json.dumps(run_row(json.loads(args.spec))))
        return
    if args.grid == "steps":
        module_steps(args)
        return
    store = ResultStore(args.store)
    if args.grid == "throughput":
        args.cells = args.cells[0]
        throughput(args, store)
    elif args.grid == "scaling":
        scaling(args, store)
    render(store)


if __name__ == "__main__":
    main()
