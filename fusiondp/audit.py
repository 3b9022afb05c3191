"""Empirical privacy audit of the sensitive features (issue 5).

Four parts, all driven through the package's own training path (:func:`fusiondp.train.run_experiment`):

* **Canary audit in one training run** (Steinke, Nasr and Jagielski, "Privacy auditing with one (1)
  training run", NeurIPS 2023, arXiv 2305.08846). m training rows become canaries; each flips a fair
  coin. "In" canaries get extreme but valid ORIGINAL sensitive values (per column, the observed minimum
  or maximum, whichever is farther from the row's imputed value; for a categorical column another
  category, at random);
  "out" canaries get original values EQUAL to their hybrid values, which is exactly the zero-out
  neighbour (their private term is exactly 0). One model is trained; each canary is scored
  white-box on the final model; the k highest scores are guessed "in" (the rest abstain), and the
  number v of correct guesses gives a lower bound ε_lower that holds with the stated confidence
  for any (ε, δ)-DP mechanism (:func:`epsilon_lower_bound`).
* **Attribute inference** (:func:`attribute_inference`): predict each sensitive attribute of a row from
  its public columns and label plus the model's output, representation and losses at candidate
  values of the attribute, with a gradient-boosting attack fitted on validation rows (whose truth
  the attacker knows). Compared with the same attack without the model (what the public columns
  reveal, the imputer's share) on training rows and on held-out test rows.
* **Neighbour invariance** (:func:`public_state_check`): everything computed outside the mechanism
  (the preprocessor's statistics, C_h) must be bit-identical between the planted data and its
  zero-out neighbour (every canary out). A released quantity that differs is a deterministic
  function of private values: no finite ε covers it (ε_lower = ∞ at any confidence).
* **Negative controls** (:func:`negative_control`, TEST-ONLY): deliberately broken variants the
  audit must flag. They are not product flags and no training script can select them.

Privacy contract: this module is the AUDITOR. It reads original sensitive values on purpose (to plant
canaries, to score them, to measure attacks). Nothing here is private, and nothing here may feed
a training path other than through the canary-planted data it hands to ``run_experiment``.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import r2_score
from torch import Tensor, nn

from fusiondp import step as step_module
from fusiondp.data import TabularPreprocessor, prepare_tabular
from fusiondp.models import binary_bce
from fusiondp.modes import get_mode
from fusiondp.scaling import column_statistics
from fusiondp.train import resolve_c_h, run_experiment

STATISTICS = ("loss", "gradient")
NEGATIVE_CONTROLS = ("no_clipping", "no_noise", "c_h_from_private", "scaler_from_private")
EXTREME_QUANTILES = (0.0, 1.0)
"""Canary values of numeric sensitive columns: the observed minimum or maximum (valid, yet extreme)."""


# --------------------------------------------------------------------------------------------------
# The one-run lower bound
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Canaries
# --------------------------------------------------------------------------------------------------


@dataclass
class TabularTask:
    """A tabular data set as the audit needs it: raw frames, column roles and the model."""

    dataset: str
    frames: dict[str, pd.DataFrame]
    """``original`` and ``hybrid`` (row-aligned training rows), ``val``, ``test``, optionally ``support``."""
    public: list[str]
    sensitive: list[str]
    label: str
    build_model: Callable[[int], nn.Module]
    categorical: list[str] = field(default_factory=list)
    one_hot: bool = False
    extra_record: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CanaryPlan:
    rows: np.ndarray
    """Positions of the canaries among the training rows."""
    is_in: np.ndarray
    """The fair coins: True for "in" (extreme values), False for "out" (zero-out neighbour)."""
    extreme: pd.DataFrame
    """For EVERY canary, the sensitive values it has when "in" (the auditor scores both kinds with them)."""


def plan_canaries(task: TabularTask, *, m: int, seed: int) -> CanaryPlan:
    """m canary rows, fair coins, and the extreme values that maximise each one's private term."""
    original, hybrid = task.frames["original"], task.frames["hybrid"]
    n = len(original)
    if not 2 <= m <= n:
        raise ValueError(f"--canaries must lie in [2, {n}] (the training rows), got {m}.")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=m, replace=False))
    is_in = rng.random(m) < 0.5
    extreme = pd.DataFrame(index=range(m))
    for col in task.sensitive:
        imputed = hybrid[col].iloc[rows].reset_index(drop=True)
        if col in task.categorical:
            categories = sorted(original[col].dropna().astype(str).unique())
            picks = []
            for value in imputed.astype(str):
                others = [c for c in categories if c != value] or categories
                picks.append(others[rng.integers(len(others))])
            extreme[col] = picks
        else:
            lo, hi = pd.to_numeric(original[col], errors="coerce").quantile(list(EXTREME_QUANTILES))
            imputed = pd.to_numeric(imputed, errors="coerce").fillna((lo + hi) / 2)
            extreme[col] = np.where((imputed - lo).abs() >= (hi - imputed).abs(), lo, hi)
    return CanaryPlan(rows=rows, is_in=is_in, extreme=extreme)


