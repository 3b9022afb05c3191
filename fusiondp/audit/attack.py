"""Attribute inference: what the model adds to the public columns about a row's sensitive values.

Privacy contract: this is the AUDITOR. It reads original sensitive values on purpose (the attack's
targets on validation, training and test rows); nothing here feeds a training path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import r2_score
from torch import nn

from fusiondp.audit.canaries import AuditedRun, CanaryPlan, TabularTask, features
from fusiondp.models import binary_bce
from fusiondp.tabular.data import TabularPreprocessor


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
    x_blank = features(prep, blank, task)
    public_idx = prep.feature_indices(task.public)
    public = np.column_stack([x_blank[:, public_idx].numpy(), y.numpy()])
    logits, h = model(x_blank)
    losses = []
    for value in _candidates(task, col):
        probe = blank.copy()
        probe[col] = value
        losses.append(binary_bce(model(features(prep, probe, task))[0], y).numpy())
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
