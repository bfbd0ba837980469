"""The torch module's shared parts: tensors in, loss out. No AnnData here.

:class:`GMMVAEModule` holds what every variant shares — the encoder trunk, the decoder and its
likelihoods, the prior p(z|y) and p(y) — and the loss that combines a variant's terms with the
classification term on labelled cells. Each variant (:mod:`gmmvae.variants`) is a subclass with
its own inference heads and ELBO terms; build one with :func:`gmmvae.variants.build_module`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gmmvae.distributions import kl_normal_normal, normal_log_prob, summed_log_likelihood
from gmmvae.nn import CovariateMLP, one_hot_covariates
from gmmvae.options import Likelihood, Variant

LOGVAR_MIN, LOGVAR_MAX = -10.0, 8.0
Terms = dict[str, torch.Tensor]


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
    # gmmvae.variants.exact.ExactModule.evaluated_components.
    components_per_cell: int | None = None


@dataclass
class LossOutput:
    """Loss of one minibatch and its per-cell terms (each of shape (B,))."""

    loss: torch.Tensor
    terms: Terms = field(default_factory=dict)


@dataclass
class Minibatch:
    """One minibatch as the ELBO terms see it: counts, covariates and the label mask."""

    x: torch.Tensor  # (B, G)
    condition: torch.Tensor  # (B,)
    batch: torch.Tensor  # (B,)
    labelled: torch.Tensor  # (B,) bool
    y_true: torch.Tensor  # (B, K) one-hot label (ignored for unlabelled cells)

    @property
    def library(self) -> torch.Tensor:
        return library_size(self.x)


def reparameterise(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def library_size(x: torch.Tensor) -> torch.Tensor:
    """Observed library size, floored at 1 so that empty cells stay finite."""
    return x.sum(-1).clamp(min=1.0)


def clamp_logvar(logvar: torch.Tensor) -> torch.Tensor:
    return logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class GMMVAEModule(nn.Module):
    """Gaussian-mixture VAE over cells: the parts every variant shares.

    Subclasses implement :meth:`inference` (the posterior parameters), :meth:`summarise`
    (probabilities and latent for prediction) and :meth:`mixture_terms` (the ELBO terms);
    those that start as a plain VAE also implement :meth:`pretrain_terms`.
    """

    #: Components are placed on the pre-trained latent (False: the variant places them itself).
    places_mixture = True

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

    # ----------------------------------------------------------------------------- inference
    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """log1p CP10k of counts; log data (Gaussian likelihood) passes through."""
        if self.config.likelihood == "gaussian":
            return x
        return torch.log1p(x / library_size(x).unsqueeze(-1) * 1e4)

    def features(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The encoder trunk's output h (B, H), which every inference head reads."""
        cov = one_hot_covariates([condition], self.encoder_cov_sizes)
        return self.encoder(self.encoder_input(x), cov)

    def inference(self, x: torch.Tensor, condition: torch.Tensor) -> Terms:
        """Parameters of the approximate posterior for a minibatch ``x`` (B, G); always
        ``features`` (B, H), ``z_mean`` and ``z_logvar``."""
        raise NotImplementedError

    def summarise(self, q: Terms) -> Terms:
        """q(y|x) probabilities (B, K), latent mean (B, d) and its variance (B, d)."""
        raise NotImplementedError

    def component_posterior(
        self, q: Terms, components: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (B, d) of q(z | x, y = component) for each cell."""
        return q["z_mean"], q["z_logvar"]

    @torch.no_grad()
    def posterior(self, x: torch.Tensor, condition: torch.Tensor) -> Terms:
        """Deterministic summaries for prediction (see :meth:`summarise`)."""
        return self.summarise(self.inference(x, condition))

    #: What :attr:`assignment_head` reads: an :func:`gmmvae.inference.encode` field.
    assignment_input = "features"

    @property
    def assignment_head(self) -> nn.Module | None:
        """The network giving q(y|x)'s logits from :attr:`assignment_input`, if the variant
        has one (fitted to the placed groups at placement when there are no labels)."""
        return None

    def place_components(self, means: torch.Tensor, logvars: torch.Tensor) -> None:
        """Set p(z|y) to the given means and log-variances (K, d) (at placement)."""
        with torch.no_grad():
            self.prior_mean.copy_(means)
            self.prior_logvar.copy_(logvars)

    # ------------------------------------------------------------------------------- prior
    def log_mixture_weights(self) -> torch.Tensor:
        return torch.log_softmax(self.prior_logits, dim=-1)

    def component_prior(self, w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and log-variances of p(z|y), (K, d)."""
        return self.prior_mean, clamp_logvar(self.prior_logvar)

    def sample_latent(self, components: torch.Tensor) -> torch.Tensor:
        """z ~ p(z|y) for the given component codes (B,)."""
        mean, logvar = self.component_prior()
        return reparameterise(mean[components], logvar[components])

    #: Whether :meth:`log_prior_density` is available (False: p(z) needs latents it lacks).
    has_marginal_likelihood = True

    def log_prior_density(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = log sum_y pi_y N(z; mu_y, sigma_y^2) for z of shape (..., d); (...)."""
        mean, logvar = self.component_prior()
        per_component = normal_log_prob(z.unsqueeze(-2), mean, logvar)  # (..., K)
        return torch.logsumexp(per_component + self.log_mixture_weights(), -1)

    def sample_proposal(self, q: Terms, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_samples`` draws of z per cell from q(z|x) and their log-density; (B, S, d) and
        (B, S). This default is for variants with one Gaussian q(z|x)."""
        mean, logvar = q["z_mean"].unsqueeze(1), q["z_logvar"].unsqueeze(1)  # (B, 1, d)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(
            (mean.shape[0], n_samples, mean.shape[-1]), device=mean.device, dtype=mean.dtype
        )
        return z, normal_log_prob(z, mean, logvar)

    # ---------------------------------------------------------------------------- generative
    def generative(
        self, z: torch.Tensor, library: torch.Tensor, condition: torch.Tensor, batch: torch.Tensor
    ) -> Terms:
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

    def log_likelihood(self, x: torch.Tensor, params: Terms) -> torch.Tensor:
        """log p(x|z) summed over genes for ``x`` (B, G): (B,), or (B, K) for (B, K, d) latents."""
        return summed_log_likelihood(self.config.likelihood, x, params)

    def reconstruction(self, z: torch.Tensor, mb: Minibatch) -> torch.Tensor:
        """log p(x|z) of the minibatch's cells at latent ``z`` (B, d) or (B, k, d)."""
        return self.log_likelihood(mb.x, self.generative(z, mb.library, mb.condition, mb.batch))

    # ---------------------------------------------------------------------------------- loss
    def forward(
        self, batch: dict[str, torch.Tensor], kl_weight: float = 1.0, pretrain: bool = False
    ) -> LossOutput:
        """Negative ELBO (plus classification term on labelled cells), averaged over cells.

        With ``pretrain=True`` the prior is N(0, I) for every component (and the exact variant
        weighs its components uniformly): a plain VAE that shapes the latent before the mixture
        is placed on it (see :class:`gmmvae.initialisation.MixtureInitialisation`). Without it,
        the component first favoured by chance takes every cell and the others never learn.
        """
        labels = batch["label"]
        labelled = labels >= 0
        mb = Minibatch(
            x=batch["x"],
            condition=batch["condition"],
            batch=batch["batch"],
            labelled=labelled,
            y_true=F.one_hot(labels.clamp(min=0), self.config.n_components).float(),
        )
        q = self.inference(mb.x, mb.condition)
        if pretrain and self.places_mixture:
            terms, y_logits = self.pretrain_terms(mb, q, kl_weight)
        else:
            terms, y_logits = self.mixture_terms(mb, q, kl_weight)
        ce = F.cross_entropy(y_logits, labels.clamp(min=0), reduction="none") * labelled
        terms["classification"] = ce
        n_labelled = labelled.sum().clamp(min=1)
        # Per-cell weights (the sampler's correction for oversampled labelled cells) keep the
        # minibatch mean an unbiased estimate of the mean ELBO over all cells.
        elbo = terms["elbo"] * batch["weight"] if "weight" in batch else terms["elbo"]
        loss = -elbo.mean() + self.config.classification_weight * ce.sum() / n_labelled
        return LossOutput(loss=loss, terms=terms)

    def pretrain_terms(
        self, mb: Minibatch, q: Terms, kl_weight: float
    ) -> tuple[Terms, torch.Tensor]:
        """ELBO terms of the plain-VAE phase (N(0, I) prior) and the q(y|x) logits.

        This default is for variants with one q(z|x); they give the logits with
        :meth:`pretrain_logits`.
        """
        z = reparameterise(q["z_mean"], q["z_logvar"])  # (B, d)
        rec = self.reconstruction(z, mb)
        zeros = torch.zeros_like(q["z_mean"])
        kl = kl_normal_normal(q["z_mean"], q["z_logvar"], zeros, zeros)
        elbo = rec - kl_weight * kl
        terms = {"elbo": elbo, "reconstruction": rec, "kl_z": kl, "kl_y": torch.zeros_like(kl)}
        return terms, self.pretrain_logits(q, z)

    def pretrain_logits(self, q: Terms, z: torch.Tensor) -> torch.Tensor:
        """q(y|x)'s logits during pre-training (for the classification term on labels)."""
        raise NotImplementedError

    def mixture_terms(
        self, mb: Minibatch, q: Terms, kl_weight: float
    ) -> tuple[Terms, torch.Tensor]:
        """ELBO terms under the mixture prior and the q(y|x) logits for the classification term."""
        raise NotImplementedError

    # ------------------------------------------------------------------------ shared pieces
    @staticmethod
    def component_weights(y_logits: torch.Tensor, mb: Minibatch) -> tuple[torch.Tensor, ...]:
        """q(y|x) for unlabelled cells, the one-hot label for labelled ones; (B, K) each."""
        q_y = torch.softmax(y_logits, -1)
        return torch.where(mb.labelled.unsqueeze(-1), mb.y_true, q_y), q_y

    @staticmethod
    def categorical_kl(q_y: torch.Tensor, log_prior: torch.Tensor, mb: Minibatch) -> torch.Tensor:
        """KL(q(y|x) || p(y)) for unlabelled cells, -log p(y*) for labelled; (B,)."""
        kl = (q_y * (torch.log(q_y.clamp(min=1e-12)) - log_prior)).sum(-1)
        return torch.where(mb.labelled, -(mb.y_true * log_prior).sum(-1), kl)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(math.prod(p.shape) for p in module.parameters() if p.requires_grad)
