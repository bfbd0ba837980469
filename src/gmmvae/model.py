"""GMMVAE: the AnnData-facing model class, a thin face over the parts that do the work.

The torch module (:mod:`gmmvae.module`, :mod:`gmmvae.variants`), the training schedule
(:mod:`gmmvae.schedule`), the encoding pass (:mod:`gmmvae.inference`), generation and
treatment-effect prediction (:mod:`gmmvae.generation`, :mod:`gmmvae.perturbation`, which use
only the small interface in the "interface" section below). No tensor maths here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import types
import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from gmmvae import collapse, novelty, pp, registry, schedule
from gmmvae._seed import seeded_rng
from gmmvae.config import build_config, component_names
from gmmvae.data import CellData
from gmmvae.errors import GMMVAEInputError
from gmmvae.generation_summary import training_summary
from gmmvae.inference import encode, module_device
from gmmvae.io import load_directory, model_state, save_directory
from gmmvae.module import GMMVAEModule, ModuleConfig
from gmmvae.options import (
    DEFAULT_FREE_COMPONENTS,
    DEFAULT_KEY,
    DEFAULT_LIKELIHOOD,
    DEFAULT_PLACEMENT,
    DEFAULT_VARIANT,
    LIKELIHOODS,
    QUERY_KEY,
    Likelihood,
    MixturePlacement,
    Variant,
    check_choice,
)
from gmmvae.validation import (
    align_genes,
    check_values,
    describe_matrix,
    ensure_actual,
    get_matrix,
)
from gmmvae.variants import build_module

logger = logging.getLogger(__name__)


class _Delegated:
    """A method whose code lives in another module, imported when first looked up.

    Analysis modules (DE, generation, perturbation, ...) load only in a process that uses
    them; a benchmark row records the modules that made it, so a change to one of them stales
    only the rows that ran it. Signature and docstring are the function's own.
    """

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        function = getattr(importlib.import_module(f"gmmvae.{self.module}"), self.name)
        return function if instance is None else types.MethodType(function, instance)


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
        (the most likely under q(y|x) plus ``k - 1`` drawn from the rest, with an unbiased
        score-function gradient; :meth:`~gmmvae.variants.ExactModule.sampled_reconstruction`)
        instead of all K. Steps cost about k / K of the full sum; ``None`` decodes all
        components. ``"auto"`` (default): 2 without labels, 3 with labels.
    seed
        Seed of the weight initialisation.
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        n_components: int | None = None,
        n_latent: int = 16,
        likelihood: Likelihood = DEFAULT_LIKELIHOOD,
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
        check_choice("likelihood", likelihood, LIKELIHOODS)
        pp.warn_many_genes(adata.n_vars)
        reg = dict(registry.get_registry(adata))
        matrix = get_matrix(adata, reg["layer"])
        check_values(matrix, counts=likelihood != "gaussian", where=describe_matrix(reg["layer"]))
        self.config = build_config(
            reg,
            n_genes=adata.n_vars,
            n_cells=adata.n_obs,
            n_components=n_components,
            n_free_components=n_free_components,
            likelihood=likelihood,
            variant=variant,
            components_per_cell=components_per_cell,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            classification_weight=classification_weight,
            learn_mixture_weights=learn_mixture_weights,
            dirichlet_alpha=dirichlet_alpha,
            n_w=n_w,
        )
        self.registry = reg
        self.component_names: list[str] = component_names(
            list(reg.get("labels", [])), self.config.n_components
        )
        self.gene_names: list[str] = [str(g) for g in adata.var_names]
        with seeded_rng(seed):
            self.module: GMMVAEModule = build_module(self.config)
        self.adata: AnnData | None = adata
        self.history = pd.DataFrame()
        self.is_trained = False
        self.train_params: dict[str, Any] = {}
        self.generation_summary: dict[str, Any] = {}
        self.novelty_reference: novelty.NoveltyReference | None = None

    setup_anndata = staticmethod(registry.setup_anndata)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"GMMVAE(variant={c.variant!r}, likelihood={c.likelihood!r}, K={c.n_components}, "
            f"n_latent={c.n_latent}, genes={c.n_genes}, trained={self.is_trained})"
        )

    # -------------------------------------------------------------------------- interface
    # What generation, perturbation and the other helpers use of a model, and nothing else.
    def _categories(self, role: Literal["labels", "conditions", "batches"]) -> list[str]:
        """The category names the model was trained with for ``role`` (empty if none)."""
        return [str(c) for c in self.registry.get(role) or []]

    def _obs_key(self, role: Literal["labels", "condition", "batch"]) -> str | None:
        """The obs column the model reads for ``role`` (``None`` if it has none)."""
        return self.registry[f"{role}_key"]

    def _cells(
        self,
        adata: AnnData,
        *,
        labels: bool | str = False,
        conditions: np.ndarray | None = None,
        new_batches: bool = False,
    ) -> CellData:
        """``adata`` as the model sees it (genes matched by name, values checked); with
        ``new_batches`` unknown batches pass as code -1 (encoder-only uses)."""
        counts = self.config.likelihood != "gaussian"
        return registry.cell_data(
            adata,
            self.registry,
            self.gene_names,
            counts=counts,
            labels=labels,
            conditions=conditions,
            new_batches=new_batches,
        )

    def _encode(self, data: CellData, fields, *, batch_size: int = 1024) -> dict[str, np.ndarray]:
        """Per-cell ``fields`` of :func:`gmmvae.inference.encode` for ``data``."""
        return encode(self.module, data, fields, batch_size=batch_size)

    @torch.no_grad()
    def _decode(self, z, library, condition, batches) -> dict[str, torch.Tensor]:
        """Likelihood parameters for latents ``z`` (n, d) of cells with these library sizes,
        condition code (an int or (n,) codes) and batch codes, on the model's device."""
        device = module_device(self.module)
        n = len(z)
        condition = np.full(n, condition) if np.ndim(condition) == 0 else np.asarray(condition)
        self.module.eval()
        return self.module.generative(
            torch.as_tensor(z, dtype=torch.float32, device=device),
            torch.as_tensor(library, dtype=torch.float32, device=device).clamp(min=1.0),
            torch.as_tensor(condition, dtype=torch.long, device=device),
            torch.as_tensor(batches, dtype=torch.long, device=device),
        )

    @torch.no_grad()
    def _sample_prior(self, components: np.ndarray) -> torch.Tensor:
        """z ~ p(z|y) for component codes ``components`` (n,), on the model's device."""
        device = module_device(self.module)
        return self.module.sample_latent(torch.as_tensor(components, device=device))

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
        max_steps: int | None = None,
        batch_size: int = 256,
        seed: int = 0,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        train_size: float = 0.9,
        lr: float = 1e-3,
        pretrain_steps: int | None = None,
        kl_warmup_steps: int | None = None,
        early_stopping: bool = True,
        mixture_placement: MixturePlacement = DEFAULT_PLACEMENT,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        resume: bool = False,
        progress_bar: bool = True,
        calibrate: bool = True,
        **trainer_kwargs: Any,
    ) -> GMMVAE:
        """Fit the model to the AnnData it was built on.

        The schedule is counted in optimiser steps (README, "Training schedule";
        :func:`gmmvae.schedule.plan_schedule`): plain-VAE pre-training, placement of the
        components on the latent, KL warm-up, then the full ELBO until the validation ELBO
        stops improving. Every phase fits inside the run, however short ``max_epochs`` is.

        Parameters
        ----------
        max_epochs
            Upper bound on the passes over the training cells; default: the schedule's own
            budget (the larger of scvi-tools' epoch heuristic and the phases' minimum).
        max_steps
            Upper bound on the optimiser steps (with ``max_epochs``, the smaller bound wins).
        batch_size
            Minibatch size; capped at the number of training cells.
        seed
            Seed of the split, the shuffling and the sampling (local to this call).
        accelerator, devices
            Passed to :class:`lightning.pytorch.Trainer`; the model stays on the device it
            trained on (:attr:`device`, :meth:`to_device`).
        train_size
            Fraction of cells used for training; the rest is the validation set whose ELBO drives
            early stopping (labelled cells are split per label, and every label keeps at least
            one labelled training cell). 1.0 disables validation.
        lr
            Adam learning rate.
        pretrain_steps
            Optimiser steps of plain-VAE pre-training (N(0, I) prior) before the components are
            placed on clusters of the latent (``mixture_placement``); default 1,000, at most
            70 % of a capped run.
        kl_warmup_steps
            Step at which the KL weight reaches 1, counted from the first step (linearly,
            but before the placement of the components no faster than the default warm-up).
            Default twice the pre-training; in a capped run, halfway through the mixture
            phase at the latest; 0 disables the warm-up.
        early_stopping
            Stop when the validation ELBO has not improved for 1,000 steps, counted from the
            end of the warm-up.
        mixture_placement
            How the pre-trained latent is split into the K starting components: ``"leiden"``
            (default; Leiden on the cells' kNN graph, resolution chosen to give K clusters, as
            ``sc.tl.leiden`` users would) or ``"kmeans"`` (VaDE's choice; it favours round
            clusters of similar size and splits large cell types).
        checkpoint_dir, checkpoint_every
            Save the full training state (weights, optimiser, step, RNG) atomically to
            ``checkpoint_dir/checkpoint.ckpt`` every ``checkpoint_every`` epochs.
        resume
            Continue from the checkpoint in ``checkpoint_dir`` (after a crash or a kill). With
            the same data, options and seed, the result equals an uninterrupted run on CPU up
            to float rounding.
        progress_bar
            Show one progress bar over optimiser steps.
        calibrate
            Fit a temperature for q(y|x) on the labelled cells of the validation split
            (:mod:`gmmvae.calibration`) and apply it in :meth:`predict`. Predicted labels are
            unchanged; only the confidences move.
        **trainer_kwargs
            Any other :class:`lightning.pytorch.Trainer` option (e.g. ``strategy``).

        Returns
        -------
        The model itself, trained; per-epoch losses are in :attr:`history`, the schedule and
        options in :attr:`train_params`.
        """
        from gmmvae.training import world_size

        adata = self._resolve(None)
        schedule.check_train_options(
            batch_size, max_epochs, max_steps, mixture_placement, train_size
        )
        is_query = self.is_query
        # A query model (load_query_data) learns its new batches (and encoder trunk) under the
        # reference's mixture: no pre-training, no placement, no warm-up, query labels unused.
        data = self._cells(adata, labels=not is_query)
        rng = np.random.default_rng(seed)
        keep = schedule.nonempty_cells(get_matrix(adata, self.registry["layer"]), adata.n_obs)
        split = schedule.split_cells(
            keep, data.labels.numpy(), train_size, self.config.n_components, rng
        )
        batch_size = min(batch_size, len(split.train))
        loaders = schedule.make_loaders(data, split, batch_size, seed)
        plan = schedule.plan_schedule(
            n_train_cells=len(split.train),
            # Each data-parallel rank runs its share of an epoch's batches.
            steps_per_epoch=math.ceil(
                len(loaders[0]) / world_size(accelerator, devices, **trainer_kwargs)
            ),
            places_mixture=self.module.places_mixture and not is_query,
            max_epochs=max_epochs,
            max_steps=max_steps,
            pretrain_steps=pretrain_steps,
            warmup_steps=0 if is_query and kl_warmup_steps is None else kl_warmup_steps,
        )
        if is_query:
            from gmmvae.query import FrozenReference

            frozen = FrozenReference(self)
        else:
            frozen = contextlib.nullcontext()
        with frozen:
            fitted = self._fit(
                data,
                split,
                plan,
                loaders,
                seed,
                lr,
                rng,
                accelerator,
                devices,
                weight_decay=0.0 if is_query else None,
                mixture_placement=mixture_placement,
                early_stopping=early_stopping,
                progress_bar=progress_bar,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every,
                resume=resume,
                **trainer_kwargs,
            )
        self.to_device(fitted.device)  # Lightning's teardown moves the module back to the CPU
        history = fitted.history
        self.history = pd.DataFrame(history).set_index("epoch") if history else pd.DataFrame()
        self.is_trained = True
        train_cells = data.subset(split.train)
        if is_query:  # the reference's components, summary and calibration stay as they were
            calibration = {
                k: self.train_params.get(k) for k in ("temperature", "n_calibration_cells")
            }
        else:
            self.generation_summary = training_summary(self, train_cells)
            calibration = self._calibrate(data.subset(split.validation), enabled=calibrate)
            self.novelty_reference = self._novelty_reference(data, split, seed)
        steps = int(history[-1]["step"]) if history else 0
        reference = self.train_params.get("reference") if is_query else None
        self.train_params = {
            **schedule.describe(plan),
            "steps_run": steps,
            "best_step": fitted.best_step,
            "epochs_run": len(history),
            "batch_size": batch_size,
            "seed": seed,
            "train_size": train_size,
            "lr": lr,
            "n_train_cells": len(split.train),
            "mixture_placement": mixture_placement,
            **calibration,
            **({"reference": reference} if reference else {}),
        }
        if not is_query:
            collapse.check_components(self, train_cells)
        return self

    def _fit(self, data, split, plan, loaders, seed, lr, rng, accelerator, devices, **options: Any):
        """:func:`gmmvae.schedule.fit_module` with the model's module and label weights."""
        placement = options.pop("mixture_placement")
        return schedule.fit_module(
            self.module,
            data,
            split,
            plan,
            loaders,
            seed=seed,
            lr=lr,
            placement=placement,
            rng=rng,
            label_weights=loaders[0].sampler.cell_weights,
            accelerator=accelerator,
            devices=devices,
            **options,
        )

    @property
    def is_query(self) -> bool:
        """Whether this model came from :meth:`load_query_data`."""
        return QUERY_KEY in self.registry

    @classmethod
    def load_query_data(
        cls, adata: AnnData, reference_model: GMMVAE, *, train_encoder: bool = True
    ) -> GMMVAE:
        """Map cells of new batches onto a trained reference (scArches-style).

        Returns a copy of ``reference_model`` on ``adata`` in which every batch the reference
        never saw has its own decoder input weights; ``train()`` on it fits those and (with
        ``train_encoder``, the default) the encoder's trunk on the query cells, under the
        reference's frozen components, decoder and inference heads. The encoder reads no
        batch, so without the trunk learning, ``predict``/``get_latent`` would give the
        reference's answers before and after. See :func:`gmmvae.query.load_query_data`.

        Examples
        --------
        >>> query_model = GMMVAE.load_query_data(query, model)  # doctest: +SKIP
        >>> query_model.train(max_epochs=100)  # doctest: +SKIP
        >>> query_model.predict(query)  # doctest: +SKIP
        """
        from gmmvae.query import load_query_data

        return load_query_data(adata, reference_model, train_encoder=train_encoder)

    @property
    def device(self) -> torch.device:
        """The device the module's weights are on (where predictions run)."""
        return module_device(self.module)

    def to_device(self, device: str | torch.device) -> GMMVAE:
        """Move the module to ``device`` (e.g. ``"cpu"``, ``"cuda:0"``); returns the model."""
        self.module.to(torch.device(device))
        return self

    def _calibrate(self, held_out: CellData, *, enabled: bool) -> dict[str, Any]:
        """Temperature of q(y|x) fitted on the labelled held-out (validation) cells."""
        labels = held_out.labels.numpy()
        labelled = labels >= 0
        if not enabled or not labelled.any():
            return {"temperature": 1.0, "n_calibration_cells": 0}
        from gmmvae.calibration import fit_temperature

        probs = self._encode(held_out.subset(np.flatnonzero(labelled)), ["probs"])["probs"]
        temperature = fit_temperature(probs, labels[labelled])
        return {"temperature": temperature, "n_calibration_cells": int(labelled.sum())}

    def _novelty_reference(self, data: CellData, split, seed: int) -> novelty.NoveltyReference:
        """Latents of (at most 20,000) training cells and the scores of validation cells."""
        rng = np.random.default_rng(seed)
        train = split.train[novelty.subsample(len(split.train), rng)]
        validation = split.validation[novelty.subsample(len(split.validation), rng)]
        latent = [
            self._encode(data.subset(cells), ["latent"])["latent"]
            if len(cells)
            else np.zeros((0, self.config.n_latent), np.float32)
            for cells in (train, validation)
        ]
        return novelty.fit_reference(*latent)

    # -------------------------------------------------------------------------- inference
    def _posteriors(self, adata: AnnData, fields: list[str], batch_size: int) -> dict:
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
        # The encoder does not read the batch: cells of a batch never seen in training map as
        # they are (scVI's default, encode_covariates=False, behaves the same way).
        data = self._cells(adata, new_batches=True)
        return self._encode(data, fields, batch_size=batch_size)

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
        self, adata: AnnData | None = None, *, key_added: str = DEFAULT_KEY, batch_size: int = 1024
    ) -> np.ndarray:
        """Latent embedding of each cell (the posterior mean of z).

        Returns
        -------
        ndarray of shape (n_cells, n_latent), float32. Also written to
        ``adata.obsm[f"X_{key_added}"]``; parameters to ``adata.uns[key_added]["params"]``.
        """
        adata = self._resolve(adata)
        ensure_actual(adata)
        latent = self._posteriors(adata, ["latent"], batch_size)["latent"]
        adata.obsm[f"X_{key_added}"] = latent
        self._record_params(adata, key_added)
        return latent

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        key_added: str = DEFAULT_KEY,
        novelty_quantile: float = 0.95,
        confidence_threshold: float | None = None,
        batch_size: int = 1024,
    ) -> pd.DataFrame:
        """Component (cell-type) probabilities q(y|x) of each cell, and a novelty call.

        The novelty score of a cell is the mean distance of its latent to its 15 nearest
        training cells' latents (:mod:`gmmvae.novelty`); a cell is flagged novel when the score
        exceeds the ``novelty_quantile`` of the validation cells' scores, when its most
        probable component is a free one (not a label), or, if ``confidence_threshold`` is
        given, when its top probability is below it.

        Parameters
        ----------
        adata
            Cells to annotate (default: the model's data); genes are matched by name.
        key_added
            Prefix of the columns written.
        novelty_quantile
            Share of held-out cells of known types left unflagged (0.95: about 5 % of them
            are flagged). Raise it for fewer false flags, lower it to catch more novel cells.
        confidence_threshold
            Also flag cells whose top probability is below this (off by default: a cell
            between two known types is ambiguous, not novel).
        batch_size
            Cells per forward pass.

        Returns
        -------
        DataFrame (n_cells x n_components) of probabilities, columns named by label/component.
        Also writes ``adata.obs[f"{key_added}_label"]`` (categorical),
        ``obs[f"{key_added}_confidence"]`` (float32, top probability),
        ``obs[f"{key_added}_novelty_score"]`` (float32, higher = further from the training
        cells), ``obs[f"{key_added}_novel"]`` (bool), ``obsm[f"{key_added}_probs"]`` (float32)
        and ``uns[key_added]["params"]`` (with the score threshold used).
        """
        adata = self._resolve(adata)
        ensure_actual(adata)
        if confidence_threshold is not None and not 0.0 <= confidence_threshold <= 1.0:
            raise GMMVAEInputError(
                f"confidence_threshold must be in [0, 1], got {confidence_threshold}."
            )
        reference = self.novelty_reference
        threshold = reference.threshold(novelty_quantile) if reference is not None else None
        posterior = self._posteriors(adata, ["probs", "latent"], batch_size)
        probs = posterior["probs"]
        temperature = self.train_params.get("temperature", 1.0)
        if temperature != 1.0:  # T = 1 leaves the probabilities as they are
            from gmmvae.calibration import apply_temperature

            probs = apply_temperature(probs, temperature)
        probs = probs.astype(np.float32)
        best = probs.argmax(1)
        confidence = probs.max(1)
        novel = best >= self.config.n_labels if self.config.n_labels else np.zeros(len(best), bool)
        if reference is not None:
            score = reference.score(posterior["latent"])
            novel = novel | (score > threshold)
        else:  # a model saved before the score existed, or never trained
            score = np.full(len(best), np.nan, np.float32)
        if confidence_threshold is not None:
            novel = novel | (confidence < confidence_threshold)
        adata.obs[f"{key_added}_label"] = pd.Categorical.from_codes(
            best, categories=self.component_names
        )
        adata.obs[f"{key_added}_confidence"] = confidence
        adata.obs[f"{key_added}_novelty_score"] = score
        adata.obs[f"{key_added}_novel"] = novel
        adata.obsm[f"{key_added}_probs"] = probs
        self._record_params(
            adata,
            key_added,
            novelty_quantile=novelty_quantile,
            novelty_score_threshold=threshold,
            confidence_threshold=confidence_threshold,
            component_names=list(self.component_names),
        )
        return pd.DataFrame(probs, index=adata.obs_names.copy(), columns=self.component_names)

    # The signatures and docstrings live with the code that does the work.
    generate = _Delegated("generation", "generate")
    predict_perturbation = _Delegated("perturbation", "predict_perturbation")
    get_normalized_expression = _Delegated("analysis", "get_normalized_expression")
    posterior_predictive_sample = _Delegated("analysis", "posterior_predictive_sample")
    differential_expression = _Delegated("de", "differential_expression")
    get_elbo = _Delegated("likelihood", "get_elbo")
    get_marginal_ll = _Delegated("likelihood", "get_marginal_ll")

    # -------------------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the model to directory ``path`` (config.json + model.pt), atomically.

        Raises :class:`~gmmvae.ModelExistsError` if ``path`` exists and ``overwrite`` is false.
        """
        weights = self.module.state_dict()
        if self.novelty_reference is not None:
            weights.update(self.novelty_reference.state_dict())
        save_directory(path, model_state(self), weights, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, adata: AnnData | None = None) -> GMMVAE:
        """Load a model saved with :meth:`save`; ``adata`` (optional) is the data to work on.

        Genes of ``adata`` are matched by name (any order); missing genes raise an error, and
        a path that holds no saved model raises :class:`~gmmvae.ModelNotFoundError`.
        """
        config, weights = load_directory(path)
        model = cls.__new__(cls)
        model.novelty_reference = novelty.NoveltyReference.from_state_dict(weights)
        try:
            model.config = ModuleConfig(**config["module"])
            model.registry = config["registry"]
            model.gene_names = list(config["gene_names"])
            model.component_names = list(config["component_names"])
            with seeded_rng(0):  # the throwaway initialisation must not touch global RNG
                model.module = build_module(model.config)
            model.module.load_state_dict(weights)
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
            align_genes(adata, model.gene_names)  # fail early on missing genes
            model.adata = adata
        return model
