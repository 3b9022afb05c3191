"""Tuning knobs of every mode: the optimizer (SGD, momentum, Adam), the lr schedule and the sensitive
columns' input scale. The defaults must leave today's numbers bit for bit; momentum and Adam must see
only the clipped, noised update; the scale must keep the invariance and zero-out properties."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from conftest import load_script, prepare_sepsis_views, sepsis_args, write_sepsis_dir
from test_invariance import _scrambled, _support_stats
from test_step import _batch, _loop_private_sum, _model

from fusiondp.datasets import sepsis
from fusiondp.experiment import loop
from fusiondp.experiment.config import OMITTED_WHEN_UNSET, RunConfig
from fusiondp.experiment.loop import train
from fusiondp.experiment.run import check_sensitive_scale
from fusiondp.mechanism.modes import get_mode
from fusiondp.mechanism.optim import ADAM_BETAS, ADAM_EPS, Optimizer, scheduled_lr
from fusiondp.mechanism.step import (
    StepConfig,
    fusion_step,
    per_example_gradients,
    private_gradient,
    public_gradient,
    trainable_params,
)
from fusiondp.models import binary_bce
from fusiondp.tabular.data import prepare_tabular, zero_out_values

sepsis_script = load_script("train_fusiondp_sepsis")
NEW_FLAGS = ("optimizer", "momentum", "lr_schedule", "sensitive_scale")


# ------------------------------------------------------------------ the update rules themselves


def _torch_optimizer(kind, params, lr, momentum=0.9):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, foreach=False)
    if kind == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=False)
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, foreach=False)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_update_rules_match_torch_optim(kind):
    g = torch.Generator().manual_seed(0)
    start = {
        "a": torch.randn(5, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(4, generator=g, dtype=torch.float64),
    }
    ours = {k: v.clone() for k, v in start.items()}
    theirs = {k: v.clone().requires_grad_() for k, v in start.items()}
    opt = Optimizer(kind, momentum=0.8)
    ref = _torch_optimizer(kind, list(theirs.values()), lr=0.1, momentum=0.8)
    for step in range(6):
        grads = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in start.items()}
        lr = scheduled_lr(0.1, "cosine", step=step, steps=6)
        opt.update(ours, grads, lr=lr)
        for group in ref.param_groups:
            group["lr"] = lr
        for k, p in theirs.items():
            p.grad = grads[k].clone()
        ref.step()
    for k in start:
        torch.testing.assert_close(ours[k], theirs[k].detach(), rtol=1e-12, atol=1e-14)


def test_sgd_update_is_the_reference_update_bit_for_bit():
    model = _model(torch.float32)
    x, x_ref, y = _batch(12, torch.float32)
    xp, _, yp = _batch(40, torch.float32, seed=4)
    cfg = StepConfig(
        lr=0.3,
        w_pub=0.7,
        w_priv=2.5,
        max_grad_norm=0.1,
        expected_batch_size=12.0,
        private_loss="difference",
        reg_weight=0.4,
        c_h=0.5,
        max_param_norm=None,
    )
    g_pub = public_gradient(model, xp, yp, loss_fn=binary_bce)
    g_priv, _ = private_gradient(model, x, x_ref, y, cfg=cfg, loss_fn=binary_bce, generator=torch.Generator())
    expected = {}
    for k, p in trainable_params(model).items():
        update = torch.zeros_like(p) + 0.7 * g_pub[k]
        update += 2.5 * g_priv[k]
        expected[k] = p.detach().clone().sub_(0.3 * update)  # the pre-optimizer code's update
    for optimizer in (None, cfg.new_optimizer(), Optimizer("sgd")):
        m = _model(torch.float32)
        fusion_step(
            m,
            x_public=xp,
            y_public=yp,
            x_private=x,
            x_reference=x_ref,
            y_private=y,
            cfg=cfg,
            loss_fn=binary_bce,
            generator=torch.Generator(),
            optimizer=optimizer,
        )
        for k, p in trainable_params(m).items():
            assert torch.equal(p.detach(), expected[k]), k


def test_stateful_optimizer_needs_its_state_and_bad_values_are_refused():
    model = _model()
    x, x_ref, y = _batch(4)
    cfg = StepConfig(lr=0.1, w_pub=0.0, w_priv=1.0, private_loss="difference", optimizer="adam")
    with pytest.raises(ValueError, match="--optimizer adam keeps state"):
        fusion_step(
            model,
            x_public=None,
            y_public=None,
            x_private=x,
            x_reference=x_ref,
            y_private=y,
            cfg=cfg,
            loss_fn=binary_bce,
            generator=torch.Generator(),
        )
    with pytest.raises(ValueError, match="--optimizer"):
        StepConfig(lr=0.1, w_pub=1, w_priv=1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="--momentum"):
        StepConfig(lr=0.1, w_pub=1, w_priv=1, optimizer="momentum", momentum=1.0)
    with pytest.raises(ValueError, match="--lr_schedule"):
        StepConfig(lr=0.1, w_pub=1, w_priv=1, lr_schedule="linear")


# ------------------------------------------------------------------ privacy of the step under each optimizer


def _loop_public_mean(model, x, y):
    params = list(trainable_params(model).values())
    loss = binary_bce(model(x)[0], y).mean()
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("reg_weight", [0.0, 0.7])
def test_sigma_zero_steps_equal_per_example_loop_then_the_same_optimizer(kind, reg_weight):
    # Split modes at σ = 0 over several steps (state carried, cosine lr, projection): our step equals a
    # float64 per-example autograd loop, clipped and summed in Python, fed to torch.optim's optimizer.
    steps, C, b, w_pub, w_priv, M = 4, 0.05, 20.0, 0.6, 1.7, 2.0
    cfg = StepConfig(
        lr=0.2,
        w_pub=w_pub,
        w_priv=w_priv,
        max_grad_norm=C,
        noise_multiplier=0.0,
        expected_batch_size=b,
        private_loss="difference",
        reg_weight=reg_weight,
        c_h=0.3,
        max_param_norm=M,
        optimizer=kind,
        momentum=0.8,
        lr_schedule="cosine",
    )
    model, reference = _model(), _model()
    ref_params = list(trainable_params(reference).values())
    ref_opt = _torch_optimizer(kind, ref_params, lr=cfg.lr, momentum=0.8)
    optimizer = cfg.new_optimizer()
    clipped_rows = 0
    for t in range(steps):
        x, x_ref, y = _batch(13, seed=10 + t)
        xp, _, yp = _batch(30, seed=50 + t)
        lr = scheduled_lr(cfg.lr, cfg.lr_schedule, step=t, steps=steps)
        norms = per_example_gradients(model, x, x_ref, y, loss_fn=binary_bce, reg_weight=reg_weight, c_h=0.3)
        clipped_rows += int((torch.cat([g.flatten(1) for g in norms.values()], 1).norm(dim=1) > C).sum())
        fusion_step(
            model,
            x_public=xp,
            y_public=yp,
            x_private=x,
            x_reference=x_ref,
            y_private=y,
            cfg=cfg,
            loss_fn=binary_bce,
            generator=torch.Generator(),
            optimizer=optimizer,
            lr=lr,
        )
        private = _loop_private_sum(reference, x, x_ref, y, C=C, reg_weight=reg_weight, c_h=0.3)
        public = _loop_public_mean(reference, xp, yp)
        for p, gp, gq in zip(ref_params, public, private, strict=True):
            p.grad = w_pub * gp + w_priv * gq / b
        for group in ref_opt.param_groups:
            group["lr"] = lr
        ref_opt.step()
        with torch.no_grad():
            total = torch.sqrt(sum(p.pow(2).sum() for p in ref_params))
            if total > M:
                for p in ref_params:
                    p.mul_(M / total)
    assert clipped_rows >= 10, "the test must exercise clipping"
    for (name, p), q in zip(trainable_params(model).items(), ref_params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12, msg=name)


class RecordingOptimizer(Optimizer):
    """Keeps every update it is handed: all the optimizer ever sees of the data."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.seen: list[dict[str, torch.Tensor]] = []

    def update(self, params, grads, *, lr):
        self.seen.append({k: g.clone() for k, g in grads.items()})
        super().update(params, grads, lr=lr)


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_optimizer_sees_only_the_clipped_noised_update_and_noise_is_drawn_every_step(kind):
    C, b, sigma = 0.5, 4.0, 1.3
    base = dict(
        lr=0.1,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=C,
        expected_batch_size=b,
        private_loss="difference",
        max_param_norm=None,
        optimizer=kind,
    )
    sizes = [1, 0, 1, 1, 0]  # one-row and empty Poisson batches

    def run(noise_multiplier, seed=7):
        cfg = StepConfig(**base, noise_multiplier=noise_multiplier)
        model = _model()
        opt = RecordingOptimizer(kind)
        gen = torch.Generator().manual_seed(seed)
        for t, n in enumerate(sizes):
            x, x_ref, y = _batch(n, seed=20 + t)
            fusion_step(
                model,
                x_public=None,
                y_public=None,
                x_private=x * 100,
                x_reference=x_ref,
                y_private=y,
                cfg=cfg,
                loss_fn=binary_bce,
                generator=gen,
                optimizer=opt,
            )
        return model, opt, gen

    _, quiet, _ = run(0.0)
    for update, n in zip(quiet.seen, sizes, strict=True):
        norm = torch.sqrt(sum(g.pow(2).sum() for g in update.values()))
        # One row: its clipped contribution ≤ C, divided by b; an empty batch: exactly zero.
        assert norm * b <= C * (1 + 1e-6) and (n or norm == 0)
    assert max(torch.sqrt(sum(g.pow(2).sum() for g in u.values())) for u in quiet.seen) * b > 0.9 * C

    noisy_model, noisy, gen1 = run(sigma)
    for u0, u1 in zip(quiet.seen, noisy.seen, strict=True):  # noise on every step, empty batches too
        assert all(not torch.equal(u0[k], u1[k]) for k in u0)
    # The same number of noise draws whatever the optimizer (and σ): the noise stream does not depend on it.
    sgd_gen = torch.Generator().manual_seed(7)
    cfg_sgd = StepConfig(**{**base, "optimizer": "sgd"}, noise_multiplier=sigma)
    model = _model()
    for t, n in enumerate(sizes):
        x, x_ref, y = _batch(n, seed=20 + t)
        fusion_step(
            model,
            x_public=None,
            y_public=None,
            x_private=x * 100,
            x_reference=x_ref,
            y_private=y,
            cfg=cfg_sgd,
            loss_fn=binary_bce,
            generator=sgd_gen,
        )
    assert torch.equal(gen1.get_state(), sgd_gen.get_state())
    # Post-processing: the state (hence the model) is a function of the updates handed over alone.
    replay, params = Optimizer(kind), {k: v.detach().clone() for k, v in trainable_params(_model()).items()}
    for update in noisy.seen:
        replay.update(params, update, lr=0.1)
    for k, p in trainable_params(noisy_model).items():
        assert torch.equal(p.detach(), params[k]), k


