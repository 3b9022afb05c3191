"""Small sepsis-shaped data sets built by the tests (no download, a few hundred rows)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the train_*.py scripts live at the top level, not in the package

import train_fusiondp_sepsis as sepsis  # noqa: E402


def make_sepsis_frames(n_train: int = 240, n_eval: int = 80, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Rows with the release's columns; the label depends on public AND sensitive columns."""
    rng = np.random.default_rng(seed)

    def rows(n: int) -> pd.DataFrame:
        df = pd.DataFrame(rng.normal(size=(n, len(sepsis.PUBLIC))), columns=sepsis.PUBLIC)
        df.iloc[rng.random(size=df.shape) < 0.2] = np.nan  # unmeasured labs
        df["Age"] = rng.uniform(18, 90, n).round(1)
        df["Gender"] = rng.integers(0, 2, n).astype(float)
        unit1 = rng.integers(0, 2, n).astype(float)
        df["Unit1"], df["Unit2"] = unit1, 1.0 - unit1
        df.loc[rng.random(n) < 0.3, ["Unit1", "Unit2"]] = np.nan
        df["HospAdmTime"] = -rng.exponential(50, n).round(2)
        df["ICULOS"] = rng.integers(1, 100, n).astype(float)
        df["ICULOS_bin"] = (df["ICULOS"] // 10).astype(int)
        score = df["HR"].fillna(0) + (df["Age"] - 50) / 20 + rng.normal(scale=0.5, size=n)
        df["SepsisLabel"] = (score > 1.0).astype(float)
        return df

    original = rows(n_train)
    hybrid = original.copy()
    hybrid[sepsis.SENSITIVE] = rows(n_train)[sepsis.SENSITIVE].fillna(0.0).to_numpy()  # "imputations"
    hybrid.insert(0, "index", np.arange(n_train) + 1000)
    hybrid = hybrid[
        [
            "index",
            *sepsis.PUBLIC,
            "Age",
            "Gender",
            "HospAdmTime",
            "ICULOS",
            "ICULOS_bin",
            "SepsisLabel",
            "Unit1",
            "Unit2",
        ]
    ]  # the release's column order
    return {"original": original, "hybrid": hybrid, "val": rows(n_eval), "test": rows(n_eval)}


def write_sepsis_dir(folder: Path, frames: dict[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in sepsis.FILES.items():
        frames[split].to_csv(folder / name, index=False)
    return folder


@pytest.fixture
def sepsis_frames() -> dict[str, pd.DataFrame]:
    return make_sepsis_frames()


@pytest.fixture
def sepsis_dir(tmp_path, sepsis_frames) -> Path:
    return write_sepsis_dir(tmp_path / "sepsis", sepsis_frames)


def sepsis_args(data_dir: Path, *extra: str):
    """Parsed args of a quick run (1 epoch, batch 32) of the sepsis script."""
    return sepsis.get_args_parser().parse_args(
        [
            "--data_dir",
            str(data_dir),
            "--epochs",
            "1",
            "--batch_size",
            "32",
            "--public_batch_size",
            "64",
            "--no_progress",
            *extra,
        ]
    )
