"""Per-group test metrics: does a model serve some demographic groups worse than others?

The sensitive columns are demographics (age, gender, race, ICU unit, ...). A dataset module declares
``GROUPS``, a tuple of :class:`GroupSpec` built with :func:`categories`, :func:`bands` or
:func:`indicators`: which column defines a group family and how it is banded. The bands are public
constants (a dataset fact), never fitted to data.

Evaluation only. Groups are assigned from the TEST rows' original values (:func:`assign_groups`
receives the test frame and nothing else), row-aligned with the test tensor, and used once, after
training, on the final model's test predictions (:func:`group_fields`). Nothing here reaches
training: the group row ids are not part of the training data and no training row is read.

Record fields (:func:`group_fields`):

* ``test_groups``: ``{"Age=80+": {"n", "positives", "positive_rate", "predicted_positive_rate",
  "auroc", "aupr"}, ...}``; ``positive_rate`` is the share of positive LABELS in the group (its
  prevalence), ``predicted_positive_rate`` the share predicted positive at threshold 0.5. A group with
  fewer than :data:`MIN_GROUP_ROWS` rows, or fewer than :data:`MIN_GROUP_CLASS` positives or
  negatives (AUROC undefined or meaningless), is ``{"n", "too_small": true, "reason"}``, no numbers.
* ``test_group_auroc_gap``: the largest minus the smallest AUROC over all reported groups (all
  families together), ``test_worst_group`` and ``test_worst_group_auroc``: the group with the smallest
  AUROC; ``test_group_auroc_gap_<family>`` and ``test_worst_group_<family>``: the same within one
  family (e.g. ``Age``). Flat scalars, so that ``scripts/make_tables.py`` can tabulate them; None
  (JSON null) when fewer than two groups (for a gap) or none (for a worst group) are reported.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fusiondp.experiment.metrics import binary_metrics, predict_proba

MIN_GROUP_ROWS = 50
"""Groups with fewer test rows are reported as too small."""
MIN_GROUP_CLASS = 5
"""Groups with fewer positives or fewer negatives than this are reported as too small."""
UNKNOWN = "unknown"
"""The label of a row whose defining value is missing."""


@dataclass(frozen=True)
class GroupSpec:
    """One family of groups: its name, the columns it reads, and how a row gets its group label.

    ``assign`` receives a frame of exactly ``columns`` (the test rows) and returns one label per row;
    ``labels`` lists the labels in reporting order (others, e.g. an unlisted category, follow sorted;
    ``unknown`` comes last).
    """

    family: str
    columns: tuple[str, ...]
    assign: Callable[[pd.DataFrame], pd.Series]
    labels: tuple[str, ...] = ()
    description: str = ""


def _value_name(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def categories(column: str, names: Mapping | None = None, *, family: str | None = None) -> GroupSpec:
    """One group per value of ``column`` (``names`` maps codes to labels); missing values are ``unknown``."""
    names = dict(names or {})

    def assign(frame: pd.DataFrame) -> pd.Series:
        values = frame[column]
        labels = values.map(lambda v: names.get(v, _value_name(v)) if pd.notna(v) else UNKNOWN)
        return labels.astype(object)

    listed = tuple(names.values())
    what = f"{column} values" + (f" ({', '.join(f'{k}={v}' for k, v in names.items())})" if names else "")
    return GroupSpec(family or column, (column,), assign, listed, what)


def band_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """``(40, 60, 80)`` → ``("<40", "40-59", "60-79", "80+")``: [lo, hi) bands named as ages are."""

    def show(x: float) -> str:
        return _value_name(float(x))

    inner = [
        f"{show(lo)}-{show(hi - 1) if float(hi).is_integer() else show(hi)}"
        for lo, hi in itertools.pairwise(edges)
    ]
    return (f"<{show(edges[0])}", *inner, f"{show(edges[-1])}+")


def bands(column: str, edges: Sequence[float], *, family: str | None = None) -> GroupSpec:
    """Bands of a numeric ``column`` at public ``edges`` (each band [lo, hi)); missing is ``unknown``."""
    edges = tuple(float(e) for e in edges)
    if list(edges) != sorted(set(edges)) or not edges:
        raise ValueError(f"band edges must be increasing and distinct, got {edges}.")
    labels = band_labels(edges)

    def assign(frame: pd.DataFrame) -> pd.Series:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        index = np.searchsorted(np.asarray(edges), values, side="right")  # x < e0 → 0; e0 <= x < e1 → 1
        out = np.array([labels[i] for i in np.minimum(index, len(labels) - 1)], dtype=object)
        out[np.isnan(values)] = UNKNOWN
        return pd.Series(out, index=frame.index, dtype=object)

    return GroupSpec(family or column, (column,), assign, labels, f"{column} bands {labels}")


def indicators(columns: Mapping[str, str], *, family: str) -> GroupSpec:
    """A family coded as 0/1 indicator columns (``{"Unit1": "MICU", ...}``): a row's group is the label
    of the column that is 1; ``unknown`` when they are all missing, ``none`` when none is 1, ``several``
    when more than one is."""
    names = dict(columns)

    def assign(frame: pd.DataFrame) -> pd.Series:
        values = frame[list(names)].apply(pd.to_numeric, errors="coerce")
        ones = values.eq(1)
        out = pd.Series("none", index=frame.index, dtype=object)
        for col, label in names.items():
            out[ones[col]] = label
        out[ones.sum(axis=1) > 1] = "several"
        out[values.isna().all(axis=1)] = UNKNOWN
        return out

    what = f"indicator columns {', '.join(f'{c}=1: {v}' for c, v in names.items())}; all missing: {UNKNOWN}"
    return GroupSpec(family, tuple(names), assign, (*names.values(), "none", "several"), what)


def assign_groups(test: pd.DataFrame, specs: Sequence[GroupSpec]) -> dict[str, np.ndarray]:
    """Row positions of each group in ``test`` (the evaluation rows, original values, in tensor order).

    Keys are ``"<family>=<label>"``, families in declaration order, labels in the spec's order (empty
    groups left out). Each spec sees only its own columns of ``test``.
    """
    out: dict[str, np.ndarray] = {}
    families = [spec.family for spec in specs]
    if len(set(families)) != len(families):
        raise ValueError(f"group families must be distinct, got {families}.")
    for spec in specs:
        missing = [c for c in spec.columns if c not in test.columns]
        if missing:
            raise ValueError(f"group family {spec.family!r} needs column(s) {missing}, not in the test rows.")
        labels = np.asarray(spec.assign(test[list(spec.columns)].reset_index(drop=True)), dtype=object)
        if len(labels) != len(test):
            raise ValueError(f"group family {spec.family!r} labelled {len(labels)} of {len(test)} rows.")
        present = set(labels.tolist())
        order = [lab for lab in spec.labels if lab in present and lab != UNKNOWN]
        order += sorted(present - set(order) - {UNKNOWN}, key=str)
        order += [UNKNOWN] if UNKNOWN in present else []
        for label in order:
            out[f"{spec.family}={label}"] = np.flatnonzero(labels == label)
    return out


def family_of(group: str) -> str:
    """``"Age=80+"`` → ``"Age"``."""
    return group.split("=", 1)[0]


def group_metrics(
    y_true: np.ndarray,
    prob: np.ndarray,
    groups: Mapping[str, np.ndarray],
    *,
    min_rows: int = MIN_GROUP_ROWS,
    min_class: int = MIN_GROUP_CLASS,
    threshold: float = 0.5,
) -> dict[str, dict]:
    """Each group's metrics: :func:`fusiondp.experiment.metrics.binary_metrics` on its rows alone, or too small."""
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    out = {}
    for name, rows in groups.items():
        y, p = y_true[rows], prob[rows]
        n, positives = len(rows), int(y.sum())
        if n < min_rows or min(positives, n - positives) < min_class:
            reason = (
                f"fewer than {min_rows} rows"
                if n < min_rows
                else f"fewer than {min_class} positives or negatives ({positives} of {n} positive)"
            )
            out[name] = {"n": n, "too_small": True, "reason": reason}
            continue
        metrics = binary_metrics(y, p, threshold=threshold)
        out[name] = {
            "n": n,
            "positives": positives,
            "positive_rate": positives / n,
            "predicted_positive_rate": float((p >= threshold).mean()),
            "auroc": metrics["auroc"],
            "aupr": metrics["aupr"],
        }
    return out


