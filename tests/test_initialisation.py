"""Placing the mixture components: k-means and labelled means on the latent."""

from __future__ import annotations

import numpy as np

from gmmvae.initialisation import initial_mixture


def _three_blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, -8.0, 4.0]])
    latent = np.concatenate([c + rng.normal(0, 0.5, (60, 3)) for c in centres])
    truth = np.repeat([0, 1, 2], 60)
    return latent, truth, centres


def test_initial_mixture_places_labelled_components_on_their_clusters():
    latent, truth, _ = _three_blobs()
    labels = np.full(len(truth), -1)
    # Labels name blob 2 as component 0 and blob 0 as component 1; blob 1 is unlabelled.
    labels[120:125], labels[0:7] = 0, 1
    posterior_var = np.full_like(latent, 0.1)
    means, logvars, assignment = initial_mixture(
        latent, labels, 3, seed=0, latent_var=posterior_var
    )
    assert means.shape == logvars.shape == (3, 3)
    assert means.dtype == np.float32
    # A few labels place their component on the whole blob (its unlabelled cells included).
    np.testing.assert_allclose(means[0], latent[120:].mean(0), rtol=1e-5)
    np.testing.assert_allclose(means[1], latent[:60].mean(0), rtol=1e-5)
    floor = 1e-3 * latent.var(0).mean() + 1e-6
    np.testing.assert_allclose(np.exp(logvars[1]), latent[:60].var(0) + 0.1 + floor, rtol=1e-5)
    # The free component goes to the blob that no label explains.
    np.testing.assert_allclose(means[2], latent[60:120].mean(0), atol=0.3)
    np.testing.assert_array_equal(assignment, np.repeat([1, 2, 0], 60))


def test_initial_mixture_without_labels_finds_the_blobs():
    latent, _, centres = _three_blobs()
    means, logvars, _ = initial_mixture(latent, np.full(len(latent), -1), 3, seed=0)
    assert np.isfinite(logvars).all()
    # Every blob centre has a component mean near it.
    dist = np.linalg.norm(centres[:, None] - means[None], axis=-1)
    assert (dist.min(1) < 0.3).all()


def test_initial_mixture_label_with_one_labelled_cell():
    latent, truth, _ = _three_blobs()
    labels = np.full(len(truth), -1)
    labels[0] = 0  # one labelled cell of type 0, as 1 % labels with "at least one per type" gives
    labels[60:70] = 1
    means, logvars, _ = initial_mixture(latent, labels, 3, seed=0)
    np.testing.assert_allclose(means[0], latent[:60].mean(0), rtol=1e-5)
    np.testing.assert_allclose(means[1], latent[60:120].mean(0), rtol=1e-5)
    assert np.isfinite(logvars).all()


def test_labelled_cells_keep_their_label_in_a_mixed_cluster():
    latent, truth, _ = _three_blobs()
    labels = np.full(len(truth), -1)
    labels[0:5], labels[5] = 0, 1  # blob 0: mostly label 0, one cell labelled 1
    labels[60:63] = 1
    _, _, assignment = initial_mixture(latent, labels, 3, seed=0)
    assert assignment[5] == 1
    assert (assignment[6:60] == 0).all()


def _long_and_small(seed=0):
    """A long thin cell population and a small compact one beside its middle."""
    rng = np.random.default_rng(seed)
    long = np.stack([rng.uniform(0, 30, 600), rng.normal(0, 0.3, 600)], 1)
    small = rng.normal([15.0, 3.0], 0.3, (40, 2))
    return np.concatenate([long, small]), np.repeat([0, 1], [600, 40])


def test_leiden_placement_keeps_a_long_type_whole():
    # k-means cuts the long population in two and lumps the small one with a half; the kNN
    # graph keeps each population connected, as scanpy's Leiden would.
    from sklearn.metrics import adjusted_rand_score

    latent, truth = _long_and_small()
    no_labels = np.full(len(latent), -1)
    _, _, leiden = initial_mixture(latent, no_labels, 2, seed=0, method="leiden")
    _, _, kmeans = initial_mixture(latent, no_labels, 2, seed=0, method="kmeans")
    assert adjusted_rand_score(truth, leiden) > 0.95
    assert adjusted_rand_score(truth, kmeans) < 0.5


def test_component_variance_includes_posterior_variance():
    # Components narrower than their cells' posteriors push cells out through the KL term.
    latent, truth, _ = _three_blobs()
    labels = truth.copy()
    posterior_var = np.full_like(latent, 0.5)
    _, logvars, _ = initial_mixture(latent, labels, 3, seed=0, latent_var=posterior_var)
    floor = 1e-3 * latent.var(0).mean() + 1e-6
    expected = latent[truth == 0].var(0) + 0.5 + floor
    np.testing.assert_allclose(np.exp(logvars[0]), expected, rtol=1e-5)
