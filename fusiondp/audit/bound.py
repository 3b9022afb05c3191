"""The one-run lower bound on ε: scores in, ε out (docs/design.md §4).

Steinke, Nasr and Jagielski, "Privacy auditing with one (1) training run" (NeurIPS 2023, arXiv
2305.08846): m canaries flip fair coins; the auditor guesses "in" for its k highest scores and
abstains on the rest; v correct guesses reject every ε whose bound on P[≥ v correct] falls below
1 − confidence. Pure arithmetic: nothing here reads data.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def audit_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[≥ v correct guesses out of r] for an (ε, δ)-DP mechanism, m canaries.

    Steinke, Nasr and Jagielski (2023), the (ε, δ) form of their main theorem: with
    f(u) = P[Binomial(r, e^ε / (1 + e^ε)) ≥ u],

        P[W ≥ v] ≤ f(v) + 2 m δ · max_{1 ≤ i ≤ v} (f(v − i) − f(v)) / i.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}.")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}.")
    p_correct = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, p_correct))
    if v == 0 or delta == 0:
        return min(1.0, tail)
    # f(v − i) − f(v) = P[v − i ≤ B < v]: cumulative pmf going down from v − 1.
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p_correct).cumsum()
    slope = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * slope)


def epsilon_lower_bound(
    *, m: int, r: int, v: int, delta: float, confidence: float = 0.95, tolerance: float = 1e-4
) -> float:
    """The largest ε that v correct guesses out of r reject at ``confidence`` (0 if none).

    A mechanism that is (ε, δ)-DP produces ≥ v correct guesses with probability at most
    :func:`audit_p_value`, which grows with ε; every ε whose bound is below 1 − confidence is rejected,
    so the true ε is at least the returned value with probability ≥ ``confidence``. Bisection on ε.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    beta = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return audit_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) < beta

    if r == 0 or not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    while high - low > tolerance:
        mid = (low + high) / 2
        low, high = (mid, high) if rejected(mid) else (low, mid)
    return low


def canary_audit(
    scores: np.ndarray, is_in: np.ndarray, *, k: int, delta: float, confidence: float = 0.95
) -> dict:
    """Guess the k highest scores "in", abstain on the rest; ε_lower from the correct guesses.

    ``scores``: one per canary, higher meaning "more likely in"; ``is_in``: the canaries' coins.
    """
    m = len(is_in)
    if not 1 <= k <= m:
        raise ValueError(f"k (guesses) must lie in [1, {m}], got {k}.")
    guessed = np.argsort(-scores, kind="stable")[:k]
    correct = int(is_in[guessed].sum())
    return {
        "canaries": m,
        "canaries_in": int(is_in.sum()),
        "guesses": k,
        "correct": correct,
        "confidence": confidence,
        "delta": delta,
        "epsilon_lower": epsilon_lower_bound(m=m, r=k, v=correct, delta=delta, confidence=confidence),
        "score_in_mean": float(scores[is_in].mean()),
        "score_in_std": float(scores[is_in].std()),
        "score_out_mean": float(scores[~is_in].mean()),
        "score_out_std": float(scores[~is_in].std()),
    }
