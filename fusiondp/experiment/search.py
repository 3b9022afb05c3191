"""Search spaces for tuning, as data: declared before any run, the same size for every mode.

A space maps a train-script flag (``lr``, ``max_grad_norm``, ...) to how its value is drawn:

* ``("log", low, high)``: log-uniform (learning rates, clip norms, weights);
* ``("uniform", low, high)``;
* ``("int", low, high)``: an integer, uniform;
* ``("choice", [v1, v2, ...])``: one of the values. A value may be a bundle ``"flag=v,flag=v"`` that
  sets several flags together (an expected batch size with its epochs: ``"batch_size=512,epochs=26"``).

:func:`search_space` builds a mode's space: :data:`COMMON` (every mode), :data:`SPLIT_MODES` (the
split step's α and κ), :data:`REGULARIZED` (fusiondp's β), then the dataset module's
``TUNING_BATCHES`` (bundles of expected batch and epochs with about the same number of steps per
epoch budget) and its ``TUNING_SPACE`` (overrides). Under the honest protocol the privacy-relevant
flags (batch size, epochs) are not searched: every trial then shares q and T, so one σ meets the
tuned total (:mod:`fusiondp.mechanism.tuning` can bound mixed settings, but a trial cannot know the
others' σ). Candidates are drawn by Optuna's RandomSampler: independent and uniform over the space, as
Papernot & Steinke's theorem requires of the honest protocol.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from fusiondp.mechanism.modes import get_mode

Space = dict[str, tuple]

COMMON: Space = {
    "lr": ("log", 0.003, 1.0),
    "max_grad_norm": ("log", 0.2, 5.0),
    "public_batch_size": ("choice", [1024, 4096]),
    "optimizer": ("choice", ["sgd", "momentum", "adam"]),
    "lr_schedule": ("choice", ["constant", "cosine"]),
    "sensitive_scale": ("log", 0.3, 3.0),
}
"""Every mode's knobs: lr (wide enough for Adam's smaller rates), the clip norm (the non-private modes
ignore it; searching it costs them nothing), the public batch, the update rule (SGD, momentum 0.9, Adam:
DP-Adam for the private term, whose moments see only the noised gradient), the schedule, and the
public scale s of the sensitive columns (every view; input scale is a DP-SGD hyperparameter)."""
SPLIT_MODES: Space = {
    "alpha": ("log", 0.3, 10.0),
    "max_private_noise": ("choice", [0.0, 1.0, 3.0, 10.0]),
}
"""The split step's private weight α and its cap κ on α·σ (feature-dp, calibrated_fusion, fusiondp)."""
REGULARIZED: Space = {"beta": ("uniform", 0.0, 1.0)}
"""fusiondp's regularizer weight β."""
PRETRAINING: Space = {
    "pretrain_epochs": ("choice", [2, 5, 10, 20]),
    "pretrain_lr": ("log", 0.003, 1.0),
}
"""Public pretraining on the hybrid rows (sgd_hybrid's loop): its length and lr. Always in the space of
``pretrain_dpsgd``; in the other feature-level DP modes' with ``pretraining=True`` (a warm start)."""
PRIVACY_RELEVANT = frozenset({"batch_size", "epochs"})
"""Flags that change q or T, hence σ: fixed under the honest protocol."""
KINDS = ("log", "uniform", "int", "choice")


def _bundle(value: Any) -> dict[str, str]:
    """``"batch_size=512,epochs=26"`` → ``{"batch_size": "512", "epochs": "26"}``; a plain value → {}."""
    if not isinstance(value, str) or "=" not in value:
        return {}
    return dict(part.split("=", 1) for part in value.split(","))


