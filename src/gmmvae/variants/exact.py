"""The default variant: q(y|x) from a classifier head and one Gaussian q(z|x,y) per component.

The ELBO sums over y exactly, evaluating the K components as one (B, K, ...) pass; with
``components_per_cell = k < K`` it decodes k components per cell instead (see
:meth:`ExactModule.evaluated_components`).
"""

from __future__ import annotations

import torch
from torch import nn

from gmmvae.distributions import kl_normal_normal, normal_log_prob
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

    def sample_proposal(self, q: Terms, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws from q(z|x) = sum_y q(y|x) q(z|x,y): y from q(y|x), then z; the density is
        the whole mixture's (B, S)."""
        log_q_y = torch.log_softmax(q["y_logits"], -1)  # (B, K)
        y = torch.multinomial(log_q_y.exp(), n_samples, replacement=True)  # (B, S)
        z = self._draw_z(q, y)  # (B, S, d)
        per_component = normal_log_prob(
            z.unsqueeze(-2), q["z_mean"].unsqueeze(1), q["z_logvar"].unsqueeze(1)
        )  # (B, S, K)
        return z, torch.logsumexp(per_component + log_q_y.unsqueeze(1), -1)

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
        """E_q(y|x) E_q(z|x,y) log p(x|z); (B,). Exact over all K, or estimated from
        ``components_per_cell`` decoded components (:meth:`sampled_reconstruction`)."""
        k = self.config.components_per_cell
        if k is None or k >= weights.shape[-1]:
            return (weights * self.reconstruction(self._draw_z(q), mb)).sum(-1)
        return self.sampled_reconstruction(mb, q, weights, k)

    def sampled_reconstruction(
        self, mb: Minibatch, q: Terms, weights: torch.Tensor, k: int
    ) -> torch.Tensor:
        """The sum over components estimated from k decoded ones per cell; (B,).

        The most likely component under ``weights`` (q(y|x), or the one-hot label) is decoded
        exactly; the rest of the mass, ``w_rest = 1 - w_top``, is represented by ``k - 1``
        components drawn from the rest in proportion to their weight. The value
        ``w_top r_top + w_rest mean_j r_j`` is unbiased. So is its gradient: a
        score-function term ``w_rest (r_j - b_j) grad log q_rest(j)`` (zero in value) tells
        q(y|x) which of the other components fit, with a leave-one-out baseline ``b_j`` (the
        mean of the other draws; ``r_top`` when only one is drawn). Without that term the
        reconstruction could only move mass between the top component and the rest as a
        whole. Decoder cost: k / K of the exact sum.
        """
        rest = weights.detach() + 1e-6 * torch.rand_like(weights)  # ties broken at random
        top = rest.argmax(-1, keepdim=True)  # (B, 1)
        rest = weights.detach().scatter(-1, top, 0.0)
        drawn = torch.multinomial(rest + 1e-12, k - 1, replacement=True)  # (B, k-1)
        rec = self.reconstruction(self._draw_z(q, torch.cat([top, drawn], -1)), mb)  # (B, k)
        r_top, r_drawn = rec[:, :1], rec[:, 1:]
        w_top = weights.gather(-1, top)  # (B, 1), with gradient
        w_rest = (weights.sum(-1, keepdim=True) - w_top).clamp(min=0.0)
        value = w_top * r_top + w_rest * r_drawn.mean(-1, keepdim=True)
        if k > 2:
            baseline = (r_drawn.sum(-1, keepdim=True) - r_drawn) / (k - 2)
        else:
            baseline = r_top
        log_q = torch.log(weights.gather(-1, drawn).clamp(min=1e-12)) - torch.log(
            w_rest.clamp(min=1e-12)
        )  # log q_rest(j), (B, k-1)
        advantage = (r_drawn - baseline).detach()
        score = w_rest.detach() * advantage * (log_q - log_q.detach())  # zero in value
        return (value + score.mean(-1, keepdim=True)).squeeze(-1)

    def _draw_z(self, q: Terms, index: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ q(z|x,y) for every component, or for the components in ``index`` (B, k)."""
        mean, logvar = q["z_mean"], q["z_logvar"]  # (B, K, d)
        if index is not None:
            gather = index.unsqueeze(-1).expand(-1, -1, mean.shape[-1])
            mean, logvar = mean.gather(1, gather), logvar.gather(1, gather)
        return reparameterise(mean, logvar)
