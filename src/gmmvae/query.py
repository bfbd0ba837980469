"""Mapping cells of new batches onto a trained reference, scArches-style.

:func:`load_query_data` copies a reference model, gives each batch it never saw its own input
weights in every decoder layer (zeros to start, so the query model begins as the reference
decoding without a batch effect) and marks everything else frozen but the encoder's trunk.
Training the query model then fits the new decoder weights and the trunk on the query cells
(labels unused) under the reference's frozen mixture, decoder and inference heads.

Why the trunk learns too: the encoder reads no batch, so with only decoder weights learning
the query cells' latents and labels would stay exactly the reference model's; a batch effect
in the query's input (the counts the encoder sees) could not be undone. The trunk (the
encoder's layers before its heads; scArches trains new input weights for the same reason)
lets the query cells move to where the frozen decoder and components explain them. The query
model is meant for query cells; ``train_encoder=False`` keeps the reference encoder.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch
from anndata import AnnData

from gmmvae.errors import GMMVAEInputError
from gmmvae.module import GMMVAEModule
from gmmvae.options import QUERY_KEY
from gmmvae.registry import REGISTRY_KEY, get_registry
from gmmvae.validation import align_genes, check_obs_key, ensure_actual

if TYPE_CHECKING:
    from gmmvae.model import GMMVAE

ENCODER_KEY = "query_train_encoder"  # registry entry: whether the encoder trunk learns
TRUNK_PREFIX = "encoder."


def load_query_data(query: AnnData, reference: GMMVAE, *, train_encoder: bool = True) -> GMMVAE:
    """A copy of ``reference`` ready to be trained on ``query`` cells from new batches.

    Parameters
    ----------
    query
        Cells with the reference's genes (matched by name; extra genes are ignored) and its
        batch column (``batch_key`` of the reference). Batches the reference knows keep their
        weights; new ones get their own. Labels, if present, are not used for training.
    reference
        A trained model with a ``batch_key``.
    train_encoder
        Whether the query training also fits the encoder's trunk (default), so that query
        cells' latents and labels can move; with False only the new batches' decoder weights
        learn and the latents and labels stay the reference model's.

    Returns
    -------
    A new :class:`~gmmvae.GMMVAE` on ``query`` (set up like the reference); call ``train()``
    on it to fit the new batches' decoder weights (and the encoder trunk); the components,
    decoder and inference heads stay frozen. Its registry lists the new batches under
    ``"query_batches"``.
    """
    if not reference.is_trained:
        raise GMMVAEInputError("Train the reference model first (reference.train()).")
    key = reference._obs_key("batch")
    if key is None:
        raise GMMVAEInputError(
            "The reference model was trained without a batch_key, so it has no batch to "
            "extend. Its latents and labels already apply to new cells: "
            "reference.predict(query)."
        )
    ensure_actual(query)
    check_obs_key(query, key, "batch_key")
    align_genes(query, reference.gene_names)  # fail early on missing genes
    known = reference._categories("batches")
    values = query.obs[key].astype(str)
    new = [b for b in dict.fromkeys(values) if b not in known]
    registry = copy.deepcopy(dict(reference.registry))
    registry["batches"] = [*known, *new]
    registry[QUERY_KEY] = [*registry.get(QUERY_KEY, []), *new]
    registry[ENCODER_KEY] = bool(train_encoder)
    query.uns[REGISTRY_KEY] = {k: v for k, v in registry.items() if v is not None}

    model = copy.copy(reference)  # shares nothing mutable below: each is replaced
    model.registry = get_registry(query)
    model.config = dataclasses.replace(reference.config, n_batches=len(registry["batches"]))
    model.module = _extended_module(reference.module, model.config, len(known))
    model.adata = query
    model.train_params = copy.deepcopy(reference.train_params)
    model.generation_summary = copy.deepcopy(reference.generation_summary)
    model.history = reference.history.copy()
    model.is_trained = True  # latents and labels are the reference's from the start
    return model


def _extended_module(module: GMMVAEModule, config, n_known: int) -> GMMVAEModule:
    """``module``'s weights in a module with ``config.n_batches`` batches; the new batches'
    columns of each decoder layer start at zero."""
    from gmmvae._seed import seeded_rng
    from gmmvae.variants import build_module

    with seeded_rng(0):
        extended = build_module(config)
    old, new = module.state_dict(), extended.state_dict()
    for name, weight in new.items():
        source = old[name]
        if source.shape == weight.shape:
            new[name] = source.clone()
            continue
        # A decoder layer: [input | condition one-hot | batch one-hot] columns.
        width = source.shape[1] - (n_known if n_known > 1 else 0)
        merged = torch.zeros_like(weight)
        merged[:, :width] = source[:, :width]
        if n_known > 1:
            merged[:, width : width + n_known] = source[:, width:]
        new[name] = merged
    extended.load_state_dict(new)
    extended.to(next(module.parameters()).device)
    extended.eval()
    return extended


def query_columns(model: GMMVAE) -> dict[str, np.ndarray]:
    """Per decoder weight, the (boolean) columns of the query's new batches."""
    batches = model._categories("batches")
    added = set(model.registry.get(QUERY_KEY, []))
    is_new = np.array([b in added for b in batches])
    out = {}
    for name, weight in model.module.named_parameters():
        if not name.startswith("decoder.") or not name.endswith("linear.weight"):
            continue
        columns = np.zeros(weight.shape[1], dtype=bool)
        columns[weight.shape[1] - len(batches) :] = is_new
        out[name] = columns
    return out


class FrozenReference:
    """Context for training a query model: the new batches' decoder columns learn, and the
    encoder trunk if the query model was made with ``train_encoder``.

    Every other parameter has ``requires_grad`` off; the decoder layers' weights keep it but
    their gradient is masked to the new columns (and the optimiser runs without weight decay,
    so the masked entries stay exactly as they were).
    """

    def __init__(self, model: GMMVAE) -> None:
        self.model = model
        self.hooks: list = []
        self.flags: dict[str, bool] = {}

    def __enter__(self) -> FrozenReference:
        columns = query_columns(self.model)
        if not any(c.any() for c in columns.values()):
            raise GMMVAEInputError(
                "The query holds no batch the reference lacks, so there is nothing to train; "
                "use the reference as it is (reference.predict(query), ...)."
            )
        trunk = bool(self.model.registry.get(ENCODER_KEY, False))
        for name, param in self.model.module.named_parameters():
            self.flags[name] = param.requires_grad
            param.requires_grad_(name in columns or (trunk and name.startswith(TRUNK_PREFIX)))
            if name in columns:
                mask = torch.zeros_like(param)
                mask[:, torch.as_tensor(columns[name])] = 1.0
                self.hooks.append(param.register_hook(lambda g, m=mask: g * m.to(g.device)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()
        for name, param in self.model.module.named_parameters():
            param.requires_grad_(self.flags.get(name, True))
