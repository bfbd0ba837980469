"""Lightning training plan (loss, KL warm-up, optimiser, logging) and trainer set-up."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from tqdm.auto import tqdm

from gmmvae.errors import GMMVAEInputError
from gmmvae.module import GMMVAEModule, LossOutput
from gmmvae.schedule import kl_warmup_weight

CHECKPOINT_NAME = "checkpoint"


def checkpoint_file(checkpoint_dir: str | Path) -> Path:
    """The checkpoint that ``resume=True`` continues from; a clear error when it is missing."""
    path = Path(checkpoint_dir) / f"{CHECKPOINT_NAME}.ckpt"
    if not path.is_file():
        raise GMMVAEInputError(
            f"resume=True but {path} does not exist; train once with checkpoint_dir= first, "
            "or pass resume=False to start afresh."
        )
    return path


class TrainingPlan(pl.LightningModule):
    """Optimises a :class:`GMMVAEModule`; logs every loss term per epoch.

    Parameters
    ----------
    module
        The torch module to train.
    lr
        Adam learning rate.
    weight_decay
        Adam weight decay.
    kl_warmup_steps
        Optimiser step at which the KL weight reaches 1
        (:func:`gmmvae.schedule.kl_warmup_weight`).
    placement_step
        Step at which the mixture is placed (-1: none); before it the KL weight rises no
        faster than the default warm-up's.
    label_weights
        ELBO weights (labelled, unlabelled cells) that undo the sampler's oversampling of
        labelled cells (:attr:`gmmvae.samplers.MixedBatchSampler.cell_weights`); (1, 1) for
        plain shuffling.
    """

    def __init__(
        self,
        module: GMMVAEModule,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        kl_warmup_steps: int | None = 2000,
        placement_step: int = -1,
        label_weights: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        super().__init__()
        self.module = module
        self.lr = lr
        self.weight_decay = weight_decay
        self.kl_warmup_steps = kl_warmup_steps
        self.placement_step = placement_step
        self.label_weights = label_weights
        # True until MixtureInitialisation places the components (plain-VAE pre-training).
        self.pretraining = False

    @property
    def kl_weight(self) -> float:
        return kl_warmup_weight(self.global_step, self.kl_warmup_steps, self.placement_step)

    def _log_terms(self, out: LossOutput, prefix: str, batch_size: int) -> None:
        # Epoch means, averaged over data-parallel ranks so that every rank sees the same
        # validation loss and early stopping stops them all at the same epoch.
        options = {"on_epoch": True, "on_step": False, "batch_size": batch_size, "sync_dist": True}
        self.log(f"{prefix}_loss", out.loss, **options)
        self.log(f"{prefix}_neg_elbo", -out.terms["elbo"].mean(), **options)
        for name, value in out.terms.items():
            self.log(f"{prefix}_{name}", value.mean(), **options)

    def _check_finite(self, out: LossOutput, stage: str) -> None:
        if torch.isfinite(out.loss):
            return
        bad = [name for name, v in out.terms.items() if not torch.isfinite(v).all()]
        msg = (
            f"{stage} loss became non-finite at step {self.global_step} (terms: "
            f"{bad or ['classification']}). Training stopped before saving anything. Lower the "
            "learning rate (train(lr=...)), check the data for extreme values, or use a "
            "likelihood that matches the data (counts: 'nb'; log data: 'gaussian')."
        )
        raise FloatingPointError(msg)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.label_weights != (1.0, 1.0):
            labelled, unlabelled = self.label_weights
            batch = {**batch, "weight": torch.where(batch["label"] >= 0, labelled, unlabelled)}
        out = self.module(batch, kl_weight=self.kl_weight, pretrain=self.pretraining)
        self._check_finite(out, "training")
        self._log_terms(out, "train", len(batch["x"]))
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Full ELBO (KL weight 1) so that early stopping compares like with like across epochs.
        out = self.module(batch, kl_weight=1.0, pretrain=self.pretraining)
        self._check_finite(out, "validation")
        self._log_terms(out, "validation", len(batch["x"]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The RNG state makes a resumed run draw the same noise as an uninterrupted one.
        checkpoint["gmmvae"] = {"torch_rng": torch.get_rng_state(), "pretraining": self.pretraining}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("gmmvae", {})
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.pretraining = bool(state.get("pretraining", False))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.module.parameters() if p.requires_grad]
        # foreach: one fused update over all parameters (the per-tensor loop is the CPU default).
        return torch.optim.Adam(
            params, lr=self.lr, weight_decay=self.weight_decay, eps=0.01, foreach=True
        )


class HistoryCallback(Callback):
    """Collects the per-epoch means of every logged metric into ``history`` (a list of dicts),
    with the optimiser step, the phase (``"pretraining"`` before the mixture is placed, then
    ``"mixture"``) and the KL weight at the epoch's end; validation metrics are those of the
    latest validation check."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = {
            "epoch": float(trainer.current_epoch),
            "step": float(trainer.global_step),
            "phase": "pretraining" if getattr(pl_module, "pretraining", False) else "mixture",
            "kl_weight": float(getattr(pl_module, "kl_weight", 1.0)),
        }
        row.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        self.history.append(row)


