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


def test_initial_mixture_with_labels_uses_labelled_means():
    latent, truth, _ = _three_blobs()
    labels = np.full(len(truth), -1)
    # Labels name blob 2 as component 0 and blob 0 as component 1; blob 1 is unlabelled.
    labels[120:125], labels[0:7] = 0, 1
    means, logvars = initial_mixture(latent, labels, 3, seed=0)
    assert means.shape == logvars.shape == (3, 3)
    assert means.dtype == np.float32
    np.testing.assert_allclose(means[0], latent[labels == 0].mean(0), rtol=1e-5)
    np.testing.assert_allclose(means[1], latent[labels == 1].mean(0), rtol=1e-5)
    floor = 1e-3 * latent.var(0).mean() + 1e-6
    np.testing.assert_allclose(logvars[1], np.log(latent[labels == 1].var(0) + floor), rtol=1e-5)
    # The free component goes to the blob that no label explains.
    np.testing.assert_allclose(means[2], latent[60:120].mean(0), atol=0.3)


def test_initial_mixture_without_labels_finds_the_blobs():
    latent, _, centres = _three_blobs()
    means, logvars = initial_mixture(latent, np.full(len(latent), -1), 3, seed=0)
    assert np.isfinite(logvars).all()
    # Every blob centre has a component mean near it.
    dist = np.linalg.norm(centres[:, None] - means[None], axis=-1)
    assert (dist.min(1) < 0.3).all()


def test_initial_mixture_label_with_one_labelled_cell():
    latent, truth, _ = _three_blobs()
    labels = np.full(len(truth), -1)
    labels[0] = 0  # one labelled cell of type 0, as 1 % labels with "at least one per type" gives
    labels[60:70] = 1
    means, _ = initial_mixture(latent, labels, 3, seed=0)
    np.testing.assert_allclose(means[1], latent[labels == 1].mean(0), rtol=1e-5)
