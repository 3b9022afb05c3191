"""Public pretraining (``--pretrain_epochs``) and the pretrain_dpsgd baseline (plain SGD on the hybrid
rows, then DP-SGD on the original rows): the pretraining phase is sgd_hybrid's loop, reads no original
sensitive value, and keeps only feature-level guarantees; pretrain_dpsgd's DP phase is calibrated for
replace-one (sensitivity 2C) like naive_fusion."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import load_script, prepare_sepsis_views, sepsis_args, write_sepsis_dir
from test_invariance import _scrambled

from fusiondp.datasets import sepsis
from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.loop import BatchSampler, public_pretraining
from fusiondp.experiment.plan import privacy_spec_for, step_config_for
from fusiondp.experiment.search import PRETRAINING, search_space
from fusiondp.mechanism.accounting import REPLACE_ONE, ZERO_OUT
from fusiondp.mechanism.modes import MODES, get_mode
from fusiondp.mechanism.step import StepConfig
from fusiondp.models import binary_bce

script = load_script("train_fusiondp_sepsis")
report = load_script("scripts.privacy_report")


def _run(data_dir, *flags):
    return script.main(sepsis_args(data_dir, "--epsilon", "2", *flags))


def test_pretraining_phase_is_exactly_sgd_hybrid(tmp_path, sepsis_frames):
    data_dir = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    hybrid = _run(data_dir, "--mode", "sgd_hybrid", "--epochs", "2", "--lr", "0.2")
    warm = _run(data_dir, "--mode", "pretrain_dpsgd", "--pretrain_epochs", "2", "--pretrain_lr", "0.2")
    pre = warm["public_pretraining"]
    assert pre["steps"] == hybrid["steps"] and pre["view"] == "hybrid" and pre["lr"] == 0.2
    # Same model init, same batches, same updates: every per-epoch metric equal to the last digit.
    assert pre["log"] == hybrid["epochs_log"]
    # ...and the DP phase really ran after it (on the original rows, with noise).
    assert warm["sigma"] > 0 and warm["epochs_log"] != hybrid["epochs_log"]


class _NoOriginal:
    """A view of the training data that fails the test if anything asks for the original view."""

    def __init__(self, data):
        self._data = data

    def __getattr__(self, name):
        return getattr(self._data, name)

    def batch(self, views, rows):
        assert "original" not in views, f"public pretraining asked for {views}"
        return self._data.batch(views, rows)


def test_public_pretraining_never_reads_original_rows(sepsis_frames):
    data = prepare_sepsis_views(sepsis_frames, stats_from="val")[0]
    torch.manual_seed(0)
    model = sepsis.build_model(data.num_features)
    cfg = StepConfig(lr=0.1, w_pub=1.0, w_priv=0.0)
    log, _ = public_pretraining(
        model,
        _NoOriginal(data),
        cfg=cfg,
        steps=12,
        epochs=2,
        batch_size=32,
        sampler=BatchSampler(data.num_rows, seed=3),
        loss_fn=binary_bce,
        evaluate=data.evaluate,
        progress=False,
    )
    assert [e["step"] for e in log] == [6, 12]


@pytest.mark.parametrize("bad", [{"private_loss": "full", "w_priv": 1.0}, {"noise_multiplier": 1.0}])
def test_public_pretraining_refuses_a_private_step_config(sepsis_frames, bad):
    data = prepare_sepsis_views(sepsis_frames, stats_from="val")[0]
    cfg = dataclasses.replace(StepConfig(lr=0.1, w_pub=1.0, w_priv=0.0), **bad)
    with pytest.raises(ValueError, match="no private term and no noise"):
        public_pretraining(
            sepsis.build_model(data.num_features), data, cfg=cfg, steps=1, epochs=1, batch_size=8,
            sampler=BatchSampler(data.num_rows, seed=0), loss_fn=binary_bce, evaluate=data.evaluate,
        )  # fmt: skip


def test_scrambled_originals_leave_pretraining_bit_identical_and_move_the_dp_phase(tmp_path, sepsis_frames):
    a = _run(
        write_sepsis_dir(tmp_path / "a", sepsis_frames), "--mode", "pretrain_dpsgd", "--pretrain_epochs", "2"
    )
    b = _run(
        write_sepsis_dir(tmp_path / "b", _scrambled(sepsis_frames)),
        "--mode",
        "pretrain_dpsgd",
        "--pretrain_epochs",
        "2",
    )
    assert a["public_pretraining"]["log"] == b["public_pretraining"]["log"]
    assert a["epochs_log"] != b["epochs_log"]  # negative control: the DP phase does read the originals


def test_fusiondp_warm_start_at_alpha_zero_is_invariant_to_the_originals(tmp_path, sepsis_frames):
    # α = 0: only public paths (pretraining, the hybrid public term) move the model, which must then
    # not depend on the original sensitive values at all.
    flags = ("--mode", "fusiondp", "--alpha", "0", "--pretrain_epochs", "1", "--beta", "0")
    a = _run(write_sepsis_dir(tmp_path / "a", sepsis_frames), *flags)
    b = _run(write_sepsis_dir(tmp_path / "b", _scrambled(sepsis_frames)), *flags)
    assert a["epochs_log"] == b["epochs_log"]
    assert a["c_h_source"] == "unused" or "after public pretraining" in a["c_h_source"]


def test_fusiondp_warm_start_estimates_c_h_after_pretraining(tmp_path, sepsis_frames):
    data_dir = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    warm = _run(data_dir, "--mode", "fusiondp", "--pretrain_epochs", "1")
    cold = _run(data_dir, "--mode", "fusiondp")
    assert warm["c_h_source"] == "estimated from hybrid rows after public pretraining (public)"
    assert cold["c_h_source"] == "estimated from hybrid rows at initialisation (public)"
    assert warm["neighbouring_relation"] == cold["neighbouring_relation"] == ZERO_OUT
    assert warm["sigma"] == cold["sigma"]  # pretraining is public: the same noise for the same budget


def test_pretrain_dpsgd_is_replace_one_with_naive_fusions_sigma():
    common = dict(epsilon=1.0, batch_size=128, epochs=13, max_grad_norm=1.8)
    spec = privacy_spec_for(
        RunConfig(mode="pretrain_dpsgd", **common), get_mode("pretrain_dpsgd"), num_rows=13781
    )
    naive = privacy_spec_for(
        RunConfig(mode="naive_fusion", **common), get_mode("naive_fusion"), num_rows=13781
    )
    dpsgd = privacy_spec_for(RunConfig(mode="dpsgd", **common), get_mode("dpsgd"), num_rows=13781)
    assert spec.neighbouring_relation == REPLACE_ONE and spec.accountant == "pld"
    assert spec.noise_multiplier == naive.noise_multiplier > dpsgd.noise_multiplier
    assert spec.epsilon_spent <= 1.0 + 1e-9
    # The DP phase is dpsgd's step: the full loss on original rows, weight 1, no public term.
    cfg = step_config_for(
        RunConfig(mode="pretrain_dpsgd", **common), get_mode("pretrain_dpsgd"), privacy=spec, c_h=None
    )
    ref = step_config_for(RunConfig(mode="dpsgd", **common), get_mode("dpsgd"), privacy=spec, c_h=None)
    assert cfg == ref and (cfg.w_pub, cfg.w_priv, cfg.private_loss) == (0.0, 1.0, "full")


def test_pretrain_dpsgd_record_and_report_state_the_relation_and_the_pretraining(tmp_path, sepsis_frames):
    record = _run(write_sepsis_dir(tmp_path / "d", sepsis_frames), "--mode", "pretrain_dpsgd")
    assert record["public_pretraining"]["epochs"] == 1.0  # unset: --epochs (1 in the quick run)
    assert record["neighbouring_relation"] == REPLACE_ONE
    assert "No sample-level guarantee" in record["guarantee"] and "pretraining" in record["guarantee"]
    text = report.report(record)
    assert "Public pretraining: 1 epoch(s)" in text and "no sample-level guarantee holds" in text


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--mode", "dpsgd", "--pretrain_epochs", "2"], "use --mode pretrain_dpsgd"),
        (["--mode", "sgd_hybrid", "--pretrain_epochs", "2"], "plain SGD on one view already"),
        (["--mode", "feature-dp", "--pretrain_epochs", "2"], "stands for training without the imputations"),
        (["--mode", "pretrain_dpsgd", "--pretrain_epochs", "0"], "--pretrain_epochs must be > 0"),
        (["--mode", "fusiondp", "--pretrain_epochs", "-1"], "--pretrain_epochs must be >= 0"),
        (["--mode", "fusiondp", "--pretrain_lr", "0.1"], "give --pretrain_epochs > 0"),
        (["--mode", "pretrain_dpsgd", "--pretrain_lr", "0"], "--pretrain_lr must be > 0"),
    ],
)
def test_bad_pretraining_flags_are_refused_with_the_value(tmp_path, sepsis_frames, flags, message):
    with pytest.raises(ValueError, match=message.replace("-", r"\-")):
        _run(write_sepsis_dir(tmp_path / "d", sepsis_frames), *flags)


def test_only_feature_level_dp_modes_allow_pretraining():
    allowed = {name for name, spec in MODES.items() if spec.allows_pretraining}
    # Not dpsgd (sample-level), not the non-DP modes, not the noise-view baselines (no imputations).
    assert allowed == {"naive_fusion", "pretrain_dpsgd", "calibrated_fusion", "fusiondp"}


def test_search_spaces_carry_pretraining_where_asked():
    assert PRETRAINING.items() <= search_space(sepsis, "pretrain_dpsgd").items()
    assert "pretrain_epochs" not in search_space(sepsis, "fusiondp")
    assert PRETRAINING.items() <= search_space(sepsis, "fusiondp", pretraining=True).items()
    with pytest.raises(ValueError, match="tune pretrain_dpsgd for a warm-started DP-SGD"):
        search_space(sepsis, "dpsgd", pretraining=True)
