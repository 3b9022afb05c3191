"""Impute the sensitive columns of UCI Bank Marketing from its public columns; write the splits.

    python impute_bank.py --imputer hgb --out_dir outputs/bank            # offline stand-in (labelled)
    python impute_bank.py --imputer tabpfn --out_dir outputs/bank         # the paper's imputer (needs weights)

Input: ``--data_csv`` (default ``$FUSIONDP_DATA/bank/bank-full.csv``; ``,`` or ``;`` separated, as UCI
ships it; ``unknown`` means missing), or ``--ucimlrepo`` to fetch UCI id 222 (needs internet; its
``day_of_week`` is this file's ``day``). Splits (seed 66): 512 support / 30,000 train / 5,000 val /
5,000 test rows, disjoint. Sensitive: age, job, marital, education, housing.

The imputer is fitted on the support set (rows whose sensitive values are public by assumption) and
predicts the training rows' sensitive columns from their public columns only. Sensitive categories
are capped to the 10 most frequent in the support set (TabPFN's class limit) in every split.
Writes ``bank_support.csv, bank_train.csv, bank_train_imputed.csv, bank_val.csv, bank_test.csv``,
``imputation_metrics.csv`` (quality on the held-out val and test rows, column ``rows``: the imputer
predicts them from their public columns and is scored against their true values; training rows are
never scored, so the file does not depend on their sensitive values) and ``imputation_info.json``
(what was run, which rows the quality was measured on, and whether it deviates from the paper).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fusiondp.datasets import bank
from fusiondp.datasets.bank import LABEL, PUBLIC, SENSITIVE
from fusiondp.experiment.cli import run_main
from fusiondp.experiment.config import ImputeConfig
from fusiondp.tabular.data import check_columns, data_root
from fusiondp.tabular.impute import add_imputer_args, check_imputer_ready, impute_dataset


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_csv",
        type=Path,
        default=None,
        help="bank-full.csv (default: $FUSIONDP_DATA/bank/bank-full.csv)",
    )
    parser.add_argument("--ucimlrepo", action="store_true", help="fetch UCI id 222 instead (needs internet)")
    add_imputer_args(parser, splits=bank.SPLITS, seed=66, out_dir="outputs/bank")
    return parser


def load_bank(data_csv: Path | None, *, ucimlrepo: bool = False) -> pd.DataFrame:
    """The bank table with missing values as NaN and y as 0/1, from the CSV or from ucimlrepo."""
    if ucimlrepo:
        from ucimlrepo import fetch_ucirepo  # only for users with internet

        bank = fetch_ucirepo(id=222)
        df, source = pd.concat([bank.data.features, bank.data.targets], axis=1), "ucimlrepo id 222"
    else:
        path = data_csv or data_root() / "bank" / "bank-full.csv"
        if not path.is_file():
            raise FileNotFoundError(
                f"bank data not found: {path} does not exist. Pass --data_csv, or --ucimlrepo."
            )
        with open(path, newline="") as fh:
            header = fh.readline()
        separator = ";" if header.count(";") > header.count(",") else ","
        df, source = pd.read_csv(path, sep=separator), path
        if len(df.columns) == 1:
            raise ValueError(
                f"{path}: one column only ({header.strip()[:80]!r}): expected a ',' or ';' separator."
            )
    df = df.rename(columns={"day_of_week": "day"}).replace("unknown", pd.NA)
    check_columns(df, path=source, required=[*PUBLIC, *SENSITIVE, LABEL])
    labels = set(df[LABEL].dropna().unique())
    if not labels <= {"yes", "no"}:
        raise ValueError(
            f"{source}: label column 'y' must hold 'yes'/'no', found {sorted(map(str, labels - {'yes', 'no'}))[:5]}."
        )
    df[LABEL] = (df[LABEL] == "yes").astype(float)
    return df


def main(args: argparse.Namespace) -> dict:
    config = ImputeConfig.from_args(args)
    check_imputer_ready(config)  # before reading data: a missing model is a one-line error
    df = load_bank(args.data_csv, ucimlrepo=args.ucimlrepo)
    source = (
        "ucimlrepo id 222" if args.ucimlrepo else str(args.data_csv or data_root() / "bank" / "bank-full.csv")
    )
    return impute_dataset(df, config, dataset=bank, source=source)


if __name__ == "__main__":
    run_main(main, get_args_parser())
