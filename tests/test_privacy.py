"""Calibration and accounting go through Opacus and agree with it."""

import pytest
from opacus.accountants.utils import get_noise_multiplier

from fusiondp.privacy import (
    RDP_ORDERS,
    calibrate_noise,
    epsilon_spent,
    make_privacy_spec,
    num_steps,
)


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


def test_prv_is_at_least_as_tight_as_rdp():
    rdp = make_privacy_spec(
        epsilon=2.0, delta=1e-5, batch_size=128, num_rows=14293, epochs=13, accountant="rdp"
    )
    prv = make_privacy_spec(
        epsilon=2.0, delta=1e-5, batch_size=128, num_rows=14293, epochs=13, accountant="prv"
    )
    assert prv.noise_multiplier <= rdp.noise_multiplier


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


def test_replace_one_calibration_meets_its_target_through_dp_accounting():
    from dp_accounting import dp_event, pld
    from dp_accounting.privacy_accountant import NeighboringRelation

    from fusiondp.privacy import REPLACE_ONE

    spec = make_privacy_spec(
        epsilon=2.0,
        delta=1e-5,
        batch_size=128,
        num_rows=14293,
        epochs=13,
        accountant="rdp",
        relation=REPLACE_ONE,
    )
    assert spec.accountant.startswith("pld") and spec.neighbouring_relation == "replace-one"
    # An independent PLD accountant (finer discretisation) agrees that the target is met.
    acct = pld.PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    acct.compose(
        dp_event.PoissonSampledDpEvent(spec.sample_rate, dp_event.GaussianDpEvent(spec.noise_multiplier)),
        spec.steps,
    )
    assert 1.98 <= acct.get_epsilon(1e-5) <= 2.0 + 1e-3
    zero_out = make_privacy_spec(
        epsilon=2.0, delta=1e-5, batch_size=128, num_rows=14293, epochs=13, accountant="rdp"
    )
    assert spec.noise_multiplier > 1.2 * zero_out.noise_multiplier  # sensitivity 2C needs more noise
    assert zero_out.epsilon_replace_one > 2.5  # the same noise is worth a larger replace-one epsilon


def test_unknown_relation():
    with pytest.raises(ValueError, match="unknown neighbouring relation 'swap'"):
        make_privacy_spec(
            epsilon=1, delta=1e-5, batch_size=10, num_rows=100, epochs=1, accountant="rdp", relation="swap"
        )
