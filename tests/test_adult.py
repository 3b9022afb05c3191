"""impute_adult.py and train_fusiondp_adult.py end to end on small files in adult.data format."""

import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from fusiondp.datasets import adult

impute_adult = load_script("impute_adult")
train_fusiondp_adult = load_script("train_fusiondp_adult")


def _write_adult(folder, n=400, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame(
        {
            "age": rng.integers(17, 90, n),
            "workclass": rng.choice(["Private", "State-gov", "?"], n),
            "fnlwgt": rng.integers(10_000, 500_000, n),
            "education": rng.choice(["Bachelors", "HS-grad"], n),
            "education-num": rng.integers(1, 16, n),
            "marital-status": rng.choice(["Never-married", "Divorced"], n),
            "occupation": rng.choice(["Adm-clerical", "Sales", "?"], n),
            "relationship": rng.choice(["Husband", "Wife"], n),
            "race": rng.choice(["White", "Black"], n),
            "sex": rng.choice(["Male", "Female"], n),
            "capital-gain": rng.integers(0, 5000, n),
            "capital-loss": 0,
            "hours-per-week": rng.integers(10, 60, n),
            "native-country": rng.choice(["United-States", "Mexico", "?"], n),
        }
    )
    rows["income"] = np.where(rows["education-num"] > 10, ">50K", "<=50K")
    half = n // 2
    rows.iloc[:half].to_csv(folder / "adult.data", header=False, index=False, sep=",")
    test = rows.iloc[half:].copy()
    test["income"] = test["income"] + "."  # adult.test marks its labels with a trailing dot
    with open(folder / "adult.test", "w") as fh:
        fh.write("|1x3 Cross validator\n")
        test.to_csv(fh, header=False, index=False)
    return folder


def _impute(tmp_path, folder):
    args = impute_adult.get_args_parser().parse_args(
        [
            "--data_dir",
            str(folder),
            "--out_dir",
            str(tmp_path / "out"),
            "--imputer",
            "hgb",
            "--split_sizes",
            "60",
            "200",
            "60",
            "60",
            "--no_progress",
        ]
    )
    return impute_adult.main(args)


def test_impute_then_train(tmp_path):
    result = _impute(tmp_path, _write_adult(tmp_path / "raw"))
    train = pd.read_csv(tmp_path / "out" / "adult_train.csv")
    # Both label spellings ('>50K' and '>50K.') are parsed: the fixture's label is education-num > 10.
    assert (train["income"] == (train["education-num"] > 10)).all()
    assert train["workclass"].isna().any()  # '?' is missing
    assert result["deviation_from_paper"].startswith("hgb")
    # imputation quality is measured on the held-out rows (60 val, 60 test), never on the training rows
    metrics = pd.read_csv(tmp_path / "out" / "imputation_metrics.csv")
    assert set(metrics["column"]) == set(adult.SENSITIVE)
    assert list(dict.fromkeys(metrics["rows"])) == ["val", "test"] and metrics["n"].max() <= 60
    assert result["imputation_quality"]["rows"] == ["val", "test"]
    record = train_fusiondp_adult.main(
        train_fusiondp_adult.get_args_parser().parse_args(
            [
                "--data_dir",
                str(tmp_path / "out"),
                "--one_hot",
                "--epochs",
                "1",
                "--batch_size",
                "32",
                "--no_progress",
            ]
        )
    )
    assert record["dataset"] == "adult" and record["imputer"] == "hgb" and 0 <= record["test_aupr"] <= 1


def test_unknown_income_label(tmp_path):
    folder = _write_adult(tmp_path / "raw")
    text = (folder / "adult.data").read_text().replace("<=50K", "<=50k?", 3)
    (folder / "adult.data").write_text(text)
    with pytest.raises(ValueError, match=r"income must be '>50K' or '<=50K'.*found \['<=50k\?'\]"):
        _impute(tmp_path, folder)


def test_wrong_separator(tmp_path):
    folder = _write_adult(tmp_path / "raw")
    (folder / "adult.data").write_text((folder / "adult.data").read_text().replace(",", ";"))
    with pytest.raises(ValueError, match=r"not in adult\.data format"):
        _impute(tmp_path, folder)


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"adult\.data does not exist"):
        _impute(tmp_path, tmp_path / "empty")
