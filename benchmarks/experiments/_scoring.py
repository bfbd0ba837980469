"""Generate cells for an inner held-out set's plan and score them as the synthetic protocol
does (classifier two-sample AUC, pooled and per type); shared by the generation experiments."""

from __future__ import annotations

import numpy as np


def generated_auc(
    model,
    plans: dict,
    real: np.ndarray,
    types: np.ndarray,
    *,
    latent: str,
    seed: int,
    min_cells: int,
) -> tuple[float, dict[str, float]]:
    """Pooled AUC and per-type AUC (types with >= ``min_cells`` real cells) of cells that
    ``model.generate`` makes for ``plans`` ({condition: {type: n}}), seeds ``seed + i``."""
    from gmmvae import evaluation, metrics

    parts, labels = [], []
    for i, (cond, plan) in enumerate(plans.items()):
        cells = model.generate(plan, condition=cond, seed=seed + i, latent=latent)
        parts.append(cells.layers["counts"].toarray())
        labels.append(cells.obs["gmmvae_label"].astype(str).to_numpy())
    fake, fake_types = metrics.log_cp10k(np.vstack(parts)), np.concatenate(labels)
    per_type = {
        t: round(evaluation.c2st_auc(real[types == t], fake[fake_types == t], seed=0), 3)
        for t in np.unique(types)
        if (types == t).sum() >= min_cells
    }
    return evaluation.c2st_auc(real, fake, seed=0), per_type
