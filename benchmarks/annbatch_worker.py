"""annbatch's side of the speed protocol's loader grid, run by a Python >= 3.12 interpreter
that has annbatch (gmmvae's own environment may be older and is not imported here).

    python annbatch_worker.py convert DATA.h5ad STORE.zarr [--seed 0] [--threads 1]
    python annbatch_worker.py load STORE.zarr [--batch 256] [--seed 0] [--threads 1]

``convert`` writes annbatch's pre-shuffled, sharded zarr collection of the h5ad
(``DatasetCollection(store).add_adatas([h5ad], shuffle=True)``); ``load`` runs one shuffled
epoch of ``Loader(batch_size=..., shuffle=True).use_collection(...)``, densifying every
batch. Each prints one JSON line: seconds, cells/s and peak RSS of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM``, the high-water mark of its own address space.
    (Not ``ru_maxrss``: Linux carries the parent's RSS at fork into the child's across exec,
    so a child of a large runner would report the runner's size.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def configure(threads: int) -> None:
    """zarrs' codec pipeline (annbatch's advice for local disks), ``threads`` workers."""
    import zarr

    zarr.config.set(
        {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline", "threading.max_workers": threads}
    )


def convert(h5ad: str, store: str, seed: int) -> dict:
    import numpy as np
    from annbatch import DatasetCollection

    start = time.perf_counter()
    DatasetCollection(store).add_adatas([h5ad], shuffle=True, rng=np.random.default_rng(seed))
    seconds = time.perf_counter() - start
    return {
        "convert_seconds": seconds,
        "convert_peak_rss_mb": peak_rss_mb(),
        "store_mb": folder_mb(Path(store)),
    }


def load(store: str, batch_size: int, seed: int) -> dict:
    import numpy as np
    from annbatch import DatasetCollection, Loader

    rss_imports = rss_mb()
    loader = Loader(
        batch_size=batch_size,
        shuffle=True,
        preload_to_gpu=False,
        rng=np.random.default_rng(seed),
    ).use_collection(DatasetCollection(store, mode="r"))
    start = time.perf_counter()
    first, cells, batches = None, 0, 0
    for batch in loader:
        x = batch["X"]
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)  # (B, G) dense
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
    if sys.version_info < (3, 12):
        sys.exit(f"annbatch needs Python >= 3.12; this is {sys.version.split()[0]}.")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["convert", "load"])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import warnings

    warnings.filterwarnings("ignore")
    from importlib.metadata import version

    configure(args.threads)
    start = time.perf_counter()
    if args.command == "convert":
        row = convert(args.paths[0], args.paths[1], args.seed)
    else:
        row = load(args.paths[0], args.batch, args.seed)
    key = "convert_wall_seconds" if args.command == "convert" else "wall_seconds"
    row[key] = time.perf_counter() - start
    row["annbatch_versions"] = {
        p: version(p) for p in ("annbatch", "zarr", "zarrs", "anndata", "numpy")
    }
    row["annbatch_python"] = sys.version.split()[0]
    print(json.dumps(row))


if __name__ == "__main__":
    main()
