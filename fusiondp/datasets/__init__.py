"""One module per dataset, holding its facts: columns, label, files, public bounds, model, provenance.

Both scripts of a pair (``impute_<name>.py``, ``train_fusiondp_<name>.py``), the audits, benches and
tests import the dataset module; no script imports another script. A tabular module (bank, adult)
defines the names in :data:`TABULAR_FACTS`; README.md, "Adding a tabular dataset", shows the recipe.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from fusiondp.cli import add_training_args

DATASETS = ("sepsis", "bank", "adult", "mimic")
"""The datasets with a module here (``mimic`` also serves the medical-abstracts stand-in)."""

TABULAR_FACTS = (
    "NAME",
    "PUBLIC",
    "SENSITIVE",
    "CATEGORICAL",
    "LABEL",
    "SPLITS",
    "BOUNDS",
    "TRAINING_DEFAULTS",
    "build_model",
    "add_data_args",
)
"""What an imputed tabular dataset's module defines: the recipe's checklist (tests check it holds)."""


def dataset_module(name: str) -> ModuleType:
    """``fusiondp.datasets.<name>``, with an error listing the known datasets for a wrong name."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}.")
    return importlib.import_module(f"{__name__}.{name}")


def training_parser(dataset: ModuleType, description: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``train_fusiondp_<name>.py``: the dataset's data flags, then the training flags with
    its reference defaults. The audit and diagnosis scripts train the same way, so they start from it too.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dataset.add_data_args(parser)
    add_training_args(parser, **dataset.TRAINING_DEFAULTS)
    return parser
