"""Observation log-likelihoods for counts (NB, ZINB, Poisson) and log data (Gaussian).

Each function returns the elementwise log-probability (same shape as ``x``); callers sum
over genes. They are written for numerical stability at extreme means and dispersions and
are tested against :mod:`scipy.stats`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EPS = 1e-8
# An inverse dispersion beyond this is indistinguishable from Poisson and overflows lgamma terms.
THETA_MAX = 1e4


def nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Negative binomial log-probability with mean ``mu`` and inverse dispersion ``theta``.

    Variance is ``mu + mu**2 / theta``.
    """
    mu = mu.clamp(min=_EPS)
    theta = theta.clamp(min=_EPS, max=THETA_MAX)
    log_theta_mu = torch.log(theta + mu)
    return (
        theta * (torch.log(theta) - log_theta_mu)
        + x * (torch.log(mu) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


def zinb_log_prob(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, dropout_logits: torch.Tensor
) -> torch.Tensor:
    """Zero-inflated NB log-probability; ``dropout_logits``: logits of the extra-zero mass."""
    mu = mu.clamp(min=_EPS)
    theta = theta.clamp(min=_EPS, max=THETA_MAX)
    nb = nb_log_prob(x, mu, theta)
    # log NB(0) = theta * (log theta - log(theta + mu)), computed without exp/log round trips.
    nb_zero = theta * (torch.log(theta) - torch.log(theta + mu))
    log_pi = -F.softplus(-dropout_logits)  # log sigmoid
    log_not_pi = -F.softplus(dropout_logits)  # log (1 - sigmoid)
    zero_case = torch.logaddexp(log_pi, log_not_pi + nb_zero)
    return torch.where(x < 0.5, zero_case, log_not_pi + nb)


def poisson_log_prob(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Poisson log-probability with rate ``mu``."""
    mu = mu.clamp(min=_EPS)
    return x * torch.log(mu) - mu - torch.lgamma(x + 1.0)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Normal log-density with mean ``mean`` and variance ``exp(log_var)``."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def kl_normal_normal(
    m_q: torch.Tensor, logv_q: torch.Tensor, m_p: torch.Tensor, logv_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(m_q, exp(logv_q)) || N(m_p, exp(logv_p))), diagonal, summed over the last axis.

    Inputs broadcast against each other, which is how one call covers all K components.
    """
    return 0.5 * (
        logv_p - logv_q + (torch.exp(logv_q) + (m_q - m_p) ** 2) * torch.exp(-logv_p) - 1.0
    ).sum(-1)


def sample_counts(likelihood: str, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """One draw from the observation model (counts; normal values for ``"gaussian"``).

    NB is drawn as a gamma-Poisson mixture; ZINB zeroes each entry with its dropout probability.
    Uses torch's global RNG: seed it (locally) around the call.
    """
    if likelihood == "gaussian":
        mean, log_var = params["mean"], params["log_var"]
        return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    mu = params["mu"].clamp(min=_EPS)
    if likelihood == "poisson":
        return torch.poisson(mu)
    theta = params["theta"].clamp(min=_EPS, max=THETA_MAX).expand_as(mu)
    rate = torch.distributions.Gamma(concentration=theta, rate=theta / mu).sample()
    counts = torch.poisson(rate)
    if likelihood == "zinb":
        dropped = torch.rand_like(mu) < torch.sigmoid(params["dropout_logits"])
        counts = torch.where(dropped, torch.zeros_like(counts), counts)
    return counts
