"""The CAML model: shapes, padding, gradients, and the DP step's per-example properties on it."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import load_script

from fusiondp.mechanism.step import StepConfig, per_example_gradients, private_gradient, trainable_params
from fusiondp.models import CAML, multilabel_bce

bench_caml_step = load_script("scripts.bench_caml_step")
loop_private_sum, make_problem = bench_caml_step.loop_private_sum, bench_caml_step.make_problem


def _model(dropout: float = 0.0, labels: int = 4, vocab: int = 30, dim: int = 6) -> CAML:
    torch.manual_seed(0)
    return CAML(torch.randn(vocab, dim), num_labels=labels, filters=5, kernel_size=10, dropout=dropout)


def test_shapes_for_batch_and_view_batch_inputs():
    model = _model()
    tokens = torch.randint(1, 30, (3, 17))
    logits, h = model(tokens)
    assert logits.shape == (3, 4) and h.shape == (3, 5)
    logits2, h2 = model(torch.stack([tokens, tokens]))
    assert logits2.shape == (2, 3, 4) and h2.shape == (2, 3, 5)
    torch.testing.assert_close(logits2[1], logits)
    short = model(torch.randint(1, 30, (2, 3)))[0]  # shorter than the kernel
    assert short.shape == (2, 4) and torch.isfinite(short).all()


def test_backward_reaches_trainable_parameters_not_embeddings():
    model = _model()
    logits, _ = model(torch.randint(1, 30, (4, 12)))
    multilabel_bce(logits, torch.ones(4, 4)).mean().backward()
    params = dict(model.named_parameters())
    assert set(params) == {"conv.weight", "conv.bias", "attention.weight", "output.weight", "output.bias"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    assert "embedding" in dict(model.named_buffers())  # frozen: a buffer, never in a gradient


def test_padding_never_changes_a_note():
    model = _model().eval()
    note = torch.randint(1, 30, (1, 11))
    padded = torch.cat([note, torch.zeros(1, 25, dtype=torch.long)], dim=1)
    for a, b in zip(model(note), model(padded), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # Without the attention mask this would fail: padded positions far from the note hold
    # tanh(conv bias) ≠ 0 and would draw attention weight.


def test_multilabel_bce_is_mean_over_labels():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    manual = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(-1)
    torch.testing.assert_close(multilabel_bce(logits, y), manual)
    assert multilabel_bce(logits, y).shape == (2,)


def test_identical_views_give_exactly_zero_private_term_in_train_mode():
    model = _model(dropout=0.5).train()
    x = torch.randint(1, 30, (6, 14))
    x_ref = x.clone()
    x_ref[0, 3] = (x[0, 3] % 28) + 1  # only note 0 differs
    y = (torch.rand(6, 4) < 0.5).float()
    grads = per_example_gradients(model, x, x_ref, y, loss_fn=multilabel_bce, reg_weight=0.5, c_h=0.3)
    for g in grads.values():
        assert (g[1:] == 0).all()
        assert g[0].abs().sum() > 0


def test_step_at_sigma_zero_equals_per_example_loop_float64():
    args = argparse.Namespace(
        seed=1, vocab=40, dim=6, labels=5, filters=4, batch_size=5, length=13, changed=2, device="cpu"
    )
    model, x, x_ref, y = make_problem(args, dtype=torch.float64)
    cfg = StepConfig(
        lr=1.0,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=0.05,
        noise_multiplier=0.0,
        expected_batch_size=1.0,  # g_priv is then the clipped sum itself
        private_loss="difference",
        reg_weight=0.5,
        c_h=0.2,
    )
    vmapped, norms = private_gradient(
        model, x, x_ref, y, cfg=cfg, loss_fn=multilabel_bce, generator=torch.Generator().manual_seed(0)
    )
    assert (norms > 0.05).any()  # clipping is exercised
    looped = loop_private_sum(model, x, x_ref, y, reg_weight=0.5, c_h=0.2, max_grad_norm=0.05)
    assert set(vmapped) == set(trainable_params(model))
    for k in vmapped:
        torch.testing.assert_close(vmapped[k], looped[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [{"num_labels": 0}, {"filters": 0}])
def test_bad_sizes_are_refused(bad):
    kwargs = {"num_labels": 3, "filters": 4, **bad}
    with pytest.raises(ValueError, match="CAML needs"):
        CAML(torch.randn(10, 4), **kwargs)
