"""The privacy cost of hyperparameter tuning: releasing the best of K private runs.

Papernot & Steinke ("Hyperparameter tuning with Renyi differential privacy", ICLR 2022) bound the
Rényi DP of running a private training K times, with K drawn at random and the candidates drawn
independently, and releasing only the best run. dp-accounting implements their bound as
``RepeatAndSelectDpEvent(event, mean, shape)`` under its RDP accountant; the distribution of K is set
by its mean and its shape:

=============================  =======  =============================================
``--tuning_distribution``      shape     P(K = k), k ≥ 1 (Poisson also allows K = 0)
=============================  =======  =============================================
``poisson``                    ∞         e^{-μ} μ^k / k!
``geometric``                  1         γ (1 - γ)^{k-1}
``logarithmic``                0         (1 - γ)^k / (k log(1/γ))
``truncated_negative_binomial``  η        ∝ (1 - γ)^k Γ(k + η) / (Γ(η) k!)   (0 < η, η ≠ 1)
=============================  =======  =============================================

γ follows from the mean (dp-accounting's own mapping, so that the K drawn here is the K accounted).

Candidates whose privacy-relevant settings differ (another expected batch b, hence q, or another
number of steps T, hence another σ) are mixtures of mechanisms: the mixture's Rényi divergence at
each order is at most the largest of theirs (quasi-convexity), so :func:`tuned_epsilon` takes the
pointwise maximum of the candidates' RDP curves before applying the bound. With one candidate
setting it is exactly ``RepeatAndSelectDpEvent`` under ``RdpAccountant`` (tested).

Relations: dp-accounting's RDP accountant analyses Poisson-subsampled Gaussians under add/remove (and
hence zero-out, whose privacy-loss distribution is the same; see :mod:`fusiondp.mechanism.accounting`).
Replace-one (naive fusion, public pretraining) has no RDP analysis there and is refused.

Privacy contract: nothing here reads data. K is drawn from a generator the caller owns: a seeded one
for an experiment (recorded), a secret one (OS entropy) for a release.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dp_accounting import dp_event
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from fusiondp.mechanism.accounting import ADD_REMOVE, EPSILON_TOLERANCE, RDP_ORDERS, ZERO_OUT, check_budget

SHAPES = {"poisson": math.inf, "geometric": 1.0, "logarithmic": 0.0}
DISTRIBUTIONS = (*SHAPES, "truncated_negative_binomial")
TUNING_PROTOCOLS = ("idealised", "honest")
"""idealised: a fixed number of trials, σ for ε per run, the cost of tuning not counted; honest: a
random number of trials K and σ calibrated so that the total, tuning included, meets ε."""
TUNING_RELATIONS = (ZERO_OUT, ADD_REMOVE)
"""Relations the RDP bound of tuning is computed for (see the module docstring)."""


@dataclass(frozen=True)
class TrialCount:
    """The distribution of the number of trials K (its ``mean``, and ``eta`` for the truncated
    negative binomial)."""

    distribution: str = "truncated_negative_binomial"
    mean: float = 10.0
    eta: float = 0.5

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown distribution of the number of trials {self.distribution!r}; choose one of {DISTRIBUTIONS}."
            )
        if not (math.isfinite(self.mean) and self.mean >= 1):
            raise ValueError(f"the mean number of trials must be at least 1, got {self.mean!r}.")
        if self.distribution == "truncated_negative_binomial" and not (0 < self.eta < math.inf):
            raise ValueError(f"the truncated negative binomial needs 0 < eta < inf, got {self.eta!r}.")

    @property
    def shape(self) -> float:
        """dp-accounting's shape parameter of the distribution."""
        return SHAPES.get(self.distribution, self.eta)

    @property
    def gamma(self) -> float | None:
        """The γ of the (truncated negative binomial family) distribution with this mean; None for Poisson."""
        if self.shape == math.inf:
            return None
        if self.mean == 1:
            return 1.0
        return float(rdp_lib._gamma_truncated_negative_binomial(self.shape, self.mean))

    def draw(self, rng: np.random.Generator) -> int:
        """One K from this distribution (for Poisson, K = 0 is possible: the study then releases nothing)."""
        if self.shape == math.inf:
            return int(rng.poisson(self.mean))
        gamma = self.gamma
        if gamma >= 1.0:
            return 1
        if self.shape == 0.0:
            return int(rng.logseries(1.0 - gamma))
        if self.shape == 1.0:
            return int(rng.geometric(gamma))
        while True:  # the negative binomial (failures before η successes at rate γ), truncated to k ≥ 1
            k = int(rng.negative_binomial(self.shape, gamma))
            if k >= 1:
                return k

    def describe(self) -> str:
        extra = f", eta {self.eta:g}" if self.distribution == "truncated_negative_binomial" else ""
        return f"{self.distribution} (mean {self.mean:g}{extra})"


