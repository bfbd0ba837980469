"""The benchmark datasets, prepared once per process: same cells and genes for every method.

Counts datasets keep the top 2,000 highly variable genes (``gmmvae.pp.select_genes``,
seurat_v3 on the counts of the dataset's cells); pbmc68k_reduced ships 765 log-normalised
genes and is used as it is. No labels are used to choose cells' genes.

=================  =====================================================================
name               cells, labels (K), covariates
=================  =====================================================================
zheng_fine         Zheng sorted PBMCs, the 1,691 cells of the 7 mutually exclusive
                   populations (``obs["exclusive_subset"]``), ``cell_type`` (7)
zheng_coarse       all 2,013 Zheng cells, ``cell_type_coarse`` (5)
cellbench          CellBench CEL-seq2, the 542 strict cells (one sorted cell, demuxlet
                   SNG), ``cell_line`` (5), ``plate`` as batch
pbmc68k_reduced    scanpy's 700 cells, log data, ``bulk_labels`` (10), Gaussian likelihood
kang               Kang IFN-β PBMCs, 2,000 cells, ``cell_type`` (7; labels made by Leiden
                   on PCA of the same counts), ``condition``
=================  =====================================================================
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

N_GENES = 2000
QUICK_CELLS = 300  # --quick: a stratified subsample of this many cells
DATASETS = ("zheng_fine", "zheng_coarse", "cellbench", "pbmc68k_reduced", "kang")
# Datasets whose labels no expression clustering made (DESIGN.md §2, revised rules).
INDEPENDENT_TRUTH = ("zheng_fine", "zheng_coarse", "cellbench", "pbmc68k_reduced")
DESCRIPTIONS = {
    "zheng_fine": "Zheng sorted PBMCs, the 1,691 cells of the 7 mutually exclusive bead-sorted "
    "populations, `cell_type` (K = 7), top 2,000 HVGs",
    "zheng_coarse": "Zheng sorted PBMCs, all 2,013 cells, `cell_type_coarse` (K = 5), top "
    "2,000 HVGs",
    "cellbench": "CellBench CEL-seq2 five cell lines, the 542 strict cells (one sorted cell, "
    "demuxlet SNG), `cell_line` from genotype (K = 5), `plate` as batch for gmmvae and "
    "scVI/scANVI, top 2,000 HVGs",
    "pbmc68k_reduced": "scanpy's pbmc68k_reduced, 700 cells x 765 genes of log data as shipped, "
    "`bulk_labels` from bulk correlation (K = 10); gmmvae Gaussian likelihood, scVI "
    "`gene_likelihood='normal'`",
    "kang": "Kang IFN-β PBMCs, 2,000 cells (1,000 control, 1,000 stimulated), `cell_type` "
    "(K = 7) made by Leiden on PCA of these counts, top 2,000 HVGs",
}


@dataclass
class Dataset:
    """One benchmark dataset and what every method needs to run on it.

    Attributes
    ----------
    name
        Registry name (:data:`DATASETS`).
    adata
        Cells x selected genes: raw counts in ``X`` (log data for pbmc68k_reduced).
    labels_key
        obs column of the truth (string categories, no unused ones).
    likelihood
        gmmvae likelihood: ``"nb"`` on counts, ``"gaussian"`` on log data.
    batch_key
        obs column of a technical batch for gmmvae and scVI/scANVI, or None.
    description
        One line for the tables.
    """

    name: str
    adata: ad.AnnData
    labels_key: str
    likelihood: str
    batch_key: str | None
    description: str
    _log: np.ndarray | None = field(default=None, repr=False)

    @property
    def truth(self) -> pd.Series:
        return self.adata.obs[self.labels_key].astype(str)

    @property
    def n_types(self) -> int:
        return self.truth.nunique()

    @property
    def scvi_likelihood(self) -> str:
        """scVI's ``gene_likelihood``: its default (ZINB) on counts, ``"normal"`` on log data."""
        return "normal" if self.likelihood == "gaussian" else "zinb"

    @property
    def independent_truth(self) -> bool:
        return self.name in INDEPENDENT_TRUTH

    def log_expression(self) -> np.ndarray:
        """Dense log1p CP10k (``sc.pp.normalize_total(target_sum=1e4)`` + ``sc.pp.log1p``);
        pbmc68k_reduced's log data as it ships. Computed once."""
        if self._log is None:
            import scanpy as sc

            holder = ad.AnnData(self.adata.X.copy())
            if self.likelihood != "gaussian":
                sc.pp.normalize_total(holder, target_sum=1e4)
                sc.pp.log1p(holder)
            x = holder.X.toarray() if sparse.issparse(holder.X) else np.asarray(holder.X)
            self._log = x.astype(np.float32)
        return self._log


