"""Log-likelihoods against scipy.stats, including extreme means and dispersions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Normal, kl_divergence

from gmmvae.distributions import (
    THETA_MAX,
    gaussian_log_prob,
    kl_normal_normal,
    nb_log_prob,
    poisson_log_prob,
    summed_log_likelihood,
    zinb_log_prob,
)

COUNTS = [0.0, 1.0, 3.0, 50.0, 1e4]
MEANS = [1e-6, 1e-2, 1.0, 30.0, 1e6]
THETAS = [1e-3, 0.5, 10.0, 1e4]
DROPOUT_LOGITS = [-6.0, 0.0, 3.0]


def _grid(*axes):
    """Flattened float64 tensors of the Cartesian product of ``axes``."""
    cols = np.array(list(itertools.product(*axes)), dtype=np.float64).T
    return [torch.from_numpy(c) for c in cols]


def _nb_scipy(x, mu, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))


def test_nb_matches_scipy_on_extreme_grid():
    x, mu, theta = _grid(COUNTS, MEANS, THETAS)
    ours = nb_log_prob(x, mu, theta).numpy()
    ref = _nb_scipy(x.numpy(), mu.numpy(), theta.numpy())
    assert np.isfinite(ref).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_nb_clamps_theta_at_theta_max():
    x, mu, theta = _grid(COUNTS, MEANS, [1e6, 1e9])
    ours = nb_log_prob(x, mu, theta).numpy()
    ref = _nb_scipy(x.numpy(), mu.numpy(), np.full(len(x), THETA_MAX))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_nb_large_theta_approaches_poisson():
    x, mu = _grid(COUNTS[:3], [0.5, 3.0, 20.0])  # NB - Poisson grows like x**2 / theta
    nb = nb_log_prob(x, mu, torch.full_like(x, THETA_MAX)).numpy()
    ref = stats.poisson.logpmf(x.numpy(), mu.numpy())
    np.testing.assert_allclose(nb, ref, rtol=2e-3, atol=2e-3)


def test_zinb_matches_scipy_mixture():
    x, mu, theta, logits = _grid(COUNTS, MEANS, THETAS, DROPOUT_LOGITS)
    ours = zinb_log_prob(x, mu, theta, logits).numpy()
    pi = 1.0 / (1.0 + np.exp(-logits.numpy()))
    nb = np.exp(_nb_scipy(x.numpy(), mu.numpy(), theta.numpy()))
    with np.errstate(divide="ignore"):
        ref = np.log(pi * (x.numpy() == 0) + (1 - pi) * nb)
    finite = np.isfinite(ref)  # the reference underflows to -inf for huge x at tiny means
    assert finite.mean() > 0.8
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-6, atol=1e-6)
    assert np.isfinite(ours).all()


def test_zinb_zero_has_at_least_dropout_mass():
    x = torch.zeros(3, dtype=torch.float64)
    mu = torch.full_like(x, 1e6)  # NB(0) ~ 0: only the dropout mass is left
    logits = torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)
    ours = zinb_log_prob(x, mu, torch.ones_like(x), logits)
    np.testing.assert_allclose(ours.numpy(), torch.nn.functional.logsigmoid(logits), atol=1e-5)


def test_poisson_matches_scipy():
    x, mu = _grid(COUNTS, MEANS)
    ours = poisson_log_prob(x, mu).numpy()
    np.testing.assert_allclose(
        ours, stats.poisson.logpmf(x.numpy(), mu.numpy()), rtol=1e-6, atol=1e-6
    )


def test_gaussian_matches_scipy():
    x, mean, log_var = _grid([-3.0, 0.0, 2.5, 100.0], [-1.0, 0.0, 4.0], [-8.0, 0.0, 3.0])
    ours = gaussian_log_prob(x, mean, log_var).numpy()
    ref = stats.norm.logpdf(x.numpy(), mean.numpy(), np.exp(0.5 * log_var.numpy()))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_count_log_probs_finite_in_float32(likelihood):
    x, mu, theta, logits = (t.float() for t in _grid(COUNTS, MEANS, THETAS, DROPOUT_LOGITS))
    if likelihood == "nb":
        lp = nb_log_prob(x, mu, theta)
    elif likelihood == "zinb":
        lp = zinb_log_prob(x, mu, theta, logits)
    else:
        lp = poisson_log_prob(x, mu)
    assert lp.dtype == torch.float32
    assert torch.isfinite(lp).all()
    assert (lp <= 1e-4).all()  # log-probabilities of a discrete distribution


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_count_log_probs_have_finite_gradients_at_extremes(likelihood):
    x, mu, theta, logits = (t.float() for t in _grid(COUNTS, MEANS, THETAS, DROPOUT_LOGITS))
    mu.requires_grad_(True)
    theta.requires_grad_(True)
    if likelihood == "nb":
        lp = nb_log_prob(x, mu, theta)
    else:
        lp = zinb_log_prob(x, mu, theta, logits)
    lp.sum().backward()
    assert torch.isfinite(mu.grad).all()
    assert torch.isfinite(theta.grad).all()


def test_nb_is_a_distribution_over_counts():
    # Probabilities over 0..20000 sum to one for a moderate mean and a range of dispersions.
    x = torch.arange(20001, dtype=torch.float64)
    for theta in (0.3, 2.0, 100.0):
        lp = nb_log_prob(
            x, torch.tensor(20.0, dtype=torch.float64), torch.tensor(theta, dtype=torch.float64)
        )
        assert torch.exp(lp).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_kl_normal_normal_matches_torch():
    g = torch.Generator().manual_seed(0)
    m_q, m_p = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    lv_q, lv_p = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    ref = kl_divergence(Normal(m_q, (0.5 * lv_q).exp()), Normal(m_p, (0.5 * lv_p).exp())).sum(-1)
    ours = kl_normal_normal(m_q, lv_q, m_p, lv_p)
    assert ours.shape == (6,)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_kl_normal_normal_is_zero_for_equal_distributions():
    m, lv = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(kl_normal_normal(m, lv, m, lv), torch.zeros(5))


def test_kl_normal_normal_broadcasts_cells_against_components():
    g = torch.Generator().manual_seed(1)
    B, K, d = 5, 3, 4
    m_q, lv_q = torch.randn(B, K, d, generator=g), torch.randn(B, K, d, generator=g)
    m_p, lv_p = torch.randn(K, d, generator=g), torch.randn(K, d, generator=g)
    ours = kl_normal_normal(m_q, lv_q, m_p, lv_p)
    assert ours.shape == (B, K)
    q = Normal(m_q, (0.5 * lv_q).exp())
    p = Normal(m_p.expand(B, K, d), (0.5 * lv_p).exp().expand(B, K, d))
    torch.testing.assert_close(ours, kl_divergence(q, p).sum(-1), rtol=1e-5, atol=1e-5)
    # (B, 1, d) against (K, d): one q per cell against every component, as the shared variant.
    ours = kl_normal_normal(m_q[:, :1], lv_q[:, :1], m_p, lv_p)
    assert ours.shape == (B, K)
    torch.testing.assert_close(ours[:, 0], kl_normal_normal(m_q[:, 0], lv_q[:, 0], m_p[0], lv_p[0]))


def _decoder_params(shape, seed=0):
    """Parameters as the decoder emits them, for logits of ``shape`` ((B, G) or (B, K, G))."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    library = torch.rand(shape[0], generator=g, dtype=torch.float64) * 1e4 + 1
    log_p = torch.log_softmax(logits, -1)
    lib = library.view(-1, *([1] * (len(shape) - 1)))
    G = shape[-1]
    return {
        "mu": lib * torch.exp(log_p),
        "theta": torch.rand(G, generator=g, dtype=torch.float64) * 20 + 1e-3,
        "log_p": log_p,
        "library": library,
        "dropout_logits": torch.randn(*shape, generator=g, dtype=torch.float64),
        "mean": logits,
        "log_var": torch.randn(G, generator=g, dtype=torch.float64),
    }


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson", "gaussian"])
@pytest.mark.parametrize("shape", [(6, 30), (6, 4, 30)])
def test_summed_log_likelihood_equals_elementwise_sum(likelihood, shape):
    """The factored sum (cell terms once, component terms per component) changes no value."""
    params = _decoder_params(shape)
    g = torch.Generator().manual_seed(1)
    x = torch.poisson(torch.rand(shape[0], shape[-1], generator=g, dtype=torch.float64) * 30)
    x_b = x.unsqueeze(1) if len(shape) == 3 else x
    elementwise = {
        "nb": lambda: nb_log_prob(x_b, params["mu"], params["theta"]),
        "zinb": lambda: zinb_log_prob(x_b, params["mu"], params["theta"], params["dropout_logits"]),
        "poisson": lambda: poisson_log_prob(x_b, params["mu"]),
        "gaussian": lambda: gaussian_log_prob(x_b, params["mean"], params["log_var"]),
    }[likelihood]().sum(-1)
    summed = summed_log_likelihood(likelihood, x, params)
    assert summed.shape == shape[:-1]
    torch.testing.assert_close(summed, elementwise, rtol=1e-9, atol=1e-6)
