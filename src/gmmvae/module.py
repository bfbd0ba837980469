"""The GMMVAE torch module: tensors in, loss out. No AnnData here.

Three variants share the encoder trunk, the decoder and the likelihoods:

``"exact"``
    q(y|x) from a classifier head, one Gaussian q(z|x,y) per component; the ELBO sums exactly
    over y, evaluating all K components in one (B, K, ...) pass.
``"shared"``
    VaDE-style: one q(z|x) for all components, one decoder pass; q(y|x) is the posterior
    responsibility ``softmax(log pi_y - KL(q(z|x) || p(z|y)))``, which is the q(y|x) that
    maximises the ELBO for a shared q(z|x).
``"dirichlet"``
    The seed's model (Kolb & Vingron 2022): Dirichlet prior on the mixture weights, a w-latent
    whose network emits all component means and variances, q(y|z) and q(d|z) networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Dirichlet, kl_divergence

from gmmvae.distributions import kl_normal_normal, summed_log_likelihood
from gmmvae.nn import CovariateMLP, one_hot_covariates

Likelihood = Literal["nb", "zinb", "poisson", "gaussian"]
Variant = Literal["exact", "shared", "dirichlet"]
LIKELIHOODS: tuple[str, ...] = ("nb", "zinb", "poisson", "gaussian")
VARIANTS: tuple[str, ...] = ("exact", "shared", "dirichlet")
_LOGVAR_MIN, _LOGVAR_MAX = -10.0, 8.0


@dataclass
class ModuleConfig:
    """Hyperparameters of :class:`GMMVAEModule`; saved as JSON next to the weights."""

    n_genes: int
    n_components: int
    n_labels: int = 0
    n_latent: int = 16
    n_hidden: int = 128
    n_layers: int = 1
    likelihood: Likelihood = "nb"
    variant: Variant = "exact"
    n_conditions: int = 1
    n_batches: int = 1
    dropout_rate: float = 0.1
    classification_weight: float = 50.0
    learn_mixture_weights: bool = False
    dirichlet_alpha: float = 1.0
    n_w: int = 8
    # Exact variant: decode only this many components per cell (None: all K); see
    # GMMVAEModule._evaluated_components.
    components_per_cell: int | None = None


@dataclass
class LossOutput:
    """Loss of one minibatch and its per-cell terms (each of shape (B,))."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def _reparameterise(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def library_size(x: torch.Tensor) -> torch.Tensor:
    """Observed library size, floored at 1 so that empty cells stay finite."""
    return x.sum(-1).clamp(min=1.0)


