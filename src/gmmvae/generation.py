"""Synthetic cells from a trained model: composition and library sizes, then z | y, then x | z.

``training_summary`` records what generation needs from the training data (component
frequencies, library-size quantiles per component, condition and batch frequencies) so that a
saved model generates without the data. ``generate`` samples cells from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from gmmvae._seed import seeded_rng
from gmmvae.data import GMMVAEInputError
from gmmvae.distributions import sample_counts

if TYPE_CHECKING:
    from gmmvae.model import GMMVAE

_QUANTILES = np.linspace(0.0, 1.0, 101)
_MIN_CELLS_PER_COMPONENT = 10  # fewer cells than this: use every cell's library sizes
_CHUNK = 2048  # cells decoded at a time, so memory stays bounded


def training_summary(
    components: np.ndarray,
    library: np.ndarray,
    conditions: np.ndarray,
    batches: np.ndarray,
    n_components: int,
    n_conditions: int,
    n_batches: int,
) -> dict[str, Any]:
    """Frequencies and log-library quantiles of the training cells, JSON-ready.

    ``components`` holds each training cell's label, or its most probable component when
    unlabelled.
    """
    log_lib = np.log(np.maximum(library, 1.0))
    per_component = []
    for k in range(n_components):
        cells = log_lib[components == k]
        source = cells if len(cells) >= _MIN_CELLS_PER_COMPONENT else log_lib
        per_component.append(np.quantile(source, _QUANTILES).round(5).tolist())
    return {
        "component_frequencies": _frequencies(components, n_components),
        "condition_frequencies": _frequencies(conditions, n_conditions),
        "batch_frequencies": _frequencies(batches, n_batches),
        "log_library_quantiles": per_component,
    }


def _frequencies(codes: np.ndarray, n: int) -> list[float]:
    counts = np.bincount(codes, minlength=n).astype(float)
    return (counts / max(counts.sum(), 1.0)).tolist()


def _codes_for(
    requested: str | Sequence[str] | None, names: list[str], role: str, hint: str = ""
) -> list[int] | None:
    if requested is None:
        return None
    wanted = [requested] if isinstance(requested, str) else list(requested)
    unknown = [w for w in wanted if str(w) not in names]
    if unknown:
        raise GMMVAEInputError(f"Unknown {role} {unknown}; known ones are {names}.{hint}")
    return [names.index(str(w)) for w in wanted]


def plan_cells(
    model: GMMVAE,
    n_cells: int | Mapping[str, int],
    cell_type: str | Sequence[str] | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Component code of every cell to generate."""
    names = model.component_names
    hint = (
        ""
        if model.config.n_labels
        else " This model was trained without labels, so its components are numbered; ask "
        "for a component by its number, e.g. cell_type='0', and compare with model.predict()."
    )
    if isinstance(n_cells, Mapping):
        codes = _codes_for(list(n_cells), names, "cell type", hint) or []
        counts = [int(n) for n in n_cells.values()]
        if any(n < 1 for n in counts):
            raise GMMVAEInputError(f"n_cells values must be >= 1, got {dict(n_cells)}.")
        return np.repeat(codes, counts)
    if int(n_cells) < 1:
        raise GMMVAEInputError(f"n_cells must be >= 1, got {n_cells}.")
    codes = _codes_for(cell_type, names, "cell type", hint)
    if codes is not None:
        return np.repeat(codes, int(n_cells))
    freq = np.asarray(model.generation_summary["component_frequencies"])
    return rng.choice(len(names), int(n_cells), p=freq / freq.sum())


def _covariate_codes(
    requested: str | None,
    names: list[str],
    freq: list[float],
    n: int,
    role: str,
    rng: np.random.Generator,
) -> np.ndarray:
    if not names:
        if requested is not None:
            raise GMMVAEInputError(f"The model was trained without a {role}_key; drop {role}=.")
        return np.zeros(n, dtype=np.int64)
    if requested is not None:
        return np.full(n, _codes_for(requested, names, role)[0], dtype=np.int64)
    p = np.asarray(freq)
    return rng.choice(len(names), n, p=p / p.sum())


