"""Bad input gets a message that names the file, the column or the value."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, load_script, sepsis_args, write_sepsis_dir

from fusiondp.mechanism.modes import get_mode
from fusiondp.tabular.data import TabularPreprocessor

sepsis_script = load_script("train_fusiondp_sepsis")


def _run(folder, *extra):
    return sepsis_script.main(sepsis_args(folder, *extra))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train_ori.csv does not exist.*--data_dir"):
        _run(tmp_path)


def test_missing_column(tmp_path, sepsis_frames):
    sepsis_frames["val"] = sepsis_frames["val"].drop(columns=["Age"])
    folder = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    with pytest.raises(ValueError, match=r"val.csv: missing column\(s\) \['Age'\]"):
        _run(folder)


def test_extra_column(tmp_path, sepsis_frames):
    sepsis_frames["test"]["Weight"] = 1.0
    folder = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    with pytest.raises(ValueError, match=r"test.csv: unexpected column\(s\) \['Weight'\]"):
        _run(folder)


def test_hybrid_row_count_differs(tmp_path, sepsis_frames):
    sepsis_frames["hybrid"] = sepsis_frames["hybrid"].iloc[:-3]
    folder = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    with pytest.raises(ValueError, match=r"train_hybrid.csv has 237 rows but .*train_ori.csv has 240"):
        _run(folder)


def test_hybrid_rows_reordered(tmp_path, sepsis_frames):
    sepsis_frames["hybrid"] = sepsis_frames["hybrid"].iloc[::-1]
    folder = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    with pytest.raises(ValueError, match=r"not row-aligned .* public column 'HR' differs first at row 0"):
        _run(folder)


def test_label_not_binary(tmp_path, sepsis_frames):
    sepsis_frames["original"].loc[5, "SepsisLabel"] = 2.0
    folder = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    with pytest.raises(
        ValueError,
        match=r"train_ori.csv: label column 'SepsisLabel' must be binary 0/1, found value\(s\) \[2.0\]",
    ):
        _run(folder)


def test_label_missing(tmp_path, sepsis_frames):
    sepsis_frames["test"].loc[[3, 7], "SepsisLabel"] = np.nan
    folder = write_sepsis_dir(tmp_path / "d", sepsis_frames)
    with pytest.raises(
        ValueError, match=r"test.csv: label column 'SepsisLabel' is missing in row\(s\) \[3, 7\]"
    ):
        _run(folder)


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--epsilon", "0"], "--epsilon must be a finite number > 0, got 0.0"),
        (["--epsilon", "-2"], "got -2.0"),
        (["--delta", "1"], "--delta must lie strictly between 0 and 1, got 1.0"),
        (["--delta", "0"], "got 0.0"),
        (["--batch_size", "1000"], r"q = batch_size / N = 1000 / 240 = 4.167 must lie in \(0, 1\]"),
        (["--mode", "sgd_ori", "--batch_size", "1000"], r"1000 / 240"),
        (["--lr", "0"], "--lr must be > 0, got 0.0"),
        (["--c_h", "-1"], "--c_h must be > 0, got -1.0"),
    ],
)
def test_bad_flags(sepsis_dir, flags, match):
    with pytest.raises(ValueError, match=match):
        _run(sepsis_dir, *flags)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown --mode 'fusion_dp'; choose one of: sgd_ori"):
        get_mode("fusion_dp")


def test_cli_errors_are_one_line_not_a_traceback(sepsis_dir):
    for flags, expected in [
        (["--epsilon", "0"], "--epsilon must be"),
        (["--mode", "nope"], "invalid choice: 'nope'"),
    ]:
        proc = subprocess.run(
            [sys.executable, "train_fusiondp_sepsis.py", "--data_dir", str(sepsis_dir), *flags],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2
        assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_preprocessor_uses_fit_frame_statistics_only():
    fit = pd.DataFrame({"a": [1.0, 3.0, np.nan], "c": ["x", "y", "x"]})
    prep = TabularPreprocessor(numeric=["a"], categorical=["c"], one_hot=True).fit(fit)
    out = prep.transform(pd.DataFrame({"a": [np.nan, 5.0], "c": ["z", "y"]}))
    assert prep.feature_names_ == ["a", "c=x", "c=y"]
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0], [3.0, 0.0, 1.0]])  # NaN → fit mean; unseen → zeros
    assert prep.feature_indices(["c"]) == [1, 2]
