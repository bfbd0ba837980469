"""The variants' own pieces: the exact variant's sampled reconstruction and its gradient,
placement into each variant."""

from __future__ import annotations

import pytest
import torch

from gmmvae.module import Minibatch, ModuleConfig
from gmmvae.variants import build_module

B, G, K, D = 12, 30, 5, 4


def _setup(labels=None, seed=3):
    torch.manual_seed(seed)
    config = ModuleConfig(n_genes=G, n_components=K, n_latent=D, n_hidden=16)
    module = build_module(config).eval()  # no dropout: only the component draws are random
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(B, G, generator=g) * 4, generator=g)
    labels = torch.full((B,), -1) if labels is None else torch.as_tensor(labels)
    mb = Minibatch(
        x=x,
        condition=torch.zeros(B, dtype=torch.long),
        batch=torch.zeros(B, dtype=torch.long),
        labelled=labels >= 0,
        y_true=torch.nn.functional.one_hot(labels.clamp(min=0), K).float(),
    )
    with torch.no_grad():
        module.decoder_out.weight.mul_(10.0)  # components that decode differently
    q = {k: v.detach() for k, v in module.inference(x, mb.condition).items()}
    q["z_logvar"] = torch.full_like(q["z_logvar"], -20.0)  # z = its mean
    logits = (q["y_logits"] * 0.3).detach()  # spread q(y|x): the rest of the mass matters
    return module, mb, q, logits


def _value_and_grads(module, mb, q, logits, k):
    """The reconstruction term and its gradients w.r.t. q(y|x)'s logits and a decoder weight."""
    module.config.components_per_cell = k
    logits = logits.clone().requires_grad_(True)
    module.zero_grad()
    weights, _ = module.component_weights(logits, mb)
    value = module.expected_reconstruction(mb, q, weights).sum()
    value.backward()
    return value.detach(), logits.grad.clone(), module.decoder_out.weight.grad.clone()


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("labels", [None, [0, 1, 2, -1, -1, -1, 3, -1, -1, 4, -1, -1]])
def test_sampled_reconstruction_is_unbiased_in_value_and_gradient(k, labels):
    module, mb, q, logits = _setup(labels)
    exact = _value_and_grads(module, mb, q, logits, None)
    torch.manual_seed(1)
    draws = [_value_and_grads(module, mb, q, logits, k) for _ in range(1000)]
    for i, name in enumerate(("value", "d logits", "d decoder weight")):
        mean = torch.stack([d[i] for d in draws]).mean(0)
        target = exact[i]
        error = ((mean - target).norm() / target.norm()).item()
        assert error < 0.15, (name, error)
        if i:
            cosine = torch.nn.functional.cosine_similarity(mean.flatten(), target.flatten(), 0)
            assert cosine > 0.98, (name, cosine)
    if labels is not None:  # labelled cells take their label's component only: no gradient
        labelled = torch.as_tensor(labels) >= 0
        assert torch.stack([d[1][labelled] for d in draws]).abs().max() == 0


def test_sampled_reconstruction_decodes_k_components_per_cell():
    calls = []
    module, mb, q, logits = _setup()
    module.decoder.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape))
    module.config.components_per_cell = 3
    module.expected_reconstruction(mb, q, torch.softmax(logits, -1))
    assert calls == [torch.Size([B, 3, D])]