@dataclass(frozen=True)
class RunSetting:
    """The privacy-relevant settings of one candidate run: σ, q = b/N and T."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def _check_relation(relation: str) -> None:
    if relation not in TUNING_RELATIONS:
        raise ValueError(
            f"the cost of tuning is computed by dp-accounting's RDP accountant, which analyses {TUNING_RELATIONS} "
            f"for Poisson-subsampled Gaussians, not {relation!r}: tune replace-one modes under the idealised "
            "protocol, or calibrate them for zero-out."
        )


def run_event(setting: RunSetting) -> dp_event.DpEvent:
    """The DP event of one training run: T Poisson-subsampled Gaussian steps."""
    step = dp_event.PoissonSampledDpEvent(
        setting.sample_rate, dp_event.GaussianDpEvent(setting.noise_multiplier)
    )
    return dp_event.SelfComposedDpEvent(step, setting.steps)


def _accountant() -> rdp_lib.RdpAccountant:
    return rdp_lib.RdpAccountant(
        orders=RDP_ORDERS, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE
    )


@functools.lru_cache(maxsize=4096)
def _step_rdp(sample_rate: float, noise_multiplier: float) -> tuple[float, ...]:
    """The RDP curve of ONE Poisson-subsampled Gaussian step (RDP composes additively over T steps);
    cached because calibration probes the same (q, σ) many times."""
    accountant = _accountant()
    step = dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier))
    # At small σ a few fractional orders fail to converge; dp-accounting then leaves them out of the
    # bound (valid, a little looser) and logs a warning per order, which would drown a study's output.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        accountant.compose(step)
    finally:
        logging.disable(previous)
    return tuple(float(v) for v in accountant.rdp)


def run_rdp(setting: RunSetting) -> np.ndarray:
    """The RDP curve (at :data:`RDP_ORDERS`) of one run: T times one step's."""
    return setting.steps * np.asarray(_step_rdp(setting.sample_rate, setting.noise_multiplier))


def run_epsilon(setting: RunSetting, *, delta: float) -> float:
    """ε at δ of one run alone, by the same RDP accountant (the per-run ε a tuned record states)."""
    return float(rdp_lib.compute_epsilon(RDP_ORDERS, run_rdp(setting), delta)[0])


def tuned_epsilon(
    settings: Sequence[RunSetting], *, delta: float, trials: TrialCount, relation: str = ZERO_OUT
) -> float:
    """ε at δ of releasing the best of K runs, each drawn from candidates with these privacy settings.

    dp-accounting's bound of ``RepeatAndSelectDpEvent`` applied to the pointwise maximum of the candidates'
    RDP curves (the module docstring says why); with one setting that is ``RepeatAndSelectDpEvent`` under
    ``RdpAccountant`` itself (tests/test_tuning.py checks it to the last digit).
    """
    _check_relation(relation)
    if not settings:
        raise ValueError("tuned_epsilon needs at least one candidate setting.")
    unique = list(dict.fromkeys(settings))
    envelope = np.max([run_rdp(s) for s in unique], axis=0)
    tuned = rdp_lib._compute_rdp_repeat_and_select(RDP_ORDERS, envelope, trials.mean, trials.shape)
    return float(rdp_lib.compute_epsilon(RDP_ORDERS, tuned, delta)[0])


def _bisect(eps_of_sigma, target: float) -> float:
    """The smallest σ (to 0.1%, upper end kept, so never over budget) with ``eps_of_sigma(σ) <= target``."""
    low, high = 0.0, 0.5
    while eps_of_sigma(high) > target:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no σ below 1e6 keeps ε within {target:.4g}: the budget is too small.")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        if eps_of_sigma(mid) <= target:
            high = mid
        else:
            low = mid
    return high


def _sigma_for_run_epsilon(run_eps: float, *, sample_rate: float, steps: int, delta: float) -> float:
    """The smallest σ whose single-run RDP ε at δ is at most ``run_eps``."""
    return _bisect(lambda s: run_epsilon(RunSetting(s, sample_rate, steps), delta=delta), run_eps)


def calibrate_for_tuning(
    options: Sequence[tuple[float, int]],
    *,
    epsilon: float,
    delta: float,
    trials: TrialCount,
    relation: str = ZERO_OUT,
) -> dict[tuple[float, int], float]:
    """σ for each candidate (q, T) so that the tuned total, :func:`tuned_epsilon`, is at most ``epsilon``.

    Every candidate is calibrated to one common per-run ε′, the largest (to the calibration tolerance)
    whose candidates' tuned total stays within ``epsilon``: so no candidate is favoured and the
    envelope bound holds for whichever is drawn.
    """
    check_budget(epsilon=epsilon, delta=delta)
    _check_relation(relation)
    options = list(dict.fromkeys((float(q), int(t)) for q, t in options))
    if not options:
        raise ValueError("calibrate_for_tuning needs at least one candidate (q, T).")

    def sigmas(run_eps: float) -> dict[tuple[float, int], float]:
        return {
            (q, t): _sigma_for_run_epsilon(run_eps, sample_rate=q, steps=t, delta=delta) for q, t in options
        }

    def total(found: dict[tuple[float, int], float]) -> float:
        return tuned_epsilon(
            [RunSetting(s, q, t) for (q, t), s in found.items()],
            delta=delta,
            trials=trials,
            relation=relation,
        )

    if len(options) == 1:  # one candidate: bisect its σ on the tuned total directly
        ((q, t),) = options
        return {
            (q, t): _bisect(
                lambda s: tuned_epsilon([RunSetting(s, q, t)], delta=delta, trials=trials), epsilon
            )
        }
    low, high = 0.0, epsilon  # per-run ε: the tuned total is always larger than one run's ε
    best = None
    for _ in range(30):
        mid = (low + high) / 2
        found = sigmas(mid)
        spent = total(found)
        if spent <= epsilon:
            low, best = mid, found
            if epsilon - spent <= EPSILON_TOLERANCE:
                break
        else:
            high = mid
    if best is None:
        raise ValueError(f"no per-run budget keeps the tuned total within ε={epsilon} at δ={delta}.")
    return best
