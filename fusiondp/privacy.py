"""Noise calibration and privacy accounting, delegated to Opacus's accountants.

Two neighbouring relations matter for feature-level DP (DESIGN.md §1):

* ``zero-out``: one row's sensitive values are replaced by its imputed values. That row's private
  term is then exactly zero, so the per-step sensitivity is the clip norm C and the Poisson-subsampled
  Gaussian mechanism has the same (ε, δ) as standard add/remove DP-SGD. This is the relation the
  noise is calibrated for.
* ``replace-one``: one row's sensitive values are replaced by arbitrary ones (sensitivity 2C). Its ε
  for the same noise is larger; it is reported, not targeted.

For ``dpsgd`` and the naive fusion modes the whole row passes through the mechanism and the same
numbers are a sample-level add/remove guarantee.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = ("rdp", "prv")

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


def make_privacy_spec(
    *, epsilon: float, delta: float, batch_size: int, num_rows: int, epochs: float, accountant: str
) -> PrivacySpec:
    """Calibrate σ for (ε, δ) given q = b/N and T = round(epochs·N/b), and re-account the result."""
    check_budget(epsilon=epsilon, delta=delta)
    sample_rate = batch_size / num_rows
    check_sample_rate(sample_rate, batch_size=batch_size, num_rows=num_rows)
    steps = num_steps(epochs=epochs, num_rows=num_rows, batch_size=batch_size)
    sigma = calibrate_noise(
        epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
    )
    spent = epsilon_spent(
        noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
    )
    return PrivacySpec(
        target_epsilon=epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        noise_multiplier=sigma,
        accountant=accountant,
        epsilon_spent=spent,
        neighbouring_relation="zero-out",
    )
