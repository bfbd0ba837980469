"""The seed's variant (Kolb & Vingron 2022): a Dirichlet prior on the mixture weights.

Generative: d ~ Dir(alpha), y | d ~ Cat(d), w ~ N(0, I), z | w, y ~ N(mu_y(w), sigma_y(w)^2)
with one network of w emitting all K means and variances. Inference: q(z|x) and q(w|x) from
the encoder, q(y|z) and q(d|z) networks on z. One decoder pass per cell. Like the other variants it
starts as a plain VAE; at placement the w-network's output at w = 0 is set to the placed
components and q(y|z) is fitted to the placed groups (without that, one component took every
cell of a 10x PBMC run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Dirichlet, kl_divergence

from gmmvae.distributions import kl_normal_normal
from gmmvae.module import (
    GMMVAEModule,
    Minibatch,
    ModuleConfig,
    Terms,
    clamp_logvar,
    reparameterise,
)


class DirichletModule(GMMVAEModule):
    """Dirichlet-prior GMM-VAE with a w-latent emitting the component parameters."""

    assignment_input = "latent"
    # p(z) integrates over w and d, which the importance sampler does not propose.
    has_marginal_likelihood = False

    def __init__(self, config: ModuleConfig) -> None:
        super().__init__(config)
        K, d, H = config.n_components, config.n_latent, config.n_hidden
        self.w_mean = nn.Linear(H, config.n_w)
        self.w_logvar = nn.Linear(H, config.n_w)
        self.component_net = nn.Sequential(
            nn.Linear(config.n_w, H), nn.ReLU(), nn.Linear(H, 2 * K * d)
        )
        self.y_from_z = nn.Sequential(nn.Linear(d, H), nn.ReLU(), nn.Linear(H, K))
        self.d_from_z = nn.Sequential(nn.Linear(d, H), nn.ReLU(), nn.Linear(H, K))

    @property
    def assignment_head(self) -> nn.Module:
        return self.y_from_z

    def place_components(self, means: torch.Tensor, logvars: torch.Tensor) -> None:
        """The w-network emits ``means``/``logvars`` at w = 0, and little else elsewhere: its
        last layer shrinks tenfold and its bias takes up the difference."""
        last = self.component_net[-1]
        K, d = self.config.n_components, self.config.n_latent
        target = torch.stack([means, logvars], -1).reshape(K * d * 2)
        with torch.no_grad():
            last.weight.mul_(0.1)
            hidden = self.component_net[:-1](torch.zeros(1, self.config.n_w, device=means.device))
            last.bias.copy_(target - (hidden @ last.weight.T).squeeze(0))
        super().place_components(means, logvars)

    def pretrain_logits(self, q: Terms, z: torch.Tensor) -> torch.Tensor:
        return self.y_from_z(z)

    def pretrain_terms(self, mb: Minibatch, q: Terms, kl_weight: float):
        terms, logits = super().pretrain_terms(mb, q, kl_weight)
        zeros = torch.zeros_like(terms["kl_z"])
        return {**terms, "kl_w": zeros, "kl_d": zeros}, logits

    def inference(self, x: torch.Tensor, condition: torch.Tensor) -> Terms:
        h = self.features(x, condition)
        return {
            "features": h,
            "z_mean": self.z_mean(h),  # (B, d)
            "z_logvar": clamp_logvar(self.z_logvar(h)),
            "w_mean": self.w_mean(h),  # (B, n_w)
            "w_logvar": clamp_logvar(self.w_logvar(h)),
        }

    def summarise(self, q: Terms) -> Terms:
        probs = torch.softmax(self.y_from_z(q["z_mean"]), -1)
        return {"probs": probs, "latent": q["z_mean"], "latent_var": q["z_logvar"].exp()}

    def component_prior(self, w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and log-variances of p(z|w,y): (B, K, d) for w (B, n_w); at w = 0 without it."""
        if w is None:
            w = torch.zeros(1, self.config.n_w, device=self.prior_mean.device)
        K, d = self.config.n_components, self.config.n_latent
        params = self.component_net(w).view(*w.shape[:-1], K, d, 2)
        return params[..., 0], clamp_logvar(params[..., 1])

    def sample_latent(self, components: torch.Tensor) -> torch.Tensor:
        """z ~ p(z|w,y) with w ~ N(0, I) drawn per cell."""
        w = torch.randn(len(components), self.config.n_w, device=components.device)
        mean, logvar = self.component_prior(w)  # (B, K, d)
        rows = torch.arange(len(components), device=components.device)
        return reparameterise(mean[rows, components], logvar[rows, components])

    def mixture_terms(self, mb: Minibatch, q: Terms, kl_weight: float):
        z = reparameterise(q["z_mean"], q["z_logvar"])  # (B, d)
        w = reparameterise(q["w_mean"], q["w_logvar"])  # (B, n_w)
        rec = self.reconstruction(z, mb)
        mean, logvar = self.component_prior(w)  # (B, K, d)
        kl_z = kl_normal_normal(q["z_mean"].unsqueeze(1), q["z_logvar"].unsqueeze(1), mean, logvar)
        zeros = torch.zeros_like(w)
        kl_w = kl_normal_normal(q["w_mean"], q["w_logvar"], zeros, zeros)
        concentration = F.softplus(self.d_from_z(z)) + 1e-3  # (B, K)
        q_d = Dirichlet(concentration)
        prior_d = Dirichlet(torch.full_like(concentration, self.config.dirichlet_alpha))
        kl_d = kl_divergence(q_d, prior_d)
        log_p_y = torch.log(q_d.rsample().clamp(min=1e-8))  # sampled mixture weights
        y_logits = self.y_from_z(z)
        weights, q_y = self.component_weights(y_logits, mb)
        kl_y = self.categorical_kl(q_y, log_p_y, mb)
        kl_z_w = (weights * kl_z).sum(-1)
        elbo = rec - kl_weight * (kl_z_w + kl_w + kl_y + kl_d)
        terms = {
            "elbo": elbo,
            "reconstruction": rec,
            "kl_z": kl_z_w,
            "kl_y": kl_y,
            "kl_w": kl_w,
            "kl_d": kl_d,
        }
        return terms, y_logits
