"""Temperature scaling of q(y|x): the maths on known cases, then the hook in GMMVAE."""

from __future__ import annotations

import numpy as np
import pytest

from gmmvae import GMMVAE, metrics
from gmmvae.calibration import (
    MIN_CALIBRATION_CELLS,
    MIN_FEW_LABEL_CELLS,
    apply_temperature,
    fit_temperature,
    nll,
)
from gmmvae.datasets import simulate


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _overconfident(n: int, true_temperature: float, seed: int = 0):
    """Labels drawn from softmax(logits); the model reports softmax(logits * T)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 5))
    calibrated = _softmax(logits)
    labels = np.array([rng.choice(5, p=p) for p in calibrated])
    return _softmax(logits * true_temperature), labels, calibrated


def test_temperature_one_is_identity_and_scaling_keeps_ranking():
    probs = _softmax(np.random.default_rng(1).normal(0, 2, (50, 4)))
    assert apply_temperature(probs, 1.0) is probs
    hot = apply_temperature(probs, 3.0)
    np.testing.assert_allclose(hot.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(hot.argmax(1), probs.argmax(1))
    assert (hot.max(1) < probs.max(1)).all()  # T > 1 flattens every row
    cold = apply_temperature(probs, 0.5)
    assert (cold.max(1) > probs.max(1)).all()


def test_temperature_scaling_is_softmax_of_scaled_logits():
    logits = np.random.default_rng(2).normal(0, 2, (20, 6))
    np.testing.assert_allclose(
        apply_temperature(_softmax(logits), 2.5), _softmax(logits / 2.5), rtol=1e-6
    )


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan])
def test_bad_temperature_is_refused(bad):
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(np.full((2, 2), 0.5), bad)


@pytest.mark.parametrize("true_temperature", [0.5, 3.0])
def test_fit_recovers_known_temperature_and_removes_miscalibration(true_temperature):
    probs, labels, _ = _overconfident(4000, true_temperature)
    fitted = fit_temperature(probs, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    before = metrics.expected_calibration_error(probs.max(1), probs.argmax(1) == labels)
    scaled = apply_temperature(probs, fitted)
    after = metrics.expected_calibration_error(scaled.max(1), scaled.argmax(1) == labels)
    assert before > 0.05
    assert after < 0.03
    assert nll(probs, labels, fitted) < nll(probs, labels, 1.0)


def test_fit_on_held_out_cells_generalises():
    probs, labels, _ = _overconfident(6000, 3.0, seed=3)
    fitted = fit_temperature(probs[:500], labels[:500])
    scaled = apply_temperature(probs[500:], fitted)
    ece = metrics.expected_calibration_error(scaled.max(1), scaled.argmax(1) == labels[500:])
    assert ece < 0.03


def test_few_cells_may_only_soften_and_too_few_leave_one():
    probs, labels, _ = _overconfident(4000, 3.0, seed=5)
    few = MIN_CALIBRATION_CELLS - 1
    # An overconfident model is softened from a few held-out cells ...
    softened = fit_temperature(probs[:few], labels[:few])
    assert softened > 1.0
    held_out = slice(few, None)
    ece = [
        metrics.expected_calibration_error(p.max(1), p.argmax(1) == labels[held_out])
        for p in (probs[held_out], apply_temperature(probs[held_out], softened))
    ]
    assert ece[1] < ece[0]
    # ... but never sharpened: an underconfident one keeps T = 1 below MIN_CALIBRATION_CELLS.
    under, under_labels, _ = _overconfident(4000, 0.5, seed=5)
    assert fit_temperature(under[:few], under_labels[:few]) == 1.0
    assert fit_temperature(under[:400], under_labels[:400]) < 1.0
    assert (
        fit_temperature(probs[: MIN_FEW_LABEL_CELLS - 1], labels[: MIN_FEW_LABEL_CELLS - 1]) == 1.0
    )


def test_all_held_out_cells_correct_leave_temperature_at_one():
    # The NLL keeps falling as T -> 0 when no held-out cell is misclassified: the fit would end
    # on its lower bound and make every later prediction ~certain.
    probs = np.tile([0.9, 0.05, 0.05], (500, 1))
    labels = np.zeros(len(probs), dtype=int)
    assert nll(probs, labels, 0.05) < nll(probs, labels, 1.0)
    assert fit_temperature(probs, labels) == 1.0


def test_calibrated_model_keeps_one_when_scaling_does_not_help():
    _, labels, calibrated = _overconfident(2000, 1.0, seed=4)
    assert fit_temperature(calibrated, labels) == pytest.approx(1.0, abs=0.1)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(np.full((40, 3), 1 / 3), np.zeros(39, dtype=int))
    with pytest.raises(ValueError, match="labels must lie"):
        fit_temperature(np.full((40, 3), 1 / 3), np.full(40, 3))


# --------------------------------------------------------------------------- the model hook
@pytest.fixture(scope="module")
def reference_pair():
    """The same labelled reference trained twice, with and without calibration."""
    adata = simulate(500, 100, 4, seed=5, marker_log_fold=1.5)
    GMMVAE.setup_anndata(adata, labels_key="cell_type")
    models = {}
    for calibrate in (True, False):
        model = GMMVAE(adata, seed=0)
        model.train(max_epochs=15, seed=0, progress_bar=False, batch_size=64, calibrate=calibrate)
        models[calibrate] = model
    return models, adata


def test_train_records_temperature_from_validation_labels(reference_pair):
    models, _ = reference_pair
    params = models[True].train_params
    # 10 % of 500 cells held out, every cell labelled; the split is made per label, so each
    # label's share is rounded on its own.
    assert 45 <= params["n_calibration_cells"] <= 55
    assert params["temperature"] > 0
    assert models[False].train_params["temperature"] == 1.0


def test_predict_applies_temperature_without_changing_labels(reference_pair):
    models, adata = reference_pair
    calibrated = models[True].predict(adata.copy()).to_numpy()
    raw = models[False].predict(adata.copy()).to_numpy()
    np.testing.assert_array_equal(calibrated.argmax(1), raw.argmax(1))
    expected = apply_temperature(raw, models[True].train_params["temperature"])
    np.testing.assert_allclose(calibrated, expected, rtol=1e-4, atol=1e-6)


def test_temperature_survives_save_and_load(reference_pair, tmp_path):
    models, adata = reference_pair
    models[True].save(tmp_path / "m")
    loaded = GMMVAE.load(tmp_path / "m", adata=adata)
    assert loaded.train_params["temperature"] == models[True].train_params["temperature"]
    np.testing.assert_allclose(
        loaded.predict(adata.copy()).to_numpy(), models[True].predict(adata.copy()).to_numpy()
    )


def test_unlabelled_training_has_no_temperature(small):
    GMMVAE.setup_anndata(small)
    model = GMMVAE(small, n_components=3, seed=0)
    model.train(max_epochs=2, seed=0, progress_bar=False, batch_size=64)
    assert model.train_params["temperature"] == 1.0
    assert model.train_params["n_calibration_cells"] == 0
