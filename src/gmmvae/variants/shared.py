"""VaDE-style variant: one q(z|x) for all components and one decoder pass per cell.

q(y|x) is the posterior responsibility ``softmax(log pi_y - KL(q(z|x) || p(z|y)))``, which is
the q(y|x) that maximises the ELBO for a shared q(z|x).
"""

from __future__ import annotations

import torch

from gmmvae.distributions import kl_normal_normal
from gmmvae.module import GMMVAEModule, Minibatch, Terms, clamp_logvar, reparameterise


class SharedModule(GMMVAEModule):
    """Shared q(z|x); responsibilities as q(y|x)."""

    def inference(self, x: torch.Tensor, condition: torch.Tensor) -> Terms:
        h = self.features(x, condition)
        return {
            "features": h,
            "z_mean": self.z_mean(h),  # (B, d)
            "z_logvar": clamp_logvar(self.z_logvar(h)),
        }

    def summarise(self, q: Terms) -> Terms:
        probs = torch.softmax(self.responsibility_logits(q), -1)
        return {"probs": probs, "latent": q["z_mean"], "latent_var": q["z_logvar"].exp()}

    def responsibility_logits(self, q: Terms) -> torch.Tensor:
        """log pi_y - KL(q(z|x) || p(z|y)); (B, K)."""
        mean, logvar = self.component_prior()
        kl_z = kl_normal_normal(q["z_mean"].unsqueeze(1), q["z_logvar"].unsqueeze(1), mean, logvar)
        return self.log_mixture_weights() - kl_z

    def pretrain_logits(self, q: Terms, z: torch.Tensor) -> torch.Tensor:
        return self.responsibility_logits(q)

    def mixture_terms(self, mb: Minibatch, q: Terms, kl_weight: float):
        z = reparameterise(q["z_mean"], q["z_logvar"])  # (B, d)
        rec = self.reconstruction(z, mb)  # (B,)
        mean, logvar = self.component_prior()
        kl_z = kl_normal_normal(q["z_mean"].unsqueeze(1), q["z_logvar"].unsqueeze(1), mean, logvar)
        log_prior = self.log_mixture_weights().expand_as(kl_z)
        y_logits = log_prior - kl_z
        weights, q_y = self.component_weights(y_logits, mb)
        kl_y = self.categorical_kl(q_y, log_prior, mb)
        kl_z_w = (weights * kl_z).sum(-1)
        elbo = rec - kl_weight * (kl_z_w + kl_y)
        terms = {"elbo": elbo, "reconstruction": rec, "kl_z": kl_z_w, "kl_y": kl_y}
        return terms, y_logits
