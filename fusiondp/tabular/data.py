"""Tabular data: reading with clear errors, checks, and preprocessing fitted on public data only.

Privacy contract of :func:`prepare_tabular`: the statistics every view shares (public columns' NaN
fill values and scales, category vocabularies) are fitted on rows the caller declares public for the
mode's guarantee (``shared_fit``): the HYBRID training rows plus the support set for feature-level
DP, whose sensitive columns are foundation-model imputations computed from public columns; the
support set alone for sample-level DP, where every column of a training row is private. Each view's
numeric sensitive columns get their own scale (:mod:`fusiondp.mechanism.scaling` says why): the hybrid view
its own rows' statistics, the original view (training rows, val and test) the ``original_stats``
the caller obtained from public or DP sources. The original rows are only transformed; a category
the vocabulary lacks (or a missing value) becomes an all-zero one-hot block. Given public ``bounds``,
the original view's numeric sensitive values (training rows, val and test) are clipped to them before
they are standardised (:func:`original_clip_bounds`): an inf or 1e33 becomes a value in range, row by
row, whatever the other rows hold. Given ``sensitive_scale`` s (``--sensitive_scale``, public),
every view's sensitive feature columns (standardised numeric values, and the one-hot or ordinal
blocks of categorical ones) are multiplied by s after standardising.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from fusiondp.experiment.metrics import evaluate_binary
from fusiondp.mechanism.regularizer import estimate_c_h_from_private, estimate_c_h_public
from fusiondp.mechanism.scaling import Stats, check_bounds, column_statistics


def data_root() -> Path:
    """``$FUSIONDP_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("FUSIONDP_DATA")
    if env:
        return Path(env)
    return (
        Path(__file__).resolve().parents[3] / "shared" / "data"
    )  # fusiondp/tabular/data.py → ../shared/data


def read_csv(path: str | os.PathLike, *, what: str, hint: str = "") -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} does not exist. {hint}".strip())
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot be read as CSV ({err}).") from None


def check_columns(
    df: pd.DataFrame,
    *,
    path: str | os.PathLike,
    required: Sequence[str],
    ignored: Sequence[str] = (),
    declare_in: str = "the dataset module's IGNORED",
) -> None:
    """Every required column present and no unexpected column (``ignored`` ones are allowed).

    ``declare_in`` names where a known, never-a-feature column is declared (for the error).
    """
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(required)}.")
    extra = [c for c in df.columns if c not in set(required) | set(ignored)]
    if extra:
        raise ValueError(
            f"{path}: unexpected column(s) {extra}: neither public, sensitive nor the label. Remove them, "
            f"or, if they are known and must never be features, list them in {declare_in}."
        )


def check_binary_label(df: pd.DataFrame, *, label: str, path: str | os.PathLike) -> None:
    values = df[label]
    if values.isna().any():
        rows = np.flatnonzero(values.isna().to_numpy())[:5].tolist()
        raise ValueError(f"{path}: label column {label!r} is missing in row(s) {rows} (0-based).")
    bad = sorted({v.item() if hasattr(v, "item") else v for v in values.unique()} - {0, 1}, key=str)
    if bad:
        raise ValueError(f"{path}: label column {label!r} must be binary 0/1, found value(s) {bad[:5]}.")


def check_aligned(
    original: pd.DataFrame,
    hybrid: pd.DataFrame,
    *,
    public_columns: Sequence[str],
    label: str,
    original_path: str | os.PathLike,
    hybrid_path: str | os.PathLike,
) -> None:
    """Hybrid rows must be the original rows, in the same order, with only sensitive columns changed."""
    if len(original) != len(hybrid):
        raise ValueError(
            f"{hybrid_path} has {len(hybrid)} rows but {original_path} has {len(original)}: the hybrid "
            "file must hold exactly one imputed row per original row, in the same order."
        )
    for col in [*public_columns, label]:
        a = pd.to_numeric(original[col], errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(hybrid[col], errors="coerce").to_numpy(dtype=float)
        same = np.isclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True)
        if not same.all():
            row = int(np.flatnonzero(~same)[0])
            raise ValueError(
                f"{hybrid_path} is not row-aligned with {original_path}: public column {col!r} differs "
                f"first at row {row} ({a[row]!r} vs {b[row]!r}). Regenerate the hybrid file from these "
                "original rows without reordering them."
            )


