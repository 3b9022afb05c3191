"""impute_bank.py and train_fusiondp_bank.py end to end on a small table the test builds."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from fusiondp.datasets import bank
from fusiondp.experiment.results import load_records
from fusiondp.tabular.data import split_indices

SIZES = ["64", "300", "80", "80"]

impute_bank = load_script("impute_bank")
train_fusiondp_bank = load_script("train_fusiondp_bank")


def _bank_table(n=600, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "age": rng.integers(18, 90, n),
            "job": rng.choice(["admin.", "technician", "unknown", "retired"], n),
            "marital": rng.choice(["married", "single", "divorced"], n),
            "education": rng.choice(["primary", "secondary", "tertiary", "unknown"], n),
            "default": rng.choice(["yes", "no"], n),
            "balance": rng.integers(-500, 5000, n),
            "housing": rng.choice(["yes", "no"], n),
            "loan": rng.choice(["yes", "no"], n),
            "contact": rng.choice(["cellular", "unknown"], n),
            "day": rng.integers(1, 31, n),
            "month": rng.choice(["jan", "may", "dec"], n),
            "duration": rng.integers(0, 2000, n),
            "campaign": rng.integers(1, 10, n),
            "pdays": rng.integers(-1, 400, n),
            "previous": rng.integers(0, 5, n),
            "poutcome": rng.choice(["success", "failure", "unknown"], n),
        }
    )
    df["y"] = np.where(df["duration"] + 300 * (df["housing"] == "no") > 1200, "yes", "no")
    return df


def _impute(tmp_path, csv, *extra):
    out = tmp_path / "out"
    args = impute_bank.get_args_parser().parse_args(
        ["--data_csv", str(csv), "--out_dir", str(out), "--split_sizes", *SIZES, "--no_progress", *extra]
    )
    return impute_bank.main(args), out


@pytest.mark.parametrize("separator", [",", ";"])
def test_impute_then_train_hgb(tmp_path, separator):
    csv = tmp_path / "bank.csv"
    _bank_table().to_csv(csv, index=False, sep=separator)
    _, out = _impute(tmp_path, csv, "--imputer", "hgb")
    for name in (
        "bank_support.csv",
        "bank_train.csv",
        "bank_train_imputed.csv",
        "bank_val.csv",
        "bank_test.csv",
        "imputation_metrics.csv",
        "imputation_info.json",
    ):
        assert (out / name).is_file(), name
    train, hybrid = pd.read_csv(out / "bank_train.csv"), pd.read_csv(out / "bank_train_imputed.csv")
    assert len(train) == 300 and (train[bank.PUBLIC].equals(hybrid[bank.PUBLIC]))
    assert json.loads((out / "imputation_info.json").read_text())["deviation_from_paper"].startswith("hgb")
    metrics = pd.read_csv(out / "imputation_metrics.csv")
    assert set(metrics["column"]) == set(bank.SENSITIVE) and set(metrics["rows"]) == {"val", "test"}
    assert metrics["accuracy"].dropna().between(0, 1).all()
    assert "unknown" not in set(train["job"].dropna()) and train["job"].isna().any()  # 'unknown' is missing
    assert not train["age"].equals(hybrid["age"])  # the hybrid really carries imputations
    results = tmp_path / "r.jsonl"
    record = train_fusiondp_bank.main(
        train_fusiondp_bank.get_args_parser().parse_args(
            [
                "--data_dir",
                str(out),
                "--one_hot",
                "--epochs",
                "1",
                "--batch_size",
                "32",
                "--no_progress",
                "--results_json",
                str(results),
            ]
        )
    )
    assert record["imputer"] == "hgb" and record["deviation_from_paper"]
    assert load_records(results)[0]["num_features"] > len(bank.PUBLIC) + 5  # one-hot columns
    assert record["scaling"] == "support" and "bank_support.csv" in record["scaling_description"]
    assert not any("one-hot" in note for note in record["privacy_notes"])
    # feature-dp's N(0,1) null view in one-hot columns: no real data set, so only replace-one counts.
    args = ["--data_dir", str(out), "--one_hot", "--epochs", "1", "--batch_size", "32", "--no_progress"]
    null = train_fusiondp_bank.main(
        train_fusiondp_bank.get_args_parser().parse_args([*args, "--mode", "feature-dp"])
    )
    [note] = [n for n in null["privacy_notes"] if "one-hot" in n]
    assert "only the replace-one epsilon is meaningful" in note and "'job'" in note


def test_tabpfn_imputer_runs_from_the_command_line(tmp_path, tiny_tabpfn_checkpoints):
    csv = tmp_path / "bank.csv"
    _bank_table().to_csv(csv, index=False)
    result, out = _impute(
        tmp_path,
        csv,
        "--imputer",
        "tabpfn",
        "--tabpfn_classifier_path",
        str(tiny_tabpfn_checkpoints["classifier"]),
        "--tabpfn_regressor_path",
        str(tiny_tabpfn_checkpoints["regressor"]),
    )
    assert result["imputer"] == "tabpfn" and result["deviation_from_paper"] is None
    assert len(pd.read_csv(out / "bank_train_imputed.csv")) == 300


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda df, p: df.to_csv(p, index=False, sep="\t"), "one column only"),
        (lambda df, p: df.drop(columns=["job"]).to_csv(p, index=False), r"missing column\(s\) \['job'\]"),
        (
            lambda df, p: df.assign(y=df["y"].replace("yes", "maybe")).to_csv(p, index=False),
            r"must hold 'yes'/'no', found \['maybe'\]",
        ),
    ],
)
def test_bad_bank_input(tmp_path, mutate, match):
    csv = tmp_path / "bank.csv"
    mutate(_bank_table(), csv)
    with pytest.raises(ValueError, match=match):
        _impute(tmp_path, csv, "--imputer", "hgb")


def test_missing_weights_fail_before_work(tmp_path):
    csv = tmp_path / "bank.csv"
    _bank_table().to_csv(csv, index=False)
    with pytest.raises(ValueError, match="does not exist"):
        _impute(tmp_path, csv, "--imputer", "tabpfn", "--tabpfn_classifier_path", str(tmp_path / "none.ckpt"))
    assert not (tmp_path / "out").exists()


def test_scrambling_original_sensitive_values_changes_no_public_input(tmp_path):
    # Vocabularies, caps and scalers come from hybrid + support rows: the originals must not matter.
    from fusiondp.mechanism.scaling import support_statistics
    from fusiondp.tabular.data import load_imputed_splits, prepare_tabular

    csv = tmp_path / "bank.csv"
    _bank_table().to_csv(csv, index=False)
    _, out = _impute(tmp_path, csv, "--imputer", "hgb")
    frames = load_imputed_splits(
        out,
        dataset="bank",
        public=bank.PUBLIC,
        sensitive=bank.SENSITIVE,
        label=bank.LABEL,
    )
    scrambled = frames["train"].copy()
    scrambled[bank.SENSITIVE] = scrambled[bank.SENSITIVE].sample(frac=1, random_state=1).to_numpy()
    scrambled.loc[:5, "job"] = "astronaut"  # a category nobody public has seen
    kw = {
        "sensitive": bank.SENSITIVE,
        "public": bank.PUBLIC,
        "label": bank.LABEL,
        "categorical": bank.CATEGORICAL,
        "one_hot": True,
        "original_stats": support_statistics(frames["support"], ["age"], where="bank_support.csv"),
        "shared_fit": pd.concat([frames["train_imputed"], frames["support"]]),
    }
    a, _ = prepare_tabular(frames["train"], frames["train_imputed"], frames["val"], frames["test"], **kw)
    b, _ = prepare_tabular(scrambled, frames["train_imputed"], frames["val"], frames["test"], **kw)
    assert not np.array_equal(a.original.numpy(), b.original.numpy())
    assert a.feature_names == b.feature_names
    for name in ("hybrid", "noise", "x_val", "x_test", "y"):
        assert np.array_equal(getattr(a, name).numpy(), getattr(b, name).numpy()), name


def test_published_quality_does_not_depend_on_any_training_row(tmp_path):
    """Privacy: imputation_metrics.csv and imputation_info.json are measured on held-out val/test rows,
    so changing one training row's sensitive values leaves both byte-identical."""
    table, csv = _bank_table(), tmp_path / "bank.csv"
    table.to_csv(csv, index=False)
    _, out = _impute(tmp_path, csv, "--imputer", "hgb")
    published = ("imputation_metrics.csv", "imputation_info.json")
    before = {name: (out / name).read_bytes() for name in published}
    train_before = (out / "bank_train.csv").read_bytes()
    sizes = dict(zip(("support", "train", "val", "test"), map(int, SIZES), strict=True))
    row = split_indices(len(table), sizes, seed=66)["train"][0]
    table.loc[row, "age"] += 50
    table.loc[row, "job"] = "retired" if table.loc[row, "job"] != "retired" else "admin."
    table.to_csv(csv, index=False)
    _impute(tmp_path, csv, "--imputer", "hgb")
    assert (out / "bank_train.csv").read_bytes() != train_before  # the training row did change
    for name in published:
        assert (out / name).read_bytes() == before[name], name
    metrics = pd.read_csv(out / "imputation_metrics.csv")
    assert list(dict.fromkeys(metrics["rows"])) == ["val", "test"]
    assert (metrics.groupby("rows")["n"].max() <= 80).all()  # val and test hold 80 rows each
    info = json.loads((out / "imputation_info.json").read_text())
    assert info["imputation_quality"]["rows"] == ["val", "test"]
    assert "training rows' sensitive values are never read" in info["imputation_quality"]["measured_on"]
