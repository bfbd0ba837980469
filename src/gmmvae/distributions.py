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


def _gene_dot(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum over genes of ``values * x`` for values (B, G) or (B, K, G) and x (B, G).

    The (B, K, G) case is a batched matrix product: one pass instead of a broadcast product
    and a reduction, which is where the K-component ELBO spends its time.
    """
    if values.dim() == 3:
        return torch.bmm(values, x.unsqueeze(-1)).squeeze(-1)
    return (values * x).sum(-1)


def summed_log_likelihood(
    likelihood: str, x: torch.Tensor, params: dict[str, torch.Tensor]
) -> torch.Tensor:
    """log p(x|z) summed over genes: (B,) or (B, K) for parameters with a component axis.

    ``x`` is (B, G); ``params`` come from the decoder, with ``log_p`` (log of the gene
    proportions) and ``library`` for count likelihoods. NB and Poisson split into terms that
    depend on the component (computed on (B, K, G) once each) and terms that depend on the cell
    only (computed on (B, G)); equal to summing :func:`nb_log_prob` and friends over genes.
    """
    if likelihood == "gaussian":
        mean, log_var = params["mean"], params["log_var"]
        diff = mean - (x.unsqueeze(1) if mean.dim() == 3 else x)
        weighted = (diff * diff) @ torch.exp(-log_var)
        return -0.5 * (weighted + log_var.sum() + x.shape[-1] * math.log(2 * math.pi))
    if likelihood == "zinb":
        x_b = x.unsqueeze(1) if params["mu"].dim() == 3 else x
        return zinb_log_prob(x_b, params["mu"], params["theta"], params["dropout_logits"]).sum(-1)
    n_counts = x.sum(-1)
    per_cell = n_counts * torch.log(params["library"]) - torch.lgamma(x + 1.0).sum(-1)
    if likelihood == "poisson":
        # sum_g mu_g is the library size: the proportions sum to one.
        per_cell = per_cell - params["library"]
        return _broadcast(per_cell, params["log_p"]) + _gene_dot(params["log_p"], x)
    theta = params["theta"].clamp(min=_EPS, max=THETA_MAX)
    per_cell = per_cell + torch.lgamma(x + theta).sum(-1)
    per_cell = per_cell + (theta * torch.log(theta) - torch.lgamma(theta)).sum()
    log_theta_mu = torch.log(theta + params["mu"])
    component = _gene_dot(params["log_p"], x) - _gene_dot(log_theta_mu, x + theta)
    return _broadcast(per_cell, params["log_p"]) + component


def _broadcast(per_cell: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1) when the component-dependent part has a component axis."""
    return per_cell.unsqueeze(-1) if like.dim() == 3 else per_cell


def kl_normal_normal(
    m_q: torch.Tensor, logv_q: torch.Tensor, m_p: torch.Tensor, logv_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(m_q, exp(logv_q)) || N(m_p, exp(logv_p))), diagonal, summed over the last axis.

    Inputs broadcast against each other, which is how one call covers all K components.
    """
    return 0.5 * (
        logv_p - logv_q + (torch.exp(logv_q) + (m_q - m_p) ** 2) * torch.exp(-logv_p) - 1.0
    ).sum(-1)


def normal_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(logvar)), diagonal, summed over the last axis (inputs broadcast)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mean) ** 2 * torch.exp(-logvar)).sum(-1)


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
