"""Speed and scale (DESIGN.md §2): throughput against scVI, growth with cells, genes and
components, and minibatch loading from disk against scverse's annbatch.

``python -m benchmarks speed [throughput|scaling|loader]``. Every row runs in a fresh
subprocess (:mod:`benchmarks.protocols.speed_rows`) so that its peak RSS is its own; rows go
through the store with their provenance like every other protocol. Data are simulated counts
(``gmmvae.datasets.simulate``), written once per shape to :data:`WORKDIR` as h5ad (large files
chunk by chunk, rows resampled from a pool of simulated cells).

``throughput``
    gmmvae (default: 2 components decoded per cell without labels), gmmvae with
    ``components_per_cell=None`` (all K), gmmvae ``variant="shared"`` and scVI on the same
    10^4 cells, same epochs, batch size, hidden and latent sizes; cells/s of the steps after
    pre-training, seconds per epoch, peak RSS, ARI.
    With 5 % labels (a random 5 % of the cells keep their simulated type), gmmvae's
    labelled default against scANVI trained from scratch, same settings.
``scaling``
    gmmvae on 10^4, 10^5, 10^6 cells x 2,000 genes, in memory and from a backed h5ad, a fixed
    number of optimiser steps with the mixture placed before the first one; then the same on
    10^4 cells with 500 to 8,000 genes (gmmvae and scVI) and 5 to 50 components (the three
    gmmvae settings).
``loader``
    One shuffled epoch of densified 256-cell minibatches from disk: gmmvae's own block loader
    (``gmmvae.data.CellData`` + ``make_loader(..., shuffle=True)`` on ``read_h5ad(path,
    backed="r").X``) against annbatch's ``Loader`` on the zarr collection it writes from the
    same h5ad (the conversion timed apart), 10^4 to 10^6 cells. annbatch needs Python >= 3.12,
    so it runs in its own virtualenv (:data:`ANNBATCH_PYTHON`) through
    ``benchmarks/annbatch_worker.py``.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks import REPO, ROOT
from benchmarks.protocols import Result, Settings, Unit, single

NAME = "speed"
TITLE = "Speed and scale"
DATASETS = ("simulated",)
GMMVAE = {  # method id -> GMMVAE(...) options
    "gmmvae": {},
    "gmmvae_full": {"components_per_cell": None},
    "gmmvae_shared": {"variant": "shared"},
}
# Semi-supervised throughput (5 % labels): gmmvae's labelled default against scANVI.
LABELLED = ("gmmvae_semi", "scanvi")
LABEL_FRACTION = 0.05
METHODS = (*GMMVAE, "scvi", *LABELLED, "gmmvae_loader", "annbatch")
# Display names not in methods.NAMES (whose bytes are in every row's fingerprint).
NAMES = {"gmmvae_semi": "gmmvae, 5 % labels"}
GRIDS = ("throughput", "scaling", "loader")
SEEDS = (0,)
METRICS = ("cells_per_s", "epoch_seconds", "peak_rss_mb")
HEADLINE = "cells_per_s"
LOWER_IS_BETTER: tuple[str, ...] = ()
SUMMARY_TASKS: tuple[str, ...] = ()  # no seeds to compare: not in the summary
HIDDEN, LATENT, BATCH = 128, 16, 256
WORKDIR = Path(os.environ.get("GMMVAE_SPEED_WORKDIR", "/tmp/gmmvae-speed"))
ANNBATCH_PYTHON = Path(
    os.environ.get("ANNBATCH_PYTHON", REPO.parent / "annbatch-env" / "venv" / "bin" / "python")
)
FULL = {
    "throughput": {
        "cells": 10_000,
        "genes": 2000,
        "components": (10, 30),
        "epochs": 10,
        "skip": 20,
    },
    "scaling": {"cells": (10_000, 100_000, 1_000_000), "steps": 300, "skip": 20},
    "genes": (500, 1000, 2000, 4000, 8000),
    "components": (5, 10, 20, 30, 50),
    "growth_cells": 10_000,
    "loader": (10_000, 100_000, 1_000_000),
}
QUICK = {  # --quick: 10^4 cells at most, a few steps
    "throughput": {"cells": 2000, "genes": 2000, "components": (5,), "epochs": 2, "skip": 2},
    "scaling": {"cells": (10_000,), "steps": 30, "skip": 5},
    "genes": (500, 1000),
    "components": (5, 10),
    "growth_cells": 2000,
    "loader": (10_000,),
}
DESCRIPTION = (
    "Simulated NB counts (`gmmvae.datasets.simulate`: K types, realistic sparsity), no "
    "labels; every row trains or loads in its own process (peak RSS = that process's "
    "`VmHWM`, loading and the pass over all cells after training included). Hidden "
    f"{HIDDEN}, latent {LATENT}, 1 layer and batch {BATCH} for gmmvae and "
    "scVI alike (scVI: `SCVI(adata, n_hidden=128, n_latent=16, n_layers=1)`, its ZINB), "
    "`train_size=1.0`, no early stopping. Cells/s counts the intervals between consecutive "
    "optimiser steps inside an epoch after the first warm-up steps, so data loading is in "
    "and epoch-boundary work (placement of the mixture, the pass over all cells after "
    "training) is out; `cells/s` is the rate after pre-training (gmmvae's mixture phase, all "
    "of scVI), `pretrain cells/s` gmmvae's plain-VAE phase. The growth tables run a fixed "
    "number of steps with the mixture placed before the first (`pretrain_steps=0`), so every "
    "timed step is a mixture step; `placement etc.` is the fit time outside the timed steps "
    "(mostly the Leiden placement on up to 50,000 cells). Wall times were measured on a "
    "machine whose load the row's `machine` field does not show; compare rows of one run."
)


# ------------------------------------------------------------------------------ running
def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """One row in a fresh interpreter (its own peak RSS); the last stdout line is its JSON."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(spec["threads"])
    command = [sys.executable, "-m", "benchmarks.protocols.speed_rows", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"speed row failed ({spec['method']}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def annbatch(path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """annbatch's conversion and one epoch of its Loader, each in its own 3.12 process."""
    if not ANNBATCH_PYTHON.exists():
        raise FileNotFoundError(
            f"No annbatch interpreter at {ANNBATCH_PYTHON}. annbatch needs Python >= 3.12: "
            "python3.12 -m venv ../annbatch-env/venv && ../annbatch-env/venv/bin/pip install "
            "'annbatch[zarrs]' (or set ANNBATCH_PYTHON)."
        )
    store = WORKDIR / f"{path.stem}.annbatch.zarr"
    env = {**os.environ, "RAYON_NUM_THREADS": str(spec["threads"]), "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    out: dict[str, Any] = {}
    worker = str(ROOT / "annbatch_worker.py")
    common = ["--seed", str(spec["seed"]), "--threads", str(spec["threads"])]
    try:
        for step in (
            ["convert", str(path), str(store)],
            ["load", str(store), "--batch", str(BATCH)],
        ):
            done = subprocess.run(
                [str(ANNBATCH_PYTHON), worker, *step, *common],
                capture_output=True,
                text=True,
                env=env,
            )
            if done.returncode != 0:
                raise RuntimeError(f"annbatch {step[0]} failed:\n{done.stderr[-3000:]}")
            out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return out


def run_row(spec: dict[str, Any], path_args: tuple) -> Result:
    from benchmarks.protocols.speed_rows import simulated_file

    path = simulated_file(WORKDIR, *path_args)
    spec = {**spec, "path": str(path)}
    raw = annbatch(path, spec) if spec["method"] == "annbatch" else spawn(spec)
    seconds = raw.pop("wall_seconds") + raw.pop("convert_wall_seconds", 0.0)
    extra = {k: raw.pop(k) for k in [k for k, v in raw.items() if not isinstance(v, int | float)]}
    extra["file_mb"] = path.stat().st_size / 2**20
    return {"scores": raw, "seconds": seconds, "epochs": raw.pop("epochs", None), "extra": extra}


# -------------------------------------------------------------------------------- units
def grid_units(settings: Settings, grids: list[str], accelerator: str = "cpu") -> list[Unit]:
    """The units of the requested grids (no dataset: the protocol simulates its own)."""
    grid = QUICK if settings.quick else FULL
    out: list[Unit] = []
    wanted = [m for m in METHODS if m in settings.methods]
    for seed in settings.seeds:
        base = {"threads": settings.threads, "accelerator": accelerator, "seed": seed}

        def add(task, method, options, path_args, spec, base=base, seed=seed):
            spec = {**base, **spec, "method": method}
            row = partial(run_row, spec, path_args)
            opts = {**options, "threads": settings.threads, "accelerator": accelerator}
            out.append(Unit("simulated", task, seed, {method: opts}, single(method, row)))

        if "throughput" in grids:
            t = grid["throughput"]
            for k in t["components"]:
                for m in (m for m in wanted if m in (*GMMVAE, "scvi")):
                    opts = {"cells": t["cells"], "genes": t["genes"], "components": k}
                    opts |= {"epochs": t["epochs"], "skip_steps": t["skip"], "batch_size": BATCH}
                    opts |= _method(m)
                    spec = {**opts, "backed": False, "score": True}
                    add(f"throughput: K = {k}", m, opts, (t["cells"], t["genes"], k, seed), spec)
                for m in (m for m in wanted if m in LABELLED):
                    opts = {"cells": t["cells"], "genes": t["genes"], "components": k}
                    opts |= {"epochs": t["epochs"], "skip_steps": t["skip"], "batch_size": BATCH}
                    opts |= {"label_fraction": LABEL_FRACTION, **_method(m)}
                    spec = {**opts, "backed": False, "score": True}
                    task = f"throughput, 5 % labels: K = {k}"
                    add(task, m, opts, (t["cells"], t["genes"], k, seed), spec)
        if "scaling" in grids:
            s = grid["scaling"]
            steps = {"steps": s["steps"], "skip_steps": s["skip"], "batch_size": BATCH}
            for n in s["cells"]:
                for mode in ("memory", "backed"):
                    if "gmmvae" in wanted:
                        opts = {"cells": n, "genes": 2000, "components": 10, "data": mode}
                        opts |= _method("gmmvae")
                        spec = {**opts, **steps, "backed": mode == "backed", "score": False}
                        add(
                            f"cells: {n:,}, {mode}",
                            "gmmvae",
                            {**opts, **steps},
                            (n, 2000, 10, seed),
                            spec,
                        )
            n = grid["growth_cells"]
            for g in grid["genes"]:
                for m in (m for m in wanted if m in ("gmmvae", "scvi")):
                    opts = {
                        "cells": n,
                        "genes": g,
                        "components": 10,
                        "data": "memory",
                        **_method(m),
                    }
                    spec = {**opts, **steps, "backed": False, "score": False}
                    add(f"genes: {g:,}", m, {**opts, **steps}, (n, g, 10, seed), spec)
            for k in grid["components"]:
                for m in (m for m in wanted if m in GMMVAE):
                    opts = {
                        "cells": n,
                        "genes": 2000,
                        "components": k,
                        "data": "memory",
                        **_method(m),
                    }
                    spec = {**opts, **steps, "backed": False, "score": False}
                    add(f"components: {k}", m, {**opts, **steps}, (n, 2000, k, seed), spec)
        if "loader" in grids:
            for n in grid["loader"]:
                for m in (m for m in wanted if m in ("gmmvae_loader", "annbatch")):
                    opts = {"cells": n, "genes": 2000, "batch_size": BATCH, "shuffle": True}
                    opts |= _loader_options(m)
                    add(f"loader: {n:,} cells", m, opts, (n, 2000, 10, seed), dict(opts))
    return out


def _method(method: str) -> dict[str, Any]:
    if method == "scvi":
        return {"model": "SCVI(n_hidden=128, n_latent=16, n_layers=1)"}
    if method == "scanvi":
        return {"model": "SCANVI(n_hidden=128, n_latent=16, n_layers=1), from scratch"}
    return {"gmmvae_options": GMMVAE.get(method, {})}


def _loader_options(method: str) -> dict[str, Any]:
    if method == "annbatch":
        return {
            "conversion": "DatasetCollection(store).add_adatas([h5ad], shuffle=True)",
            "loader": "Loader(batch_size=256, shuffle=True, preload_to_gpu=False)"
            ".use_collection(...); defaults chunk_size=512, preload_nchunks=32",
            "codec_pipeline": "zarrs",
        }
    return {"loader": "CellData(read_h5ad(path, backed='r').X) + make_loader(shuffle=True)"}


# ------------------------------------------------------------------------------- tables
ADOPTION = (
    "**Adopting annbatch** (decided later, from these rows) would mean: a Python >= 3.12 "
    "floor (gmmvae supports 3.11 today, and the CPU torch wheel used here is for 3.11); a "
    "conversion step before training (`DatasetCollection(...).add_adatas([...])` writes a "
    "pre-shuffled, sharded zarr copy of the data, timed and sized above; it shuffles once on "
    "disk, so later epochs read the same cell order in new chunk orders), and a second copy of "
    "the data on disk; new dependencies: annbatch, zarr >= 3, zarrs (the Rust codec pipeline "
    "it needs for local-disk speed), dask, pydantic, aiohttp and their own dependencies "
    "(cupy optional, for GPU-side batching). Its batches are scipy CSR (or torch with "
    "`to='torch'`), so gmmvae's `CellData` would keep densifying per batch; labels, "
    "conditions and batches would come from the yielded `obs` frame."
)


def tables(frame: pd.DataFrame, *, quick: bool) -> list[str]:
    """One table per grid (throughput, scaling by cells, by genes, by components, loader)."""
    ok = frame[frame["error"].isna()].copy()
    for key in ("cells", "genes", "components", "data", "threads"):
        ok[key] = ok["options"].map(lambda o, key=key: o.get(key))
    ok["file_mb"] = ok["extra"].map(lambda e: e.get("file_mb"))
    # The peer of a task on as many threads: scVI, or scANVI in the labelled tasks. Rows on
    # different thread counts are different measurements, never seeds of one.
    peer_rows = ok[ok["method"].isin(["scvi", "scanvi"])]
    peers = peer_rows.groupby(["task", "threads"])["cells_per_s"].mean()
    ok["vs_scvi"] = (
        ok["cells_per_s"].to_numpy()
        / peers.reindex(list(zip(ok["task"], ok["threads"], strict=True))).to_numpy()
    )
    text: list[str] = []
    parts = [
        (
            "Throughput",
            ok[ok["task"].str.startswith("throughput")],
            ["threads", "components"],
            _THROUGHPUT,
        ),
        (
            "Growth with cells (fixed steps)",
            ok[ok["task"].str.startswith("cells")],
            ["data", "cells"],
            _SCALING,
        ),
        (
            "Growth with genes (fixed steps)",
            ok[ok["task"].str.startswith("genes")],
            ["genes"],
            _SCALING,
        ),
        (
            "Growth with components (fixed steps)",
            ok[ok["task"].str.startswith("components")],
            ["components"],
            _SCALING,
        ),
        (
            "Minibatch loading from disk",
            ok[ok["task"].str.startswith("loader")],
            ["cells"],
            _LOADER,
        ),
    ]
    for title, part, by, columns in parts:
        if part.empty:
            continue
        text += [f"### {title}", "", _table(part, by, columns), ""]
        if title.startswith("Minibatch"):
            text += [ADOPTION, ""]
    return text


_THROUGHPUT = {
    "cells/s": ("cells_per_s", 0),
    "pretrain cells/s": ("pretrain_cells_per_s", 0),
    "cells/s ÷ scVI (scANVI with labels)": ("vs_scvi", 2),
    "s/epoch": ("epoch_seconds", 1),
    "peak RSS (MB)": ("peak_rss_mb", 0),
    "ARI": ("ari", 3),
    "fit (s)": ("fit_seconds", 1),
}
_SCALING = {
    "h5ad (MB)": ("file_mb", 0),
    "cells/s": ("cells_per_s", 0),
    "cells/s ÷ scVI": ("vs_scvi", 2),
    "s/epoch (extrapolated)": ("epoch_seconds", 1),
    "RSS after loading (MB)": ("rss_after_data_mb", 0),
    "peak RSS (MB)": ("peak_rss_mb", 0),
    "placement etc. (s)": ("other_seconds", 1),
}
_LOADER = {
    "h5ad (MB)": ("file_mb", 0),
    "cells/s": ("cells_per_s", 0),
    "epoch (s)": ("epoch_seconds", 1),
    "first batch (s)": ("first_batch_seconds", 2),
    "RSS after imports (MB)": ("rss_after_imports_mb", 0),
    "peak RSS (MB)": ("peak_rss_mb", 0),
    "conversion (s)": ("convert_seconds", 1),
    "conversion peak RSS (MB)": ("convert_peak_rss_mb", 0),
    "store on disk (MB)": ("store_mb", 0),
}


def _table(part: pd.DataFrame, by: list[str], columns: dict[str, tuple[str, int]]) -> str:
    from benchmarks import report

    present = {h: c for h, c in columns.items() if c[0] in part and part[c[0]].notna().any()}
    head = [*by, "method", *present, "made by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, group in part.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for name, rows in group.groupby("label", sort=False):
            cells = [_key(k) for k in key] + [name]
            cells += [report.fmt(*report.stats(rows[c]), digits=d) for c, d in present.values()]
            lines.append("| " + " | ".join([*cells, report.made_by(rows)]) + " |")
    return "\n".join(lines)


def _key(value: Any) -> str:
    """10000.0 -> "10,000" (options read back through pandas may have become floats)."""
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return f"{int(value):,}"
    return str(value)
