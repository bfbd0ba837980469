"""Temperature scaling of q(y|x) on held-out labelled cells (Guo et al. 2017).

The classifier q(y|x) is trained with a heavy classification weight, so its top probability
runs ahead of its accuracy (overconfidence). One scalar temperature T, fitted by minimising the
negative log-likelihood of the true labels of cells that took no part in the gradient steps
(the labelled cells of the validation split), rescales the log-probabilities:
``p_T = softmax(log p / T)``. The ranking of components is unchanged (so are the predicted
labels, accuracy and macro-F1); only the confidence moves.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize_scalar

logger = logging.getLogger(__name__)

#: From this many labelled held-out cells on, the temperature may also sharpen (T < 1).
#: Below it, a fit on a handful of cells that happen to be classified correctly would run
#: towards T -> 0 and make the model *more* overconfident; with few labels the fit may only
#: soften (T >= 1), which is the direction of the classifier's known error (a few
#: misclassified held-out cells then carry the fit). A fit that ends on a bound is discarded.
MIN_CALIBRATION_CELLS = 30
#: Fewer labelled held-out cells than this leave the temperature at 1.
MIN_FEW_LABEL_CELLS = 5
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log probs / temperature)`` row by row, in the dtype of ``probs``.

    ``probs`` is (n_cells, K), rows summing to 1; ``temperature`` > 0 (1 returns ``probs``).
    """
    if temperature <= 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}.")
    probs = np.asarray(probs)
    if temperature == 1.0:
        return probs
    logits = _log_probs(probs) / temperature
    logits -= logits.max(1, keepdims=True)
    scaled = np.exp(logits)
    scaled /= scaled.sum(1, keepdims=True)
    return scaled.astype(probs.dtype, copy=False)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of integer ``labels`` under temperature-scaled ``probs``."""
    logits = _log_probs(probs) / temperature
    logits -= logits.max(1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(1))
    return float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))


def fit_temperature(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    min_cells: int = MIN_CALIBRATION_CELLS,
    min_few_cells: int = MIN_FEW_LABEL_CELLS,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """Temperature minimising the NLL of ``labels`` (ints in [0, K)) under ``probs`` (n, K).

    With fewer than ``min_cells`` cells the search only softens (T >= 1); with fewer than
    ``min_few_cells`` it does not run. Returns 1.0 (no scaling) then, when every cell is
    classified correctly (no finite optimum) or when the optimum lies on a bound. The search
    runs over log T in ``bounds`` (bounded Brent), which is smooth and one-dimensional.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(
            f"probs must be (n_cells, K) and labels (n_cells,); got {probs.shape} and "
            f"{labels.shape}."
        )
    if len(labels) < min_few_cells:
        logger.info(
            "%d labelled held-out cells (< %d): temperature left at 1.", len(labels), min_few_cells
        )
        return 1.0
    if len(labels) < min_cells:
        bounds = (1.0, bounds[1])
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {labels.min()}..")
    if (probs.argmax(1) == labels).all():
        # No held-out cell is misclassified, so the NLL keeps falling as T -> 0: the fit would
        # end on its lower bound, say nothing about the errors to come and make every later
        # prediction ~certain (confidence would no longer rank cells).
        logger.info("Every held-out cell is classified correctly: temperature left at 1.")
        return 1.0
    low, high = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(
        lambda log_t: nll(probs, labels, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = float(np.exp(result.x))
    # Keep T = 1 unless scaling actually lowers the held-out NLL.
    if nll(probs, labels, temperature) >= nll(probs, labels, 1.0):
        return 1.0
    if high - result.x < 0.01 or (bounds[0] < 1.0 and result.x - low < 0.01):
        logger.info("Temperature fit ran to its bound (%.3g): left at 1.", temperature)
        return 1.0
    return temperature