def search_space(
    dataset: ModuleType, mode: str, *, protocol: str = "idealised", pretraining: bool = False
) -> Space:
    """The space of ``mode`` on ``dataset`` (see the module docstring for the layers it merges);
    ``pretraining``: add :data:`PRETRAINING` to a mode that allows a public warm start (refused by the
    others: dpsgd is sample-level, the non-private modes have no DP phase)."""
    spec = get_mode(mode)
    if pretraining and not spec.allows_pretraining:
        raise ValueError(
            f"mode {mode!r} cannot be pretrained on the hybrid rows (sample-level DP, a noise-view baseline "
            "or not a DP mode); tune pretrain_dpsgd for a warm-started DP-SGD."
        )
    space: Space = dict(COMMON)
    if spec.private_loss == "difference":
        space |= SPLIT_MODES
    if spec.uses_regularizer:
        space |= REGULARIZED
    if spec.pretrains or pretraining:
        space |= PRETRAINING
    batches = getattr(dataset, "TUNING_BATCHES", None)
    if batches and protocol != "honest":
        space["batch_size,epochs"] = ("choice", list(batches))
    space |= dict(getattr(dataset, "TUNING_SPACE", {}))
    return space


def check_space(
    space: Mapping[str, tuple], *, known_flags: Iterable[str], protocol: str = "idealised"
) -> None:
    """Reject a space no study can use, naming the entry: empty, an unknown flag (also inside a
    bundle), a malformed range, or a privacy-relevant flag under the honest protocol."""
    if not space:
        raise ValueError("the search space is empty: give at least one hyperparameter to tune.")
    known = set(known_flags)
    for name, spec in space.items():
        kind = spec[0] if isinstance(spec, tuple) and spec else None
        if kind not in KINDS:
            raise ValueError(f"search space entry {name!r}: {spec!r} is not one of {KINDS} with its values.")
        if kind == "choice":
            if len(spec) != 2 or not list(spec[1]):
                raise ValueError(
                    f"search space entry {name!r}: a choice needs a non-empty list, got {spec!r}."
                )
            # A bundle sets its own flags; a plain value sets the entry's name (a mixed choice, both).
            flags = {f for v in spec[1] for f in (_bundle(v) or dict.fromkeys(name.split(",")))}
        else:
            if len(spec) != 3 or not (
                math.isfinite(spec[1]) and math.isfinite(spec[2]) and spec[1] < spec[2]
            ):
                raise ValueError(f"search space entry {name!r}: needs low < high, got {spec!r}.")
            if kind == "log" and spec[1] <= 0:
                raise ValueError(f"search space entry {name!r}: a log range needs low > 0, got {spec!r}.")
            flags = {name}
        unknown = sorted(flags - known)
        if unknown:
            raise ValueError(
                f"search space entry {name!r}: unknown hyperparameter(s) {unknown}: not a flag of the train script."
            )
        if protocol == "honest" and flags & PRIVACY_RELEVANT:
            raise ValueError(
                f"search space entry {name!r}: {sorted(flags & PRIVACY_RELEVANT)} change q or T, hence sigma; "
                "the honest protocol keeps them fixed (one sigma for every trial)."
            )


def suggest(trial: Any, space: Mapping[str, tuple]) -> dict[str, str]:
    """Draw one candidate from ``space`` with an Optuna ``trial``; return it as train-script flags.

    Optuna stores each draw under the entry's name, so a resumed study reads the same candidate back.
    """
    flags: dict[str, str] = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "log":
            value = trial.suggest_float(name, spec[1], spec[2], log=True)
        elif kind == "uniform":
            value = trial.suggest_float(name, spec[1], spec[2])
        elif kind == "int":
            value = trial.suggest_int(name, spec[1], spec[2])
        else:
            value = trial.suggest_categorical(name, list(spec[1]))
        flags[name] = value
    return candidate_flags(flags)


def candidate_flags(params: Mapping[str, Any]) -> dict[str, str]:
    """A candidate's drawn values (by space entry, as Optuna stores them) as train-script flags, bundles
    expanded: what :func:`suggest` returns, and what a resumed study rebuilds from a stored trial."""
    flags: dict[str, str] = {}
    for name, value in params.items():
        flags |= _bundle(value) or {name: repr(value) if isinstance(value, float) else str(value)}
    return flags


def as_argv(flags: Mapping[str, str]) -> list[str]:
    """``{"lr": "0.1"}`` → ``["--lr", "0.1"]``."""
    return [token for name, value in flags.items() for token in (f"--{name}", value)]
