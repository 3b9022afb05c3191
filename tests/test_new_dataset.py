"""New datasets: the registry (every module in fusiondp/datasets/ is one), each registered tabular
dataset's checklist and a tiny end-to-end run, and the README recipe "Adding a tabular dataset" followed
word for word on a synthetic CSV (impute → train → sweep → table).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, load_script

from fusiondp import datasets
from fusiondp.datasets import TABULAR_FACTS
from fusiondp.tabular.data import split_indices


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match="choose one of"):
        datasets.dataset_module("toy")


def test_an_unexpected_raw_column_is_named_with_where_to_declare_it(tmp_path):
    from fusiondp.experiment.config import ImputeConfig
    from fusiondp.tabular.impute import impute_dataset

    bank = datasets.dataset_module("bank")
    table = pd.DataFrame(columns=[*bank.PUBLIC, *bank.SENSITIVE, bank.LABEL, "customer_id"])
    config = ImputeConfig(imputer="hgb", seed=66, out_dir=tmp_path / "out", split_sizes=(1, 1, 1, 1))
    with pytest.raises(ValueError) as err:
        impute_dataset(table, config, dataset=bank, source="raw.csv")
    assert str(err.value) == (
        "raw.csv: unexpected column(s) ['customer_id']: neither public, sensitive nor the label. Remove "
        "them, or, if they are known and must never be features, list them in IGNORED of "
        "fusiondp/datasets/bank.py."
    )
    assert not (tmp_path / "out").exists()


def test_the_registry_is_the_datasets_folder():
    assert set(datasets.DATASETS) >= {"sepsis", "bank", "adult", "mimic"}
    assert set(datasets.imputed_tabular_datasets()) >= {"bank", "adult"}
    for name in datasets.DATASETS:  # every registered dataset has its train script, by the naming rule
        assert (REPO / datasets.train_script_name(name)).is_file(), name


@pytest.mark.parametrize("name", datasets.imputed_tabular_datasets())
def test_every_registered_tabular_dataset_holds_the_checklist_and_runs_end_to_end(tmp_path, name):
    """The checklist, then a tiny impute → train run of the dataset's own scripts on its default data."""
    module = datasets.dataset_module(name)
    assert [fact for fact in TABULAR_FACTS if not hasattr(module, fact)] == []
    assert set(module.SENSITIVE).isdisjoint(module.PUBLIC) and module.LABEL not in module.IGNORED
    assert set(module.BOUNDS) <= set(module.SENSITIVE) - set(module.CATEGORICAL)
    impute, train = load_script(f"impute_{name}"), load_script(f"train_fusiondp_{name}")
    out = tmp_path / name
    tiny = [
        "--imputer",
        "hgb",
        "--out_dir",
        str(out),
        "--split_sizes",
        "80",
        "240",
        "60",
        "60",
        "--no_progress",
    ]
    try:
        impute.main(impute.get_args_parser().parse_args(tiny))
    except FileNotFoundError as missing:  # the raw data is not on this machine: say which, do not pass
        pytest.skip(f"{name}: raw data not found here ({missing})")
    args = ["--data_dir", str(out), "--epochs", "1", "--batch_size", "32", "--no_progress"]
    record = train.main(train.get_args_parser().parse_args([*args, "--mode", "fusiondp"]))
    assert record["dataset"] == name and record["imputer"] == "hgb"
    assert np.isfinite(record["test_aupr"]) and record["epsilon_spent"] <= record["epsilon"] + 1e-6


# --------------------------------------------------------------------------- the README recipe, followed


def _recipe_files() -> dict[str, str]:
    """The three files of README.md's "Adding a tabular dataset", each a ```python block whose first
    line is ``# <path>``, exactly as a reader would copy them."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Adding a tabular dataset", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", section, flags=re.S)
    return dict(blocks)


def _mydata_csv(path, *, splits: dict[str, int], rows: int = 480, seed: int = 0) -> None:
    """A raw table as a user would have it: a row id, a yes/no label, a category that lands on exactly
    one support row (and on a few training rows): too rare for the hgb imputer's early stopping."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 90, rows).round()
    income = rng.normal(size=rows) + (age - 50) / 30
    sex = rng.choice(["f", "m"], rows).astype(object)
    ids = split_indices(rows, splits, seed=66)
    sex[[ids["support"][0], *ids["train"][:5]]] = "x"
    y = income + rng.normal(scale=0.5, size=rows) > 0
    frame = pd.DataFrame({"id": np.arange(rows), "income": income, "region": rng.choice(["n", "s"], rows),
                          "age": age, "sex": sex, "y": np.where(y, "yes", "no")})  # fmt: skip
    frame.to_csv(path, index=False)


def test_the_readme_recipe_adds_a_dataset_that_imputes_trains_sweeps_and_tabulates(tmp_path):
    files = _recipe_files()
    assert sorted(files) == ["fusiondp/datasets/mydata.py", "impute_mydata.py", "train_fusiondp_mydata.py"]
    train_lines = [
        line for line in files["train_fusiondp_mydata.py"].split('"""', 2)[2].splitlines() if line.strip()
    ]
    assert len(train_lines) <= 20, "the recipe's train script should stay a few lines"
    for path, text in files.items():  # what a reader copies passes the project's own lint
        copy = tmp_path / Path(path).name
        copy.write_text(text)
        lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "E,F,W,I", str(copy)],
                              capture_output=True, text=True)  # fmt: skip
        assert lint.returncode == 0, (path, lint.stdout)
    name = f"recipe{os.getpid()}"  # a throwaway name, removed afterwards
    written = [REPO / path.replace("mydata", name) for path in files]
    assert not any(p.exists() for p in written)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        for path, text in zip(written, files.values(), strict=True):
            path.write_text(text.replace("mydata", name))

        def run(*cmd: str) -> subprocess.CompletedProcess:
            done = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
            return done

        raw, out, results = tmp_path / "raw.csv", tmp_path / "out", tmp_path / "results"
        module = importlib.import_module(f"fusiondp.datasets.{name}")
        _mydata_csv(raw, splits=module.SPLITS)
        run(
            f"impute_{name}.py",
            "--data_csv",
            str(raw),
            "--imputer",
            "hgb",
            "--out_dir",
            str(out),
            "--no_progress",
        )
        info = json.loads((out / "imputation_info.json").read_text())
        assert info["dataset"] == name and "id" not in pd.read_csv(out / f"{name}_train.csv").columns
        assert info["ignored_columns"] == ["id"]
        assert info["imputer_settings"]["early_stopping_off"]["sex"]["rare_classes"] == {"x": 1}
        run(f"train_fusiondp_{name}.py", "--data_dir", str(out), "--epochs", "1", "--no_progress",
            "--results_json", str(tmp_path / "one.jsonl"))  # fmt: skip
        one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
        assert one[0]["args"]["one_hot"] is True  # TRAINING_DEFAULTS set the data flag
        swept = run("scripts/sweep.py", "--dataset", name, "--modes", "dpsgd", "fusiondp", "--epsilons", "1",
                    "--seeds", "1", "--results", str(results), "--", "--data_dir", str(out), "--epochs", "1")  # fmt: skip
        assert "| fusiondp | 1.0 |" in swept.stdout and "| dpsgd | 1.0 |" in swept.stdout, swept.stdout
        table = run("scripts/make_tables.py", str(results), "--group", "mode", "--metrics", "test_aupr")
        assert table.stdout.count("| 1 |") == 2, table.stdout
    finally:
        for path in written:
            path.unlink(missing_ok=True)
