"""Red-team review of the RunConfig / build_record / tabular / audit refactor (8f462d1..).

Each test pins a privacy-relevant behaviour that the refactor had to keep exactly as it was at 33723a9
(the expected values below are what 33723a9 recorded for the same commands). Tiny sepsis-shaped data
from conftest; a few seconds in all.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from conftest import load_script, sepsis_args

from fusiondp.audit.controls import CORRECT
from fusiondp.audit.step_canaries import step_canary_audit
from fusiondp.experiment.config import OMITTED_WHEN_UNSET, RunConfig
from fusiondp.experiment.plan import privacy_spec_for, step_config_for
from fusiondp.experiment.records import EXPERIMENT_MODE
from fusiondp.experiment.results import load_records
from fusiondp.mechanism.accounting import epsilon_spent
from fusiondp.mechanism.modes import MODES, get_mode

pytestmark = pytest.mark.usefixtures("calibrate_once")

sepsis_script = load_script("train_fusiondp_sepsis")

C_H_PRIVATE = "C_h estimated from original sensitive values (--c_h_from_private)"
REALISED = "private sum divided by the realised batch size (|B| is not accounted for)"
SCALING_PRIVATE = "scaling statistics fitted on private rows (--scaling private)"

TRAINING_SCRIPTS = (
    "train_fusiondp_sepsis",
    "train_fusiondp_bank",
    "train_fusiondp_adult",
    "train_fusiondp_mimic",
)
FLAG_SETS = (
    [],
    ["--mode", "naive_fusion", "--beta", "0.3"],
    ["--mode", "naive_fusion_pub", "--mix_weight", "0.2", "--beta", "0.9"],
    [
        "--mode", "calibrated_fusion", "--secure_rng", "--c_h_from_private", "--divide_by_realised_batch",
        "--scaling", "private", "--neighbouring", "replace_one", "--per_example", "vmap",
        "--max_private_noise", "0", "--accountant", "pld", "--skip_existing",
    ],
    ["--optimizer", "momentum", "--momentum", "0.5", "--lr_schedule", "cosine", "--sensitive_scale", "2"],
)  # fmt: skip


# ------------------------------------------------------------------ RunConfig carries every flag


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: " ".join(f) or "defaults")
def test_settings_are_exactly_the_parsed_flags(script, flags):
    """settings() == vars(args) (as 33723a9 recorded it), and every typed field is the parsed value:
    a flag dropped by from_args would silently train with RunConfig's default."""
    args = load_script(script).get_args_parser().parse_args(flags)
    config = RunConfig.from_args(args)
    parsed = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in vars(args).items()}
    expected = {k: v for k, v in parsed.items() if not (k in OMITTED_WHEN_UNSET and v is None)}
    assert config.settings() == expected
    assert list(config.settings()) == list(expected)  # the recorded args keep the parser's order
    for name, value in vars(args).items():
        if name in config.extras:
            assert config.extras[name] == value
        else:
            assert getattr(config, name) == value, name


def test_a_parser_without_a_privacy_flag_is_refused():
    args = sepsis_args("unused")
    del args.secure_rng
    with pytest.raises(ValueError, match="secure_rng"):
        RunConfig.from_args(args)


# ------------------------------------------------------------------ the record's privacy fields


def _run(sepsis_dir, tmp_path, *flags):
    out = tmp_path / "r.jsonl"
    record = sepsis_script.main(sepsis_args(sepsis_dir, "--seed", "1", *flags, "--results_json", str(out)))
    (stored,) = load_records(out)
    assert stored["outside_guarantee"] == record["outside_guarantee"]
    return record


