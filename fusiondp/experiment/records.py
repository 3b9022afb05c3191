"""The result record of one run: what was asked, what was used, what it guarantees, what it scored,
and where it ran (docs/design.md §8); and the one-line summary every training script prints.

Building a record reads no data: every value is passed in by :func:`fusiondp.experiment.run.run_experiment`.
Storing and finding records is :mod:`fusiondp.experiment.results`.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module stays importable without torch's start-up cost
    from fusiondp.experiment.config import RunConfig
    from fusiondp.mechanism.accounting import PrivacySpec
    from fusiondp.mechanism.modes import ModeSpec
    from fusiondp.mechanism.scaling import ScalingPlan
    from fusiondp.mechanism.step import StepConfig

EXPERIMENT_MODE = "sampler and noise seeded from a recorded seed (experiment mode)"
"""The reason a seeded DP run's record gives for ``privacy_guarantee_holds: false``. Tables keep such
runs (reproducibility is their point); a model meant for release is trained with ``--secure_rng``."""


def git_commit() -> str | None:
    """The repository's HEAD commit (with '+dirty' when the tree has changes), or None outside git."""
    root = Path(__file__).resolve().parents[2]  # the repository (fusiondp/experiment/records.py)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


# --------------------------------------------------------------------------------------------------
# The record of one run, and its one-line summary
# --------------------------------------------------------------------------------------------------

FEATURE_EPSILON_FIELDS = (
    "epsilon_zero_out",
    "accountant_zero_out",
    "epsilon_replace_one",
    "accountant_replace_one",
)

SUMMARY_KEYS = ("mode", "epsilon", "epsilon_spent", "sigma")


def build_record(
    config: RunConfig,
    *,
    dataset: str,
    mode: ModeSpec,
    step: StepConfig,
    privacy: PrivacySpec | None,
    steps: int,
    num_rows: int,
    num_features: int | None,
    c_h_source: str,
    alpha_rule: str,
    scaling: ScalingPlan | None,
    stats_epsilon: float | None,
    privacy_notes: Sequence[str],
    rng: str | None,
    outside_guarantee: list[str],
    per_example: tuple[str | None, str],
    log: list[dict],
    train_seconds: float | None,
    device: str,
    extra_record: dict | None = None,
    sensitive_scale: float | None = None,
) -> dict:
    """The result record of one finished run (docs/design.md §5): what was asked, what was used, what
    it guarantees, what it scored, and where it ran. Reads no data; every value is passed in.

    ``sensitive_scale``: the multiplier the data applied to its sensitive columns (tabular; None where
    the data has no such scale, e.g. notes)."""
    import torch  # the one heavy import, here only

    from fusiondp.mechanism.optim import ADAM_BETAS, ADAM_EPS

    stats_sigma = scaling.stats_noise_multiplier if scaling else None
    final = log[-1]
    method, method_reason = per_example
    return {
        "dataset": dataset,
        "mode": mode.name,
        "epsilon": config.epsilon,
        "delta": config.delta,
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "public_batch_size": config.public_batch_size,
        "lr": config.lr,
        "max_grad_norm": config.max_grad_norm,
        "alpha": config.alpha,
        "alpha_used": step.w_priv if mode.private_loss == "difference" else None,
        "alpha_rule": alpha_rule,
        "alpha_warmup": step.alpha_warmup if mode.private_loss == "difference" else None,
        "max_private_noise": config.max_private_noise,
        "beta": config.beta,
        "beta_meaning": config.beta_meaning,
        "mix_weight": config.mixing_weight if config.is_naive else None,
        "max_param_norm": config.max_param_norm,
        "c_h": step.c_h,
        "c_h_source": c_h_source,
        "w_pub": step.w_pub,
        "w_priv": step.w_priv,
        "regularizer_weight": step.reg_weight,
        "sigma": privacy.noise_multiplier if privacy else None,
        "sample_rate": config.batch_size / num_rows,
        "steps": steps,
        "accountant": privacy.accountant if privacy else None,
        "epsilon_spent": (
            privacy.epsilon_spent if privacy else (None if mode.name == "sgd_ori" else (stats_epsilon or 0.0))
        ),
        "neighbouring_relation": privacy.neighbouring_relation if privacy else None,
        # Feature-level epsilon of this sigma under both relations, whatever it was calibrated for.
        **{k: (getattr(privacy, k) if privacy else None) for k in FEATURE_EPSILON_FIELDS},
        "scaling": scaling.source if scaling else None,
        "scaling_description": scaling.description if scaling else None,
        "scaling_noise_multiplier": stats_sigma,
        "scaling_epsilon_cost": (
            (privacy.epsilon_spent - privacy.epsilon_without_statistics)
            if privacy and stats_sigma
            else stats_epsilon
        ),
        "epsilon_without_statistics": privacy.epsilon_without_statistics if privacy else None,
        "privacy_notes": [*(privacy.notes if privacy else ()), *(privacy_notes if privacy else ())],
        "rng": rng,
        "guarantee": (
            f"(eps, delta) feature-level DP: original sensitive values are read only through the DP "
            f"scaling statistics (--scaling dp), eps = {stats_epsilon:.4g}"
            if stats_epsilon
            else mode.guarantee
        )
        # The mode's nominal guarantee is not this run's when something lies outside it (e.g. a scale
        # fitted on private rows under sgd_hybrid, whose nominal guarantee says they are never read).
        + (
            ""
            if not outside_guarantee or mode.name == "sgd_ori"
            else " [nominal: does not hold for this run, see outside_guarantee]"
        ),
        "privacy_guarantee_holds": mode.name != "sgd_ori" and not outside_guarantee,
        "outside_guarantee": outside_guarantee,
        "divide_by_realised_batch": config.divide_by_realised_batch,
        "per_example_method": method,
        "per_example_reason": method_reason,
        # The update rule and input scale used (every mode; effective values, defaults included).
        "optimizer": step.optimizer,
        "momentum": step.momentum if step.optimizer == "momentum" else None,
        "adam_betas": list(ADAM_BETAS) if step.optimizer == "adam" else None,
        "adam_eps": ADAM_EPS if step.optimizer == "adam" else None,
        "lr_schedule": step.lr_schedule,
        "sensitive_scale": sensitive_scale,
        **{k: final[k] for k in final if k.startswith(("val_", "test_"))},
        "train_seconds": train_seconds,
        # None where the timing depends on private data (run_experiment's private_timing)
        "seconds_per_epoch": None if train_seconds is None else train_seconds / max(len(log), 1),
        "num_train_rows": num_rows,
        "num_features": num_features,
        "epochs_log": log,
        "device": device,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # float sums, hence the last digits, depend on it
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "command": command_line(),
        "args": config.settings(),
        **(extra_record or {}),
    }


def print_summary(record: dict, metrics: Sequence[str], *, extra: Sequence[str] = ()) -> None:
    """One JSON line on stdout: the run's mode and privacy (:data:`SUMMARY_KEYS`), ``extra`` keys, and
    ``metrics`` (the dataset's headline test metrics). Every training script ends with it."""
    keys = (*SUMMARY_KEYS, *extra, *metrics)
    print(json.dumps({k: record.get(k) for k in keys}))
