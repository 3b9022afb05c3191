r"""Quality of an imputed (hybrid) file against the original rows, per sensitive column.

    # training rows of the authors' release: a PRIVATE evaluation (see below), never to be published
    python scripts/imputation_quality.py ../shared/data/sepsis/train_ori.csv ../shared/data/sepsis/train_hybrid.csv \
        --numeric Age HospAdmTime ICULOS --categorical Gender Unit1 Unit2

Accuracy and macro-F1 for categorical columns, MSE and R² for numeric ones, over the rows whose true
value is known. The files must be row-aligned. An evaluation of the imputer only: it reads the original
sensitive values, so nothing it prints may feed back into training.

PRIVATE EVALUATION ON TRAINING ROWS. Run on training rows (e.g. train_ori.csv vs train_hybrid.csv),
its numbers are a deterministic function of the training rows' sensitive values (changing one row's
value can move an MSE visibly): a private evaluation, for your eyes only, NEVER to be published, not in
docs, result records, tables or files next to the data. The imputation quality that may be reported
is measured on held-out rows (val/test) by impute_<dataset>.py, in its imputation_metrics.csv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusiondp.tabular.data import read_csv
from fusiondp.tabular.impute import imputation_quality

PRIVATE_WARNING = (
    "NOTE: if these are training rows, this is a PRIVATE evaluation (a function of their sensitive "
    "values): never publish it (docs, records, tables, files next to the data)."
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "original", type=Path, help="true values (held-out rows; training rows: private evaluation only)"
    )
    parser.add_argument("imputed", type=Path, help="imputations of the same rows, row-aligned")
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
    print(PRIVATE_WARNING, file=sys.stderr)
    print(table)
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
