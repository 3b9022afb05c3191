"""UCI Bank Marketing (id 222): 45,211 clients, label ``y`` (subscribed a term deposit).

Source: ``bank-full.csv`` as UCI ships it (``;``-separated; ``unknown`` means missing), default
``$FUSIONDP_DATA/bank/bank-full.csv``. Sensitive: age, job, marital, education, housing.
"""

from __future__ import annotations

import argparse

from fusiondp.experiment.groups import bands, categories
from fusiondp.models import small_tabular_mlp
from fusiondp.tabular.data import add_imputed_data_args

NAME = "bank"
SENSITIVE = ["age", "job", "marital", "education", "housing"]
PUBLIC = ["default", "balance", "loan", "contact", "day", "month", "duration", "campaign", "pdays", "previous",
          "poutcome"]  # fmt: skip
CATEGORICAL = ["job", "marital", "education", "housing", "default", "loan", "contact", "month", "poutcome"]
LABEL = "y"
IGNORED: list[str] = []
"""Raw columns that are never features (none: every column is public, sensitive or the label)."""
SPLITS = {"support": 512, "train": 30_000, "val": 5_000, "test": 5_000}
"""impute_bank.py's disjoint splits (seed 66), in rows."""
BOUNDS = {"age": (17.0, 100.0)}  # public domain knowledge (bank clients' ages), for --scaling dp
AGE_BANDS = (40, 60, 80)
"""Public age bands for per-group metrics: <40, 40-59, 60-79, 80+ (years)."""
GROUPS = (bands("age", AGE_BANDS), categories("marital"))
"""Demographic groups of the per-group test metrics (fusiondp/experiment/groups.py), from test rows' original values."""
TRAINING_DEFAULTS = dict(
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
"""The paper authors' reference command (their README), as train_fusiondp_bank.py's defaults."""
TUNING_BATCHES = ["batch_size=128,epochs=10", "batch_size=512,epochs=10", "batch_size=1024,epochs=20"]
"""Expected batch sizes, each with its epochs, that scripts/tune.py searches (the reference first)."""
build_model = small_tabular_mlp  # d → 64 → 32 → 1, the authors' bank/adult MLP


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--data_dir`` (impute_bank.py's output, default outputs/bank) and ``--one_hot``."""
    return add_imputed_data_args(parser, dataset=NAME)
