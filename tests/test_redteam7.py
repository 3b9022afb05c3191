"""Seventh review (a helper attacking ``--alpha_warmup``, commit e51a024; docs/privacy.md §5).

Probes: the privacy argument holds (the noise stream is the mechanism's whatever the weight, a zero
weight leaves the update independent of the originals, the schedule depends on the step index and T
only and pretraining has none, bad values are refused everywhere). Findings, fixed: the ramp now
reaches α (it stopped at α·(T−1)/T and gave T = 1 runs no private term), ``fusion_step`` refuses a
bad per-step weight, tune.py refuses flags after ``--`` that a studied mode would refuse, and the
report gives the ramp in steps.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO, load_script, sepsis_args, write_sepsis_dir
from test_alpha_warmup import _cfg as _warmup_cfg
from test_step import _batch, _model

import fusiondp.experiment.loop as loop_module
from fusiondp.mechanism.optim import warmed_up_weight
from fusiondp.mechanism.step import StepConfig, fusion_step, trainable_params
from fusiondp.models import binary_bce

script = load_script("train_fusiondp_sepsis")
report = load_script("scripts.privacy_report")


def _cfg(**changes) -> StepConfig:
    """test_alpha_warmup's step configuration, with noise on."""
    return _warmup_cfg(**{"noise_multiplier": 1.3, **changes})


def _params(model):
    return {k: p.detach().clone() for k, p in trainable_params(model).items()}


# ----------------------------------------------------------------------------------------------- probes


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("rows", [0, 5])
def test_probe_noise_stream_same_at_weight_0_and_1_even_empty_and_secure(secure, rows):
    x, x_ref, y = _batch(rows, torch.float32)
    states = []
    for weight in (0.0, 1.0):
        gen = torch.Generator().manual_seed(11)
        fusion_step(
            _model(torch.float32, dropout=0.3), x_public=x_ref, y_public=y, x_private=x, x_reference=x_ref,
            y_private=y, cfg=_cfg(secure_streams=secure), loss_fn=binary_bce, generator=gen, w_priv=weight,
        )  # fmt: skip
        states.append(gen.get_state())
    assert torch.equal(states[0], states[1])
    assert not torch.equal(states[0], torch.Generator().manual_seed(11).get_state())


def test_probe_weight_0_update_does_not_depend_on_original_values():
    # Two different original batches, same public batch, noise on, dropout on: at weight 0 the model
    # after the step (and the global RNG the public term uses next) must be bit-identical.
    x, x_ref, y = _batch(9, torch.float32)
    x_other = x.clone()
    x_other[:, :3] += 5.0  # other sensitive values
    outs = []
    for xp in (x, x_other):
        torch.manual_seed(123)
        model = _model(torch.float32, dropout=0.3)
        torch.manual_seed(5)
        fusion_step(
            model, x_public=x_ref, y_public=y, x_private=xp, x_reference=x_ref, y_private=y,
            cfg=_cfg(), loss_fn=binary_bce, generator=torch.Generator().manual_seed(3), w_priv=0.0,
        )  # fmt: skip
        outs.append((_params(model), torch.random.get_rng_state()))
    for k in outs[0][0]:
        assert torch.equal(outs[0][0][k], outs[1][0][k])
    assert torch.equal(outs[0][1], outs[1][1])


def _spy(monkeypatch):
    calls = []
    real = loop_module.fusion_step

    def spy(model, **kw):
        calls.append((kw["cfg"], kw.get("w_priv"), None if kw["x_private"] is None else len(kw["x_private"])))
        return real(model, **kw)

    monkeypatch.setattr(loop_module, "fusion_step", spy)
    return calls


def test_probe_schedule_is_step_and_T_only_and_pretraining_has_none(monkeypatch, tmp_path, sepsis_frames):
    # Two seeds (different realised Poisson batches): the same weights, the formula's, starting at the DP
    # phase's own step 0 after public pretraining (whose steps carry no private term and weight 0).
    data_dir = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    seqs = []
    for seed in ("1", "2"):
        calls = _spy(monkeypatch)
        record = script.main(sepsis_args(
            data_dir, "--mode", "fusiondp", "--epsilon", "2", "--epochs", "2", "--alpha", "1.5",
            "--alpha_warmup", "0.4", "--pretrain_epochs", "1", "--seed", seed,
        ))  # fmt: skip
        pre = [c for c in calls if c[0].private_loss is None]
        dp = [c for c in calls if c[0].private_loss == "difference"]
        assert len(pre) == record["public_pretraining"]["steps"] and len(dp) == record["steps"]
        assert all(c[1] == 0.0 and c[0].alpha_warmup == 0.0 for c in pre)
        T = record["steps"]
        assert [c[1] for c in dp] == [1.5 * min(1.0, (t + 1) / math.ceil(0.4 * T)) for t in range(T)]
        seqs.append(([c[1] for c in dp], [c[2] for c in dp]))
        monkeypatch.undo()
    assert seqs[0][0] == seqs[1][0] and seqs[0][1] != seqs[1][1]


