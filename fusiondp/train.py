"""The training loop every dataset script shares, and the run → result-record wrapper.

Sampling: DP modes draw their private batch by Poisson sampling (each row independently with
probability q = b/N), as the accountant assumes, and their public batch uniformly without
replacement; the non-private modes use shuffled batches of exactly b rows. Every mode runs exactly
T = round(epochs · N / b) steps and is evaluated on every val and test row at each epoch boundary.

The loop reads its data through the small :class:`TrainingData` protocol, so tables
(:class:`fusiondp.data.TabularData`) and notes share it, and with it the one DP step.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fusiondp.cli import resolve_device, seed_everything
from fusiondp.config import RunConfig
from fusiondp.modes import ModeSpec, get_mode
from fusiondp.privacy import (
    ZERO_OUT,
    PrivacySpec,
    calibration_plan,
    check_sample_rate,
    make_privacy_spec,
    num_steps,
    statistics_epsilon,
)
from fusiondp.results import EXPERIMENT_MODE, append_record, build_record, find_run
from fusiondp.scaling import ScalingPlan
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
    mode: ModeSpec,
    model: nn.Module,
    data: TrainingData,
    *,
    c_h: float | None,
    c_h_from_private: bool,
    seed: int,
) -> tuple[float | None, str]:
    """C_h and where it came from.

    Privacy contract: only ``c_h_from_private`` (the reference's ``--c_h_from_private``) reads
    original rows, and the returned source says so; otherwise C_h is given or estimated from the
    hybrid rows (public).
    """
    if not mode.uses_regularizer:
        return None, "unused"
    if c_h is not None:
        return float(c_h), "given (--c_h)"
    if c_h_from_private:
        return data.private_c_h(model), (
            "estimated from ORIGINAL rows at initialisation (--c_h_from_private): NOT PRIVATE"
        )
    generator = torch.Generator().manual_seed(seed + 2)
    return data.public_c_h(
        model, generator=generator
    ), "estimated from hybrid rows at initialisation (public)"


def privacy_spec_for(
    config: RunConfig,
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
        neighbouring=config.neighbouring,
        accountant=config.accountant,
    )
    spec = make_privacy_spec(
        epsilon=config.epsilon,
        delta=config.delta,
        batch_size=config.batch_size,
        num_rows=num_rows,
        epochs=config.epochs,
        accountant=accountant,
        relation=relation,
        zero_out_term_vanishes=mode.private_loss == "difference",
        stats_noise_multiplier=stats_noise_multiplier,
    )
    return dataclasses.replace(spec, notes=tuple(notes))


def private_weight(config: RunConfig, mode: ModeSpec, *, privacy: PrivacySpec | None) -> tuple[float, str]:
    """α actually used by the split modes, and the rule that gave it.

    The private term's noise has std α·σ·C/b per coordinate; with ``--max_private_noise κ`` α is
    capped at κ/σ, so that as ε shrinks (σ grows) the private term fades towards the public term
    instead of drowning it. σ is public, so the rule costs no privacy.
    """
    if mode.private_loss != "difference" or privacy is None:
        return config.alpha, "unused" if mode.private_loss != "difference" else "fixed (--alpha)"
    kappa = config.max_private_noise
    sigma = privacy.noise_multiplier
    if not kappa or config.alpha * sigma <= kappa:
        return config.alpha, "fixed (--alpha)" if not kappa else f"--alpha (alpha*sigma <= {kappa})"
    return kappa / sigma, f"capped: --max_private_noise {kappa} / sigma {sigma:.4g}"


def step_config_for(
    config: RunConfig,
    mode: ModeSpec,
    *,
    privacy: PrivacySpec | None,
    c_h: float | None,
    alpha: float | None = None,
) -> StepConfig:
    """The step's hyperparameters from the run configuration and the mode (``alpha``: the α to use,
    default ``--alpha``; naive fusion mixes with ``--mix_weight``, else ``--beta``)."""
    w_pub, w_priv = mode.weights(
        alpha=config.alpha if alpha is None else alpha, mix_weight=config.mixing_weight
    )
    return StepConfig(
        lr=config.lr,
        w_pub=w_pub,
        w_priv=w_priv,
        max_grad_norm=config.max_grad_norm,
        noise_multiplier=privacy.noise_multiplier if privacy else 0.0,
        expected_batch_size=float(config.batch_size),
        private_loss=mode.private_loss,
        reg_weight=mode.regularizer_weight(beta=config.beta),
        c_h=c_h,
        max_param_norm=config.max_param_norm or None,
        divide_by_realised_batch=config.divide_by_realised_batch,
    )


def rng_seeds(*, seed: int, secure_rng: bool) -> tuple[int, int, str]:
    """(sampler seed, noise seed, what the record says of them).

    ``--secure_rng`` draws both from OS entropy and they are never recorded: the Poisson batches and
    the noise are then unknown to anyone, which subsampling amplification and the Gaussian mechanism
    both assume. Otherwise they follow ``--seed`` (experiment mode): reproducible, and anyone who
    knows the seed can replay training for each candidate value of a row, so no ε holds.
    """
    if secure_rng:
        return secrets.randbits(62), secrets.randbits(62), "secure"
    return seed, seed + 1, "seeded"


def _outside_guarantee(
    config: RunConfig,
    mode: ModeSpec,
    scaling: ScalingPlan | None,
    *,
    rng: str,
    given: Sequence[str],
) -> tuple[list[str], bool, float | None]:
    """(why the guarantee does not hold, whether secret DP noise was drawn, the ε of DP statistics
    that are all a non-DP mode releases, or None)."""
    stats_sigma = scaling.stats_noise_multiplier if scaling else None
    outside = list(given)
    if config.c_h_from_private and mode.uses_regularizer:
        outside.append("C_h estimated from original sensitive values (--c_h_from_private)")
    if config.divide_by_realised_batch and mode.private:
        # The accountant models the noised sum; dividing by the realised |B| also releases |B|, which
        # shifts the odds that a given row was sampled. Small, but unaccounted for.
        outside.append("private sum divided by the realised batch size (|B| is not accounted for)")
    if scaling and scaling.reads_private_values and mode.name != "sgd_ori":
        outside.append(f"scaling statistics fitted on private rows (--scaling {scaling.source})")
    # Secret randomness: the DP steps' sampler and noise, and the DP statistics' noise (which a non-DP
    # mode evaluated on a DP scale releases too). Seeded from a recorded seed, none of it is secret.
    draws_dp_noise = mode.private or (bool(stats_sigma) and mode.name != "sgd_ori")
    if draws_dp_noise and rng == "seeded":
        outside.append(EXPERIMENT_MODE)
    stats_epsilon = None
    if scaling and stats_sigma and not mode.private and mode.name != "sgd_ori":
        # A non-DP mode whose evaluation scale is a DP estimate: that estimate is all it releases.
        stats_epsilon = statistics_epsilon(
            stats_noise_multiplier=stats_sigma,
            delta=config.delta,
            accountant=config.accountant,
            relation=ZERO_OUT,
        )
    return outside, draws_dp_noise, stats_epsilon


def run_experiment(
    config: RunConfig,
    *,
    dataset: str,
    data: TrainingData,
    build_model: Callable[[], nn.Module],
    loss_fn: LossFn,
    extra_record: dict | None = None,
    scaling: ScalingPlan | None = None,
    privacy_notes: Sequence[str] = (),
    outside_guarantee: Sequence[str] = (),
    final_evaluation: Callable[[nn.Module, TrainingData], dict] | None = None,
) -> dict:
    """Calibrate, train, evaluate and record one run; return its result record.

    Privacy contract: ``data`` holds the original rows; they reach the model only through
    :func:`fusion_step`'s private term (DP modes) or, for ``sgd_ori``, without protection, as that
    mode's record states. ``scaling`` says where the original view's statistics came from; DP
    statistics are composed into the run's ε. ``outside_guarantee``: the caller's reasons why this
    run's guarantee does not hold (e.g. how its data were made). ``build_model()`` returns a fresh
    model (seeded by ``config.seed`` just before). ``final_evaluation(model, data)``: extra record
    fields computed once with the trained model on evaluation rows (e.g. per-group test metrics,
    :mod:`fusiondp.groups`); it runs after the last step, so nothing it computes reaches training.
    """
    config.validate()
    if config.skip_existing and config.results_json:
        done = find_run(config.results_json, config.settings())
        if done is not None:
            print(f"skipped: a finished run with these settings is already in {config.results_json}")
            return done
    mode = get_mode(config.mode)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    data = data.to(device)
    n = data.num_rows
    stats_sigma = scaling.stats_noise_multiplier if scaling else None
    privacy = privacy_spec_for(config, mode, num_rows=n, stats_noise_multiplier=stats_sigma)
    if privacy:
        steps = privacy.steps
    else:
        check_sample_rate(config.batch_size / n, batch_size=config.batch_size, num_rows=n)
        steps = num_steps(epochs=config.epochs, num_rows=n, batch_size=config.batch_size)

    model = build_model().to(device)
    c_h, c_h_source = resolve_c_h(
        mode, model, data, c_h=config.c_h, c_h_from_private=config.c_h_from_private, seed=config.seed
    )
    alpha, alpha_rule = private_weight(config, mode, privacy=privacy)
    cfg = step_config_for(config, mode, privacy=privacy, c_h=c_h, alpha=alpha)
    if mode.private_loss is not None:
        method, method_reason = per_example_method(model, config.per_example)
        cfg = dataclasses.replace(cfg, per_example=method)
        if method == "vmap" and config.per_example == "auto":
            print(f"per-example clipping: {method_reason}")
    else:
        method, method_reason = None, "no private term"
    sampler_seed, noise_seed, rng = rng_seeds(seed=config.seed, secure_rng=config.secure_rng)

    log, train_seconds = train(
        model,
        data,
        mode=mode,
        cfg=cfg,
        steps=steps,
        epochs=config.epochs,
        batch_size=config.batch_size,
        public_batch_size=config.public_batch_size,
        seed=sampler_seed,
        loss_fn=loss_fn,
        evaluate=data.evaluate,
        progress=not config.no_progress,
        noise_seed=noise_seed,
    )
    del sampler_seed, noise_seed  # never recorded
    final_fields = final_evaluation(model, data) if final_evaluation else {}
    outside, draws_dp_noise, stats_epsilon = _outside_guarantee(
        config, mode, scaling, rng=rng, given=outside_guarantee
    )
    record = build_record(
        config,
        dataset=dataset,
        mode=mode,
        step=cfg,
        privacy=privacy,
        steps=steps,
        num_rows=n,
        num_features=data.num_features,
        c_h_source=c_h_source,
        alpha_rule=alpha_rule,
        scaling=scaling,
        stats_epsilon=stats_epsilon,
        privacy_notes=privacy_notes,
        rng=rng if draws_dp_noise else None,
        outside_guarantee=outside,
        per_example=(method, method_reason),
        log=log,
        train_seconds=train_seconds,
        device=str(device),
        extra_record={**(extra_record or {}), **final_fields},
    )
    if config.results_json:
        append_record(config.results_json, record)
    return record
