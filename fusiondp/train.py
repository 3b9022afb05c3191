"""The training loop every dataset script shares, and the run → result-record wrapper.

Sampling: DP modes draw their private batch by Poisson sampling (each row independently with
probability q = b/N), as the accountant assumes, and their public batch uniformly without
replacement; the non-private modes use shuffled batches of exactly b rows. Every mode runs exactly
T = round(epochs · N / b) steps and is evaluated on every val and test row at each epoch boundary.

The loop reads its data through the small :class:`TrainingData` protocol, so tables
(:class:`fusiondp.data.TabularData`) and notes share it, and with it the one DP step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fusiondp.cli import check_training_args, resolve_device, seed_everything
from fusiondp.data import load_imputed_splits, prepare_tabular
from fusiondp.models import binary_bce
from fusiondp.modes import NOISE, ModeSpec, get_mode
from fusiondp.privacy import (
    ADD_REMOVE,
    ZERO_OUT,
    PrivacySpec,
    calibration_plan,
    check_sample_rate,
    make_privacy_spec,
    num_steps,
    statistics_epsilon,
)
from fusiondp.results import (
    EXPERIMENT_MODE,
    append_record,
    command_line,
    find_run,
    git_commit,
    run_settings,
)
from fusiondp.scaling import (
    ScalingPlan,
    check_bounds,
    check_bounds_cover_public,
    column_statistics,
    dp_statistics,
    support_statistics,
)
from fusiondp.step import LossFn, StepConfig, fusion_step, per_example_method

Evaluator = Callable[[nn.Module], dict[str, dict[str, float]]]


class TrainingData(Protocol):
    """What the loop needs of a data set: row-aligned views of the training rows, labels, evaluation.

    Views are named ``original`` (true sensitive values), ``hybrid`` (imputed) and, where it exists,
    ``noise``. Only ``batch(("original", ...), rows)`` reads original sensitive values, and the loop
    hands what it returns to the DP step's private term only.
    """

    y: Tensor
    headline_metric: str

    @property
    def num_rows(self) -> int: ...

    @property
    def num_features(self) -> int | None: ...

    def batch(self, views: Sequence[str], rows: Tensor) -> list[Tensor]:
        """The rows of each view, as tensors of one common shape (padded jointly where needed)."""
        ...

    def evaluate(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """``{"val": metrics, "test": metrics}`` on every evaluation row."""
        ...

    def public_c_h(self, model: nn.Module, *, generator: torch.Generator) -> float:
        """C_h estimated from public data only."""
        ...

    def private_c_h(self, model: nn.Module) -> float:
        """The reference's C_h from original rows: NOT PRIVATE."""
        ...

    def to(self, device: torch.device) -> TrainingData: ...


def epoch_boundaries(*, steps: int, epochs: float) -> list[int]:
    """Step counts after which an epoch ends (the last one is always T)."""
    n_epochs = max(1, round(epochs))
    bounds = sorted({max(1, round((e + 1) * steps / n_epochs)) for e in range(n_epochs)})
    bounds[-1] = steps
    return bounds


class BatchSampler:
    """Row indices for each step, from a dedicated seeded generator (independent of the data)."""

    def __init__(self, num_rows: int, *, seed: int) -> None:
        self.num_rows = num_rows
        self.generator = torch.Generator().manual_seed(seed)
        self._stream = torch.empty(0, dtype=torch.long)

    def poisson(self, sample_rate: float) -> torch.Tensor:
        mask = torch.rand(self.num_rows, generator=self.generator) < sample_rate
        return mask.nonzero().squeeze(1)

    def uniform(self, size: int) -> torch.Tensor:
        return torch.randperm(self.num_rows, generator=self.generator)[: min(size, self.num_rows)]

    def shuffled(self, size: int) -> torch.Tensor:
        """Consecutive slices of a stream of random permutations: every batch has ``size`` rows."""
        while len(self._stream) < size:
            self._stream = torch.cat([self._stream, torch.randperm(self.num_rows, generator=self.generator)])
        batch, self._stream = self._stream[:size], self._stream[size:]
        return batch


