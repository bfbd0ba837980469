"""Placing the mixture components on the latent after plain-VAE pre-training (as VaDE does)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from gmmvae.module import GMMVAEModule
from gmmvae.nn import one_hot_covariates

_MAX_HEAD_CELLS = 20_000  # cells used to fit q(y|x)'s head; plenty for a K-way linear layer


def encode_cells(module: GMMVAEModule, loader: Any) -> dict[str, np.ndarray]:
    """Posterior means (``latent``), encoder features (``features``) and label codes, eval mode."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    out: dict[str, list[np.ndarray]] = {"latent": [], "features": [], "labels": []}
    with torch.no_grad():
        for batch in loader:
            x, condition = batch["x"].to(device), batch["condition"].to(device)
            cov = one_hot_covariates([condition], module.encoder_cov_sizes)
            features = module.encoder(module.encoder_input(x), cov)
            # Copies, not views of torch storage: kept views fragment the heap (see
            # GMMVAE._predict_cells).
            out["features"].append(features.cpu().numpy().copy())
            out["latent"].append(module.posterior(x, condition)["latent"].cpu().numpy().copy())
            out["labels"].append(batch["label"].numpy().copy())
    module.train(was_training)
    return {k: np.concatenate(v) for k, v in out.items()}


def initial_mixture(
    latent: np.ndarray, labels: np.ndarray, n_components: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Component means and log-variances (K, d) from cells' latent positions.

    Component k < number of labels starts at the mean of its labelled cells (variance of those
    cells, or of its k-means cluster when there is a single one); the other components take
    the k-means centres farthest from the labelled means (all centres when there are no labels).
    """
    from sklearn.cluster import KMeans

    km = KMeans(n_components, n_init=3, random_state=seed).fit(latent)
    floor = 1e-3 * latent.var(0).mean() + 1e-6
    cluster_var = np.stack(
        [
            latent[km.labels_ == c].var(0) if (km.labels_ == c).sum() > 1 else latent.var(0)
            for c in range(n_components)
        ]
    )
    means = np.zeros((n_components, latent.shape[1]))
    variances = np.zeros_like(means)
    placed = np.zeros(n_components, dtype=bool)
    for k in range(n_components):
        cells = latent[labels == k]
        if len(cells):
            means[k] = cells.mean(0)
            nearest = np.argmin(((km.cluster_centers_ - means[k]) ** 2).sum(1))
            variances[k] = cells.var(0) if len(cells) > 1 else cluster_var[nearest]
            placed[k] = True
    order = np.arange(n_components)
    if placed.any():  # free components: the centres least explained by labelled components
        dist = ((km.cluster_centers_[:, None] - means[placed][None]) ** 2).sum(-1).min(1)
        order = np.argsort(-dist)
    free = np.flatnonzero(~placed)
    means[free] = km.cluster_centers_[order[: len(free)]]
    variances[free] = cluster_var[order[: len(free)]]
    return means.astype(np.float32), np.log(variances + floor).astype(np.float32)


def nearest_component(
    latent: np.ndarray, labels: np.ndarray, means: np.ndarray, logvars: np.ndarray
) -> np.ndarray:
    """Most likely component of each cell under the placed Gaussians; labelled cells keep theirs."""
    var = np.exp(logvars)  # (K, d)
    log_density = -0.5 * (((latent[:, None] - means[None]) ** 2) / var + logvars).sum(-1)
    return np.where(labels >= 0, labels, log_density.argmax(1))


def fit_assignment_head(
    head: torch.nn.Linear, features: np.ndarray, targets: np.ndarray, seed: int, steps: int = 200
) -> None:
    """Fit q(y|x)'s linear head to component assignments, keeping the encoder fixed.

    Needed by the ``"exact"`` variant: a head still random when the components are placed
    favours one component, which then widens and takes every cell.
    """
    rng = np.random.default_rng(seed)
    if len(features) > _MAX_HEAD_CELLS:
        keep = rng.choice(len(features), _MAX_HEAD_CELLS, replace=False)
        features, targets = features[keep], targets[keep]
    device = head.weight.device
    x = torch.as_tensor(features, device=device)
    y = torch.as_tensor(targets, dtype=torch.long, device=device)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(x), y)
            loss.backward()
            optimiser.step()


class MixtureInitialisation(Callback):
    """Place p(z|y) on the cells' latent positions once the encoder means something.

    Before epoch ``at_epoch`` the model trains as a plain VAE (``pretraining``); at its start the
    components move to k-means centres of the latent (labelled components to their cells' mean),
    without labels the exact variant's q(y|x) head is fitted to the resulting assignments, and
    early stopping
    restarts because the loss changes meaning. Random component means otherwise let one
    component take every cell.
    """

    def __init__(self, loader: Any, at_epoch: int, seed: int = 0) -> None:
        self.loader = loader
        self.at_epoch = at_epoch
        self.seed = seed

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # current_epoch is past 0 when resuming from a checkpoint.
        pl_module.pretraining = trainer.current_epoch < self.at_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.at_epoch:
            return
        pl_module.pretraining = False
        for callback in trainer.callbacks:
            if isinstance(callback, EarlyStopping):
                callback.wait_count = 0
                callback.best_score = torch.tensor(float("inf"))
        module: GMMVAEModule = pl_module.module
        cells = encode_cells(module, self.loader)
        K = module.config.n_components
        means, logvars = initial_mixture(cells["latent"], cells["labels"], K, self.seed)
        # Every DDP rank computes the same placement; rank 0's is broadcast so that they agree
        # to the bit (k-means ties, thread counts).
        means, logvars = trainer.strategy.broadcast((means, logvars), src=0)
        with torch.no_grad():
            module.prior_mean.copy_(torch.from_numpy(means))
            module.prior_logvar.copy_(torch.from_numpy(logvars))
        # With labels the head has learnt from them during pre-training; refitting it to
        # nearest components would hand the free components whole labelled types.
        if module.config.variant == "exact" and module.config.n_labels == 0:
            targets = nearest_component(cells["latent"], cells["labels"], means, logvars)
            fit_assignment_head(module.y_logits, cells["features"], targets, self.seed)
            head = {k: v.cpu() for k, v in module.y_logits.state_dict().items()}
            module.y_logits.load_state_dict(trainer.strategy.broadcast(head, src=0))
