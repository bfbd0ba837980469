"""The default variant: q(y|x) from a classifier head and one Gaussian q(z|x,y) per component.

The ELBO sums over y exactly, evaluating the K components as one (B, K, ...) pass; with
``components_per_cell = k < K`` it decodes k components per cell instead (see
:meth:`ExactModule.evaluated_components`).
"""

from __future__ import annotations

import torch
from torch import nn

from gmmvae.distributions import kl_normal_normal
from gmmvae.module import (
    GMMVAEModule,
    Minibatch,
    ModuleConfig,
    Terms,
    clamp_logvar,
    reparameterise,
)


class ExactModule(GMMVAEModule):
    """One q(z|x,y) per component; the ELBO's sum over y is exact (or truncated per cell)."""

    def __init__(self, config: ModuleConfig) -> None:
        super().__init__(config)
        K, H = config.n_components, config.n_hidden
        self.y_logits = nn.Linear(H, K)
        # q(z|x,y): hidden = relu(A h + E[y]) for all y at once, then the shared heads.
        self.z_hidden = nn.Linear(H, H)
        self.component_embedding = nn.Parameter(0.1 * torch.randn(K, H))

    @property
    def assignment_head(self) -> nn.Linear:
        return self.y_logits

    def inference(self, x: torch.Tensor, condition: torch.Tensor) -> Terms:
        h = self.features(x, condition)  # (B, H)
        u = torch.relu(self.z_hidden(h).unsqueeze(1) + self.component_embedding)  # (B, K, H)
        return {
            "features": h,
            "y_logits": self.y_logits(h),
            "z_mean": self.z_mean(u),  # (B, K, d)
            "z_logvar": clamp_logvar(self.z_logvar(u)),
        }

    def summarise(self, q: Terms) -> Terms:
        probs = torch.softmax(q["y_logits"], -1)
        latent = (probs.unsqueeze(-1) * q["z_mean"]).sum(1)
        latent_var = (probs.unsqueeze(-1) * q["z_logvar"].exp()).sum(1)
        return {"probs": probs, "latent": latent, "latent_var": latent_var}

    def component_posterior(
        self, q: Terms, components: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(len(components), device=components.device)
        return q["z_mean"][rows, components], q["z_logvar"][rows, components]

    # ---------------------------------------------------------------------------------- loss
    def pretrain_terms(self, mb: Minibatch, q: Terms, kl_weight: float):
        zeros = torch.zeros_like(q["z_mean"])
        kl = kl_normal_normal(q["z_mean"], q["z_logvar"], zeros, zeros)  # (B, K)
        uniform = torch.full_like(mb.y_true, 1.0 / self.config.n_components)
        weights = torch.where(mb.labelled.unsqueeze(-1), mb.y_true, uniform)
        rec = self.expected_reconstruction(mb, q, weights)
        kl = (weights * kl).sum(-1)
        elbo = rec - kl_weight * kl
        terms = {"elbo": elbo, "reconstruction": rec, "kl_z": kl, "kl_y": torch.zeros_like(kl)}
        return terms, q["y_logits"]

    def mixture_terms(self, mb: Minibatch, q: Terms, kl_weight: float):
        mean, logvar = self.component_prior()
        kl_z = kl_normal_normal(q["z_mean"], q["z_logvar"], mean, logvar)  # (B, K)
        weights, q_y = self.component_weights(q["y_logits"], mb)
        log_prior = self.log_mixture_weights().expand_as(q_y)
        kl_y = self.categorical_kl(q_y, log_prior, mb)
        rec_w = self.expected_reconstruction(mb, q, weights)
        kl_z_w = (weights * kl_z).sum(-1)
        elbo = rec_w - kl_weight * (kl_z_w + kl_y)
        terms = {"elbo": elbo, "reconstruction": rec_w, "kl_z": kl_z_w, "kl_y": kl_y}
        return terms, q["y_logits"]

    def expected_reconstruction(self, mb: Minibatch, q: Terms, weights: torch.Tensor):
        """E_q(y|x) E_q(z|x,y) log p(x|z); (B,)."""
        index, index_weights = self.evaluated_components(weights)  # (B, k)
        gather = index.unsqueeze(-1).expand(-1, -1, q["z_mean"].shape[-1])
        z = reparameterise(q["z_mean"].gather(1, gather), q["z_logvar"].gather(1, gather))
        rec = self.reconstruction(z, mb)  # (B, k)
        return (index_weights * rec).sum(-1)

    def evaluated_components(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which components to decode per cell, and their weights in the expected likelihood.

        All K by default. With ``components_per_cell = k < K``: the k - 1 heaviest under
        ``weights`` (q(y|x), or the one-hot label) plus one drawn from the rest in proportion
        to its weight, which stands in for the whole rest (a sum-and-sample estimate: its value
        is unbiased, but its gradient with respect to q(y|x) has no score-function term). The
        decoder pass then costs k / K of the full sum.
        """
        K = weights.shape[-1]
        k = self.config.components_per_cell
        if k is None or k >= K:
            index = torch.arange(K, device=weights.device).expand_as(weights)
            return index, weights
        # Tiny noise breaks ties at random (uniform weights in pre-training, one-hot labels).
        scores = weights.detach() + 1e-6 * torch.rand_like(weights)
        top = scores.topk(k - 1, dim=-1).indices  # (B, k-1)
        rest = weights.detach().scatter(-1, top, 0.0) + 1e-12
        drawn = torch.multinomial(rest, 1)  # (B, 1)
        top_weights = weights.gather(-1, top)
        rest_weight = (weights.sum(-1, keepdim=True) - top_weights.sum(-1, keepdim=True)).clamp(
            min=0.0
        )
        return torch.cat([top, drawn], -1), torch.cat([top_weights, rest_weight], -1)