def _library_sizes(
    model: GMMVAE, components: np.ndarray, library_size: str | float, rng: np.random.Generator
) -> np.ndarray:
    if library_size != "empirical":
        value = float(library_size)
        if not np.isfinite(value) or value <= 0:
            raise GMMVAEInputError(
                f"library_size must be 'empirical' or a positive number, got {library_size!r}."
            )
        return np.full(len(components), value)
    quantiles = np.asarray(model.generation_summary["log_library_quantiles"])  # (K, 101)
    u = rng.uniform(size=len(components))
    log_lib = np.array(
        [np.interp(ui, _QUANTILES, quantiles[k]) for ui, k in zip(u, components, strict=True)]
    )
    return np.round(np.exp(log_lib))


def generate(
    model: GMMVAE,
    n_cells: int | Mapping[str, int],
    *,
    cell_type: str | Sequence[str] | None = None,
    condition: str | None = None,
    batch: str | None = None,
    library_size: str | float = "empirical",
    seed: int = 0,
) -> AnnData:
    """See :meth:`gmmvae.GMMVAE.generate`."""
    if not model.is_trained or not model.generation_summary:
        raise GMMVAEInputError("Train the model before generating cells (model.train()).")
    rng = np.random.default_rng(seed)
    components = plan_cells(model, n_cells, cell_type, rng)
    n = len(components)
    reg, summary = model.registry, model.generation_summary
    conditions = _covariate_codes(
        condition,
        list(reg.get("conditions") or []),
        summary["condition_frequencies"],
        n,
        "condition",
        rng,
    )
    batches = _covariate_codes(
        batch, list(reg.get("batches") or []), summary["batch_frequencies"], n, "batch", rng
    )
    gaussian = model.config.likelihood == "gaussian"
    library = np.ones(n) if gaussian else _library_sizes(model, components, library_size, rng)

    module = model.module
    device = next(module.parameters()).device
    module.eval()
    chunks = []
    with seeded_rng(seed), torch.no_grad():
        for start in range(0, n, _CHUNK):
            part = slice(start, start + _CHUNK)
            z = module.sample_latent(_tensor(components[part], device))
            params = module.generative(
                z,
                _tensor(library[part], device, torch.float32),
                _tensor(conditions[part], device),
                _tensor(batches[part], device),
            )
            x = sample_counts(model.config.likelihood, params)
            chunks.append(x.cpu().numpy().astype(np.float32))
    values = np.concatenate(chunks)
    return _as_anndata(
        model,
        values,
        components,
        conditions,
        batches,
        library,
        gaussian,
        {
            "n_cells": n,
            "cell_type": cell_type,
            "condition": condition,
            "batch": batch,
            "library_size": library_size,
            "seed": seed,
        },
    )


def _tensor(values: np.ndarray, device, dtype=torch.long) -> torch.Tensor:
    return torch.as_tensor(values, dtype=dtype).to(device)


def _as_anndata(model, values, components, conditions, batches, library, gaussian, params):
    reg = model.registry
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical.from_codes(components, model.component_names)},
        index=[f"synthetic_{i}" for i in range(len(components))],
    )
    if reg.get("conditions"):
        obs["condition"] = pd.Categorical.from_codes(conditions, list(reg["conditions"]))
    if reg.get("batches"):
        obs["batch"] = pd.Categorical.from_codes(batches, list(reg["batches"]))
    obs["synthetic"] = True
    var = pd.DataFrame(index=pd.Index(model.gene_names, name=None))
    info = {
        "params": {k: v for k, v in params.items() if v is not None and not isinstance(v, dict)},
        "variant": model.config.variant,
        "likelihood": model.config.likelihood,
    }
    if gaussian:
        info["values"] = "log-normalised (Gaussian likelihood): samples of the decoder's normal"
        return AnnData(X=values, obs=obs, var=var, uns={"gmmvae_generate": info})
    info["values"] = f"counts sampled from the {model.config.likelihood} likelihood"
    counts = sparse.csr_matrix(values)
    adata = AnnData(X=counts, obs=obs, var=var, uns={"gmmvae_generate": info})
    adata.layers["counts"] = counts.copy()
    adata.obs["library_size_target"] = library.astype(np.float32)
    return adata
