"""Graph clustering of a representation into a given number of clusters (Leiden with K).

Used to place the mixture components on the pre-trained latent and, in the benchmarks, for
every "representation + Leiden" baseline (PCA, scVI, gmmvae's own latent), so that all of them
cluster the same way: ``sc.pp.neighbors`` defaults (15 neighbours, exact search), then
``sc.tl.leiden`` (igraph) with the resolution bisected towards K, then merges or splits until
exactly K clusters remain.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import scipy.sparse

_BISECTION_STEPS = 15
_MAX_RESOLUTION = 3.0


def leiden_with_k(
    representation: np.ndarray, n_clusters: int, *, seed: int = 0, n_neighbors: int = 15
) -> np.ndarray:
    """Exactly ``n_clusters`` clusters of the rows of ``representation`` (cells x dims).

    Leiden on the cells' kNN graph with the resolution bisected towards ``n_clusters``; if no
    resolution gives exactly that many, the most connected clusters merge (or the widest is
    split by k-means) until it does. numpy's and Python's global random states are left as
    they were (scanpy and igraph seed them).

    Returns
    -------
    int64 array (n_cells,) of cluster codes in ``0 .. n_clusters - 1``.
    """
    representation = np.asarray(representation, dtype=np.float32)
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}.")
    if len(representation) <= n_clusters:
        return np.arange(len(representation)) % max(n_clusters, 1)
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        clusters, connectivities = leiden_partition(
            representation, n_clusters, seed=seed, n_neighbors=n_neighbors
        )
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)
    return exactly_k(representation, clusters, n_clusters, seed, connectivities).astype(np.int64)


def leiden_partition(
    representation: np.ndarray, n_clusters: int, *, seed: int = 0, n_neighbors: int = 15
) -> tuple[np.ndarray, Any]:
    """Leiden clusters with the resolution bisected towards ``n_clusters`` (the closest
    partition found) and the kNN graph's connectivities.

    The neighbours are exact (scikit-learn): scanpy's approximate search (pynndescent, used
    above 4,096 cells) breaks with scipy >= 1.17 in scanpy 1.11.
    """
    import scanpy as sc

    holder = sc.AnnData(np.zeros((len(representation), 1), dtype=np.float32))
    holder.obsm["X_rep"] = representation
    sc.pp.neighbors(
        holder,
        min(n_neighbors, len(representation) - 1),
        use_rep="X_rep",
        transformer="sklearn",
        random_state=seed,
    )
    low, high, best = 0.0, _MAX_RESOLUTION, None
    for _ in range(_BISECTION_STEPS):
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
    representation: np.ndarray,
    clusters: np.ndarray,
    k: int,
    seed: int,
    connectivities: Any = None,
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
            centres = (membership.T @ representation) / sizes[:, None]
            affinity = -((centres[:, None] - centres[None]) ** 2).sum(-1)
        np.fill_diagonal(affinity, -np.inf)
        i, j = np.unravel_index(np.argmax(affinity), affinity.shape)
        clusters[clusters == max(i, j)] = min(i, j)
        clusters = np.unique(clusters, return_inverse=True)[1]
    while clusters.max() + 1 < k:
        spread = [
            ((representation[clusters == c] - representation[clusters == c].mean(0)) ** 2).sum()
            for c in range(clusters.max() + 1)
        ]
        members = np.flatnonzero(clusters == int(np.argmax(spread)))
        if len(members) < 2:
            break
        halves = KMeans(2, n_init=3, random_state=seed).fit_predict(representation[members])
        clusters[members[halves == 1]] = clusters.max() + 1
    return clusters