def split_indices(num_rows: int, sizes: dict[str, int], *, seed: int) -> dict[str, np.ndarray]:
    """Disjoint random row indices per split (e.g. support/train/val/test), from one seeded permutation."""
    total = sum(sizes.values())
    if total > num_rows:
        raise ValueError(f"split sizes {sizes} need {total} rows but the table has {num_rows}.")
    order = np.random.default_rng(seed).permutation(num_rows)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = np.sort(order[start : start + size])
        start += size
    return out


def check_disjoint(support_ids: Sequence, train_ids: Sequence, *, what: str = "support set") -> None:
    """The support set must not contain training rows: their sensitive values would leak."""
    overlap = sorted(set(support_ids) & set(train_ids))
    if overlap:
        raise ValueError(
            f"the {what} overlaps the training rows ({len(overlap)} shared row id(s), e.g. {overlap[:5]}): "
            "an imputer fitted on it would see training rows' sensitive values. Use disjoint rows."
        )


def check_rows_disjoint(
    support: pd.DataFrame,
    train: pd.DataFrame,
    *,
    columns: Sequence[str],
    support_path: str | os.PathLike,
    train_path: str | os.PathLike,
) -> None:
    """No support row may equal a training row in every one of ``columns`` (features and label).

    For files without a row id (the sepsis release): a support file beside training rows is public,
    so a training row in it would be declared public and trained on as private at once. Values are
    compared as floats, NaN equal to NaN; meant for tables whose distinct rows never coincide in
    every column (the sepsis release has no duplicate rows).
    """

    def digests(frame: pd.DataFrame) -> np.ndarray:
        numbers = frame[list(columns)].apply(pd.to_numeric, errors="coerce").astype(float)
        return pd.util.hash_pandas_object(numbers, index=False).to_numpy()

    shared = np.isin(digests(support), digests(train))
    if shared.any():
        first = int(np.flatnonzero(shared)[0])
        raise ValueError(
            f"{support_path} shares {int(shared.sum())} of its {len(support)} row(s) with the training rows "
            f"of {train_path} (equal in every feature and the label; first: support row {first}). The "
            "support set is public, so its rows must not also be training rows: rebuild the folder "
            "(the impute_<dataset>.py scripts write disjoint files) or remove those rows from one of the files."
        )


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``frame`` as a CSV without the index, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def output_files(dataset: str) -> dict[str, str]:
    """The reference file names: ``<ds>_support.csv, <ds>_train.csv, <ds>_train_imputed.csv, ...``."""
    return {split: f"{dataset}_{split}.csv" for split in ("support", "train", "train_imputed", "val", "test")}


IMPUTATION_INFO = "imputation_info.json"
"""What every ``impute_<dataset>.py`` writes beside its splits: the imputer, its settings, deviations."""


def read_imputation_info(data_dir: str | os.PathLike) -> dict | None:
    """The ``imputation_info.json`` in ``data_dir``, or None when there is none (e.g. the authors' release).

    The one reader of that file, so that every consumer sees the same keys and the same missing case.
    """
    path = Path(data_dir) / IMPUTATION_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def imputer_provenance(data_dir: str | os.PathLike, *, when_missing: str = "unknown") -> dict:
    """The record fields naming who made the hybrid rows: ``imputer`` and ``deviation_from_paper``.

    ``when_missing`` is the ``imputer`` recorded when ``data_dir`` has no imputation_info.json.
    """
    info = read_imputation_info(data_dir)
    if info is None:
        return {"imputer": when_missing, "deviation_from_paper": None}
    return {"imputer": info.get("imputer"), "deviation_from_paper": info.get("deviation_from_paper")}


