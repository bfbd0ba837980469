"""The DE benchmark's rankings: the headline one and each tool's documented marker recipe."""

import numpy as np
import pandas as pd
import pytest
from benchmarks.protocols import de


def _frame() -> pd.DataFrame:
    # "rare": certain and huge LFC, seen in 2 % of the group's cells; "marker": certain,
    # smaller LFC, seen in 80 %; "weak": not past the Bayes factor threshold; "down": lower.
    return pd.DataFrame(
        {
            "proba_de": [1.0, 1.0, 0.6, 1.0],
            "bayes_factor": [18.4, 18.4, 0.4, 18.4],
            "lfc_mean": [9.0, 3.0, 0.5, -4.0],
            "non_zeros_proportion1": [0.02, 0.8, 0.5, 0.1],
            "group1": "A",
        },
        index=["rare", "marker", "weak", "down"],
    )


def test_headline_ranking_breaks_ties_by_lfc():
    score = de.bayes_ranking(_frame())
    assert de.top_genes(score, 4) == ["rare", "marker", "weak", "down"]


def test_scvi_recipe_puts_filtered_genes_first_in_headline_order():
    score = de.scvi_recipe_ranking(_frame())
    assert de.top_genes(score, 4) == ["marker", "rare", "weak", "down"]


def test_bayes_rankings_count_up_genes_tied_at_the_top():
    rankings = de.bayes_rankings(_frame())
    assert rankings["A"]["tied"] == 2  # rare and marker; "down" is certain but lower


def test_kept_first_keeps_order_within_blocks_and_handles_nan():
    score = pd.Series([5.0, np.nan, 1.0, 3.0], index=list("abcd"))
    lifted = de.kept_first(score, np.array([False, False, True, True]))
    assert de.top_genes(lifted, 3) == ["d", "c", "a"]


def test_score_markers_reports_both_rankings():
    rankings = {
        "B": {
            "primary": pd.Series({"KLK1": 3.0, "CD79A": 2.0, **{f"g{i}": -i for i in range(12)}}),
            "recipe": pd.Series({"CD79A": 3.0, "MS4A1": 2.0, "KLK1": 1.0}),
            "tied": 7,
        }
    }
    rankings["B"]["primary"]["MS4A1"] = -100.0  # rank 15: outside the top 10
    scores, extra = de.score_markers(rankings)
    assert scores["hit_fraction"] == pytest.approx(0.5)
    assert scores["hit_fraction_recipe"] == pytest.approx(1.0)
    assert scores["tied_at_top"] == 7
    assert extra["per_population"]["B"]["hits_recipe"] == ["MS4A1", "CD79A"]


def test_wilcoxon_recipe_follows_scanpy_filter():
    import scanpy as sc

    rng = np.random.default_rng(0)
    groups = np.repeat(["a", "b"], 60)
    x = rng.poisson(1.0, size=(120, 6)).astype(float)
    x[:60, 0] += rng.poisson(8.0, 60)  # broad marker of a: kept by the filter
    x[:3, 1] += 40.0  # seen in 5 % of a: dropped (in-group fraction < 0.25)
    obs = pd.DataFrame({"g": groups}, index=[f"cell{i}" for i in range(120)])
    holder = sc.AnnData(np.log1p(x), obs=obs)
    holder.var_names = [f"gene{i}" for i in range(6)]
    sc.tl.rank_genes_groups(holder, "g", method="wilcoxon")
    rankings = de.wilcoxon_rankings(holder)
    recipe = de.top_genes(rankings["a"]["recipe"], 6)
    assert recipe[0] == "gene0"
    assert recipe.index("gene1") > 0
    assert rankings["a"]["tied"] is None
