"""Shared cases for the book-keeping red-team tests: oracle, clipped sums, and models that break it.

The models here are deliberately NOT registered as row-wise: each breaks one condition book-keeping
needs (see fusiondp.mechanism.clipping.ROW_WISE_MODELS). Imported by tests/test_clipping_holes.py and
tests/test_clipping_redteam.py.
"""

from __future__ import annotations

import torch
from torch import nn

from fusiondp.mechanism.regularizer import consistency_penalty
from fusiondp.mechanism.step import (
    StepConfig,
    per_example_method,
    private_gradient,
    trainable_params,
)
from fusiondp.models import binary_bce

C_H = 0.3


# --------------------------------------------------------------------------------------------------
# helpers


def _cfg(private_loss="difference", reg_weight=0.0, C=1.0, method="bookkeeping", **kw) -> StepConfig:
    return StepConfig(
        lr=0.1,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=C,
        expected_batch_size=1.0,  # g_priv is the clipped sum itself (noise 0 unless given)
        private_loss=private_loss,
        reg_weight=reg_weight,
        c_h=C_H,
        per_example=method,
        **kw,
    )


def _sum(model, x, x_ref, y, *, C, method="auto", loss_fn=binary_bce, reg_weight=0.0, seed=0):
    """The clipped sum as training computes it: ``auto`` resolves the method as run_experiment does."""
    if method == "auto":
        method = per_example_method(model, "auto")[0]
    private_loss = "full" if x_ref is None else "difference"
    got, norms = private_gradient(
        model,
        x,
        x_ref,
        y,
        cfg=_cfg(private_loss, reg_weight, C, method),
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(seed),
    )
    return got, norms


def _oracle(model, x, x_ref, y, *, C, loss_fn=binary_bce, reg_weight=0.0):
    """Per-example loop: the model sees ONE example (its views) per forward; clip; sum."""
    params = list(trainable_params(model).values())
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(len(x)):
        if x_ref is None:
            logits, _ = model(x[i : i + 1][None])
            loss = loss_fn(logits[0], y[i : i + 1]).sum()
        else:
            logits, h = model(torch.stack([x[i : i + 1], x_ref[i : i + 1]]))
            loss = (loss_fn(logits[0], y[i : i + 1]) - loss_fn(logits[1], y[i : i + 1])).sum()
            if reg_weight:
                loss = loss + reg_weight * consistency_penalty(h[0], h[1], c_h=C_H).sum()
            if not ((x[i] - x_ref[i]).abs() > 1e-5).any():
                loss = loss * 0
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        norms.append(norm)
        factor = min(1.0, C / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return dict(zip(trainable_params(model), total, strict=True)), torch.stack(norms)


def _flat_norm(grads: dict) -> float:
    return float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values())))


def _diff_norm(a: dict, b: dict) -> float:
    return _flat_norm({k: a[k] - b[k] for k in a})


def _table(n, d, *, dtype=torch.float64, seed=1, changed=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    x_ref = x.clone()
    x_ref[:, :changed] = torch.randn(n, changed, generator=gen, dtype=dtype)
    y = (torch.rand(n, generator=gen) < 0.5).to(dtype)
    return x, x_ref, y


def _zero_out(x, x_ref, i):
    """The zero-out neighbour: row i replaced by a row whose two views coincide."""
    x2, r2 = x.clone(), x_ref.clone()
    r2[i] = x2[i]
    return x2, r2


# --------------------------------------------------------------------------------------------------
# models that the book-keeping path ACCEPTS (unsupported_reason is None) but breaks


class _BatchCentred(nn.Module):
    """Linear → add the batch mean (parameter-free pooling across rows) → Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        if h.dim() == 3:  # (views, batch, d): a parameter-free op across the batch axis
            h = h + 3 * h.mean(dim=1, keepdim=True)
        return self.head(h), h


class _BatchMajor(nn.Module):
    """Runs its first layer batch-major: (views, batch, d) → (batch, views, d) → Linear → back."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.tanh(self.lin(x.transpose(0, 1)).transpose(0, 1))
        return self.head(h), h


class _ConvBatchMajor(nn.Module):
    """Conv1d over the flattened (batch · views) axis in BATCH-major order (no layout check on convs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.head = nn.Linear(2, 1)

    def forward(self, x):
        views, batch, length = x.shape
        rows = x.transpose(0, 1).reshape(batch * views, 1, length)
        hidden = torch.tanh(self.conv(rows)).mean(dim=-1)  # (batch · views, 2)
        h = hidden.view(batch, views, 2).transpose(0, 1)
        return self.head(h), h


class _InplaceRelu(nn.Module):
    """Linear → nn.ReLU(inplace=True) → Linear: the first layer's recorded output is overwritten."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 6)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        h = self.act(self.lin(x))
        return self.head(h), h


class _Tied(nn.Module):
    """Two Linear layers sharing one weight Parameter (each called once)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        h = torch.tanh(self.b(torch.tanh(self.a(x))))
        return self.head(h), h


class _CircularConv(nn.Module):
    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1, padding_mode="circular", stride=stride)
        self.head = nn.Linear(2, 1)

    def forward(self, x):
        lead, length = x.shape[:-1], x.shape[-1]
        hidden = torch.tanh(self.conv(x.reshape(-1, 1, length))).mean(dim=-1)
        h = hidden.view(*lead, 2)
        return self.head(h), h


class _FrozenWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 6)
        self.lin.weight.requires_grad_(False)  # fine-tune the bias only
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.head(h), h


class _UnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 6)
        self.head = nn.Linear(6, 1)
        self.decoder = nn.Linear(6, 5)  # used elsewhere (e.g. pre-training); not in this forward

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.head(h), h


class _KeywordCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.tanh(self.lin(input=x))
        return self.head(h), h


class _OutsideUse(nn.Module):
    """The head's weight is also read outside the head's forward (a weight-tied readout)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.head(h) + (h * self.head.weight[0]).sum(-1, keepdim=True), h


def assert_matches_oracle(model, x, x_ref, y, *, C, **kw) -> None:
    """The clipped sum as training computes it equals the per-example loop's, norms included."""
    got, norms = _sum(model, x, x_ref, y, C=C, **kw)
    expected, expected_norms = _oracle(model, x, x_ref, y, C=C, **kw)
    torch.testing.assert_close(norms, expected_norms)
    for name in got:
        torch.testing.assert_close(got[name], expected[name], msg=name)


class Reused(nn.Module):
    """A layer called twice per forward: book-keeping's per-layer algebra would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        h = self.lin(self.lin(x))
        return self.head(h), h
