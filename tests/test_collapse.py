"""A collapsed mixture is reported, never returned silently."""

from __future__ import annotations

import numpy as np
import pytest

import gmmvae
from gmmvae.collapse import collapsed


def test_collapsed_finds_empty_and_dominant_components():
    assert collapsed(np.array([300, 250, 200, 250]), 4) == ([], None)
    assert collapsed(np.array([600, 398, 2, 0]), 4) == ([2, 3], None)
    assert collapsed(np.array([950, 20, 20, 10]), 4) == ([], 0)
    # Labelled models check only the dominant component (free ones may be empty).
    assert collapsed(np.array([500, 500, 0]), 0) == ([], None)
    assert collapsed(np.array([990, 5, 5]), 0) == ([], 0)


def test_training_warns_with_the_counts_and_the_fix(small, monkeypatch):
    gmmvae.GMMVAE.setup_anndata(small)
    model = gmmvae.GMMVAE(small, n_components=3, seed=0)
    # Force the collapse this check exists for: every cell ends in component 0.
    monkeypatch.setattr(
        "gmmvae.collapse.component_counts", lambda model, data: np.array([len(data), 0, 0])
    )
    with pytest.warns(
        UserWarning,
        match=r"collapsed.*2 of 3 components hold almost no cells: 1 \(0\), 2 \(0\).*"
        r"component 0 holds 100%.*Try another seed",
    ):
        model.train(4, progress_bar=False, batch_size=64)