def load_imputed_splits(
    data_dir: Path, *, dataset: str, public: Sequence[str], sensitive: Sequence[str], label: str
) -> dict[str, pd.DataFrame]:
    """The CSVs an ``impute_<dataset>.py`` wrote, checked: columns, binary labels, hybrid alignment."""
    files = output_files(dataset)
    hint = f"Run impute_{dataset}.py first (it writes these files), or point --data_dir at its --out_dir."
    frames = {}
    for split, name in files.items():
        path = Path(data_dir) / name
        frames[split] = df = read_csv(path, what=f"{dataset} {split} file", hint=hint)
        check_columns(df, path=path, required=[*public, *sensitive, label])
        check_binary_label(df, label=label, path=path)
    check_aligned(
        frames["train"],
        frames["train_imputed"],
        public_columns=public,
        label=label,
        original_path=Path(data_dir) / files["train"],
        hybrid_path=Path(data_dir) / files["train_imputed"],
    )
    return frames


@dataclass
class TabularPreprocessor:
    """Mean-fill and standardise numeric columns; one-hot (or ordinal-code) categorical ones.

    Fit it on public data only (see the module docstring). Numeric columns in ``clip_`` are clipped
    to their (lo, hi) before the fill and the standardisation (missing values stay missing). Columns
    in ``scale_`` have their features multiplied by their factor after the standardisation (a
    categorical column's whole one-hot block, or its ordinal code), in float64 before the float32 cast.
    """

    numeric: list[str]
    categorical: list[str] = field(default_factory=list)
    one_hot: bool = True
    means_: dict[str, float] = field(default_factory=dict)
    stds_: dict[str, float] = field(default_factory=dict)
    vocab_: dict[str, list] = field(default_factory=dict)
    feature_names_: list[str] = field(default_factory=list)
    source_column_: list[str] = field(default_factory=list)
    clip_: dict[str, tuple[float, float]] = field(default_factory=dict)
    scale_: dict[str, float] = field(default_factory=dict)

    def fit(self, public_frame: pd.DataFrame) -> TabularPreprocessor:
        for col in self.numeric:
            values = pd.to_numeric(public_frame[col], errors="coerce")
            mean = values.mean()
            std = values.std(ddof=0)
            self.means_[col] = 0.0 if pd.isna(mean) else float(mean)
            self.stds_[col] = 1.0 if pd.isna(std) or std == 0 else float(std)
        for col in self.categorical:
            self.vocab_[col] = sorted(public_frame[col].dropna().astype(str).unique())
        self.feature_names_, self.source_column_ = [], []
        for col in self.numeric:
            self.feature_names_.append(col)
            self.source_column_.append(col)
        for col in self.categorical:
            names = [f"{col}={v}" for v in self.vocab_[col]] if self.one_hot else [col]
            self.feature_names_ += names
            self.source_column_ += [col] * len(names)
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        parts = []
        for col in self.numeric:
            values = pd.to_numeric(frame[col], errors="coerce")
            if col in self.clip_:
                values = values.clip(*self.clip_[col])  # inf too; NaN stays NaN (filled below)
            values = values.fillna(self.means_[col]).to_numpy(float)
            standardised = (values - self.means_[col]) / self.stds_[col]
            if col in self.scale_:
                standardised = standardised * self.scale_[col]
            parts.append(standardised[:, None])
        for col in self.categorical:
            vocab = self.vocab_[col]
            index = {v: i for i, v in enumerate(vocab)}
            codes = frame[col].astype(str).map(index).fillna(-1).to_numpy(int)  # unseen → -1
            if self.one_hot:
                block = (codes[:, None] == np.arange(len(vocab))[None, :]).astype(float)
            else:
                scale = max(len(vocab) - 1, 1)
                block = np.where(codes < 0, 0.5, codes / scale)[:, None]
            if col in self.scale_:
                block = block * self.scale_[col]
            parts.append(block)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def with_statistics(self, stats: dict[str, tuple[float, float]]) -> TabularPreprocessor:
        """A copy whose numeric columns in ``stats`` are filled and standardised with (mean, std) given."""
        unknown = sorted(set(stats) - set(self.numeric))
        if unknown:
            raise ValueError(f"statistics given for non-numeric or unknown column(s) {unknown}.")
        copy = dataclasses.replace(
            self,
            means_={**self.means_, **{c: m for c, (m, _) in stats.items()}},
            stds_={**self.stds_, **{c: s for c, (_, s) in stats.items()}},
        )
        return copy

    def with_clipping(self, bounds: Mapping[str, tuple[float, float]]) -> TabularPreprocessor:
        """A copy that clips each numeric column in ``bounds`` to its (lo, hi) before standardising."""
        unknown = sorted(set(bounds) - set(self.numeric))
        if unknown:
            raise ValueError(f"clipping bounds given for non-numeric or unknown column(s) {unknown}.")
        return dataclasses.replace(
            self, clip_={**self.clip_, **{c: (lo, hi) for c, (lo, hi) in bounds.items()}}
        )

    def with_scale(self, scales: Mapping[str, float]) -> TabularPreprocessor:
        """A copy that multiplies the features of each column in ``scales`` by its factor (after the
        standardisation; a categorical column's whole one-hot block, or its ordinal code)."""
        unknown = sorted(set(scales) - set(self.numeric) - set(self.categorical))
        if unknown:
            raise ValueError(f"scale given for unknown column(s) {unknown}.")
        return dataclasses.replace(self, scale_={**self.scale_, **{c: float(f) for c, f in scales.items()}})

    def feature_indices(self, columns: Sequence[str]) -> list[int]:
        wanted = set(columns)
        return [i for i, src in enumerate(self.source_column_) if src in wanted]


