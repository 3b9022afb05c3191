r"""FusionDP on PhysioNet 2019 sepsis prediction (one row per patient; 6 sensitive columns).

Reference command (the paper authors' README; these are also the defaults):

    python train_fusiondp_sepsis.py --mode fusiondp --epsilon 2.0 --epochs 13 \
        --max_grad_norm 1.8 --alpha 3.0 --beta 0.5

Data: ``train_ori.csv``, ``train_hybrid.csv`` (the same rows, sensitive columns imputed by TabPFN
from the public columns), ``val.csv`` and ``test.csv`` in ``--data_dir``; the default is
``$FUSIONDP_DATA/sepsis`` (``FUSIONDP_DATA`` defaults to ``../shared/data`` beside the repository).
``ICULOS_bin`` is a binned copy of the sensitive ICULOS that was not imputed: it is never a feature.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusiondp.cli import add_training_args, run_main
from fusiondp.data import (
    check_aligned,
    check_binary_label,
    check_columns,
    data_root,
    prepare_tabular,
    read_csv,
)
from fusiondp.models import binary_bce, sepsis_mlp
from fusiondp.train import run_experiment

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
IGNORED = ["ICULOS_bin", "index"]  # never features: ICULOS_bin leaks ICULOS; index is a row id
FILES = {"original": "train_ori.csv", "hybrid": "train_hybrid.csv", "val": "val.csv", "test": "test.csv"}
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


def main(args: argparse.Namespace) -> dict:
    data_dir = args.data_dir or data_root() / "sepsis"
    frames = load_frames(data_dir, max_train_rows=args.max_train_rows)
    data, _ = prepare_tabular(
        frames["original"],
        frames["hybrid"],
        frames["val"],
        frames["test"],
        sensitive=SENSITIVE,
        public=PUBLIC,
        label=LABEL,
        noise_seed=args.seed,
    )
    record = run_experiment(
        args,
        dataset="sepsis",
        data=data,
        build_model=lambda: sepsis_mlp(data.num_features),
        loss_fn=binary_bce,
        extra_record={
            "data_dir": str(data_dir),
            "sensitive_columns": SENSITIVE,
            **imputer_provenance(data_dir),
        },
    )
    summary = {
        k: record[k]
        for k in (
            "mode",
            "epsilon",
            "epsilon_spent",
            "sigma",
            "steps",
            "test_auroc",
            "test_aupr",
            "test_f1",
            "train_seconds",
        )
    }
    print(json.dumps(summary))
    return record


if __name__ == "__main__":
    run_main(main, get_args_parser())