def train(
    model: nn.Module,
    data: TrainingData,
    *,
    mode: ModeSpec,
    cfg: StepConfig,
    steps: int,
    epochs: float,
    batch_size: int,
    public_batch_size: int,
    seed: int,
    loss_fn: LossFn,
    evaluate: Evaluator,
    progress: bool = True,
    noise_seed: int | None = None,
) -> tuple[list[dict], float]:
    """Run exactly ``steps`` steps; return the per-epoch log and the training seconds (eval excluded).

    The DP noise comes from its own generator, seeded by ``noise_seed`` (default ``seed + 1``).
    """
    device = data.y.device
    sampler = BatchSampler(data.num_rows, seed=seed)
    noise_generator = torch.Generator(device=device).manual_seed(
        seed + 1 if noise_seed is None else noise_seed
    )
    sample_rate = batch_size / data.num_rows
    bounds = epoch_boundaries(steps=steps, epochs=epochs)
    log: list[dict] = []
    train_seconds = 0.0
    model.train()
    bar = tqdm(total=steps, desc=mode.name, disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch: dict = {
            "x_public": None,
            "y_public": None,
            "x_private": None,
            "x_reference": None,
            "y_private": None,
        }
        if not mode.private:
            rows = sampler.shuffled(batch_size).to(device)
            (batch["x_public"],) = data.batch([mode.sgd_view], rows)
            batch["y_public"] = data.y[rows]
        else:
            if cfg.w_pub:
                rows = sampler.uniform(public_batch_size).to(device)
                (batch["x_public"],) = data.batch([mode.public_view], rows)
                batch["y_public"] = data.y[rows]
            rows = sampler.poisson(sample_rate).to(device)
            batch["y_private"] = data.y[rows]
            if mode.private_loss == "difference":
                batch["x_private"], batch["x_reference"] = data.batch(["original", mode.public_view], rows)
            else:
                (batch["x_private"],) = data.batch(["original"], rows)
        fusion_step(model, **batch, cfg=cfg, loss_fn=loss_fn, generator=noise_generator)
        bar.update(1)
        if step in bounds:
            train_seconds += time.perf_counter() - start
            metrics = evaluate(model)
            entry = {"epoch": bounds.index(step) + 1, "step": step}
            for split, values in metrics.items():
                entry.update({f"{split}_{k}": v for k, v in values.items()})
            log.append(entry)
            key = f"val_{data.headline_metric}"
            bar.set_postfix({key: f"{entry.get(key, float('nan')):.4f}"})
            start = time.perf_counter()
    bar.close()
    return log, train_seconds


def resolve_c_h(
    args: argparse.Namespace, mode: ModeSpec, model: nn.Module, data: TrainingData, *, seed: int
) -> tuple[float | None, str]:
    """C_h and where it came from. Only ``--c_h_from_private`` reads original rows (and says so)."""
    if not mode.uses_regularizer:
        return None, "unused"
    if args.c_h is not None:
        return float(args.c_h), "given (--c_h)"
    if args.c_h_from_private:
        return data.private_c_h(model), (
            "estimated from ORIGINAL rows at initialisation (--c_h_from_private): NOT PRIVATE"
        )
    generator = torch.Generator().manual_seed(seed + 2)
    return data.public_c_h(
        model, generator=generator
    ), "estimated from hybrid rows at initialisation (public)"


def privacy_spec_for(
    args: argparse.Namespace,
    mode: ModeSpec,
    *,
    num_rows: int,
    stats_noise_multiplier: float | None = None,
) -> PrivacySpec | None:
    """σ calibrated for the mode's neighbouring relation (``--neighbouring`` for the split modes), or
    None for the non-private modes. See :func:`fusiondp.privacy.calibration_plan`. DP scaling
    statistics (``stats_noise_multiplier``) are composed into the same budget."""
    if not mode.private:
        return None
    relation, accountant, notes = calibration_plan(
        mode_name=mode.name,
        mode_relation=mode.relation,
        neighbouring=getattr(args, "neighbouring", None),
        accountant=args.accountant,
    )
    spec = make_privacy_spec(
        epsilon=args.epsilon,
        delta=args.delta,
        batch_size=args.batch_size,
        num_rows=num_rows,
        epochs=args.epochs,
        accountant=accountant,
        relation=relation,
        zero_out_term_vanishes=mode.private_loss == "difference",
        stats_noise_multiplier=stats_noise_multiplier,
    )
    return dataclasses.replace(spec, notes=tuple(notes))


def private_weight(
    args: argparse.Namespace, mode: ModeSpec, *, privacy: PrivacySpec | None
) -> tuple[float, str]:
    """α actually used by the split modes, and the rule that gave it.

    The private term's noise has std α·σ·C/b per coordinate; with ``--max_private_noise κ`` α is
    capped at κ/σ, so that as ε shrinks (σ grows) the private term fades towards the public term
    instead of drowning it. σ is public, so the rule costs no privacy.
    """
    if mode.private_loss != "difference" or privacy is None:
        return args.alpha, "unused" if mode.private_loss != "difference" else "fixed (--alpha)"
    kappa = args.max_private_noise
    sigma = privacy.noise_multiplier
    if not kappa or args.alpha * sigma <= kappa:
        return args.alpha, "fixed (--alpha)" if not kappa else f"--alpha (alpha*sigma <= {kappa})"
    return kappa / sigma, f"capped: --max_private_noise {kappa} / sigma {sigma:.4g}"


def step_config_for(
    args: argparse.Namespace,
    mode: ModeSpec,
    *,
    privacy: PrivacySpec | None,
    c_h: float | None,
    alpha: float | None = None,
) -> StepConfig:
    """The step's hyperparameters from the CLI flags and the mode (``alpha``: the α to use, default --alpha)."""
    w_pub, w_priv = mode.weights(alpha=args.alpha if alpha is None else alpha, beta=args.beta)
    return StepConfig(
        lr=args.lr,
        w_pub=w_pub,
        w_priv=w_priv,
        max_grad_norm=args.max_grad_norm,
        noise_multiplier=privacy.noise_multiplier if privacy else 0.0,
        expected_batch_size=float(args.batch_size),
        private_loss=mode.private_loss,
        reg_weight=mode.regularizer_weight(beta=args.beta),
        c_h=c_h,
        max_param_norm=args.max_param_norm or None,
        divide_by_realised_batch=args.divide_by_realised_batch,
    )


def rng_seeds(args: argparse.Namespace) -> tuple[int, int, str]:
    """(sampler seed, noise seed, what the record says of them).

    ``--secure_rng`` draws both from OS entropy and they are never recorded: the Poisson batches and
    the noise are then unknown to anyone, which subsampling amplification and the Gaussian mechanism
    both assume. Otherwise they follow ``--seed`` (experiment mode): reproducible, and anyone who
    knows the seed can replay training for each candidate value of a row, so no ε holds.
    """
    if args.secure_rng:
        return secrets.randbits(62), secrets.randbits(62), "secure"
    return args.seed, args.seed + 1, "seeded"


def run_experiment(
    args: argparse.Namespace,
    *,
    dataset: str,
    data: TrainingData,
    build_model: Callable[[], nn.Module],
    loss_fn: LossFn,
    extra_record: dict | None = None,
    scaling: ScalingPlan | None = None,
    privacy_notes: Sequence[str] = (),
    outside_guarantee: Sequence[str] = (),
) -> dict:
    """Calibrate, train, evaluate and record one run; return its result record.

    ``data`` holds the original rows; they reach the model only through :func:`fusion_step`'s
    private term (DP modes) or, for ``sgd_ori``, without protection, as that mode's record states.
    ``scaling`` says where the original view's statistics came from; DP statistics are composed into
    the run's ε. ``outside_guarantee``: the caller's reasons why this run's guarantee does not hold
    (e.g. how its data were made). ``build_model()`` returns a fresh model (seeded by the caller's
    ``--seed`` just before).
    """
    check_training_args(args)
    if args.skip_existing and args.results_json:
        done = find_run(args.results_json, run_settings(args))
        if done is not None:
            print(f"skipped: a finished run with these settings is already in {args.results_json}")
            return done
    mode = get_mode(args.mode)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    data = data.to(device)
    n = data.num_rows
    stats_sigma = scaling.stats_noise_multiplier if scaling else None
    privacy = privacy_spec_for(args, mode, num_rows=n, stats_noise_multiplier=stats_sigma)
    if privacy:
        steps = privacy.steps
    else:
        check_sample_rate(args.batch_size / n, batch_size=args.batch_size, num_rows=n)
        steps = num_steps(epochs=args.epochs, num_rows=n, batch_size=args.batch_size)

    model = build_model().to(device)
    c_h, c_h_source = resolve_c_h(args, mode, model, data, seed=args.seed)
    alpha, alpha_rule = private_weight(args, mode, privacy=privacy)
    cfg = step_config_for(args, mode, privacy=privacy, c_h=c_h, alpha=alpha)
    if mode.private_loss is not None:
        method, method_reason = per_example_method(model, args.per_example)
        cfg = dataclasses.replace(cfg, per_example=method)
        if method == "vmap" and args.per_example == "auto":
            print(f"per-example clipping: {method_reason}")
    else:
        method, method_reason = None, "no private term"
    sampler_seed, noise_seed, rng = rng_seeds(args)

    log, train_seconds = train(
        model,
        data,
        mode=mode,
        cfg=cfg,
        steps=steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        public_batch_size=args.public_batch_size,
        seed=sampler_seed,
        loss_fn=loss_fn,
        evaluate=data.evaluate,
        progress=not args.no_progress,
        noise_seed=noise_seed,
    )
    del sampler_seed, noise_seed  # never recorded
    outside_guarantee = list(outside_guarantee)
    if args.c_h_from_private and mode.uses_regularizer:
        outside_guarantee.append("C_h estimated from original sensitive values (--c_h_from_private)")
    if args.divide_by_realised_batch and mode.private:
        # The accountant models the noised sum; dividing by the realised |B| also releases |B|, which
        # shifts the odds that a given row was sampled. Small, but unaccounted for.
        outside_guarantee.append("private sum divided by the realised batch size (|B| is not accounted for)")
    if scaling and scaling.reads_private_values and mode.name != "sgd_ori":
        outside_guarantee.append(f"scaling statistics fitted on private rows (--scaling {scaling.source})")
    # Secret randomness: the DP steps' sampler and noise, and the DP statistics' noise (which a non-DP
    # mode evaluated on a DP scale releases too). Seeded from a recorded seed, none of it is secret.
    draws_dp_noise = mode.private or (bool(stats_sigma) and mode.name != "sgd_ori")
    if draws_dp_noise and rng == "seeded":
        outside_guarantee.append(EXPERIMENT_MODE)
    stats_epsilon = None
    if scaling and stats_sigma and not privacy and mode.name != "sgd_ori":
        # A non-DP mode whose evaluation scale is a DP estimate: that estimate is all it releases.
        stats_epsilon = statistics_epsilon(
            stats_noise_multiplier=stats_sigma,
            delta=args.delta,
            accountant=args.accountant,
            relation=ZERO_OUT,
        )
    final = log[-1]
    record = {
        "dataset": dataset,
        "mode": mode.name,
        "epsilon": args.epsilon,
        "delta": args.delta,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "public_batch_size": args.public_batch_size,
        "lr": args.lr,
        "max_grad_norm": args.max_grad_norm,
        "alpha": args.alpha,
        "alpha_used": cfg.w_priv if mode.private_loss == "difference" else None,
        "alpha_rule": alpha_rule,
        "max_private_noise": args.max_private_noise,
        "beta": args.beta,
        "max_param_norm": args.max_param_norm,
        "c_h": c_h,
        "c_h_source": c_h_source,
        "w_pub": cfg.w_pub,
        "w_priv": cfg.w_priv,
        "regularizer_weight": cfg.reg_weight,
        "sigma": privacy.noise_multiplier if privacy else None,
        "sample_rate": args.batch_size / n,
        "steps": steps,
        "accountant": privacy.accountant if privacy else None,
        "epsilon_spent": (
            privacy.epsilon_spent if privacy else (None if mode.name == "sgd_ori" else (stats_epsilon or 0.0))
        ),
        "neighbouring_relation": privacy.neighbouring_relation if privacy else None,
        # Feature-level epsilon of this sigma under both relations, whatever it was calibrated for.
        **{
            k: (getattr(privacy, k) if privacy else None)
            for k in (
                "epsilon_zero_out",
                "accountant_zero_out",
                "epsilon_replace_one",
                "accountant_replace_one",
            )
        },
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
        "rng": rng if draws_dp_noise else None,
        "guarantee": (
            f"(eps, delta) feature-level DP: original sensitive values are read only through the DP "
            f"scaling statistics (--scaling dp), eps = {stats_epsilon:.4g}"
            if stats_epsilon
            else mode.guarantee
        ),
        "privacy_guarantee_holds": mode.name != "sgd_ori" and not outside_guarantee,
        "outside_guarantee": outside_guarantee,
        "divide_by_realised_batch": args.divide_by_realised_batch,
        "per_example_method": method,
        "per_example_reason": method_reason,
        **{k: final[k] for k in final if k.startswith(("val_", "test_"))},
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(len(log), 1),
        "num_train_rows": n,
        "num_features": data.num_features,
        "epochs_log": log,
        "device": str(device),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # float sums, hence the last digits, depend on it
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "command": command_line(),
        "args": run_settings(args),
        **(extra_record or {}),
    }
    if args.results_json:
        append_record(args.results_json, record)
    return record


def plan_tabular_scaling(
    args: argparse.Namespace,
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
    mode = get_mode(args.mode)
    sample_level = mode.relation == ADD_REMOVE
    numeric_sensitive = [c for c in sensitive if c not in set(categorical)]
    original, hybrid, support = frames["train"], frames["train_imputed"], frames.get("support")
    public_rows = (
        hybrid
        if support is None
        else pd.concat([hybrid, support[hybrid.columns.intersection(support.columns)]])
    )
    if args.scaling == "private":
        plan = ScalingPlan(
            "private",
            column_statistics(original, numeric_sensitive),
            "mean/std of the training rows' ORIGINAL values, as the authors do: NOT PRIVATE",
            reads_private_values=True,
        )
        return plan, original if sample_level else public_rows
    if args.scaling == "dp":
        if sample_level:
            raise ValueError(
                f"--scaling dp estimates only the sensitive columns, but {mode.name} protects whole rows: "
                "every statistic it uses must come from public rows. Use --scaling support."
            )
        wanted = {c: bounds[c] for c in numeric_sensitive if c in bounds}
        check_bounds(bounds, numeric_sensitive)
        check_bounds_cover_public(wanted, public_rows, what="hybrid and support rows")
        seed = secrets.randbits(62) if args.secure_rng else args.seed + 3
        stats = dp_statistics(
            original,
            bounds=wanted,
            noise_multiplier=args.scaling_noise_multiplier,
            generator=torch.Generator().manual_seed(seed),
        )
        description = (
            f"Gaussian-mechanism estimate from the {len(original)} training rows' original values "
            f"(noise multiplier {args.scaling_noise_multiplier}, ranges {wanted}), composed into epsilon"
        )
        return ScalingPlan(
            "dp", stats, description, stats_noise_multiplier=args.scaling_noise_multiplier
        ), public_rows
    if support is None and (sample_level or numeric_sensitive):
        support_statistics(None, numeric_sensitive, where=support_where)  # raises the clear error
    stats = support_statistics(support, numeric_sensitive, where=support_where) if numeric_sensitive else {}
    description = f"true values of the public support set ({support_where}, {len(support)} rows)"
    return ScalingPlan("support", stats, description), support if sample_level else public_rows


def run_tabular(
    args: argparse.Namespace,
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
) -> dict:
    """Scale each view (``--scaling``), build the tensors, train and record one tabular run."""
    plan, shared_fit = plan_tabular_scaling(
        args, frames, sensitive=sensitive, categorical=categorical, bounds=bounds, support_where=support_where
    )
    data, _ = prepare_tabular(
        frames["train"],
        frames["train_imputed"],
        frames["val"],
        frames["test"],
        sensitive=sensitive,
        public=public,
        label=label,
        categorical=categorical,
        one_hot=getattr(args, "one_hot", False),
        noise_seed=args.seed,
        original_stats=plan.stats,
        shared_fit=shared_fit,
    )
    notes = []
    categorical_sensitive = [c for c in sensitive if c in set(categorical)]
    if get_mode(args.mode).public_view == NOISE and categorical_sensitive:
        notes.append(
            f"the noise view puts N(0,1) values into the one-hot columns of {categorical_sensitive}, which no "
            "real row has: its zero-out neighbour is not a real data set, so only the replace-one epsilon "
            "is meaningful for those columns"
        )
    record = run_experiment(
        args,
        dataset=dataset,
        data=data,
        build_model=lambda: build_model(data.num_features),
        loss_fn=binary_bce,
        extra_record={"sensitive_columns": list(sensitive), **(extra_record or {})},
        scaling=plan,
        privacy_notes=notes,
    )
    keys = ("mode", "epsilon", "epsilon_spent", "sigma", "alpha_used", "test_auroc", "test_aupr", "test_f1")
    print(json.dumps({k: record.get(k) for k in keys}))
    return record


def run_imputed_tabular(
    args: argparse.Namespace,
    *,
    dataset: str,
    public: list[str],
    sensitive: list[str],
    categorical: list[str],
    label: str,
    bounds: dict[str, tuple[float, float]],
    build_model: Callable[[int], nn.Module],
) -> dict:
    """Train on the splits an ``impute_<dataset>.py`` wrote to ``args.data_dir`` and record the run.

    The support set is public: it scales the original view (``--scaling support``) and joins the
    hybrid rows in fitting vocabularies and public columns' scales. The record names the imputer
    that made the hybrid file (and whether it deviates from the paper).
    """
    frames = load_imputed_splits(
        args.data_dir, dataset=dataset, public=public, sensitive=sensitive, label=label
    )
    info_path = Path(args.data_dir) / "imputation_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"imputer": "unknown"}
    return run_tabular(
        args,
        dataset=dataset,
        frames=frames,
        public=public,
        sensitive=sensitive,
        categorical=categorical,
        label=label,
        bounds=bounds,
        support_where=str(Path(args.data_dir) / f"{dataset}_support.csv"),
        build_model=build_model,
        extra_record={
            "data_dir": str(args.data_dir),
            "imputer": info.get("imputer"),
            "deviation_from_paper": info.get("deviation_from_paper"),
        },
    )
