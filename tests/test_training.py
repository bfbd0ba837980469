"""Training plan pieces: KL warm-up, epoch heuristic, mixture initialisation, finiteness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmmvae.module import LossOutput, ModuleConfig
from gmmvae.training import TrainingPlan, kl_warmup_weight
from gmmvae.variants import build_module


@pytest.mark.parametrize(
    ("step", "n_warmup", "expected"),
    [
        (0, 10, 0.0),
        (5, 10, 0.5),
        (10, 10, 1.0),
        (25, 10, 1.0),
        (3, 4, 0.75),
        (0, None, 1.0),
        (0, 0, 1.0),
        (7, None, 1.0),
    ],
)
def test_kl_warmup_weight(step, n_warmup, expected):
    assert kl_warmup_weight(step, n_warmup) == pytest.approx(expected)


def test_the_default_warmup_is_linear():
    # Placement at 1,000 of a 2,000-step warm-up: the plain ramp, 0.5 at the placement.
    for step in (0, 500, 1000, 1500, 2000, 3000):
        assert kl_warmup_weight(step, 2000, placement_step=1000) == min(1.0, step / 2000)


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 0.0), (100, 0.05), (200, 0.1), (250, 0.55), (300, 1.0)]
)
def test_a_short_warmup_places_the_mixture_at_a_low_kl_weight(step, expected):
    # A capped run: placement at 200, warm-up to 300. Before the placement the weight rises
    # as fast as in the default warm-up (200 / 2,000 = 0.1), then to 1 by step 300.
    assert kl_warmup_weight(step, 300, placement_step=200) == pytest.approx(expected)


@pytest.mark.parametrize("placement_step", [-1, 0, 30, 45])
def test_kl_warmup_weight_is_monotone(placement_step):
    # A placement at or after the end of the warm-up leaves the plain linear ramp.
    weights = [kl_warmup_weight(e, 30, placement_step) for e in range(50)]
    assert weights == sorted(weights)
    assert weights[0] == 0.0
    assert weights[-1] == 1.0
    if placement_step >= 30 or placement_step <= 0:
        assert weights[15] == pytest.approx(0.5)


def _plan():
    torch.manual_seed(0)
    config = ModuleConfig(n_genes=10, n_components=2, n_latent=2, n_hidden=8)
    return TrainingPlan(build_module(config), lr=1e-2, kl_warmup_steps=4)


def test_training_plan_optimiser_covers_trainable_parameters():
    plan = _plan()
    optimiser = plan.configure_optimizers()
    assert isinstance(optimiser, torch.optim.Adam)
    params = {id(p) for group in optimiser.param_groups for p in group["params"]}
    trainable = {id(p) for p in plan.module.parameters() if p.requires_grad}
    assert params == trainable
    assert optimiser.param_groups[0]["lr"] == 1e-2


def test_training_plan_refuses_non_finite_loss():
    plan = _plan()
    terms = {"elbo": torch.tensor([1.0, float("nan")]), "kl_z": torch.ones(2)}
    with pytest.raises(FloatingPointError, match=r"training loss became non-finite.*'elbo'"):
        plan._check_finite(LossOutput(torch.tensor(float("nan")), terms), "training")
    plan._check_finite(LossOutput(torch.tensor(1.0), terms), "training")  # finite loss: fine


_RESUME_SCRIPT = """
import os, signal, sys, logging
import torch, lightning.pytorch as pl
import gmmvae

torch.set_num_threads(1)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
checkpoint_dir, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]


class KillMidEpoch(pl.Callback):
    # SIGKILL in the middle of epoch 8: nothing after the last checkpoint survives.
    def on_train_batch_end(self, trainer, *args):
        if trainer.current_epoch == 8 and trainer.global_step % 5 == 2:
            os.kill(os.getpid(), signal.SIGKILL)


