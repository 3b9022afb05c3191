"""A non-finite (or overflowing) per-example gradient contributes nothing to the clipped sum.

Privacy review, item 1: the clip factor min(1, C / (‖g‖ + 1e-6)) of an example whose gradient is NaN
or inf was NaN, and the NaN reached the noised sum, so whether a run finished revealed whether a
sampled row held such a value. Now an example whose norm is not finite contributes exactly zero,
decided inside the step (fusiondp.clipping.clip_factors), in book-keeping and in the vmap reference.
The neighbour checks compare clipped sums in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from fusiondp.models import CAML, MLP, binary_bce, multilabel_bce
from fusiondp.step import StepConfig, fusion_step, private_gradient, trainable_params

BAD_VALUES = [math.inf, -math.inf, math.nan, 1e30]
METHODS = ["bookkeeping", "vmap"]
BAD_TOKEN = 40  # CAML: the one token whose (frozen) embedding is made non-finite; only row 0 holds it
C = 0.05


def _problem(kind: str, bad: float | None, *, n: int = 8, dtype=torch.float64):
    """(model, x, x_ref, y, loss_fn); row 0 of the ORIGINAL view carries ``bad`` (None: a normal row).

    MLP: feature 0 (a sensitive column) of row 0. CAML: a token of row 0 whose embedding is ``bad``
    in every dimension (a frozen table cannot be edited per row, so the token is unique to row 0).
    """
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    if kind == "mlp":
        model = MLP(7, hidden=(8, 6), dropout=0.0).to(dtype)
        x = torch.randn(n, 7, generator=gen, dtype=dtype)
        x_ref = x.clone()
        x_ref[:, :3] = torch.randn(n, 3, generator=gen, dtype=dtype)
        if bad is not None:
            x[0, 0] = bad
        y = (torch.rand(n, generator=gen) < 0.4).to(dtype)
        return model, x, x_ref, y, binary_bce
    table = torch.randn(BAD_TOKEN + 1, 6, generator=gen)
    model = CAML(table, num_labels=5, filters=4, kernel_size=3, dropout=0.0).to(dtype)
    if bad is not None:
        model.embedding[BAD_TOKEN] = bad
    x = torch.randint(1, BAD_TOKEN, (n, 11), generator=gen)
    x[: n // 2, 8:] = 0  # some padding
    x_ref = x.clone()
    x_ref[:, 2] = torch.randint(1, BAD_TOKEN, (n,), generator=gen)
    x[0, 5] = BAD_TOKEN  # only the original view of row 0 reads it
    y = (torch.rand(n, 5, generator=gen) < 0.3).to(dtype)
    return model, x, x_ref, y, multilabel_bce


def _cfg(
    private_loss: str, method: str, *, noise_multiplier: float = 0.0, reg_weight: float = 0.0
) -> StepConfig:
    return StepConfig(
        lr=0.1,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=C,
        noise_multiplier=noise_multiplier,
        expected_batch_size=1.0,  # g_priv is the (noised) clipped sum itself
        private_loss=private_loss,
        reg_weight=reg_weight,
        c_h=0.3,
        per_example=method,
    )


def _sum(model, x, x_ref, y, loss_fn, *, private_loss, method, reg_weight=0.0, noise_multiplier=0.0):
    got, _ = private_gradient(
        model,
        x,
        x_ref if private_loss == "difference" else None,
        y,
        cfg=_cfg(private_loss, method, noise_multiplier=noise_multiplier, reg_weight=reg_weight),
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(0),
    )
    return got


def _distance(a: dict, b: dict) -> float:
    return math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a))


@pytest.mark.parametrize("kind", ["mlp", "caml"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("private_loss,reg_weight", [("difference", 0.5), ("full", 0.0)])
def test_a_non_finite_example_moves_the_clipped_sum_by_at_most_C(kind, method, bad, private_loss, reg_weight):
    model, x, x_ref, y, loss_fn = _problem(kind, bad)
    kw = dict(private_loss=private_loss, method=method, reg_weight=reg_weight)
    got = _sum(model, x, x_ref, y, loss_fn, **kw)
    assert all(torch.isfinite(g).all() for g in got.values()), "a NaN/inf reached the clipped sum"
    # Neighbours of the data set with the bad row: zero-out (split modes: row 0's original view equals
    # its public view, its term is exactly 0) or add/remove (dpsgd: row 0 is absent), sensitivity C;
    # replace-one (row 0 holds an ordinary value instead), sensitivity 2C.
    if private_loss == "difference":
        x_zero = x.clone()
        x_zero[0] = x_ref[0]
        without = _sum(model, x_zero, x_ref, y, loss_fn, **kw)
    else:
        without = _sum(model, x[1:], x_ref[1:], y[1:], loss_fn, **kw)
    x_other = x.clone()
    if kind == "mlp":
        x_other[0, 0] = 0.3
    else:
        x_other[0, 5] = 1  # an ordinary token in place of the one with the bad embedding
    replaced = _sum(model, x_other, x_ref, y, loss_fn, **kw)
    assert _distance(got, without) <= C * (1 + 1e-9)
    assert _distance(got, replaced) <= 2 * C * (1 + 1e-9)
    if not math.isfinite(bad):
        # The non-finite example is excluded: the sum is exactly that of the other examples.
        for name in got:
            torch.testing.assert_close(got[name], without[name], rtol=1e-12, atol=1e-15, msg=name)


@pytest.mark.parametrize("kind", ["mlp", "caml"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", BAD_VALUES)
def test_the_noised_update_is_finite_in_float32(kind, method, bad):
    # The training dtype: in float32 a huge input overflows the squared norm (1e20² > 3.4e38), so
    # the example's norm is not finite and it contributes zero, which is as private as clipping it.
    model, x, x_ref, y, loss_fn = _problem(kind, bad, dtype=torch.float32)
    noised, _ = private_gradient(
        model,
        x,
        x_ref,
        y,
        cfg=_cfg("difference", method, noise_multiplier=1.1, reg_weight=0.5),
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(0),
    )
    assert all(torch.isfinite(g).all() for g in noised.values())
    clean = _sum(model, x, x_ref, y, loss_fn, private_loss="difference", method=method, reg_weight=0.5)
    assert all(torch.isfinite(g).all() for g in clean.values())
    per_example_bound = C * (1 + 1e-5) * len(x)
    assert math.sqrt(sum(float(g.pow(2).sum()) for g in clean.values())) <= per_example_bound


@pytest.mark.parametrize("method", METHODS)
def test_fusion_step_keeps_the_model_finite_and_reports_only_the_batch_size(method):
    model, x, x_ref, y, loss_fn = _problem("mlp", math.inf, dtype=torch.float32)
    stats = fusion_step(
        model,
        x_public=x_ref,
        y_public=y,
        x_private=x,
        x_reference=x_ref,
        y_private=y,
        cfg=_cfg("difference", method, noise_multiplier=1.0, reg_weight=0.5),
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(0),
    )
    assert stats == {"private_batch_size": len(x)}  # no count of excluded examples leaves the step
    assert all(torch.isfinite(p).all() for p in trainable_params(model).values())


def test_the_audited_correct_step_is_the_fixed_step():
    # The step-canary audit's CORRECT variant must run the same (fixed) clipping as training.
    from fusiondp.audit.controls import CORRECT

    model, x, x_ref, y, loss_fn = _problem("mlp", math.nan, dtype=torch.float32)
    released = CORRECT.private_gradient(
        model,
        x,
        x_ref,
        y,
        cfg=_cfg("difference", "bookkeeping", noise_multiplier=1.0),
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(0),
    )
    assert all(torch.isfinite(g).all() for g in released.values())
