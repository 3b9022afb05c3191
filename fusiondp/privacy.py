"""Noise calibration and privacy accounting, delegated to Opacus and dp-accounting.

A mode's guarantee is stated under one neighbouring relation (DESIGN.md §1):

* ``zero-out`` (feature-dp, calibrated_fusion, fusiondp): one row's sensitive values are replaced by
  its public-view values (imputed, or the N(0,1) draws for feature-dp). That row's private term is
  then exactly zero, so the sum changes by at most C: the Poisson-subsampled Gaussian has the same
  (ε, δ) as add/remove DP-SGD, computed by Opacus's RDP (default) or PRV accountant.
* ``add/remove`` (dpsgd): standard sample-level DP-SGD, same accountant.
* ``replace-one`` (naive_fusion, naive_fusion_pub): their noise-free public term reads the row's
  hybrid (or noise) view, so no sample-level guarantee holds, and changing a row's sensitive values
  moves its private term from one clipped vector to another: sensitivity 2C. σ is calibrated with
  dp-accounting's PLD accountant under ``REPLACE_ONE``.

Every DP run also reports ``epsilon_replace_one``: the ε of the same noise when a row's sensitive
values may be replaced by arbitrary ones.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

from dp_accounting import dp_event, pld
from dp_accounting.privacy_accountant import NeighboringRelation
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = ("rdp", "prv")
ZERO_OUT, ADD_REMOVE, REPLACE_ONE = "zero-out", "add/remove", "replace-one"
RELATIONS = (ZERO_OUT, ADD_REMOVE, REPLACE_ONE)
PLD_ACCOUNTANT = "pld (dp-accounting, REPLACE_ONE)"

# Opacus's default RDP orders stop at 63, which is too low for small q and ε (it warns "optimal order
# is the largest alpha"); more orders only tighten the bound, never loosen it.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 256))


def _accountant_kwargs(accountant: str) -> dict:
    return {"alphas": RDP_ORDERS} if accountant == "rdp" else {}


@dataclass(frozen=True)
class PrivacySpec:
    """Everything needed to state and re-check a run's guarantee."""

    target_epsilon: float
    delta: float
    sample_rate: float
    steps: int
    noise_multiplier: float
    accountant: str
    epsilon_spent: float
    neighbouring_relation: str
    epsilon_replace_one: float

    def as_record(self) -> dict:
        return asdict(self)


def check_budget(*, epsilon: float, delta: float) -> None:
    """Reject budgets that no accountant can meet, naming the offending value."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"--epsilon must be a finite number > 0, got {epsilon!r}.")
    if not (0.0 < delta < 1.0):
        raise ValueError(
            f"--delta must lie strictly between 0 and 1, got {delta!r} "
            "(a common choice is 1e-5, or 1/N for N training rows)."
        )


def check_sample_rate(sample_rate: float, *, batch_size: int, num_rows: int) -> None:
    if not (0.0 < sample_rate <= 1.0):
        raise ValueError(
            f"sample rate q = batch_size / N = {batch_size} / {num_rows} = {sample_rate:.4g} "
            "must lie in (0, 1]: lower --batch_size or use more training rows."
        )


def num_steps(*, epochs: float, num_rows: int, batch_size: int) -> int:
    """T = round(epochs · N / b): the exact number of steps the training loop runs."""
    steps = round(epochs * num_rows / batch_size)
    if steps < 1:
        raise ValueError(
            f"epochs={epochs} with N={num_rows} rows and batch_size={batch_size} gives "
            f"T = round(epochs*N/b) = {steps} steps; raise --epochs or lower --batch_size."
        )
    return steps


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose one of {ACCOUNTANTS}.")


def calibrate_noise(
    *, epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier σ (to 0.01 in ε) whose T-step ε at δ is at most ``epsilon``."""
    check_budget(epsilon=epsilon, delta=delta)
    _check_accountant(accountant)
    if not (0.0 < sample_rate <= 1.0):
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")
    with warnings.catch_warnings():
        # The bisection probes very large σ, where the best RDP order is the largest: not a concern.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        sigma = get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            **_accountant_kwargs(accountant),
        )
    return float(sigma)


def epsilon_spent(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """ε actually spent by ``steps`` Poisson-subsampled Gaussian steps, as the accountant reports it."""
    _check_accountant(accountant)
    acct = create_accountant(mechanism=accountant)
    acct.history = [(noise_multiplier, sample_rate, steps)]
    return float(acct.get_epsilon(delta=delta, **_accountant_kwargs(accountant)))


def _replace_one_accountant() -> pld.PLDAccountant:
    return pld.PLDAccountant(
        neighboring_relation=NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-3
    )


def _subsampled_gaussian(noise_multiplier: float, sample_rate: float, steps: int) -> dp_event.DpEvent:
    return dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier)), steps
    )


def replace_one_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε when one row's contribution may change from one clipped vector to another (PLD accountant)."""
    acct = _replace_one_accountant()
    acct.compose(_subsampled_gaussian(noise_multiplier, sample_rate, steps))
    return float(acct.get_epsilon(delta))


def calibrate_noise_replace_one(*, epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest σ (to 0.01 in ε, like Opacus) whose replace-one ε at δ is at most ``epsilon``.

    Bisection over σ; each ε comes from dp-accounting's PLD accountant. Very small σ are never
    probed (their privacy-loss distributions are huge and slow to compose).
    """
    check_budget(epsilon=epsilon, delta=delta)

    def eps(sigma: float) -> float:
        return replace_one_epsilon(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta)

    low, high = 0.0, 0.5
    eps_high = eps(high)
    while eps_high > epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no σ below 1e6 reaches ε={epsilon} at δ={delta}: the budget is too small.")
        eps_high = eps(high)
    while epsilon - eps_high > 0.01:
        mid = (low + high) / 2
        eps_mid = eps(mid)
        if eps_mid <= epsilon:
            high, eps_high = mid, eps_mid
        else:
            low = mid
    return high


def make_privacy_spec(
    *,
    epsilon: float,
    delta: float,
    batch_size: int,
    num_rows: int,
    epochs: float,
    accountant: str,
    relation: str = ZERO_OUT,
) -> PrivacySpec:
    """Calibrate σ for (ε, δ) under ``relation`` given q = b/N and T = round(epochs·N/b).

    ``accountant`` (rdp or prv) serves the zero-out and add/remove relations; replace-one always uses
    dp-accounting's PLD accountant, which is recorded in the spec.
    """
    check_budget(epsilon=epsilon, delta=delta)
    if relation not in RELATIONS:
        raise ValueError(f"unknown neighbouring relation {relation!r}; choose one of {RELATIONS}.")
    sample_rate = batch_size / num_rows
    check_sample_rate(sample_rate, batch_size=batch_size, num_rows=num_rows)
    steps = num_steps(epochs=epochs, num_rows=num_rows, batch_size=batch_size)
    common = {"delta": delta, "sample_rate": sample_rate, "steps": steps}
    if relation == REPLACE_ONE:
        sigma = calibrate_noise_replace_one(epsilon=epsilon, **common)
        spent = replace_one_epsilon(noise_multiplier=sigma, **common)
        accountant = PLD_ACCOUNTANT
    else:
        sigma = calibrate_noise(epsilon=epsilon, accountant=accountant, **common)
        spent = epsilon_spent(noise_multiplier=sigma, accountant=accountant, **common)
    return PrivacySpec(
        target_epsilon=epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        noise_multiplier=sigma,
        accountant=accountant,
        epsilon_spent=spent,
        neighbouring_relation=relation,
        epsilon_replace_one=replace_one_epsilon(noise_multiplier=sigma, **common),
    )
