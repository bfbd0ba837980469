"""Two-sample tests, marker overlap, DEGs and treatment-effect scores."""

from __future__ import annotations

import numpy as np
import pytest

from gmmvae import evaluation


def _two_clouds(shift: float, n: int = 150, genes: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (n, genes))
    b = rng.normal(shift, 1.0, (n, genes))
    return a, b


def test_c2st_separates_shifted_and_not_identical_clouds():
    same_a, same_b = _two_clouds(0.0)
    far_a, far_b = _two_clouds(2.0)
    assert evaluation.c2st_auc(far_a, far_b, n_pcs=10) > 0.95
    assert abs(evaluation.c2st_auc(same_a, same_b, n_pcs=10) - 0.5) < 0.12


def test_marker_overlap_is_one_for_identical_and_low_for_swapped_groups():
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, (200, 60)).astype(np.float32)
    groups = np.repeat(["a", "b"], 100)
    data[groups == "a", :20] += 3.0
    data[groups == "b", 20:40] += 3.0
    genes = [f"g{i}" for i in range(60)]
    same = evaluation.marker_overlap(data, groups, data, groups, genes, n=20)
    assert same == {"a": 1.0, "b": 1.0}
    swapped = evaluation.marker_overlap(data, groups, data, groups[::-1], genes, n=20)
    assert swapped["a"] < 0.2 and swapped["b"] < 0.2


def test_top_degs_finds_planted_genes():
    rng = np.random.default_rng(5)
    control = rng.normal(1.0, 0.3, (80, 50)).clip(0)
    stimulated = rng.normal(1.0, 0.3, (90, 50)).clip(0)
    stimulated[:, [7, 3, 21]] += [3.0, 2.0, 1.0]  # up in the treated cells
    stimulated[:, 40] -= 0.9  # down: ranks last
    genes = [f"g{i}" for i in range(50)]
    degs = evaluation.top_degs(stimulated, control, genes, n=10)
    assert len(degs) == 10
    assert set(degs[:3]) == {"g7", "g3", "g21"}
    assert "g40" not in degs


def test_perturbation_scores():
    rng = np.random.default_rng(6)
    real = rng.gamma(1.0, 1.0, (60, 30))
    genes = [f"g{i}" for i in range(30)]
    scores = evaluation.perturbation_scores(
        real, real.copy(), genes, genes[:5], pcs=(real[:, :3], real[:, :3])
    )
    for key in ("mean_r2", "mean_r2_deg", "mean_r2_sklearn", "var_r2_sklearn_deg"):
        assert scores[key] == pytest.approx(1.0)
    assert scores["energy_distance"] == pytest.approx(0.0, abs=1e-12)
    noisy = evaluation.perturbation_scores(real, real + rng.normal(0, 1, real.shape), genes, genes)
    assert noisy["mean_r2"] < 1.0 and "energy_distance" not in noisy
    with pytest.raises(ValueError, match="columns"):
        evaluation.perturbation_scores(real, real[:, :5], genes, genes)
    with pytest.raises(ValueError, match="DEG"):
        evaluation.perturbation_scores(real, real, genes, ["nope"])


def test_delta_scores_reward_the_response_and_not_the_control():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(40)]
    control = rng.normal(1.0, 0.3, (80, 40)).clip(0)
    response = np.zeros(40)
    response[:10] = np.linspace(2.0, 0.5, 10)
    response[10:14] = -0.6
    real = (control + response + rng.normal(0, 0.2, control.shape)).clip(0)
    degs = genes[:14]
    good = evaluation.perturbation_scores(real, control + response, genes, degs, control=control)
    unchanged = evaluation.perturbation_scores(real, control, genes, degs, control=control)
    assert good["delta_pcc_deg"] > 0.9 and good["delta_pcc"] > 0.9
    assert good["direction_accuracy_deg"] == 1.0
    assert good["deg_recovery"] > 0.7
    assert np.isnan(unchanged["delta_pcc_deg"])  # no change predicted: no correlation
    assert unchanged["deg_recovery"] < 0.5
    flipped = evaluation.perturbation_scores(real, control - response, genes, degs, control=control)
    assert flipped["delta_pcc_deg"] < -0.9
    assert flipped["direction_accuracy_deg"] == 0.0
