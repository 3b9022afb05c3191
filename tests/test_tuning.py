"""The privacy cost of tuning (fusiondp.mechanism.tuning): Papernot & Steinke through dp-accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

from fusiondp.mechanism.accounting import RDP_ORDERS, REPLACE_ONE, calibrate_sigma
from fusiondp.mechanism.tuning import (
    RunSetting,
    TrialCount,
    calibrate_for_tuning,
    run_epsilon,
    run_event,
    tuned_epsilon,
)

# The sepsis reference: q = 128 / 13,781 (the release less the 512 support rows), 13 epochs, δ = 1e-5.
SEPSIS_Q, SEPSIS_STEPS, DELTA = 128 / 13_781, 1400, 1e-5


@pytest.fixture(scope="module")
def sepsis_sigma_eps2() -> float:
    return calibrate_sigma(
        epsilon=2.0,
        delta=DELTA,
        sample_rate=SEPSIS_Q,
        steps=SEPSIS_STEPS,
        accountant="rdp",
        relation="zero-out",
    )


@pytest.mark.parametrize(
    "distribution,expected",
    [("poisson", 4.26), ("geometric", 3.96), ("truncated_negative_binomial", 3.68), ("logarithmic", 3.37)],
)
def test_the_tuned_total_is_dp_accountings_repeat_and_select_under_rdp(
    sepsis_sigma_eps2, distribution, expected
):
    trials = TrialCount(distribution, mean=10, eta=0.5)
    setting = RunSetting(sepsis_sigma_eps2, SEPSIS_Q, SEPSIS_STEPS)
    reference = RdpAccountant(orders=RDP_ORDERS)
    reference.compose(dp_event.RepeatAndSelectDpEvent(run_event(setting), trials.mean, trials.shape))
    total = tuned_epsilon([setting], delta=DELTA, trials=trials)
    assert total == pytest.approx(reference.get_epsilon(DELTA), rel=1e-12)
    assert round(total, 2) == expected  # the figures for a run calibrated to ε = 2
    assert run_epsilon(setting, delta=DELTA) == pytest.approx(2.0, abs=0.01)


def test_several_candidate_settings_take_the_envelope_of_their_rdp_curves(sepsis_sigma_eps2):
    trials = TrialCount()
    small = RunSetting(sepsis_sigma_eps2, SEPSIS_Q, SEPSIS_STEPS)
    large = RunSetting(2.9, 4 * SEPSIS_Q, SEPSIS_STEPS // 4)
    both = tuned_epsilon([small, large, small], delta=DELTA, trials=trials)
    alone = [tuned_epsilon([s], delta=DELTA, trials=trials) for s in (small, large)]
    assert both >= max(alone) - 1e-9  # never below either candidate's own cost
    # ... and no more than composing both runs' curves (a looser, also valid, bound)
    composed = RdpAccountant(orders=RDP_ORDERS)
    event = dp_event.ComposedDpEvent([run_event(small), run_event(large)])
    composed.compose(dp_event.RepeatAndSelectDpEvent(event, trials.mean, trials.shape))
    assert both <= composed.get_epsilon(DELTA)


def test_sigma_calibrated_for_a_tuned_total_gives_that_total():
    trials = TrialCount("truncated_negative_binomial", mean=10, eta=0.5)
    (sigma,) = calibrate_for_tuning(
        [(SEPSIS_Q, SEPSIS_STEPS)], epsilon=2.0, delta=DELTA, trials=trials
    ).values()
    assert sigma == pytest.approx(1.58, abs=0.01)  # instead of 1.06 for one run at ε = 2
    total = tuned_epsilon([RunSetting(sigma, SEPSIS_Q, SEPSIS_STEPS)], delta=DELTA, trials=trials)
    assert 1.98 <= total <= 2.0


def test_calibration_of_several_candidates_keeps_the_envelope_within_budget():
    trials = TrialCount("geometric", mean=5)
    options = [(SEPSIS_Q, SEPSIS_STEPS), (4 * SEPSIS_Q, SEPSIS_STEPS // 4)]
    sigmas = calibrate_for_tuning(options, epsilon=4.0, delta=DELTA, trials=trials)
    settings = [RunSetting(s, q, t) for (q, t), s in sigmas.items()]
    assert 3.9 <= tuned_epsilon(settings, delta=DELTA, trials=trials) <= 4.0
    per_run = [run_epsilon(s, delta=DELTA) for s in settings]
    assert max(per_run) - min(per_run) < 0.02  # one common per-run budget: no candidate favoured


@pytest.mark.parametrize(
    "distribution", ["poisson", "geometric", "logarithmic", "truncated_negative_binomial"]
)
def test_k_is_drawn_from_the_distribution_accounted(distribution):
    trials = TrialCount(distribution, mean=10, eta=0.5)
    draws = np.array([trials.draw(np.random.default_rng(seed)) for seed in range(4000)])
    assert abs(draws.mean() - 10) < 0.6
    assert draws.min() >= (0 if distribution == "poisson" else 1)
    again = np.array([trials.draw(np.random.default_rng(seed)) for seed in range(4000)])
    assert (draws == again).all()  # the same seed draws the same K


def test_bad_tuning_settings_are_refused_with_the_value():
    with pytest.raises(ValueError, match=r"at least 1, got 0\.5"):
        TrialCount(mean=0.5)
    with pytest.raises(ValueError, match=r"unknown distribution .*'binomial'"):
        TrialCount("binomial")
    with pytest.raises(ValueError, match="0 < eta < inf, got 0"):
        TrialCount("truncated_negative_binomial", eta=0)
    with pytest.raises(ValueError, match="replace-one"):
        tuned_epsilon([RunSetting(1.0, 0.01, 100)], delta=DELTA, trials=TrialCount(), relation=REPLACE_ONE)
    assert TrialCount("poisson").shape == math.inf and TrialCount("logarithmic").shape == 0


# --------------------------------------------------------------------------- a trial's run and record


def test_an_honest_trial_is_calibrated_for_the_total_and_says_both_epsilons(sepsis_dir, tmp_path):
    from conftest import load_script, sepsis_args

    sepsis_script = load_script("train_fusiondp_sepsis")
    flags = ("--mode", "fusiondp", "--accountant", "rdp", "--tuning_protocol", "honest",
             "--tuning_study", "s/trial0", "--results_json", str(tmp_path / "r.jsonl"))  # fmt: skip
    record = sepsis_script.main(sepsis_args(sepsis_dir, *flags))
    assert record["tuning_protocol"] == "honest" and record["tuning_mean_trials"] == 10
    assert 1.98 <= record["epsilon_with_tuning"] <= record["epsilon"] == 2.0
    assert record["epsilon_spent"] < 1.2 and record["epsilon_per_run_rdp"] == pytest.approx(
        record["epsilon_spent"], abs=0.01
    )
    setting = RunSetting(record["sigma"], record["sample_rate"], record["steps"])
    assert (
        tuned_epsilon([setting], delta=record["delta"], trials=TrialCount()) == record["epsilon_with_tuning"]
    )
    report = load_script("scripts.privacy_report").report(record)
    assert "honest protocol" in report and f"{record['epsilon_with_tuning']:.3f} in total" in report


def test_an_idealised_trial_says_the_cost_of_tuning_is_not_counted(sepsis_dir):
    from conftest import load_script, sepsis_args

    sepsis_script = load_script("train_fusiondp_sepsis")
    record = sepsis_script.main(sepsis_args(sepsis_dir, "--mode", "dpsgd", "--tuning_protocol", "idealised"))
    assert record["epsilon_with_tuning"] is None and record["cost_of_tuning"].startswith("not counted")
    assert "NOT counted" in load_script("scripts.privacy_report").report(record)


@pytest.mark.parametrize(
    "flags,message",
    [
        (("--tuning_protocol", "honest"), "needs --accountant rdp"),
        (("--tuning_protocol", "honest", "--accountant", "rdp", "--mode", "naive_fusion"), "replace-one"),
        (
            ("--tuning_protocol", "honest", "--accountant", "rdp", "--tuning_mean_trials", "0"),
            "at least 1, got 0.0",
        ),
        (
            (
                "--tuning_trials",
                "geometric",
            ),
            "describe the honest protocol's K",
        ),
        (("--tuning_protocol", "honest", "--accountant", "rdp", "--mode", "sgd_ori"), "has none"),
    ],
)
def test_a_trial_with_impossible_tuning_flags_is_refused(sepsis_dir, flags, message):
    from conftest import load_script, sepsis_args

    sepsis_script = load_script("train_fusiondp_sepsis")
    with pytest.raises(ValueError, match=message):
        sepsis_script.main(sepsis_args(sepsis_dir, *flags))