@dataclass
class TabularData:
    """Training views (row-aligned), labels and the evaluation splits, as tensors."""

    original: Tensor
    hybrid: Tensor
    noise: Tensor
    y: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    feature_names: list[str]
    sensitive_features: list[int]
    sensitive_scale: float = 1.0
    """The public factor every view's sensitive feature columns were multiplied by (``--sensitive_scale``)."""

    headline_metric: ClassVar[str] = "aupr"

    @property
    def num_rows(self) -> int:
        return self.original.shape[0]

    @property
    def num_features(self) -> int:
        return self.original.shape[1]

    def view(self, name: str) -> Tensor:
        views = {"original": self.original, "hybrid": self.hybrid, "noise": self.noise}
        if name not in views:
            raise ValueError(f"unknown view {name!r}; tabular data has {list(views)}.")
        return views[name]

    def batch(self, views: Sequence[str], rows: Tensor) -> list[Tensor]:
        """The given rows of each named view (row-aligned, equal shapes)."""
        return [self.view(name)[rows] for name in views]

    def evaluate(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Binary metrics on every val and test row (evaluation data, not training data)."""
        return {
            "val": evaluate_binary(model, self.x_val, self.y_val),
            "test": evaluate_binary(model, self.x_test, self.y_test),
        }

    def public_c_h(self, model: nn.Module, *, generator: torch.Generator) -> float:
        """C_h from hybrid rows only (see :func:`fusiondp.mechanism.regularizer.estimate_c_h_public`)."""
        return estimate_c_h_public(
            model, self.hybrid, sensitive_columns=self.sensitive_features, generator=generator
        )

    def private_c_h(self, model: nn.Module) -> float:
        """The reference's C_h from ORIGINAL rows: NOT PRIVATE (``--c_h_from_private`` only)."""
        return estimate_c_h_from_private(model, self.original, self.hybrid)

    def to(self, device: torch.device) -> TabularData:
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return TabularData(**moved)


def zero_out_values(hybrid: pd.DataFrame, *, columns: Sequence[str], original_stats: Stats) -> pd.DataFrame:
    """The zero-out neighbour's sensitive values: each row's imputation carried onto the original scale.

    With one scale per view, a row's original view equals its hybrid view (to round-off, which the
    step treats as equal) when its numeric sensitive values are μ_o + σ_o · (x̂ − μ_h) / σ_h: the
    imputation x̂ standardised with the hybrid rows' statistics (μ_h, σ_h) and de-standardised with
    the original view's (μ_o, σ_o). A public function of public values; categorical columns keep x̂.
    """
    hybrid_stats = column_statistics(hybrid, columns)
    out = hybrid[list(columns)].copy()
    for col in columns:
        (mu_o, sd_o), (mu_h, sd_h) = original_stats[col], hybrid_stats[col]
        values = pd.to_numeric(hybrid[col], errors="coerce")
        out[col] = mu_o + sd_o * (values - mu_h) / sd_h
    return out


def original_clip_bounds(
    bounds: Mapping[str, tuple[float, float]], *, zero_out_values_of: Mapping[str, np.ndarray] | None = None
) -> dict[str, tuple[float, float]]:
    """The range each numeric sensitive column of the ORIGINAL view is clipped to before standardising.

    ``bounds``: the dataset's public ranges (its module's ``BOUNDS``), one per column clipped. An
    original value outside them (an inf, a 1e33 typo, a tail) moves to the nearer end: the row alone
    decides where its value goes, so this is part of the per-row input, not a statistic. Without it
    an inf reached the model (the step now also drops a non-finite gradient; privacy review item 1).

    ``zero_out_values_of``: for the split modes, every training row's zero-out value per column (the
    value at which its original view equals its public view: :func:`zero_out_values` for the hybrid
    view, μ_o + σ_o·z for the noise view). The range is widened to hold all of them, so that clipping
    never moves a zero-out neighbour off its public view (per-view scales put many of them outside
    ``BOUNDS``: on the sepsis release with the support scale, a quarter to a third of the rows'
    Gender, Unit1, Unit2 and HospAdmTime values). They are functions of public rows and of the
    public (or DP) original view's statistics only, so the widened range is public too.
    """
    out: dict[str, tuple[float, float]] = {}
    for col, (lo, hi) in bounds.items():
        lo, hi = float(lo), float(hi)
        if zero_out_values_of is not None and col in zero_out_values_of:
            values = np.asarray(zero_out_values_of[col], dtype=float)
            values = values[~np.isnan(values)]
            if len(values):  # a missing zero-out value stays missing: clipping leaves NaN alone
                lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"clipping range of {col!r} is ({lo!r}, {hi!r}): the public view or the original view's "
                "statistics hold a non-finite value."
            )
        out[col] = (lo, hi)
    return out