def gap_summary(groups: Mapping[str, dict], *, prefix: str = "test") -> dict:
    """The largest minus the smallest group AUROC and the worst group, overall and per family."""

    def summary(names: list[str]) -> tuple[float | None, str | None, float | None]:
        scored = {g: groups[g]["auroc"] for g in names if not groups[g].get("too_small")}
        scored = {g: a for g, a in scored.items() if a is not None and math.isfinite(a)}
        if not scored:
            return None, None, None
        worst = min(scored, key=scored.get)
        gap = max(scored.values()) - scored[worst] if len(scored) > 1 else None
        return gap, worst, scored[worst]

    gap, worst, worst_auroc = summary(list(groups))
    out = {
        f"{prefix}_group_auroc_gap": gap,
        f"{prefix}_worst_group": worst,
        f"{prefix}_worst_group_auroc": worst_auroc,
    }
    for family in dict.fromkeys(family_of(g) for g in groups):
        gap, worst, _ = summary([g for g in groups if family_of(g) == family])
        out[f"{prefix}_group_auroc_gap_{family}"] = gap
        out[f"{prefix}_worst_group_{family}"] = worst
    return out


def group_fields(
    y_true: np.ndarray, prob: np.ndarray, groups: Mapping[str, np.ndarray], *, prefix: str = "test", **kwargs
) -> dict:
    """The record fields (see the module docstring): ``<prefix>_groups`` and the gap summary."""
    metrics = group_metrics(y_true, prob, groups, **kwargs)
    return {f"{prefix}_groups": metrics, **gap_summary(metrics, prefix=prefix)}


def group_evaluation(test: pd.DataFrame, specs: Sequence[GroupSpec]) -> Callable | None:
    """``evaluate(model, data) -> record fields`` for :func:`fusiondp.experiment.loop.run_experiment`'s final
    evaluation, or None without ``specs``.

    ``test``: the test rows' original values (the frame the test tensor was built from, same rows in
    the same order). The groups are assigned here, from ``test`` alone; the returned function scores
    ``data.x_test`` / ``data.y_test`` with the final model.
    """
    if not specs:
        return None
    groups = assign_groups(test, specs)

    def evaluate(model, data) -> dict:
        if len(data.y_test) != len(test):
            raise ValueError(f"{len(data.y_test)} test rows in the tensor but {len(test)} in the frame.")
        return group_fields(data.y_test.cpu().numpy(), predict_proba(model, data.x_test), groups)

    return evaluate


def describe(specs: Sequence[GroupSpec]) -> dict[str, str]:
    """``{family: how its groups are defined}``, for the record."""
    return {spec.family: spec.description for spec in specs}