# ------------------------------------------------------------------ the learning-rate schedule


def test_cosine_schedule_starts_at_lr_ends_near_zero_and_decreases():
    steps, lr = 250, 0.05
    lrs = [scheduled_lr(lr, "cosine", step=t, steps=steps) for t in range(steps)]
    assert lrs[0] == lr
    assert 0 < lrs[-1] < 1e-4 * lr
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    p = torch.nn.Parameter(torch.zeros(1))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([p], lr=lr), T_max=steps)
    for t in range(steps):
        assert math.isclose(sched.get_last_lr()[0], lrs[t], rel_tol=1e-9, abs_tol=1e-15)
        sched.optimizer.step()
        sched.step()
    assert scheduled_lr(lr, "constant", step=3, steps=10) is lr
    with pytest.raises(ValueError, match="--lr_schedule"):
        scheduled_lr(lr, "linear", step=0, steps=10)


def test_loop_keeps_one_optimizer_and_follows_the_schedule(sepsis_frames, monkeypatch):
    calls = []
    real = loop.fusion_step

    def spy(model, **kwargs):
        calls.append((kwargs["optimizer"], kwargs["lr"]))
        return real(model, **kwargs)

    monkeypatch.setattr(loop, "fusion_step", spy)
    _train_state(sepsis_frames, "fusiondp", alpha=1.0, optimizer="adam", lr_schedule="cosine", steps=9)
    assert len(calls) == 9 and len({id(opt) for opt, _ in calls}) == 1
    assert calls[0][0].steps_taken == 9 and calls[0][0].state  # the state was carried
    assert [lr for _, lr in calls] == [scheduled_lr(0.05, "cosine", step=t, steps=9) for t in range(9)]


