"""Placing the mixture components on the latent after plain-VAE pre-training (as VaDE does)."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from gmmvae.clustering import leiden_with_k
from gmmvae.data import CellData
from gmmvae.inference import encode
from gmmvae.module import GMMVAEModule
from gmmvae.options import DEFAULT_PLACEMENT, MixturePlacement

_MAX_HEAD_CELLS = 20_000  # cells used to fit q(y|x)'s head; plenty for a K-way linear layer


def partition(latent: np.ndarray, k: int, seed: int, method: MixturePlacement) -> np.ndarray:
    """k clusters of the cells' latent positions, by Leiden (default) or k-means."""
    from sklearn.cluster import KMeans

    if method == "kmeans" or len(latent) <= k:
        return KMeans(k, n_init=3, random_state=seed).fit_predict(latent)
    return leiden_with_k(latent, k, seed=seed)


def initial_mixture(
    latent: np.ndarray,
    labels: np.ndarray,
    n_components: int,
    seed: int,
    method: MixturePlacement = "leiden",
    latent_var: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Component means and log-variances (K, d) from cells' latent positions, and each cell's
    starting component.

    The cells are partitioned into K clusters (``method``: Leiden on the kNN graph with the
    resolution giving K clusters, or k-means). A cluster whose labelled cells are mostly of
    label k hands its unlabelled cells to component k, which starts at the mean of its labelled
    cells and those cells (a handful of labels then places a component on its whole cell
    type). The free components (and, without labels, all of them) take the clusters without
    labelled cells, farthest from the labelled components first. Remaining cells go to the
    most likely component.

    A component's variance is that of its cells' posterior means plus their mean posterior
    variance (``latent_var``; the EM update of a Gaussian under q(z|x)). Without the second
    term components are narrower than their cells' posteriors, the KL term drives cells out of
    compact components, and small cell types lose theirs.
    """
    if latent_var is None:
        latent_var = np.zeros_like(latent)
    clusters = partition(latent, n_components, seed, method)
    n_clusters = clusters.max() + 1
    labelled = labels >= 0
    votes = np.zeros((n_clusters, n_components))
    np.add.at(votes, (clusters[labelled], labels[labelled]), 1)
    cluster_label = np.where(votes.sum(1) > 0, votes.argmax(1), -1)
    assignment = np.where(labelled, labels, cluster_label[clusters])

    def spread(cells: np.ndarray) -> np.ndarray:
        if cells.sum() < 2:
            return latent.var(0) + latent_var.mean(0)
        return latent[cells].var(0) + latent_var[cells].mean(0)

    centres = np.stack([latent[clusters == c].mean(0) for c in range(n_clusters)])
    means = np.zeros((n_components, latent.shape[1]))
    variances = np.zeros_like(means)
    placed = np.zeros(n_components, dtype=bool)
    for k in np.unique(labels[labelled]):
        cells = assignment == k
        means[k] = latent[cells].mean(0)
        nearest = np.argmin(((centres - means[k]) ** 2).sum(1))
        variances[k] = spread(cells) if cells.sum() > 1 else spread(clusters == nearest)
        placed[k] = True
    # Free components: clusters without labels first, each group farthest from the labelled.
    distance = np.zeros(n_clusters)
    if placed.any():
        distance = ((centres[:, None] - means[placed][None]) ** 2).sum(-1).min(1)
    order = np.lexsort((-distance, cluster_label >= 0))
    free = np.flatnonzero(~placed)
    for component, cluster in zip(free, order, strict=False):
        means[component] = centres[cluster]
        variances[component] = spread(clusters == cluster)
        assignment[(clusters == cluster) & ~labelled & (cluster_label[clusters] < 0)] = component
    floor = 1e-3 * latent.var(0).mean() + 1e-6
    means = means.astype(np.float32)
    logvars = np.log(variances + floor).astype(np.float32)
    unassigned = assignment < 0
    assignment[unassigned] = nearest_component(
        latent[unassigned], labels[unassigned], means, logvars
    )
    return means, logvars, assignment


def nearest_component(
    latent: np.ndarray, labels: np.ndarray, means: np.ndarray, logvars: np.ndarray
) -> np.ndarray:
    """Most likely component of each cell under the placed Gaussians; labelled cells keep theirs."""
    var = np.exp(logvars)  # (K, d)
    log_density = -0.5 * (((latent[:, None] - means[None]) ** 2) / var + logvars).sum(-1)
    return np.where(labels >= 0, labels, log_density.argmax(1))


def fit_assignment_head(
    head: torch.nn.Module, features: np.ndarray, targets: np.ndarray, seed: int, steps: int = 200
) -> None:
    """Fit q(y|x)'s head to component assignments, keeping the encoder fixed.

    A head still random when the components are placed favours one component, which then
    widens and takes every cell.
    """
    rng = np.random.default_rng(seed)
    if len(features) > _MAX_HEAD_CELLS:
        keep = rng.choice(len(features), _MAX_HEAD_CELLS, replace=False)
        features, targets = features[keep], targets[keep]
    device = next(head.parameters()).device
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

    Before optimiser step ``at_step`` the model trains as a plain VAE (``pretraining``). Then
    the cells of ``cells`` are encoded and partitioned (:func:`initial_mixture`: Leiden on
    their kNN graph by default, k-means on request), each component takes its group's mean and
    variance, and a variant with an assignment head has it fitted to the groups when there are
    no labels (:func:`place_mixture`). Random component means otherwise let one component
    take every cell.
    """

    def __init__(
        self,
        cells: CellData,
        at_step: int,
        seed: int = 0,
        method: MixturePlacement = DEFAULT_PLACEMENT,
    ) -> None:
        self.cells = cells
        self.method = method
        self.at_step = at_step
        self.seed = seed
        self.placed = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # global_step is past 0 when resuming; past at_step the checkpoint holds the placement.
        self.placed = trainer.global_step > self.at_step
        pl_module.pretraining = not self.placed
        self._maybe_place(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe_place(trainer, pl_module)

    def _maybe_place(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.placed or trainer.global_step < self.at_step:
            return
        self.placed = True
        pl_module.pretraining = False
        place_mixture(pl_module.module, self.cells, self.seed, self.method, trainer.strategy)


def place_mixture(
    module: GMMVAEModule, cells: CellData, seed: int, method: MixturePlacement, strategy=None
) -> None:
    """Move the components of p(z|y) onto the encoded ``cells`` (see :func:`initial_mixture`).

    Under data parallelism every rank computes the same placement; rank 0's is broadcast so
    that they agree to the bit (k-means ties, thread counts).
    """
    fields = {"latent", "latent_var", "label", module.assignment_input}
    encoded = encode(module, cells, fields)
    K = module.config.n_components
    means, logvars, assignment = initial_mixture(
        encoded["latent"], encoded["label"], K, seed, method, encoded["latent_var"]
    )
    if strategy is not None:
        means, logvars = strategy.broadcast((means, logvars), src=0)
    device = module.prior_mean.device
    module.place_components(
        torch.from_numpy(means).to(device), torch.from_numpy(logvars).to(device)
    )
    # With labels the head has learnt from them during pre-training; refitting it to
    # nearest components would hand the free components whole labelled types.
    head = module.assignment_head
    if head is None or module.config.n_labels:
        return
    fit_assignment_head(head, encoded[module.assignment_input], assignment, seed)
    if strategy is not None:
        state = {k: v.cpu() for k, v in head.state_dict().items()}
        head.load_state_dict(strategy.broadcast(state, src=0))
