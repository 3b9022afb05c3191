r"""Impute the sensitive columns of the PhysioNet 2019 sepsis rows from their public vitals and labs.

    python impute_sepsis.py --imputer hgb --out_dir outputs/sepsis_hgb     # re-impute the authors' release
    python impute_sepsis.py --imputer tabpfn --out_dir outputs/sepsis_tabpfn  # the paper's imputer (weights)
    python impute_sepsis.py --raw_dir physionet/training --imputer hgb --out_dir outputs/sepsis_raw_hgb
    python train_fusiondp_sepsis.py --data_dir outputs/sepsis_hgb --mode fusiondp

Sensitive: Age, Gender, Unit1, Unit2, HospAdmTime, ICULOS; public: the 30 vitals and labs; label
SepsisLabel. ``ICULOS_bin`` (a binned copy of ICULOS in the release) is dropped everywhere: never an
imputer input, never written. Age, HospAdmTime and ICULOS are imputed by a blend of a regressor and a
classifier over --n_bins quantile bins: w * regressor + (1 - w) * expected bin centre, w =
--blend_weight (fusiondp.tabular.impute.BinBlendRegressor); Gender, Unit1, Unit2 by a classifier.

Released input (default, --released_dir, default $FUSIONDP_DATA/sepsis): the authors' train_ori.csv,
val.csv, test.csv. No public support set ships with it, so --support_rows (512) rows of train_ori.csv,
drawn with --seed, become the support set (their sensitive values are treated as public, e.g. patients
who consented) and are DROPPED from the training rows written; val and test are copied. Where the
release's train_hybrid.csv exists, its rows for the same training rows go to ``reference_tabpfn/`` (with
the same train_ori/val/test files, the same support.csv, and an imputation_info.json naming the
authors' imputer), so that models trained on the authors' TabPFN hybrid and on ours are trained on
identical rows: train_fusiondp_sepsis.py takes a folder's support.csv and never draws a second support
set from a folder with an imputation_info.json. The authors' imputer is NOT scored: their release has hybrid values
for training rows only, and a score against training rows' original values is a function of private
values that must not be published (it used to be written to imputation_metrics_reference.csv).

Raw input (--raw_dir): a folder (searched recursively) of PhysioNet per-patient .psv files, as
scripts/download_physionet_sepsis.sh fetches them. One row per patient:
  - hours used: those before the first SepsisLabel == 1 hour (PhysioNet marks the hours from 6 h before
    onset), the whole stay for negatives; the first hour when a stay starts labelled;
  - vitals/labs: mean over the hours used, NaN ignored (NaN when never measured);
  - Age, Gender, Unit1, Unit2, HospAdmTime: the first hour; ICULOS: the last hour used (ICU hours up to
    onset or discharge); SepsisLabel: 1 if any hour is labelled 1;
  - every positive kept, negatives subsampled (--seed) to --positive_rate (0.15, as in the release);
  - splits stratified by label: --support_rows public support rows, then val 8% and test 19% of the rest,
    train the remainder (the release's proportions). The support rows are disjoint from training rows.

Outputs in --out_dir: train_ori.csv, train_hybrid.csv, val.csv, test.csv (what
train_fusiondp_sepsis.py reads), support.csv, imputation_metrics.csv (quality on the held-out val and
test rows, column ``rows``; never on training rows), imputation_info.json; from the release,
reference_tabpfn/ (train_ori, train_hybrid, val, test, support.csv and imputation_info.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from fusiondp.datasets.sepsis import (
    CLASS_IMPUTED,
    LABEL,
    LEAKY,
    PUBLIC,
    RELEASE_IMPUTER,
    SENSITIVE,
    SUPPORT_FILE,
    SUPPORT_ROWS,
    SUPPORT_SEED,
    support_split,
)
from fusiondp.datasets.sepsis import FILES as RELEASE_FILES
from fusiondp.experiment.cli import run_main
from fusiondp.experiment.config import ImputeConfig
from fusiondp.tabular.data import (
    IMPUTATION_INFO,
    check_aligned,
    check_binary_label,
    check_columns,
    check_disjoint,
    data_root,
    read_csv,
    write_csv,
)
from fusiondp.tabular.impute import add_imputer_args, check_imputer_ready, impute_splits

BLENDED = ["Age", "HospAdmTime", "ICULOS"]
STATIC = ["Age", "Gender", "Unit1", "Unit2", "HospAdmTime"]
FILES = {"support": SUPPORT_FILE, **RELEASE_FILES}
VAL_FRAC, TEST_FRAC = 0.08, 0.19
STALE_REFERENCE_METRICS = "imputation_metrics_reference.csv"
"""Written by earlier versions (the authors' hybrid scored on training rows); removed when found."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--raw_dir", type=Path, default=None, help="folder of PhysioNet 2019 .psv files")
    source.add_argument(
        "--released_dir",
        type=Path,
        default=None,
        help="folder with the authors' train_ori.csv, val.csv, test.csv (default: $FUSIONDP_DATA/sepsis)",
    )
    parser.add_argument(
        "--support_rows", type=int, default=SUPPORT_ROWS, help="rows of the public support set"
    )
    parser.add_argument("--positive_rate", type=float, default=0.15, help="raw input: share of positives")
    parser.add_argument("--blend_weight", type=float, default=0.5, help="weight w of the regressor")
    parser.add_argument("--n_bins", type=int, default=10, help="quantile bins of the blend's classifier")
    add_imputer_args(parser, splits={}, seed=SUPPORT_SEED, out_dir="outputs/sepsis")
    return parser


def aggregate_patient(hours: pd.DataFrame) -> dict:
    """One row per patient from its hourly rows (the choices are in the module docstring)."""
    labelled = np.flatnonzero(hours[LABEL].to_numpy() == 1)
    used = hours.iloc[: max(labelled[0], 1)] if len(labelled) else hours
    row = used[PUBLIC].apply(pd.to_numeric, errors="coerce").mean().to_dict()
    row.update(hours[STATIC].iloc[0].to_dict())
    row["ICULOS"] = used["ICULOS"].iloc[-1]
    row[LABEL] = float(len(labelled) > 0)
    return row


def load_raw(raw_dir: Path, *, progress: bool = True) -> pd.DataFrame:
    """One row per .psv file under ``raw_dir``; a file with missing columns is an error naming it."""
    paths = sorted(raw_dir.rglob("*.psv")) if raw_dir.is_dir() else []
    if not paths:
        raise FileNotFoundError(
            f"no .psv files under {raw_dir}: download PhysioNet 2019 (training_setA/B) with "
            "scripts/download_physionet_sepsis.sh and pass the folder as --raw_dir."
        )
    rows = []
    for path in tqdm(paths, desc="patients", mininterval=5, disable=not progress):
        hours = pd.read_csv(path, sep="|")
        missing = [c for c in [*PUBLIC, *SENSITIVE, LABEL] if c not in hours.columns]
        if missing or hours.empty:
            raise ValueError(
                f"{path}: not a PhysioNet 2019 patient file (pipe-separated, header with the 40 challenge "
                f"columns, one row per hour); missing column(s) {missing or 'none, but no rows'}."
            )
        rows.append(aggregate_patient(hours))
    df = pd.DataFrame(rows)[[*PUBLIC, *SENSITIVE, LABEL]]
    check_binary_label(df, label=LABEL, path=raw_dir)
    return df


def raw_splits(df: pd.DataFrame, args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """Subsample negatives to ``positive_rate``, then stratified support/train/val/test splits."""
    rng = np.random.default_rng(args.seed)
    pos, neg = np.flatnonzero(df[LABEL] == 1), np.flatnonzero(df[LABEL] == 0)
    n_neg = min(len(neg), round(len(pos) * (1 - args.positive_rate) / args.positive_rate))
    keep = np.sort(np.concatenate([pos, rng.choice(neg, size=n_neg, replace=False)]))
    df = df.iloc[keep].reset_index(drop=True)
    ids, y = np.arange(len(df)), df[LABEL].to_numpy()
    if not 0 < args.support_rows < len(df) // 2:
        raise ValueError(f"--support_rows {args.support_rows} must be below half of the {len(df)} patients.")
    seed = args.seed
    support, rest = train_test_split(ids, train_size=args.support_rows, random_state=seed, stratify=y)
    rest, test = train_test_split(rest, test_size=TEST_FRAC, random_state=seed, stratify=y[rest])
    train, val = train_test_split(
        rest, test_size=VAL_FRAC / (1 - TEST_FRAC), random_state=seed, stratify=y[rest]
    )
    check_disjoint(support, train)
    parts = {"support": support, "train": train, "val": val, "test": test}
    return {name: df.iloc[np.sort(rows)].reset_index(drop=True) for name, rows in parts.items()}


def read_release(folder: Path, name: str, *, ignored: list[str]) -> pd.DataFrame:
    path = folder / name
    df = read_csv(path, what=f"sepsis release file {name}", hint="Pass --released_dir, or --raw_dir.")
    check_columns(df, path=path, required=[*PUBLIC, *SENSITIVE, LABEL], ignored=ignored)
    check_binary_label(df, label=LABEL, path=path)
    return df.drop(columns=[c for c in ignored if c in df.columns])


def released_splits(args: argparse.Namespace) -> tuple[dict[str, pd.DataFrame], pd.DataFrame | None]:
    """The release's rows: a seeded support set out of train_ori.csv, and the authors' hybrid rows."""
    folder = args.released_dir or data_root() / "sepsis"
    original = read_release(folder, "train_ori.csv", ignored=LEAKY)
    n_train = len(original) - args.support_rows
    if args.support_rows <= 0 or n_train <= args.support_rows:
        raise ValueError(f"--support_rows {args.support_rows} must be in (0, {len(original) // 2}).")
    ids = support_split(len(original), support_rows=args.support_rows, seed=args.seed)
    check_disjoint(ids["support"], ids["train"])
    frames = {name: original.iloc[rows].reset_index(drop=True) for name, rows in ids.items()}
    frames |= {s: read_release(folder, f"{s}.csv", ignored=LEAKY) for s in ("val", "test")}
    reference = None
    if (folder / "train_hybrid.csv").is_file():
        hybrid = read_release(folder, "train_hybrid.csv", ignored=[*LEAKY, "index"])
        check_aligned(original, hybrid, public_columns=PUBLIC, label=LABEL,
                      original_path=folder / "train_ori.csv", hybrid_path=folder / "train_hybrid.csv")  # fmt: skip
        reference = hybrid.iloc[ids["train"]][original.columns].reset_index(drop=True)
    return frames, reference


def write_reference(frames: dict, reference: pd.DataFrame, out_dir: Path, *, info: dict) -> Path:
    """The authors' hybrid on our training rows, as a data folder train_fusiondp_sepsis.py reads.

    It holds the same support.csv as ``out_dir`` and an imputation_info.json (the authors' imputer, and
    ``info``'s source, splits and support set), so that training takes the same support set and the same
    training rows there, and never draws a second support set out of rows already declared private.

    Privacy contract: copies rows only; it scores nothing. The authors' hybrid exists for training rows
    only, so its quality could only be measured against the training rows' original sensitive values:
    a private evaluation, which this script does not make (``scripts/imputation_quality.py`` can, on
    request, for private use only).
    """
    ref_dir = out_dir / "reference_tabpfn"
    for name, frame in {"support": frames["support"], "train": frames["train"], "train_imputed": reference,
                        "val": frames["val"], "test": frames["test"]}.items():  # fmt: skip
        write_csv(frame, ref_dir / FILES[name])
    ref_info = {
        "imputer": RELEASE_IMPUTER,
        "deviation_from_paper": None,
        "derived_by": "impute_sepsis.py --released_dir: the authors' train_hybrid.csv rows for the "
        "training rows of the folder above",
        **{k: info[k] for k in ("source", "splits", "support_set", "dropped_columns")},
    }
    (ref_dir / IMPUTATION_INFO).write_text(json.dumps(ref_info, indent=2) + "\n")
    return ref_dir


def main(args: argparse.Namespace) -> dict:
    config = ImputeConfig.from_args(args)
    check_imputer_ready(config)  # before any work: a missing model is a one-line error
    if args.raw_dir is not None:
        frames, reference = raw_splits(load_raw(args.raw_dir, progress=not args.no_progress), args), None
        source = f"raw PhysioNet 2019 .psv files in {args.raw_dir}"
        support_note = "a stratified random split of patients, disjoint from train (sensitive values public)"
    else:
        frames, reference = released_splits(args)
        source = f"the authors' release in {args.released_dir or data_root() / 'sepsis'}"
        support_note = (
            f"{args.support_rows} rows of train_ori.csv (seed {args.seed}), treated as public and dropped "
            "from the training rows: the release ships no support set (a deviation from the paper's setup)"
        )
    info = {
        "source": source,
        "splits": {name: len(frame) for name, frame in frames.items()},
        "support_set": support_note,
        "dropped_columns": LEAKY,
    }
    options = {"blend_columns": BLENDED, "blend_weight": args.blend_weight, "n_bins": args.n_bins}
    result = impute_splits(
        frames,
        config,
        dataset="sepsis",
        public=PUBLIC,
        sensitive=SENSITIVE,
        categorical=CLASS_IMPUTED,
        info=info,
        files=FILES,
        imputer_options=options,
    )
    stale = args.out_dir / STALE_REFERENCE_METRICS
    if stale.is_file():  # an earlier version's private evaluation: no published file may hold it
        stale.unlink()
        print(f"removed {stale}: quality on training rows is a private evaluation, not written any more.")
    if reference is not None:
        result["reference_dir"] = str(write_reference(frames, reference, args.out_dir, info=info))
    return result


if __name__ == "__main__":
    run_main(main, get_args_parser())
