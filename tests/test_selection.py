"""Choosing K by held-out marginal likelihood: the rule, the split, and one real selection."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

import gmmvae
from gmmvae import GMMVAE, GMMVAEInputError
from gmmvae.selection import one_standard_error_choice, split_held_out

FAST = {"progress_bar": False, "batch_size": 64}


def test_one_standard_error_rule_prefers_the_smaller_tie():
    rng = np.random.default_rng(0)
    base = rng.normal(-100, 5, 400)
    per_cell = {
        2: base - 3.0,  # clearly worse
        3: base + rng.normal(0, 0.5, 400),  # ties with the best (gap << its SE)
        4: base + 0.01,  # best by a hair
    }
    chosen, table = one_standard_error_choice(per_cell)
    assert chosen == 3
    assert list(table["n_components"]) == [2, 3, 4]
    assert table.loc[table["n_components"] == 4, "gap_to_best"].item() == 0.0
    assert table.loc[table["n_components"] == 2, "gap_to_best"].item() == pytest.approx(3.01)
    # A real improvement is kept.
    per_cell[4] = base + 1.0
    assert one_standard_error_choice(per_cell)[0] == 4


def test_split_is_seeded_disjoint_and_refuses_too_few_cells():
    train, held = split_held_out(1000, 0.1, seed=1)
    assert len(held) == 100 and len(train) == 900
    assert not set(train) & set(held)
    np.testing.assert_array_equal(held, split_held_out(1000, 0.1, seed=1)[1])
    with pytest.raises(GMMVAEInputError, match="held-out cells"):
        split_held_out(300, 0.1, seed=0)
    with pytest.raises(GMMVAEInputError, match="held_out"):
        split_held_out(300, 1.5, seed=0)


def test_bad_candidates_and_registration(small):
    with pytest.raises(GMMVAEInputError, match="not registered"):
        gmmvae.select_n_components(small, [2, 3])
    GMMVAE.setup_anndata(small)
    for bad in ([], [0, 2], [2, 2], [2.5]):
        with pytest.raises(GMMVAEInputError, match="candidates"):
            gmmvae.select_n_components(small, bad)
    small.obs["label"] = small.obs["cell_type"]
    GMMVAE.setup_anndata(small, labels_key="label")
    with pytest.raises(GMMVAEInputError, match="labels_key"):
        gmmvae.select_n_components(small, [2, 3])


@pytest.mark.filterwarnings("ignore:The mixture collapsed")
def test_selection_prefers_the_true_number_of_types_over_one(clustering_data):
    """Five well-separated types: one component explains held-out cells far worse."""
    GMMVAE.setup_anndata(clustering_data)
    table = gmmvae.select_n_components(
        clustering_data,
        [1, 5],
        held_out=0.2,
        n_mc_samples=10,
        train_kwargs={"max_epochs": 40, **FAST},
    )
    assert list(table.columns) == [
        "n_components",
        "marginal_ll",
        "marginal_ll_se",
        "gap_to_best",
        "gap_se",
        "elbo",
        "n_occupied",
        "seconds",
        "selected",
    ]
    assert table.attrs["n_components"] == 5
    assert table["selected"].sum() == 1
    five = table.set_index("n_components").loc[5]
    assert five["n_occupied"] >= 4
    assert (table["marginal_ll"] >= table["elbo"] - 0.5).all()
    fig = gmmvae.pl.n_components(table)
    assert fig.axes[0].get_xlabel() == "number of components K"
    plt.close(fig)
