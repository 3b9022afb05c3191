"""Quality of an imputed (hybrid) file against the original rows, per sensitive column.

    python scripts/imputation_quality.py ../shared/data/sepsis/train_ori.csv ../shared/data/sepsis/train_hybrid.csv \
        --numeric Age HospAdmTime ICULOS --categorical Gender Unit1 Unit2

Accuracy and macro-F1 for categorical columns, MSE and R² for numeric ones, over the rows whose true
value is known. The files must be row-aligned. An evaluation of the imputer only: it reads the original
sensitive values, so nothing it prints may feed back into training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fusiondp.data import read_csv
from fusiondp.impute import imputation_quality


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("original", type=Path)
    parser.add_argument("imputed", type=Path)
    parser.add_argument("--numeric", nargs="*", default=[])
    parser.add_argument("--categorical", nargs="*", default=[])
    return parser


def main(args: argparse.Namespace) -> str:
    original = read_csv(args.original, what="original file")
    imputed = read_csv(args.imputed, what="imputed file")
    columns = [*args.numeric, *args.categorical]
    if len(original) != len(imputed):
        raise SystemExit(
            f"{args.imputed} has {len(imputed)} rows, {args.original} has {len(original)}: not aligned."
        )
    for path, frame in ((args.original, original), (args.imputed, imputed)):
        missing = [c for c in columns if c not in frame]
        if missing:
            raise SystemExit(f"{path}: no column(s) {missing}")
    quality = imputation_quality(original[columns], imputed[columns], categorical=args.categorical)
    table = quality.round(4).to_string(index=False)
    print(table)
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