class StepProgressBar(ProgressBar):
    """One progress bar over optimiser steps (updated once per epoch), with the latest losses
    as its postfix; it ends early when early stopping does."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self.bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            self.bar = tqdm(
                total=trainer.max_steps, initial=trainer.global_step, desc="Training", unit="step"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is None:
            return
        metrics = trainer.callback_metrics
        postfix = {
            k: f"{float(metrics[k]):.4g}" for k in ("train_loss", "validation_loss") if k in metrics
        }
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(trainer.global_step - self.bar.n)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class BestWeights(Callback):
    """Keep the weights of the best validation ELBO from step ``start_step`` on and load them
    back when training ends (small data overfit: the held-out ELBO peaks before the end).

    The copy is part of the checkpoint, so a resumed run restores the same weights.
    """

    def __init__(self, monitor: str = "validation_neg_elbo", start_step: int = 0) -> None:
        self.monitor = monitor
        self.start_step = start_step
        self.best_score = float("inf")
        self.best_step = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_step": self.best_step,
            "state": self.best_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = float(state_dict["best_score"])
        self.best_step = int(state_dict["best_step"])
        self.best_state = state_dict["state"]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or score is None or trainer.global_step < self.start_step:
            return
        if float(score) < self.best_score:
            self.best_score, self.best_step = float(score), int(trainer.global_step)
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.module.state_dict().items()
            }

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.module.load_state_dict(self.best_state)


class DelayedEarlyStopping(EarlyStopping):
    """Early stopping that only starts counting at step ``start_step`` (when the KL weight
    has reached 1 and the validation ELBO means what it will mean at the end)."""

    def __init__(self, *args: Any, start_step: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_step = start_step

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        if trainer.global_step < self.start_step:
            return
        super()._run_early_stopping_check(trainer)


# Pre-training leaves the mixture parameters unused, and the exact variant's q(y|x) head gets no
# gradient then either: DDP must be told, or it stops at the first step.
_DDP_WITH_UNUSED = {
    "ddp": "ddp_find_unused_parameters_true",
    "ddp_spawn": "ddp_spawn_find_unused_parameters_true",
    "ddp_fork": "ddp_fork_find_unused_parameters_true",
    "ddp_notebook": "ddp_notebook_find_unused_parameters_true",
}


def _make_trainer(**options: Any) -> pl.Trainer:
    """``pl.Trainer(**options)``; options Lightning rejects raise our error, with its reason."""
    strategy = options.get("strategy")
    if isinstance(strategy, str) and strategy in _DDP_WITH_UNUSED:
        options["strategy"] = _DDP_WITH_UNUSED[strategy]
    try:
        return pl.Trainer(**options)
    except (MisconfigurationException, ValueError, TypeError) as err:
        chosen = {k: options[k] for k in ("accelerator", "devices", "strategy") if k in options}
        raise GMMVAEInputError(
            f"Lightning rejected the trainer options {chosen}: {err} See "
            "https://lightning.ai/docs/pytorch/stable/common/trainer.html for valid values; "
            "accelerator='cpu' with devices=1 always works."
        ) from err


def world_size(accelerator: str, devices: Any, **trainer_kwargs: Any) -> int:
    """How many data-parallel processes Lightning will train on with these options.

    The schedule counts optimiser steps and each rank runs 1/world of an epoch's batches
    (:mod:`gmmvae.samplers`), so an epoch cap must know this before the trainer exists.
    Resolving the options builds a trainer but launches nothing.
    """
    keep = {k: trainer_kwargs[k] for k in ("strategy", "num_nodes") if k in trainer_kwargs}
    with _quiet_lightning():
        trainer = _make_trainer(
            accelerator=accelerator,
            devices=devices,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **keep,
        )
    return int(trainer.world_size)


@dataclass
class FitResult:
    """What a fit leaves besides the trained module."""

    history: list[dict[str, Any]]  # per-epoch metrics (HistoryCallback)
    device: torch.device  # where the module trained
    best_step: int  # step of the validation ELBO whose weights were kept (-1: the last ones)


def fit(
    plan: TrainingPlan,
    train_loader: Any,
    val_loader: Any | None,
    *,
    max_steps: int,
    accelerator: str,
    devices: Any,
    validation_interval: int,
    early_stopping: bool,
    early_stopping_patience: int,
    early_stopping_start: int,
    best_weights_start: int,
    progress_bar: bool,
    gradient_clip_val: float = 10.0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    **trainer_kwargs: Any,
) -> FitResult:
    """Run Lightning's trainer for ``max_steps`` optimiser steps (fewer if early stopping
    fires; validation every ``validation_interval`` steps, patience counted in validation
    checks from step ``early_stopping_start``, and with early stopping the weights of the best
    validation ELBO from step ``best_weights_start`` on are the ones kept).

    Leaves no files behind, except the checkpoint in ``checkpoint_dir`` when one is given
    (written atomically every ``checkpoint_every`` epochs; ``resume=True`` continues from it).
    """
    history = HistoryCallback()
    best = BestWeights("validation_neg_elbo", start_step=best_weights_start)
    callbacks: list[Callback] = [history] + ([StepProgressBar()] if progress_bar else [])
    ckpt_path = None
    if checkpoint_dir is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir,
                filename=CHECKPOINT_NAME,
                every_n_epochs=checkpoint_every,
                save_top_k=1,
                enable_version_counter=False,  # overwrite in place (atomically), no -v1 copies
            )
        )
        trainer_kwargs["enable_checkpointing"] = True
        ckpt_path = checkpoint_file(checkpoint_dir) if resume else None
    if early_stopping and val_loader is not None:
        # The ELBO alone: the classification term on a few labelled validation cells is noisy.
        callbacks += [
            DelayedEarlyStopping(
                "validation_neg_elbo",
                patience=early_stopping_patience,
                mode="min",
                check_on_train_epoch_end=False,
                start_step=early_stopping_start,
            ),
            best,
        ]
    callbacks += trainer_kwargs.pop("callbacks", [])
    with tempfile.TemporaryDirectory(prefix="gmmvae-") as root, _quiet_lightning():
        trainer = _make_trainer(
            max_steps=max_steps,
            max_epochs=-1,
            val_check_interval=validation_interval if val_loader is not None else None,
            check_val_every_n_epoch=None if val_loader is not None else 1,
            accelerator=accelerator,
            devices=devices,
            logger=trainer_kwargs.pop("logger", False),
            enable_checkpointing=trainer_kwargs.pop("enable_checkpointing", False),
            enable_model_summary=False,
            enable_progress_bar=progress_bar,
            num_sanity_val_steps=0,
            gradient_clip_val=gradient_clip_val,
            default_root_dir=trainer_kwargs.pop("default_root_dir", root),
            callbacks=callbacks,
            # Our samplers split batches across ranks themselves (gmmvae.samplers).
            use_distributed_sampler=trainer_kwargs.pop("use_distributed_sampler", False),
            **trainer_kwargs,
        )
        trainer.fit(plan, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
        device = trainer.strategy.root_device
    return FitResult(history.history, device, best.best_step)


_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Only what the user asked for: no "GPU available" banner, logging-service tip or
    deprecation noise from inside Lightning during one fit; warnings from gmmvae still show.
    The loggers' levels are restored afterwards."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        # In-process loading is deliberate: batches are one sparse slice each.
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*Consider setting `persistent_workers.*")
        # train_size=1.0 means no validation set on purpose.
        warnings.filterwarnings("ignore", ".*validation_step.*but have not passed.*")
        warnings.filterwarnings("ignore", ".*val_dataloader.*")
        # Raised inside Lightning's own pytree helpers, not by anything gmmvae passes.
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        for lg in loggers:
            lg.setLevel(max(lg.level, logging.WARNING))
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
