"""Book-keeping per-example clipping (fusiondp.mechanism.clipping) against a per-example loop and the vmap reference."""

from dataclasses import replace

import pytest
import torch
from clipping_cases import Reused
from torch import nn

from fusiondp.mechanism import clipping
from fusiondp.mechanism.regularizer import consistency_penalty
from fusiondp.mechanism.step import (
    StepConfig,
    fusion_step,
    per_example_method,
    private_gradient,
    trainable_params,
)
from fusiondp.models import CAML, MLP, binary_bce, multilabel_bce

C_H = 0.3


def _mlp(dropout: float = 0.0, dtype=torch.float64) -> MLP:
    torch.manual_seed(0)
    return MLP(7, hidden=(8, 6), dropout=dropout).to(dtype)


def _caml(dropout: float = 0.0, dtype=torch.float64) -> CAML:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return CAML(
        torch.randn(40, 6, generator=gen), num_labels=5, filters=4, kernel_size=3, dropout=dropout
    ).to(dtype)


def _problem(kind: str, n: int, *, dropout: float = 0.0, dtype=torch.float64):
    """(model, x, x_ref, y, loss_fn): two views per row that differ in part of each row."""
    gen = torch.Generator().manual_seed(1)
    if kind == "mlp":
        x = torch.randn(n, 7, generator=gen, dtype=dtype)
        x_ref = x.clone()
        x_ref[:, :3] = torch.randn(n, 3, generator=gen, dtype=dtype)
        y = (torch.rand(n, generator=gen) < 0.4).to(dtype)
        return _mlp(dropout, dtype), x, x_ref, y, binary_bce
    x = torch.randint(1, 40, (n, 11), generator=gen)
    x[: n // 2, 8:] = 0  # some padding
    x_ref = x.clone()
    x_ref[:, 2] = torch.randint(1, 40, (n,), generator=gen)
    y = (torch.rand(n, 5, generator=gen) < 0.3).to(dtype)
    return _caml(dropout, dtype), x, x_ref, y, multilabel_bce


def _loop(model, x, x_ref, y, *, loss_fn, C, reg_weight):
    """Oracle: one forward and one autograd backward per example, clipped and summed in Python."""
    params = list(trainable_params(model).values())
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(len(x)):
        if x_ref is None:
            logits, _ = model(x[i : i + 1])
            loss = loss_fn(logits, y[i : i + 1]).sum()
        else:
            logits, h = model(torch.stack([x[i : i + 1], x_ref[i : i + 1]]))
            loss = (loss_fn(logits[0], y[i : i + 1]) - loss_fn(logits[1], y[i : i + 1])).sum()
            loss = loss + reg_weight * consistency_penalty(h[0], h[1], c_h=C_H).sum()
            if torch.equal(x[i], x_ref[i]):
                loss = loss * 0
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        norms.append(norm)
        factor = min(1.0, C / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return dict(zip(trainable_params(model), total, strict=True)), torch.stack(norms)


def _cfg(private_loss, reg_weight, C, method="bookkeeping", **kw) -> StepConfig:
    return StepConfig(
        lr=0.1,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=C,
        expected_batch_size=1.0,  # g_priv is the clipped sum itself
        private_loss=private_loss,
        reg_weight=reg_weight,
        c_h=C_H,
        per_example=method,
        **kw,
    )


@pytest.mark.parametrize("kind", ["mlp", "caml"])
@pytest.mark.parametrize("private_loss,reg_weight", [("full", 0.0), ("difference", 0.0), ("difference", 0.7)])
def test_bookkeeping_equals_per_example_loop_float64(kind, private_loss, reg_weight):
    model, x, x_ref, y, loss_fn = _problem(kind, 9)
    x_ref[0] = x[0]  # a zero-out neighbour in the batch
    ref = x_ref if private_loss == "difference" else None
    C = 0.02
    got, norms = private_gradient(
        model, x, ref, y, cfg=_cfg(private_loss, reg_weight, C), loss_fn=loss_fn, generator=torch.Generator()
    )
    expected, expected_norms = _loop(model, x, ref, y, loss_fn=loss_fn, C=C, reg_weight=reg_weight)
    assert (norms > C).sum() >= 3, "the test must exercise clipping"
    torch.testing.assert_close(norms, expected_norms, rtol=1e-10, atol=1e-12)
    assert set(got) == set(expected)
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)
    if private_loss == "difference":
        assert norms[0] == 0  # exactly: the zero-out neighbour contributes nothing


@pytest.mark.parametrize("kind", ["mlp", "caml"])
def test_bookkeeping_draws_the_same_dropout_masks_as_vmap(kind):
    # The two implementations must give the same numbers for the same seed, dropout included: vmap's
    # per-example draws and book-keeping's one draw over the batch are the same random numbers.
    model, x, x_ref, y, loss_fn = _problem(kind, 12, dropout=0.4)
    model.train()
    results = {}
    for method in ("vmap", "bookkeeping"):
        results[method] = private_gradient(
            model,
            x,
            x_ref,
            y,
            cfg=_cfg("difference", 0.5, 0.05, method, noise_multiplier=1.3),
            loss_fn=loss_fn,
            generator=torch.Generator().manual_seed(5),
        )
    (a, norms_a), (b, norms_b) = results["vmap"], results["bookkeeping"]
    torch.testing.assert_close(norms_a, norms_b, rtol=1e-10, atol=1e-12)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("kind", ["mlp", "caml"])
def test_identical_views_contribute_exactly_zero_with_dropout(kind):
    model, x, _, y, loss_fn = _problem(kind, 10, dropout=0.5, dtype=torch.float32)
    model.train()
    got, norms = private_gradient(
        model, x, x.clone(), y, cfg=_cfg("difference", 1.0, 1.0), loss_fn=loss_fn, generator=torch.Generator()
    )
    assert torch.count_nonzero(norms) == 0
    assert all(torch.count_nonzero(g) == 0 for g in got.values())


def test_fusion_step_is_the_same_with_either_method_sepsis_shape_float32():
    # The sepsis MLP (LayerNorm, GELU, shared dropout) at σ > 0: the whole step (public term, private
    # stream, noise, update) agrees to float32 round-off whichever per-example method runs.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 40, generator=gen)
    x_ref = x.clone()
    x_ref[:, :6] = torch.randn(64, 6, generator=gen)
    y = (torch.rand(64, generator=gen) < 0.3).float()
    x_pub = torch.randn(256, 40, generator=gen)
    y_pub = (torch.rand(256, generator=gen) < 0.3).float()
    updated = {}
    for method in ("vmap", "bookkeeping"):
        torch.manual_seed(0)
        model = MLP(40, hidden=(64, 128, 64), dropout=0.15).train()
        cfg = replace(
            _cfg("difference", 0.5, 1.0, method, noise_multiplier=0.8), w_pub=1.0, expected_batch_size=64.0
        )
        torch.manual_seed(11)
        noise = torch.Generator().manual_seed(7)
        for _ in range(3):
            fusion_step(
                model,
                x_public=x_pub,
                y_public=y_pub,
                x_private=x,
                x_reference=x_ref,
                y_private=y,
                cfg=cfg,
                loss_fn=binary_bce,
                generator=noise,
            )
        updated[method] = {k: v.detach().clone() for k, v in trainable_params(model).items()}
    for name, value in updated["vmap"].items():
        torch.testing.assert_close(updated["bookkeeping"][name], value, rtol=1e-4, atol=1e-5, msg=name)


class _WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        h = self.lin(x)
        return self.head(h), h


def test_unsupported_models_fall_back_to_vmap_or_are_refused(monkeypatch):
    assert per_example_method(MLP(3, hidden=(4,)), "auto") == (
        "bookkeeping",
        "every trainable layer has a book-keeping rule",
    )
    # Only registered (vetted row-wise) classes run book-keeping: structure alone cannot prove it.
    method, why = per_example_method(_WithBatchNorm(), "auto")
    assert method == "vmap" and "_WithBatchNorm is not registered" in why and "fallback" in why
    with pytest.raises(ValueError, match="not registered"):
        per_example_method(_WithBatchNorm(), "bookkeeping")
    assert per_example_method(_WithBatchNorm(), "vmap")[0] == "vmap"
    with pytest.raises(ValueError, match="per_example"):
        per_example_method(MLP(3, hidden=(4,)), "ghost")
    # A registered class with a layer that has no rule still falls back.
    monkeypatch.setattr(clipping, "ROW_WISE_MODELS", {*clipping.ROW_WISE_MODELS, _WithBatchNorm, Reused})
    method, why = per_example_method(_WithBatchNorm(), "auto")
    assert method == "vmap" and "BatchNorm1d" in why
    # A layer called twice per forward breaks the per-layer algebra: refused at the step, not wrong.
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="exactly once"):
        private_gradient(
            Reused(),
            x,
            x + 1,
            torch.ones(4),
            cfg=_cfg("difference", 0.0, 1.0),
            loss_fn=binary_bce,
            generator=torch.Generator(),
        )