# ------------------------------------------------------------------ defaults reproduce today's runs


def _quick_run(tmp_path, frames, name, *extra):
    folder = write_sepsis_dir(tmp_path / name, frames)
    return sepsis_script.main(sepsis_args(folder, *extra))


@pytest.mark.parametrize("mode", ["fusiondp", "sgd_ori"])
def test_explicit_defaults_are_bit_identical_to_no_flags(tmp_path, sepsis_frames, calibrate_once, mode):
    plain = _quick_run(tmp_path, sepsis_frames, "a", "--mode", mode)
    explicit = _quick_run(
        tmp_path,
        sepsis_frames,
        "b",
        "--mode",
        mode,
        "--optimizer",
        "sgd",
        "--lr_schedule",
        "constant",
        "--sensitive_scale",
        "1.0",
    )
    assert plain["epochs_log"] == explicit["epochs_log"]
    for record in (plain, explicit):
        assert (record["optimizer"], record["lr_schedule"], record["sensitive_scale"]) == (
            "sgd",
            "constant",
            1.0,
        )
        assert record["momentum"] is None and record["adam_betas"] is None
    # Unset, the new flags stay out of the recorded settings (old records keep matching); set, they are in.
    assert not set(NEW_FLAGS) & set(plain["args"])
    assert {k: explicit["args"][k] for k in NEW_FLAGS if k in explicit["args"]} == {
        "optimizer": "sgd",
        "lr_schedule": "constant",
        "sensitive_scale": 1.0,
    }
    assert set(NEW_FLAGS) <= OMITTED_WHEN_UNSET


