"""From the user's options and the registered data to a validated :class:`ModuleConfig`."""

from __future__ import annotations

from typing import Any, Literal

from gmmvae.errors import GMMVAEInputError
from gmmvae.module import ModuleConfig
from gmmvae.options import LIKELIHOODS, VARIANTS, Likelihood, Variant, check_choice


def n_components_for(labels: list[str], n_components: int | None, n_free: int) -> int:
    """K: the labels plus ``n_free`` free components by default; required without labels."""
    if labels:
        K = len(labels) + max(n_free, 0) if n_components is None else n_components
        if K < len(labels):
            raise GMMVAEInputError(
                f"n_components={n_components} is smaller than the {len(labels)} labels "
                f"{labels}; use n_components >= {len(labels)} or leave it None."
            )
        return K
    if n_components is None:
        raise GMMVAEInputError(
            "Without labels, give the number of clusters: GMMVAE(adata, n_components=K)."
        )
    if n_components < 1:
        raise GMMVAEInputError(f"n_components must be >= 1, got {n_components}.")
    return n_components


def resolve_components_per_cell(
    value: int | Literal["auto"] | None, has_labels: bool
) -> int | None:
    """``"auto"``: 2 components per cell without labels, 3 with labels (the top one plus two
    drawn, whose leave-one-out baseline steadies q(y|x)'s gradient); else checked as given."""
    if value == "auto":
        return 3 if has_labels else 2
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
        raise GMMVAEInputError(
            f"components_per_cell={value!r} must be an integer of at least 2 (the most likely "
            "component plus one drawn from the rest), None to decode all components, or 'auto'."
        )
    return value


def component_names(labels: list[str], n_components: int) -> list[str]:
    """Label names then ``free_i`` for the extra components; ``"0".."K-1"`` without labels."""
    if labels:
        return labels + [f"free_{i}" for i in range(n_components - len(labels))]
    return [str(i) for i in range(n_components)]


def build_config(
    registry: dict[str, Any],
    *,
    n_genes: int,
    n_cells: int,
    n_components: int | None,
    n_free_components: int,
    likelihood: Likelihood,
    variant: Variant,
    components_per_cell: int | Literal["auto"] | None,
    **hyperparameters: Any,
) -> ModuleConfig:
    """The module's config for data registered as ``registry``; errors say how to fix input."""
    check_choice("likelihood", likelihood, LIKELIHOODS)
    check_choice("variant", variant, VARIANTS)
    labels = list(registry.get("labels", []))
    K = n_components_for(labels, n_components, n_free_components)
    if n_cells < K:
        raise GMMVAEInputError(
            f"adata has {n_cells} cells but the model has {K} components; use fewer "
            "components or more cells."
        )
    return ModuleConfig(
        n_genes=n_genes,
        n_components=K,
        n_labels=len(labels),
        likelihood=likelihood,
        variant=variant,
        n_conditions=len(registry.get("conditions", [None])),
        n_batches=len(registry.get("batches", [None])),
        components_per_cell=resolve_components_per_cell(components_per_cell, bool(labels)),
        **hyperparameters,
    )
