"""Models that return ``(logits, representation)`` (DESIGN.md §6).

Inputs may carry leading ``(views, batch)`` dimensions; everything is applied over the last one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ViewSharedDropout(nn.Module):
    """Inverted dropout whose mask covers the last two dimensions (batch, features) only.

    On a plain ``(batch, features)`` input this is ordinary dropout. On ``(views, batch, features)``
    the views of one row share a mask, so a row whose two views are equal produces equal outputs
    even in training mode: the private term of a zero-out neighbour is then exactly zero.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p!r}.")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[-2:], device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    """``d → hidden[0] → … → hidden[-1] → 1`` with LayerNorm, GELU and dropout after each layer.

    The representation h is the output of the last hidden block. Sepsis: ``hidden=(64, 128, 64)``,
    ``dropout=0.15``; bank/adult: ``hidden=(64, 32)``, ``dropout=0``.
    """

    def __init__(self, in_features: int, *, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        if in_features < 1 or not hidden:
            raise ValueError(f"MLP needs in_features ≥ 1 and hidden layers, got {in_features}, {hidden}.")
        blocks: list[nn.Module] = []
        width = in_features
        for out in hidden:
            blocks += [nn.Linear(width, out), nn.LayerNorm(out), nn.GELU(), ViewSharedDropout(dropout)]
            width = out
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.head(h), h


def sepsis_mlp(in_features: int) -> MLP:
    return MLP(in_features, hidden=(64, 128, 64), dropout=0.15)


def small_tabular_mlp(in_features: int) -> MLP:
    """The bank/adult architecture: d → 64 → 32 → 1."""
    return MLP(in_features, hidden=(64, 32), dropout=0.0)


def binary_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example BCE-with-logits for a single-logit binary head: logits[..., 1], targets[...]."""
    return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), targets, reduction="none")