def plant_canaries(task: TabularTask, plan: CanaryPlan, *, all_out: bool = False) -> pd.DataFrame:
    """The original training rows with the canaries' sensitive values set ("in": extreme values;
    "out", or every canary when ``all_out``: the row's own hybrid values)."""
    planted = task.frames["original"].copy()
    hybrid = task.frames["hybrid"]
    is_in = np.zeros_like(plan.is_in) if all_out else plan.is_in
    for col in task.sensitive:
        values = planted[col].astype(object).to_numpy(copy=True)
        values[plan.rows[is_in]] = plan.extreme[col].to_numpy()[is_in]
        values[plan.rows[~is_in]] = hybrid[col].to_numpy()[plan.rows[~is_in]]
        planted[col] = pd.Series(values, index=planted.index).infer_objects()
    return planted


# --------------------------------------------------------------------------------------------------
# Negative controls (TEST-ONLY)
# --------------------------------------------------------------------------------------------------


def _unclipped_sum(per_example, *, max_grad_norm):
    norms = step_module.per_example_norms(per_example)
    return {name: g.sum(dim=0) for name, g in per_example.items()}, norms


@contextmanager
def negative_control(name: str | None) -> Iterator[None]:
    """TEST-ONLY: break the mechanism the way ``name`` says, for the duration of the block.

    ``no_clipping`` sums raw per-example gradients; ``no_noise`` adds no noise (the record still
    claims the calibrated ε). ``c_h_from_private`` and ``scaler_from_private`` act through
    :func:`audited_run` (the reference's ``--c_h_from_private`` path; a preprocessor fitted on the
    original rows too), so this block leaves the step alone for them.
    """
    if name is None or name in ("c_h_from_private", "scaler_from_private"):
        yield
        return
    if name == "no_clipping":
        patch = mock.patch.object(step_module, "clip_and_accumulate", _unclipped_sum)
    elif name == "no_noise":
        patch = mock.patch.object(step_module, "add_noise", lambda summed, *, std, generator: summed)
    else:
        raise ValueError(f"unknown negative control {name!r}; choose one of {NEGATIVE_CONTROLS}.")
    with patch:
        yield


# --------------------------------------------------------------------------------------------------
# One audited training run
# --------------------------------------------------------------------------------------------------


@dataclass
class AuditedRun:
    record: dict
    model: nn.Module
    prep: TabularPreprocessor
    planted: pd.DataFrame
    initial_state: dict[str, Tensor]


def _prepare(task: TabularTask, planted: pd.DataFrame, *, seed: int, control: str | None):
    support = task.frames.get("support")
    numeric_sensitive = [c for c in task.sensitive if c not in set(task.categorical)]
    shared = task.frames["hybrid"] if support is None else pd.concat([task.frames["hybrid"], support])
    # Both views on the hybrid rows' scale (public): the audit tests the mechanism, and with one scale
    # an "out" canary (its row's hybrid values) is exactly the zero-out neighbour.
    stats = column_statistics(task.frames["hybrid"], numeric_sensitive)
    if control == "scaler_from_private":  # broken on purpose: scalers/vocabularies see original values
        shared = pd.concat([shared, planted])
        stats = column_statistics(planted, numeric_sensitive)
    return prepare_tabular(
        planted,
        task.frames["hybrid"],
        task.frames["val"],
        task.frames["test"],
        sensitive=task.sensitive,
        public=task.public,
        label=task.label,
        categorical=task.categorical,
        one_hot=task.one_hot,
        noise_seed=seed,
        original_stats=stats,
        shared_fit=shared,
    )


