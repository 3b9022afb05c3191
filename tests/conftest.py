"""Small sepsis-shaped data sets built by the tests (no download, a few hundred rows)."""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from fusiondp.datasets import sepsis

REPO = Path(__file__).resolve().parent.parent
# The one place that puts the repository root on the path: scripts are not in the package, and tests
# that run a script's main() load it through load_script (facts come from fusiondp.datasets).
sys.path.insert(0, str(REPO))


def load_script(name: str) -> ModuleType:
    """A script as a module, by its dotted path from the repository root ("train_fusiondp_sepsis",
    "scripts.privacy_report"), loaded once; for tests that run its ``main`` or its parser."""
    return importlib.import_module(name)


def make_sepsis_frames(n_train: int = 240, n_eval: int = 80, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Rows with the release's columns; the label depends on public AND sensitive columns."""
    rng = np.random.default_rng(seed)

    def rows(n: int) -> pd.DataFrame:
        df = pd.DataFrame(rng.normal(size=(n, len(sepsis.PUBLIC))), columns=sepsis.PUBLIC)
        df.iloc[rng.random(size=df.shape) < 0.2] = np.nan  # unmeasured labs
        df["Age"] = rng.uniform(18, 90, n).round(1)
        df["Gender"] = rng.integers(0, 2, n).astype(float)
        unit1 = rng.integers(0, 2, n).astype(float)
        df["Unit1"], df["Unit2"] = unit1, 1.0 - unit1
        df.loc[rng.random(n) < 0.3, ["Unit1", "Unit2"]] = np.nan
        df["HospAdmTime"] = -rng.exponential(50, n).round(2)
        df["ICULOS"] = rng.integers(1, 100, n).astype(float)
        df["ICULOS_bin"] = (df["ICULOS"] // 10).astype(int)
        score = df["HR"].fillna(0) + (df["Age"] - 50) / 20 + rng.normal(scale=0.5, size=n)
        df["SepsisLabel"] = (score > 1.0).astype(float)
        return df

    original = rows(n_train)
    hybrid = original.copy()
    hybrid[sepsis.SENSITIVE] = rows(n_train)[sepsis.SENSITIVE].fillna(0.0).to_numpy()  # "imputations"
    hybrid.insert(0, "index", np.arange(n_train) + 1000)
    hybrid = hybrid[
        [
            "index",
            *sepsis.PUBLIC,
            "Age",
            "Gender",
            "HospAdmTime",
            "ICULOS",
            "ICULOS_bin",
            "SepsisLabel",
            "Unit1",
            "Unit2",
        ]
    ]  # the release's column order
    frames = {"original": original, "hybrid": hybrid, "val": rows(n_eval), "test": rows(n_eval)}
    frames["support"] = rows(60)  # public rows with true sensitive values (the script's support.csv)
    return frames


def prepare_sepsis_views(frames: dict[str, pd.DataFrame], *, stats_from: str = "support", **options):
    """The tensors of sepsis-shaped frames (``original``, ``hybrid``, ``val``, ``test``): the original
    view scaled with the true values of ``frames[stats_from]`` (a public stand-in: the support set, or
    the val rows), ``options`` passed on to ``prepare_tabular``; returns what it returns."""
    from fusiondp.mechanism.scaling import column_statistics
    from fusiondp.tabular.data import prepare_tabular

    return prepare_tabular(
        frames["original"],
        frames["hybrid"],
        frames["val"],
        frames["test"],
        sensitive=sepsis.SENSITIVE,
        public=sepsis.PUBLIC,
        label=sepsis.LABEL,
        noise_seed=options.pop("noise_seed", 0),
        original_stats=column_statistics(frames[stats_from], sepsis.SENSITIVE),
        **options,
    )


def write_sepsis_dir(folder: Path, frames: dict[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    views = {"train": "original", "train_imputed": "hybrid"}  # the frames here name the views
    for split, name in sepsis.FILES.items():
        frames[views.get(split, split)].to_csv(folder / name, index=False)
    if frames.get("support") is not None:
        frames["support"].to_csv(folder / sepsis.SUPPORT_FILE, index=False)
    return folder


@pytest.fixture
def sepsis_frames() -> dict[str, pd.DataFrame]:
    return make_sepsis_frames()


@pytest.fixture
def sepsis_dir(tmp_path, sepsis_frames) -> Path:
    return write_sepsis_dir(tmp_path / "sepsis", sepsis_frames)


def quick_run_flags(data_dir: Path) -> list[str]:
    """The flags of a quick sepsis run (1 epoch, batch 32, public batch 64) on ``data_dir``."""
    return ["--data_dir", str(data_dir), "--epochs", "1", "--batch_size", "32", "--public_batch_size", "64"]


def sepsis_args(data_dir: Path, *extra: str):
    """Parsed args of a quick run (1 epoch, batch 32) of the sepsis script."""
    return (
        load_script("train_fusiondp_sepsis")
        .get_args_parser()
        .parse_args([*quick_run_flags(data_dir), "--no_progress", *extra])
    )


@pytest.fixture(scope="session")
def tiny_tabpfn_checkpoints(tmp_path_factory):
    """Randomly initialised TabPFN-v2 checkpoints built with tabpfn's own architecture code.

    For tests of the integration only: their predictions carry no knowledge, never use them for results.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("tabpfn")
    from tabpfn.architectures import tabpfn_v2
    from tabpfn.architectures.shared.bar_distribution import FullSupportBarDistribution

    folder = tmp_path_factory.mktemp("tabpfn")  # file names must not contain v2.5/v2.6/v3 (read as versions)
    paths = {}
    for task in ("classifier", "regressor"):
        torch.manual_seed(0)
        if task == "classifier":
            cfg = tabpfn_v2.TabPFNV2Config(emsize=32, nlayers=2, nhead=2, max_num_classes=10)
        else:  # a regressor head has num_buckets outputs: max_num_classes must be 0
            cfg = tabpfn_v2.TabPFNV2Config(emsize=32, nlayers=2, nhead=2, max_num_classes=0, num_buckets=100)
        model = tabpfn_v2.get_architecture(cfg)
        state = dict(model.state_dict())
        with torch.no_grad():  # zero-initialised output projections would make every prediction equal
            for tensor in state.values():
                if tensor.is_floating_point() and tensor.dim() == 2 and not tensor.any():
                    torch.nn.init.xavier_uniform_(tensor)
        if task == "regressor":
            borders = torch.distributions.Normal(0.0, 1.5).icdf(torch.linspace(0.0005, 0.9995, 101))
            state.update(
                {f"criterion.{k}": v for k, v in FullSupportBarDistribution(borders).state_dict().items()}
            )
        paths[task] = folder / f"tiny-random-{task}.ckpt"
        torch.save(
            {"state_dict": state, "config": asdict(cfg), "architecture_name": "tabpfn_v2"}, paths[task]
        )
    return paths


@pytest.fixture(scope="module")
def calibrate_once():
    """σ calibration is the slow part of a tiny run (seconds each); within a module, each setting once."""
    import fusiondp.experiment.plan

    real = fusiondp.experiment.plan.make_privacy_spec
    fusiondp.experiment.plan.make_privacy_spec = functools.cache(real)
    yield
    fusiondp.experiment.plan.make_privacy_spec = real
