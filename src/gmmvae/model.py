"""GMMVAE: the AnnData-facing model class. No tensor maths here (see :mod:`gmmvae.module`)."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from importlib.metadata import version
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from gmmvae import data as _data
from gmmvae._seed import seeded_rng
from gmmvae.calibration import apply_temperature, fit_temperature
from gmmvae.data import GMMVAEInputError
from gmmvae.generation import generate, training_summary
from gmmvae.initialisation import PLACEMENTS, MixtureInitialisation, MixturePlacement
from gmmvae.io import load_directory, save_directory
from gmmvae.module import LIKELIHOODS, VARIANTS, GMMVAEModule, Likelihood, ModuleConfig, Variant
from gmmvae.training import TrainingPlan, default_max_epochs, fit

logger = logging.getLogger(__name__)

DEFAULT_VARIANT: Variant = "exact"
DEFAULT_FREE_COMPONENTS = 1
_PRETRAIN_STEPS = 1000  # plain-VAE steps before the mixture is placed (see train)
_INIT_CELLS = 50_000  # cells encoded to place the mixture components


class GMMVAE:
    """Gaussian-mixture VAE for single-cell data: clusters, labels, latent space, generation.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`GMMVAE.setup_anndata`.
    n_components
        Number of mixture components K. With labels it defaults to the number of labels plus
        ``n_free_components``; without labels it is required.
    n_latent
        Dimension of the latent space z.
    likelihood
        ``"nb"`` (negative binomial, default), ``"zinb"``, ``"poisson"`` on raw counts, or
        ``"gaussian"`` on log-normalised data.
    variant
        ``"exact"`` (one q(z|x,y) per component, exact sum over y), ``"shared"`` (VaDE-style
        shared q(z|x), one decoder pass) or ``"dirichlet"`` (the seed model of Kolb & Vingron).
    n_free_components
        Extra components beyond the labels, for cells that fit no known type (default 1).
        Ignored without labels.
    n_hidden, n_layers, dropout_rate
        Width, depth and dropout of the encoder and decoder MLPs.
    classification_weight
        Weight of the classification term ``-log q(y*|x)`` on labelled cells.
    learn_mixture_weights
        Learn the mixture weights pi instead of keeping them uniform.
    dirichlet_alpha, n_w
        Dirichlet concentration and w-latent size of the ``"dirichlet"`` variant.
    components_per_cell
        ``"exact"`` variant only: decode this many components per cell in each training step
        (the k - 1 most likely under q(y|x) plus one drawn from the rest, an unbiased estimate
        of the sum over all K) instead of all K. Steps cost about k / K of the full sum; ``None``
        decodes all components. ``"auto"`` (default): 2 without labels (clustering, where it
        measured as accurate as the full sum and ~10x faster at K = 10), all components with
        labels (where it cost macro-F1 on small types; see BENCHMARKS.md, "Speed and scale").
    seed
        Seed of the weight initialisation.
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        n_components: int | None = None,
        n_latent: int = 16,
        likelihood: Likelihood = "nb",
        variant: Variant = DEFAULT_VARIANT,
        n_free_components: int = DEFAULT_FREE_COMPONENTS,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        classification_weight: float = 50.0,
        learn_mixture_weights: bool = False,
        dirichlet_alpha: float = 1.0,
        n_w: int = 8,
        components_per_cell: int | Literal["auto"] | None = "auto",
        seed: int = 0,
    ) -> None:
        if likelihood not in LIKELIHOODS:
            raise GMMVAEInputError(f"likelihood {likelihood!r} is not one of {LIKELIHOODS}.")
        if variant not in VARIANTS:
            raise GMMVAEInputError(f"variant {variant!r} is not one of {VARIANTS}.")
        registry = dict(_data.get_registry(adata))
        matrix = _data.get_matrix(adata, registry["layer"])
        _data.check_values(matrix, counts=likelihood != "gaussian", where=_where(registry))
        labels = list(registry.get("labels", []))
        if components_per_cell == "auto":
            components_per_cell = None if labels else 2
        if components_per_cell is not None and (
            not isinstance(components_per_cell, int) or components_per_cell < 2
        ):
            raise GMMVAEInputError(
                f"components_per_cell={components_per_cell!r} must be an integer of at least 2 "
                "(the most likely component plus one drawn from the rest), None to decode all "
                "components, or 'auto'."
            )
        K = self._n_components(labels, n_components, n_free_components)
        if adata.n_obs < K:
            raise GMMVAEInputError(
                f"adata has {adata.n_obs} cells but the model has {K} components; use fewer "
                "components or more cells."
            )
        if labels:
            names = labels + [f"free_{i}" for i in range(K - len(labels))]
        else:
            names = [str(i) for i in range(K)]
        self.registry = registry
        self.component_names: list[str] = names
        self.gene_names: list[str] = [str(g) for g in adata.var_names]
        self.config = ModuleConfig(
            n_genes=adata.n_vars,
            n_components=K,
            n_labels=len(labels),
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            likelihood=likelihood,
            variant=variant,
            n_conditions=len(registry.get("conditions", [None])),
            n_batches=len(registry.get("batches", [None])),
            dropout_rate=dropout_rate,
            classification_weight=classification_weight,
            learn_mixture_weights=learn_mixture_weights,
            dirichlet_alpha=dirichlet_alpha,
            n_w=n_w,
            components_per_cell=components_per_cell,
        )
        with seeded_rng(seed):
            self.module = GMMVAEModule(self.config)
        self.adata: AnnData | None = adata
        self.history = pd.DataFrame()
        self.is_trained = False
        self.train_params: dict[str, Any] = {}
        self.generation_summary: dict[str, Any] = {}

    @staticmethod
    def _n_components(labels: list[str], n_components: int | None, n_free: int) -> int:
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

    setup_anndata = staticmethod(_data.setup_anndata)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"GMMVAE(variant={c.variant!r}, likelihood={c.likelihood!r}, K={c.n_components}, "
            f"n_latent={c.n_latent}, genes={c.n_genes}, trained={self.is_trained})"
        )

    # ------------------------------------------------------------------------------- data
    def _data(self, adata: AnnData, *, with_labels: bool) -> _data.CellData:
        reg = self.registry
        matrix = _data.get_matrix(adata, reg["layer"])
        gene_index = _data.align_genes(adata, self.gene_names)
        _data.check_values(matrix, counts=self.config.likelihood != "gaussian", where=_where(reg))
        n = adata.n_obs
        labels = np.full(n, -1, dtype=np.int64)
        if with_labels and reg["labels_key"] is not None:
            labels = _data.encode(
                adata,
                reg["labels_key"],
                reg["labels"],
                "labels_key",
                missing=reg["unlabeled_category"],
            )
        conditions = _data.encode(
            adata, reg["condition_key"], reg.get("conditions", []), "condition_key", missing=None
        )
        batches = _data.encode(
            adata, reg["batch_key"], reg.get("batches", []), "batch_key", missing=None
        )
        return _data.CellData(matrix, labels, conditions, batches, gene_index=gene_index)

    def _resolve(self, adata: AnnData | None) -> AnnData:
        adata = self.adata if adata is None else adata
        if adata is None:
            raise GMMVAEInputError("This model holds no AnnData; pass adata=.")
        return adata

    # ------------------------------------------------------------------------------ train
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 256,
        seed: int = 0,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        train_size: float = 0.9,
        lr: float = 1e-3,
        n_epochs_kl_warmup: int | None = None,
        early_stopping: bool = True,
        early_stopping_patience: int = 30,
        mixture_init_epoch: int | None = None,
        mixture_placement: MixturePlacement = "leiden",
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        resume: bool = False,
        progress_bar: bool = True,
        calibrate: bool = True,
        **trainer_kwargs: Any,
    ) -> GMMVAE:
        """Fit the model to the AnnData it was built on.

        Parameters
        ----------
        max_epochs
            Passes over the data; default ``min(400, 20000 / n_cells * 400)`` as scvi-tools.
        batch_size
            Minibatch size; capped at the number of training cells.
        seed
            Seed of the split, the shuffling and the sampling (local to this call).
        accelerator, devices
            Passed to :class:`lightning.pytorch.Trainer`.
        train_size
            Fraction of cells used for training; the rest is the validation set whose ELBO drives
            early stopping. 1.0 disables validation.
        lr
            Adam learning rate.
        n_epochs_kl_warmup
            Epochs over which the KL weight rises from 0 to 1; default twice the pre-training
            epochs (at least 10); 0 disables the warm-up.
        early_stopping, early_stopping_patience
            Stop when the validation loss has not improved for that many epochs.
        mixture_init_epoch
            Epochs of plain-VAE pre-training (N(0, I) prior) after which the components are
            placed on clusters of the latent (``mixture_placement``). Default: about 1,000
            optimiser steps, at most three quarters of ``max_epochs``; -1 disables (components
            start at random and may collapse). Not used by the ``"dirichlet"`` variant, whose
            w-network places them.
        mixture_placement
            How the pre-trained latent is split into the K starting components: ``"leiden"``
            (default; Leiden on the cells' kNN graph, resolution chosen to give K clusters, as
            ``sc.tl.leiden`` users would) or ``"kmeans"`` (VaDE's choice; it favours round
            clusters of similar size and splits large cell types).
        checkpoint_dir, checkpoint_every
            Save the full training state (weights, optimiser, epoch, RNG) atomically to
            ``checkpoint_dir/checkpoint.ckpt`` every ``checkpoint_every`` epochs.
        resume
            Continue from the checkpoint in ``checkpoint_dir`` (after a crash or a kill). With
            the same data, options and seed, the result equals an uninterrupted run on CPU up
            to float rounding.
        progress_bar
            Show one progress bar over epochs.
        calibrate
            Fit a temperature for q(y|x) on the labelled cells of the validation split
            (:mod:`gmmvae.calibration`; needs at least 30 of them, else T = 1) and apply it in
            :meth:`predict`. Labels and accuracy are unchanged; confidences become calibrated.
        **trainer_kwargs
            Any other :class:`lightning.pytorch.Trainer` option (e.g. ``strategy``).

        Returns
        -------
        The model itself, trained; per-epoch losses are in :attr:`history`.
        """
        adata = self._resolve(None)
        if batch_size < 1:
            raise GMMVAEInputError(f"batch_size must be a positive integer, got {batch_size}.")
        if max_epochs is not None and max_epochs < 1:
            raise GMMVAEInputError(f"max_epochs must be >= 1 (or None), got {max_epochs}.")
        if mixture_placement not in PLACEMENTS:
            raise GMMVAEInputError(
                f"mixture_placement {mixture_placement!r} is not one of {PLACEMENTS}."
            )
        if not 0.0 < train_size <= 1.0:
            raise GMMVAEInputError(f"train_size must be in (0, 1], got {train_size}.")
        data = self._data(adata, with_labels=True)
        keep = self._nonempty_cells(adata)
        rng = np.random.default_rng(seed)
        order = rng.permutation(keep)
        n_val = round(len(order) * (1.0 - train_size))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        if len(train_idx) < max(self.config.n_components, 2):
            raise GMMVAEInputError(
                f"Only {len(train_idx)} cells are left for training ({adata.n_obs} cells, "
                f"{adata.n_obs - len(keep)} without counts, {n_val} held out for validation by "
                f"train_size={train_size}), fewer than the {self.config.n_components} components. "
                "Use fewer components, a larger train_size (1.0 uses every cell), or more cells."
            )
        batch_size = min(batch_size, len(train_idx))
        max_epochs = default_max_epochs(len(train_idx)) if max_epochs is None else max_epochs
        train_loader = _data.make_loader(
            data.subset(train_idx), batch_size, shuffle=True, seed=seed
        )
        val_loader = (
            _data.make_loader(data.subset(val_idx), batch_size, shuffle=False) if n_val else None
        )
        callbacks = list(trainer_kwargs.pop("callbacks", []))
        if self.config.variant == "dirichlet":
            mixture_init_epoch = -1  # the seed model places components with its w-network
        elif mixture_init_epoch is None:
            # The latent must separate cell types before they are clustered: ~1,000 optimiser
            # steps of plain-VAE pre-training, at most three quarters of the epochs (short runs
            # on small data give the pre-training most of their few steps).
            mixture_init_epoch = min(
                math.ceil(_PRETRAIN_STEPS / len(train_loader)), (3 * max_epochs) // 4
            )
        if n_epochs_kl_warmup is None:
            n_epochs_kl_warmup = max(2 * mixture_init_epoch, 10)
        plan = TrainingPlan(self.module, lr=lr, n_epochs_kl_warmup=n_epochs_kl_warmup)
        if mixture_init_epoch >= 0:
            # k-means needs no more than _INIT_CELLS cells; on disk they are read block by block.
            init_idx = train_idx
            if len(train_idx) > _INIT_CELLS:
                init_idx = np.sort(rng.choice(train_idx, _INIT_CELLS, replace=False))
            init_loader = _data.make_loader(data.subset(init_idx), 1024, shuffle=False)
            callbacks.append(
                MixtureInitialisation(init_loader, mixture_init_epoch, seed, mixture_placement)
            )
        self.module.train()
        with seeded_rng(seed):
            history = fit(
                plan,
                train_loader,
                val_loader,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                early_stopping=early_stopping,
                early_stopping_patience=early_stopping_patience,
                progress_bar=progress_bar,
                callbacks=callbacks,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every,
                resume=resume,
                **trainer_kwargs,
            )
        self.module.eval()
        self.history = pd.DataFrame(history).set_index("epoch") if history else pd.DataFrame()
        self.is_trained = True
        self.generation_summary = self._summarise_training_cells(data.subset(train_idx))
        self.train_params = {
            "max_epochs": max_epochs,
            "epochs_run": len(history),
            "batch_size": batch_size,
            "seed": seed,
            "train_size": train_size,
            "lr": lr,
            "n_epochs_kl_warmup": n_epochs_kl_warmup,
            "n_train_cells": len(train_idx),
            "mixture_init_epoch": mixture_init_epoch,
            "mixture_placement": mixture_placement,
            **self._calibrate(data.subset(val_idx), enabled=calibrate),
        }
        return self

    def _calibrate(self, held_out: _data.CellData, *, enabled: bool) -> dict[str, Any]:
        """Temperature of q(y|x) fitted on the labelled held-out (validation) cells."""
        labels = held_out.labels.numpy()
        labelled = labels >= 0
        if not enabled or not labelled.any():
            return {"temperature": 1.0, "n_calibration_cells": 0}
        probs, _ = self._predict_cells(held_out.subset(np.flatnonzero(labelled)), 1024)
        temperature = fit_temperature(probs, labels[labelled])
        return {"temperature": temperature, "n_calibration_cells": int(labelled.sum())}

    def _summarise_training_cells(self, data: _data.CellData) -> dict[str, Any]:
        """What generation needs: composition, library sizes, condition and batch frequencies."""
        probs, library = self._predict_cells(data, batch_size=1024, with_library=True)
        labels = data.labels.numpy()
        components = np.where(labels >= 0, labels, probs.argmax(1))
        c = self.config
        return training_summary(
            components,
            library,
            data.conditions.numpy(),
            data.batches.numpy(),
            c.n_components,
            c.n_conditions,
            c.n_batches,
        )

    def _nonempty_cells(self, adata: AnnData) -> np.ndarray:
        matrix = _data.get_matrix(adata, self.registry["layer"])
        sums = _data.row_sums(matrix, absolute=True)
        keep = np.flatnonzero(sums > 0)
        n_empty = adata.n_obs - len(keep)
        if n_empty:
            warnings.warn(
                f"{n_empty} of {adata.n_obs} cells have no counts and are skipped in training "
                "(they still get a latent position and a prediction). Filter them with "
                "sc.pp.filter_cells(adata, min_counts=1) to silence this.",
                UserWarning,
                stacklevel=3,
            )
        if len(keep) < 2:
            raise GMMVAEInputError(
                f"adata has {len(keep)} cell(s) with counts; training needs at least 2."
            )
        return keep

    # -------------------------------------------------------------------------- inference
    def _posterior(self, adata: AnnData, batch_size: int) -> dict[str, np.ndarray]:
        if not self.is_trained:
            warnings.warn(
                "The model is not trained yet; results are from random weights.",
                UserWarning,
                stacklevel=3,
            )
        if batch_size < 1:
            raise GMMVAEInputError(f"batch_size must be a positive integer, got {batch_size}.")
        if adata.n_obs == 0:
            raise GMMVAEInputError("adata has no cells; pass at least one cell.")
        data = self._data(adata, with_labels=False)
        probs, latent = self._predict_cells(data, batch_size)
        return {"probs": probs, "latent": latent}

    def _predict_cells(
        self, data: _data.CellData, batch_size: int, *, with_library: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """q(y|x) probabilities and latent means (or library sizes) of every cell, streamed."""
        loader = _data.make_loader(data, batch_size, shuffle=False)
        device = next(self.module.parameters()).device
        self.module.eval()
        # Written into preallocated arrays: keeping one small torch-owned array per batch
        # fragments the heap and grew RSS by ~2.4 kB per cell (2.4 GB for 10^6 cells).
        n = len(data)
        probs = np.empty((n, self.config.n_components), dtype=np.float32)
        second = np.empty(n if with_library else (n, self.config.n_latent), dtype=np.float32)
        start = 0
        with torch.no_grad():
            for batch in loader:
                out = self.module.posterior(batch["x"].to(device), batch["condition"].to(device))
                stop = start + len(batch["x"])
                probs[start:stop] = out["probs"].cpu().numpy()
                extra = batch["x"].sum(1) if with_library else out["latent"].cpu()
                second[start:stop] = extra.numpy()
                start = stop
        return probs, second

    def _record_params(self, adata: AnnData, key_added: str, **params: Any) -> None:
        entry = dict(adata.uns.get(key_added, {}))
        entry["params"] = {
            "variant": self.config.variant,
            "likelihood": self.config.likelihood,
            "n_components": self.config.n_components,
            "n_latent": self.config.n_latent,
            **params,
        }
        adata.uns[key_added] = entry

    def get_latent(
        self, adata: AnnData | None = None, *, key_added: str = "gmmvae", batch_size: int = 1024
    ) -> np.ndarray:
        """Latent embedding of each cell (the posterior mean of z).

        Returns
        -------
        ndarray of shape (n_cells, n_latent), float32. Also written to
        ``adata.obsm[f"X_{key_added}"]``; parameters to ``adata.uns[key_added]["params"]``.
        """
        adata = self._resolve(adata)
        _data.ensure_actual(adata)
        latent = self._posterior(adata, batch_size)["latent"].astype(np.float32)
        adata.obsm[f"X_{key_added}"] = latent
        self._record_params(adata, key_added)
        return latent

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        key_added: str = "gmmvae",
        novelty_threshold: float = 0.5,
        batch_size: int = 1024,
    ) -> pd.DataFrame:
        """Component (cell-type) probabilities q(y|x) of each cell.

        A cell is flagged novel when its most probable component is a free one (not a label)
        or its top probability is below ``novelty_threshold``.

        Returns
        -------
        DataFrame (n_cells x n_components) of probabilities, columns named by label/component.
        Also writes ``adata.obs[f"{key_added}_label"]`` (categorical),
        ``obs[f"{key_added}_confidence"]`` (float32, top probability),
        ``obs[f"{key_added}_novel"]`` (bool), ``obsm[f"{key_added}_probs"]`` (float32) and
        ``uns[key_added]["params"]``.
        """
        adata = self._resolve(adata)
        _data.ensure_actual(adata)
        probs = self._posterior(adata, batch_size)["probs"]
        probs = apply_temperature(probs, self.train_params.get("temperature", 1.0))
        probs = probs.astype(np.float32)
        best = probs.argmax(1)
        confidence = probs.max(1)
        n_labels = self.config.n_labels
        free = best >= n_labels if n_labels else np.zeros(len(best), dtype=bool)
        adata.obs[f"{key_added}_label"] = pd.Categorical.from_codes(
            best, categories=self.component_names
        )
        adata.obs[f"{key_added}_confidence"] = confidence
        adata.obs[f"{key_added}_novel"] = free | (confidence < novelty_threshold)
        adata.obsm[f"{key_added}_probs"] = probs
        self._record_params(
            adata,
            key_added,
            novelty_threshold=novelty_threshold,
            component_names=list(self.component_names),
        )
        return pd.DataFrame(probs, index=adata.obs_names.copy(), columns=self.component_names)

    # ------------------------------------------------------------------------- generation
    def generate(
        self,
        n_cells: int | Mapping[str, int],
        *,
        cell_type: str | Sequence[str] | None = None,
        condition: str | None = None,
        batch: str | None = None,
        library_size: str | float = "empirical",
        seed: int = 0,
    ) -> AnnData:
        """Synthetic cells sampled from the generative model.

        Draws a component y (the requested type, or from the training composition), then
        z ~ p(z|y), then counts from the likelihood given a library size.

        Parameters
        ----------
        n_cells
            Number of cells, or a mapping ``{cell type: number}``.
        cell_type
            A type (component name) or a list of them; each gets ``n_cells`` cells. Default:
            types drawn with their training frequencies.
        condition, batch
            A condition / batch seen in training; default: drawn with training frequencies.
        library_size
            ``"empirical"`` (drawn from the training library sizes of the cell's type) or a
            fixed number of counts per cell.
        seed
            Seed of every draw (local to the call).

        Returns
        -------
        AnnData with the model's genes: counts in ``X`` (CSR, float32, integer-valued) and
        ``layers["counts"]`` (log-normalised values in ``X`` for a Gaussian model, no counts
        layer), ``obs["cell_type"]``, ``obs["condition"]``/``obs["batch"]`` when the model has
        them, ``obs["synthetic"] = True`` and how it was made in ``uns["gmmvae_generate"]``.
        """
        return generate(
            self,
            n_cells,
            cell_type=cell_type,
            condition=condition,
            batch=batch,
            library_size=library_size,
            seed=seed,
        )

    # ---------------------------------------------------------------------- perturbation
    def predict_perturbation(
        self,
        adata: AnnData,
        *,
        source: str = "control",
        target: str = "stimulated",
        n_samples: int = 1,
        seed: int = 0,
        method: Literal["transfer", "latent_shift", "decoder"] = "transfer",
        reference: AnnData | None = None,
        weighting: Literal["similarity", "uniform"] = "similarity",
        n_mc: int = 32,
        batch_size: int = 1024,
    ) -> AnnData:
        """Counterfactual cells: how the given ``source`` cells would look under ``target``.

        Each cell is encoded under ``source`` with its type (its label when the model has
        labels and ``adata`` carries them, else its most probable component) and decoded
        under ``target``. Works with any number of conditions; the predicted cell type may
        have had no ``target`` cells in training.

        Parameters
        ----------
        adata
            The cells to predict, all under ``source`` (e.g. control cells of one type):
            every value of the condition column must be ``source``; without that column all
            cells are taken to be. Genes are matched by name.
        source, target
            Conditions seen in training.
        n_samples
            Draws of counts per cell, each from its own z ~ q(z|x,y,c).
        seed
            Seed of the draws (local to the call).
        method
            ``"transfer"`` (default): the cell's reconstruction plus the model's response
            (decoded treated minus decoded control cells, on the log1p-CP10k scale) of the
            types seen under both conditions, weighted by ``weighting``.
            ``"latent_shift"``: z plus those types' mean latent difference target - source
            (scGen's arithmetic), decoded under ``target``. ``"decoder"``: the seed's
            approach, only the decoder's condition is flipped. A type seen under both
            conditions uses its own response. ``BENCHMARKS.md`` compares them on held-out
            types.
        reference
            Cells under both conditions, with types, from which ``"transfer"`` and
            ``"latent_shift"`` take the response; default the training data (required for a
            model loaded without it).
        weighting
            ``"similarity"`` (default): a type not seen under ``target`` borrows from the
            others with a Gaussian kernel of latent-centroid distance (nearest weighs most);
            ``"uniform"``: every type weighs the same, as scGen's balanced mean.
        n_mc
            Draws per cell for the expected log1p-CP10k expression in ``layers["log_mean"]``.
        batch_size
            Cells encoded at a time.

        Returns
        -------
        AnnData with ``n_obs * n_samples`` cells and the model's genes: sampled counts in
        ``X`` and ``layers["counts"]`` (CSR float32; for a Gaussian model, sampled values in
        ``X`` and no counts layer); ``layers["log_mean"]`` (dense float32), the predicted
        mean expression of each cell normalised like real cells (the expectation of log1p
        CP10k under the likelihood; the decoder's mean for a Gaussian model), the same for
        every sample of a cell; ``obs`` copied from ``adata`` with the condition column
        set to ``target``, ``obs["gmmvae_predicted"] = True`` and ``obs["gmmvae_sample"]``
        (int, 0-based draw); parameters and donor weights in ``uns["gmmvae_perturbation"]``.
        Names get ``-i`` suffixes when ``n_samples > 1``.
        """
        from gmmvae.perturbation import predict_perturbation

        return predict_perturbation(
            self,
            adata,
            source=source,
            target=target,
            n_samples=n_samples,
            seed=seed,
            method=method,
            reference=reference,
            weighting=weighting,
            n_mc=n_mc,
            batch_size=batch_size,
        )

    # -------------------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the model to directory ``path`` (config.json + model.pt), atomically."""
        config = {
            "module": asdict(self.config),
            "registry": _jsonable(self.registry),
            "gene_names": self.gene_names,
            "component_names": self.component_names,
            "is_trained": self.is_trained,
            "train_params": self.train_params,
            "generation_summary": self.generation_summary,
            "history": self.history.reset_index().to_dict(orient="list"),
            "versions": {p: version(p) for p in ("gmmvae", "torch", "anndata", "lightning")},
        }
        save_directory(path, config, self.module.state_dict(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, adata: AnnData | None = None) -> GMMVAE:
        """Load a model saved with :meth:`save`; ``adata`` (optional) is the data to work on.

        Genes of ``adata`` are matched by name (any order); missing genes raise an error.
        """
        config, state = load_directory(path)
        model = cls.__new__(cls)
        try:
            model.config = ModuleConfig(**config["module"])
            model.registry = config["registry"]
            model.gene_names = list(config["gene_names"])
            model.component_names = list(config["component_names"])
            with seeded_rng(0):  # the throwaway initialisation must not touch global RNG
                model.module = GMMVAEModule(model.config)
            model.module.load_state_dict(state)
        except (KeyError, TypeError, RuntimeError) as err:
            raise GMMVAEInputError(
                f"{path} holds a config and weights that do not fit together ({err}); "
                "re-save the model."
            ) from err
        model.module.eval()
        model.is_trained = bool(config.get("is_trained", True))
        model.train_params = config.get("train_params", {})
        model.generation_summary = config.get("generation_summary", {})
        history = pd.DataFrame(config.get("history", {}))
        model.history = history.set_index("epoch") if "epoch" in history else history
        model.adata = None
        if adata is not None:
            _data.align_genes(adata, model.gene_names)  # fail early on missing genes
            model.adata = adata
        return model


def _where(registry: dict[str, Any]) -> str:
    return _data.describe_matrix(registry["layer"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value
