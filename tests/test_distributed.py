"""Data-parallel training: two CPU processes (gloo) launched by torchrun, as on a cluster."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import gmmvae
from gmmvae import metrics
from gmmvae.datasets import simulate

EPOCHS = 60
SCRIPT = textwrap.dedent(
    f"""
    import json, sys
    import torch
    import lightning.pytorch as pl
    import gmmvae
    from gmmvae.datasets import simulate

    torch.set_num_threads(1)
    out = sys.argv[1]

    class Record(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            if trainer.global_rank == 0:
                info = {{"world_size": trainer.world_size, "steps": trainer.global_step,
                        "batches_per_epoch": trainer.num_training_batches}}
                with open(out + "/trainer.json", "w") as f:
                    json.dump(info, f)

    adata = simulate(500, 150, 5, seed=0, marker_log_fold=2.5)
    gmmvae.GMMVAE.setup_anndata(adata)
    model = gmmvae.GMMVAE(adata, n_components=5, seed=0)
    # 32 cells per rank: the same global batch (64) and number of steps as the 1-process run.
    model.train({EPOCHS}, batch_size=32, seed=0, accelerator="cpu", devices=2, strategy="ddp",
                progress_bar=False, early_stopping=False, callbacks=[Record()])
    if torch.distributed.get_rank() == 0:
        model.save(out + "/model")
    """
)


def _ari(model: gmmvae.GMMVAE, adata) -> float:
    model.predict(adata)
    return metrics.ari(adata.obs["cell_type"], adata.obs["gmmvae_label"])


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_two_process_ddp_matches_single_process_quality(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(script), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    info = json.loads((tmp_path / "trainer.json").read_text())
    adata = simulate(500, 150, 5, seed=0, marker_log_fold=2.5)
    n_train = round(adata.n_obs * 0.9)
    assert info["world_size"] == 2
    # Each rank runs half of the epoch's batches: the data are split, not duplicated.
    assert info["batches_per_epoch"] == math.ceil(math.ceil(n_train / 32) / 2)
    assert info["steps"] == EPOCHS * info["batches_per_epoch"]

    distributed = gmmvae.GMMVAE.load(tmp_path / "model")
    single_adata = adata.copy()
    gmmvae.GMMVAE.setup_anndata(single_adata)
    single = gmmvae.GMMVAE(single_adata, n_components=5, seed=0)
    single.train(EPOCHS, batch_size=64, seed=0, progress_bar=False, early_stopping=False)
    ari_single = _ari(single, single_adata)
    ari_distributed = _ari(distributed, adata)
    assert ari_single > 0.9
    assert ari_distributed >= ari_single - 0.02
