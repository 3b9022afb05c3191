"""Imputers: the real TabPFN fit/predict path (tiny random checkpoint) and the hgb stand-in."""

import numpy as np
import pandas as pd
import pytest

from fusiondp.tabular.data import check_disjoint, split_indices
from fusiondp.tabular.impute import (
    BinBlendRegressor,
    ImputeConfig,
    SensitiveImputer,
    apply_cap,
    cap_categories,
    heldout_quality,
    imputation_quality,
    impute_splits,
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
    with pytest.raises(ValueError, match="does not exist"):
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


def test_bin_blend_numbers_on_a_tiny_case():
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.neighbors import KNeighborsClassifier

    y = np.arange(1.0, 9.0)  # quantile bins {1,2} {3,4} {5,6} {7,8}
    x = y[:, None]
    blend = BinBlendRegressor(regressor=DummyRegressor(strategy="constant", constant=100.0),
                              classifier=KNeighborsClassifier(n_neighbors=1), weight=0.0, n_bins=4)  # fmt: skip
    blend.fit(x, y)
    np.testing.assert_allclose(blend.edges_, [2.75, 4.5, 6.25])
    np.testing.assert_allclose(blend.centres_, [1.5, 3.5, 5.5, 7.5])
    np.testing.assert_allclose(blend.predict(np.array([[3.0], [8.0]])), [3.5, 7.5])  # w=0: the bin centre
    blend.weight = 0.25
    np.testing.assert_allclose(blend.predict(np.array([[3.0]])), [0.25 * 100 + 0.75 * 3.5])
    # Class priors as probabilities: the expectation of the bin centres is the mean target.
    prior = BinBlendRegressor(regressor=DummyRegressor(), classifier=DummyClassifier(strategy="prior"),
                              weight=0.0, n_bins=4).fit(x, y)  # fmt: skip
    np.testing.assert_allclose(prior.predict(x[:2]), [4.5, 4.5])
    # w=1 is the regressor alone (the classifier is not even fitted).
    alone = BinBlendRegressor(regressor=DummyRegressor(strategy="constant", constant=7.0),
                              classifier=DummyClassifier(), weight=1.0).fit(x, y)  # fmt: skip
    np.testing.assert_allclose(alone.predict(x), np.full(8, 7.0))
    with pytest.raises(ValueError, match="blend weight must be in"):
        BinBlendRegressor(regressor=None, classifier=None, weight=1.5)


def test_bin_blend_in_the_imputer_with_hgb_and_tied_targets():
    support, train = _table(600, seed=5), _table(200, seed=6)
    support["age"], train["age"] = support["age"].round(-1), train["age"].round(-1)  # many ties
    kw = {**KW, "blend_columns": ["age"], "n_bins": 5}
    reg = SensitiveImputer(kind="hgb", blend_weight=1.0, **kw).fit(support).predict(train, progress=False)
    plain = SensitiveImputer(kind="hgb", **KW).fit(support).predict(train, progress=False)
    np.testing.assert_allclose(reg["age"], plain["age"])  # w=1 equals the plain regressor
    imp = SensitiveImputer(kind="hgb", blend_weight=0.0, **kw).fit(support)
    expected = imp.predict(train, progress=False)["age"]
    model = imp.models_["age"]
    assert model.centres_.min() <= expected.min() and expected.max() <= model.centres_.max()
    assert (
        imputation_quality(train, imp.predict(train, progress=False), categorical=["job"])
        .set_index("column")
        .loc["age", "r2"]
        > 0.5
    )


def test_bin_blend_through_tabpfn_real_api(tiny_tabpfn_checkpoints):
    paths = {task: str(path) for task, path in tiny_tabpfn_checkpoints.items()}
    support, train = _table(100, seed=7), _table(30, seed=8)
    kw = {**KW, "blend_columns": ["age"], "n_bins": 4, "model_paths": paths, "batch_size": 16}
    imp = SensitiveImputer(kind="tabpfn", blend_weight=0.5, **kw).fit(support)
    model = imp.models_["age"]
    assert type(model.classifier).__name__ == "TabPFNClassifier"
    assert type(model.regressor).__name__ == "TabPFNRegressor"
    x = imp._encode(train)
    expected = model.expected_centre(x)
    regression = model.regressor.predict(x)
    np.testing.assert_allclose(imp.predict(train, progress=False)["age"], 0.5 * regression + 0.5 * expected,
                               rtol=1e-5)  # fmt: skip
    assert model.centres_.min() <= expected.min() and expected.max() <= model.centres_.max()
    with pytest.raises(ValueError, match="does not exist"):  # a blend needs both checkpoints
        SensitiveImputer(kind="tabpfn", **{**kw, "model_paths": {"regressor": paths["regressor"],
                                                                 "classifier": "/nope.ckpt"}}).fit(support)  # fmt: skip


def test_heldout_quality_scores_val_and_test_rows_only():
    """Privacy: quality is measured on held-out rows; the training rows are never looked at."""
    support = _table(600, seed=3)
    frames = {"support": support, "train": None, "val": _table(120, seed=4), "test": _table(80, seed=5)}
    imp = SensitiveImputer(kind="hgb", **KW).fit(support)
    quality = heldout_quality(imp, frames, categorical=["job"])  # a None training table is never read
    assert list(quality["rows"]) == ["val", "val", "test", "test"]
    by_rows = quality.set_index(["rows", "column"])
    assert by_rows.loc[("val", "age"), "n"] == 120 and by_rows.loc[("test", "age"), "n"] == 80
    expected = imputation_quality(
        frames["val"], imp.predict(frames["val"], progress=False), categorical=["job"]
    )
    assert by_rows.loc[("val", "job"), "accuracy"] == expected.set_index("column").loc["job", "accuracy"]
    with pytest.raises(ValueError, match=r"split 'test' is missing \(got \['support', 'train', 'val'\]\)"):
        heldout_quality(imp, {k: v for k, v in frames.items() if k != "test"}, categorical=["job"])


def test_quality_cli_says_training_rows_are_a_private_evaluation(tmp_path, capsys):
    from conftest import load_script

    cli = load_script("scripts.imputation_quality")

    assert "never to be published" in cli.get_args_parser().format_help()
    true = _table(40, seed=1)
    true.to_csv(tmp_path / "true.csv", index=False)
    true.assign(job="admin").to_csv(tmp_path / "imputed.csv", index=False)
    args = cli.get_args_parser().parse_args(
        [
            str(tmp_path / "true.csv"),
            str(tmp_path / "imputed.csv"),
            "--numeric",
            "age",
            "--categorical",
            "job",
        ]
    )
    table = cli.main(args)
    assert "job" in table and "PRIVATE evaluation" in capsys.readouterr().err


def test_impute_splits_leaves_the_callers_tables_as_given(tmp_path):
    df = _table(200)
    df.loc[:, "job"] = [f"job{i % 14}" for i in range(len(df))]  # more classes than the cap keeps
    frames = {"support": df[:60], "train": df[60:140], "val": df[140:170], "test": df[170:]}
    frames = {name: frame.reset_index(drop=True) for name, frame in frames.items()}
    before = {name: frame.copy() for name, frame in frames.items()}
    config = ImputeConfig(imputer="hgb", seed=0, out_dir=tmp_path, progress=False)
    impute_splits(frames, config, dataset="t", info={}, **KW)
    assert sorted(frames) == sorted(before)
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(frame, before[name])


def test_early_stopping_split_rule_is_exactly_scikit_learns():
    """The rule's predicate agrees with scikit-learn's stratified split (what hgb's early stopping runs)."""
    import itertools

    from sklearn.model_selection import train_test_split

    from fusiondp.tabular.impute import HGB_VALIDATION_FRACTION, early_stopping_split_problem

    cases = [c for k in (1, 2, 3) for c in itertools.product((1, 2, 3, 4, 7), repeat=k)]
    cases += [(2,) * 10, (3,) * 10, (4,) * 10, (5,) * 10, (2,) * 5 + (1,), (40, 1, 1), (500, 11, 1)]
    for counts in cases:
        labels = np.repeat([f"c{i}" for i in range(len(counts))], counts)
        rare, problem = early_stopping_split_problem(labels, validation_fraction=HGB_VALIDATION_FRACTION)
        try:
            train_test_split(labels, test_size=HGB_VALIDATION_FRACTION, stratify=labels, random_state=0)
            splits = True
        except ValueError:
            splits = False
        assert (problem is None) == splits, (counts, problem)
        assert rare == {f"c{i}": 1 for i, m in enumerate(counts) if m == 1}
    # The exact numbers: one row is too few; ten classes of 4 rows give a validation part of 8 rows.
    assert early_stopping_split_problem(["a", "a", "b"] * 10 + ["z"]) == (
        {"z": 1},
        "1 class(es) with fewer than 2 support rows: 'z' (1 row)",
    )
    assert early_stopping_split_problem(np.repeat(np.arange(10), 4)) == (
        {},
        "the validation part of the split would have 8 rows for 10 classes",
    )
    assert early_stopping_split_problem(np.repeat(np.arange(10), 5)) == ({}, None)  # 10 rows for 10


def _rare_job_frames(n_support=300):
    """Support/train/val/test where 'rare' is a job of ONE support row (and of many training rows)."""
    df = _table(n_support + 360, seed=11)
    support, train = df[:n_support].copy(), df[n_support:600].copy()
    support.loc[support.index[7], "job"] = "rare"
    train.loc[train.index[:40], "job"] = "rare"  # frequent in training: must not change the rule
    frames = {"support": support, "train": train, "val": df[600:630], "test": df[630:]}
    return {name: frame.reset_index(drop=True) for name, frame in frames.items()}


def test_hgb_fits_a_category_seen_once_in_the_support_set_without_early_stopping(tmp_path):
    import json

    from sklearn.model_selection import train_test_split

    frames = _rare_job_frames()
    support = frames["support"]
    n_known = int(support["job"].notna().sum())
    with pytest.raises(ValueError, match=r"Classes with too few members"):  # what scikit-learn does alone
        job = support["job"].dropna().astype(str)
        train_test_split(job, test_size=0.2, stratify=job, random_state=0)
    imp = SensitiveImputer(kind="hgb", **KW).fit(support)
    expected = {
        "job": {
            "target": "categories",
            "support_rows": n_known,
            "classes": 4,
            "rare_classes": {"rare": 1},
            "reason": "1 class(es) with fewer than 2 support rows: 'rare' (1 row)",
            "early_stopping": False,
            "max_iter": 100,
        }
    }
    assert imp.early_stopping_off_ == expected
    job_model, age_model = imp.models_["job"], imp.models_["age"]
    assert job_model.early_stopping is False and job_model.n_iter_ == 100  # fixed number of trees
    assert list(job_model.classes_) == ["admin", "other", "rare", "tech"]  # every class kept
    assert age_model.early_stopping is True and age_model.n_iter_ < 100  # other columns keep it
    imputed = imp.predict(frames["train"], progress=False)
    quality = imputation_quality(frames["train"][40:], imputed[40:], categorical=["job"]).set_index("column")
    assert quality.loc["job", "accuracy"] > 0.9

    # Through impute_splits: imputation_info.json says what was done, counted on support rows only.
    config = ImputeConfig(imputer="hgb", seed=0, out_dir=tmp_path / "a", progress=False)
    impute_splits(frames, config, dataset="t", info={}, **KW)
    info = json.loads((tmp_path / "a" / "imputation_info.json").read_text())
    assert info["imputer_settings"]["early_stopping_off"] == expected
    assert "fitted without early stopping" in info["imputer_settings"]["early_stopping_rule"]
    assert "except for the columns in early_stopping_off" in info["imputer_settings"]["model"]
    # Privacy: the training rows' sensitive values (here: 'rare' everywhere) do not move the record.
    scrambled = dict(frames, train=frames["train"].assign(job="rare", age=0.0))
    config = ImputeConfig(imputer="hgb", seed=0, out_dir=tmp_path / "b", progress=False)
    impute_splits(scrambled, config, dataset="t", info={}, **KW)
    for name in ("imputation_info.json", "imputation_metrics.csv", "t_train_imputed.csv"):
        if name == "t_train_imputed.csv":  # the imputed columns only (the file also holds true values)
            a = pd.read_csv(tmp_path / "a" / name)[["age", "job"]]
            b = pd.read_csv(tmp_path / "b" / name)[["age", "job"]]
            pd.testing.assert_frame_equal(a, b)
        else:
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_hgb_without_rare_categories_keeps_early_stopping_everywhere(tmp_path):
    import json

    imp = SensitiveImputer(kind="hgb", **KW).fit(_table(300, seed=11))
    assert imp.early_stopping_off_ == {}
    assert all(model.early_stopping is True for model in imp.models_.values())
    frames = {k: v.assign(job=v["job"].replace("rare", "tech")) for k, v in _rare_job_frames().items()}
    config = ImputeConfig(imputer="hgb", seed=0, out_dir=tmp_path, progress=False)
    impute_splits(frames, config, dataset="t", info={}, **KW)
    info = json.loads((tmp_path / "imputation_info.json").read_text())
    assert info["imputer_settings"]["early_stopping_off"] == {}


def test_hgb_blend_bin_of_one_support_row_is_fitted_without_early_stopping():
    support = _table(300, seed=12)
    support["age"] = 0.0
    support.loc[5, "age"] = -1.0  # tied values and one low outlier: a quantile bin of one row
    imp = SensitiveImputer(kind="hgb", blend_columns=["age"], blend_weight=0.5, **KW).fit(support)
    assert imp.early_stopping_off_["age"] == {
        "target": "quantile bins",
        "support_rows": 300,
        "classes": 2,
        "rare_classes": {"bin 0 [-1, 0]": 1},
        "reason": "1 class(es) with fewer than 2 support rows: 'bin 0 [-1, 0]' (1 row)",
        "early_stopping": False,
        "max_iter": 100,
    }
    model = imp.models_["age"]
    assert model.classifier.early_stopping is False and model.regressor.early_stopping is True
    assert "job" not in imp.early_stopping_off_
    assert np.isfinite(imp.predict(_table(20, seed=13), progress=False)["age"].astype(float)).all()


def test_a_failing_column_fit_names_the_column_and_its_rarest_categories(monkeypatch):
    support = _table(200, seed=14)
    with pytest.raises(ValueError) as failure:
        SensitiveImputer(kind="hgb", **KW).fit(support.assign(job=np.nan))  # no known value at all
    assert str(failure.value).startswith(
        "imputing sensitive column 'job' (hgb, 0 support rows with a value): Found array with 0 sample(s)"
    )
    # Were the rule to miss a case, scikit-learn's error (encoded classes, no column) is named too.
    import fusiondp.tabular.impute

    monkeypatch.setattr(
        fusiondp.tabular.impute, "early_stopping_split_problem", lambda labels, **kw: ({}, None)
    )
    support.loc[3, "job"] = "rare"
    n_known = int(support["job"].notna().sum())
    with pytest.raises(ValueError) as failure:
        SensitiveImputer(kind="hgb", **KW).fit(support)
    message = str(failure.value)
    counts = support["job"].value_counts()
    assert message.startswith(
        f"imputing sensitive column 'job' (hgb, {n_known} support rows with a value); rarest classes in the "
        f"support set: 'rare' (1 row), 'tech' ({counts['tech']} rows), 'other' ({counts['other']} rows): "
        "The least populated classes in y have only 1 member"
    )
    assert "\n" not in message and isinstance(failure.value.__cause__, ValueError)
