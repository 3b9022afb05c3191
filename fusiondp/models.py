"""Models that return ``(logits, representation)`` (docs/design.md §1).

Inputs may carry leading ``(views, batch)`` dimensions; everything is applied over the last one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode (no dropout); its previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


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


class LabelwiseLinear(nn.Linear):
    """One dot product per label: ``(..., K, F) → (..., K)``, ``out[k] = x[k] · weight[k] + bias[k]``.

    An nn.Linear(F, K) in its parameters and initialisation (so seeded models are unchanged), applied
    label by label rather than as a matrix product: CAML's output layer. A module of its own so that
    the per-example clipping of fusiondp.mechanism.clipping sees its inputs (it has a rule for this type).
    """

    def forward(self, x: Tensor) -> Tensor:
        out = (x * self.weight).sum(-1)
        return out if self.bias is None else out + self.bias


def small_tabular_mlp(in_features: int) -> MLP:
    """The bank/adult architecture: d → 64 → 32 → 1."""
    return MLP(in_features, hidden=(64, 32), dropout=0.0)


def binary_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example BCE-with-logits for a single-logit binary head: logits[..., 1], targets[...]."""
    return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), targets, reduction="none")


class CAML(nn.Module):
    """CAML-style multi-label text classifier (Mullenbach et al. 2018), returning ``(logits, h)``.

    Token ids ``(..., L)`` (leading ``(views, batch)`` or ``(batch,)``; id ``pad_id`` is padding) →
    frozen word embeddings (a buffer: never trained, never in a gradient) → view-shared dropout →
    Conv1d (kernel ``kernel_size``, "same" padding, ``filters`` channels) → tanh → per-label attention
    over the non-padding positions → per-label output ``logits[..., K]``. ``h`` is the label-wise
    attended representation averaged over labels, ``(..., filters)``.

    Padding never changes a note's output: padding embeddings are zero (as is the convolution's own
    padding) and padded positions get no attention, so a note padded to any length gives the same logits.
    """

    def __init__(
        self,
        embeddings: Tensor,
        *,
        num_labels: int,
        filters: int = 50,
        kernel_size: int = 10,
        dropout: float = 0.2,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if embeddings.dim() != 2 or num_labels < 1 or filters < 1:
            raise ValueError(
                f"CAML needs a (vocab, dim) embedding matrix, num_labels ≥ 1 and filters ≥ 1; got "
                f"{tuple(embeddings.shape)}, {num_labels}, {filters}."
            )
        table = embeddings.detach().clone().float()
        table[pad_id] = 0.0
        self.register_buffer("embedding", table)
        self.pad_id = pad_id
        self.dropout = ViewSharedDropout(dropout)
        # "Same" padding done by hand (left (k-1)//2, right the rest): position j of the output is the
        # window around token j, and torch's padding="same" would copy the input for even kernels.
        self.pads = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv = nn.Conv1d(table.shape[1], filters, kernel_size)
        self.attention = nn.Linear(filters, num_labels, bias=False)
        self.output = LabelwiseLinear(filters, num_labels)
        for layer in (self.conv, self.attention, self.output):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        lead, length = tokens.shape[:-1], tokens.shape[-1]
        mask = tokens != self.pad_id
        x = nn.functional.embedding(tokens, self.embedding)  # (..., L, E)
        # Flatten (L, E) so the dropout mask is drawn per (batch, position, dim) and shared by views.
        x = self.dropout(x.flatten(-2)).view(*lead, length, -1)
        x = nn.functional.pad(x.reshape(-1, length, x.shape[-1]).transpose(1, 2), self.pads)
        hidden = torch.tanh(self.conv(x))
        hidden = hidden.transpose(1, 2).reshape(*lead, length, -1)  # (..., L, F)
        scores = self.attention(hidden).masked_fill(~mask[..., None], torch.finfo(hidden.dtype).min)
        weights = torch.softmax(scores, dim=-2)  # (..., L, K): over positions, per label
        per_label = weights.transpose(-1, -2) @ hidden  # (..., K, F)
        logits = self.output(per_label)
        return logits, per_label.mean(dim=-2)


def multilabel_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example BCE-with-logits, MEAN over the K labels: logits[..., K], targets[..., K] → loss[...]."""
    return nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)