def test_every_reference_option_voids_the_guarantee_in_the_old_order(sepsis_dir, tmp_path):
    record = _run(
        sepsis_dir, tmp_path, "--mode", "fusiondp", "--c_h_from_private", "--divide_by_realised_batch",
        "--scaling", "private",
    )  # fmt: skip
    assert record["outside_guarantee"] == [C_H_PRIVATE, REALISED, SCALING_PRIVATE, EXPERIMENT_MODE]
    assert record["privacy_guarantee_holds"] is False
    assert record["rng"] == "seeded"
    assert record["c_h_source"].endswith("NOT PRIVATE")
    assert record["scaling"] == "private" and record["per_example_method"] == "bookkeeping"


def test_secure_dp_statistics_of_a_non_dp_mode(sepsis_dir, tmp_path):
    """sgd_hybrid on a DP scale: its ε is the statistics' ε; the RNG is recorded as secure, no seed."""
    record = _run(sepsis_dir, tmp_path, "--mode", "sgd_hybrid", "--scaling", "dp", "--secure_rng")
    assert record["privacy_guarantee_holds"] is True and record["outside_guarantee"] == []
    assert record["rng"] == "secure" and record["sigma"] is None
    assert (
        record["epsilon_spent"] == pytest.approx(record["scaling_epsilon_cost"])
        and record["epsilon_spent"] > 0
    )
    assert record["alpha_used"] is None and record["alpha_rule"] == "unused"
    assert {k for k in record if "seed" in k.lower()} == {"seed"}


def test_secure_rng_draws_every_secret_generator_from_os_entropy_and_records_none(
    sepsis_dir, tmp_path, monkeypatch
):
    import fusiondp.mechanism.randomness as randomness

    drawn = []
    real = randomness.secrets.token_bytes

    def counting(n):
        drawn.append(real(n))
        return drawn[-1]

    monkeypatch.setattr(randomness.secrets, "token_bytes", counting)
    record = _run(sepsis_dir, tmp_path, "--mode", "fusiondp", "--scaling", "dp", "--secure_rng")
    # DP statistics' noise, the sampler, the step noise: each a whole Mersenne Twister state (624 words).
    assert [len(b) for b in drawn] == [4 * 624] * 3
    assert record["rng"] == "secure" and record["privacy_guarantee_holds"] is True
    assert record["scaling_epsilon_cost"] > 0
    assert {k for k in record if "seed" in k.lower()} == {"seed"}


def test_seeded_run_draws_nothing_from_os_entropy(sepsis_dir, tmp_path, monkeypatch):
    import fusiondp.mechanism.randomness as randomness

    monkeypatch.setattr(randomness.secrets, "token_bytes", lambda n: pytest.fail("seeded run drew a secret"))
    monkeypatch.setattr(randomness.secrets, "randbits", lambda k: pytest.fail("seeded run drew a secret"))
    record = _run(sepsis_dir, tmp_path, "--mode", "dpsgd")
    assert record["outside_guarantee"] == [EXPERIMENT_MODE] and record["rng"] == "seeded"


# ------------------------------------------------------------------ weights the accountant never sees


@pytest.mark.parametrize("mode", sorted(MODES))
def test_mix_weight_reaches_only_naive_fusion_and_never_sigma(mode):
    base = RunConfig(mode=mode, epsilon=2.0, batch_size=32, epochs=1, alpha=0.7, beta=0.4)
    mixed = base.replace(mix_weight=0.2)
    spec = get_mode(mode)
    privacy = privacy_spec_for(base, spec, num_rows=400)
    assert privacy_spec_for(mixed, spec, num_rows=400) == privacy
    a = step_config_for(base, spec, privacy=privacy, c_h=1.0)
    b = step_config_for(mixed, spec, privacy=privacy, c_h=1.0)
    assert a.noise_multiplier == b.noise_multiplier == (privacy.noise_multiplier if privacy else 0.0)
    assert a.reg_weight == b.reg_weight  # β stays the regularizer weight wherever it is one
    if mixed.is_naive:
        assert (a.w_pub, a.w_priv) == pytest.approx((0.6, 0.4))  # --beta, the reference's meaning
        assert (b.w_pub, b.w_priv) == pytest.approx((0.8, 0.2))
        assert mixed.beta_meaning.startswith("unused")
    else:
        assert (a.w_pub, a.w_priv) == (b.w_pub, b.w_priv)


