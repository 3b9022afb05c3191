"""Per-view scaling: where the original view's statistics come from, and what each source costs."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script, sepsis_args, write_sepsis_dir

from fusiondp.datasets import sepsis
from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.plan import private_weight
from fusiondp.experiment.records import EXPERIMENT_MODE
from fusiondp.mechanism import accounting as privacy
from fusiondp.mechanism.scaling import (
    check_bounds_cover_public,
    column_statistics,
    dp_statistics,
    dp_statistics_sensitivity,
    support_statistics,
)
from fusiondp.tabular.runner import plan_tabular_scaling

sepsis_script = load_script("train_fusiondp_sepsis")


def _frames(sepsis_frames):
    return {
        "train": sepsis_frames["original"],
        "train_imputed": sepsis_frames["hybrid"],
        "support": sepsis_frames["support"],
        "val": sepsis_frames["val"],
        "test": sepsis_frames["test"],
    }


def _views(args, frames):
    plan, shared = plan_tabular_scaling(
        RunConfig.from_args(args),
        frames,
        sensitive=sepsis.SENSITIVE,
        categorical=[],
        bounds=sepsis.BOUNDS,
        support_where="test",
    )
    data, prep = sepsis.prepare(
        frames,
        original_stats=plan.stats,
        shared_fit=shared,
    )
    return plan, data, prep


def test_each_view_gets_its_own_scale(sepsis_frames):
    frames = _frames(sepsis_frames)
    frames["train_imputed"] = frames["train_imputed"].copy()
    # Imputations that regress to the mean: a quarter of the originals' spread.
    for col in ("Age", "ICULOS"):
        mean = frames["train"][col].mean()
        frames["train_imputed"][col] = mean + 0.25 * (frames["train"][col] - mean)
    args = sepsis_args("unused")
    _, data, _ = _views(args, frames)
    for col in ("Age", "ICULOS"):
        j = data.feature_names.index(col)
        assert data.hybrid[:, j].std().item() == pytest.approx(1.0, rel=0.01)
        # The original rows on the support set's scale: about unit spread too, not four times it.
        assert 0.7 < data.original[:, j].std().item() < 1.4
        assert 0.7 < data.x_test[:, j].std().item() < 1.4


def test_dpsgd_fits_nothing_on_any_training_row(sepsis_frames):
    """Sample-level DP: change one training row ENTIRELY and nothing fitted changes."""
    frames = _frames(sepsis_frames)
    changed = {k: v.copy() for k, v in frames.items()}
    for key in ("train", "train_imputed"):
        row = changed[key].iloc[0].copy()
        for col in [*sepsis.PUBLIC, *sepsis.SENSITIVE]:
            row[col] = 1e4  # far outside everything else
        changed[key].iloc[0] = row
    args = sepsis_args("unused", "--mode", "dpsgd")
    _, a, prep_a = _views(args, frames)
    _, b, prep_b = _views(args, changed)
    assert not torch.equal(a.original, b.original)  # the change is real
    assert prep_a.means_ == prep_b.means_ and prep_a.stds_ == prep_b.stds_ and prep_a.vocab_ == prep_b.vocab_
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_test, b.x_test)
    assert torch.equal(a.original[1:], b.original[1:])
    # Negative control: the feature-level modes may fit public columns on the training rows' public
    # columns (the hybrid rows), so there the same change does move the shared scale.
    _, c, _ = _views(sepsis_args("unused", "--mode", "fusiondp"), frames)
    _, d, _ = _views(sepsis_args("unused", "--mode", "fusiondp"), changed)
    assert not torch.equal(c.x_val, d.x_val)


def test_support_scaling_reads_no_original_value(sepsis_frames):
    frames = _frames(sepsis_frames)
    scrambled = dict(frames)
    scrambled["train"] = frames["train"].copy()
    rng = np.random.default_rng(3)
    for col in sepsis.SENSITIVE:
        scrambled["train"][col] = rng.permutation(frames["train"][col].to_numpy()) * 3 + 7
    for mode in ("fusiondp", "sgd_hybrid", "dpsgd"):
        plan_a, a, _ = _views(sepsis_args("unused", "--mode", mode), frames)
        plan_b, b, _ = _views(sepsis_args("unused", "--mode", mode), scrambled)
        assert plan_a.stats == plan_b.stats and not plan_a.reads_private_values
        for name in ("hybrid", "noise", "x_val", "x_test"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (mode, name)


def test_private_scaling_does_read_originals_and_says_so(sepsis_frames):
    frames = _frames(sepsis_frames)
    plan, _, _ = _views(sepsis_args("unused", "--scaling", "private"), frames)
    assert plan.reads_private_values
    assert plan.stats == column_statistics(frames["train"], sepsis.SENSITIVE)


def test_bad_support_sets_and_bounds_get_clear_errors(sepsis_frames):
    with pytest.raises(ValueError, match="--scaling support needs a public support set"):
        support_statistics(None, ["Age"], where="none (--support_rows 0)")
    with pytest.raises(ValueError, match=r"lacks sensitive column\(s\) \['Age'\]"):
        support_statistics(sepsis_frames["support"].drop(columns=["Age"]), ["Age"], where="s.csv")
    with pytest.raises(ValueError, match=r"5 observed value\(s\) of 'Age'"):
        support_statistics(sepsis_frames["support"].head(5), ["Age"], where="s.csv")
    with pytest.raises(ValueError, match=r"declared range \(0, 1\) of 'Age' excludes"):
        check_bounds_cover_public({"Age": (0, 1)}, sepsis_frames["hybrid"], what="hybrid")
    frames = _frames(sepsis_frames)
    frames["support"] = None
    with pytest.raises(ValueError, match="--scaling support needs a public support set"):
        _views(sepsis_args("unused"), frames)
    with pytest.raises(ValueError, match="--scaling dp estimates only the sensitive columns"):
        _views(sepsis_args("unused", "--mode", "dpsgd", "--scaling", "dp"), _frames(sepsis_frames))


def test_script_error_for_support_scaling_without_support(tmp_path, sepsis_frames, capsys):
    frames = dict(sepsis_frames, support=None)
    folder = write_sepsis_dir(tmp_path / "d", frames)
    with pytest.raises(ValueError, match="--scaling support needs a public support set"):
        sepsis_script.main(sepsis_args(folder, "--support_rows", "0"))
    # The release's own case: no support.csv, so rows are split off and dropped from training.
    record = sepsis_script.main(sepsis_args(folder, "--support_rows", "40", "--mode", "sgd_hybrid"))
    assert record["num_train_rows"] == 240 - 40 and "dropped from training" in record["support_set"]


def test_dp_statistics_are_accurate_and_bounded():
    rng = np.random.default_rng(0)
    n = 20_000
    frame = pd.DataFrame({"a": rng.normal(50, 10, n), "b": rng.exponential(5, n)})
    frame.loc[rng.random(n) < 0.2, "a"] = np.nan
    frame.loc[0, "b"] = 1e9  # clipped to the declared range, never an error
    bounds = {"a": (0.0, 100.0), "b": (0.0, 60.0)}
    stats = dp_statistics(
        frame, bounds=bounds, noise_multiplier=20.0, generator=torch.Generator().manual_seed(0)
    )
    assert stats["a"][0] == pytest.approx(50, abs=0.5) and stats["a"][1] == pytest.approx(10, rel=0.1)
    assert stats["b"][0] == pytest.approx(5, abs=0.5) and stats["b"][1] == pytest.approx(5, rel=0.15)


def test_one_row_moves_the_dp_sums_by_at_most_the_sensitivity():
    """Any change of one row's values (missing included) moves (Σm·u, Σm·u², Σm) by ≤ 2 per column."""
    rng = np.random.default_rng(1)
    bounds = {"a": (-1.0, 1.0), "b": (0.0, 10.0), "c": (5.0, 6.0)}

    def sums(frame):
        out = []
        for col, (lo, hi) in bounds.items():
            v = frame[col].to_numpy(float)
            m = ~np.isnan(v)
            u = (np.clip(v[m], lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
            out += [u.sum(), (u**2).sum(), m.sum()]
        return np.array(out)

    base = pd.DataFrame({c: rng.uniform(lo, hi, 50) for c, (lo, hi) in bounds.items()})
    worst = 0.0
    for _ in range(300):
        i = int(rng.integers(50))
        pair = [base.copy(), base.copy()]
        for frame in pair:  # two arbitrary values for row i, missing and out-of-range included
            for col, (lo, hi) in bounds.items():
                frame.loc[i, col] = rng.choice([np.nan, lo - 5, hi + 5, lo, hi, (lo + hi) / 2])
        worst = max(worst, np.linalg.norm(sums(pair[0]) - sums(pair[1])))
    assert worst <= dp_statistics_sensitivity(len(bounds)) + 1e-9
    # ... and the bound is attained: every value at the bottom of its range against the top.
    low, high = base.copy(), base.copy()
    for col, (lo, hi) in bounds.items():
        low.loc[0, col], high.loc[0, col] = lo, hi
    assert np.linalg.norm(sums(low) - sums(high)) == pytest.approx(dp_statistics_sensitivity(len(bounds)))


@pytest.mark.parametrize("accountant", ["rdp", "prv", "pld"])
def test_dp_statistics_are_composed_into_epsilon(accountant):
    common = dict(epsilon=1.0, delta=1e-5, batch_size=64, num_rows=6400, epochs=3, accountant=accountant)
    plain = privacy.make_privacy_spec(**common)
    with_stats = privacy.make_privacy_spec(**common, stats_noise_multiplier=5.0)
    # Both meet the target; the statistics cost some of it, so the steps get more noise.
    assert with_stats.epsilon_spent <= 1.0 and with_stats.noise_multiplier > plain.noise_multiplier
    cost = with_stats.epsilon_spent - with_stats.epsilon_without_statistics
    assert cost > 0.01
    # The same σ without the statistics spends exactly the recorded "without" ε (same accountant).
    assert with_stats.epsilon_without_statistics == pytest.approx(
        privacy.epsilon_for(
            noise_multiplier=with_stats.noise_multiplier,
            sample_rate=with_stats.sample_rate,
            steps=with_stats.steps,
            delta=1e-5,
            accountant=accountant,
            relation=privacy.ZERO_OUT,
        )
    )
    # Composition costs more than the steps alone and no more than the two ε added up.
    alone = privacy.statistics_epsilon(
        stats_noise_multiplier=5.0, delta=1e-5, accountant=accountant, relation=privacy.ZERO_OUT
    )
    assert with_stats.epsilon_without_statistics < with_stats.epsilon_spent
    assert with_stats.epsilon_spent < with_stats.epsilon_without_statistics + alone + 0.02
    # Replace-one with the statistics is at least the zero-out ε.
    assert with_stats.epsilon_replace_one >= with_stats.epsilon_zero_out


def test_statistics_alone_over_budget_is_refused():
    with pytest.raises(ValueError, match="statistics alone spend epsilon"):
        privacy.make_privacy_spec(
            epsilon=0.5,
            delta=1e-5,
            batch_size=64,
            num_rows=6400,
            epochs=3,
            accountant="pld",
            stats_noise_multiplier=0.5,
        )


def test_dp_scaling_run_records_its_cost(tmp_path, sepsis_frames):
    folder = write_sepsis_dir(tmp_path / "d", dict(sepsis_frames, support=None))
    args = ("--scaling", "dp", "--support_rows", "0", "--scaling_noise_multiplier", "5")
    dp = sepsis_script.main(sepsis_args(folder, "--mode", "fusiondp", *args))
    assert dp["scaling"] == "dp" and dp["num_train_rows"] == 240
    assert dp["scaling_epsilon_cost"] == pytest.approx(dp["epsilon_spent"] - dp["epsilon_without_statistics"])
    assert dp["scaling_epsilon_cost"] > 0 and dp["epsilon_spent"] <= dp["epsilon"]
    # A non-DP mode evaluated on a DP scale releases the statistics only: that ε, no more. Their noise
    # is secret only with --secure_rng (red-team review: seeded, it was reported as private).
    hybrid = sepsis_script.main(sepsis_args(folder, "--mode", "sgd_hybrid", *args))
    assert hybrid["epsilon_spent"] == hybrid["scaling_epsilon_cost"] > 0
    assert "DP scaling statistics" in hybrid["guarantee"]
    assert hybrid["rng"] == "seeded" and hybrid["privacy_guarantee_holds"] is False
    assert hybrid["outside_guarantee"] == [EXPERIMENT_MODE]
    secure = sepsis_script.main(sepsis_args(folder, "--mode", "sgd_hybrid", "--secure_rng", *args))
    assert secure["rng"] == "secure" and secure["privacy_guarantee_holds"] is True
    # Without DP statistics a non-DP mode draws no secret noise: the seed changes nothing.
    plain = sepsis_script.main(sepsis_args(folder, "--mode", "sgd_hybrid", "--support_rows", "40"))
    assert plain["rng"] is None and plain["privacy_guarantee_holds"] is True


def test_alpha_follows_the_noise():
    spec = lambda sigma: privacy.PrivacySpec(  # noqa: E731
        1.0, 1e-5, 0.01, 100, sigma, "pld", 1.0, "zero-out", 1.0, "pld", 2.0, "pld"
    )
    from fusiondp.mechanism.modes import get_mode

    args = RunConfig.from_args(sepsis_args("unused", "--alpha", "3", "--max_private_noise", "3"))
    mode = get_mode("fusiondp")
    assert private_weight(args, mode, privacy=spec(0.5))[0] == 3.0  # small noise: --alpha as given
    alpha, rule = private_weight(args, mode, privacy=spec(3.0))
    assert alpha == pytest.approx(1.0) and "capped" in rule
    assert math.isclose(alpha * 3.0, 3.0)  # α·σ held at κ
    args = args.replace(max_private_noise=0.0)
    assert private_weight(args, mode, privacy=spec(3.0))[0] == 3.0  # the reference's fixed α


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--alpha", "-2", "--alpha must be >= 0"),
        ("--beta", "-1", "--beta must be >= 0"),
        ("--max_private_noise", "-1", "--max_private_noise must be >= 0"),
        ("--c_h", "-1", "--c_h must be > 0"),
        ("--public_batch_size", "-5", "--public_batch_size must be > 0"),
    ],
)
def test_meaningless_weights_are_refused(sepsis_dir, flag, value, message):
    with pytest.raises(ValueError, match=message):
        sepsis_script.main(sepsis_args(sepsis_dir, flag, value))
