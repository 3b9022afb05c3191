"""Tabular runs: scale each view (``--scaling``), build the tensors, train and record (docs/design.md §5).

The scripts of the tabular data sets hand their frames and column roles to :func:`run_tabular` (or,
for the splits an ``impute_<dataset>.py`` wrote, :func:`run_imputed_tabular`) with the run's
:class:`fusiondp.experiment.config.RunConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pandas as pd
import torch
from torch import nn

from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.groups import MIN_GROUP_CLASS, MIN_GROUP_ROWS, GroupSpec, describe, group_evaluation
from fusiondp.experiment.records import print_summary
from fusiondp.experiment.run import run_experiment
from fusiondp.mechanism.accounting import ADD_REMOVE
from fusiondp.mechanism.modes import NOISE, get_mode
from fusiondp.mechanism.randomness import os_entropy_generator
from fusiondp.mechanism.scaling import (
    ScalingPlan,
    check_bounds,
    check_bounds_cover_public,
    column_statistics,
    dp_statistics,
    support_statistics,
)
from fusiondp.models import binary_bce
from fusiondp.tabular.data import imputer_provenance, load_imputed_splits, prepare_tabular

TABULAR_METRICS = ("test_auroc", "test_aupr", "test_f1")


def plan_tabular_scaling(
    config: RunConfig,
    frames: dict[str, pd.DataFrame],
    *,
    sensitive: Sequence[str],
    categorical: Sequence[str],
    bounds: dict[str, tuple[float, float]],
    support_where: str,
) -> tuple[ScalingPlan, pd.DataFrame]:
    """The original view's statistics for ``--scaling``, and the rows the shared statistics are fitted on.

    ``frames``: ``train`` (original rows), ``train_imputed`` (hybrid), ``support`` (public, or None).
    Shared statistics (public columns, vocabularies) come from the hybrid and support rows under
    feature-level DP; under sample-level DP (dpsgd) every column of a training row is private, so
    from the support rows alone. Only ``--scaling dp`` (through the Gaussian mechanism) and
    ``--scaling private`` (not private, and recorded so) read original values.
    """
    mode = get_mode(config.mode)
    sample_level = mode.relation == ADD_REMOVE
    numeric_sensitive = [c for c in sensitive if c not in set(categorical)]
    original, hybrid, support = frames["train"], frames["train_imputed"], frames.get("support")
    public_rows = (
        hybrid
        if support is None
        else pd.concat([hybrid, support[hybrid.columns.intersection(support.columns)]])
    )
    if config.scaling == "private":
        plan = ScalingPlan(
            "private",
            column_statistics(original, numeric_sensitive),
            "mean/std of the training rows' ORIGINAL values, as the authors do: NOT PRIVATE",
            reads_private_values=True,
        )
        return plan, original if sample_level else public_rows
    if config.scaling == "dp":
        if sample_level:
            raise ValueError(
                f"--scaling dp estimates only the sensitive columns, but {mode.name} protects whole rows: "
                "every statistic it uses must come from public rows. Use --scaling support."
            )
        wanted = {c: bounds[c] for c in numeric_sensitive if c in bounds}
        check_bounds(bounds, numeric_sensitive)
        check_bounds_cover_public(wanted, public_rows, what="hybrid and support rows")
        generator = (
            os_entropy_generator() if config.secure_rng else torch.Generator().manual_seed(config.seed + 3)
        )
        stats = dp_statistics(
            original,
            bounds=wanted,
            noise_multiplier=config.scaling_noise_multiplier,
            generator=generator,
        )
        description = (
            f"Gaussian-mechanism estimate from the {len(original)} training rows' original values "
            f"(noise multiplier {config.scaling_noise_multiplier}, ranges {wanted}), composed into epsilon"
        )
        return ScalingPlan(
            "dp", stats, description, stats_noise_multiplier=config.scaling_noise_multiplier
        ), public_rows
    if support is None and (sample_level or numeric_sensitive):
        support_statistics(None, numeric_sensitive, where=support_where)  # raises the clear error
    stats = support_statistics(support, numeric_sensitive, where=support_where) if numeric_sensitive else {}
    description = f"true values of the public support set ({support_where}, {len(support)} rows)"
    return ScalingPlan("support", stats, description), support if sample_level else public_rows


def binary_zero_out_notes(
    mode_name: str, plan: ScalingPlan, hybrid: pd.DataFrame, *, binary: Sequence[str]
) -> list[str]:
    """What a split mode's zero-out neighbour is for numeric 0/1 sensitive columns, for the record.

    Each view has its own scale, so the neighbour's value is the imputation carried onto the original
    view's scale (:func:`fusiondp.tabular.data.zero_out_values`), e.g. 0.94 for a Gender imputed as 1: not a
    real value. A shared scale would make it the imputation itself, but cost fusiondp 0.017 test AUPR on
    sepsis at epsilon 2 (docs/privacy.md §5), so the record says what the neighbour is instead. Reads
    the hybrid rows (public) and the plan's statistics; values from private statistics are not shown.
    """
    mode = get_mode(mode_name)
    binary = [c for c in binary if c in plan.stats]
    if mode.private_loss != "difference" or not binary:
        return []
    if mode.public_view == NOISE:
        return [
            f"the noise view puts N(0,1) values into the binary columns {binary}, which no real row has: their "
            "zero-out neighbour is not a real value, so only the replace-one epsilon is meaningful for them"
        ]
    shown = ""
    if not plan.reads_private_values:
        hybrid_stats = column_statistics(hybrid, binary)
        values = []
        for col in binary:
            (mu_o, sd_o), (mu_h, sd_h) = plan.stats[col], hybrid_stats[col]
            zero, one = (mu_o + sd_o * (x - mu_h) / sd_h for x in (0.0, 1.0))
            values.append(f"{col} imputed 0 -> {zero:.3f}, 1 -> {one:.3f}")
        shown = f" (this run: {'; '.join(values)})"
    return [
        f"zero-out neighbour of the binary columns {binary}: each row's imputation carried onto the original "
        f"view's scale (each view has its own), not a real 0/1 value{shown}; for these columns the zero-out "
        "epsilon compares the true value with that value, not with the other category: the replace-one "
        "epsilon is the meaningful number there"
    ]


def run_tabular(
    config: RunConfig,
    *,
    dataset: str,
    frames: dict[str, pd.DataFrame],
    public: Sequence[str],
    sensitive: Sequence[str],
    categorical: Sequence[str],
    label: str,
    bounds: dict[str, tuple[float, float]],
    support_where: str,
    build_model: Callable[[int], nn.Module],
    extra_record: dict | None = None,
    binary: Sequence[str] = (),
    groups: Sequence[GroupSpec] = (),
) -> dict:
    """Scale each view (``--scaling``), build the tensors, train and record one tabular run.

    ``bounds`` (public, one per numeric sensitive column) also clip the original view's values before
    they are standardised (:func:`fusiondp.tabular.data.original_clip_bounds`); the record names the ranges
    used in ``original_values_clipped_to_bounds``, never how many values they moved (that count is a
    statistic of the original values). ``binary``: numeric 0/1 sensitive columns; a split mode's
    record says what their zero-out neighbour is (:func:`binary_zero_out_notes`). ``groups``: the
    dataset's ``GROUPS``; the final record then carries per-group test metrics
    (:mod:`fusiondp.experiment.groups`), assigned from ``frames["test"]`` alone (its original values).
    """
    mode = get_mode(config.mode)
    numeric_sensitive = [c for c in sensitive if c not in set(categorical)]
    check_bounds(bounds, numeric_sensitive)
    plan, shared_fit = plan_tabular_scaling(
        config,
        frames,
        sensitive=sensitive,
        categorical=categorical,
        bounds=bounds,
        support_where=support_where,
    )
    # Split modes: widen the ranges to hold every zero-out value of the public view the private term
    # is the difference against. Others have no zero-out neighbour (dpsgd's hybrid rows are private).
    zero_out_view = mode.public_view if mode.private_loss == "difference" else None
    data, original_prep = prepare_tabular(
        frames["train"],
        frames["train_imputed"],
        frames["val"],
        frames["test"],
        sensitive=sensitive,
        public=public,
        label=label,
        categorical=categorical,
        one_hot=bool(config.extra("one_hot", False)),
        noise_seed=config.seed,
        original_stats=plan.stats,
        shared_fit=shared_fit,
        bounds=bounds,
        zero_out_view=zero_out_view,
        sensitive_scale=config.sensitive_scale_used,
    )
    clipping = {
        "original_values_clipped_to_bounds": {c: list(r) for c, r in original_prep.clip_.items()},
        "original_values_clip_rule": (
            "original view's numeric sensitive values (training rows, val, test) clipped to the dataset's "
            "public BOUNDS"
            + (
                f", widened to hold every training row's zero-out value against the {zero_out_view} view"
                if zero_out_view
                else ""
            )
            + ", before standardising; the public views are not clipped"
        ),
    }
    if config.sensitive_scale is not None:
        clipping["sensitive_scale_rule"] = (
            f"sensitive columns' standardised values, and the one-hot (or ordinal) blocks of categorical "
            f"sensitive columns, multiplied by {config.sensitive_scale_used} in every view (original, "
            "hybrid, noise; training, val, test); public columns unchanged"
        )
    notes = binary_zero_out_notes(config.mode, plan, frames["train_imputed"], binary=binary)
    categorical_sensitive = [c for c in sensitive if c in set(categorical)]
    if mode.public_view == NOISE and categorical_sensitive:
        notes.append(
            f"the noise view puts N(0,1) values into the one-hot columns of {categorical_sensitive}, which no "
            "real row has: its zero-out neighbour is not a real data set, so only the replace-one epsilon "
            "is meaningful for those columns"
        )
    group_info = (
        {
            "group_definitions": describe(groups),
            "group_min_rows": MIN_GROUP_ROWS,
            "group_min_class": MIN_GROUP_CLASS,
        }
        if groups
        else {}
    )
    record = run_experiment(
        config,
        dataset=dataset,
        data=data,
        build_model=lambda: build_model(data.num_features),
        loss_fn=binary_bce,
        extra_record={"sensitive_columns": list(sensitive), **clipping, **group_info, **(extra_record or {})},
        scaling=plan,
        privacy_notes=notes,
        final_evaluation=group_evaluation(frames["test"], groups),
    )
    print_summary(record, TABULAR_METRICS, extra=("alpha_used",))
    return record


def run_imputed_tabular(config: RunConfig, dataset: ModuleType) -> dict:
    """Train on the splits an ``impute_<dataset>.py`` wrote to ``--data_dir`` and record the run.

    ``dataset`` is the dataset's module (``fusiondp.datasets.<name>``): its columns, label, public
    ``BOUNDS`` and ``build_model`` are all a run needs from it. The support set is public: it scales
    the original view (``--scaling support``) and joins the hybrid rows in fitting vocabularies and
    public columns' scales. The record names the imputer that made the hybrid file (and whether it
    deviates from the paper).
    """
    data_dir = Path(config.extra("data_dir"))
    name, public, sensitive, label = dataset.NAME, dataset.PUBLIC, dataset.SENSITIVE, dataset.LABEL
    frames = load_imputed_splits(data_dir, dataset=name, public=public, sensitive=sensitive, label=label)
    return run_tabular(
        config,
        dataset=name,
        frames=frames,
        public=public,
        sensitive=sensitive,
        categorical=dataset.CATEGORICAL,
        label=label,
        bounds=dataset.BOUNDS,
        support_where=str(data_dir / f"{name}_support.csv"),
        build_model=dataset.build_model,
        binary=getattr(dataset, "BINARY", ()),
        extra_record={
            "data_dir": str(config.extra("data_dir")),
            **imputer_provenance(data_dir),
        },
        groups=getattr(dataset, "GROUPS", ()),
    )
