"""impute_sepsis.py: raw PhysioNet .psv files and the authors' release, hgb and TabPFN's real API."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import load_script, make_sepsis_frames, sepsis_args, write_sepsis_dir

from fusiondp.datasets import sepsis
from fusiondp.tabular.data import split_indices

# PhysioNet 2019's header: 34 vitals/labs (4 of them not in the release), 6 demographics, the label.
PSV_COLUMNS = ("HR|O2Sat|Temp|SBP|MAP|DBP|Resp|EtCO2|BaseExcess|HCO3|FiO2|pH|PaCO2|SaO2|AST|BUN|Alkalinephos|"
               "Calcium|Chloride|Creatinine|Bilirubin_direct|Glucose|Lactate|Magnesium|Phosphate|Potassium|"
               "Bilirubin_total|TroponinI|Hct|Hgb|PTT|WBC|Fibrinogen|Platelets|Age|Gender|Unit1|Unit2|"
               "HospAdmTime|ICULOS|SepsisLabel").split("|")  # fmt: skip

impute_sepsis = load_script("impute_sepsis")
sepsis_script = load_script("train_fusiondp_sepsis")


def _patient(rng, hours: int, onset: int | None) -> pd.DataFrame:
    df = pd.DataFrame(rng.normal(size=(hours, len(PSV_COLUMNS))), columns=PSV_COLUMNS)
    df.iloc[rng.random(size=df.shape) < 0.3] = np.nan
    age = rng.uniform(20, 90)
    df["HR"] = 60 + age / 2 + rng.normal(size=hours)  # a public column that tells about Age
    df["Age"], df["Gender"], df["HospAdmTime"] = round(age), float(rng.integers(0, 2)), -rng.exponential(20)
    df["Unit1"] = float(rng.integers(0, 2))
    df["Unit2"] = 1.0 - df["Unit1"]
    df["ICULOS"] = np.arange(1, hours + 1)
    df["SepsisLabel"] = 0
    if onset is not None:
        df.loc[onset:, "SepsisLabel"] = 1
    return df


def _write_psv(folder, frames):
    for i, frame in enumerate(frames):
        sub = folder / ("training_setA" if i % 2 else "training_setB")
        sub.mkdir(parents=True, exist_ok=True)
        frame.to_csv(sub / f"p{i:06d}.psv", sep="|", index=False, na_rep="NaN")


def _raw_args(raw_dir, out_dir, *extra):
    return impute_sepsis.get_args_parser().parse_args(
        ["--raw_dir", str(raw_dir), "--out_dir", str(out_dir), "--imputer", "hgb", "--no_progress", *extra]
    )


def test_one_row_per_patient_aggregation():
    hours = pd.DataFrame(np.nan, index=range(4), columns=PSV_COLUMNS)
    hours["HR"] = [80.0, np.nan, 100.0, 120.0]
    hours["Age"], hours["Gender"], hours["HospAdmTime"] = [70.0, 71, 72, 73], 1.0, [-5.0, -6, -7, -8]
    hours["ICULOS"] = [1, 2, 3, 4]
    hours["SepsisLabel"] = [0, 0, 0, 1]  # labelled from hour 4: hours 1-3 are used
    row = impute_sepsis.aggregate_patient(hours)
    assert row["HR"] == 90.0 and row["ICULOS"] == 3 and row["SepsisLabel"] == 1.0
    assert row["Age"] == 70.0 and row["HospAdmTime"] == -5.0 and np.isnan(row["O2Sat"])
    hours["SepsisLabel"] = 0
    row = impute_sepsis.aggregate_patient(hours)
    assert row["HR"] == 100.0 and row["ICULOS"] == 4 and row["SepsisLabel"] == 0.0
    hours["SepsisLabel"] = 1  # labelled from the first hour: that hour alone
    row = impute_sepsis.aggregate_patient(hours)
    assert row["HR"] == 80.0 and row["ICULOS"] == 1 and row["SepsisLabel"] == 1.0


def test_raw_psv_files_to_splits_and_training(tmp_path):
    rng = np.random.default_rng(0)
    patients = [_patient(rng, int(rng.integers(3, 12)), 2 if i % 10 == 0 else None) for i in range(400)]
    _write_psv(tmp_path / "raw", patients)
    out = tmp_path / "out"
    result = impute_sepsis.main(_raw_args(tmp_path / "raw", out, "--support_rows", "100", "--n_bins", "4"))
    frames = {n: pd.read_csv(out / f) for n, f in impute_sepsis.FILES.items()}
    pooled = pd.concat(frames[s] for s in ("support", "train", "val", "test"))
    # 40 positives kept, negatives cut to 15% positives; every split about 15% positive.
    assert len(pooled) == 40 + round(40 * 0.85 / 0.15)
    assert pooled["SepsisLabel"].mean() == pytest.approx(0.15, abs=0.005)
    assert len(frames["support"]) == 100 and result["splits"]["support"] == 100
    for split in ("support", "train", "val", "test"):
        assert frames[split]["SepsisLabel"].mean() == pytest.approx(0.15, abs=0.03)
    assert len(pooled.drop_duplicates()) == len(pooled)  # disjoint splits
    assert "EtCO2" not in frames["train"] and list(frames["train"].columns) == list(
        frames["train_imputed"].columns
    )
    pd.testing.assert_frame_equal(frames["train"][sepsis.PUBLIC], frames["train_imputed"][sepsis.PUBLIC])
    quality = pd.read_csv(out / "imputation_metrics.csv").set_index(["rows", "column"])
    assert set(quality.index.get_level_values("rows")) == {"val", "test"}  # held-out rows only
    assert quality.loc[("val", "Age"), "n"] == len(frames["val"])
    assert quality.loc[("test", "Age"), "r2"] > 0.5  # HR carries Age in this synthetic data
    assert json.loads((out / "imputation_info.json").read_text())["imputation_quality"]["rows"] == [
        "val",
        "test",
    ]
    # The written folder is what train_fusiondp_sepsis.py reads.
    record = sepsis_script.main(sepsis_args(out, "--mode", "fusiondp", "--epsilon", "2"))
    assert np.isfinite(record["test_aupr"])
    # The record names the imputer that made this folder's hybrid, not the authors' release.
    assert record["imputer"] == "hgb" and "NOT TabPFN" in record["deviation_from_paper"]


def test_raw_input_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.psv files under .*empty.*download_physionet_sepsis"):
        impute_sepsis.main(_raw_args(tmp_path / "empty", tmp_path / "out"))
    bad = _patient(np.random.default_rng(0), 3, None).drop(columns=["ICULOS"])
    _write_psv(tmp_path / "bad", [bad])
    with pytest.raises(ValueError, match=r"p000000\.psv: not a PhysioNet 2019 patient file.*\['ICULOS'\]"):
        impute_sepsis.main(_raw_args(tmp_path / "bad", tmp_path / "out"))
    comma = tmp_path / "comma" / "p1.psv"  # a comma-separated file reads as one column
    comma.parent.mkdir()
    _patient(np.random.default_rng(0), 3, None).to_csv(comma, index=False)
    with pytest.raises(ValueError, match=r"p1\.psv: not a PhysioNet 2019 patient file"):
        impute_sepsis.main(_raw_args(tmp_path / "comma", tmp_path / "out"))


def _released(tmp_path, *extra, imputer="hgb"):
    frames = make_sepsis_frames(n_train=400, n_eval=60, seed=3)
    rng = np.random.default_rng(1)
    for split in ("original", "val", "test"):  # HR carries Age in every split, held-out ones included
        frames[split]["HR"] = frames[split]["Age"] / 20 + rng.normal(size=len(frames[split]))
    frames["hybrid"]["HR"] = frames["original"]["HR"]
    data = write_sepsis_dir(tmp_path / "release", frames)
    out = tmp_path / "out"
    args = impute_sepsis.get_args_parser().parse_args(
        ["--released_dir", str(data), "--out_dir", str(out), "--imputer", imputer, "--support_rows", "100",
         "--n_bins", "4", "--seed", "5", "--no_progress", *extra]
    )  # fmt: skip
    return frames, data, out, args


def test_released_rows_support_held_out_and_reference_on_the_same_rows(tmp_path):
    frames, _, out, args = _released(tmp_path)
    out.mkdir()
    (out / "imputation_metrics_reference.csv").write_text("written by an earlier version\n")
    result = impute_sepsis.main(args)
    ids = split_indices(400, {"support": 100, "train": 300}, seed=5)
    train = pd.read_csv(out / "train_ori.csv")
    hybrid = pd.read_csv(out / "train_hybrid.csv")
    support = pd.read_csv(out / "support.csv")
    original = frames["original"].drop(columns="ICULOS_bin")
    # Support rows are dropped from training; training rows keep the release's order and values.
    pd.testing.assert_frame_equal(
        train, original.iloc[ids["train"]].reset_index(drop=True), check_dtype=False
    )
    pd.testing.assert_frame_equal(
        support, original.iloc[ids["support"]].reset_index(drop=True), check_dtype=False
    )
    assert "ICULOS_bin" not in hybrid and "ICULOS_bin" not in pd.read_csv(out / "val.csv")
    pd.testing.assert_frame_equal(
        train[[*sepsis.PUBLIC, sepsis.LABEL]], hybrid[[*sepsis.PUBLIC, sepsis.LABEL]]
    )
    assert not np.allclose(train["Age"], hybrid["Age"])
    info = json.loads((out / "imputation_info.json").read_text())
    assert (
        "NOT TabPFN" in info["deviation_from_paper"]
        and "dropped from the training rows" in info["support_set"]
    )
    assert info["imputer_settings"]["blend_columns"] == ["Age", "HospAdmTime", "ICULOS"]
    # The authors' hybrid on the same rows, as a data folder; it is NOT scored (it exists for training
    # rows only, and a score on training rows is a private evaluation): the stale file is removed.
    ref = pd.read_csv(out / "reference_tabpfn" / "train_hybrid.csv")
    expected = frames["hybrid"].iloc[ids["train"]]["Age"].to_numpy()
    np.testing.assert_allclose(ref["Age"], expected)
    assert result["reference_dir"] == str(out / "reference_tabpfn") and "reference_quality" not in result
    assert not (out / "imputation_metrics_reference.csv").exists()
    assert not [p.name for p in out.rglob("*metrics*") if p.name != "imputation_metrics.csv"]
    ours = pd.read_csv(out / "imputation_metrics.csv").set_index(["rows", "column"])
    assert ours.loc[("val", "Gender"), "n"] == 60 and ours.loc[("test", "Gender"), "n"] == 60  # held out
    assert ours.loc[("test", "Age"), "r2"] > 0.3  # HR carries Age here
    # The reference folder holds the same support.csv: training there takes it, and the same rows.
    reference = sepsis_script.main(sepsis_args(out / "reference_tabpfn", "--mode", "sgd_hybrid"))
    assert np.isfinite(reference["test_aupr"]) and reference["num_train_rows"] == 300
    assert reference["support_set"] == str(out / "reference_tabpfn" / "support.csv")
    assert reference["imputer"].startswith("TabPFN, as released by the authors")


def test_imputations_never_read_training_sensitive_values_or_iculos_bin(tmp_path):
    """Privacy: scrambling the training rows' sensitive values and ICULOS_bin changes no imputation,
    and leaves the published quality (imputation_metrics.csv, imputation_info.json) byte-identical."""
    frames, data, out, args = _released(tmp_path)
    impute_sepsis.main(args)
    before = pd.read_csv(out / "train_hybrid.csv")[sepsis.SENSITIVE]
    published = ("imputation_metrics.csv", "imputation_info.json")
    published_before = {name: (out / name).read_bytes() for name in published}
    ids = split_indices(400, {"support": 100, "train": 300}, seed=5)["train"]
    original = frames["original"]
    rng = np.random.default_rng(9)
    original.loc[ids, sepsis.SENSITIVE] = (
        original.loc[ids, sepsis.SENSITIVE].sample(frac=1, random_state=1).to_numpy()
    )
    original["ICULOS_bin"] = rng.integers(0, 10, len(original))
    original.to_csv(data / "train_ori.csv", index=False)
    impute_sepsis.main(args)
    pd.testing.assert_frame_equal(pd.read_csv(out / "train_hybrid.csv")[sepsis.SENSITIVE], before)
    for name in published:
        assert (out / name).read_bytes() == published_before[name], name
    # one training row's Age alone (the example) moves nothing published either
    original.loc[ids[0], "Age"] += 40
    original.to_csv(data / "train_ori.csv", index=False)
    impute_sepsis.main(args)
    for name in published:
        assert (out / name).read_bytes() == published_before[name], name


def test_released_input_errors(tmp_path):
    frames, data, _, args = _released(tmp_path)
    frames["original"].drop(columns=["Unit2"]).to_csv(data / "train_ori.csv", index=False)
    with pytest.raises(ValueError, match=r"train_ori.csv: missing column\(s\) \['Unit2'\]"):
        impute_sepsis.main(args)
    args.support_rows = 300
    frames["original"].to_csv(data / "train_ori.csv", index=False)
    with pytest.raises(ValueError, match=r"--support_rows 300 must be in \(0, 200\)"):
        impute_sepsis.main(args)


def test_released_rows_through_tabpfn_real_api(tmp_path, tiny_tabpfn_checkpoints):
    paths = [str(tiny_tabpfn_checkpoints["classifier"]), str(tiny_tabpfn_checkpoints["regressor"])]
    _, _, out, args = _released(
        tmp_path, "--tabpfn_classifier_path", paths[0], "--tabpfn_regressor_path", paths[1], imputer="tabpfn"
    )
    result = impute_sepsis.main(args)
    hybrid = pd.read_csv(out / "train_hybrid.csv")
    assert len(hybrid) == 300 and hybrid[sepsis.SENSITIVE].notna().all().all()
    assert set(hybrid["Gender"].unique()) <= {0.0, 1.0}
    assert result["deviation_from_paper"] is None and "TabPFN" in result["imputer_settings"]["model"]
