"""One module class per variant; :func:`build_module` picks the class a config names.

A new variant is a subclass of :class:`gmmvae.module.GMMVAEModule` in its own file here,
registered in ``VARIANT_CLASSES`` and named in :data:`gmmvae.options.Variant`.
"""

from __future__ import annotations

from gmmvae.errors import GMMVAEInputError
from gmmvae.module import GMMVAEModule, ModuleConfig
from gmmvae.options import VARIANTS
from gmmvae.variants.dirichlet import DirichletModule
from gmmvae.variants.exact import ExactModule
from gmmvae.variants.shared import SharedModule

VARIANT_CLASSES: dict[str, type[GMMVAEModule]] = {
    "exact": ExactModule,
    "shared": SharedModule,
    "dirichlet": DirichletModule,
}
assert set(VARIANT_CLASSES) == set(VARIANTS)  # options.Variant and this table agree


def build_module(config: ModuleConfig) -> GMMVAEModule:
    """The module of ``config.variant``, built from ``config`` (weights from torch's RNG)."""
    if config.variant not in VARIANT_CLASSES:
        raise GMMVAEInputError(f"variant {config.variant!r} is not one of {VARIANTS}.")
    return VARIANT_CLASSES[config.variant](config)


__all__ = ["VARIANT_CLASSES", "DirichletModule", "ExactModule", "SharedModule", "build_module"]
