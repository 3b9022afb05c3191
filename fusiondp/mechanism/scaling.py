"""Where the ORIGINAL view's scale comes from: public support rows, a DP estimate, or (reference only)
the private rows themselves.

Why each view needs its own scale: foundation-model imputations regress to the mean (sepsis, the
authors' TabPFN hybrid: ICULOS std 8.4 against 28.5 in the originals). A scaler fitted on the hybrid
rows and applied to the original rows, val and test gives their sensitive z-scores a spread several
times that of the rows the public term trains on. So the hybrid view's sensitive columns are
standardised with the hybrid rows' own statistics, and the original view's (training rows, val and
test alike) with statistics of TRUE values that carry no private information:

* ``support``: the imputer's public support set, whose true sensitive values are public by the
  paper's assumption. Costs nothing.
* ``dp``: a Gaussian-mechanism estimate from the training rows' original values
  (:func:`dp_statistics`), clipped to bounds the dataset script declares as public knowledge; its
  cost is composed into the run's ε by the accountant (:mod:`fusiondp.mechanism.accounting`).
* ``private``: mean and std of the training rows' original values, as the authors' code does. NOT
  PRIVATE: a run that uses it is recorded as outside the guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

SCALING_SOURCES = ("support", "dp", "private")
MIN_SUPPORT_VALUES = 20
"""A support set with fewer observed values of a column gives no usable scale for it."""

Stats = dict[str, tuple[float, float]]
"""column -> (mean, std) of the values a view is standardised with (mean also fills NaNs)."""


@dataclass(frozen=True)
class ScalingPlan:
    """The original view's statistics and how they were obtained (for the result record)."""

    source: str
    stats: Stats
    description: str
    stats_noise_multiplier: float | None = None
    """Noise multiplier of the DP statistics (``dp`` only), in units of their sensitivity."""
    reads_private_values: bool = False
    """True for ``private``: the statistics read original values outside any mechanism."""


def column_statistics(frame: pd.DataFrame, columns: Sequence[str]) -> Stats:
    """Mean and population std of each column over its observed values (std 0 or NaN -> 1)."""
    out: Stats = {}
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        mean, std = values.mean(), values.std(ddof=0)
        out[col] = (
            0.0 if pd.isna(mean) else float(mean),
            1.0 if pd.isna(std) or std == 0 else float(std),
        )
    return out


def support_statistics(support: pd.DataFrame | None, columns: Sequence[str], *, where: str) -> Stats:
    """Statistics of the public support set's TRUE values; a clear error where it cannot serve.

    ``where`` names the support set in messages (a file path, or how it was split off).
    """
    if support is None or len(support) == 0:
        raise ValueError(
            "--scaling support needs a public support set, but this data has none "
            f"({where}). Use --scaling dp (a DP estimate from the training rows, composed into ε), or "
            "provide support rows."
        )
    missing = [c for c in columns if c not in support.columns]
    if missing:
        raise ValueError(f"support set {where} lacks sensitive column(s) {missing}: cannot scale them.")
    for col in columns:
        observed = int(pd.to_numeric(support[col], errors="coerce").notna().sum())
        if observed < MIN_SUPPORT_VALUES:
            raise ValueError(
                f"support set {where} has {observed} observed value(s) of {col!r} (of {len(support)} rows); "
                f"at least {MIN_SUPPORT_VALUES} are needed to scale it. Use a larger support set or "
                "--scaling dp."
            )
    return column_statistics(support, columns)


def check_bounds(bounds: Mapping[str, tuple[float, float]], columns: Sequence[str]) -> None:
    """Every column has a finite, non-empty declared range (checks the declaration, never the data)."""
    missing = [c for c in columns if c not in bounds]
    if missing:
        raise ValueError(
            f"every numeric sensitive column needs a public range (lo, hi) in the dataset module's BOUNDS "
            f"(original values are clipped to it, and --scaling dp estimates within it); none for {missing}."
        )
    for col in columns:
        lo, hi = bounds[col]
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"declared range of {col!r} must be finite with lo < hi, got ({lo!r}, {hi!r}).")


