"""Evaluation metrics and the evaluation pass (every row, in order, in eval mode)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torch import Tensor, nn

from fusiondp.models import eval_mode


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, *, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, AUROC, AUPR (average precision) and F1 at ``threshold``.

    AUROC and AUPR are NaN when ``y_true`` holds a single class (they are undefined there).
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    if len(y_true) != len(prob):
        raise ValueError(f"{len(y_true)} labels but {len(prob)} predictions.")
    if not np.all(np.isfinite(prob)):
        raise ValueError("predictions contain NaN or inf: the model diverged (lower --lr?).")
    pred = (prob >= threshold).astype(int)
    two_classes = len(np.unique(y_true)) == 2
    return {
        "acc": float((pred == y_true).mean()),
        "auroc": float(roc_auc_score(y_true, prob)) if two_classes else math.nan,
        "aupr": float(average_precision_score(y_true, prob)) if two_classes else math.nan,
        "f1": float(f1_score(y_true, pred, zero_division=0)),
    }


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor, *, chunk: int = 8192) -> np.ndarray:
    """Sigmoid of the logits for every row of ``x``, in order, with the model in eval mode.

    The model's previous mode (train or eval) is restored afterwards.
    """
    with eval_mode(model):
        parts = [torch.sigmoid(model(x[i : i + chunk])[0].squeeze(-1)) for i in range(0, len(x), chunk)]
    return torch.cat(parts).float().cpu().numpy() if parts else np.zeros(0)


def evaluate_binary(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        return binary_metrics(y.cpu().numpy(), predict_proba(model, x))


def multilabel_metrics(y_true: np.ndarray, prob: np.ndarray, *, threshold: float = 0.5) -> dict[str, float]:
    """Micro/macro F1, precision, recall (at ``threshold``) and micro/macro AUROC for multi-hot labels.

    Macro AUROC averages over the labels that have both classes in ``y_true`` (undefined for the
    others, as in caml-mimic); NaN when no label has both.
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    if y_true.shape != prob.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and predictions {prob.shape} must be equal (rows, labels).")
    if not np.all(np.isfinite(prob)):
        raise ValueError("predictions contain NaN or inf: the model diverged (lower --lr?).")
    pred = (prob >= threshold).astype(int)
    out = {}
    for avg in ("micro", "macro"):
        out[f"{avg}_f1"] = float(f1_score(y_true, pred, average=avg, zero_division=0))
        out[f"{avg}_precision"] = float(precision_score(y_true, pred, average=avg, zero_division=0))
        out[f"{avg}_recall"] = float(recall_score(y_true, pred, average=avg, zero_division=0))
    both = [k for k in range(y_true.shape[1]) if len(np.unique(y_true[:, k])) == 2]
    flat = y_true.ravel()
    out["micro_auc"] = float(roc_auc_score(flat, prob.ravel())) if len(np.unique(flat)) == 2 else math.nan
    out["macro_auc"] = (
        float(np.mean([roc_auc_score(y_true[:, k], prob[:, k]) for k in both])) if both else math.nan
    )
    return out


@torch.no_grad()
def evaluate_multilabel(
    model: nn.Module,
    notes: Sequence[Tensor],
    y: Tensor,
    *,
    pad: Callable[[Sequence[Tensor]], Tensor],
    chunk: int = 128,
) -> dict[str, float]:
    """:func:`multilabel_metrics` over every note, in order, in eval mode; ``pad`` batches a chunk."""
    with eval_mode(model):
        parts = [torch.sigmoid(model(pad(notes[i : i + chunk]))[0]) for i in range(0, len(notes), chunk)]
    prob = torch.cat(parts).float().cpu().numpy() if parts else np.zeros(tuple(y.shape))
    return multilabel_metrics(y.cpu().numpy(), prob)
