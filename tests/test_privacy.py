"""Calibration and accounting: Opacus (rdp, prv) and dp-accounting (pld), per neighbouring relation."""

import json

import pytest
from conftest import load_script, sepsis_args
from dp_accounting import dp_event, pld
from dp_accounting.privacy_accountant import NeighboringRelation
from opacus.accountants.utils import get_noise_multiplier

from fusiondp.mechanism.accounting import (
    ACCOUNTANTS,
    RDP_ORDERS,
    REPLACE_ONE,
    ZERO_OUT,
    calibrate_noise,
    calibrate_sigma,
    calibration_plan,
    epsilon_for,
    epsilon_spent,
    feature_epsilons,
    make_privacy_spec,
    num_steps,
)

sepsis_script = load_script("train_fusiondp_sepsis")


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("epsilon", [0.5, 2.0])
@pytest.mark.filterwarnings("ignore:Optimal order")
def test_sigma_matches_opacus_get_noise_multiplier(accountant, epsilon):
    q, steps, delta = 128 / 14293, 1452, 1e-5
    ours = calibrate_noise(epsilon=epsilon, delta=delta, sample_rate=q, steps=steps, accountant=accountant)
    kwargs = {"alphas": RDP_ORDERS} if accountant == "rdp" else {}
    theirs = get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=delta,
        sample_rate=q,
        steps=steps,
        accountant=accountant,
        **kwargs,
    )
    assert ours == pytest.approx(theirs, rel=1e-12)


@pytest.mark.filterwarnings("ignore:Optimal order")
def test_default_rdp_orders_give_the_same_sigma_where_opacus_defaults_suffice():
    # At the sepsis reference setting Opacus's own default orders already contain the optimum.
    q, steps = 128 / 14293, 1452
    ours = calibrate_noise(epsilon=2.0, delta=1e-5, sample_rate=q, steps=steps)
    theirs = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=q, steps=steps)
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours == pytest.approx(1.0474, abs=1e-3)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_privacy_spec_spends_at_most_the_target(accountant):
    spec = make_privacy_spec(
        epsilon=2.0, delta=1e-5, batch_size=128, num_rows=14293, epochs=13, accountant=accountant
    )
    assert spec.steps == round(13 * 14293 / 128) == 1452
    assert spec.sample_rate == pytest.approx(128 / 14293)
    assert 2.0 - 0.02 <= spec.epsilon_spent <= 2.0
    assert spec.epsilon_spent == epsilon_spent(
        noise_multiplier=spec.noise_multiplier,
        sample_rate=spec.sample_rate,
        steps=spec.steps,
        delta=1e-5,
        accountant=accountant,
    )
    # More noise, less epsilon: the accountant is really consulted.
    assert (
        epsilon_spent(
            noise_multiplier=2 * spec.noise_multiplier,
            sample_rate=spec.sample_rate,
            steps=spec.steps,
            delta=1e-5,
            accountant=accountant,
        )
        < 1.0
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"epsilon": 0.0}, "--epsilon must be a finite number > 0, got 0.0"),
        ({"epsilon": -1.0}, "got -1.0"),
        ({"delta": 0.0}, "--delta must lie strictly between 0 and 1, got 0.0"),
        ({"delta": 1.5}, "got 1.5"),
        ({"batch_size": 500, "num_rows": 100}, r"q = batch_size / N = 500 / 100 = 5 must lie in \(0, 1\]"),
        ({"epochs": 0.001}, "T = round"),
    ],
)
def test_bad_budgets_are_rejected_with_the_value(kwargs, match):
    base = {
        "epsilon": 1.0,
        "delta": 1e-5,
        "batch_size": 10,
        "num_rows": 100,
        "epochs": 1,
        "accountant": "rdp",
    }
    with pytest.raises(ValueError, match=match):
        make_privacy_spec(**{**base, **kwargs})


def test_unknown_accountant():
    with pytest.raises(ValueError, match="unknown accountant 'gdpx'"):
        calibrate_noise(epsilon=1, delta=1e-5, sample_rate=0.1, steps=10, accountant="gdpx")


def test_num_steps_rounds():
    assert num_steps(epochs=2.5, num_rows=1000, batch_size=64) == round(2.5 * 1000 / 64)


# Pinned (q, T, sigma) -> zero-out epsilon at delta = 1e-5 per accountant, and the replace-one epsilon
# (PLD). The first is the sepsis reference (sigma calibrated by RDP for eps = 2), the second bank-like.
PINNED = [
    (128 / 14293, 1452, 1.0474, {"rdp": 1.9950, "prv": 1.7865, "pld": 1.7774}, 2.8881),
    (128 / 30000, 2344, 0.8, {"rdp": 2.4040, "prv": 1.9075, "pld": 1.8987}, 2.6092),
    (0.01, 1000, 2.0, {"rdp": 0.6862, "prv": 0.6321, "pld": 0.6238}, 1.2063),
    (0.05, 200, 1.0, {"rdp": 5.3676, "prv": 4.7762, "pld": 4.7660}, 7.1070),
]


