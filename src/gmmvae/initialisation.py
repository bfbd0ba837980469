"""Placing the mixture components on the latent after plain-VAE pre-training (as VaDE does)."""

from __future__ import annotations

import random
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import numpy as np
import scipy.sparse
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from gmmvae.module import GMMVAEModule
from gmmvae.nn import one_hot_covariates

_MAX_HEAD_CELLS = 20_000  # cells used to fit q(y|x)'s head; plenty for a K-way linear layer


def encode_cells(module: GMMVAEModule, loader: Any) -> dict[str, np.ndarray]:
    """Posterior means (``latent``) and variances (``latent_var``), encoder features
    (``features``) and label codes, in eval mode."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    out: dict[str, list[np.ndarray]] = {
        "latent": [],
        "latent_var": [],
        "features": [],
        "labels": [],
    }
    with torch.no_grad():
        for batch in loader:
            x, condition = batch["x"].to(device), batch["condition"].to(device)
            cov = one_hot_covariates([condition], module.encoder_cov_sizes)
            features = module.encoder(module.encoder_input(x), cov)
            # Copies, not views of torch storage: kept views fragment the heap (see
            # GMMVAE._predict_cells).
            out["features"].append(features.cpu().numpy().copy())
            posterior = module.posterior(x, condition)
            for key in ("latent", "latent_var"):
                out[key].append(posterior[key].cpu().numpy().copy())
            out["labels"].append(batch["label"].numpy().copy())
    module.train(was_training)
    return {k: np.concatenate(v) for k, v in out.items()}


MixturePlacement = Literal["leiden", "kmeans"]
PLACEMENTS: tuple[str, ...] = get_args(MixturePlacement)


def leiden_partition(latent: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, Any]:
    """Leiden on the cells' kNN graph (``sc.pp.neighbors`` defaults, ``sc.tl.leiden`` with
    igraph), resolution bisected towards ``n_clusters``; the closest partition found and the
    graph's connectivities.

    The neighbours are exact (scikit-learn): scanpy's approximate search (pynndescent, used
    above 4,096 cells) breaks with scipy >= 1.17 in scanpy 1.11.
    """
    # scanpy and igraph seed numpy's and Python's global generators; restored so that placing
    # the mixture leaves the caller's random streams as they were.
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        return _leiden_partition(latent, n_clusters, seed)
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)


def _leiden_partition(latent: np.ndarray, n_clusters: int, seed: int):
    import scanpy as sc

    holder = sc.AnnData(np.zeros((len(latent), 1), dtype=np.float32))
    holder.obsm["X_latent"] = np.asarray(latent, dtype=np.float32)
    n_neighbors = min(15, len(latent) - 1)
    sc.pp.neighbors(
        holder,
        n_neighbors,
        use_rep="X_latent",
        transformer="sklearn",
        random_state=seed,
    )
    low, high, best = 0.0, 3.0, None
    for _ in range(15):
        resolution = (low + high) / 2
        sc.tl.leiden(
            holder, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2
        )
        clusters = holder.obs["leiden"].cat.codes.to_numpy()
        n = clusters.max() + 1
        if best is None or abs(n - n_clusters) < abs(best.max() + 1 - n_clusters):
            best = clusters.copy()
        if n == n_clusters:
            break
        low, high = (resolution, high) if n < n_clusters else (low, resolution)
    return best, holder.obsp["connectivities"]


def exactly_k(
    latent: np.ndarray, clusters: np.ndarray, k: int, seed: int, connectivities: Any = None
) -> np.ndarray:
    """Cluster codes 0..k-1. While there are too many, the two most connected clusters merge
    (share of the smaller one's kNN-graph weight going to the other; nearest centres without a
    graph); while there are too few, the widest cluster is split in two by k-means."""
    from sklearn.cluster import KMeans

    clusters = np.unique(clusters, return_inverse=True)[1]
    while clusters.max() + 1 > k:
        n = clusters.max() + 1
        membership = scipy.sparse.csr_matrix(
            (np.ones(len(clusters)), (np.arange(len(clusters)), clusters)), shape=(len(clusters), n)
        )
        sizes = np.asarray(membership.sum(0)).ravel()
        if connectivities is not None:
            link = (membership.T @ connectivities @ membership).toarray()
            affinity = link / np.minimum.outer(sizes, sizes)
        else:
            centres = (membership.T @ latent) / sizes[:, None]
            affinity = -((centres[:, None] - centres[None]) ** 2).sum(-1)
        np.fill_diagonal(affinity, -np.inf)
        i, j = np.unravel_index(np.argmax(affinity), affinity.shape)
        clusters[clusters == max(i, j)] = min(i, j)
        clusters = np.unique(clusters, return_inverse=True)[1]
    while clusters.max() + 1 < k:
        spread = [
            ((latent[clusters == c] - latent[clusters == c].mean(0)) ** 2).sum()
            for c in range(clusters.max() + 1)
        ]
        members = np.flatnonzero(clusters == int(np.argmax(spread)))
        if len(members) < 2:
            break
        halves = KMeans(2, n_init=3, random_state=seed).fit_predict(latent[members])
        clusters[members[halves == 1]] = clusters.max() + 1
    return clusters


def partition(latent: np.ndarray, k: int, seed: int, method: MixturePlacement) -> np.ndarray:
    """k clusters of the cells' latent positions, by Leiden (default) or k-means."""
    from sklearn.cluster import KMeans

    if method == "kmeans" or len(latent) <= k:
        return KMeans(k, n_init=3, random_state=seed).fit_predict(latent)
    clusters, connectivities = leiden_partition(latent, k, seed)
    return exactly_k(latent, clusters, k, seed, connectivities)


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

    def __init__(
        self, loader: Any, at_epoch: int, seed: int = 0, method: MixturePlacement = "leiden"
    ) -> None:
        self.loader = loader
        self.method = method
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
        means, logvars, assignment = initial_mixture(
            cells["latent"], cells["labels"], K, self.seed, self.method, cells["latent_var"]
        )
        # Every DDP rank computes the same placement; rank 0's is broadcast so that they agree
        # to the bit (k-means ties, thread counts).
        means, logvars = trainer.strategy.broadcast((means, logvars), src=0)
        with torch.no_grad():
            module.prior_mean.copy_(torch.from_numpy(means))
            module.prior_logvar.copy_(torch.from_numpy(logvars))
        # With labels the head has learnt from them during pre-training; refitting it to
        # nearest components would hand the free components whole labelled types.
        if module.config.variant == "exact" and module.config.n_labels == 0:
            fit_assignment_head(module.y_logits, cells["features"], assignment, self.seed)
            head = {k: v.cpu() for k, v in module.y_logits.state_dict().items()}
            module.y_logits.load_state_dict(trainer.strategy.broadcast(head, src=0))
