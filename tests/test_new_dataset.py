"""The README recipe "Adding a tabular dataset", followed once: a synthetic fourth dataset, end to end.

The schema module is built here (not added to the package); the two functions below are the two short
scripts the recipe asks for, written as the bank scripts are.
"""

from __future__ import annotations

import argparse
import types

import numpy as np
import pandas as pd
import pytest

from fusiondp import datasets
from fusiondp.cli import add_imputed_data_args, add_imputer_args
from fusiondp.config import ImputeConfig
from fusiondp.datasets import TABULAR_FACTS, training_parser
from fusiondp.impute import impute_dataset
from fusiondp.models import small_tabular_mlp
from fusiondp.tabular import run_imputed_tabular


def _toy_schema() -> types.ModuleType:
    """What fusiondp/datasets/toy.py would hold: the recipe's facts, nothing else."""
    toy = types.ModuleType("fusiondp.datasets.toy")
    toy.NAME = "toy"
    toy.PUBLIC = ["income", "region"]
    toy.SENSITIVE = ["age", "sex"]
    toy.CATEGORICAL = ["region", "sex"]
    toy.LABEL = "y"
    toy.SPLITS = {"support": 40, "train": 100, "val": 30, "test": 30}
    toy.BOUNDS = {"age": (18.0, 90.0)}
    toy.TRAINING_DEFAULTS = dict(epsilon=4.0, epochs=1, batch_size=16, public_batch_size=32, seed=66)
    toy.build_model = small_tabular_mlp
    toy.add_data_args = lambda parser: add_imputed_data_args(parser, dataset=toy.NAME)
    return toy


def _toy_table(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 90, rows).round()
    income = rng.normal(size=rows) + (age - 50) / 30
    return pd.DataFrame(
        {
            "income": income,
            "region": rng.choice(["north", "south", "east"], rows),
            "age": age,
            "sex": rng.choice(["f", "m"], rows),
            "y": (income + rng.normal(scale=0.5, size=rows) > 0).astype(float),
        }
    )


def impute_toy(toy: types.ModuleType, argv: list[str]) -> dict:
    """impute_toy.py: read the raw table, then the shared imputation (hgb here: no TabPFN weights)."""
    parser = argparse.ArgumentParser()
    add_imputer_args(parser, splits=toy.SPLITS, seed=66, out_dir=f"outputs/{toy.NAME}")
    args = parser.parse_args(argv)
    return impute_dataset(
        _toy_table(),
        ImputeConfig.from_args(args),
        dataset=toy.NAME,
        public=toy.PUBLIC,
        sensitive=toy.SENSITIVE,
        categorical=toy.CATEGORICAL,
        source="synthetic",
    )


def train_toy(toy: types.ModuleType, argv: list[str]) -> dict:
    """train_fusiondp_toy.py: the dataset's flags and defaults, then the shared tabular runner."""
    from fusiondp.config import RunConfig

    args = training_parser(toy).parse_args(argv)
    return run_imputed_tabular(
        RunConfig.from_args(args),
        dataset=toy.NAME,
        public=toy.PUBLIC,
        sensitive=toy.SENSITIVE,
        categorical=toy.CATEGORICAL,
        label=toy.LABEL,
        bounds=toy.BOUNDS,
        build_model=toy.build_model,
    )


@pytest.mark.parametrize("name", ["bank", "adult"])
def test_the_tabular_modules_define_what_the_recipe_lists(name):
    module = datasets.dataset_module(name)
    assert [fact for fact in TABULAR_FACTS if not hasattr(module, fact)] == []


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match="choose one of"):
        datasets.dataset_module("toy")


def test_a_fourth_tabular_dataset_needs_one_schema_and_two_short_scripts(tmp_path):
    toy = _toy_schema()
    assert [fact for fact in TABULAR_FACTS if not hasattr(toy, fact)] == []
    out = tmp_path / "toy"
    imputed = impute_toy(toy, ["--imputer", "hgb", "--out_dir", str(out), "--no_progress"])
    assert imputed["splits"] == toy.SPLITS and (out / "toy_train_imputed.csv").is_file()
    results = tmp_path / "runs.jsonl"
    record = train_toy(
        toy, ["--data_dir", str(out), "--one_hot", "--no_progress", "--results_json", str(results)]
    )
    assert record["dataset"] == "toy" and record["imputer"] == "hgb"
    for key in ("test_auroc", "test_aupr", "epsilon_spent"):
        assert np.isfinite(record[key]), key
    assert results.read_text().count("\n") == 1
