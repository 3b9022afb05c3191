r"""FusionDP on UCI Adult (sensitive: sex, race, native-country, marital-status, age; label: income).

    python impute_adult.py --imputer hgb --out_dir outputs/adult
    python train_fusiondp_adult.py --one_hot --mode fusiondp --epsilon 1.0 --epochs 10 \
        --max_grad_norm 1.0 --alpha 1.0 --beta 1.0

Data: the files ``impute_adult.py`` writes to ``--data_dir`` (default ``outputs/adult``). The model is
the bank/adult MLP d → 64 → 32 → 1; defaults follow the bank reference command.
"""

from __future__ import annotations

import argparse

from fusiondp.cli import add_imputed_data_args, add_training_args, run_main
from fusiondp.models import small_tabular_mlp
from fusiondp.train import run_imputed_tabular
from impute_adult import CATEGORICAL, LABEL, PUBLIC, SENSITIVE

BOUNDS = {"age": (16.0, 100.0)}  # public domain knowledge (working-age census respondents), for --scaling dp


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_imputed_data_args(parser, dataset="adult")
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
        dataset="adult",
        public=PUBLIC,
        sensitive=SENSITIVE,
        categorical=CATEGORICAL,
        label=LABEL,
        bounds=BOUNDS,
        build_model=small_tabular_mlp,
    )


if __name__ == "__main__":
    run_main(main, get_args_parser())