MAX_OUTSIDE_FRACTION = 0.05
"""Share of public values a declared range may clip before it is taken for a mistake."""


def check_bounds_cover_public(
    bounds: Mapping[str, tuple[float, float]], frame: pd.DataFrame, *, what: str
) -> None:
    """A declared range must hold most PUBLIC values (hybrid or support rows) of its column.

    Clipping a tail is what the range is for; a range that cuts off more than
    :data:`MAX_OUTSIDE_FRACTION` of the public values is a mistake (wrong units, a typo). Only public
    rows are checked: whether an original value lies outside must not change what the run does (it
    is clipped silently, as the sensitivity analysis assumes).
    """
    for col, (lo, hi) in bounds.items():
        if col not in frame.columns:
            continue
        values = pd.to_numeric(frame[col], errors="coerce").dropna()
        outside = values[(values < lo) | (values > hi)]
        if len(values) and len(outside) > MAX_OUTSIDE_FRACTION * len(values):
            raise ValueError(
                f"declared range ({lo}, {hi}) of {col!r} excludes {len(outside)} of the {len(values)} "
                f"{what} values (e.g. {outside.iloc[0]!r}); at most {MAX_OUTSIDE_FRACTION:.0%} may be "
                "clipped. Fix the range in the dataset script's BOUNDS."
            )


def dp_statistics_sensitivity(num_columns: int) -> float:
    """L2 distance between the statistics of two data sets that differ in ONE row's sensitive values.

    Per column the row contributes (m·u, m·u², m) with m = 1 if observed and u ∈ [−1, 1] the value
    rescaled to its declared range. Between two observed values the squared move is
    (u − u')²·(1 + (u + u')²) ≤ 4 (at u = −u' = ±1: |u − u'| + |u + u'| ≤ 2); between observed and
    missing it is u² + u⁴ + 1 ≤ 3. So 2 per column, 2√k for k columns, whatever the new values are
    (zero-out, replace-one and add/remove alike). ``tests/test_scaling.py`` checks it by search.
    """
    return 2.0 * math.sqrt(num_columns)


def dp_statistics(
    original: pd.DataFrame,
    *,
    bounds: Mapping[str, tuple[float, float]],
    noise_multiplier: float,
    generator: torch.Generator,
) -> Stats:
    """Mean and std of each bounded column by one Gaussian-mechanism release over all rows.

    Privacy contract: reads the ORIGINAL sensitive values of every training row, once. Values are
    clipped to the declared ``bounds`` (public knowledge, never checked against the private values)
    and rescaled to u ∈ [−1, 1]; the sums Σ m·u, Σ m·u² and Σ m (m: observed) of all columns get
    N(0, (σ·Δ)²) noise with Δ = :func:`dp_statistics_sensitivity`. That is a Gaussian mechanism of
    noise multiplier σ for any change of one row's sensitive values; the caller composes it into
    the run's ε (:func:`fusiondp.mechanism.accounting.make_privacy_spec`, ``stats_noise_multiplier``). Everything
    returned is post-processing of the noisy sums.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"--scaling_noise_multiplier must be > 0, got {noise_multiplier!r}.")
    columns = list(bounds)
    check_bounds(bounds, columns)
    std = noise_multiplier * dp_statistics_sensitivity(len(columns))
    noise = torch.normal(0.0, std, size=(len(columns), 3), generator=generator, dtype=torch.float64).numpy()
    out: Stats = {}
    for j, col in enumerate(columns):
        lo, hi = bounds[col]
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        values = pd.to_numeric(original[col], errors="coerce").to_numpy(float)
        observed = ~np.isnan(values)
        u = (np.clip(values[observed], lo, hi) - mid) / half
        s1, s2, count = u.sum() + noise[j, 0], (u**2).sum() + noise[j, 1], observed.sum() + noise[j, 2]
        count = max(count, 1.0)
        mean_u = float(np.clip(s1 / count, -1.0, 1.0))
        # The noisy second moment can fall below mean²; a floor keeps the scale usable.
        var_u = max(s2 / count - mean_u**2, 1e-4)
        out[col] = (mid + half * mean_u, half * math.sqrt(min(var_u, 1.0)))
    return out
