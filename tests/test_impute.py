"""Imputers: the real TabPFN fit/predict path (tiny random checkpoint) and the hgb stand-in."""

import numpy as np
import pandas as pd
import pytest

from fusiondp.impute import (
    SensitiveImputer,
    apply_cap,
    cap_categories,
    check_disjoint,
    imputation_quality,
    split_indices,
    tabpfn_weights_problem,
)


def _table(n, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(["x", "y", "z"], size=n)}
    )
    df["age"] = 40 + 10 * df["a"] + rng.normal(scale=2, size=n)
    df["job"] = np.where(df["b"] > 0.3, "admin", np.where(df["c"] == "x", "tech", "other"))
    df.loc[rng.random(n) < 0.05, "job"] = np.nan
    return df


KW = {"public": ["a", "b", "c"], "sensitive": ["age", "job"], "categorical": ["c", "job"]}


def test_tabpfn_path_fits_and_predicts_through_the_real_api(tiny_tabpfn_checkpoints):
    support, train = _table(120, seed=1), _table(50, seed=2)
    paths = {task: str(path) for task, path in tiny_tabpfn_checkpoints.items()}
    imp = SensitiveImputer(kind="tabpfn", model_paths=paths, batch_size=16, **KW)
    imputed = imp.fit(support).predict(train, progress=False)
    assert list(imputed.columns) == ["age", "job"] and len(imputed) == 50
    assert set(imputed["job"]) <= {"admin", "tech", "other"}
    assert np.isfinite(imputed["age"].astype(float)).all()
    assert type(imp.models_["job"]).__name__ == "TabPFNClassifier"
    assert type(imp.models_["age"]).__name__ == "TabPFNRegressor"
    # Batched prediction equals one-shot prediction.
    imp.batch_size = 1000
    again = imp.predict(train, progress=False)
    assert (again["job"] == imputed["job"]).all()
    np.testing.assert_allclose(again["age"].astype(float), imputed["age"].astype(float), rtol=1e-4, atol=1e-4)


def test_hgb_imputer_learns_and_reads_only_public_columns():
    support, train = _table(600, seed=3), _table(300, seed=4)
    imp = SensitiveImputer(kind="hgb", **KW).fit(support)
    imputed = imp.predict(train, progress=False)
    quality = imputation_quality(train, imputed, categorical=["job"]).set_index("column")
    assert quality.loc["job", "accuracy"] > 0.9 and quality.loc["age", "r2"] > 0.7
    scrambled = train.copy()
    scrambled[["age", "job"]] = scrambled[["age", "job"]].sample(frac=1, random_state=0).to_numpy()
    pd.testing.assert_frame_equal(imp.predict(scrambled, progress=False), imputed)


def test_missing_tabpfn_weights_fail_before_any_work(tmp_path):
    paths = {"classifier": str(tmp_path / "nope.ckpt"), "regressor": str(tmp_path / "nope.ckpt")}
    problem = tabpfn_weights_problem(paths, needed=["classifier"])
    assert problem and "--tabpfn_classifier_path" in problem and "nope.ckpt does not exist" in problem
    imp = SensitiveImputer(kind="tabpfn", model_paths=paths, **KW)
    with pytest.raises(RuntimeError, match="does not exist"):
        imp.fit(_table(50))


def test_splits_are_disjoint_and_seeded():
    a = split_indices(100, {"support": 10, "train": 60, "val": 15, "test": 15}, seed=66)
    b = split_indices(100, {"support": 10, "train": 60, "val": 15, "test": 15}, seed=66)
    assert all((a[k] == b[k]).all() for k in a)
    assert len(np.unique(np.concatenate(list(a.values())))) == 100
    with pytest.raises(ValueError, match="need 101 rows but the table has 100"):
        split_indices(100, {"support": 1, "train": 100}, seed=0)


def test_overlapping_support_set_is_an_error():
    with pytest.raises(
        ValueError, match=r"overlaps the training rows \(2 shared row id\(s\), e.g. \[3, 4\]\)"
    ):
        check_disjoint([1, 2, 3, 4], [3, 4, 5])


def test_top_k_capping_is_fitted_on_the_support_column():
    support = pd.Series(["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] + [np.nan])
    keep = cap_categories(support, max_categories=3)
    assert keep == ["a", "b"]
    capped = apply_cap(pd.Series(["a", "c", "d", np.nan, "zz"]), keep)
    assert capped.tolist()[:3] == ["a", "other", "other"] and pd.isna(capped[3]) and capped[4] == "other"


def test_quality_treats_numeric_category_codes_alike():
    true = pd.DataFrame({"unit": [1.0, 0.0, 1.0, np.nan], "g": ["a", "b", "a", "b"]})
    imputed = pd.DataFrame({"unit": [1, 0, 0, 1], "g": ["a", "a", "a", "b"]})
    q = imputation_quality(true, imputed, categorical=["unit", "g"]).set_index("column")
    assert q.loc["unit", "accuracy"] == pytest.approx(2 / 3) and q.loc["unit", "n"] == 3
    assert q.loc["g", "accuracy"] == pytest.approx(3 / 4)