@pytest.mark.parametrize("q,steps,sigma,expected,replace", PINNED)
def test_accountants_agree_within_documented_tolerances(q, steps, sigma, expected, replace):
    """Documented in docs/privacy.md: PRV and PLD within 0.02 (1%) of each other, both tighter than
    RDP, and RDP at most 30% above PLD on these settings."""
    eps = {
        a: epsilon_for(
            noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant=a, relation=ZERO_OUT
        )
        for a in ACCOUNTANTS
    }
    for a in ACCOUNTANTS:
        assert eps[a] == pytest.approx(expected[a], abs=2e-3)
    assert abs(eps["prv"] - eps["pld"]) <= max(0.02, 0.01 * eps["pld"])
    assert eps["pld"] <= eps["rdp"] and eps["prv"] <= eps["rdp"]
    assert eps["rdp"] <= 1.3 * eps["pld"]
    rep = epsilon_for(
        noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant="pld", relation=REPLACE_ONE
    )
    assert rep == pytest.approx(replace, abs=2e-3)


def test_zero_out_is_add_remove_in_dp_accounting():
    """REPLACE_SPECIAL (zero-out) and ADD_OR_REMOVE_ONE give the same PLD epsilon."""
    common = {"noise_multiplier": 1.0, "sample_rate": 0.02, "steps": 300, "delta": 1e-5, "accountant": "pld"}
    assert epsilon_for(relation=ZERO_OUT, **common) == epsilon_for(relation="add/remove", **common)


@pytest.mark.parametrize("sigma", [0.6, 1.0, 3.0])
@pytest.mark.parametrize("q,steps", [(0.01, 100), (0.2, 50)])
def test_replace_one_never_smaller_than_zero_out(sigma, q, steps):
    common = {"noise_multiplier": sigma, "sample_rate": q, "steps": steps, "delta": 1e-5}
    replace = epsilon_for(accountant="pld", relation=REPLACE_ONE, **common)
    for accountant in ("pld", "prv"):
        assert replace >= epsilon_for(accountant=accountant, relation=ZERO_OUT, **common)


@pytest.mark.parametrize(
    "accountant,relation", [("rdp", ZERO_OUT), ("prv", ZERO_OUT), ("pld", ZERO_OUT), ("pld", REPLACE_ONE)]
)
@pytest.mark.parametrize("epsilon,q,steps", [(0.5, 0.01, 400)])
def test_calibrated_sigma_never_overshoots(accountant, relation, epsilon, q, steps):
    """The sigma found spends at most the target (by the same accountant), and at most 0.01 less."""
    sigma = calibrate_sigma(
        epsilon=epsilon, delta=1e-5, sample_rate=q, steps=steps, accountant=accountant, relation=relation
    )
    common = {"sample_rate": q, "steps": steps, "delta": 1e-5, "accountant": accountant, "relation": relation}
    spent = epsilon_for(noise_multiplier=sigma, **common)
    assert epsilon - 0.011 <= spent <= epsilon
    assert epsilon_for(noise_multiplier=0.97 * sigma, **common) > spent  # really on the curve


def test_replace_one_spec_meets_its_target_through_an_independent_pld():
    spec = make_privacy_spec(
        epsilon=2.0,
        delta=1e-5,
        batch_size=128,
        num_rows=14293,
        epochs=13,
        accountant="pld",
        relation=REPLACE_ONE,
    )
    assert spec.accountant == "pld" and spec.neighbouring_relation == REPLACE_ONE
    assert spec.epsilon_replace_one == spec.epsilon_spent
    acct = pld.PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)  # finer discretisation
    acct.compose(
        dp_event.PoissonSampledDpEvent(spec.sample_rate, dp_event.GaussianDpEvent(spec.noise_multiplier)),
        spec.steps,
    )
    assert 1.98 <= acct.get_epsilon(1e-5) <= 2.0 + 1e-3
    zero_out = make_privacy_spec(
        epsilon=2.0, delta=1e-5, batch_size=128, num_rows=14293, epochs=13, accountant="pld"
    )
    assert spec.noise_multiplier > 1.2 * zero_out.noise_multiplier  # sensitivity 2C needs more noise
    assert zero_out.epsilon_replace_one > 2.5  # the same noise is worth a larger replace-one epsilon
    assert zero_out.epsilon_zero_out == zero_out.epsilon_spent and zero_out.accountant_zero_out == "pld"


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_replace_one_with_opacus_accountants_is_refused(accountant):
    with pytest.raises(
        ValueError, match=f"--neighbouring replace_one with --accountant {accountant}.*--accountant pld"
    ):
        make_privacy_spec(
            epsilon=1,
            delta=1e-5,
            batch_size=10,
            num_rows=100,
            epochs=1,
            accountant=accountant,
            relation=REPLACE_ONE,
        )


