r"""FusionDP on PhysioNet 2019 sepsis prediction (one row per patient; 6 sensitive columns).

Reference command (the paper authors' README; these are also the defaults):

    python train_fusiondp_sepsis.py --mode fusiondp --epsilon 2.0 --epochs 13 \
        --max_grad_norm 1.8 --alpha 3.0 --beta 0.5

Data: ``train_ori.csv``, ``train_hybrid.csv`` (the same rows, sensitive columns imputed by TabPFN
from the public columns), ``val.csv`` and ``test.csv`` in ``--data_dir``; the default is
``$FUSIONDP_DATA/sepsis`` (``FUSIONDP_DATA`` defaults to ``../shared/data`` beside the repository).
``ICULOS_bin`` is a binned copy of the sensitive ICULOS that was not imputed: it is never a feature.

Scaling (``--scaling``): the release ships no public support set, so ``--support_rows`` (512) rows of
train_ori.csv, drawn with ``--support_seed`` (the same rows ``impute_sepsis.py --released_dir``
takes), are treated as public, dropped from training, and scale the original view; a data folder
with its own ``support.csv`` (``impute_sepsis.py`` output) uses that instead. ``--scaling dp
--support_rows 0`` trains on all 14,293 rows and estimates the scale under DP within ε.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from fusiondp.cli import add_training_args, run_main
from fusiondp.data import (
    check_aligned,
    check_binary_label,
    check_columns,
    data_root,
    read_csv,
)
from fusiondp.impute import split_indices
from fusiondp.models import sepsis_mlp
from fusiondp.train import run_tabular

SENSITIVE = ["Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS"]
PUBLIC = [
    "HR",
    "O2Sat",
    "Temp",
    "SBP",
    "MAP",
    "DBP",
    "Resp",
    "BaseExcess",
    "HCO3",
    "FiO2",
    "pH",
    "PaCO2",
    "SaO2",
    "AST",
    "BUN",
    "Alkalinephos",
    "Calcium",
    "Chloride",
    "Creatinine",
    "Glucose",
    "Lactate",
    "Magnesium",
    "Phosphate",
    "Potassium",
    "Bilirubin_total",
    "Hct",
    "Hgb",
    "PTT",
    "WBC",
    "Platelets",
]
LABEL = "SepsisLabel"
BOUNDS = {  # public domain knowledge, for --scaling dp (values outside are clipped)
    "Age": (14.0, 100.0),  # PhysioNet records ages over 89 as 100
    "Gender": (0.0, 1.0),
    "Unit1": (0.0, 1.0),
    "Unit2": (0.0, 1.0),
    "HospAdmTime": (-1000.0, 24.0),  # hours from hospital to ICU admission; a long tail is clipped
    "ICULOS": (1.0, 336.0),  # hours in the ICU; the challenge records stop at two weeks
}
IGNORED = ["ICULOS_bin", "index"]  # never features: ICULOS_bin leaks ICULOS; index is a row id
FILES = {"original": "train_ori.csv", "hybrid": "train_hybrid.csv", "val": "val.csv", "test": "test.csv"}
SUPPORT_FILE = "support.csv"
DOWNLOAD_HINT = (
    "Point --data_dir (or $FUSIONDP_DATA) at the folder with the authors' preprocessed release, or "
    "build it from the raw PhysioNet 2019 files (https://physionet.org/content/challenge-2019/1.0.0/)."
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        default=512,
        help="rows of train_ori.csv treated as the public support set and dropped from training, when "
        "--data_dir has no support.csv (0: none) (default: %(default)s)",
    )
    parser.add_argument(
        "--support_seed",
        type=int,
        default=66,
        help="seed of that split; 66 takes the rows impute_sepsis.py --released_dir takes (default: %(default)s)",
    )
    add_training_args(
        parser,
        epsilon=2.0,
        epochs=13,
        max_grad_norm=1.8,
        alpha=3.0,
        beta=0.5,
        lr=0.07,
        batch_size=128,
        delta=1e-5,
    )
    return parser


def load_frames(data_dir: Path, *, max_train_rows: int | None = None) -> dict:
    frames = {}
    for split, name in FILES.items():
        path = data_dir / name
        df = read_csv(path, what=f"sepsis {split} file", hint=DOWNLOAD_HINT)
        check_columns(df, path=path, required=[*PUBLIC, *SENSITIVE, LABEL], ignored=IGNORED)
        check_binary_label(df, label=LABEL, path=path)
        frames[split] = df
    if max_train_rows:
        frames["original"] = frames["original"].iloc[:max_train_rows]
        frames["hybrid"] = frames["hybrid"].iloc[:max_train_rows]
    check_aligned(
        frames["original"],
        frames["hybrid"],
        public_columns=PUBLIC,
        label=LABEL,
        original_path=data_dir / FILES["original"],
        hybrid_path=data_dir / FILES["hybrid"],
    )
    return frames


def imputer_provenance(data_dir: Path) -> dict:
    """Who made train_hybrid.csv: impute_sepsis.py's imputation_info.json, else the authors' release."""
    info_path = data_dir / "imputation_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        return {"imputer": info.get("imputer"), "deviation_from_paper": info.get("deviation_from_paper")}
    return {
        "imputer": "TabPFN, as released by the authors in train_hybrid.csv (support set not shipped: "
        "that the imputer saw only public data is their claim, not checked here)",
        "deviation_from_paper": None,
    }


def training_frames(
    frames: dict, data_dir: Path, *, support_rows: int, support_seed: int
) -> tuple[dict[str, pd.DataFrame], str]:
    """train / train_imputed / support / val / test, and where the support set came from."""
    support_path = data_dir / SUPPORT_FILE
    out = {"val": frames["val"], "test": frames["test"]}
    if support_path.is_file():
        support = read_csv(support_path, what="sepsis support file")
        check_columns(support, path=support_path, required=[*PUBLIC, *SENSITIVE, LABEL], ignored=IGNORED)
        return out | {
            "train": frames["original"],
            "train_imputed": frames["hybrid"],
            "support": support,
        }, str(support_path)
    n = len(frames["original"])
    if support_rows == 0:
        return out | {"train": frames["original"], "train_imputed": frames["hybrid"], "support": None}, (
            "none (--support_rows 0)"
        )
    if not 0 < support_rows < n // 2:
        raise ValueError(f"--support_rows must lie in [0, {n // 2}), got {support_rows}.")
    ids = split_indices(n, {"support": support_rows, "train": n - support_rows}, seed=support_seed)
    rows = {name: frames["original"].iloc[i].reset_index(drop=True) for name, i in ids.items()}
    hybrid = frames["hybrid"].iloc[ids["train"]].reset_index(drop=True)
    where = (
        f"{support_rows} rows of {FILES['original']} (seed {support_seed}), dropped from training; their "
        "sensitive values are treated as public and are not covered by the guarantee"
    )
    return out | {"train": rows["train"], "train_imputed": hybrid, "support": rows["support"]}, where


def main(args: argparse.Namespace) -> dict:
    data_dir = args.data_dir or data_root() / "sepsis"
    frames, support_where = training_frames(
        load_frames(data_dir, max_train_rows=args.max_train_rows),
        data_dir,
        support_rows=args.support_rows,
        support_seed=args.support_seed,
    )
    return run_tabular(
        args,
        dataset="sepsis",
        frames=frames,
        public=PUBLIC,
        sensitive=SENSITIVE,
        categorical=[],
        label=LABEL,
        bounds=BOUNDS,
        support_where=support_where,
        build_model=sepsis_mlp,
        extra_record={
            "data_dir": str(data_dir),
            "support_set": support_where,
            **imputer_provenance(data_dir),
        },
    )


if __name__ == "__main__":
    run_main(main, get_args_parser())
