"""A non-finite (or overflowing) per-example gradient contributes nothing; original values are clipped.

Privacy review, item 1: the clip factor min(1, C / (‖g‖ + 1e-6)) of an example whose gradient is NaN
or inf was NaN, and the NaN reached the noised sum, so whether a run finished revealed whether a
sampled row held such a value. Two layers now: an example whose norm is not finite contributes
exactly zero, decided inside the step (fusiondp.mechanism.clipping.clip_factors), in book-keeping and in the
vmap reference; and the original view's numeric sensitive values are clipped to the dataset's public
BOUNDS before they are standardised (fusiondp.tabular.data.original_clip_bounds), widened in the split modes
so that every zero-out neighbour still contributes exactly zero. The neighbour checks compare clipped
sums in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script, make_sepsis_frames, prepare_sepsis_views, sepsis_args, write_sepsis_dir

from fusiondp.datasets import sepsis
from fusiondp.mechanism.scaling import column_statistics
from fusiondp.mechanism.step import (
    StepConfig,
    fusion_step,
    per_example_gradients,
    private_gradient,
    trainable_params,
)
from fusiondp.models import CAML, MLP, binary_bce, multilabel_bce
from fusiondp.tabular.data import TabularPreprocessor, zero_out_values

BAD_VALUES = [math.inf, -math.inf, math.nan, 1e30]
METHODS = ["bookkeeping", "vmap"]
BAD_TOKEN = 40  # CAML: the one token whose (frozen) embedding is made non-finite; only row 0 holds it
C = 0.05


def _problem(kind: str, bad: float | None, *, n: int = 8, dtype=torch.float64):
    """(model, x, x_ref, y, loss_fn); row 0 of the ORIGINAL view carries ``bad`` (None: a normal row).

    MLP: feature 0 (a sensitive column) of row 0. CAML: a token of row 0 whose embedding is ``bad``
    in every dimension (a frozen table cannot be edited per row, so the token is unique to row 0).
    """
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    if kind == "mlp":
        model = MLP(7, hidden=(8, 6), dropout=0.0).to(dtype)
        x = torch.randn(n, 7, generator=gen, dtype=dtype)
        x_ref = x.clone()
        x_ref[:, :3] = torch.randn(n, 3, generator=gen, dtype=dtype)
        if bad is not None:
            x[0, 0] = bad
        y = (torch.rand(n, generator=gen) < 0.4).to(dtype)
        return model, x, x_ref, y, binary_bce
    table = torch.randn(BAD_TOKEN + 1, 6, generator=gen)
    model = CAML(table, num_labels=5, filters=4, kernel_size=3, dropout=0.0).to(dtype)
    if bad is not None:
        model.embedding[BAD_TOKEN] = bad
    x = torch.randint(1, BAD_TOKEN, (n, 11), generator=gen)
    x[: n // 2, 8:] = 0  # some padding
    x_ref = x.clone()
    x_ref[:, 2] = torch.randint(1, BAD_TOKEN, (n,), generator=gen)
    x[0, 5] = BAD_TOKEN  # only the original view of row 0 reads it
    y = (torch.rand(n, 5, generator=gen) < 0.3).to(dtype)
    return model, x, x_ref, y, multilabel_bce


def _cfg(
    private_loss: str, method: str, *, noise_multiplier: float = 0.0, reg_weight: float = 0.0
) -> StepConfig:
    return StepConfig(
        lr=0.1,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=C,
        noise_multiplier=noise_multiplier,
        expected_batch_size=1.0,  # g_priv is the (noised) clipped sum itself
        private_loss=private_loss,
        reg_weight=reg_weight,
        c_h=0.3,
        per_example=method,
    )


def _sum(model, x, x_ref, y, loss_fn, *, private_loss, method, reg_weight=0.0, noise_multiplier=0.0):
    got, _ = private_gradient(
        model,
        x,
        x_ref if private_loss == "difference" else None,
        y,
        cfg=_cfg(private_loss, method, noise_multiplier=noise_multiplier, reg_weight=reg_weight),
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(0),
    )
    return got


def _distance(a: dict, b: dict) -> float:
    return math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a))


@pytest.mark.parametrize("kind", ["mlp", "caml"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("private_loss,reg_weight", [("difference", 0.5), ("full", 0.0)])
def test_a_non_finite_example_moves_the_clipped_sum_by_at_most_C(kind, method, bad, private_loss, reg_weight):
    model, x, x_ref, y, loss_fn = _problem(kind, bad)
    kw = dict(private_loss=private_loss, method=method, reg_weight=reg_weight)
    got = _sum(model, x, x_ref, y, loss_fn, **kw)
    assert all(torch.isfinite(g).all() for g in got.values()), "a NaN/inf reached the clipped sum"
    # Neighbours of the data set with the bad row: zero-out (split modes: row 0's original view equals
    # its public view, its term is exactly 0) or add/remove (dpsgd: row 0 is absent), sensitivity C;
    # replace-one (row 0 holds an ordinary value instead), sensitivity 2C.
    if private_loss == "difference":
        x_zero = x.clone()
        x_zero[0] = x_ref[0]
        without = _sum(model, x_zero, x_ref, y, loss_fn, **kw)
    else:
        without = _sum(model, x[1:], x_ref[1:], y[1:], loss_fn, **kw)
    x_other = x.clone()
    if kind == "mlp":
        x_other[0, 0] = 0.3
    else:
        x_other[0, 5] = 1  # an ordinary token in place of the one with the bad embedding
    replaced = _sum(model, x_other, x_ref, y, loss_fn, **kw)
    assert _distance(got, without) <= C * (1 + 1e-9)
    assert _distance(got, replaced) <= 2 * C * (1 + 1e-9)
    if not math.isfinite(bad):
        # The non-finite example is excluded: the sum is exactly that of the other examples.
        for name in got:
            torch.testing.assert_close(got[name], without[name], rtol=1e-12, atol=1e-15, msg=name)


@pytest.mark.parametrize("kind", ["mlp", "caml"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", BAD_VALUES)
def test_the_noised_update_is_finite_in_float32(kind, method, bad):
    # The training dtype: in float32 a huge input overflows the squared norm (1e20² > 3.4e38), so
    # the example's norm is not finite and it contributes zero, which is as private as clipping it.
    model, x, x_ref, y, loss_fn = _problem(kind, bad, dtype=torch.float32)
    noised, _ = private_gradient(
        model,
        x,
        x_ref,
        y,
        cfg=_cfg("difference", method, noise_multiplier=1.1, reg_weight=0.5),
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(0),
    )
    assert all(torch.isfinite(g).all() for g in noised.values())
    clean = _sum(model, x, x_ref, y, loss_fn, private_loss="difference", method=method, reg_weight=0.5)
    assert all(torch.isfinite(g).all() for g in clean.values())
    per_example_bound = C * (1 + 1e-5) * len(x)
    assert math.sqrt(sum(float(g.pow(2).sum()) for g in clean.values())) <= per_example_bound


@pytest.mark.parametrize("method", METHODS)
def test_fusion_step_keeps_the_model_finite_and_reports_only_the_batch_size(method):
    model, x, x_ref, y, loss_fn = _problem("mlp", math.inf, dtype=torch.float32)
    stats = fusion_step(
        model,
        x_public=x_ref,
        y_public=y,
        x_private=x,
        x_reference=x_ref,
        y_private=y,
        cfg=_cfg("difference", method, noise_multiplier=1.0, reg_weight=0.5),
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(0),
    )
    assert stats == {"private_batch_size": len(x)}  # no count of excluded examples leaves the step
    assert all(torch.isfinite(p).all() for p in trainable_params(model).values())


def test_the_audited_correct_step_is_the_fixed_step():
    # The step-canary audit's CORRECT variant must run the same (fixed) clipping as training.
    from fusiondp.audit.controls import CORRECT

    model, x, x_ref, y, loss_fn = _problem("mlp", math.nan, dtype=torch.float32)
    released = CORRECT.private_gradient(
        model,
        x,
        x_ref,
        y,
        cfg=_cfg("difference", "bookkeeping", noise_multiplier=1.0),
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(0),
    )
    assert all(torch.isfinite(g).all() for g in released.values())


# --------------------------------------------------------------------------------------------------
# The data layer: the original view's numeric sensitive values are clipped to public ranges.


def test_the_original_view_is_clipped_before_it_is_standardised():
    public = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]})
    prep = TabularPreprocessor(numeric=["a"]).fit(public)
    clipped = prep.with_clipping({"a": (0.0, 10.0)})
    raw = pd.DataFrame({"a": [math.inf, -math.inf, 1e33, math.nan, 5.0, 1e400]})  # 1e400 reads as inf
    expected = prep.transform(pd.DataFrame({"a": [10.0, 0.0, 10.0, math.nan, 5.0, 10.0]}))
    np.testing.assert_array_equal(clipped.transform(raw), expected)
    assert np.isfinite(clipped.transform(raw)).all()
    assert not np.isfinite(prep.transform(raw)).all()  # without the bounds, inf reaches the tensor
    with pytest.raises(ValueError, match="non-numeric or unknown"):
        prep.with_clipping({"b": (0.0, 1.0)})


def _support_stats(frames):
    return column_statistics(frames["support"], sepsis.SENSITIVE)


def _prepare(frames, **kw):
    return prepare_sepsis_views(frames, **kw)


@pytest.mark.parametrize("view", ["hybrid", "noise"])
def test_a_zero_out_neighbour_still_contributes_exactly_zero_after_clipping(view):
    frames = make_sepsis_frames()
    stats = _support_stats(frames)
    if view == "hybrid":
        matched = zero_out_values(frames["hybrid"], columns=sepsis.SENSITIVE, original_stats=stats)
    else:  # the noise view's values carried onto the original scale (the noise depends on the seed only)
        noise, _ = _prepare(frames)
        matched = pd.DataFrame(
            {
                col: stats[col][0] + stats[col][1] * noise.noise[:, j].double().numpy()
                for col, j in zip(sepsis.SENSITIVE, noise.sensitive_features, strict=True)
            }
        )
    outside = [
        col for col, (lo, hi) in sepsis.BOUNDS.items() if ((matched[col] < lo) | (matched[col] > hi)).any()
    ]
    # Per-view scales: e.g. a hybrid Gender of 0 or 1 is a z-score of about ±1, which on the support
    # set's scale is a little below 0 or above 1.
    assert len(outside) >= 3, "the test must have zero-out values outside BOUNDS"
    neighbour = dict(frames)
    neighbour["original"] = frames["original"].copy()
    neighbour["original"][sepsis.SENSITIVE] = matched.to_numpy()
    data, prep = _prepare(neighbour, bounds=sepsis.BOUNDS, zero_out_view=view)
    for col, (lo, hi) in prep.clip_.items():
        assert lo <= sepsis.BOUNDS[col][0] and hi >= sepsis.BOUNDS[col][1]
    public = data.view(view)
    assert torch.allclose(data.original, public, atol=1e-5)
    torch.manual_seed(0)
    model = sepsis.build_model(data.num_features)  # dropout on: the views share masks
    grads = per_example_gradients(
        model, data.original[:64], public[:64], data.y[:64], loss_fn=binary_bce, reg_weight=0.5, c_h=1.0
    )
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())
    # The plain BOUNDS would move those zero-out neighbours off their public view.
    plain, _ = _prepare(neighbour, bounds=sepsis.BOUNDS)
    assert not torch.allclose(plain.original, public, atol=1e-5)


def test_the_clip_ranges_do_not_depend_on_the_original_values():
    frames = make_sepsis_frames()
    changed = dict(frames)
    changed["original"] = frames["original"].copy()
    changed["original"].loc[0, "Age"] = math.inf
    changed["original"].loc[1, "HospAdmTime"] = -1e33
    for view in (None, "hybrid", "noise"):
        a, prep_a = _prepare(frames, bounds=sepsis.BOUNDS, zero_out_view=view)
        b, prep_b = _prepare(changed, bounds=sepsis.BOUNDS, zero_out_view=view)
        assert prep_a.clip_ == prep_b.clip_
        assert torch.isfinite(b.original).all()
        # Only the changed rows moved, and to the ends of the ranges.
        assert torch.equal(a.original[2:], b.original[2:])
        age, adm = a.feature_names.index("Age"), a.feature_names.index("HospAdmTime")
        assert b.original[0, age] == b.original[:, age].max()
        assert b.original[1, adm] == b.original[:, adm].min()


def test_bounds_are_required_for_every_numeric_sensitive_column():
    frames = make_sepsis_frames()
    bounds = {k: v for k, v in sepsis.BOUNDS.items() if k != "ICULOS"}
    with pytest.raises(ValueError, match=r"public range .* none for \['ICULOS'\]"):
        _prepare(frames, bounds=bounds)


sepsis_script = load_script("train_fusiondp_sepsis")


@pytest.mark.parametrize(
    "mode,value", [("fusiondp", math.inf), ("fusiondp", 1e33), ("dpsgd", math.inf), ("sgd_ori", 1e400)]
)
def test_a_run_with_an_extreme_original_value_finishes_and_records_the_clipping(
    tmp_path, calibrate_once, mode, value
):
    # The review's reproduction, small: one training row's Age is inf or 1e33 (1e400 reads as inf),
    # and so is one test row's. Before the fix the run stopped ("predictions contain NaN or inf")
    # exactly when that training row was sampled; evaluation always did.
    frames = make_sepsis_frames()
    frames["original"].loc[3, "Age"] = value
    frames["test"].loc[5, "Age"] = value
    data_dir = write_sepsis_dir(tmp_path / "sepsis", frames)
    assert not np.isfinite(pd.read_csv(data_dir / sepsis.FILES["train"])["Age"]).all() or value == 1e33
    record = sepsis_script.main(sepsis_args(data_dir, "--mode", mode, "--epochs", "3"))
    for key in ("val_auroc", "val_aupr", "test_auroc", "test_aupr", "test_f1"):
        assert math.isfinite(record[key]), key
    ranges = record["original_values_clipped_to_bounds"]
    numeric_sensitive = [c for c in sepsis.SENSITIVE if c not in sepsis.CATEGORICAL]
    assert sorted(ranges) == sorted(numeric_sensitive)
    for col, (lo, hi) in ranges.items():
        assert math.isfinite(lo) and math.isfinite(hi)
        if mode == "fusiondp":  # widened to hold the zero-out values against the hybrid view
            assert lo <= sepsis.BOUNDS[col][0] and hi >= sepsis.BOUNDS[col][1]
            assert "zero-out" in record["original_values_clip_rule"]
        else:  # no zero-out neighbour (dpsgd's hybrid rows are private): the public BOUNDS as declared
            assert (lo, hi) == sepsis.BOUNDS[col]
    # The ranges only: no count of clipped values (a statistic of the original values) anywhere.
    assert not [
        k
        for k in record
        if "clip" in k and k not in ("original_values_clipped_to_bounds", "original_values_clip_rule")
    ]
