"""Noise calibration and privacy accounting per neighbouring relation (docs/design.md §2).

Every DP mode releases T Poisson-subsampled Gaussian sums of per-example gradients clipped to norm C,
with noise N(0, σ²C²). What one row can change in that sum depends on the relation:

* ``zero-out`` (the split modes' default): one row's sensitive values are replaced by its public-view
  values (imputed, or the N(0,1) draws for feature-dp). The split modes' private term of that row is
  then exactly zero, so the row's contribution goes from one clipped vector to 0: sensitivity C, the
  same privacy-loss distribution as add/remove DP-SGD (dp-accounting calls the relation
  ``REPLACE_SPECIAL`` and computes it exactly as ``ADD_OR_REMOVE_ONE``).
* ``add/remove`` (dpsgd): standard sample-level DP-SGD of whole rows, sensitivity C.
* ``replace-one``: one row's sensitive values are replaced by arbitrary ones; its clipped vector moves
  to another clipped vector, distance up to 2C (dp-accounting's ``REPLACE_ONE``, whose subsampled
  Gaussian is q·N(−C) + (1−q)·N(0) against q·N(+C) + (1−q)·N(0)).

Which accountant analyses which relation for Poisson-subsampled Gaussians (checked in the installed
libraries, Opacus 1.6 and dp-accounting 0.6):

=========  ======================================  ==============================================
accountant  library                                relations
=========  ======================================  ==============================================
``rdp``     Opacus RDPAccountant                   add/remove only (hence zero-out)
``prv``     Opacus PRVAccountant (Gopi et al.)     add/remove only (hence zero-out)
``pld``     dp-accounting PLDAccountant            ADD_OR_REMOVE_ONE, REPLACE_SPECIAL, REPLACE_ONE
=========  ======================================  ==============================================

Asking ``rdp`` or ``prv`` for replace-one is refused (:func:`check_supported`): Opacus has no
replace-one analysis, and group privacy over two add/remove steps would be a loose stand-in.

Feature-level ε under BOTH relations is reported for every DP run (:func:`feature_epsilons`). For the
modes whose private term is the full loss on the original row (dpsgd, naive_fusion*), a zero-out
change does not zero the row's term, it swaps one clipped gradient for another: their zero-out ε is
their replace-one ε.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from dp_accounting import dp_event, pld
from dp_accounting.privacy_accountant import NeighboringRelation
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = ("rdp", "prv", "pld")
ZERO_OUT, ADD_REMOVE, REPLACE_ONE = "zero-out", "add/remove", "replace-one"
RELATIONS = (ZERO_OUT, ADD_REMOVE, REPLACE_ONE)
NEIGHBOURING_FLAGS = {"zero_out": ZERO_OUT, "replace_one": REPLACE_ONE}
"""``--neighbouring`` values and the relation each names."""
SUPPORTED = {"rdp": (ZERO_OUT, ADD_REMOVE), "prv": (ZERO_OUT, ADD_REMOVE), "pld": RELATIONS}
"""Relations each accountant analyses for Poisson-subsampled Gaussians (see the module docstring)."""
EPSILON_TOLERANCE = 0.01
"""Calibration stops once the σ found spends ε within this of the target (Opacus's default)."""
PLD_DISCRETISATION = 1e-3
"""dp-accounting's value discretisation; its estimates are pessimistic (upper bounds) at any value."""

# Opacus's default RDP orders stop at 63, which is too low for small q and ε (it warns "optimal order
# is the largest alpha"); more orders only tighten the bound, never loosen it.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 256))

_PLD_RELATIONS = {
    ZERO_OUT: NeighboringRelation.REPLACE_SPECIAL,
    ADD_REMOVE: NeighboringRelation.ADD_OR_REMOVE_ONE,
    REPLACE_ONE: NeighboringRelation.REPLACE_ONE,
}


def _accountant_kwargs(accountant: str) -> dict:
    return {"alphas": RDP_ORDERS} if accountant == "rdp" else {}


@dataclass(frozen=True)
class PrivacySpec:
    """Everything needed to state and re-check a run's guarantee.

    ``accountant``/``epsilon_spent`` belong to the relation σ was calibrated for
    (``neighbouring_relation``); ``epsilon_zero_out`` and ``epsilon_replace_one`` are the feature-level
    ε of the same σ under each relation, with the accountant that computed each.
    """

    target_epsilon: float
    delta: float
    sample_rate: float
    steps: int
    noise_multiplier: float
    accountant: str
    epsilon_spent: float
    neighbouring_relation: str
    epsilon_zero_out: float
    accountant_zero_out: str
    epsilon_replace_one: float
    accountant_replace_one: str
    stats_noise_multiplier: float | None = None
    """Noise multiplier of the DP scaling statistics composed into ε (None: no such release)."""
    epsilon_without_statistics: float | None = None
    """ε of the same σ, relation and accountant without the statistics: their cost is the difference."""
    notes: tuple[str, ...] = ()
    """How the flags were resolved, where that is not what they say (see :func:`calibration_plan`)."""


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


def relation_from_flag(value: str) -> str:
    """The relation a ``--neighbouring`` value names (``zero_out`` → ``zero-out``)."""
    if value in NEIGHBOURING_FLAGS.values():
        return value
    try:
        return NEIGHBOURING_FLAGS[value]
    except KeyError:
        raise ValueError(
            f"unknown --neighbouring {value!r}; choose one of {', '.join(NEIGHBOURING_FLAGS)}."
        ) from None


def _flag(relation: str) -> str:
    return {v: k for k, v in NEIGHBOURING_FLAGS.items()}.get(relation, relation)


def check_supported(accountant: str, relation: str) -> None:
    """Refuse an accountant that does not analyse ``relation`` for Poisson-subsampled Gaussians."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose one of {ACCOUNTANTS}.")
    if relation not in RELATIONS:
        raise ValueError(f"unknown neighbouring relation {relation!r}; choose one of {RELATIONS}.")
    if relation not in SUPPORTED[accountant]:
        raise ValueError(
            f"--neighbouring {_flag(relation)} with --accountant {accountant}: Opacus's {accountant} "
            "accountant analyses Poisson-subsampled Gaussians under add/remove (= zero-out) only, "
            f"not {relation}. Use --accountant pld (dp-accounting, REPLACE_ONE) for replace-one, "
            "or --neighbouring zero_out."
        )


def _pld_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    relation: str,
    stats_noise_multiplier: float | None = None,
) -> float:
    acct = pld.PLDAccountant(
        neighboring_relation=_PLD_RELATIONS[relation], value_discretization_interval=PLD_DISCRETISATION
    )
    if stats_noise_multiplier:
        # dp-accounting's REPLACE_ONE Gaussian moves the mean by 2 units (−1 to +1); the statistics'
        # neighbours differ by at most 1 unit (their sensitivity bounds any change of one row), so
        # their REPLACE_ONE noise multiplier is doubled. Zero-out / add-remove: 1 unit, as given.
        factor = 2.0 if relation == REPLACE_ONE else 1.0
        acct.compose(dp_event.GaussianDpEvent(factor * stats_noise_multiplier))
    acct.compose(
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier)), steps
        )
    )
    return float(acct.get_epsilon(delta))


def epsilon_for(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str,
    relation: str,
    stats_noise_multiplier: float | None = None,
) -> float:
    """ε at δ of ``steps`` Poisson-subsampled Gaussian steps under ``relation`` (an upper bound).

    ``stats_noise_multiplier``: a one-off Gaussian release (the DP scaling statistics of
    :func:`fusiondp.mechanism.scaling.dp_statistics`, noise in units of their sensitivity under any change of
    one row) composed with the steps by the same accountant. Opacus sees it as one step at q = 1.
    """
    check_supported(accountant, relation)
    if accountant == "pld":
        return _pld_epsilon(noise_multiplier, sample_rate, steps, delta, relation, stats_noise_multiplier)
    acct = create_accountant(mechanism=accountant)
    acct.history = [(noise_multiplier, sample_rate, steps)]
    if stats_noise_multiplier:
        acct.history.insert(0, (stats_noise_multiplier, 1.0, 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        # PRV's q = 1 step takes log(0) on a branch it then discards.
        warnings.filterwarnings("ignore", message="divide by zero encountered in log")
        return float(acct.get_epsilon(delta=delta, **_accountant_kwargs(accountant)))


def statistics_epsilon(
    *, stats_noise_multiplier: float, delta: float, accountant: str, relation: str
) -> float:
    """ε at δ of the one-off Gaussian release of the DP scaling statistics alone."""
    check_supported(accountant, relation)
    if accountant == "pld":
        acct = pld.PLDAccountant(
            neighboring_relation=_PLD_RELATIONS[relation], value_discretization_interval=PLD_DISCRETISATION
        )
        factor = 2.0 if relation == REPLACE_ONE else 1.0  # see _pld_epsilon
        acct.compose(dp_event.GaussianDpEvent(factor * stats_noise_multiplier))
        return float(acct.get_epsilon(delta))
    acct = create_accountant(mechanism=accountant)
    acct.history = [(stats_noise_multiplier, 1.0, 1)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        warnings.filterwarnings("ignore", message="divide by zero encountered in log")
        return float(acct.get_epsilon(delta=delta, **_accountant_kwargs(accountant)))


def epsilon_spent(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """ε under zero-out (= add/remove) of ``steps`` Poisson-subsampled Gaussian steps."""
    return epsilon_for(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        accountant=accountant,
        relation=ZERO_OUT,
    )


def _bisect_sigma(eps: Callable[[float], float], *, epsilon: float, delta: float) -> float:
    """The σ of a bisection that keeps ε(σ_high) ≤ ``epsilon`` and stops within the tolerance.

    Very small σ are never probed (their privacy-loss distributions are huge and slow to compose).
    """
    low, high = 0.0, 0.5
    eps_high = eps(high)
    while eps_high > epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no σ below 1e6 reaches ε={epsilon} at δ={delta}: the budget is too small.")
        eps_high = eps(high)
    while epsilon - eps_high > EPSILON_TOLERANCE:
        mid = (low + high) / 2
        eps_mid = eps(mid)
        if eps_mid <= epsilon:
            high, eps_high = mid, eps_mid
        else:
            low = mid
    return high


def calibrate_sigma(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    relation: str,
    stats_noise_multiplier: float | None = None,
) -> float:
    """The smallest σ (to 0.01 in ε) whose T-step ε at δ under ``relation`` is at most ``epsilon``.

    rdp/prv go through Opacus's ``get_noise_multiplier``; pld, and any run that also releases DP
    statistics (``stats_noise_multiplier``, composed first), bisect over the accountant's ε. Both keep
    the upper end of the bracket, so the σ returned never overshoots the target.
    """
    check_budget(epsilon=epsilon, delta=delta)
    check_supported(accountant, relation)
    if not (0.0 < sample_rate <= 1.0):
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")
    if stats_noise_multiplier:
        spent = statistics_epsilon(
            stats_noise_multiplier=stats_noise_multiplier,
            delta=delta,
            accountant=accountant,
            relation=relation,
        )
        if spent >= epsilon - EPSILON_TOLERANCE:
            raise ValueError(
                f"the DP scaling statistics alone spend epsilon = {spent:.3f} of the target {epsilon} "
                f"(--scaling_noise_multiplier {stats_noise_multiplier}): raise it, or use --scaling support."
            )
    if accountant == "pld" or stats_noise_multiplier:
        return _bisect_sigma(
            lambda s: epsilon_for(
                noise_multiplier=s,
                sample_rate=sample_rate,
                steps=steps,
                delta=delta,
                accountant=accountant,
                relation=relation,
                stats_noise_multiplier=stats_noise_multiplier,
            ),
            epsilon=epsilon,
            delta=delta,
        )
    with warnings.catch_warnings():
        # The bisection probes very large σ, where the best RDP order is the largest: not a concern.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        sigma = get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=EPSILON_TOLERANCE,
            **_accountant_kwargs(accountant),
        )
    return float(sigma)


def calibrate_noise(
    *, epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """σ calibrated under zero-out (= add/remove); see :func:`calibrate_sigma`."""
    return calibrate_sigma(
        epsilon=epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
        relation=ZERO_OUT,
    )


def feature_epsilons(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str,
    zero_out_term_vanishes: bool,
    stats_noise_multiplier: float | None = None,
) -> dict:
    """Feature-level ε of one σ under both relations, and the accountant of each.

    ``zero_out_term_vanishes``: True for the split modes, whose private term of a zero-out neighbour
    is exactly 0 (sensitivity C, analysed by ``accountant``); False for modes whose private term is
    the full loss (dpsgd, naive_fusion*): a zero-out change then swaps one clipped gradient for
    another, which is the replace-one case. Replace-one is always dp-accounting's PLD.
    """
    common = {
        "noise_multiplier": noise_multiplier,
        "sample_rate": sample_rate,
        "steps": steps,
        "delta": delta,
        "stats_noise_multiplier": stats_noise_multiplier,
    }
    replace = epsilon_for(accountant="pld", relation=REPLACE_ONE, **common)
    replace_acct = "pld"
    if zero_out_term_vanishes:
        zero = epsilon_for(accountant=accountant, relation=ZERO_OUT, **common)
        zero_acct = accountant
    else:
        zero, zero_acct = replace, "pld (the zero-out change swaps one clipped gradient for another)"
    if zero > replace:
        # A looser accountant (RDP at large ε) can bound zero-out above PLD's replace-one. PLD's number
        # is a valid replace-one bound, so any larger number is one too; reporting the larger keeps
        # replace-one ≥ zero-out, as the true values are (zero-out changes are replace-one changes).
        replace, replace_acct = zero, f"{zero_acct} (zero-out bound; pld gave {replace:.3f})"
    return {
        "epsilon_zero_out": zero,
        "accountant_zero_out": zero_acct,
        "epsilon_replace_one": replace,
        "accountant_replace_one": replace_acct,
    }


def calibration_plan(
    *, mode_name: str, mode_relation: str, neighbouring: str | None, accountant: str
) -> tuple[str, str, list[str]]:
    """(relation σ is calibrated for, accountant, notes for the record) of a DP mode.

    Only the split modes (relation zero-out) let ``--neighbouring`` choose; ``None`` means zero-out.
    The other modes keep their own relation, and an ``--neighbouring`` value they cannot honour is
    ignored with a note rather than refused, so that one sweep can pass the flag to every mode: their
    record states ε under both relations anyway. naive_fusion* calibrate for replace-one, which only
    the PLD accountant analyses, so they use it whatever ``--accountant`` says (also noted).
    """
    notes: list[str] = []
    if mode_relation == ZERO_OUT:
        relation = relation_from_flag(neighbouring) if neighbouring else ZERO_OUT
        check_supported(accountant, relation)
        return relation, accountant, notes
    if neighbouring and relation_from_flag(neighbouring) != mode_relation:
        notes.append(
            f"--neighbouring {neighbouring} ignored: {mode_name} is calibrated for {mode_relation} "
            "(its private term is the full loss, so a change of one row's sensitive values moves it by "
            "up to 2C under either relation; both feature-level epsilons are recorded)"
        )
    if mode_relation == REPLACE_ONE and accountant != "pld":
        notes.append(f"--accountant {accountant} replaced by pld: only pld analyses replace-one")
        accountant = "pld"
    check_supported(accountant, mode_relation)
    return mode_relation, accountant, notes


def make_privacy_spec(
    *,
    epsilon: float,
    delta: float,
    batch_size: int,
    num_rows: int,
    epochs: float,
    accountant: str,
    relation: str = ZERO_OUT,
    zero_out_term_vanishes: bool = True,
    stats_noise_multiplier: float | None = None,
    noise_multiplier: float | None = None,
) -> PrivacySpec:
    """Calibrate σ for (ε, δ) under ``relation`` given q = b/N and T = round(epochs·N/b).

    ``noise_multiplier``: a σ already calibrated elsewhere (for a tuned total:
    :func:`fusiondp.mechanism.tuning.calibrate_for_tuning`); the spec then states what it spends per run.

    With ``stats_noise_multiplier`` the DP scaling statistics are composed in first, so that σ is
    calibrated for the TOTAL; ``epsilon_without_statistics`` is what the same σ spends without them.
    Unsupported (accountant, relation) pairs are refused by :func:`check_supported`.
    """
    check_budget(epsilon=epsilon, delta=delta)
    check_supported(accountant, relation)
    sample_rate = batch_size / num_rows
    check_sample_rate(sample_rate, batch_size=batch_size, num_rows=num_rows)
    steps = num_steps(epochs=epochs, num_rows=num_rows, batch_size=batch_size)
    common = {"delta": delta, "sample_rate": sample_rate, "steps": steps}
    stats = {"stats_noise_multiplier": stats_noise_multiplier}
    sigma = (
        calibrate_sigma(epsilon=epsilon, accountant=accountant, relation=relation, **common, **stats)
        if noise_multiplier is None
        else float(noise_multiplier)
    )
    spent = epsilon_for(noise_multiplier=sigma, accountant=accountant, relation=relation, **common, **stats)
    without = (
        epsilon_for(noise_multiplier=sigma, accountant=accountant, relation=relation, **common)
        if stats_noise_multiplier
        else spent
    )
    return PrivacySpec(
        target_epsilon=epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        noise_multiplier=sigma,
        accountant=accountant,
        epsilon_spent=spent,
        neighbouring_relation=relation,
        stats_noise_multiplier=stats_noise_multiplier,
        epsilon_without_statistics=without,
        **feature_epsilons(
            noise_multiplier=sigma,
            accountant=accountant,
            zero_out_term_vanishes=zero_out_term_vanishes,
            **common,
            **stats,
        ),
    )
