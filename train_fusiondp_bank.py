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

from fusiondp.cli import add_imputed_data_args, add_training_args, run_main
from fusiondp.models import small_tabular_mlp
from fusiondp.train import run_imputed_tabular
from impute_bank import CATEGORICAL, LABEL, PUBLIC, SENSITIVE

BOUNDS = {"age": (17.0, 100.0)}  # public domain knowledge (bank clients' ages), for --scaling dp


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_imputed_data_args(parser, dataset="bank")
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


def main(args: argparse.Namespace) -> dict:
    return run_imputed_tabular(
        args,
        dataset="bank",
        public=PUBLIC,
        sensitive=SENSITIVE,
        categorical=CATEGORICAL,
        label=LABEL,
        bounds=BOUNDS,
        build_model=small_tabular_mlp,
    )


if __name__ == "__main__":
    run_main(main, get_args_parser())
