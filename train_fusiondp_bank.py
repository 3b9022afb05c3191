r"""FusionDP on UCI Bank Marketing (sensitive: age, job, marital, education, housing).

Reference command (the paper authors' README; its values are the defaults, but --one_hot must be given):

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

from fusiondp.datasets import bank, training_parser
from fusiondp.experiment.cli import run_main
from fusiondp.experiment.config import RunConfig
from fusiondp.tabular.runner import run_imputed_tabular


def get_args_parser() -> argparse.ArgumentParser:
    return training_parser(bank, __doc__)


def main(args: argparse.Namespace) -> dict:
    return run_imputed_tabular(RunConfig.from_args(args), bank)


if __name__ == "__main__":
    run_main(main, get_args_parser())
