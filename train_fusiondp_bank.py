"""FusionDP on UCI Bank Marketing (sensitive: age, job, marital, education, housing).

Reference command (the paper authors' README; these are also the defaults):

    python train_fusiondp_bank.py --one_hot --mode fusiondp --epsilon 1.0 --epochs 10 \
        --max_grad_norm 1.0 --alpha 1.0 --beta 1.0

Data: the files ``impute_bank.py`` writes to ``--data_dir`` (default ``outputs/bank``):
``bank_train.csv``, ``bank_train_imputed.csv`` (same rows, sensitive columns imputed from public
ones), ``bank_val.csv``, ``bank_test.csv``, and ``bank_support.csv`` (public; its rows join the
hybrid rows in fitting the one-hot vocabularies and scalers). ``imputation_info.json`` says which
imputer made the hybrid file; it goes into the result record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusiondp.cli import add_training_args, run_main
from fusiondp.data import check_aligned, check_binary_label, check_columns, prepare_tabular, read_csv
from fusiondp.models import binary_bce, small_tabular_mlp
from fusiondp.train import run_experiment
from impute_bank import CATEGORICAL, FILES, LABEL, PUBLIC, SENSITIVE

HINT = "Run impute_bank.py first (it writes these files), or point --data_dir at its --out_dir."


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_dir", type=Path, default=Path("outputs/bank"), help="impute_bank.py's --out_dir"
    )
    parser.add_argument(
        "--one_hot",
        action="store_true",
        help="one-hot categorical columns (the reference); otherwise scaled ordinal codes",
    )
    add_training_args(
        parser,
        epsilon=1.0,
        epochs=10,
        max_grad_norm=1.0,
        alpha=1.0,
        beta=1.0,
        lr=0.05,
        batch_size=128,
        delta=1e-5,
        seed=66,
    )
    return parser


def load_frames(data_dir: Path) -> dict:
    frames = {}
    for split in ("train", "train_imputed", "val", "test", "support"):
        path = data_dir / FILES[split]
        frames[split] = df = read_csv(path, what=f"bank {split} file", hint=HINT)
        check_columns(df, path=path, required=[*PUBLIC, *SENSITIVE, LABEL])
        check_binary_label(df, label=LABEL, path=path)
    check_aligned(
        frames["train"],
        frames["train_imputed"],
        public_columns=PUBLIC,
        label=LABEL,
        original_path=data_dir / FILES["train"],
        hybrid_path=data_dir / FILES["train_imputed"],
    )
    return frames


def main(args: argparse.Namespace) -> dict:
    frames = load_frames(args.data_dir)
    info_path = args.data_dir / "imputation_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"imputer": "unknown"}
    data, _ = prepare_tabular(
        frames["train"],
        frames["train_imputed"],
        frames["val"],
        frames["test"],
        sensitive=SENSITIVE,
        public=PUBLIC,
        label=LABEL,
        categorical=CATEGORICAL,
        one_hot=args.one_hot,
        noise_seed=args.seed,
        extra_public=frames["support"],
    )
    record = run_experiment(
        args,
        dataset="bank",
        data=data,
        build_model=small_tabular_mlp,
        loss_fn=binary_bce,
        extra_record={
            "data_dir": str(args.data_dir),
            "sensitive_columns": SENSITIVE,
            "imputer": info.get("imputer"),
            "deviation_from_paper": info.get("deviation_from_paper"),
        },
    )
    print(
        json.dumps(
            {
                k: record[k]
                for k in (
                    "mode",
                    "epsilon",
                    "epsilon_spent",
                    "sigma",
                    "test_auroc",
                    "test_aupr",
                    "test_f1",
                    "imputer",
                )
            }
        )
    )
    return record


if __name__ == "__main__":
    run_main(main, get_args_parser())
