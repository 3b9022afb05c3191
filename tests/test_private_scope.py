"""``--private_scope sensitive_inputs``: the split modes' difference term restricted to the input layer's
weights on the sensitive columns. Each per-example gradient is masked BEFORE clipping (so its clipped
norm ≤ C is the norm of what is released), the noise is drawn on the mask's coordinates only, and the
rest of the private gradient is exactly zero: the same sensitivity, the same σ."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script, sepsis_args, write_sepsis_dir
from test_step import _batch, _model

from fusiondp.experiment.config import RunConfig
from fusiondp.mechanism.regularizer import consistency_penalty
from fusiondp.mechanism.scope import input_layer, mask_size, sensitive_input_mask
from fusiondp.mechanism.step import StepConfig, per_example_gradients, private_gradient, trainable_params
from fusiondp.models import binary_bce

SENSITIVE = [0, 1, 2]  # test_step._batch imputes the first three columns


def _mask(model):
    return sensitive_input_mask(model, num_features=7, sensitive_features=SENSITIVE)


def _cfg(model, **changes):
    base = dict(lr=0.1, w_pub=1.0, w_priv=1.0, max_grad_norm=0.05, private_loss="difference",
                expected_batch_size=6.0, per_example="vmap", private_scope="sensitive_inputs",
                private_mask=_mask(model))  # fmt: skip
    return StepConfig(**{**base, **changes})


def _masked_loop(model, x, x_ref, y, *, mask, C, reg_weight=0.0, c_h=None):
    """Reference in float64: one backward per example, masked, clipped in Python, summed."""
    params = trainable_params(model)
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(len(x)):
        logits, h = model(x[i : i + 1])
        logits_r, h_r = model(x_ref[i : i + 1])
        loss = binary_bce(logits, y[i : i + 1]).sum() - binary_bce(logits_r, y[i : i + 1]).sum()
        if reg_weight:
            loss = loss + reg_weight * consistency_penalty(h, h_r, c_h=c_h).sum()
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        grads = {k: g * mask[k] for k, g in grads.items()}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        factor = min(1.0, C / (float(norm) + 1e-6))
        total = {k: total[k] + factor * grads[k] for k in total}
    return total


def test_the_mask_covers_the_input_layers_sensitive_columns_only():
    model = _model()
    mask = _mask(model)
    name = input_layer(model, 7)
    assert mask_size(mask) == 8 * len(SENSITIVE)  # hidden width 8 × 3 sensitive inputs
    assert torch.equal(mask[f"{name}.weight"][:, SENSITIVE], torch.ones(8, 3, dtype=torch.float64))
    assert mask[f"{name}.weight"][:, 3:].abs().sum() == 0
    assert all(m.abs().sum() == 0 for k, m in mask.items() if k != f"{name}.weight")


@pytest.mark.parametrize("reg_weight", [0.0, 0.6])
def test_restricted_private_gradient_at_sigma_zero_equals_a_masked_float64_loop(reg_weight):
    model = _model()
    x, x_ref, y = _batch(6)
    cfg = _cfg(model, reg_weight=reg_weight, c_h=0.8 if reg_weight else None)
    got, _ = private_gradient(model, x, x_ref, y, cfg=cfg, loss_fn=binary_bce, generator=torch.Generator())
    want = _masked_loop(model, x, x_ref, y, mask=cfg.private_mask, C=cfg.max_grad_norm, reg_weight=reg_weight,
                        c_h=cfg.c_h)  # fmt: skip
    for k in want:
        torch.testing.assert_close(got[k], want[k] / 6.0, rtol=1e-10, atol=1e-12)


def test_masked_per_example_norms_are_clipped_and_noise_lives_on_the_mask_only():
    model = _model()
    x, x_ref, y = _batch(6)
    mask = _mask(model)
    per_example = per_example_gradients(model, x, x_ref, y, loss_fn=binary_bce)
    masked = torch.cat([(g * mask[k]).flatten(1) for k, g in per_example.items()], dim=1).norm(dim=1)
    assert (masked > 0.05).all()  # every example is clipped at C = 0.05, so the bound is tested
    cfg = _cfg(model, noise_multiplier=3.0)
    g = torch.Generator().manual_seed(0)
    noised, _ = private_gradient(model, x, x_ref, y, cfg=cfg, loss_fn=binary_bce, generator=g)
    empty, _ = private_gradient(model, x[:0], x_ref[:0], y[:0], cfg=cfg, loss_fn=binary_bce, generator=g)
    for k in noised:
        outside = mask[k] == 0
        assert noised[k][outside].abs().sum() == 0 and empty[k][outside].abs().sum() == 0, k
    inside = torch.cat([empty[k][mask[k] == 1] for k in empty])
    assert inside.numel() == 24 and inside.abs().min() > 0  # noise on every masked coordinate, every step
    # The released sum minus the noise is a sum of masked vectors each of norm <= C.
    clean, _ = private_gradient(model, x, x_ref, y, cfg=_cfg(model), loss_fn=binary_bce, generator=g)
    total = torch.sqrt(sum((v * 6.0).pow(2).sum() for v in clean.values()))
    assert total <= 6 * 0.05 + 1e-9


def test_a_zero_out_neighbour_contributes_exactly_nothing_when_restricted():
    model = _model()
    x, x_ref, y = _batch(4)
    x[2] = x_ref[2]  # row 2's original view equals its public one
    cfg = _cfg(model, expected_batch_size=1.0)
    one, _ = private_gradient(model, x[2:3], x_ref[2:3], y[2:3], cfg=cfg, loss_fn=binary_bce,
                              generator=torch.Generator())  # fmt: skip
    assert all(v.abs().sum() == 0 for v in one.values())


def test_step_config_refuses_a_mask_without_the_scope_or_on_bookkeeping():
    model = _model()
    with pytest.raises(ValueError, match="needs a private_mask exactly when"):
        StepConfig(lr=0.1, w_pub=1.0, w_priv=1.0, private_loss="difference", private_scope="sensitive_inputs")
    with pytest.raises(ValueError, match="vmap per-example path only"):
        _cfg(model, per_example="bookkeeping")


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(mode="dpsgd"), "has no such term"),
        (dict(mode="naive_fusion"), "has no such term"),
        (dict(mode="fusiondp", per_example="bookkeeping"), "use --per_example auto or vmap"),
        (dict(mode="fusiondp", private_scope="first_layer"), "must be one of"),
    ],
)
def test_bad_scope_settings_are_refused_naming_the_value(changes, message):
    config = RunConfig(private_scope="sensitive_inputs").replace(**changes)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_sepsis_run_records_the_scope_and_keeps_sigma(tmp_path, sepsis_frames):
    script = load_script("train_fusiondp_sepsis")
    data_dir = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    narrow = script.main(sepsis_args(data_dir, "--mode", "fusiondp", "--private_scope", "sensitive_inputs"))
    full = script.main(sepsis_args(data_dir, "--mode", "fusiondp"))
    assert narrow["private_scope"] == "sensitive_inputs" and "private_scope" not in full
    assert narrow["private_coordinates"] == 64 * 6  # sepsis: first layer 64 wide, 6 sensitive inputs
    assert narrow["sigma"] == full["sigma"] and narrow["per_example_method"] == "vmap"
    assert narrow["epochs_log"] != full["epochs_log"]


def test_input_layer_is_refused_when_the_model_does_not_start_with_one():
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Linear(5, 1))
    with pytest.raises(ValueError, match="first linear layer reads the 7 input features"):
        sensitive_input_mask(model, num_features=7, sensitive_features=[0])