adata = gmmvae.datasets.simulate(400, 60, 3, seed=0, marker_log_fold=2.5)
gmmvae.GMMVAE.setup_anndata(adata)
model = gmmvae.GMMVAE(adata, n_components=3, seed=0)
model.train(
    16, seed=0, batch_size=64, progress_bar=False, pretrain_steps=20,
    checkpoint_dir=checkpoint_dir if mode != "plain" else None, checkpoint_every=1,
    resume=mode == "resume", callbacks=[KillMidEpoch()] if mode == "kill" else [],
)
torch.save({"state": model.module.state_dict(), "epochs": len(model.history)}, out)
"""


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(_RESUME_SCRIPT)
    ckpt = tmp_path / "ckpt"

    def run(mode: str) -> subprocess.CompletedProcess:
        out = tmp_path / f"{mode}.pt"
        return subprocess.run(
            [sys.executable, str(script), str(ckpt), mode, str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    killed = run("kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (ckpt / "checkpoint.ckpt").is_file()
    assert not (tmp_path / "kill.pt").exists()
    for mode in ("resume", "plain"):
        done = run(mode)
        assert done.returncode == 0, done.stderr[-2000:]
    resumed = torch.load(tmp_path / "resume.pt", weights_only=True)
    plain = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert resumed["epochs"] == plain["epochs"] == 16
    # Same random draws and data order; float results may differ in the last bits (torch's
    # vectorised kernels round differently with the process's heap state, e.g. after scanpy's
    # neighbours ran in the uninterrupted process).
    for name, tensor in plain["state"].items():
        torch.testing.assert_close(resumed["state"][name], tensor, rtol=1e-3, atol=1e-3, msg=name)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    import gmmvae
    from gmmvae.errors import GMMVAEInputError

    adata = gmmvae.datasets.simulate(100, 30, 2, seed=0)
    gmmvae.GMMVAE.setup_anndata(adata)
    model = gmmvae.GMMVAE(adata, n_components=2)
    with pytest.raises(GMMVAEInputError, match="checkpoint_dir= first"):
        model.train(2, checkpoint_dir=tmp_path, resume=True, progress_bar=False)


# ------------------------------------------------------------- trainer options and disk data
@pytest.mark.parametrize(
    ("options", "named"),
    [({"accelerator": "tpu-please"}, "tpu-please"), ({"strategy": "no-such-strategy"}, "no-such")],
)
def test_trainer_options_lightning_rejects_are_passed_through(small, options, named):
    import gmmvae

    gmmvae.GMMVAE.setup_anndata(small)
    model = gmmvae.GMMVAE(small, n_components=3)
    with pytest.raises(gmmvae.GMMVAEInputError, match="Lightning rejected") as info:
        model.train(1, progress_bar=False, **options)
    assert named in str(info.value)
    assert info.value.__cause__ is not None  # Lightning's own error is kept


def test_trains_from_a_backed_h5ad_and_leaves_the_file_untouched(small, tmp_path):
    """A read-only backed file: minibatches come from disk blocks; results land in memory."""
    import hashlib

    import anndata

    import gmmvae

    path = tmp_path / "cells.h5ad"
    gmmvae.GMMVAE.setup_anndata(small)
    small.write_h5ad(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    backed = anndata.read_h5ad(path, backed="r")
    model = gmmvae.GMMVAE(backed, n_components=3, seed=0)
    model.train(3, seed=0, progress_bar=False, batch_size=64)
    assert np.isfinite(model.history["train_loss"]).all()
    model.predict(backed)
    latent = model.get_latent(backed)
    assert latent.shape == (small.n_obs, model.config.n_latent)
    assert backed.obs["gmmvae_label"].notna().all()
    # The same weights give the same answers on the in-memory copy of the data.
    np.testing.assert_allclose(model.get_latent(small), latent, rtol=1e-5, atol=1e-6)
    backed.file.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_training_prints_only_what_was_asked_for(small, capfd, monkeypatch):
    """No "GPU available" banner or logging-service tip, even with Lightning at INFO level."""
    import logging

    import gmmvae

    for name in ("lightning.pytorch", "lightning.fabric"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    gmmvae.GMMVAE.setup_anndata(small)
    gmmvae.GMMVAE(small, n_components=3).train(2, progress_bar=False, batch_size=64)
    out, err = capfd.readouterr()
    for text in ("GPU available", "TPU available", "Tip", "LeafSpec", "max_epochs"):
        assert text not in out + err, text
    assert logging.getLogger("lightning.pytorch").level == logging.INFO  # restored


def test_early_stopping_keeps_the_best_validation_weights(small):
    """The weights kept are those of the best validation ELBO since the placement."""
    import gmmvae

    gmmvae.GMMVAE.setup_anndata(small)
    model = gmmvae.GMMVAE(small, n_components=3, seed=0)
    model.train(60, progress_bar=False, batch_size=64, seed=0)
    params, history = model.train_params, model.history
    assert params["pretrain_steps"] <= params["best_step"] <= params["steps_run"]
    since = history[history["step"] >= params["pretrain_steps"]]["validation_neg_elbo"]
    at_best = history.loc[history["step"] >= params["best_step"], "validation_neg_elbo"].iloc[0]
    assert at_best == pytest.approx(since.min())
    assert set(history["phase"]) == {"pretraining", "mixture"}
