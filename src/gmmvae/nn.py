"""MLP building blocks with one-hot covariates (condition, batch) injected at every layer."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


def one_hot_covariates(codes: Sequence[torch.Tensor], sizes: Sequence[int]) -> torch.Tensor | None:
    """Concatenate one-hot encodings of integer covariate codes; ``None`` when there are none."""
    parts = [
        nn.functional.one_hot(c.long(), n).float()
        for c, n in zip(codes, sizes, strict=True)
        if n > 1
    ]
    return torch.cat(parts, dim=-1) if parts else None


class CovariateMLP(nn.Module):
    """Stack of Linear -> LayerNorm -> ReLU -> Dropout with covariates concatenated to each input.

    Re-injecting the covariates at every layer (as scVI's ``inject_covariates``) keeps the
    condition from being washed out in deeper networks. LayerNorm instead of BatchNorm keeps
    training well defined for any minibatch size, one-cell batches included.

    Parameters
    ----------
    n_in
        Input width (without covariates).
    n_hidden
        Width of every hidden layer; also the output width.
    n_layers
        Number of hidden layers.
    n_covariates
        Total width of the one-hot covariate block (0 for none).
    dropout_rate
        Dropout after each hidden layer.
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int = 128,
        n_layers: int = 1,
        n_covariates: int = 0,
        dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.n_covariates = n_covariates
        widths = [n_in] + [n_hidden] * n_layers
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "linear": nn.Linear(w_in + n_covariates, w_out),
                    "norm": nn.LayerNorm(w_out),
                }
            )
            for w_in, w_out in itertools.pairwise(widths)
        )
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            if covariates is not None:
                # Covariates may have fewer leading dims than x (e.g. x is (B, K, d)).
                cov = covariates.expand(*x.shape[:-1], covariates.shape[-1])
                x = torch.cat([x, cov], dim=-1)
            x = self.dropout(torch.relu(layer["norm"](layer["linear"](x))))
        return x
