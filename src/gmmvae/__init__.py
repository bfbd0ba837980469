"""gmmvae: a Gaussian-mixture VAE for single-cell RNA-seq on AnnData.

Clustering, (semi-)supervised annotation with calibrated probabilities and novelty flags,
synthetic cells and treatment-effect prediction, in one generative model of counts.
"""

from importlib.metadata import PackageNotFoundError, version

from gmmvae import datasets, evaluation, metrics, pp
from gmmvae import plotting as pl
from gmmvae.errors import GMMVAEInputError, MissingKeyError, ModelExistsError, ModelNotFoundError
from gmmvae.model import GMMVAE
from gmmvae.selection import select_n_components

try:
    __version__ = version("gmmvae")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

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
