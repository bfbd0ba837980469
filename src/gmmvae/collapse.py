"""Detecting a mixture that collapsed: components that hold almost no cells, or one component
that holds almost all of them. Training warns with the counts and what to try instead of
returning such a model silently."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gmmvae.data import CellData
    from gmmvae.model import GMMVAE

#: A component with fewer cells than this share of an even split is "almost empty".
EMPTY_SHARE = 0.01
#: One component with more than this share of the cells has "taken almost all" of them.
DOMINANT_SHARE = 0.9


def component_counts(model: GMMVAE, data: CellData) -> np.ndarray:
    """Cells whose most probable component is each component; (K,) int."""
    probs = model._encode(data, ["probs"])["probs"]
    return np.bincount(probs.argmax(1), minlength=model.config.n_components)


def collapsed(counts: np.ndarray, n_checked: int) -> tuple[list[int], int | None]:
    """(almost empty components among the first ``n_checked``, a dominant component or None)."""
    n = counts.sum()
    K = len(counts)
    floor = max(3.0, EMPTY_SHARE * n / K)
    empty = [k for k in range(n_checked) if counts[k] < floor]
    dominant = int(counts.argmax()) if K > 2 and counts.max() > DOMINANT_SHARE * n else None
    return empty, dominant


def check_components(model: GMMVAE, data: CellData) -> None:
    """Warn if the trained mixture collapsed on the cells of ``data`` (the training cells).

    Without labels every component should hold cells; with labels the free components may
    stay empty (no cell of an unknown type), so only a dominant component is reported.
    """
    if len(data) < 2 * model.config.n_components:
        return
    counts = component_counts(model, data)
    n_checked = 0 if model.config.n_labels else model.config.n_components
    empty, dominant = collapsed(counts, n_checked)
    if not empty and dominant is None:
        return
    names = model.component_names
    found = []
    if empty:
        listed = ", ".join(f"{names[k]} ({counts[k]})" for k in empty)
        found.append(f"{len(empty)} of {len(counts)} components hold almost no cells: {listed}")
    if dominant is not None:
        share = counts[dominant] / counts.sum()
        found.append(f"component {names[dominant]} holds {share:.0%} of the cells")
    warnings.warn(
        f"The mixture collapsed on the {counts.sum()} training cells: {'; '.join(found)}. "
        "Try another seed, fewer components (n_components), longer training (max_epochs), "
        "mixture_placement='kmeans', or, with all genes of a 10x run, selecting variable "
        "genes first (gmmvae.pp.select_genes(adata, 2000)).",
        UserWarning,
        stacklevel=3,
    )
