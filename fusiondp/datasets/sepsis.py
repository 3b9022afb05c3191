"""PhysioNet 2019 sepsis prediction, one row per patient, as the paper authors released it.

Files (``$FUSIONDP_DATA/sepsis`` by default): ``train_ori.csv``, ``train_hybrid.csv`` (the same rows,
sensitive columns imputed by the authors with TabPFN from the public columns), ``val.csv``,
``test.csv``; ``support.csv`` where ``impute_sepsis.py`` wrote the folder. ``ICULOS_bin`` is a binned
copy of the sensitive ICULOS that was not imputed: never a feature, never an imputer input.

The release ships no public support set, so both scripts draw the same one: :data:`SUPPORT_ROWS` rows
of train_ori.csv with seed :data:`SUPPORT_SEED` (:func:`support_split`), treated as public and dropped
from the training rows. Every folder impute_sepsis.py writes (its output and ``reference_tabpfn/``)
holds that draw as ``support.csv``, and its train_ori.csv no longer holds those rows: training never
draws a second support set from such a folder (:func:`resolve_support_rows`), and checks that
``support.csv`` shares no row with train_ori.csv (:func:`fusiondp.tabular.data.check_rows_disjoint`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from fusiondp.experiment.groups import bands, categories, indicators
from fusiondp.models import MLP
from fusiondp.tabular.data import (
    IMPUTATION_INFO,
    TabularData,
    TabularPreprocessor,
    check_aligned,
    check_binary_label,
    check_columns,
    check_rows_disjoint,
    imputer_provenance,
    prepare_tabular,
    read_csv,
    split_indices,
)

NAME = "sepsis"
SENSITIVE = ["Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS"]
PUBLIC = ["HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "BaseExcess", "HCO3", "FiO2", "pH", "PaCO2",
          "SaO2", "AST", "BUN", "Alkalinephos", "Calcium", "Chloride", "Creatinine", "Glucose", "Lactate",
          "Magnesium", "Phosphate", "Potassium", "Bilirubin_total", "Hct", "Hgb", "PTT", "WBC",
          "Platelets"]  # fmt: skip
"""The 30 vitals and labs, each a patient's mean over the hours used."""
LABEL = "SepsisLabel"
CATEGORICAL: list[str] = []
"""Model features: none categorical (Gender, Unit1, Unit2 are 0/1 codes, see :data:`BINARY`)."""
CLASS_IMPUTED = ["Gender", "Unit1", "Unit2"]
"""The sensitive columns impute_sepsis.py imputes with a classifier (the rest by a regressor blend)."""
BINARY = ["Gender", "Unit1", "Unit2"]
"""0/1 sensitive columns coded as numbers, each view on its own scale: their zero-out value is the
imputation carried onto the original view's scale (e.g. 0.94), not a real value, and a split mode's
record says so (:func:`fusiondp.tabular.runner.binary_zero_out_notes`; docs/privacy.md §5)."""
LEAKY = ["ICULOS_bin"]
IGNORED = [*LEAKY, "index"]  # never features: ICULOS_bin leaks ICULOS; index is a row id
BOUNDS = {  # public domain knowledge, for --scaling dp (values outside are clipped)
    "Age": (14.0, 100.0),  # PhysioNet records ages over 89 as 100
    "Gender": (0.0, 1.0),
    "Unit1": (0.0, 1.0),
    "Unit2": (0.0, 1.0),
    "HospAdmTime": (-1000.0, 24.0),  # hours from hospital to ICU admission; a long tail is clipped
    "ICULOS": (1.0, 336.0),  # hours in the ICU; the challenge records stop at two weeks
}
FILES = {"train": "train_ori.csv", "train_imputed": "train_hybrid.csv", "val": "val.csv", "test": "test.csv"}
"""The release's files, by split (the split names every layer uses: train, train_imputed, val, test)."""
SUPPORT_FILE = "support.csv"
TUNING_BATCHES = ["batch_size=128,epochs=13", "batch_size=512,epochs=13", "batch_size=1024,epochs=26"]
"""Expected batch sizes, each with its epochs, that scripts/tune.py searches (the reference first)."""
SUPPORT_ROWS = 512
SUPPORT_SEED = 66
RELEASE_IMPUTER = (
    "TabPFN, as released by the authors in train_hybrid.csv (support set not shipped: "
    "that the imputer saw only public data is their claim, not checked here)"
)
DOWNLOAD_HINT = (
    "Point --data_dir (or $FUSIONDP_DATA) at the folder with the authors' preprocessed release, or "
    "build it from the raw PhysioNet 2019 files (https://physionet.org/content/challenge-2019/1.0.0/)."
)
TRAINING_DEFAULTS = dict(
    epsilon=2.0,
    epochs=13,
    max_grad_norm=1.8,
    alpha=3.0,
    beta=0.5,
    lr=0.07,
    batch_size=128,
    delta=1e-5,
)
"""The paper authors' reference command (their README), as train_fusiondp_sepsis.py's defaults."""
AGE_BANDS = (40, 60, 80)
"""Public age bands for per-group metrics: <40, 40-59, 60-79, 80+ (years)."""
GROUPS = (
    categories("Gender", {0: "female", 1: "male"}),  # PhysioNet 2019: Female (0), Male (1)
    bands("Age", AGE_BANDS),
    indicators({"Unit1": "MICU", "Unit2": "SICU"}, family="Unit"),  # both NaN: unit not recorded
)
"""Demographic groups of the per-group test metrics (fusiondp/experiment/groups.py), from test rows' original values."""
HIDDEN = (64, 128, 64)
DROPOUT = 0.15