def test_probe_scope_adam_secure_run_with_warmup(tmp_path, sepsis_frames):
    record = script.main(sepsis_args(
        write_sepsis_dir(tmp_path / "d", sepsis_frames), "--mode", "calibrated_fusion", "--epsilon", "2",
        "--alpha_warmup", "0.5", "--private_scope", "sensitive_inputs", "--optimizer", "adam", "--secure_rng",
    ))  # fmt: skip
    assert record["alpha_warmup"] == 0.5 and record["private_scope"] == "sensitive_inputs"


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "-0.1", "1.0000001"])
def test_probe_cli_refuses_bad_values(tmp_path, sepsis_frames, bad):
    with pytest.raises(ValueError, match="alpha_warmup"):
        script.main(sepsis_args(write_sepsis_dir(tmp_path / "d", sepsis_frames), f"--alpha_warmup={bad}"))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1, 1.5])
def test_probe_step_config_and_schedule_refuse_bad_values(bad):
    with pytest.raises(ValueError):
        _cfg(alpha_warmup=bad)
    with pytest.raises(ValueError):
        warmed_up_weight(1.0, warmup=bad, step=0, steps=10)


# ------------------------------------------------------------------------------------- findings (fixed)


def test_full_warmup_reaches_alpha():
    # It gave the last step (t = T-1) alpha·(T-1)/T, and a T = 1 run weight 0 on its only step.
    T = 10
    assert warmed_up_weight(2.0, warmup=1.0, step=T - 1, steps=T) == 2.0
    assert warmed_up_weight(2.0, warmup=0.5, step=0, steps=1) == 2.0


@pytest.mark.parametrize(
    "cfg_changes,w_priv",
    [
        ({}, math.nan),
        ({}, -1.0),
        ({}, math.inf),
        ({"private_loss": "full", "w_pub": 0.0, "w_priv": 1.0}, 0.25),
    ],
)
def test_fusion_step_refuses_a_bad_per_step_weight(cfg_changes, w_priv):
    # A direct call could scale DP-SGD's ('full') term or pass nan/inf/negative.
    x, x_ref, y = _batch(6)
    with pytest.raises(ValueError):
        fusion_step(
            _model(), x_public=x_ref, y_public=y, x_private=x, x_reference=x_ref, y_private=y,
            cfg=_cfg(**cfg_changes), loss_fn=binary_bce, generator=torch.Generator(), w_priv=w_priv,
        )  # fmt: skip


def test_tune_refuses_passthrough_flags_a_studied_mode_would_refuse():
    # `tune.py ... -- --alpha_warmup 0.5` with the default modes: every dpsgd / naive_fusion /
    # pretrain_dpsgd trial died at its start (RunConfig.validate).
    tune = load_script("scripts.tune")
    args = tune.parse_args(
        ["--dataset", "sepsis", "--epsilon", "2", "--results", "x", "--", "--alpha_warmup", "0.5"]
    )
    tune.resolve_modes(args)
    assert "dpsgd" in args.modes
    parser = tune.train_parser(REPO / "train_fusiondp_sepsis.py")
    with pytest.raises(SystemExit, match="mode dpsgd: --alpha_warmup ramps up the split modes"):
        tune.check_passthrough(args, parser)
    args.modes = ["fusiondp", "feature-dp"]  # the split modes take it
    tune.check_passthrough(args, parser)


def test_report_states_the_ramp_in_steps():
    # It said "over the first 0.5 of the steps"; now the ramp's length in steps (ceil(0.5·T) = 50 of T = 100).
    record = {"mode": "fusiondp", "sigma": None, "alpha_used": 2.0, "alpha_warmup": 0.5, "steps": 100}
    text = report.report(record)
    assert "alpha rises linearly to 2 over the first 50 of the 100 steps" in text