def _read(data_dir: Path, filename: str) -> ad.AnnData:
    path = Path(data_dir) / filename
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"The benchmark data folder {Path(data_dir).resolve()} does not exist. Pass "
            "--data-dir with the folder holding the shared .h5ad files (default: the "
            "shared/data folder beside the repository)."
        )
    if not path.exists():
        raise FileNotFoundError(f"{path.resolve()} not found; --data-dir must hold {filename}.")
    return ad.read_h5ad(path)


def _prepare(adata: ad.AnnData, labels_key: str) -> ad.AnnData:
    """Top genes (seurat_v3 on counts) and string labels without unused categories."""
    from gmmvae.pp import select_genes

    adata = select_genes(adata.copy(), N_GENES)
    adata.obs[labels_key] = adata.obs[labels_key].astype(str).astype("category")
    return adata


def _zheng(data_dir: Path, fine: bool) -> Dataset:
    adata = _read(data_dir, "zheng_sorted_pbmc_2k.h5ad")
    if fine:
        adata = adata[adata.obs["exclusive_subset"].astype(bool).to_numpy()]
        key = "cell_type"
    else:
        key = "cell_type_coarse"
    adata = _prepare(adata, key)
    name = "zheng_fine" if fine else "zheng_coarse"
    return Dataset(name, adata, key, "nb", None, DESCRIPTIONS[name])


def _cellbench(data_dir: Path) -> Dataset:
    adata = _read(data_dir, "cellbench_celseq2_5cl.h5ad")
    strict = (adata.obs["cells_sorted_in_well"] == 1) & (adata.obs["demuxlet_call"] == "SNG")
    adata = _prepare(adata[strict.to_numpy()], "cell_line")
    adata.obs["plate"] = adata.obs["plate"].astype(str)
    return Dataset("cellbench", adata, "cell_line", "nb", "plate", DESCRIPTIONS["cellbench"])


def _pbmc68k() -> Dataset:
    import gmmvae

    adata = gmmvae.datasets.pbmc68k()
    adata.obs["bulk_labels"] = adata.obs["bulk_labels"].astype(str).astype("category")
    desc = DESCRIPTIONS["pbmc68k_reduced"]
    return Dataset("pbmc68k_reduced", adata, "bulk_labels", "gaussian", None, desc)


def _kang(data_dir: Path) -> Dataset:
    adata = _prepare(_read(data_dir, "kang_pbmc_2k.h5ad"), "cell_type")
    adata.obs["condition"] = adata.obs["condition"].astype(str)
    return Dataset("kang", adata, "cell_type", "nb", None, DESCRIPTIONS["kang"])


def stratified_subsample(groups: pd.Series, n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of about ``n`` cells, each group in proportion (at least 3 or all)."""
    rng = np.random.default_rng(seed)
    keep = []
    for _, pos in groups.groupby(groups.to_numpy(), observed=True).indices.items():
        take = min(len(pos), max(3, round(n * len(pos) / len(groups))))
        keep.append(rng.choice(pos, take, replace=False))
    return np.sort(np.concatenate(keep))


@functools.cache
def load(name: str, data_dir: Path, quick: bool = False) -> Dataset:
    """A benchmark dataset by name (cached per process).

    ``quick``: a stratified subsample of :data:`QUICK_CELLS` cells (by label, and by condition
    for kang) with the genes of the full dataset, for smoke checks only.
    """
    builders = {
        "zheng_fine": lambda: _zheng(data_dir, fine=True),
        "zheng_coarse": lambda: _zheng(data_dir, fine=False),
        "cellbench": lambda: _cellbench(data_dir),
        "pbmc68k_reduced": _pbmc68k,
        "kang": lambda: _kang(data_dir),
    }
    if name not in builders:
        raise ValueError(f"unknown dataset {name!r}; known: {list(builders)}")
    ds = builders[name]()
    if quick:
        groups = ds.truth
        if "condition" in ds.adata.obs:
            groups = groups + " | " + ds.adata.obs["condition"].astype(str)
        ds.adata = ds.adata[stratified_subsample(groups, QUICK_CELLS)].copy()
        ds.adata.obs[ds.labels_key] = ds.truth.astype("category")
        ds.description = f"QUICK subsample of {ds.adata.n_obs} cells of: {ds.description}"
    return ds
