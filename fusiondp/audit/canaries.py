"""Input-space canaries in one training run (docs/design.md §4), and the neighbour-invariance check.

m training rows become canaries; each flips a fair coin. "In" canaries get extreme but valid ORIGINAL
sensitive values (per column, the observed minimum or maximum, whichever is farther from the row's
imputed value; for a categorical column another category, at random); "out" canaries get original
values EQUAL to their hybrid values, exactly the zero-out neighbour (their private term is 0). One
model is trained through :func:`fusiondp.experiment.run.run_experiment`; each canary is scored white-box on the
final model (:func:`canary_scores`), and :func:`fusiondp.audit.bound.canary_audit` turns the scores
into ε_lower. :func:`public_state_check`: everything computed outside the mechanism (the
preprocessor's statistics, C_h) must be bit-identical between the planted data and its zero-out
neighbour; a released quantity that differs breaks every finite ε.

Privacy contract: this is the AUDITOR. It reads original sensitive values on purpose (to plant and to
score canaries); nothing here may feed a training path other than through the canary-planted data it
hands to ``run_experiment``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from fusiondp.audit.controls import PipelineControl
from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.plan import resolve_c_h
from fusiondp.experiment.run import run_experiment
from fusiondp.mechanism.modes import get_mode
from fusiondp.mechanism.scaling import column_statistics
from fusiondp.mechanism.step import per_example_gradients, per_example_norms, trainable_params
from fusiondp.models import binary_bce, eval_mode
from fusiondp.tabular.data import TabularData, TabularPreprocessor, prepare_tabular

STATISTICS = ("loss", "gradient")
EXTREME_QUANTILES = (0.0, 1.0)
"""Canary values of numeric sensitive columns: the observed minimum or maximum (valid, yet extreme)."""


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


@dataclass
class AuditedRun:
    record: dict
    model: nn.Module
    prep: TabularPreprocessor
    planted: pd.DataFrame
    initial_state: dict[str, Tensor]


def prepare(
    task: TabularTask,
    planted: pd.DataFrame,
    *,
    seed: int,
    control: PipelineControl | None = None,
    sensitive_scale: float = 1.0,
) -> tuple[TabularData, TabularPreprocessor]:
    """The tensors of the planted rows, both views on the hybrid rows' scale (``control``: a broken
    preprocessor fitted on the original rows too; ``sensitive_scale``: ``--sensitive_scale``)."""
    support = task.frames.get("support")
    numeric_sensitive = [c for c in task.sensitive if c not in set(task.categorical)]
    shared = task.frames["hybrid"] if support is None else pd.concat([task.frames["hybrid"], support])
    # Both views on the hybrid rows' scale (public): the audit tests the mechanism, and with one scale
    # an "out" canary (its row's hybrid values) is exactly the zero-out neighbour.
    stats = column_statistics(task.frames["hybrid"], numeric_sensitive)
    if (
        control is not None and control.scaler_from_private
    ):  # broken on purpose: scalers/vocabularies see original values
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
        sensitive_scale=sensitive_scale,
    )


def audited_config(config: RunConfig, control: PipelineControl | None = None) -> RunConfig:
    """The configuration the audited run trains with: no record of its own (the audit writes one),
    and, for the ``c_h_from_private`` control, the reference's C_h from original rows."""
    config = config.replace(results_json=None, skip_existing=False)
    if control is not None and control.c_h_from_private:
        config = config.replace(c_h=None, c_h_from_private=True)
    return config


def audited_run(
    task: TabularTask,
    config: RunConfig,
    plan: CanaryPlan,
    *,
    control: PipelineControl | None = None,
) -> AuditedRun:
    """Plant the canaries and train ONE model through :func:`fusiondp.experiment.run.run_experiment`."""
    planted = plant_canaries(task, plan)
    data, prep = prepare(
        task, planted, seed=config.seed, control=control, sensitive_scale=config.sensitive_scale_used
    )
    built: dict = {}

    def build_model() -> nn.Module:
        built["model"] = model = task.build_model(data.num_features)
        built["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model

    record = run_experiment(
        audited_config(config, control),
        dataset=task.dataset,
        data=data,
        build_model=build_model,
        loss_fn=binary_bce,
        extra_record={**task.extra_record, "sensitive_columns": task.sensitive},
    )
    return AuditedRun(record, built["model"], prep, planted, built["initial"])


def features(prep: TabularPreprocessor, frame: pd.DataFrame, task: TabularTask) -> Tensor:
    """The model's input features of ``frame``'s rows (public and sensitive columns)."""
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
    x_in, x_ref = features(run.prep, in_rows, task), features(run.prep, hybrid_rows, task)
    y = torch.from_numpy(hybrid_rows[task.label].astype(float).to_numpy(np.float32))
    model = run.model
    with eval_mode(model):
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
            grads = per_example_gradients(
                model,
                x_in,
                x_ref,
                y,
                loss_fn=binary_bce,
                reg_weight=run.record.get("regularizer_weight") or 0.0,
                c_h=run.record.get("c_h"),
            )
            moved = {k: run.initial_state[k] - p.detach() for k, p in trainable_params(model).items()}
            dots = sum((g.flatten(1) * moved[k].flatten()).sum(1) for k, g in grads.items())
            return (dots / (per_example_norms(grads) + 1e-12)).numpy()
    raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}.")


def public_state_check(
    task: TabularTask, config: RunConfig, plan: CanaryPlan, *, control: PipelineControl | None = None
) -> dict:
    """Are the preprocessor and C_h bit-identical on the planted data and its zero-out neighbour?

    Both are released (the preprocessor is part of the model, C_h is in the record) without noise,
    so any difference between neighbours breaks every finite ε: ``epsilon_lower`` is then ∞.
    """
    mode = get_mode(config.mode)
    config = audited_config(config, control)
    states = []
    for planted in (plant_canaries(task, plan), plant_canaries(task, plan, all_out=True)):
        data, prep = prepare(
            task, planted, seed=config.seed, control=control, sensitive_scale=config.sensitive_scale_used
        )
        torch.manual_seed(config.seed)
        model = task.build_model(data.num_features)
        c_h, _ = resolve_c_h(
            mode, model, data, c_h=config.c_h, c_h_from_private=config.c_h_from_private, seed=config.seed
        )
        states.append((prep.means_, prep.stds_, prep.vocab_, c_h))
    (m1, s1, v1, c1), (m2, s2, v2, c2) = states
    differs = {"preprocessor": (m1, s1, v1) != (m2, s2, v2), "c_h": c1 != c2}
    return {
        "public_state_differs": [k for k, bad in differs.items() if bad],
        "epsilon_lower_deterministic": math.inf if any(differs.values()) else 0.0,
    }