def build_model(in_features: int) -> MLP:
    """The authors' sepsis MLP: d → 64 → 128 → 64 → 1, dropout 0.15."""
    return MLP(in_features, hidden=HIDDEN, dropout=DROPOUT)


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The data flags of train_fusiondp_sepsis.py (and of the audit, which trains the same way)."""
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=None,
        help="folder with train_ori/train_hybrid/val/test.csv (default: $FUSIONDP_DATA/sepsis)",
    )
    parser.add_argument(
        "--max_train_rows",
        type=int,
        default=None,
        help="use only the first N training rows (quick checks; not for results)",
    )
    parser.add_argument(
        "--support_rows",
        type=int,
        default=None,
        help=f"rows of train_ori.csv treated as the public support set and dropped from training, when "
        f"--data_dir has no support.csv (0: none). Default {SUPPORT_ROWS} for the authors' release; a folder "
        f"impute_sepsis.py wrote ({IMPUTATION_INFO}) has already dropped its support set, and without its "
        "support.csv it is refused unless this flag is given",
    )
    parser.add_argument(
        "--support_seed",
        type=int,
        default=SUPPORT_SEED,
        help="seed of that split; 66 takes the rows impute_sepsis.py --released_dir takes (default: %(default)s)",
    )
    return parser


def support_split(num_rows: int, *, support_rows: int, seed: int) -> dict[str, np.ndarray]:
    """Row ids of train_ori.csv: ``support`` (public by assumption) and the remaining ``train`` rows.

    The one definition both scripts use, so that impute_sepsis.py's support set is the one training drops.
    """
    return split_indices(num_rows, {"support": support_rows, "train": num_rows - support_rows}, seed=seed)


def load_frames(data_dir: Path, *, max_train_rows: int | None = None) -> dict[str, pd.DataFrame]:
    """train / train_imputed / val / test of a release folder, checked (columns, labels, alignment)."""
    frames = {}
    for split, name in FILES.items():
        path = data_dir / name
        df = read_csv(path, what=f"sepsis {split} file", hint=DOWNLOAD_HINT)
        check_columns(df, path=path, required=[*PUBLIC, *SENSITIVE, LABEL], ignored=IGNORED)
        check_binary_label(df, label=LABEL, path=path)
        frames[split] = df
    if max_train_rows:
        frames["train"] = frames["train"].iloc[:max_train_rows]
        frames["train_imputed"] = frames["train_imputed"].iloc[:max_train_rows]
    check_aligned(
        frames["train"],
        frames["train_imputed"],
        public_columns=PUBLIC,
        label=LABEL,
        original_path=data_dir / FILES["train"],
        hybrid_path=data_dir / FILES["train_imputed"],
    )
    return frames


def resolve_support_rows(data_dir: Path, support_rows: int | None) -> int:
    """``--support_rows`` as used: the value given, else :data:`SUPPORT_ROWS`.

    A folder this project derived (it holds ``imputation_info.json``) has already dropped its support
    set from train_ori.csv and keeps it as ``support.csv``. Without that file, a default draw would take
    :data:`SUPPORT_ROWS` more of its private training rows and declare them public, and train on other
    rows than the folder's own runs: refused unless ``--support_rows`` is given.
    """
    if support_rows is not None:
        return support_rows
    if not (data_dir / SUPPORT_FILE).is_file() and (data_dir / IMPUTATION_INFO).is_file():
        raise ValueError(
            f"{data_dir} was written by impute_sepsis.py ({IMPUTATION_INFO}) but has no {SUPPORT_FILE}: its "
            f"{FILES['train']} already excludes the support set, and drawing another {SUPPORT_ROWS} rows "
            f"from it would declare {SUPPORT_ROWS} private training rows public. Restore {SUPPORT_FILE} "
            "(rerun impute_sepsis.py), or pass --support_rows N explicitly (0: no support set, e.g. with "
            "--scaling dp)."
        )
    return SUPPORT_ROWS


def training_frames(
    frames: dict[str, pd.DataFrame], data_dir: Path, *, support_rows: int | None, support_seed: int
) -> tuple[dict[str, pd.DataFrame | None], str]:
    """train / train_imputed / support / val / test, and where the support set came from.

    ``support_rows`` None: see :func:`resolve_support_rows`. A ``support.csv`` in ``data_dir`` is the
    support set, checked to share no row with the training rows.
    """
    support_path = data_dir / SUPPORT_FILE
    out = {"val": frames["val"], "test": frames["test"]}
    if support_path.is_file():
        support = read_csv(support_path, what="sepsis support file")
        check_columns(support, path=support_path, required=[*PUBLIC, *SENSITIVE, LABEL], ignored=IGNORED)
        check_rows_disjoint(
            support,
            frames["train"],
            columns=[*PUBLIC, *SENSITIVE, LABEL],
            support_path=support_path,
            train_path=data_dir / FILES["train"],
        )
        return out | {
            "train": frames["train"],
            "train_imputed": frames["train_imputed"],
            "support": support,
        }, str(support_path)
    n = len(frames["train"])
    support_rows = resolve_support_rows(data_dir, support_rows)
    if support_rows == 0:
        return out | {"train": frames["train"], "train_imputed": frames["train_imputed"], "support": None}, (
            "none (--support_rows 0)"
        )
    if not 0 < support_rows < n // 2:
        raise ValueError(f"--support_rows must lie in [0, {n // 2}), got {support_rows}.")
    ids = support_split(n, support_rows=support_rows, seed=support_seed)
    rows = {name: frames["train"].iloc[i].reset_index(drop=True) for name, i in ids.items()}
    hybrid = frames["train_imputed"].iloc[ids["train"]].reset_index(drop=True)
    where = (
        f"{support_rows} rows of {FILES['train']} (seed {support_seed}), dropped from training; their "
        "sensitive values are treated as public and are not covered by the guarantee"
    )
    return out | {"train": rows["train"], "train_imputed": hybrid, "support": rows["support"]}, where


def provenance(data_dir: Path) -> dict:
    """Who made train_hybrid.csv: impute_sepsis.py's imputation_info.json, else the authors' release."""
    return imputer_provenance(data_dir, when_missing=RELEASE_IMPUTER)


def prepare(frames: dict[str, pd.DataFrame], **kwargs) -> tuple[TabularData, TabularPreprocessor]:
    """:func:`fusiondp.tabular.data.prepare_tabular` on sepsis frames (train, train_imputed, val, test).

    ``kwargs`` go through unchanged (``original_stats`` is required there: where the original
    view's scale comes from is the caller's decision, see fusiondp/mechanism/scaling.py).
    """
    return prepare_tabular(
        frames["train"],
        frames["train_imputed"],
        frames["val"],
        frames["test"],
        sensitive=SENSITIVE,
        public=PUBLIC,
        label=LABEL,
        **kwargs,
    )
