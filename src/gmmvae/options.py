"""Option names and defaults, defined once: the API, the CLI and the modules read them here."""

from __future__ import annotations

from typing import Literal, get_args

Likelihood = Literal["nb", "zinb", "poisson", "gaussian"]
Variant = Literal["exact", "shared", "dirichlet"]
MixturePlacement = Literal["leiden", "kmeans"]
PerturbationMethod = Literal["transfer", "latent_shift", "decoder"]
ShiftWeighting = Literal["similarity", "uniform"]
GenerationLatent = Literal["embedding", "prior"]

LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)
VARIANTS: tuple[str, ...] = get_args(Variant)
PLACEMENTS: tuple[str, ...] = get_args(MixturePlacement)
PERTURBATION_METHODS: tuple[str, ...] = get_args(PerturbationMethod)
SHIFT_WEIGHTINGS: tuple[str, ...] = get_args(ShiftWeighting)
GENERATION_LATENTS: tuple[str, ...] = get_args(GenerationLatent)

DEFAULT_LIKELIHOOD: Likelihood = "nb"
DEFAULT_VARIANT: Variant = "exact"
DEFAULT_PLACEMENT: MixturePlacement = "leiden"
DEFAULT_PERTURBATION_METHOD: PerturbationMethod = "transfer"
DEFAULT_SHIFT_WEIGHTING: ShiftWeighting = "similarity"
DEFAULT_GENERATION_LATENT: GenerationLatent = "embedding"
DEFAULT_FREE_COMPONENTS = 1
DEFAULT_KEY = "gmmvae"
UNLABELED_CATEGORY = "Unknown"
QUERY_KEY = "query_batches"  # registry entry: the batches a query model added


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise :class:`~gmmvae.errors.GMMVAEInputError` unless ``value`` is one of ``allowed``."""
    from gmmvae.errors import GMMVAEInputError

    if value not in allowed:
        raise GMMVAEInputError(f"{name} {value!r} is not one of {allowed}.")
