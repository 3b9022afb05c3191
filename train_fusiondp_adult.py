r"""FusionDP on UCI Adult (sensitive: sex, race, native-country, marital-status, age; label: income).

    python impute_adult.py --imputer hgb --out_dir outputs/adult
    python train_fusiondp_adult.py --one_hot --mode fusiondp --epsilon 1.0 --epochs 10 \
        --max_grad_norm 1.0 --alpha 1.0 --beta 1.0

Data: the files ``impute_adult.py`` writes to ``--data_dir`` (default ``outputs/adult``). The model is
the bank/adult MLP d → 64 → 32 → 1; defaults follow the bank reference command.
"""

from __future__ import annotations

import argparse

from fusiondp.datasets import adult, training_parser
from fusiondp.experiment.cli import run_main
from fusiondp.experiment.config import RunConfig
from fusiondp.tabular.runner import run_imputed_tabular


def get_args_parser() -> argparse.ArgumentParser:
    return training_parser(adult, __doc__)


def main(args: argparse.Namespace) -> dict:
    return run_imputed_tabular(RunConfig.from_args(args), adult)


if __name__ == "__main__":
    run_main(main, get_args_parser())
