"""Shared helpers of the benchmark scripts not yet ported to ``python -m benchmarks``
(perturbation.py, synthetic.py, speed.py, augmentation.py, variants.py): datasets, resumable
result rows, markdown tables. Delete this file once they are ported."""

from __future__ import annotations

import json
import platform
import time
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SHARED_DATA = ROOT.parent.parent / "shared" / "data"
BENCHMARKS_MD = ROOT.parent / "BENCHMARKS.md"


def load_dataset(name: str) -> tuple[ad.AnnData, str, str]:
    """(adata, labels_key, likelihood) for a benchmark dataset; same genes for every method."""
    import gmmvae
    from gmmvae.pp import select_genes

    if name == "pbmc68k_reduced":
        return gmmvae.datasets.pbmc68k(), "bulk_labels", "gaussian"
    if name == "kang_pbmc_2k":
        path = SHARED_DATA / "kang_pbmc_2k.h5ad"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found; benchmarks need ../shared/data beside the repo."
            )
        adata = select_genes(ad.read_h5ad(path), 2000)  # top 2,000 HVGs, seurat_v3 on counts
        return adata, "cell_type", "nb"
    raise ValueError(f"unknown dataset {name!r}")


class ResultStore:
    """Append-only JSON-lines file of result rows, so an interrupted grid resumes per row."""

    def __init__(self, name: str) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.path = RESULTS / f"{name}.jsonl"

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def done(self, **key) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.rows())

    def add(self, row: dict) -> None:
        row = {**row, "date": time.strftime("%Y-%m-%d"), "host": platform.node()[:12]}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def versions(*packages: str) -> str:
    return ", ".join(f"{p} {version(p)}" for p in packages)


def mean_sd_table(rows: list[dict], by: list[str], metrics: list[str]) -> str:
    """Markdown table of mean ± sd over seeds per group; NaNs skipped, '–' where none."""
    if not rows:
        return "(no rows yet)"
    frame = pd.DataFrame(rows)
    lines = ["| " + " | ".join(by + metrics + ["seeds"]) + " |"]
    lines.append("|" + "---|" * (len(by) + len(metrics) + 1))
    for key, group in frame.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        cells = [str(k) for k in key]
        for m in metrics:
            values = group[m].astype(float).dropna().to_numpy() if m in group else np.array([])
            if not len(values):
                cells.append("–")
                continue
            sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
            digits = 0 if m.endswith("seconds") else 3
            cells.append(f"{values.mean():.{digits}f} ± {sd:.{digits}f}")
        cells.append(str(len(group)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_section(marker: str, text: str) -> None:
    """Replace the section between `<!-- marker -->` and `<!-- /marker -->` in BENCHMARKS.md."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    doc = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc and end in doc:
        before, rest = doc.split(start, 1)
        doc = before + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(doc)
