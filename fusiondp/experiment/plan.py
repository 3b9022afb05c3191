"""From a run's settings to what the step and the record need: σ for the mode's relation, the α in
use, the step's configuration, C_h and its source, the secret or seeded randomness, and the reasons a
run's guarantee does not hold.

Privacy contract: nothing here reads original rows except :func:`resolve_c_h` under the reference's
``--c_h_from_private``, whose source string (and the record) says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.loop import TrainingData
from fusiondp.experiment.records import EXPERIMENT_MODE
from fusiondp.mechanism.accounting import (
    ZERO_OUT,
    PrivacySpec,
    calibration_plan,
    make_privacy_spec,
    num_steps,
    statistics_epsilon,
)
from fusiondp.mechanism.modes import ModeSpec
from fusiondp.mechanism.scaling import ScalingPlan
from fusiondp.mechanism.step import StepConfig
from fusiondp.mechanism.tuning import RunSetting, calibrate_for_tuning, run_epsilon, tuned_epsilon


def resolve_c_h(
    mode: ModeSpec,
    model: nn.Module,
    data: TrainingData,
    *,
    c_h: float | None,
    c_h_from_private: bool,
    seed: int,
    when: str = "at initialisation",
) -> tuple[float | None, str]:
    """C_h and where it came from (``when``: the model's state it is estimated at, for the source).

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
            f"estimated from ORIGINAL rows {when} (--c_h_from_private): NOT PRIVATE"
        )
    generator = torch.Generator().manual_seed(seed + 2)
    return data.public_c_h(model, generator=generator), f"estimated from hybrid rows {when} (public)"


def privacy_spec_for(
    config: RunConfig,
    mode: ModeSpec,
    *,
    num_rows: int,
    stats_noise_multiplier: float | None = None,
) -> PrivacySpec | None:
    """σ calibrated for the mode's neighbouring relation (``--neighbouring`` for the split modes), or
    None for the non-private modes. See :func:`fusiondp.mechanism.accounting.calibration_plan`. DP scaling
    statistics (``stats_noise_multiplier``) are composed into the same budget."""
    if not mode.private:
        return None
    relation, accountant, notes = calibration_plan(
        mode_name=mode.name,
        mode_relation=mode.relation,
        neighbouring=config.neighbouring,
        accountant=config.accountant,
    )
    sigma = None
    trials = config.trial_count
    if trials is not None:  # honest tuning: --epsilon is the total over the study, tuning included
        sample_rate = config.batch_size / num_rows
        steps = num_steps(epochs=config.epochs, num_rows=num_rows, batch_size=config.batch_size)
        (sigma,) = calibrate_for_tuning(
            [(sample_rate, steps)],
            epsilon=config.epsilon,
            delta=config.delta,
            trials=trials,
            relation=relation,
        ).values()
        notes = [
            *notes,
            f"sigma calibrated for a total epsilon of {config.epsilon} over a study of K ~ {trials.describe()} trials",
        ]
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
        noise_multiplier=sigma,
    )
    return dataclasses.replace(spec, notes=tuple(notes))


def tuning_summary(config: RunConfig, privacy: PrivacySpec | None) -> dict:
    """What a trial of a tuning study records: the protocol, and under the honest one the per-run ε and
    the total of releasing the best of K trials (tuning included). Empty for a run outside a study."""
    if config.tuning_protocol is None:
        return {}
    summary = {"tuning_protocol": config.tuning_protocol, "tuning_study": config.tuning_study}
    if config.tuning_protocol == "idealised" or privacy is None:
        return {**summary, "cost_of_tuning": "not counted: epsilon is per run (idealised protocol)",
                "epsilon_with_tuning": None}  # fmt: skip
    trials = config.trial_count
    setting = RunSetting(privacy.noise_multiplier, privacy.sample_rate, privacy.steps)
    return {
        **summary,
        "cost_of_tuning": (
            f"counted: the best of K ~ {trials.describe()} trials, Papernot & Steinke's bound "
            "(dp-accounting RepeatAndSelectDpEvent, RDP)"
        ),
        "tuning_trials": trials.distribution,
        "tuning_mean_trials": trials.mean,
        "tuning_eta": trials.eta if trials.distribution == "truncated_negative_binomial" else None,
        "epsilon_per_run_rdp": run_epsilon(setting, delta=config.delta),
        "epsilon_with_tuning": tuned_epsilon([setting], delta=config.delta, trials=trials),
    }


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
        optimizer=config.optimizer_used,
        momentum=config.momentum_used,
        lr_schedule=config.lr_schedule_used,
        # Public pretraining (sgd_hybrid's step, built from a split mode's config) has no private weight.
        alpha_warmup=config.alpha_warmup_used if mode.private_loss == "difference" else 0.0,
    )


def rng_seeds(*, seed: int, secure_rng: bool) -> tuple[int | None, int | None, str]:
    """(sampler seed, noise seed, what the record says of them).

    ``--secure_rng``: no seeds (None, None); the run's sampler and noise generators are then filled
    from OS entropy (:func:`fusiondp.mechanism.randomness.os_entropy_generator`, the whole Mersenne
    Twister state, not a 32-bit seed) and nothing of them is recorded: the Poisson batches and the
    noise are unknown to anyone, which subsampling amplification and the Gaussian mechanism both
    assume. Otherwise they follow ``--seed`` (experiment mode): reproducible, and anyone who knows the
    seed can replay training for each candidate value of a row, so no ε holds.
    """
    if secure_rng:
        return None, None, "secure"
    return seed, seed + 1, "seeded"


def outside_guarantee_reasons(
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