def test_unknown_relation():
    with pytest.raises(ValueError, match="unknown neighbouring relation 'swap'"):
        make_privacy_spec(
            epsilon=1, delta=1e-5, batch_size=10, num_rows=100, epochs=1, accountant="rdp", relation="swap"
        )


def test_calibration_plan_per_mode():
    plan = calibration_plan(mode_name="fusiondp", mode_relation=ZERO_OUT, neighbouring=None, accountant="rdp")
    assert plan == (ZERO_OUT, "rdp", [])
    plan = calibration_plan(
        mode_name="fusiondp", mode_relation=ZERO_OUT, neighbouring="replace_one", accountant="pld"
    )
    assert plan == (REPLACE_ONE, "pld", [])
    with pytest.raises(ValueError, match="--neighbouring replace_one with --accountant prv"):
        calibration_plan(
            mode_name="fusiondp", mode_relation=ZERO_OUT, neighbouring="replace_one", accountant="prv"
        )
    relation, accountant, notes = calibration_plan(
        mode_name="dpsgd", mode_relation="add/remove", neighbouring="replace_one", accountant="rdp"
    )
    assert (relation, accountant) == ("add/remove", "rdp") and "--neighbouring replace_one ignored" in notes[
        0
    ]
    relation, accountant, notes = calibration_plan(
        mode_name="naive_fusion", mode_relation=REPLACE_ONE, neighbouring=None, accountant="rdp"
    )
    assert (relation, accountant) == (REPLACE_ONE, "pld") and "replaced by pld" in notes[0]


@pytest.mark.parametrize(
    "mode,flags,relation,zero_out_is_replace",
    [
        ("fusiondp", ["--neighbouring", "replace_one", "--accountant", "pld"], REPLACE_ONE, False),
        ("calibrated_fusion", ["--accountant", "prv"], ZERO_OUT, False),
        ("dpsgd", ["--neighbouring", "zero_out"], "add/remove", True),
    ],
)
def test_records_state_both_relations(sepsis_dir, tmp_path, mode, flags, relation, zero_out_is_replace):
    out = tmp_path / "r.jsonl"
    args = sepsis_args(sepsis_dir, "--mode", mode, "--results_json", str(out), *flags)
    sepsis_script.main(args)
    rec = json.loads(out.read_text())
    assert rec["neighbouring_relation"] == relation
    assert rec["epsilon_spent"] <= rec["epsilon"]
    assert rec["epsilon_replace_one"] >= rec["epsilon_zero_out"] > 0
    assert rec["accountant_replace_one"] == "pld"
    assert (rec["epsilon_zero_out"] == rec["epsilon_replace_one"]) == zero_out_is_replace
    if relation == REPLACE_ONE:
        assert rec["epsilon_replace_one"] == rec["epsilon_spent"]
    if mode == "dpsgd":
        assert "--neighbouring zero_out ignored" in rec["privacy_notes"][0]


def test_cli_refuses_replace_one_with_rdp(sepsis_dir, capsys, monkeypatch):
    monkeypatch.setattr(
        "sys.argv",
        [
            "train_fusiondp_sepsis.py",
            "--data_dir",
            str(sepsis_dir),
            "--neighbouring",
            "replace_one",
            "--accountant",
            "rdp",
            "--no_progress",
        ],
    )
    from fusiondp.experiment.cli import run_main

    with pytest.raises(SystemExit) as stop:
        run_main(sepsis_script.main, sepsis_script.get_args_parser())
    assert stop.value.code == 2
    assert "--neighbouring replace_one with --accountant rdp" in capsys.readouterr().err


def test_replace_one_is_never_reported_below_zero_out_even_with_rdp():
    # bank-like setting at eps = 16 (sigma calibrated by RDP): RDP's zero-out bound exceeds PLD's replace-one
    eps = feature_epsilons(
        noise_multiplier=0.4503, sample_rate=128 / 30000, steps=2344, delta=1e-5, accountant="rdp",
        zero_out_term_vanishes=True,
    )  # fmt: skip
    assert eps["epsilon_replace_one"] == eps["epsilon_zero_out"] > 15.9
    assert eps["accountant_replace_one"].startswith("rdp (zero-out bound; pld gave 15.2")
