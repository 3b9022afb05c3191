"""``--alpha_warmup``: the split modes' private weight α rises from 0 over a fraction of the steps.

The weight is a public function of the step index, applied to the private term after its noise, so
the mechanism (clipping, σ, the noise drawn on every step) must be exactly the one without it; at
warm-up 0 the run must be the reference's to the last digit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import load_script, sepsis_args, write_sepsis_dir
from test_step import _batch, _loop_private_sum, _model

from fusiondp.experiment.config import RunConfig
from fusiondp.mechanism.optim import warmed_up_weight, warmup_steps
from fusiondp.mechanism.step import StepConfig, fusion_step, public_gradient, trainable_params
from fusiondp.models import binary_bce

script = load_script("train_fusiondp_sepsis")
report = load_script("scripts.privacy_report")


def _run(data_dir, *flags):
    return script.main(sepsis_args(data_dir, "--epsilon", "2", "--epochs", "2", *flags))


def test_weight_ramps_linearly_to_alpha_then_holds():
    alpha = 1.7
    assert warmed_up_weight(alpha, warmup=0.0, step=0, steps=10) is alpha  # the reference's float itself
    ramp = [warmed_up_weight(alpha, warmup=0.5, step=t, steps=10) for t in range(10)]
    assert ramp[4:] == [alpha] * 6  # reached at step ⌈F·T⌉ − 1 = 4
    assert ramp[:4] == pytest.approx([alpha * (t + 1) / 5 for t in range(4)], rel=1e-15)
    whole = [warmed_up_weight(alpha, warmup=1.0, step=t, steps=8) for t in range(8)]
    assert whole == pytest.approx([alpha * (t + 1) / 8 for t in range(8)], rel=1e-15) and whole[-1] == alpha
    assert (
        warmed_up_weight(alpha, warmup=0.5, step=0, steps=1) == alpha
    )  # a one-step run keeps its private term
    assert warmup_steps(0.35, steps=10) == 4 and warmup_steps(0.0, steps=10) == 0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"got {bad}"):
            warmed_up_weight(alpha, warmup=bad, step=0, steps=10)


def _cfg(**changes) -> StepConfig:
    base = StepConfig(
        lr=0.1, w_pub=1.0, w_priv=2.0, max_grad_norm=0.05, noise_multiplier=0.0,
        expected_batch_size=20.0, private_loss="difference",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("weight", [0.0, 0.3, 2.0])
def test_step_weight_scales_the_clipped_private_sum_as_a_float64_loop(weight):
    # At σ = 0 the update is g_pub + weight · Σ clip_C(∇L_i) / b: the loop's numbers, scaled after clipping.
    model = _model()
    x, x_ref, y = _batch(13)
    before = {k: p.detach().clone() for k, p in trainable_params(model).items()}
    g_pub = public_gradient(model, x_ref, y, loss_fn=binary_bce)
    expected_priv = _loop_private_sum(model, x, x_ref, y, C=0.05, reg_weight=0.0, c_h=None)
    fusion_step(
        model, x_public=x_ref, y_public=y, x_private=x, x_reference=x_ref, y_private=y,
        cfg=_cfg(max_param_norm=None), loss_fn=binary_bce, generator=torch.Generator(), w_priv=weight,
    )  # fmt: skip
    for (name, p), e in zip(trainable_params(model).items(), expected_priv, strict=True):
        update = g_pub[name] + weight * e / 20.0
        torch.testing.assert_close(p.detach(), before[name] - 0.1 * update, rtol=1e-10, atol=1e-12)


def test_noise_is_drawn_on_every_step_whatever_the_weight():
    # A zero weight must not skip the private term's draws: the noise stream (and σ) is the
    # mechanism's, not the schedule's.
    x, x_ref, y = _batch(13, torch.float32)
    states = []
    for weight in (0.0, 1.0):
        gen = torch.Generator().manual_seed(7)
        fusion_step(
            _model(torch.float32), x_public=x_ref, y_public=y, x_private=x, x_reference=x_ref, y_private=y,
            cfg=_cfg(noise_multiplier=1.3), loss_fn=binary_bce, generator=gen, w_priv=weight,
        )  # fmt: skip
        states.append(gen.get_state())
    assert torch.equal(states[0], states[1])
    assert not torch.equal(states[0], torch.Generator().manual_seed(7).get_state())


def test_warmup_zero_is_the_reference_run_and_unset_leaves_the_settings_alone(tmp_path, sepsis_frames):
    data_dir = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    plain = _run(data_dir, "--mode", "fusiondp")
    zero = _run(data_dir, "--mode", "fusiondp", "--alpha_warmup", "0")
    assert zero["epochs_log"] == plain["epochs_log"]
    assert "alpha_warmup" not in plain["args"] and zero["args"]["alpha_warmup"] == 0.0
    assert plain["alpha_warmup"] == 0.0


def test_warmup_keeps_sigma_moves_training_and_is_reported(tmp_path, sepsis_frames):
    data_dir = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    plain = _run(data_dir, "--mode", "fusiondp", "--alpha", "2", "--max_private_noise", "0")
    warm = _run(
        data_dir, "--mode", "fusiondp", "--alpha", "2", "--max_private_noise", "0", "--alpha_warmup", "0.5"
    )
    assert warm["sigma"] == plain["sigma"] and warm["epsilon_spent"] == plain["epsilon_spent"]
    assert warm["neighbouring_relation"] == plain["neighbouring_relation"]
    assert warm["alpha_used"] == plain["alpha_used"] and warm["alpha_warmup"] == 0.5
    assert warm["epochs_log"] != plain["epochs_log"]
    text = report.report(warm)
    ramp = -(-warm["steps"] // 2)
    assert (
        f"(--alpha_warmup 0.5): alpha rises linearly to 2 over the first {ramp} of the {warm['steps']} steps"
        in text
    )


def test_warmup_with_public_pretraining_runs(tmp_path, sepsis_frames):
    record = _run(
        write_sepsis_dir(tmp_path / "d", sepsis_frames),
        "--mode", "calibrated_fusion", "--alpha_warmup", "1", "--pretrain_epochs", "1",
    )  # fmt: skip
    assert record["alpha_warmup"] == 1.0 and record["public_pretraining"]["epochs"] == 1.0


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--mode", "dpsgd", "--alpha_warmup", "0.5"], "mode 'dpsgd' has no such weight"),
        (["--mode", "naive_fusion", "--alpha_warmup", "0.5"], "mode 'naive_fusion' has no such weight"),
        (["--mode", "sgd_ori", "--alpha_warmup", "0.5"], "mode 'sgd_ori' has no such weight"),
        (["--mode", "fusiondp", "--alpha_warmup", "1.5"], "in [0, 1]; got 1.5"),
        (["--mode", "fusiondp", "--alpha_warmup", "nan"], "in [0, 1]; got nan"),
    ],
)
def test_bad_warmup_is_refused_with_the_value(tmp_path, sepsis_frames, flags, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _run(write_sepsis_dir(tmp_path / "d", sepsis_frames), *flags)


def test_step_config_refuses_a_warmup_without_a_split_private_term():
    with pytest.raises(ValueError, match="private_loss is 'full'"):
        _cfg(private_loss="full", alpha_warmup=0.5)
    assert RunConfig(mode="fusiondp").alpha_warmup_used == 0.0