def test_records_say_optimizer_schedule_and_scale(tmp_path, sepsis_frames, calibrate_once):
    rec = _quick_run(
        tmp_path,
        sepsis_frames,
        "a",
        "--mode",
        "fusiondp",
        "--optimizer",
        "momentum",
        "--momentum",
        "0.5",
        "--lr_schedule",
        "cosine",
        "--sensitive_scale",
        "2.5",
    )
    assert (rec["optimizer"], rec["momentum"], rec["lr_schedule"], rec["sensitive_scale"]) == (
        "momentum",
        0.5,
        "cosine",
        2.5,
    )
    assert "one-hot" in rec["sensitive_scale_rule"]
    adam = _quick_run(tmp_path, sepsis_frames, "b", "--mode", "dpsgd", "--optimizer", "adam")
    assert adam["adam_betas"] == [0.9, 0.999] and adam["adam_eps"] == 1e-8 and adam["momentum"] is None
    default = _quick_run(tmp_path, sepsis_frames, "c", "--mode", "fusiondp")
    assert rec["epochs_log"] != default["epochs_log"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (dict(momentum=1.0, optimizer="momentum"), "--momentum must lie in"),
        (dict(momentum=-0.1, optimizer="momentum"), "--momentum must lie in"),
        (dict(momentum=float("nan"), optimizer="momentum"), "--momentum must lie in"),
        (dict(momentum=0.9), "--momentum is read by --optimizer momentum only"),
        (dict(momentum=0.9, optimizer="adam"), "--momentum is read by --optimizer momentum only"),
        (dict(optimizer="rmsprop"), "--optimizer must be one of"),
        (dict(lr_schedule="step"), "--lr_schedule must be one of"),
        (dict(sensitive_scale=0.0), "--sensitive_scale must be finite and > 0, got 0.0"),
        (dict(sensitive_scale=-1.0), "--sensitive_scale must be finite and > 0"),
        (dict(sensitive_scale=float("inf")), "--sensitive_scale must be finite and > 0, got inf"),
        (dict(sensitive_scale=float("nan")), "--sensitive_scale must be finite and > 0"),
    ],
)
def test_bad_values_are_refused_naming_flag_and_value(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RunConfig(**flags).validate()


def test_cli_parses_the_new_flags_and_refuses_bad_choices(tmp_path):
    parser = sepsis_script.get_args_parser()
    args = parser.parse_args(
        [
            "--optimizer",
            "momentum",
            "--momentum",
            "0.7",
            "--lr_schedule",
            "cosine",
            "--sensitive_scale",
            "0.5",
        ]
    )
    config = RunConfig.from_args(args)
    assert (config.optimizer, config.momentum, config.lr_schedule, config.sensitive_scale) == (
        "momentum",
        0.7,
        "cosine",
        0.5,
    )
    config.validate()
    defaults = RunConfig.from_args(parser.parse_args([]))
    assert (defaults.optimizer_used, defaults.momentum_used, defaults.lr_schedule_used) == (
        "sgd",
        0.9,
        "constant",
    )
    assert defaults.sensitive_scale_used == 1.0 and not set(NEW_FLAGS) & set(defaults.settings())
    for bad in (["--optimizer", "lbfgs"], ["--lr_schedule", "step"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_data_without_a_scale_refuses_the_flag():
    class Notes:  # what notes data looks like to the check: no sensitive_scale attribute
        pass

    with pytest.raises(
        ValueError, match=re.escape("--sensitive_scale 2.0 scales the sensitive columns of tabular")
    ):
        check_sensitive_scale(RunConfig(sensitive_scale=2.0), Notes())
    assert check_sensitive_scale(RunConfig(), Notes()) is None
    tabular = type("T", (), {"sensitive_scale": 1.0})()
    with pytest.raises(ValueError, match=re.escape("prepared with sensitive_scale=1.0")):
        check_sensitive_scale(RunConfig(sensitive_scale=3.0), tabular)


# ------------------------------------------------------------------ the sensitive columns' scale


def _prepare(frames, *, scale=1.0, zero_out_view=None, categorical=(), one_hot=True):
    return prepare_sepsis_views(
        frames,
        stats_from="val",
        categorical=categorical,
        one_hot=one_hot,
        bounds=sepsis.BOUNDS,
        zero_out_view=zero_out_view,
        sensitive_scale=scale,
    )[0]


VIEWS = ("original", "hybrid", "noise", "x_val", "x_test")


@pytest.mark.parametrize("one_hot", [True, False])
def test_scale_multiplies_sensitive_columns_in_every_view_and_nothing_else(sepsis_frames, one_hot):
    frames = dict(sepsis_frames)
    categorical = ["Gender"]  # a categorical sensitive column: its one-hot block (or code) is scaled too
    plain = _prepare(frames, categorical=categorical, one_hot=one_hot)
    scaled = _prepare(frames, scale=2.5, categorical=categorical, one_hot=one_hot)
    assert scaled.sensitive_scale == 2.5 and plain.sensitive_scale == 1.0
    sens = plain.sensitive_features
    public = [i for i in range(plain.num_features) if i not in set(sens)]
    gender = [i for i, name in enumerate(plain.feature_names) if name.startswith("Gender")]
    assert len(gender) == (2 if one_hot else 1) and set(gender) <= set(sens)
    for name in VIEWS:
        a, b = getattr(plain, name), getattr(scaled, name)
        assert torch.equal(a[:, public], b[:, public]), name
        torch.testing.assert_close(b[:, sens], 2.5 * a[:, sens], rtol=1e-6, atol=0, msg=name)
        assert not torch.equal(a[:, sens], b[:, sens]), name
    if one_hot:  # the one-hot block holds 0 and s
        assert set(scaled.original[:, gender].unique().tolist()) == {0.0, 2.5}
    for name in ("y", "y_val", "y_test"):
        assert torch.equal(getattr(plain, name), getattr(scaled, name))


@pytest.mark.parametrize("scale", [0.3, 4.0])
def test_zero_out_neighbour_still_gives_zero_private_term_with_the_scale(sepsis_frames, scale):
    # The neighbour as the split modes state it (zero-out values of the hybrid view), with the scale on.
    frames = dict(sepsis_frames)
    original = frames["original"].copy()
    matched = zero_out_values(
        frames["hybrid"], columns=sepsis.SENSITIVE, original_stats=_support_stats(frames)
    )
    original[sepsis.SENSITIVE] = matched.to_numpy()
    frames["original"] = original
    data = _prepare(frames, scale=scale, zero_out_view="hybrid")
    assert torch.allclose(data.original, data.hybrid, atol=1e-5)
    torch.manual_seed(0)
    model = sepsis.build_model(data.num_features)  # dropout on: the views share masks
    grads = per_example_gradients(
        model, data.original, data.hybrid, data.y, loss_fn=binary_bce, reg_weight=0.5, c_h=1.0
    )
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())
    # Negative control: the real rows do differ from their hybrid rows.
    real = _prepare(sepsis_frames, scale=scale, zero_out_view="hybrid")
    grads = per_example_gradients(model, real.original, real.hybrid, real.y, loss_fn=binary_bce)
    assert any(torch.count_nonzero(g) for g in grads.values())


@pytest.mark.parametrize("scale", [0.3, 4.0])
def test_zero_out_neighbour_against_the_noise_view_with_the_scale(sepsis_frames, scale):
    # feature-dp's neighbour: each row's sensitive values at the raw value its noise view stands for.
    frames = dict(sepsis_frames)
    noise = _prepare(frames, scale=scale).noise
    stats = _support_stats(frames)
    original = frames["original"].copy()
    for j, col in zip(_prepare(frames).sensitive_features, sepsis.SENSITIVE, strict=True):
        mean, std = stats[col]
        original[col] = mean + std * noise[:, j].double().numpy() / scale
    frames["original"] = original
    data = _prepare(frames, scale=scale, zero_out_view="noise")
    assert torch.equal(data.noise, noise)
    assert torch.allclose(data.original, data.noise, atol=1e-5)
    torch.manual_seed(0)
    model = sepsis.build_model(data.num_features)
    grads = per_example_gradients(model, data.original, data.noise, data.y, loss_fn=binary_bce)
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def _train_state(
    frames, mode_name, *, alpha, beta=0.5, scale=1.0, optimizer="sgd", lr_schedule="constant", steps=12
):
    data = _prepare(frames, scale=scale)
    mode = get_mode(mode_name)
    torch.manual_seed(0)
    model = sepsis.build_model(data.num_features)
    w_pub, w_priv = mode.weights(alpha=alpha, mix_weight=beta)
    cfg = StepConfig(
        lr=0.05,
        w_pub=w_pub,
        w_priv=w_priv,
        max_grad_norm=1.0,
        noise_multiplier=1.0,
        expected_batch_size=32.0,
        private_loss=mode.private_loss,
        reg_weight=mode.regularizer_weight(beta=beta),
        c_h=1.0,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
    )
    train(
        model,
        data,
        mode=mode,
        cfg=cfg,
        steps=steps,
        epochs=2,
        batch_size=32,
        public_batch_size=64,
        seed=0,
        loss_fn=binary_bce,
        evaluate=lambda m: {},
        progress=False,
    )
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("mode,alpha", [("sgd_hybrid", 1.0), ("fusiondp", 0.0), ("feature-dp", 0.0)])
def test_scrambled_originals_leave_public_paths_bit_identical_with_scale_on(
    sepsis_frames, mode, alpha, optimizer
):
    a = _train_state(sepsis_frames, mode, alpha=alpha, scale=2.5, optimizer=optimizer, lr_schedule="cosine")
    b = _train_state(
        _scrambled(sepsis_frames), mode, alpha=alpha, scale=2.5, optimizer=optimizer, lr_schedule="cosine"
    )
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_negative_control_originals_do_move_fusiondp_with_scale_and_optimizer(sepsis_frames, optimizer):
    a = _train_state(sepsis_frames, "fusiondp", alpha=1.0, scale=2.5, optimizer=optimizer)
    b = _train_state(_scrambled(sepsis_frames), "fusiondp", alpha=1.0, scale=2.5, optimizer=optimizer)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_scale_one_is_the_unscaled_pipeline_bit_for_bit(sepsis_frames):
    # prepare_tabular without the argument (every caller before the flag) and with 1.0: the same tensors.
    common = dict(
        sensitive=sepsis.SENSITIVE,
        public=sepsis.PUBLIC,
        label=sepsis.LABEL,
        noise_seed=0,
        original_stats=_support_stats(sepsis_frames),
        bounds=sepsis.BOUNDS,
        zero_out_view="hybrid",
    )
    frames = [sepsis_frames[k] for k in ("original", "hybrid", "val", "test")]
    a, prep_a = prepare_tabular(*frames, **common)
    b, prep_b = prepare_tabular(*frames, **common, sensitive_scale=1.0)
    for name in (*VIEWS, "y", "y_val", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert prep_a == prep_b and prep_b.scale_ == {}