def _control_args(args: argparse.Namespace, control: str | None) -> argparse.Namespace:
    args = copy.copy(args)
    args.results_json = None  # the audit writes its own record
    args.skip_existing = False
    if control == "c_h_from_private":
        args.c_h, args.c_h_from_private = None, True
    return args


def audited_run(
    task: TabularTask,
    args: argparse.Namespace,
    plan: CanaryPlan,
    *,
    control: str | None = None,
) -> AuditedRun:
    """Plant the canaries and train ONE model through :func:`fusiondp.train.run_experiment`."""
    planted = plant_canaries(task, plan)
    data, prep = _prepare(task, planted, seed=args.seed, control=control)
    built: dict = {}

    def build_model() -> nn.Module:
        built["model"] = model = task.build_model(data.num_features)
        built["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model

    with negative_control(control):
        record = run_experiment(
            _control_args(args, control),
            dataset=task.dataset,
            data=data,
            build_model=build_model,
            loss_fn=binary_bce,
            extra_record={**task.extra_record, "sensitive_columns": task.sensitive},
        )
    return AuditedRun(record, built["model"], prep, planted, built["initial"])


def _features(prep: TabularPreprocessor, frame: pd.DataFrame, task: TabularTask) -> Tensor:
    return torch.from_numpy(prep.transform(frame[[*task.public, *task.sensitive]]))


def _in_version(task: TabularTask, plan: CanaryPlan) -> pd.DataFrame:
    rows = task.frames["hybrid"].iloc[plan.rows].reset_index(drop=True).copy()
    for col in task.sensitive:
        rows[col] = plan.extreme[col].to_numpy()
    return rows


def canary_scores(
    run: AuditedRun, task: TabularTask, plan: CanaryPlan, *, statistic: str = "loss"
) -> np.ndarray:
    """White-box score of every canary on the final model; higher means "more likely in".

    ``loss``: how much training lowered the private loss ℓ(f(x_i^in), y_i) − ℓ(f(x̃_i), y_i) of the
    in-version, from the initial parameters θ_0 (known to a white-box auditor) to θ_T. ``gradient``: ⟨θ_0 − θ_T, ∇L_i(θ_T)⟩ / ‖∇L_i(θ_T)‖,
    how far training moved the parameters against the canary's private-term gradient.
    The auditor scores in and out canaries alike, both with the extreme values.
    """
    hybrid_rows = task.frames["hybrid"].iloc[plan.rows].reset_index(drop=True)
    in_rows = _in_version(task, plan)
    x_in, x_ref = _features(run.prep, in_rows, task), _features(run.prep, hybrid_rows, task)
    y = torch.from_numpy(hybrid_rows[task.label].astype(float).to_numpy(np.float32))
    model = run.model
    was_training = model.training
    model.eval()
    try:
        if statistic == "loss":
            initial = copy.deepcopy(model)
            initial.load_state_dict(run.initial_state)
            initial.eval()
            with torch.no_grad():
                private_loss = [
                    binary_bce(f(x_in)[0], y) - binary_bce(f(x_ref)[0], y) for f in (initial, model)
                ]
            return (private_loss[0] - private_loss[1]).numpy()
        if statistic == "gradient":
            grads = step_module.per_example_gradients(
                model,
                x_in,
                x_ref,
                y,
                loss_fn=binary_bce,
                reg_weight=run.record.get("regularizer_weight") or 0.0,
                c_h=run.record.get("c_h"),
            )
            moved = {
                k: run.initial_state[k] - p.detach() for k, p in step_module.trainable_params(model).items()
            }
            dots = sum((g.flatten(1) * moved[k].flatten()).sum(1) for k, g in grads.items())
            return (dots / (step_module.per_example_norms(grads) + 1e-12)).numpy()
    finally:
        model.train(was_training)
    raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}.")