class GMMVAEModule(nn.Module):
    """Gaussian-mixture VAE over cells; see the module docstring for the variants."""

    def __init__(self, config: ModuleConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder_cov_sizes = [c.n_conditions]
        self.decoder_cov_sizes = [c.n_conditions, c.n_batches]
        n_enc_cov = sum(n for n in self.encoder_cov_sizes if n > 1)
        n_dec_cov = sum(n for n in self.decoder_cov_sizes if n > 1)
        K, d, H = c.n_components, c.n_latent, c.n_hidden

        self.encoder = CovariateMLP(c.n_genes, H, c.n_layers, n_enc_cov, c.dropout_rate)
        self.decoder = CovariateMLP(d, H, c.n_layers, n_dec_cov, c.dropout_rate)
        self.decoder_out = nn.Linear(H, c.n_genes)
        if c.likelihood == "zinb":
            self.dropout_out = nn.Linear(H, c.n_genes)
        if c.likelihood == "gaussian":
            self.log_var_gene = nn.Parameter(torch.zeros(c.n_genes))
        else:
            self.log_theta = nn.Parameter(torch.zeros(c.n_genes))

        # Spread initial component means so that components start distinguishable.
        self.prior_mean = nn.Parameter(torch.randn(K, d))
        self.prior_logvar = nn.Parameter(torch.zeros(K, d))
        self.prior_logits = nn.Parameter(torch.zeros(K), requires_grad=c.learn_mixture_weights)

        self.z_mean = nn.Linear(H, d)
        self.z_logvar = nn.Linear(H, d)
        if c.variant == "exact":
            self.y_logits = nn.Linear(H, K)
            # q(z|x,y): hidden = relu(A h + E[y]) for all y at once, then the shared heads.
            self.z_hidden = nn.Linear(H, H)
            self.component_embedding = nn.Parameter(0.1 * torch.randn(K, H))
        elif c.variant == "dirichlet":
            self.w_mean = nn.Linear(H, c.n_w)
            self.w_logvar = nn.Linear(H, c.n_w)
            self.component_net = nn.Sequential(
                nn.Linear(c.n_w, H), nn.ReLU(), nn.Linear(H, 2 * K * d)
            )
            self.y_from_z = nn.Sequential(nn.Linear(d, H), nn.ReLU(), nn.Linear(H, K))
            self.d_from_z = nn.Sequential(nn.Linear(d, H), nn.ReLU(), nn.Linear(H, K))
        elif c.variant != "shared":
            raise ValueError(f"variant {c.variant!r} is not one of {VARIANTS}")

    # ----------------------------------------------------------------------------- inference
    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """log1p CP10k of counts; log data (Gaussian likelihood) passes through."""
        if self.config.likelihood == "gaussian":
            return x
        return torch.log1p(x / library_size(x).unsqueeze(-1) * 1e4)

    def inference(self, x: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters of the approximate posterior for a minibatch ``x`` (B, G)."""
        cov = one_hot_covariates([condition], self.encoder_cov_sizes)
        h = self.encoder(self.encoder_input(x), cov)  # (B, H)
        variant = self.config.variant
        if variant == "exact":
            u = torch.relu(self.z_hidden(h).unsqueeze(1) + self.component_embedding)  # (B, K, H)
            return {
                "y_logits": self.y_logits(h),
                "z_mean": self.z_mean(u),  # (B, K, d)
                "z_logvar": self.z_logvar(u).clamp(_LOGVAR_MIN, _LOGVAR_MAX),
            }
        out = {
            "z_mean": self.z_mean(h),  # (B, d)
            "z_logvar": self.z_logvar(h).clamp(_LOGVAR_MIN, _LOGVAR_MAX),
        }
        if variant == "dirichlet":
            out["w_mean"] = self.w_mean(h)
            out["w_logvar"] = self.w_logvar(h).clamp(_LOGVAR_MIN, _LOGVAR_MAX)
        return out

    def log_mixture_weights(self) -> torch.Tensor:
        return torch.log_softmax(self.prior_logits, dim=-1)

    def component_prior(self, w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and log-variances of p(z|y): (K, d), or (B, K, d) for the Dirichlet variant."""
        if self.config.variant != "dirichlet":
            return self.prior_mean, self.prior_logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX)
        if w is None:
            w = torch.zeros(1, self.config.n_w, device=self.prior_mean.device)
        K, d = self.config.n_components, self.config.n_latent
        params = self.component_net(w).view(*w.shape[:-1], K, d, 2)
        return params[..., 0], params[..., 1].clamp(_LOGVAR_MIN, _LOGVAR_MAX)

    def sample_latent(self, components: torch.Tensor) -> torch.Tensor:
        """z ~ p(z|y) for the given component codes (B,); the Dirichlet variant draws w first."""
        if self.config.variant == "dirichlet":
            w = torch.randn(len(components), self.config.n_w, device=components.device)
            mean, logvar = self.component_prior(w)  # (B, K, d)
            rows = torch.arange(len(components), device=components.device)
            mean, logvar = mean[rows, components], logvar[rows, components]
        else:
            mean, logvar = self.component_prior()
            mean, logvar = mean[components], logvar[components]
        return _reparameterise(mean, logvar)

    @torch.no_grad()
    def posterior(self, x: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """Deterministic summaries for prediction: q(y|x) probabilities (B, K), latent (B, d) and
        its posterior variance (B, d; averaged over components for the exact variant)."""
        q = self.inference(x, condition)
        variant = self.config.variant
        if variant == "exact":
            probs = torch.softmax(q["y_logits"], -1)
            latent = (probs.unsqueeze(-1) * q["z_mean"]).sum(1)
            latent_var = (probs.unsqueeze(-1) * q["z_logvar"].exp()).sum(1)
            return {"probs": probs, "latent": latent, "latent_var": latent_var}
        if variant == "shared":
            probs = torch.softmax(self._shared_y_logits(q), -1)
        else:
            probs = torch.softmax(self.y_from_z(q["z_mean"]), -1)
        return {"probs": probs, "latent": q["z_mean"], "latent_var": q["z_logvar"].exp()}

    def _shared_y_logits(self, q: dict[str, torch.Tensor]) -> torch.Tensor:
        mean, logvar = self.component_prior()
        kl_z = kl_normal_normal(q["z_mean"].unsqueeze(1), q["z_logvar"].unsqueeze(1), mean, logvar)
        return self.log_mixture_weights() - kl_z

    # ---------------------------------------------------------------------------- generative
    def generative(
        self, z: torch.Tensor, library: torch.Tensor, condition: torch.Tensor, batch: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters for latent ``z`` of shape (B, d) or (B, K, d)."""
        cov = one_hot_covariates([condition, batch], self.decoder_cov_sizes)
        if cov is not None and z.dim() == 3:
            cov = cov.unsqueeze(1)  # (B, 1, C) broadcasts over components
        h = self.decoder(z, cov)
        out = self.decoder_out(h)
        if self.config.likelihood == "gaussian":
            return {"mean": out, "log_var": self.log_var_gene.clamp(-8.0, 8.0)}
        lib = library.view(-1, *([1] * (out.dim() - 1)))
        log_p = torch.log_softmax(out, -1)
        params = {
            "mu": lib * torch.exp(log_p),
            "theta": torch.exp(self.log_theta),
            "log_p": log_p,
            "library": library,
        }
        if self.config.likelihood == "zinb":
            params["dropout_logits"] = self.dropout_out(h)
        return params

    def log_likelihood(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(x|z) summed over genes for ``x`` (B, G): (B,), or (B, K) for (B, K, d) latents."""
        return summed_log_likelihood(self.config.likelihood, x, params)

    # ---------------------------------------------------------------------------------- loss
    def forward(
        self, batch: dict[str, torch.Tensor], kl_weight: float = 1.0, pretrain: bool = False
    ) -> LossOutput:
        """Negative ELBO (plus classification term on labelled cells), averaged over cells.

        With ``pretrain=True`` the prior is N(0, I) for every component and the exact variant
        weighs its components uniformly: a plain VAE that shapes the latent before the mixture
        is initialised on it (see :class:`gmmvae.training.MixtureInitialisation`). Without it,
        the component first favoured by chance takes every cell and the others never learn.
        """
        x, labels = batch["x"], batch["label"]
        q = self.inference(x, batch["condition"])
        labelled = labels >= 0
        y_true = F.one_hot(labels.clamp(min=0), self.config.n_components).float()
        if pretrain and self.config.variant != "dirichlet":
            terms, y_logits = self._pretrain_terms(x, batch, q, labelled, y_true, kl_weight)
        else:
            step = {"exact": self._exact_terms, "shared": self._shared_terms}
            step = step.get(self.config.variant, self._dirichlet_terms)
            terms, y_logits = step(x, batch, q, labelled, y_true, kl_weight)

        ce = F.cross_entropy(y_logits, labels.clamp(min=0), reduction="none") * labelled
        terms["classification"] = ce
        n_labelled = labelled.sum().clamp(min=1)
        loss = -terms["elbo"].mean() + self.config.classification_weight * ce.sum() / n_labelled
        return LossOutput(loss=loss, terms=terms)

    def _component_weights(self, y_logits, labelled, y_true):
        """q(y|x) for unlabelled cells, the one-hot label for labelled ones; (B, K)."""
        q_y = torch.softmax(y_logits, -1)
        return torch.where(labelled.unsqueeze(-1), y_true, q_y), q_y

    def _categorical_kl(self, q_y, log_prior, labelled, y_true):
        """KL(q(y|x) || p(y)) for unlabelled cells, -log p(y*) for labelled; (B,)."""
        kl = (q_y * (torch.log(q_y.clamp(min=1e-12)) - log_prior)).sum(-1)
        return torch.where(labelled, -(y_true * log_prior).sum(-1), kl)

    def _pretrain_terms(self, x, batch, q, labelled, y_true, kl_weight):
        zeros = torch.zeros_like(q["z_mean"])
        if self.config.variant == "exact":
            kl = kl_normal_normal(q["z_mean"], q["z_logvar"], zeros, zeros)
            uniform = torch.full_like(y_true, 1.0 / self.config.n_components)
            weights = torch.where(labelled.unsqueeze(-1), y_true, uniform)
            rec = self._expected_reconstruction(x, batch, q, weights)
            kl = (weights * kl).sum(-1)
            y_logits = q["y_logits"]
        else:
            z = _reparameterise(q["z_mean"], q["z_logvar"])  # (B, d)
            params = self.generative(z, library_size(x), batch["condition"], batch["batch"])
            rec = self.log_likelihood(x, params)
            kl = kl_normal_normal(q["z_mean"], q["z_logvar"], zeros, zeros)
            y_logits = self._shared_y_logits(q)
        elbo = rec - kl_weight * kl
        terms = {"elbo": elbo, "reconstruction": rec, "kl_z": kl, "kl_y": torch.zeros_like(kl)}
        return terms, y_logits

    def _evaluated_components(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which components to decode per cell, and their weights in the expected likelihood.

        All K by default. With ``components_per_cell = k < K``: the k - 1 heaviest under
        ``weights`` (q(y|x), or the one-hot label) plus one drawn from the rest in proportion
        to its weight, which stands in for the whole rest (a sum-and-sample estimate, exact in
        expectation). The decoder pass then costs k / K of the full sum; once q(y|x) is
        confident the rest carries almost no weight and the estimate is nearly exact.
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

    def _expected_reconstruction(self, x, batch, q, weights):
        """E_q(y|x) E_q(z|x,y) log p(x|z) for the exact variant; (B,)."""
        index, index_weights = self._evaluated_components(weights)  # (B, k)
        gather = index.unsqueeze(-1).expand(-1, -1, q["z_mean"].shape[-1])
        z = _reparameterise(q["z_mean"].gather(1, gather), q["z_logvar"].gather(1, gather))
        params = self.generative(z, library_size(x), batch["condition"], batch["batch"])
        rec = self.log_likelihood(x, params)  # (B, k)
        return (index_weights * rec).sum(-1)

    def _exact_terms(self, x, batch, q, labelled, y_true, kl_weight):
        mean, logvar = self.component_prior()
        kl_z = kl_normal_normal(q["z_mean"], q["z_logvar"], mean, logvar)  # (B, K)
        weights, q_y = self._component_weights(q["y_logits"], labelled, y_true)
        log_prior = self.log_mixture_weights().expand_as(q_y)
        kl_y = self._categorical_kl(q_y, log_prior, labelled, y_true)
        rec_w = self._expected_reconstruction(x, batch, q, weights)
        kl_z_w = (weights * kl_z).sum(-1)
        elbo = rec_w - kl_weight * (kl_z_w + kl_y)
        terms = {"elbo": elbo, "reconstruction": rec_w, "kl_z": kl_z_w, "kl_y": kl_y}
        return terms, q["y_logits"]

    def _shared_terms(self, x, batch, q, labelled, y_true, kl_weight):
        z = _reparameterise(q["z_mean"], q["z_logvar"])  # (B, d)
        params = self.generative(z, library_size(x), batch["condition"], batch["batch"])
        rec = self.log_likelihood(x, params)  # (B,)
        mean, logvar = self.component_prior()
        kl_z = kl_normal_normal(q["z_mean"].unsqueeze(1), q["z_logvar"].unsqueeze(1), mean, logvar)
        log_prior = self.log_mixture_weights().expand_as(kl_z)
        y_logits = log_prior - kl_z
        weights, q_y = self._component_weights(y_logits, labelled, y_true)
        kl_y = self._categorical_kl(q_y, log_prior, labelled, y_true)
        kl_z_w = (weights * kl_z).sum(-1)
        elbo = rec - kl_weight * (kl_z_w + kl_y)
        terms = {"elbo": elbo, "reconstruction": rec, "kl_z": kl_z_w, "kl_y": kl_y}
        return terms, y_logits

    def _dirichlet_terms(self, x, batch, q, labelled, y_true, kl_weight):
        z = _reparameterise(q["z_mean"], q["z_logvar"])  # (B, d)
        w = _reparameterise(q["w_mean"], q["w_logvar"])  # (B, n_w)
        params = self.generative(z, library_size(x), batch["condition"], batch["batch"])
        rec = self.log_likelihood(x, params)
        mean, logvar = self.component_prior(w)  # (B, K, d)
        kl_z = kl_normal_normal(q["z_mean"].unsqueeze(1), q["z_logvar"].unsqueeze(1), mean, logvar)
        kl_w = kl_normal_normal(
            q["w_mean"], q["w_logvar"], torch.zeros_like(w), torch.zeros_like(w)
        )
        concentration = F.softplus(self.d_from_z(z)) + 1e-3  # (B, K)
        q_d = Dirichlet(concentration)
        prior_d = Dirichlet(torch.full_like(concentration, self.config.dirichlet_alpha))
        kl_d = kl_divergence(q_d, prior_d)
        log_p_y = torch.log(q_d.rsample().clamp(min=1e-8))  # sampled mixture weights
        y_logits = self.y_from_z(z)
        weights, q_y = self._component_weights(y_logits, labelled, y_true)
        kl_y = self._categorical_kl(q_y, log_p_y, labelled, y_true)
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


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(math.prod(p.shape) for p in module.parameters() if p.requires_grad)
