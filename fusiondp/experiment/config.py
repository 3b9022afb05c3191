"""The run configuration: the training flags as one frozen, typed value (docs/design.md §6).

Argparse stays at the edge. A script parses its command line and turns the result into a
:class:`RunConfig` with :meth:`RunConfig.from_args`; the library (:mod:`fusiondp.experiment.loop`,
:mod:`fusiondp.tabular.runner`, :mod:`fusiondp.audit`) reads that value, never an ``argparse.Namespace``.

Every flag of :func:`fusiondp.experiment.cli.add_training_args` is a typed field. A script's own flags
(``--data_dir``, ``--one_hot``, the notes script's model flags, the audit grid's flags) travel in
:attr:`RunConfig.extras`, untouched, because the record's ``args`` (and with it ``--skip_existing``)
names every flag a run was given: :meth:`RunConfig.settings` is exactly what ``vars(args)`` was.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusiondp.mechanism.accounting import REPLACE_ONE
from fusiondp.mechanism.modes import NOISE, get_mode
from fusiondp.mechanism.optim import DEFAULT_MOMENTUM, LR_SCHEDULES, OPTIMIZERS
from fusiondp.mechanism.scope import PRIVATE_SCOPES
from fusiondp.mechanism.tuning import TrialCount

OMITTED_WHEN_UNSET = frozenset(
    {"mix_weight", "optimizer", "momentum", "lr_schedule", "sensitive_scale",
     "tuning_protocol", "tuning_trials", "tuning_mean_trials", "tuning_eta", "tuning_study",
     "pretrain_epochs", "pretrain_lr", "private_scope", "alpha_warmup"}
)  # fmt: skip
"""Flags added after records existed: left out of the settings while unset, so that a run without them
has the same settings (and skip-matching) as before the flag existed."""


def run_settings(flags: Mapping[str, Any]) -> dict[str, Any]:
    """A run's full resolved flags (defaults included), JSON-ready: ``vars(args)`` of its command line,
    or :meth:`fusiondp.experiment.config.RunConfig.settings`. Unset new flags (:data:`OMITTED_WHEN_UNSET`) are
    left out."""
    return {
        k: (str(v) if isinstance(v, os.PathLike) else v)
        for k, v in flags.items()
        if not (k in OMITTED_WHEN_UNSET and v is None)
    }


NAIVE_PREFIX = "naive_fusion"


@dataclass(frozen=True)
class RunConfig:
    """One run's training flags (reference names; see ``--help`` of any training script)."""

    mode: str = "fusiondp"
    epochs: float = 10
    batch_size: int = 128
    public_batch_size: int = 4096
    lr: float = 0.05
    alpha: float = 1.0
    beta: float = 1.0
    mix_weight: float | None = None
    max_param_norm: float = 10.0
    seed: int = 0
    device: str = "auto"
    epsilon: float = 2.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "pld"
    neighbouring: str | None = None
    c_h: float | None = None
    c_h_from_private: bool = False
    divide_by_realised_batch: bool = False
    secure_rng: bool = False
    scaling: str = "support"
    scaling_noise_multiplier: float = 20.0
    max_private_noise: float = 3.0
    per_example: str = "auto"
    tuning_protocol: str | None = None
    tuning_trials: str | None = None
    tuning_mean_trials: float | None = None
    tuning_eta: float | None = None
    tuning_study: str | None = None
    results_json: str | None = None
    no_progress: bool = False
    skip_existing: bool = False
    optimizer: str | None = None
    momentum: float | None = None
    lr_schedule: str | None = None
    sensitive_scale: float | None = None
    pretrain_epochs: float | None = None
    pretrain_lr: float | None = None
    private_scope: str | None = None
    alpha_warmup: float | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    """The script's own flags, by name (``data_dir``, ``one_hot``, ...), as parsed."""
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """The flags in the order the parser defined them (the recorded ``args`` keep that order)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """The configuration of a parsed command line: training flags typed, the rest in ``extras``."""
        flags = vars(args)
        known = {f.name for f in dataclasses.fields(cls)} - {"extras", "order"}
        missing = sorted(name for name in known - set(flags) if name not in OMITTED_WHEN_UNSET)
        if missing:
            raise ValueError(
                f"the parsed flags lack training flags {missing}: build the parser with "
                "fusiondp.experiment.cli.add_training_args."
            )
        typed = {k: v for k, v in flags.items() if k in known}
        extras = {k: v for k, v in flags.items() if k not in known}
        return cls(**typed, extras=extras, order=tuple(flags))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes``; names that are no training flag go to (or update) ``extras``."""
        known = {f.name for f in dataclasses.fields(self)}
        typed = {k: v for k, v in changes.items() if k in known}
        extra = {k: v for k, v in changes.items() if k not in known}
        order = self.order + tuple(k for k in changes if k not in self.order)
        if extra:
            typed["extras"] = {**self.extras, **extra}
        return dataclasses.replace(self, **typed, order=order)

    def extra(self, name: str, default: Any = None) -> Any:
        """A script flag from ``extras`` (``default`` where the script has no such flag)."""
        return self.extras.get(name, default)

    def settings(self) -> dict[str, Any]:
        """Every flag of the run, JSON-ready, as the record's ``args`` and ``--skip_existing`` see it."""
        flags = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        flags.pop("order"), flags.pop("extras")
        flags.update(self.extras)
        ordered = [k for k in self.order if k in flags] + [k for k in flags if k not in self.order]
        return run_settings({k: flags[k] for k in ordered})

    # ------------------------------------------------------------------ what the flags mean

    @property
    def trial_count(self) -> TrialCount | None:
        """The distribution of the number of trials of the honest protocol (None otherwise)."""
        if self.tuning_protocol != "honest":
            return None
        defaults = TrialCount()
        return TrialCount(
            self.tuning_trials or defaults.distribution,
            mean=defaults.mean if self.tuning_mean_trials is None else self.tuning_mean_trials,
            eta=defaults.eta if self.tuning_eta is None else self.tuning_eta,
        )

    @property
    def is_naive(self) -> bool:
        return self.mode.startswith(NAIVE_PREFIX)

    @property
    def mixing_weight(self) -> float:
        """Naive fusion's weight of the DP gradient: ``--mix_weight``, else ``--beta`` (the reference's)."""
        return self.beta if self.mix_weight is None else self.mix_weight

    @property
    def beta_meaning(self) -> str:
        """What ``--beta`` did in this run (recorded, so that no table mixes the two meanings)."""
        if self.is_naive:
            return "mixing weight" if self.mix_weight is None else "unused (--mix_weight given)"
        if get_mode(self.mode).uses_regularizer:
            return "regularizer weight"
        return "unused"

    @property
    def optimizer_used(self) -> str:
        """``--optimizer``, or plain SGD (the reference) when unset."""
        return self.optimizer or "sgd"

    @property
    def momentum_used(self) -> float:
        """``--momentum``, or 0.9 when unset (read by ``--optimizer momentum`` only)."""
        return DEFAULT_MOMENTUM if self.momentum is None else self.momentum

    @property
    def lr_schedule_used(self) -> str:
        """``--lr_schedule``, or a constant lr (the reference) when unset."""
        return self.lr_schedule or "constant"

    @property
    def sensitive_scale_used(self) -> float:
        """``--sensitive_scale``, or 1.0 (standardised values as they are) when unset."""
        return 1.0 if self.sensitive_scale is None else self.sensitive_scale

    @property
    def private_scope_used(self) -> str:
        """``--private_scope``, or ``all`` (every parameter, the reference) when unset."""
        return self.private_scope or "all"

    @property
    def alpha_warmup_used(self) -> float:
        """``--alpha_warmup``, or 0 (the private weight constant, the reference) when unset."""
        return 0.0 if self.alpha_warmup is None else self.alpha_warmup

    @property
    def pretrain_epochs_used(self) -> float:
        """Epochs of public pretraining: ``--pretrain_epochs``; unset, ``--epochs`` for a mode that
        always pretrains (pretrain_dpsgd) and none for the others."""
        if self.pretrain_epochs is not None:
            return self.pretrain_epochs
        return self.epochs if get_mode(self.mode).pretrains else 0.0

    @property
    def pretrain_lr_used(self) -> float:
        """``--pretrain_lr``, or ``--lr`` when unset."""
        return self.lr if self.pretrain_lr is None else self.pretrain_lr

    def validate(self) -> None:
        """Reject values no run can use, naming the flag and the value."""
        for name in ("epochs", "batch_size", "public_batch_size", "lr", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} must be > 0, got {value!r}.")
        if self.c_h is not None and not self.c_h > 0:
            raise ValueError(f"--c_h must be > 0, got {self.c_h!r}.")
        if self.c_h is not None and self.c_h_from_private:
            raise ValueError(f"give either --c_h ({self.c_h!r}) or --c_h_from_private, not both.")
        if self.max_param_norm < 0:
            raise ValueError(f"--max_param_norm must be >= 0 (0 disables), got {self.max_param_norm!r}.")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(
                f"--alpha must be >= 0 (the weight of the private gradient; a negative one ascends it), "
                f"got {self.alpha!r}."
            )
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"--beta must be >= 0 (a weight), got {self.beta!r}.")
        if self.mix_weight is not None and not (math.isfinite(self.mix_weight) and 0 <= self.mix_weight <= 1):
            raise ValueError(f"--mix_weight must lie in [0, 1], got {self.mix_weight!r}.")
        if self.mix_weight is not None and not self.is_naive:
            # Accepted and ignored, it would still make the run's settings differ from the same run
            # without it (skip-matching) and suggest a weight that was never used.
            raise ValueError(
                f"--mix_weight is naive fusion's mixing weight; mode {self.mode!r} has none (got {self.mix_weight!r})."
            )
        if self.is_naive and self.mix_weight is None and self.beta > 1:
            raise ValueError(
                f"--beta mixes two gradients in {self.mode} and must lie in [0, 1], got {self.beta!r}."
            )
        self._validate_tuning()
        if self.max_private_noise < 0:
            raise ValueError(
                f"--max_private_noise must be >= 0 (0: fixed --alpha), got {self.max_private_noise!r}."
            )
        if not self.scaling_noise_multiplier > 0:
            raise ValueError(
                f"--scaling_noise_multiplier must be > 0, got {self.scaling_noise_multiplier!r}."
            )
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.momentum is not None and not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"--momentum must lie in [0, 1), got {self.momentum!r}.")
        if self.momentum is not None and self.optimizer_used != "momentum":
            # Accepted and ignored, it would make the settings differ from the same run without it.
            raise ValueError(
                f"--momentum is read by --optimizer momentum only; this run's optimizer is "
                f"{self.optimizer_used!r} (got --momentum {self.momentum!r})."
            )
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}.")
        if self.sensitive_scale is not None and not (
            math.isfinite(self.sensitive_scale) and self.sensitive_scale > 0
        ):
            raise ValueError(f"--sensitive_scale must be finite and > 0, got {self.sensitive_scale!r}.")
        self._validate_pretraining()
        if self.alpha_warmup is not None:
            if not (math.isfinite(self.alpha_warmup) and 0 <= self.alpha_warmup <= 1):
                raise ValueError(
                    f"--alpha_warmup is a fraction of the run's steps, in [0, 1]; got {self.alpha_warmup!r}."
                )
            if get_mode(self.mode).private_loss != "difference":
                raise ValueError(
                    f"--alpha_warmup ramps up the split modes' private weight alpha; mode {self.mode!r} has no "
                    f"such weight (got --alpha_warmup {self.alpha_warmup!r})."
                )
        if self.private_scope is not None:
            if self.private_scope not in PRIVATE_SCOPES:
                raise ValueError(
                    f"--private_scope must be one of {PRIVATE_SCOPES}, got {self.private_scope!r}."
                )
            if self.private_scope != "all" and get_mode(self.mode).private_loss != "difference":
                raise ValueError(
                    f"--private_scope {self.private_scope} restricts the split modes' difference term (the public "
                    f"term trains the rest of the model); mode {self.mode!r} has no such term."
                )
            if self.private_scope != "all" and self.per_example == "bookkeeping":
                raise ValueError(
                    f"--private_scope {self.private_scope} runs on the vmap per-example path: use --per_example "
                    "auto or vmap."
                )

    def _validate_pretraining(self) -> None:
        mode = get_mode(self.mode)
        if self.pretrain_epochs is not None and not (
            math.isfinite(self.pretrain_epochs) and self.pretrain_epochs >= 0
        ):
            raise ValueError(f"--pretrain_epochs must be >= 0, got {self.pretrain_epochs!r}.")
        if self.pretrain_lr is not None and not (math.isfinite(self.pretrain_lr) and self.pretrain_lr > 0):
            raise ValueError(f"--pretrain_lr must be > 0, got {self.pretrain_lr!r}.")
        if mode.pretrains and self.pretrain_epochs_used <= 0:
            raise ValueError(
                f"mode {self.mode!r} is public pretraining then DP-SGD: --pretrain_epochs must be > 0, "
                f"got {self.pretrain_epochs!r} (for DP-SGD alone use --mode dpsgd)."
            )
        given = self.pretrain_epochs or self.pretrain_lr is not None
        if given and not mode.allows_pretraining:
            if not mode.private:
                why = "it is plain SGD on one view already"
            elif mode.public_view == NOISE:
                why = "its public view is the noise view: it stands for training without the imputations"
            else:
                why = (
                    "its guarantee is sample-level (add/remove), and pretraining reads every row's hybrid view "
                    "and label without noise; use --mode pretrain_dpsgd (feature-level, replace-one)"
                )
            raise ValueError(
                f"--pretrain_epochs/--pretrain_lr (public pretraining) cannot be used with mode {self.mode!r}: "
                f"{why}."
            )
        if self.pretrain_lr is not None and not self.pretrain_epochs_used:
            raise ValueError(
                f"--pretrain_lr {self.pretrain_lr!r} is read only with public pretraining: give --pretrain_epochs > 0."
            )

    def _validate_tuning(self) -> None:
        honest_only = {"tuning_trials": self.tuning_trials, "tuning_mean_trials": self.tuning_mean_trials,
                       "tuning_eta": self.tuning_eta}  # fmt: skip
        if self.tuning_protocol != "honest":
            given = [f"--{k}" for k, v in honest_only.items() if v is not None]
            if given:
                raise ValueError(
                    f"{given} describe the honest protocol's K; this run's --tuning_protocol is {self.tuning_protocol!r}."
                )
            return
        try:
            self.trial_count  # noqa: B018 - validates the distribution, mean and eta
        except ValueError as err:
            raise ValueError(f"--tuning_*: {err}") from None
        mode = get_mode(self.mode)
        if not mode.private:
            raise ValueError(
                f"--tuning_protocol honest calibrates sigma for a tuned total; mode {self.mode!r} has none."
            )
        if self.accountant != "rdp":
            raise ValueError(
                f"--tuning_protocol honest needs --accountant rdp (got {self.accountant!r}): the cost of tuning "
                "(dp-accounting's RepeatAndSelectDpEvent) is computed by the RDP accountant only."
            )
        if mode.relation == REPLACE_ONE or self.neighbouring == "replace_one":
            raise ValueError(
                f"--tuning_protocol honest: mode {self.mode!r} is calibrated for replace-one, which the RDP "
                "accountant does not analyse; tune it under the idealised protocol."
            )
        if self.scaling == "dp":
            raise ValueError(
                "--tuning_protocol honest with --scaling dp is not supported: use --scaling support."
            )


@dataclass(frozen=True)
class ImputeConfig:
    """The imputation flags, typed: what :func:`impute_dataset` and :func:`impute_splits` read.

    Built by the impute scripts from their parsed flags (:meth:`from_args`); the library never sees
    an argparse.Namespace.
    """

    imputer: str
    seed: int
    out_dir: Path
    device: str = "cpu"
    tabpfn_classifier_path: str | None = None
    tabpfn_regressor_path: str | None = None
    split_sizes: tuple[int, ...] = ()
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ImputeConfig:
        return cls(
            imputer=args.imputer,
            seed=args.seed,
            out_dir=Path(args.out_dir),
            device=getattr(args, "device", "cpu"),
            tabpfn_classifier_path=getattr(args, "tabpfn_classifier_path", None),
            tabpfn_regressor_path=getattr(args, "tabpfn_regressor_path", None),
            split_sizes=tuple(getattr(args, "split_sizes", ()) or ()),
            progress=not getattr(args, "no_progress", False),
        )