def canary_audit(
    scores: np.ndarray, plan: CanaryPlan, *, k: int, delta: float, confidence: float = 0.95
) -> dict:
    """Guess the k highest scores "in", abstain on the rest; ε_lower from the correct guesses."""
    m = len(plan.rows)
    if not 1 <= k <= m:
        raise ValueError(f"k (guesses) must lie in [1, {m}], got {k}.")
    guessed = np.argsort(-scores, kind="stable")[:k]
    correct = int(plan.is_in[guessed].sum())
    return {
        "canaries": m,
        "canaries_in": int(plan.is_in.sum()),
        "guesses": k,
        "correct": correct,
        "confidence": confidence,
        "delta": delta,
        "epsilon_lower": epsilon_lower_bound(m=m, r=k, v=correct, delta=delta, confidence=confidence),
        "score_in_mean": float(scores[plan.is_in].mean()),
        "score_in_std": float(scores[plan.is_in].std()),
        "score_out_mean": float(scores[~plan.is_in].mean()),
        "score_out_std": float(scores[~plan.is_in].std()),
    }


# --------------------------------------------------------------------------------------------------
# Gradient-space canaries: the step itself, audited with the run's (σ, q, T, C)
# --------------------------------------------------------------------------------------------------


class _DiracModel(nn.Module):
    """θ ∈ R^m, logit ⟨θ, x⟩: with a loss of −logit, row x's gradient is −x exactly, so canary i
    (x = B·e_i, reference view 0) has a private-term gradient of norm B along its own coordinate."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(m, dtype=torch.float64))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x * self.theta).sum(dim=-1, keepdim=True), x


def _negative_logit(logits: Tensor, targets: Tensor) -> Tensor:
    return -logits.squeeze(-1)


def step_canary_audit(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    max_grad_norm: float,
    claimed_epsilon: float,
    delta: float,
    canaries: int = 5000,
    guesses: int = 1000,
    canary_norm: float = 100.0,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """White-box one-run audit of the private step with gradient-space ("Dirac") canaries.

    The input-space audit above has little power at these sizes (a canary's sensitive values barely
    move an MLP). This one gives each canary its own coordinate: "in" canaries have a private-term
    gradient of norm ``canary_norm · C`` along it, "out" canaries are zero-out neighbours (both
    views equal, term exactly 0). For ``steps`` steps every canary enters the Poisson batch with
    probability ``sample_rate`` and the package's own :func:`fusiondp.step.private_gradient` (per-example
    gradients, clipping, noise) is applied; the auditor sees the summed released gradients and guesses
    the ``guesses`` canaries with the largest accumulated signal "in". This is the strongest canary
    the zero-out relation allows (a clipped gradient of norm C, in a direction nothing else uses), so a
    correct step must give ε_lower ≤ the claimed ε; a step that skips clipping or noise does not.
    Runs under whatever :func:`negative_control` is active.
    """
    if not 1 <= guesses <= canaries:
        raise ValueError(f"guesses must lie in [1, {canaries}], got {guesses}.")
    rng = np.random.default_rng(seed)
    is_in = rng.random(canaries) < 0.5  # independent fair coins, as the bound assumes
    x = torch.zeros(canaries, canaries, dtype=torch.float64)
    rows = torch.from_numpy(np.flatnonzero(is_in))
    x[rows, rows] = canary_norm * max_grad_norm
    reference = torch.zeros_like(x)
    y = torch.zeros(canaries, dtype=torch.float64)
    model = _DiracModel(canaries)
    cfg = step_module.StepConfig(
        lr=0.0,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=max_grad_norm,
        noise_multiplier=noise_multiplier,
        expected_batch_size=1.0,  # the released sum itself; the scale does not change the guesses
        private_loss="difference",
    )
    sampler = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    released = torch.zeros(canaries, dtype=torch.float64)
    for _ in range(steps):
        batch = (torch.rand(canaries, generator=sampler) < sample_rate).nonzero().squeeze(1)
        grads, _ = step_module.private_gradient(
            model, x[batch], reference[batch], y[batch], cfg=cfg, loss_fn=_negative_logit, generator=noise
        )
        released += grads["theta"]
    scores = (-released).numpy()  # an in-canary's gradient is −B·e_i
    guessed = np.argsort(-scores, kind="stable")[:guesses]
    correct = int(is_in[guessed].sum())
    return {
        "canaries": canaries,
        "guesses": guesses,
        "correct": correct,
        "canary_norm": canary_norm,
        "confidence": confidence,
        "claimed_epsilon": claimed_epsilon,
        "epsilon_lower": epsilon_lower_bound(
            m=canaries, r=guesses, v=correct, delta=delta, confidence=confidence
        ),
    }


# --------------------------------------------------------------------------------------------------
# Neighbour invariance of what is computed outside the mechanism
# --------------------------------------------------------------------------------------------------


def public_state_check(
    task: TabularTask, args: argparse.Namespace, plan: CanaryPlan, *, control: str | None = None
) -> dict:
    """Are the preprocessor and C_h bit-identical on the planted data and its zero-out neighbour?

    Both are released (the preprocessor is part of the model, C_h is in the record) without noise,
    so any difference between neighbours breaks every finite ε: ``epsilon_lower`` is then ∞.
    """
    mode = get_mode(args.mode)
    states = []
    for planted in (plant_canaries(task, plan), plant_canaries(task, plan, all_out=True)):
        data, prep = _prepare(task, planted, seed=args.seed, control=control)
        torch.manual_seed(args.seed)
        model = task.build_model(data.num_features)
        c_h, _ = resolve_c_h(_control_args(args, control), mode, model, data, seed=args.seed)
        states.append((prep.means_, prep.stds_, prep.vocab_, c_h))
    (m1, s1, v1, c1), (m2, s2, v2, c2) = states
    differs = {"preprocessor": (m1, s1, v1) != (m2, s2, v2), "c_h": c1 != c2}
    return {
        "public_state_differs": [k for k, bad in differs.items() if bad],
        "epsilon_lower_deterministic": math.inf if any(differs.values()) else 0.0,
    }


# --------------------------------------------------------------------------------------------------
# Attribute inference
# --------------------------------------------------------------------------------------------------


def _is_categorical(task: TabularTask, col: str) -> bool:
    return col in task.categorical or task.frames["original"][col].nunique(dropna=False) <= 10


def _candidates(task: TabularTask, col: str) -> list:
    values = task.frames["hybrid"][col]
    if _is_categorical(task, col):
        return sorted(task.frames["original"][col].dropna().unique().tolist(), key=str)[:12]
    return pd.to_numeric(values, errors="coerce").quantile([0.05, 0.25, 0.5, 0.75, 0.95]).tolist()


@torch.no_grad()
def _attack_features(
    model: nn.Module, prep: TabularPreprocessor, frame: pd.DataFrame, task: TabularTask, col: str
):
    """(public features, public + model features) of each row, never reading its sensitive values.

    The model sees the row with every sensitive value blank (mean-filled, or an all-zero one-hot
    block), and then with the attacked column at each candidate value: its logit, representation
    and the loss at each candidate (model inversion).
    """
    blank = frame[[*task.public, task.label]].copy()
    for c in task.sensitive:
        blank[c] = np.nan
    y = torch.from_numpy(frame[task.label].astype(float).to_numpy(np.float32))
    x_blank = _features(prep, blank, task)
    public_idx = prep.feature_indices(task.public)
    public = np.column_stack([x_blank[:, public_idx].numpy(), y.numpy()])
    logits, h = model(x_blank)
    losses = []
    for value in _candidates(task, col):
        probe = blank.copy()
        probe[col] = value
        losses.append(binary_bce(model(_features(prep, probe, task))[0], y).numpy())
    with_model = np.column_stack([public, logits.numpy(), h.numpy(), *losses])
    return public, with_model


def _target(task: TabularTask, frame: pd.DataFrame, col: str) -> np.ndarray:
    if _is_categorical(task, col):  # "missing" is a class of its own (sepsis: no ICU unit recorded)
        return np.array(["missing" if pd.isna(v) else str(v) for v in frame[col]])
    return pd.to_numeric(frame[col], errors="coerce").to_numpy(float)


def _fit_score(task, col, x_fit, y_fit, evals: dict[str, tuple[np.ndarray, np.ndarray]], seed: int) -> dict:
    categorical = _is_categorical(task, col)
    keep = np.ones(len(y_fit), bool) if categorical else np.isfinite(y_fit)
    cls = HistGradientBoostingClassifier if categorical else HistGradientBoostingRegressor
    attack = cls(max_iter=100, random_state=seed).fit(x_fit[keep], y_fit[keep])
    out = {}
    for name, (x, y) in evals.items():
        ok = np.ones(len(y), bool) if categorical else np.isfinite(y)
        pred = attack.predict(x[ok])
        out[name] = float((pred == y[ok]).mean()) if categorical else float(r2_score(y[ok], pred))
    return out


def attribute_inference(
    run: AuditedRun, task: TabularTask, plan: CanaryPlan, *, max_rows: int = 2000, seed: int = 0
) -> dict:
    """Attack each sensitive column with and without the model; fitted on val rows.

    Per column: the score (accuracy for categorical columns, R² for numeric ones) of the attack with
    the model's features and of the public-only attack, on training rows (members, canaries
    excluded) and on held-out test rows.
    ``advantage_train`` = model attack − public-only attack on training rows (what the model adds);
    ``member_gap`` = that advantage on training rows minus the same on test rows (what the model
    adds about its OWN training rows: the part DP bounds).

    What the public columns alone reveal is ``public_attack_test`` (held-out rows); the imputer's own
    quality is measured on held-out rows by impute_<dataset>.py (imputation_metrics.csv). The
    imputer is NOT scored on the training rows here: that number is a function of their sensitive
    values, outside any mechanism, and audit records are kept and quoted. The attack scores on
    training rows remain: scoring members is what an audit of the mechanism is (the member gap needs
    them); the audit table reports them only as the differences ``advantage_train`` and ``member_gap``.
    """
    rng = np.random.default_rng(seed)
    members = np.setdiff1d(np.arange(len(run.planted)), plan.rows)
    members = np.sort(rng.choice(members, size=min(max_rows, len(members)), replace=False))
    test = task.frames["test"]
    test = test.iloc[np.sort(rng.choice(len(test), size=min(max_rows, len(test)), replace=False))]
    frames = {"train": run.planted.iloc[members], "test": test}
    per_column = {}
    for col in task.sensitive:
        fit_pub, fit_model = _attack_features(run.model, run.prep, task.frames["val"], task, col)
        y_fit = _target(task, task.frames["val"], col)
        evals_pub, evals_model = {}, {}
        for name, frame in frames.items():
            pub, with_model = _attack_features(run.model, run.prep, frame, task, col)
            evals_pub[name], evals_model[name] = (
                (pub, _target(task, frame, col)),
                (with_model, _target(task, frame, col)),
            )
        public_only = _fit_score(task, col, fit_pub, y_fit, evals_pub, seed)
        with_model = _fit_score(task, col, fit_model, y_fit, evals_model, seed)
        adv_train = with_model["train"] - public_only["train"]
        adv_test = with_model["test"] - public_only["test"]
        per_column[col] = {
            "metric": "accuracy" if _is_categorical(task, col) else "r2",
            # Scores against the training rows' original values would be imputation quality on
            # training rows under another name: only their differences are kept (an evaluation of
            # what the model adds), the held-out scores in full.
            "public_attack_test": public_only["test"],
            "model_attack_test": with_model["test"],
            "advantage_train": adv_train,
            "member_gap": adv_train - adv_test,
        }
    return {
        "attack_rows": {"train": len(members), "test": len(test), "fit (val)": len(task.frames["val"])},
        "columns": per_column,
        "mean_advantage_train": float(np.mean([c["advantage_train"] for c in per_column.values()])),
        "mean_member_gap": float(np.mean([c["member_gap"] for c in per_column.values()])),
    }


# --------------------------------------------------------------------------------------------------
# Everything for one (mode, ε, seed)
# --------------------------------------------------------------------------------------------------


def claimed_epsilon(record: dict) -> float:
    """The feature-level ε the run claims for a zero-out change (∞ for sgd_ori, 0 for modes that
    never read the original sensitive values)."""
    if record["mode"] == "sgd_ori":
        return math.inf
    if record.get("sigma") is None:
        return 0.0
    return float(record["epsilon_zero_out"])


def audit_once(
    task: TabularTask,
    args: argparse.Namespace,
    *,
    canaries: int,
    guesses: int,
    confidence: float = 0.95,
    statistic: str = "loss",
    attack_rows: int = 2000,
    control: str | None = None,
    attack: bool = True,
) -> dict:
    """Plant, train once, score, bound, attack; return the training record with an ``audit`` entry."""
    plan = plan_canaries(task, m=canaries, seed=args.seed + 1000)
    run = audited_run(task, args, plan, control=control)
    scores = canary_scores(run, task, plan, statistic=statistic)
    audit = {
        "statistic": statistic,
        "claimed_epsilon": claimed_epsilon(run.record),
        **canary_audit(scores, plan, k=guesses, delta=args.delta, confidence=confidence),
        **public_state_check(task, args, plan, control=control),
    }
    if run.record.get("sigma") is not None:
        with negative_control(control):
            audit["step_audit"] = step_canary_audit(
                noise_multiplier=run.record["sigma"],
                sample_rate=run.record["sample_rate"],
                steps=run.record["steps"],
                max_grad_norm=run.record["max_grad_norm"],
                claimed_epsilon=audit["claimed_epsilon"],
                delta=args.delta,
                seed=args.seed,
            )
    if attack:
        audit["attribute_inference"] = attribute_inference(
            run, task, plan, max_rows=attack_rows, seed=args.seed
        )
    return {**run.record, "audit": audit}


def audit_rows(records: Sequence[dict]) -> list[dict]:
    """One flat row per audit record, for tables."""
    rows = []
    for rec in records:
        audit = rec["audit"]
        attack = audit.get("attribute_inference") or {}
        rows.append(
            {
                "mode": rec["mode"],
                "epsilon": rec["epsilon"] if rec.get("sigma") is not None else None,
                "seed": rec["seed"],
                "claimed_epsilon": audit["claimed_epsilon"],
                "epsilon_lower": max(audit["epsilon_lower"], audit["epsilon_lower_deterministic"]),
                "correct": audit["correct"],
                "guesses": audit["guesses"],
                "epsilon_lower_step": (audit.get("step_audit") or {}).get("epsilon_lower"),
                "advantage_train": attack.get("mean_advantage_train"),
                "member_gap": attack.get("mean_member_gap"),
                "test_auroc": rec.get("test_auroc"),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# The grid behind scripts/audit_<dataset>.py
# --------------------------------------------------------------------------------------------------

AUDIT_MODES = ("sgd_ori", "sgd_hybrid", "dpsgd", "calibrated_fusion", "fusiondp")


def add_audit_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of the audit scripts (the training flags come from the dataset's training script)."""
    g = parser.add_argument_group("audit")
    g.add_argument("--modes", nargs="+", default=list(AUDIT_MODES), help="modes to audit")
    g.add_argument(
        "--epsilons", nargs="+", type=float, default=[1.0, 4.0, 16.0], help="target ε of the DP modes"
    )
    g.add_argument("--seeds", nargs="+", type=int, default=[1], help="one training run per (mode, ε, seed)")
    g.add_argument(
        "--canaries", type=int, default=1000, help="m: canary training rows (half in, by coin flips)"
    )
    g.add_argument("--guesses", type=int, default=100, help="k: highest-scoring canaries guessed 'in'")
    g.add_argument("--confidence", type=float, default=0.95, help="confidence of ε_lower")
    g.add_argument("--statistic", choices=STATISTICS, default="loss", help="canary score")
    g.add_argument("--attack_rows", type=int, default=2000, help="training and test rows attacked")
    g.add_argument("--table", default=None, help="write the Markdown audit table here too")
    return parser


