"""One run from its settings: calibrate, train, evaluate, record (every dataset's runner ends here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from torch import nn

from fusiondp.experiment.cli import resolve_device, seed_everything
from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.loop import BatchSampler, TrainingData, public_pretraining, train
from fusiondp.experiment.plan import (
    outside_guarantee_reasons,
    privacy_spec_for,
    private_weight,
    resolve_c_h,
    rng_seeds,
    step_config_for,
    tuning_summary,
)
from fusiondp.experiment.records import build_record
from fusiondp.experiment.results import append_record, find_run
from fusiondp.mechanism.accounting import check_sample_rate, num_steps
from fusiondp.mechanism.modes import get_mode
from fusiondp.mechanism.randomness import os_entropy_generator
from fusiondp.mechanism.scaling import ScalingPlan
from fusiondp.mechanism.scope import mask_size, sensitive_input_mask
from fusiondp.mechanism.step import LossFn, per_example_method


def check_sensitive_scale(config: RunConfig, data: TrainingData) -> float | None:
    """The scale ``data`` applied to its sensitive columns (None: it has none), checked against
    ``--sensitive_scale``: a flag the data did not apply would be recorded but not used."""
    data_scale = getattr(data, "sensitive_scale", None)
    if data_scale is None and config.sensitive_scale is not None:
        raise ValueError(
            f"--sensitive_scale {config.sensitive_scale!r} scales the sensitive columns of tabular data; "
            f"this run's data ({type(data).__name__}) has none to scale: leave the flag out."
        )
    if data_scale is not None and data_scale != config.sensitive_scale_used:
        raise ValueError(
            f"--sensitive_scale is {config.sensitive_scale_used!r} but the data were prepared with "
            f"sensitive_scale={data_scale!r}: pass the run's scale to prepare_tabular."
        )
    return data_scale


def pretrain(
    config: RunConfig,
    model: nn.Module,
    data: TrainingData,
    *,
    sampler: BatchSampler,
    loss_fn: LossFn,
) -> dict:
    """Public pretraining of ``model`` (``--pretrain_epochs`` of sgd_hybrid at ``--pretrain_lr``); what
    the record says of it: its settings, per-epoch evaluation log and seconds (``train_seconds`` and
    ``seconds_per_epoch`` of the record are the DP phase's alone).

    Privacy contract: reads the hybrid view and labels only (:func:`public_pretraining`).
    """
    sgd = config.replace(mode="sgd_hybrid", lr=config.pretrain_lr_used)
    cfg = step_config_for(sgd, get_mode("sgd_hybrid"), privacy=None, c_h=None)
    epochs = config.pretrain_epochs_used
    steps = num_steps(epochs=epochs, num_rows=data.num_rows, batch_size=config.batch_size)
    log, seconds = public_pretraining(
        model,
        data,
        cfg=cfg,
        steps=steps,
        epochs=epochs,
        batch_size=config.batch_size,
        sampler=sampler,
        loss_fn=loss_fn,
        evaluate=data.evaluate,
        progress=not config.no_progress,
    )
    summary = {
        "view": "hybrid",
        "epochs": epochs,
        "steps": steps,
        "lr": config.pretrain_lr_used,
        "batch_size": config.batch_size,
        "seconds": seconds,
        "log": log,
    }
    return summary


def restricted_scope(config: RunConfig, model: nn.Module, data: TrainingData) -> dict:
    """The private term's mask for ``--private_scope`` (public: it names the sensitive input columns)."""
    sensitive = getattr(data, "sensitive_features", None)
    if sensitive is None:
        raise ValueError(
            f"--private_scope {config.private_scope_used} needs tabular data with sensitive input columns; "
            f"this run's data ({type(data).__name__}) has none: leave the flag out."
        )
    return sensitive_input_mask(model, num_features=data.num_features, sensitive_features=sensitive)


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
    private_timing: str | None = None,
    final_evaluation: Callable[[nn.Module, TrainingData], dict] | None = None,
) -> dict:
    """Calibrate, train, evaluate and record one run; return its result record.

    Privacy contract: ``data`` holds the original rows; they reach the model only through
    :func:`fusion_step`'s private term (DP modes) or, for ``sgd_ori``, without protection, as that
    mode's record states. ``scaling`` says where the original view's statistics came from; DP
    statistics are composed into the run's ε. ``outside_guarantee``: the caller's reasons why this
    run's guarantee does not hold (e.g. how its data were made). ``private_timing``: why the training
    time depends on the original data (CAML pads a batch to its longest note); then the record of a
    DP mode leaves ``train_seconds`` and ``seconds_per_epoch`` out (None) and says why in
    ``privacy_notes``. ``build_model()`` returns a fresh model (seeded by ``config.seed`` just before).
    ``final_evaluation(model, data)``: extra record fields computed once with the trained model on
    evaluation rows (e.g. per-group test metrics, :mod:`fusiondp.experiment.groups`); it runs after the
    last step, so nothing it computes reaches training. ``--sensitive_scale`` must be the scale ``data``
    was built with (its ``sensitive_scale`` attribute, tabular data); data without one (notes) refuse it.
    """
    config.validate()
    data_scale = check_sensitive_scale(config, data)
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
    sampler_seed, noise_seed, rng = rng_seeds(seed=config.seed, secure_rng=config.secure_rng)
    pretraining = {}
    if config.pretrain_epochs_used:
        # Its own sampler, from --seed: pretraining reads public rows only and its log is published, so
        # it must not draw from (and reveal) the DP steps' secret stream.
        pretraining = pretrain(
            config, model, data, sampler=BatchSampler(n, seed=config.seed), loss_fn=loss_fn
        )
    c_h, c_h_source = resolve_c_h(
        mode,
        model,
        data,
        c_h=config.c_h,
        c_h_from_private=config.c_h_from_private,
        seed=config.seed,
        when="after public pretraining" if pretraining else "at initialisation",
    )
    alpha, alpha_rule = private_weight(config, mode, privacy=privacy)
    cfg = step_config_for(config, mode, privacy=privacy, c_h=c_h, alpha=alpha)
    scope_fields = {}
    if config.private_scope_used != "all":
        mask = restricted_scope(config, model, data)
        method, method_reason = "vmap", f"--private_scope {config.private_scope_used} (vmap path only)"
        cfg = dataclasses.replace(
            cfg, per_example=method, private_scope=config.private_scope_used, private_mask=mask
        )
        scope_fields = {"private_scope": config.private_scope_used, "private_coordinates": mask_size(mask)}
    elif mode.private_loss is not None:
        method, method_reason = per_example_method(model, config.per_example)
        cfg = dataclasses.replace(cfg, per_example=method)
        if method == "vmap" and config.per_example == "auto":
            print(f"per-example clipping: {method_reason}")
    else:
        method, method_reason = None, "no private term"

    cfg = dataclasses.replace(cfg, secure_streams=rng == "secure")
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
        sampler=BatchSampler(n, generator=os_entropy_generator()) if rng == "secure" else None,
        noise_generator=os_entropy_generator(device) if rng == "secure" else None,
    )
    del sampler_seed, noise_seed  # never recorded
    final_fields = final_evaluation(model, data) if final_evaluation else {}
    outside, draws_dp_noise, stats_epsilon = outside_guarantee_reasons(
        config, mode, scaling, rng=rng, given=outside_guarantee
    )
    if private_timing and mode.private:  # a timing is a release too: not in a record that claims DP
        train_seconds = None
        privacy_notes = [*privacy_notes, f"train_seconds and seconds_per_epoch left out: {private_timing}"]
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
        extra_record={
            **tuning_summary(config, privacy),
            **({"public_pretraining": pretraining} if pretraining else {}),
            **scope_fields,
            **(extra_record or {}),
            **final_fields,
        },
        sensitive_scale=data_scale,
    )
    if config.results_json:
        append_record(config.results_json, record)
    return record
