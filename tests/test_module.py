"""The torch module on plain tensors: shapes, finiteness, labels, and what a step changes."""

from __future__ import annotations

import math

import pytest
import torch

from gmmvae.module import (
    GMMVAEModule,
    LossOutput,
    Minibatch,
    ModuleConfig,
    count_parameters,
    library_size,
)
from gmmvae.options import LIKELIHOODS, VARIANTS
from gmmvae.variants import build_module

B, G, K, D = 12, 20, 3, 4


def make_module(variant="exact", likelihood="nb", *, seed=0, **kwargs) -> GMMVAEModule:
    torch.manual_seed(seed)
    config = ModuleConfig(
        n_genes=G,
        n_components=K,
        n_latent=D,
        n_hidden=16,
        likelihood=likelihood,
        variant=variant,
        **kwargs,
    )
    return build_module(config)


def make_batch(likelihood="nb", *, labels=None, n_conditions=1, n_batches=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    if likelihood == "gaussian":
        x = torch.log1p(torch.rand(B, G, generator=g) * 5)
    else:
        x = torch.poisson(torch.rand(B, G, generator=g) * 4, generator=g)
    return {
        "x": x,
        "label": torch.full((B,), -1) if labels is None else torch.as_tensor(labels),
        "condition": torch.randint(0, n_conditions, (B,), generator=g),
        "batch": torch.randint(0, n_batches, (B,), generator=g),
    }


def as_minibatch(batch: dict[str, torch.Tensor]) -> Minibatch:
    labels = batch["label"]
    return Minibatch(
        x=batch["x"],
        condition=batch["condition"],
        batch=batch["batch"],
        labelled=labels >= 0,
        y_true=torch.nn.functional.one_hot(labels.clamp(min=0), K).float(),
    )


def check_output(out: LossOutput, variant: str) -> None:
    assert isinstance(out, LossOutput)
    assert out.loss.dim() == 0
    assert torch.isfinite(out.loss)
    expected = {"elbo", "reconstruction", "kl_z", "kl_y", "classification"}
    if variant == "dirichlet":
        expected |= {"kl_w", "kl_d"}
    assert set(out.terms) == expected
    for name, term in out.terms.items():
        assert term.shape == (B,), name
        assert torch.isfinite(term).all(), name


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_and_posterior_shapes(variant, likelihood):
    module = make_module(variant, likelihood)
    batch = make_batch(likelihood)
    out = module(batch)
    check_output(out, variant)
    # The loss is the mean negative ELBO when no cell is labelled.
    torch.testing.assert_close(out.loss, -out.terms["elbo"].mean())
    assert (out.terms["classification"] == 0).all()
    post = module.posterior(batch["x"], batch["condition"])
    assert post["probs"].shape == (B, K)
    assert post["latent"].shape == (B, D)
    torch.testing.assert_close(post["probs"].sum(-1), torch.ones(B))
    assert (post["probs"] >= 0).all()
    assert not post["latent"].requires_grad  # posterior runs under no_grad


@pytest.mark.parametrize("variant", VARIANTS)
def test_conditions_and_batches(variant):
    module = make_module(variant, n_conditions=2, n_batches=3)
    batch = make_batch(n_conditions=2, n_batches=3, labels=[0, 1, 2] + [-1] * (B - 3))
    check_output(module(batch), variant)
    module.eval()
    post = module.posterior(batch["x"], batch["condition"])
    assert post["probs"].shape == (B, K)
    assert post["latent"].shape == (B, D)
    # The decoder sees the condition and the batch: changing either changes the mean.
    z, lib = torch.randn(B, D), library_size(batch["x"])
    zeros, ones = torch.zeros(B, dtype=torch.long), torch.ones(B, dtype=torch.long)
    base = module.generative(z, lib, zeros, zeros)["mu"]
    assert not torch.allclose(base, module.generative(z, lib, ones, zeros)["mu"])
    assert not torch.allclose(base, module.generative(z, lib, zeros, 2 * ones)["mu"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_pretrain_path(variant):
    module = make_module(variant)
    batch = make_batch()
    torch.manual_seed(1)
    out = module(batch, kl_weight=0.5, pretrain=True)
    check_output(out, variant)
    assert (out.terms["kl_y"] == 0).all()

    def move_components():
        means, logvars = module.component_prior()
        module.place_components(means.detach().reshape(K, D) + 3.0, logvars.detach().reshape(K, D))

    # Pre-training uses N(0, I) for every component: moving the mixture changes nothing...
    move_components()
    torch.manual_seed(1)
    torch.testing.assert_close(module(batch, kl_weight=0.5, pretrain=True).loss, out.loss)
    # ...whereas the full loss depends on where the components are.
    torch.manual_seed(1)
    before = module(batch, kl_weight=0.5).loss
    move_components()
    torch.manual_seed(1)
    assert not torch.allclose(module(batch, kl_weight=0.5).loss, before)


@pytest.mark.parametrize("variant", VARIANTS)
def test_classification_term_only_on_labelled_cells(variant):
    module = make_module(variant)
    labels = torch.tensor([0, 2, 1] + [-1] * (B - 3))
    out = module(make_batch(labels=labels))
    ce = out.terms["classification"]
    assert (ce[:3] > 0).all()
    assert (ce[3:] == 0).all()
    # The loss adds the weighted mean cross-entropy over labelled cells.
    expected = -out.terms["elbo"].mean() + module.config.classification_weight * ce[:3].mean()
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("variant", ["exact", "shared"])
def test_labelled_cells_pay_log_prior_not_categorical_kl(variant):
    module = make_module(variant)
    out = module(make_batch(labels=[1] * B))
    # With uniform mixture weights, -log p(y*) = log K for every labelled cell.
    torch.testing.assert_close(out.terms["kl_y"], torch.full((B,), math.log(K)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_kl_weight_scales_only_the_kl_terms(variant):
    module = make_module(variant).eval()  # no dropout: same sample, same terms
    batch = make_batch()
    torch.manual_seed(3)
    full = module(batch, kl_weight=1.0).terms
    torch.manual_seed(3)
    none = module(batch, kl_weight=0.0).terms
    torch.testing.assert_close(none["elbo"], none["reconstruction"])
    torch.testing.assert_close(full["reconstruction"], none["reconstruction"])
    assert (full["elbo"] < none["elbo"]).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_step_changes_weights_eval_does_not(variant):
    module = make_module(variant)
    batch = make_batch(labels=[0, 1] + [-1] * (B - 2))
    before = {k: v.clone() for k, v in module.state_dict().items()}

    module.eval()
    with torch.no_grad():
        module(batch)
        module.posterior(batch["x"], batch["condition"])
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)

    module.train()
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    opt.zero_grad()
    module(batch).loss.backward()
    opt.step()
    after = module.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    for name in ("encoder.layers.0.linear.weight", "decoder_out.weight", "z_mean.weight"):
        assert name in changed
    # Fixed mixture weights are not trained (requires_grad=False).
    assert "prior_logits" not in changed


def test_learned_mixture_weights_are_trained():
    module = make_module("exact", learn_mixture_weights=True)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    before = module.prior_logits.detach().clone()
    module(make_batch()).loss.backward()
    opt.step()
    assert not torch.equal(module.prior_logits.detach(), before)


def test_generative_mean_sums_to_library_size():
    module = make_module("exact").eval()
    x = make_batch()["x"]
    lib = library_size(x)
    zeros = torch.zeros(B, dtype=torch.long)
    params = module.generative(torch.randn(B, K, D), lib, zeros, zeros)  # (B, K, G)
    assert params["mu"].shape == (B, K, G)
    torch.testing.assert_close(params["mu"].sum(-1), lib[:, None].expand(B, K))


def test_empty_cells_stay_finite():
    module = make_module("exact")
    batch = make_batch()
    batch["x"][:3] = 0
    assert (library_size(batch["x"])[:3] == 1).all()
    check_output(module(batch), "exact")
    post = module.posterior(batch["x"], batch["condition"])
    assert torch.isfinite(post["latent"]).all()


def test_encoder_input():
    x = torch.tensor([[1.0, 3.0, 0.0]])
    counts = make_module("exact", "nb").encoder_input(x)
    torch.testing.assert_close(counts, torch.log1p(x / 4 * 1e4))
    torch.testing.assert_close(make_module("exact", "gaussian").encoder_input(x), x)


def test_dirichlet_component_prior_depends_on_w():
    module = make_module("dirichlet")
    w = torch.randn(5, module.config.n_w)
    mean, logvar = module.component_prior(w)
    assert mean.shape == logvar.shape == (5, K, D)
    assert not torch.allclose(mean[0], mean[1])
    mean, logvar = make_module("exact").component_prior()
    assert mean.shape == logvar.shape == (K, D)


def test_unknown_variant_raises():
    with pytest.raises(ValueError, match="variant 'nope'"):
        make_module("nope")


def test_count_parameters_counts_trainable_only():
    module = make_module("shared")
    total = sum(p.numel() for p in module.parameters())
    assert count_parameters(module) == total - K  # the fixed prior_logits


def test_components_per_cell_decodes_only_k_components():
    calls = []
    module = make_module("exact", components_per_cell=2)
    module.decoder.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape))
    out = module(make_batch())
    assert torch.isfinite(out.loss)
    assert calls[0][:2] == (B, 2)