def _audit_key(rec: dict) -> tuple:
    audit, args = rec["audit"], rec.get("args") or {}
    eps = rec["epsilon"] if rec.get("sigma") is not None else None
    return (rec["mode"], eps, rec["seed"], audit["canaries"], audit["guesses"], audit["statistic"],
            rec["epochs"], args.get("max_train_rows"))  # fmt: skip


def run_audit_grid(
    task: TabularTask, args: argparse.Namespace, *, existing: Sequence[dict] = ()
) -> list[dict]:
    """Audit every (mode, ε, seed) of the flags; records already in ``existing`` are reused."""
    from tqdm.auto import tqdm

    from fusiondp.results import append_record

    done = {_audit_key(r): r for r in existing if "audit" in r}
    jobs = []
    for seed in args.seeds:
        for mode in args.modes:
            for eps in args.epsilons if get_mode(mode).private else [args.epsilon]:
                run_args = copy.copy(args)
                run_args.mode, run_args.epsilon, run_args.seed = mode, eps, seed
                jobs.append(run_args)
    records = []
    for run_args in tqdm(jobs, desc=f"audit {task.dataset}", disable=args.no_progress):
        eps = run_args.epsilon if get_mode(run_args.mode).private else None
        key = (run_args.mode, eps, run_args.seed, args.canaries, args.guesses, args.statistic, run_args.epochs,
               getattr(run_args, "max_train_rows", None))  # fmt: skip
        if key in done:
            records.append(done[key])
            continue
        run_args.no_progress = True
        rec = audit_once(
            task,
            run_args,
            canaries=args.canaries,
            guesses=args.guesses,
            confidence=args.confidence,
            statistic=args.statistic,
            attack_rows=args.attack_rows,
        )
        rec["args"] = {**rec["args"], "max_train_rows": getattr(run_args, "max_train_rows", None)}
        if args.results_json:
            append_record(args.results_json, rec)
        records.append(rec)
    return records