# ------------------------------------------------------------------ dpsgd reads no hybrid row


def test_dpsgd_never_reads_the_hybrid_rows(sepsis_frames, tmp_path):
    """Sample-level DP: the hybrid rows are functions of the training rows. Scrambling their
    sensitive values must leave a seeded dpsgd run bit-for-bit unchanged (fusiondp, control, moves)."""
    from conftest import write_sepsis_dir

    scrambled = {k: v.copy() for k, v in sepsis_frames.items()}
    hybrid = scrambled["hybrid"]
    for col in ("Age", "HospAdmTime", "ICULOS", "Gender"):
        hybrid[col] = hybrid[col].sample(frac=1.0, random_state=3).to_numpy() * 1.7 + 5
    a_dir = write_sepsis_dir(tmp_path / "a", sepsis_frames)
    b_dir = write_sepsis_dir(tmp_path / "b", scrambled)
    logs = {}
    for mode in ("dpsgd", "fusiondp"):
        for name, folder in (("a", a_dir), ("b", b_dir)):
            logs[mode, name] = sepsis_script.main(sepsis_args(folder, "--mode", mode, "--seed", "2"))[
                "epochs_log"
            ]
    assert logs["dpsgd", "a"] == logs["dpsgd", "b"]
    assert logs["fusiondp", "a"] != logs["fusiondp", "b"]  # the change is real for a mode that reads them


# ------------------------------------------------------------------ the audit sees a broken package step


@pytest.mark.parametrize("broken", ["add_noise", "clip"])
def test_step_audit_of_the_package_step_flags_a_break_inside_the_package(broken, monkeypatch):
    """The named controls are hand-built variants; this breaks the package's OWN step (as the old
    patched controls did) and checks that the CORRECT variant, which training's step is, is caught."""
    import fusiondp.mechanism.step as step

    if broken == "add_noise":
        monkeypatch.setattr(step, "add_noise", lambda summed, *, std, generator: summed)
    else:
        real = step.clipped_private_sum

        def unclipped(model, x, ref, y, *, cfg, loss_fn):
            return real(model, x, ref, y, cfg=dataclasses.replace(cfg, max_grad_norm=1e9), loss_fn=loss_fn)

        monkeypatch.setattr(step, "clipped_private_sum", unclipped)
    setting = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 400}
    claimed = epsilon_spent(**setting, delta=1e-5)
    audit = step_canary_audit(
        **setting, max_grad_norm=1.0, claimed_epsilon=claimed, delta=1e-5, canaries=2000, guesses=400,
        variant=CORRECT,
    )  # fmt: skip
    assert audit["correct"] >= 390 and audit["epsilon_lower"] > 2 * claimed


# ------------------------------------------------------------------ two record fixes from this review


@pytest.mark.parametrize("mode", ["fusiondp", "dpsgd", "sgd_hybrid"])
def test_mix_weight_outside_naive_fusion_is_refused(mode):
    with pytest.raises(ValueError, match="naive fusion's mixing weight"):
        RunConfig(mode=mode, epsilon=2.0, batch_size=32, epochs=1, mix_weight=0.2).validate()


def test_a_nominal_guarantee_that_does_not_hold_says_so(sepsis_dir, tmp_path):
    # sgd_hybrid's nominal guarantee is "original values never read"; with --scaling private its
    # evaluation scale reads them, and the record's guarantee must not claim otherwise.
    record = _run(sepsis_dir, tmp_path, "--mode", "sgd_hybrid", "--scaling", "private")
    assert record["privacy_guarantee_holds"] is False
    assert "does not hold for this run" in record["guarantee"]
    clean = _run(sepsis_dir, tmp_path / "clean", "--mode", "sgd_hybrid")
    assert "does not hold" not in clean["guarantee"]