def prepare_tabular(
    original: pd.DataFrame,
    hybrid: pd.DataFrame,
    val: pd.DataFrame,
    test: pd.DataFrame,
    *,
    sensitive: Sequence[str],
    public: Sequence[str],
    label: str,
    original_stats: Stats,
    categorical: Sequence[str] = (),
    one_hot: bool = True,
    noise_seed: int = 0,
    shared_fit: pd.DataFrame | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    zero_out_view: str | None = None,
    sensitive_scale: float = 1.0,
) -> tuple[TabularData, TabularPreprocessor]:
    """Build every view; return the data and the ORIGINAL view's preprocessor (val/test use it too).

    ``shared_fit``: the public rows the shared statistics and vocabularies are fitted on (default: the
    hybrid rows); see the module docstring for what is public under which guarantee.
    ``original_stats``: (mean, std) of every numeric sensitive column for the original view, from
    :mod:`fusiondp.mechanism.scaling`. The hybrid view's numeric sensitive columns use the hybrid rows' own
    statistics.

    The noise view is the hybrid view with the sensitive feature columns replaced by N(0, 1) draws
    (seeded by ``noise_seed``), so it never reads an original sensitive value either.

    ``bounds``: public ranges of the numeric sensitive columns (every one of them); the original view
    (training rows, val, test) is clipped to :func:`original_clip_bounds` of them, widened to hold
    the zero-out values of ``zero_out_view`` (``"hybrid"`` or ``"noise"``: the public view the
    private term is the difference against; None when there is no zero-out neighbour, e.g. dpsgd,
    whose hybrid rows are private). The hybrid and noise views are public and are not clipped.
    ``original_prep.clip_`` holds the ranges used (for the record).

    ``sensitive_scale`` s (public, ``--sensitive_scale``): every view's sensitive feature columns
    (original, hybrid and noise training views, val, test) are multiplied by s after standardising,
    one-hot blocks of categorical sensitive columns included (their 1s become s); the noise view's
    draws are N(0, s²). Public columns are unchanged. The same public factor in every view keeps the
    views' relations: a zero-out neighbour's original view still equals its public view (the
    clipping ranges, on the raw values, are unchanged; both views are scaled in float64 before the
    float32 cast, so they stay equal, or one float32 ulp of s·z apart, within the step's absolute
    SAME_VIEW_TOLERANCE for |s·z| up to about 80), and nothing here reads original values to choose s.
    """
    if not (math.isfinite(sensitive_scale) and sensitive_scale > 0):
        raise ValueError(f"--sensitive_scale must be finite and > 0, got {sensitive_scale!r}.")
    columns = [*public, *sensitive]
    numeric = [c for c in columns if c not in set(categorical)]
    numeric_sensitive = [c for c in sensitive if c not in set(categorical)]
    missing = [c for c in numeric_sensitive if c not in original_stats]
    if missing:
        raise ValueError(f"original_stats lacks numeric sensitive column(s) {missing}.")
    base = TabularPreprocessor(numeric=numeric, categorical=list(categorical), one_hot=one_hot)
    base.fit((hybrid if shared_fit is None else shared_fit)[columns])
    if sensitive_scale != 1.0:
        base = base.with_scale({c: sensitive_scale for c in sensitive})
    hybrid_prep = base.with_statistics(column_statistics(hybrid, numeric_sensitive))
    original_prep = base.with_statistics({c: original_stats[c] for c in numeric_sensitive})
    if zero_out_view not in (None, "hybrid", "noise"):
        raise ValueError(f"zero_out_view must be None, 'hybrid' or 'noise', got {zero_out_view!r}.")

    def tensor(frame: pd.DataFrame, prep: TabularPreprocessor) -> Tensor:
        return torch.from_numpy(prep.transform(frame[columns]))

    def labels(frame: pd.DataFrame) -> Tensor:
        return torch.from_numpy(frame[label].astype(float).to_numpy(np.float32))

    sensitive_features = base.feature_indices(sensitive)
    x_hybrid = tensor(hybrid, hybrid_prep)
    x_noise = x_hybrid.clone()
    generator = torch.Generator().manual_seed(noise_seed)
    draws = torch.randn(len(x_noise), len(sensitive_features), generator=generator)
    x_noise[:, sensitive_features] = draws if sensitive_scale == 1.0 else draws * sensitive_scale
    if bounds is not None:
        check_bounds(bounds, numeric_sensitive)
        matched = None
        if zero_out_view == "hybrid":
            frame = zero_out_values(hybrid, columns=numeric_sensitive, original_stats=original_stats)
            matched = {c: frame[c].to_numpy(float) for c in numeric_sensitive}
        elif zero_out_view == "noise":
            matched = {}
            for col in numeric_sensitive:
                (j,) = base.feature_indices([col])
                mean, std = original_stats[col]
                z = x_noise[:, j].double().numpy()  # s·N(0,1): the raw value mean + std·z/s gives it
                matched[col] = mean + std * (z if sensitive_scale == 1.0 else z / sensitive_scale)
        original_prep = original_prep.with_clipping(
            original_clip_bounds({c: bounds[c] for c in numeric_sensitive}, zero_out_values_of=matched)
        )
    data = TabularData(
        original=tensor(original, original_prep),
        hybrid=x_hybrid,
        noise=x_noise,
        y=labels(original),
        x_val=tensor(val, original_prep),
        y_val=labels(val),
        x_test=tensor(test, original_prep),
        y_test=labels(test),
        feature_names=base.feature_names_,
        sensitive_features=sensitive_features,
        sensitive_scale=float(sensitive_scale),
    )
    return data, original_prep


def add_imputed_data_args(parser: argparse.ArgumentParser, *, dataset: str) -> argparse.ArgumentParser:
    """``--data_dir`` (an ``impute_<dataset>.py`` output folder) and ``--one_hot``, for the tabular scripts."""
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=Path(f"outputs/{dataset}"),
        help=f"impute_{dataset}.py's --out_dir (default: %(default)s)",
    )
    parser.add_argument(
        "--one_hot",
        action="store_true",
        help="one-hot categorical columns (the reference); otherwise scaled ordinal codes",
    )
    return parser
