"""One module per dataset, holding its facts: columns, label, files, public bounds, model, provenance.

Both scripts of a pair (``impute_<name>.py``, ``train_fusiondp_<name>.py``), the audits, benches and
tests import the dataset module; no script imports another script. A tabular module (bank, adult)
defines the names in :data:`TABULAR_FACTS`; README.md, "Adding a tabular dataset", shows the recipe.

The registry is this folder: every module in it is a dataset (:data:`DATASETS`), so adding
``fusiondp/datasets/<name>.py`` makes ``<name>`` known to the sweep (``--dataset <name>`` runs
``train_fusiondp_<name>.py``), the tables and the tests, with no list to edit anywhere else.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from types import ModuleType

from fusiondp.experiment.cli import add_training_args
from fusiondp.tabular.impute import add_imputer_args

DATASETS = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))
"""Every module in this folder, by name (``mimic`` also serves the medical-abstracts stand-in)."""

TABULAR_FACTS = (
    "NAME",
    "PUBLIC",
    "SENSITIVE",
    "CATEGORICAL",
    "LABEL",
    "IGNORED",
    "SPLITS",
    "BOUNDS",
    "TRAINING_DEFAULTS",
    "build_model",
    "add_data_args",
)
"""What an imputed tabular dataset's module defines: the recipe's checklist (tests check it holds).

``IGNORED`` lists the raw table's columns that are known and must never be features (row ids, leaky
copies of a sensitive column); the impute script drops them, and any other unexpected column is an
error that names it.
"""


def train_script_name(name: str) -> str:
    """The train script of dataset ``name``, relative to the repository root (the naming rule)."""
    dataset_module(name)  # an unknown name is an error listing the known ones
    return f"train_fusiondp_{name}.py"


def imputed_tabular_datasets() -> tuple[str, ...]:
    """The registered datasets whose module holds every fact of :data:`TABULAR_FACTS` (bank, adult, ...)."""
    return tuple(
        name for name in DATASETS if all(hasattr(dataset_module(name), fact) for fact in TABULAR_FACTS)
    )


def dataset_module(name: str) -> ModuleType:
    """``fusiondp.datasets.<name>``, with an error listing the known datasets for a wrong name."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}.")
    return importlib.import_module(f"{__name__}.{name}")


def training_parser(dataset: ModuleType, description: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``train_fusiondp_<name>.py``: the dataset's data flags, then the training flags with
    its reference defaults. The audit and diagnosis scripts train the same way, so they start from it too.

    ``TRAINING_DEFAULTS`` may also set the dataset's own data flags (e.g. ``one_hot=True``).
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dataset.add_data_args(parser)
    data_flags = {action.dest for action in parser._actions}
    defaults = dict(dataset.TRAINING_DEFAULTS)
    parser.set_defaults(**{k: defaults.pop(k) for k in list(defaults) if k in data_flags})
    add_training_args(parser, **defaults)
    return parser


def impute_parser(dataset: ModuleType, description: str | None = None) -> argparse.ArgumentParser:
    """The shared flags of ``impute_<name>.py`` (imputer, splits from ``SPLITS``, seed 66 as the
    reference splits use, ``--out_dir outputs/<name>``); the script adds the flags of its raw source."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_imputer_args(parser, splits=dataset.SPLITS, seed=66, out_dir=f"outputs/{dataset.NAME}")
    return parser