def _fmt(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if any(math.isinf(v) for v in values):
        return "∞"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}"


def audit_table(records: Sequence[dict]) -> str:
    """Markdown: one line per (mode, ε), mean ± std over seeds, with the counts."""
    rows = pd.DataFrame(audit_rows(records))
    rows["epsilon"] = rows["epsilon"].astype(object).where(rows["epsilon"].notna(), "–")
    lines = [
        "| mode | target ε | claimed ε (zero-out) | ε_lower (95%) | correct / guesses | ε_lower, step canaries (95%) | attack advantage over public-only (train rows) | member gap (train − held-out) | test AUROC | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    groups = sorted(
        rows.groupby(["mode", "epsilon"], sort=False),
        key=lambda g: (order.get(g[0][0], 99), -1.0 if g[0][1] == "–" else float(g[0][1])),
    )
    for (mode, eps), g in groups:
        # sgd_ori claims nothing (its record stores the claimed ε = ∞ as null)
        claimed = "∞ (none)" if mode == "sgd_ori" else _fmt(g["claimed_epsilon"].tolist())
        lines.append(
            f"| {mode} | {eps} | {claimed} | {_fmt(g['epsilon_lower'].tolist())} | "
            f"{'/'.join(map(str, g['correct']))} of {g['guesses'].iloc[0]} | {_fmt(g['epsilon_lower_step'].tolist())} | "
            f"{_fmt(g['advantage_train'].tolist(), 3)} | "
            f"{_fmt(g['member_gap'].tolist(), 3)} | {_fmt(g['test_auroc'].tolist(), 3)} | {len(g)} |"
        )
    return "\n".join(lines) + "\n"


MODE_ORDER = ("sgd_ori", "sgd_hybrid", "sgd_pub", "dpsgd", "naive_fusion", "naive_fusion_pub", "feature-dp",
              "calibrated_fusion", "fusiondp")  # fmt: skip


def run_audit_script(task: TabularTask, args: argparse.Namespace) -> dict:
    """What every ``scripts/audit_<dataset>.py`` does once it has its task: reuse the records already in
    --results_json, run the rest of the grid, print the table and write it to --table."""
    from pathlib import Path

    from fusiondp.results import load_records

    existing = (
        load_records(args.results_json) if args.results_json and Path(args.results_json).exists() else []
    )
    records = run_audit_grid(task, args, existing=existing)
    table = audit_table(records)
    print(table)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table)
    return {"records": records, "table": table}
