"""gmmvae: a Gaussian-mixture VAE for single-cell RNA-seq on AnnData.

Clustering, (semi-)supervised annotation with calibrated probabilities and novelty flags,
synthetic cells and treatment-effect prediction, in one generative model of counts.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gmmvae.errors import GMMVAEInputError, MissingKeyError, ModelExistsError, ModelNotFoundError
from gmmvae.model import GMMVAE

# Loaded on first use (PEP 562), so that a process that never plots, simulates or scores does
# not load those modules; the benchmark rows record which modules made them.
_LAZY = {
    "datasets": ("gmmvae.datasets", None),
    "evaluation": ("gmmvae.evaluation", None),
    "metrics": ("gmmvae.metrics", None),
    "pp": ("gmmvae.pp", None),
    "pl": ("gmmvae.plotting", None),
    "select_n_components": ("gmmvae.selection", "select_n_components"),
}

try:
    __version__ = version("gmmvae")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'gmmvae' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "GMMVAE",
    "GMMVAEInputError",
    "MissingKeyError",
    "ModelExistsError",
    "ModelNotFoundError",
    "datasets",
    "evaluation",
    "metrics",
    "pl",
    "pp",
    "select_n_components",
]
