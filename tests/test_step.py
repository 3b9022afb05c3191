"""The private step against a per-example autograd loop, clipping, noise and batch-size edge cases."""

import pytest
import torch

from fusiondp.mechanism.regularizer import consistency_penalty
from fusiondp.mechanism.step import (
    StepConfig,
    add_noise,
    clip_and_accumulate,
    fusion_step,
    per_example_gradients,
    private_gradient,
    trainable_params,
)
from fusiondp.models import MLP, binary_bce


def _model(dtype=torch.float64, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return MLP(7, hidden=(8, 6), dropout=dropout).to(dtype)


def _batch(n, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 7, generator=g, dtype=dtype)
    x_ref = x.clone()
    x_ref[:, :3] = torch.randn(n, 3, generator=g, dtype=dtype)  # the "imputed" sensitive block
    y = (torch.rand(n, generator=g) < 0.4).to(dtype)
    return x, x_ref, y


def _loop_private_sum(model, x, x_ref, y, *, C, reg_weight, c_h):
    """Reference: one autograd backward per example, clipped and summed in Python."""
    params = list(trainable_params(model).values())
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        logits, h = model(x[i : i + 1])
        loss = binary_bce(logits, y[i : i + 1]).sum()
        if x_ref is not None:
            logits_r, h_r = model(x_ref[i : i + 1])
            loss = loss - binary_bce(logits_r, y[i : i + 1]).sum()
            if reg_weight:
                loss = loss + reg_weight * consistency_penalty(h, h_r, c_h=c_h).sum()
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = min(1.0, C / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return total


@pytest.mark.parametrize("private_loss,reg_weight", [("full", 0.0), ("difference", 0.0), ("difference", 0.7)])
@pytest.mark.parametrize("divide_by_realised", [False, True])
def test_private_gradient_at_sigma_zero_equals_per_example_loop(private_loss, reg_weight, divide_by_realised):
    model = _model()
    x, x_ref, y = _batch(13)
    ref = x_ref if private_loss == "difference" else None
    C = 0.05  # small enough that most rows are clipped
    cfg = StepConfig(
        lr=0.1,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=C,
        noise_multiplier=0.0,
        expected_batch_size=20.0,
        private_loss=private_loss,
        reg_weight=reg_weight,
        c_h=0.3,
        divide_by_realised_batch=divide_by_realised,
    )
    got, norms = private_gradient(model, x, ref, y, cfg=cfg, loss_fn=binary_bce, generator=torch.Generator())
    expected = _loop_private_sum(model, x, ref, y, C=C, reg_weight=reg_weight, c_h=0.3)
    divisor = 13 if divide_by_realised else 20.0
    assert (norms > C).sum() >= 5, "test must exercise clipping"
    for (name, g), e in zip(got.items(), expected, strict=True):
        torch.testing.assert_close(g, e / divisor, rtol=1e-10, atol=1e-12, msg=name)


def test_every_clipped_per_example_norm_is_at_most_C():
    model = _model(torch.float32)
    x, x_ref, y = _batch(64, torch.float32)
    per_example = per_example_gradients(model, x * 50, x_ref, y, loss_fn=binary_bce)
    for C in (1e-3, 0.1, 1.8):
        norms = torch.cat([g.flatten(1) for g in per_example.values()], 1).norm(dim=1)
        factors = (C / (norms + 1e-6)).clamp(max=1.0)
        clipped = torch.cat(
            [(g * factors.view(-1, *[1] * (g.dim() - 1))).flatten(1) for g in per_example.values()], 1
        ).norm(dim=1)
        assert clipped.max() <= C * (1 + 1e-6)
        summed, _ = clip_and_accumulate(per_example, max_grad_norm=C)
        total = torch.sqrt(sum(s.pow(2).sum() for s in summed.values()))
        assert total <= 64 * C * (1 + 1e-5)  # triangle inequality over the batch


def test_identical_views_give_zero_private_term_even_with_dropout():
    # The zero-out neighbour: sensitive values equal the imputed ones. With dropout masks shared
    # between the two views, its private gradient must vanish (up to float round-off).
    torch.manual_seed(0)
    model = MLP(7, hidden=(16, 8), dropout=0.5)
    model.train()
    x, _, y = _batch(32, torch.float32)
    per_example = per_example_gradients(model, x, x.clone(), y, loss_fn=binary_bce, reg_weight=1.0, c_h=0.5)
    assert all(torch.count_nonzero(g) == 0 for g in per_example.values())  # exactly zero
    different = per_example_gradients(model, x, x + 1.0, y, loss_fn=binary_bce, reg_weight=1.0, c_h=0.5)
    assert max(g.abs().max().item() for g in different.values()) > 1e-2


def test_noise_has_std_sigma_C_and_is_seeded():
    zeros = {"w": torch.zeros(200_000)}
    a = add_noise(zeros, std=1.8 * 0.9, generator=torch.Generator().manual_seed(3))["w"]
    b = add_noise(zeros, std=1.8 * 0.9, generator=torch.Generator().manual_seed(3))["w"]
    assert torch.equal(a, b)
    assert abs(a.std().item() - 1.62) < 0.01 and abs(a.mean().item()) < 0.01


@pytest.mark.parametrize("batch_size", [0, 1])
def test_poisson_batches_of_size_zero_and_one(batch_size):
    model = _model(torch.float32)
    x, x_ref, y = _batch(batch_size, torch.float32)
    before = {k: v.clone() for k, v in trainable_params(model).items()}
    cfg = StepConfig(
        lr=0.1,
        w_pub=0.0,  # no public term: only the private term can move the parameters
        w_priv=2.0,
        max_grad_norm=1.0,
        noise_multiplier=1.0,
        expected_batch_size=8.0,
        private_loss="difference",
        reg_weight=0.5,
        c_h=1.0,
        max_param_norm=None,
    )
    stats = fusion_step(
        model,
        x_public=None,
        y_public=None,
        x_private=x,
        x_reference=x_ref,
        y_private=y,
        cfg=cfg,
        loss_fn=binary_bce,
        generator=torch.Generator().manual_seed(0),
    )
    assert stats["private_batch_size"] == batch_size
    after = trainable_params(model)
    assert all(torch.isfinite(v).all() for v in after.values())
    # Noise is added even to an empty batch: the parameters must move.
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_empty_batch_private_gradient_is_pure_noise_over_b():
    model = _model(torch.float64)
    x, x_ref, y = _batch(0)
    cfg = StepConfig(
        lr=0.1,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=2.0,
        noise_multiplier=0.5,
        expected_batch_size=4.0,
        private_loss="difference",
    )
    g, _ = private_gradient(
        model, x, x_ref, y, cfg=cfg, loss_fn=binary_bce, generator=torch.Generator().manual_seed(9)
    )
    replay = torch.Generator().manual_seed(9)
    torch.randint(0, 2**62, (1,), generator=replay)  # the step's one draw that seeds its private stream
    expected = add_noise(
        {k: torch.zeros_like(p) for k, p in trainable_params(model).items()}, std=1.0, generator=replay
    )
    for k in g:
        torch.testing.assert_close(g[k], expected[k] / 4.0)


def test_update_combines_terms_and_projects_onto_ball():
    model = _model(torch.float64)
    x, x_ref, y = _batch(10)
    cfg = StepConfig(
        lr=0.5,
        w_pub=1.0,
        w_priv=3.0,
        max_grad_norm=1.0,
        noise_multiplier=0.0,
        expected_batch_size=10.0,
        private_loss="difference",
        max_param_norm=1.5,
    )
    fusion_step(
        model,
        x_public=x_ref,
        y_public=y,
        x_private=x,
        x_reference=x_ref,
        y_private=y,
        cfg=cfg,
        loss_fn=binary_bce,
        generator=torch.Generator(),
    )
    norm = torch.sqrt(sum(p.pow(2).sum() for p in trainable_params(model).values()))
    assert norm <= 1.5 + 1e-9


def test_step_config_rejects_bad_values():
    with pytest.raises(ValueError, match="max_grad_norm"):
        StepConfig(lr=0.1, w_pub=1, w_priv=1, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="C_h"):
        StepConfig(lr=0.1, w_pub=1, w_priv=1, private_loss="difference", reg_weight=1.0, c_h=None)
    with pytest.raises(ValueError, match="private_loss"):
        StepConfig(lr=0.1, w_pub=1, w_priv=1, private_loss="sum")


def test_update_is_w_pub_g_pub_plus_w_priv_g_priv_then_sgd():
    from fusiondp.mechanism.step import public_gradient

    model = _model(torch.float64)
    x, x_ref, y = _batch(10)
    xp, _, yp = _batch(30, seed=4)
    cfg = StepConfig(
        lr=0.3,
        w_pub=0.7,
        w_priv=2.5,
        max_grad_norm=0.1,
        noise_multiplier=0.0,
        expected_batch_size=12.0,
        private_loss="difference",
        reg_weight=0.4,
        c_h=0.5,
        max_param_norm=None,
    )
    g_pub = public_gradient(model, xp, yp, loss_fn=binary_bce)
    g_priv, _ = private_gradient(model, x, x_ref, y, cfg=cfg, loss_fn=binary_bce, generator=torch.Generator())
    expected = {
        k: p.detach() - 0.3 * (0.7 * g_pub[k] + 2.5 * g_priv[k]) for k, p in trainable_params(model).items()
    }
    fusion_step(
        model,
        x_public=xp,
        y_public=yp,
        x_private=x,
        x_reference=x_ref,
        y_private=y,
        cfg=cfg,
        loss_fn=binary_bce,
        generator=torch.Generator(),
    )
    for k, p in trainable_params(model).items():
        torch.testing.assert_close(p.detach(), expected[k], rtol=1e-12, atol=1e-14)
