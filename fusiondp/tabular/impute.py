"""Imputation of sensitive columns from public columns (docs/design.md §1, §5), with TabPFN or a fallback.

Privacy contract: an imputer is fitted on a PUBLIC support set (rows disjoint from the training rows,
whose sensitive values are public) and, for the rows it imputes, reads their public columns only.
Every encoding it uses (category vocabularies, top-k caps) is fitted on the support set.

Imputation quality (accuracy/macro-F1, MSE/R²) is measured on HELD-OUT evaluation rows only: the
imputer fitted on the support set predicts the val and test rows from their public columns, and those
predictions are scored against their true values (val/test rows are evaluation data, docs/design.md §5).
It is never measured on training rows: a score against the training rows' original sensitive values
is a deterministic function of them (one row's value moves an MSE on 30,000 rows visibly), so
publishing it would release private values outside the mechanism. Scoring training rows stays
possible only as an explicit, private evaluation (:func:`imputation_quality` on them, or
``scripts/imputation_quality.py``) that is never written next to the data, to docs or to records.

``tabpfn`` is the paper's imputer: TabPFNClassifier for categorical sensitive columns,
TabPFNRegressor for numeric ones. ``hgb`` (scikit-learn HistGradientBoosting) is a stand-in for
machines without TabPFN weights; its results are a deviation from the paper and are labelled so.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, r2_score
from tqdm.auto import tqdm

from fusiondp.experiment.config import ImputeConfig
from fusiondp.tabular.data import (
    IMPUTATION_INFO,
    check_columns,
    check_disjoint,
    output_files,
    split_indices,
    write_csv,
)

IMPUTERS = ("tabpfn", "hgb")
DEVIATION_NOTE = "hgb imputer (scikit-learn HistGradientBoosting), NOT TabPFN: a deviation from the paper"
TABPFN_MAX_CLASSES = 10
HGB_VALIDATION_FRACTION = 0.2
"""The part of the (public) support set that the hgb imputer's early stopping holds out for validation."""
HGB_MAX_ITER = 100
"""Trees at most per hgb model (scikit-learn's default): early stopping's cap, and the fixed number of
trees of a column fitted without early stopping (:func:`early_stopping_split_problem`)."""
MIN_STRATIFIED_CLASS_ROWS = 2
"""Rows a class needs for a stratified train/validation split (scikit-learn's StratifiedShuffleSplit)."""
EARLY_STOPPING_RULE = (
    "a categorical target (a categorical sensitive column, or a blend column's quantile bins) whose "
    f"classes cannot be split the way hgb's early stopping splits them (stratified, {HGB_VALIDATION_FRACTION:g} "
    f"of the rows for validation: every class needs at least {MIN_STRATIFIED_CLASS_ROWS} rows and both parts "
    "at least one row per class), counted on the public support rows only, is fitted without early "
    f"stopping: {HGB_MAX_ITER} trees on all its support rows; every class and every support row is kept"
)
QUALITY_ROWS = ("val", "test")
"""The splits whose imputation quality is measured and written (held-out evaluation rows, never training)."""
QUALITY_NOTE = (
    "measured on held-out evaluation rows (val, test): the imputer, fitted on the public support set, "
    "predicts them from their public columns and is scored against their true values; the training rows' "
    "sensitive values are never read for it"
)


def early_stopping_split_problem(
    labels: Sequence, *, validation_fraction: float = HGB_VALIDATION_FRACTION
) -> tuple[dict[str, int], str | None]:
    """Why hgb's early stopping cannot split these class labels, or None; and the classes too rare.

    HistGradientBoostingClassifier(early_stopping=True) holds out ``validation_fraction`` of its rows
    with ``train_test_split(..., stratify=y)``, and scikit-learn's StratifiedShuffleSplit refuses when
    a class has fewer than :data:`MIN_STRATIFIED_CLASS_ROWS` (2) rows, or when the validation part
    (``ceil(validation_fraction * n)`` rows) or the training part (the rest) has fewer rows than there
    are classes. This checks exactly those conditions (tests/test_impute.py checks it against
    scikit-learn). Returns ``({class: rows} for the classes with too few rows, reason or None)``.
    Privacy contract: call it on the PUBLIC support set's labels only.
    """
    counts = pd.Series(np.asarray(labels)).astype(str).value_counts()
    n, k = int(counts.sum()), len(counts)
    n_val = math.ceil(validation_fraction * n)  # scikit-learn's own arithmetic (float test_size)
    n_train = n - n_val
    rare = {str(c): int(m) for c, m in sorted(counts.items()) if m < MIN_STRATIFIED_CLASS_ROWS}
    reasons = []
    if rare:
        reasons.append(
            f"{len(rare)} class(es) with fewer than {MIN_STRATIFIED_CLASS_ROWS} support rows: "
            + ", ".join(f"{c!r} ({m} row{'s' * (m != 1)})" for c, m in rare.items())
        )
    for part, rows in (("validation", n_val), ("training", n_train)):
        if rows < k:
            reasons.append(f"the {part} part of the split would have {rows} rows for {k} classes")
    return rare, "; ".join(reasons) or None


def cap_categories(support: pd.Series, *, max_categories: int) -> list:
    """The categories to keep: the ``max_categories - 1`` most frequent in the (public) support set.

    One class is left for :func:`apply_cap`'s ``other``, which takes every category not kept.
    """
    counts = support.dropna().astype(str).value_counts(sort=True)
    if len(counts) <= max_categories:
        return sorted(counts.index)
    return sorted(counts.index[: max_categories - 1])


def apply_cap(values: pd.Series, keep: Sequence, *, other: str = "other") -> pd.Series:
    as_str = values.astype("object").where(values.isna(), values.astype(str))
    return as_str.where(as_str.isna() | as_str.isin(list(keep)), other)


def tabpfn_weights_problem(model_paths: dict[str, str | None], *, needed: Sequence[str]) -> str | None:
    """None when TabPFN and the ``needed`` weights ('classifier', 'regressor') load without a download.

    Otherwise says what is missing and what to do. ``model_paths[task]`` is a local checkpoint, or
    None for tabpfn's own cache.
    """
    for task in needed:  # a wrong explicit path is the first thing to report
        given = model_paths.get(task)
        if given and not Path(given).is_file():
            return f"--tabpfn_{task}_path {given} does not exist."
    try:
        import tabpfn  # noqa: F401
    except ImportError:
        return "TabPFN is not installed: pip install -e '.[tabular]' (or use --imputer hgb)."
    missing = []
    for task in needed:
        if model_paths.get(task):
            continue
        from tabpfn.model_loading import resolve_model_path
        from tabpfn.settings import settings

        (path,), *_ = resolve_model_path(None, task, settings.tabpfn.model_version.value)
        if not Path(path).exists():
            missing.append(str(path))
    if missing:
        return (
            f"TabPFN weights are not in the local cache ({', '.join(missing)}) and this run may not "
            "download them. Fetch them once on a machine with internet (fitting any TabPFN model "
            "downloads them to that cache; copy the files here or set TABPFN_MODEL_CACHE_DIR), or pass "
            "--tabpfn_classifier_path / --tabpfn_regressor_path FILE. Without weights, --imputer hgb runs "
            "a labelled stand-in."
        )
    return None


class BinBlendRegressor:
    """A regressor blended with a classifier over quantile bins of the target (the sepsis release's
    imputer for Age, HospAdmTime and ICULOS).

    ``fit`` cuts the (public, support-set) target at its ``n_bins`` quantiles, fits ``classifier`` on the
    bin labels and ``regressor`` on the values; each bin's centre is the mean target of its support rows.
    ``predict`` returns ``weight * regressor + (1 - weight) * sum_k p_k * centre_k`` with p the
    classifier's predict_proba, so ``weight=1`` is the regressor alone and ``weight=0`` the expected bin
    centre. Any estimators with scikit-learn's fit/predict/predict_proba work (TabPFN and hgb do).
    """

    def __init__(self, *, regressor, classifier, weight: float = 0.5, n_bins: int = 10) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"blend weight must be in [0, 1], got {weight}.")
        if n_bins < 2:
            raise ValueError(f"need at least 2 quantile bins, got {n_bins}.")
        self.regressor, self.classifier, self.weight, self.n_bins = regressor, classifier, weight, n_bins

    def quantile_bins(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The inner bin edges of ``y`` and each value's bin (the classifier's labels)."""
        y = np.asarray(y, dtype=float)
        # Ties (e.g. integer ICULOS) can merge quantiles: keep distinct inner edges only.
        edges = np.unique(np.quantile(y, np.linspace(0, 1, self.n_bins + 1)[1:-1]))
        return edges, np.searchsorted(edges, y, side="right")

    def fit(self, x: np.ndarray, y: np.ndarray) -> BinBlendRegressor:
        y = np.asarray(y, dtype=float)
        self.edges_, bins = self.quantile_bins(y)
        bounds = np.concatenate([[y.min()], self.edges_, [y.max()]])
        self.centres_ = np.array(
            [
                y[bins == k].mean() if (bins == k).any() else bounds[k : k + 2].mean()
                for k in range(len(bounds) - 1)
            ]
        )
        self.regressor.fit(x, y)
        if self.weight < 1.0:
            self.classifier.fit(x, bins)
        return self

    def expected_centre(self, x: np.ndarray) -> np.ndarray:
        proba = self.classifier.predict_proba(x)
        return proba @ self.centres_[np.asarray(self.classifier.classes_, dtype=int)]

    def predict(self, x: np.ndarray) -> np.ndarray:
        regression = np.asarray(self.regressor.predict(x), dtype=float)
        if self.weight == 1.0:
            return regression
        return self.weight * regression + (1.0 - self.weight) * self.expected_centre(x)


class SensitiveImputer:
    """Predicts each sensitive column from the public columns, one model per column.

    ``kind='tabpfn'`` uses TabPFNClassifier/Regressor (``model_paths`` maps 'classifier' and
    'regressor' to local checkpoints, tabpfn's ``model_path``; missing keys use tabpfn's own cache);
    ``kind='hgb'`` uses HistGradientBoosting. Numeric ``blend_columns`` use :class:`BinBlendRegressor`
    (a regressor blended with a classifier over ``n_bins`` quantile bins, weight ``blend_weight``).
    Public categorical columns are ordinal-coded with vocabularies from the support set (unseen → NaN).
    """

    def __init__(
        self,
        *,
        kind: str,
        public: Sequence[str],
        sensitive: Sequence[str],
        categorical: Sequence[str] = (),
        seed: int = 0,
        model_paths: dict[str, str | None] | None = None,
        max_support_rows: int = 10_000,
        batch_size: int = 1024,
        n_estimators: int = 4,
        device: str = "cpu",
        blend_columns: Sequence[str] = (),
        blend_weight: float = 0.5,
        n_bins: int = 10,
    ) -> None:
        if kind not in IMPUTERS:
            raise ValueError(f"unknown imputer {kind!r}; choose one of {IMPUTERS}.")
        if set(blend_columns) & set(categorical):
            raise ValueError(
                f"blend columns {sorted(set(blend_columns) & set(categorical))} are categorical."
            )
        self.blend_columns, self.blend_weight, self.n_bins = set(blend_columns), blend_weight, n_bins
        self.kind, self.public, self.sensitive = kind, list(public), list(sensitive)
        self.categorical = set(categorical)
        self.seed, self.model_paths, self.device = seed, dict(model_paths or {}), device
        self.max_support_rows, self.batch_size, self.n_estimators = max_support_rows, batch_size, n_estimators
        self.vocab_: dict[str, dict[str, int]] = {}
        self.models_: dict[str, object] = {}
        self.early_stopping_off_: dict[str, dict] = {}
        """hgb: the columns fitted without early stopping (:data:`EARLY_STOPPING_RULE`), and why."""

    def _encode(self, frame: pd.DataFrame) -> np.ndarray:
        cols = []
        for col in self.public:
            if col in self.categorical:
                cols.append(frame[col].astype("object").map(self.vocab_[col]).astype(float).to_numpy())
            else:
                cols.append(pd.to_numeric(frame[col], errors="coerce").to_numpy(float))
        return np.stack(cols, axis=1).astype(np.float32)

    def _model(self, column: str):
        if column in self.blend_columns:
            return BinBlendRegressor(
                regressor=self._base(categorical=False),
                classifier=self._base(categorical=True),
                weight=self.blend_weight,
                n_bins=self.n_bins,
            )
        return self._base(categorical=column in self.categorical)

    def _base(self, *, categorical: bool):
        if self.kind == "hgb":
            from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

            cls = HistGradientBoostingClassifier if categorical else HistGradientBoostingRegressor
            # Small support sets overfit default boosting: fixed shrinkage, and the number of trees
            # chosen by early stopping on a held-out fifth of the (public) support set (a target
            # whose classes that split cannot take is fitted without it: _early_stopping_rule).
            return cls(
                random_state=self.seed,
                learning_rate=0.05,
                min_samples_leaf=20,
                max_iter=HGB_MAX_ITER,
                early_stopping=True,
                validation_fraction=HGB_VALIDATION_FRACTION,
                n_iter_no_change=10,
            )
        import torch
        from tabpfn import TabPFNClassifier, TabPFNRegressor

        cls = TabPFNClassifier if categorical else TabPFNRegressor
        return cls(
            model_path=self.model_paths.get("classifier" if categorical else "regressor") or "auto",
            device=self.device,
            n_estimators=self.n_estimators,
            random_state=self.seed,
            ignore_pretraining_limits=True,
            inference_precision=torch.float32,
        )

    def _tasks(self, column: str) -> set[str]:
        if column in self.blend_columns:
            return {"classifier", "regressor"}
        return {"classifier" if column in self.categorical else "regressor"}

    def fit(self, support: pd.DataFrame) -> SensitiveImputer:
        """Fit on the PUBLIC support set (its sensitive values are public by construction)."""
        if self.kind == "tabpfn":
            problem = tabpfn_weights_problem(
                self.model_paths, needed=sorted(set().union(*(self._tasks(c) for c in self.sensitive)))
            )
            if problem:
                raise ValueError(problem)
        if len(support) > self.max_support_rows:
            support = support.sample(n=self.max_support_rows, random_state=self.seed)
        for col in self.public:
            if col in self.categorical:
                values = sorted(support[col].dropna().astype(str).unique())
                self.vocab_[col] = {v: i for i, v in enumerate(values)}
        x = self._encode(support)
        self.models_, self.early_stopping_off_ = {}, {}
        for col in self.sensitive:
            target = support[col]
            known = target.notna().to_numpy()
            if col in self.categorical:
                classes = target[known].astype(str)
                if self.kind == "tabpfn" and classes.nunique() > TABPFN_MAX_CLASSES:
                    raise ValueError(
                        f"sensitive column {col!r} has {classes.nunique()} categories in the support set; "
                        f"TabPFN handles at most {TABPFN_MAX_CLASSES}: cap them first (cap_categories)."
                    )
                y = classes.to_numpy()
            else:
                y = pd.to_numeric(target[known], errors="coerce").to_numpy(float)
            model = self._model(col)
            try:
                if self.kind == "hgb":
                    self._early_stopping_rule(col, model, y)
                self.models_[col] = model.fit(x[known], y)
            except Exception as error:  # one line that names the column (and its rarest classes)
                raise ValueError(self._fit_failure(col, model, y, error)) from error
        return self

    def _classifier_target(self, column: str, model, y: np.ndarray):
        """The hgb classifier fitted for ``column`` and its labels (a blend's quantile bins), or None."""
        if isinstance(model, BinBlendRegressor):
            if model.weight == 1.0 or len(y) == 0:  # the classifier is not fitted
                return None
            edges, bins = model.quantile_bins(y)
            bounds = np.concatenate([[np.min(y)], edges, [np.max(y)]])
            names = np.array(
                [f"bin {k} [{bounds[k]:.6g}, {bounds[k + 1]:.6g}]" for k in range(len(bounds) - 1)]
            )
            return model.classifier, names[bins]
        if column in self.categorical:
            return model, y
        return None

    def _early_stopping_rule(self, column: str, model, y: np.ndarray) -> None:
        """:data:`EARLY_STOPPING_RULE`: reads ``y``, the PUBLIC support set's target, only.

        Why early stopping off rather than merging the rare classes into ``other``: merging needs a
        bucket of at least 2 rows to merge into, and a column with 10 categories or fewer has none (a
        category with one support row would become an ``other`` with one row, which fails the same
        way); a new ``other`` label would put a category into the hybrid view that the column does not
        have; merging through apply_cap would rewrite the train/val/test rows' true values because of
        where one support row fell; and merging does not help when the validation part is smaller
        than the number of classes. Dropping the rare rows would make their category impossible to
        impute. Without early stopping, HistGradientBoosting fits any class counts (one-row classes
        too), keeps every class and every public row, and the column's other settings stay; the cost
        is a number of trees fixed at HGB_MAX_ITER instead of chosen on validation rows (what
        scikit-learn itself does below 10,000 rows, early_stopping='auto'). Other columns keep it.
        """
        found = self._classifier_target(column, model, y)
        if found is None:
            return
        classifier, labels = found
        rare, problem = early_stopping_split_problem(
            labels, validation_fraction=classifier.get_params()["validation_fraction"]
        )
        if problem is None:
            return
        classifier.set_params(early_stopping=False)
        self.early_stopping_off_[column] = {
            "target": "quantile bins" if classifier is not model else "categories",
            "support_rows": len(labels),
            "classes": int(pd.Series(labels).nunique()),
            "rare_classes": rare,
            "reason": problem,
            "early_stopping": False,
            "max_iter": int(classifier.get_params()["max_iter"]),
        }

    def _fit_failure(self, column: str, model, y: np.ndarray, error: Exception) -> str:
        message = " ".join(str(error).split()) or type(error).__name__
        where = f"imputing sensitive column {column!r} ({self.kind}, {len(y)} support rows with a value)"
        try:  # the classes, to name them; a failure to find them must not hide the first error
            found = self._classifier_target(column, model, y) if len(y) else None
        except Exception:
            found = None
        if found is not None:
            counts = pd.Series(np.asarray(found[1])).astype(str).value_counts().sort_index(kind="stable")
            rarest = counts.sort_values(kind="stable").head(3)
            where += "; rarest classes in the support set: " + ", ".join(
                f"{c!r} ({m} row{'s' * (m != 1)})" for c, m in rarest.items()
            )
        return f"{where}: {message}"

    def predict(self, frame: pd.DataFrame, *, progress: bool = True) -> pd.DataFrame:
        """Imputed sensitive columns for ``frame``, computed from its public columns only."""
        x = self._encode(frame[self.public])
        out = {}
        starts = range(0, len(x), self.batch_size)
        for col in tqdm(self.sensitive, desc=f"impute ({self.kind})", disable=not progress):
            model = self.models_[col]
            parts = [model.predict(x[i : i + self.batch_size]) for i in starts]
            out[col] = np.concatenate(parts) if parts else np.array([])
        return pd.DataFrame(out, index=frame.index)


def _category_labels(values: pd.Series) -> pd.Series:
    """Categories as strings, with numeric codes canonical (``1``, ``1.0`` and ``"1"`` are one class)."""
    numeric = pd.to_numeric(values, errors="coerce")
    return values.astype(str).where(numeric.isna(), numeric.astype(float).astype(str))


def imputation_quality(
    true: pd.DataFrame, imputed: pd.DataFrame, *, categorical: Sequence[str]
) -> pd.DataFrame:
    """Per sensitive column: accuracy and macro-F1 (categorical) or MSE and R² (numeric).

    An evaluation of the imputer against the true values; never feed it back into training.
    Privacy contract: the result is a deterministic function of ``true``. Called on held-out rows
    (val/test, :func:`heldout_quality`) it may be published; called on TRAINING rows it is a private
    evaluation: print it for yourself at most, never write it to docs, records or next to the data.
    """
    rows = []
    for col in imputed.columns:
        known = true[col].notna().to_numpy()
        t, p = true[col][known], imputed[col][known]
        if col in set(categorical):
            t, p = _category_labels(t), _category_labels(p)
            rows.append(
                {
                    "column": col,
                    "type": "categorical",
                    "n": int(known.sum()),
                    "accuracy": accuracy_score(t, p),
                    "macro_f1": f1_score(t, p, average="macro"),
                    "mse": np.nan,
                    "r2": np.nan,
                }
            )
        else:
            t, p = t.astype(float), p.astype(float)
            rows.append(
                {
                    "column": col,
                    "type": "numeric",
                    "n": int(known.sum()),
                    "accuracy": np.nan,
                    "macro_f1": np.nan,
                    "mse": mean_squared_error(t, p),
                    "r2": r2_score(t, p),
                }
            )
    return pd.DataFrame(rows)


def heldout_quality(
    imputer: SensitiveImputer,
    frames: dict[str, pd.DataFrame],
    *,
    categorical: Sequence[str],
    progress: bool = False,
) -> pd.DataFrame:
    """Quality of a fitted imputer on the held-out splits :data:`QUALITY_ROWS` (val, test), per column.

    Each split's sensitive columns are predicted from its public columns only and scored against its
    true values; the ``rows`` column names the split. Privacy contract: only val/test rows (evaluation
    data) are read; training rows are never scored, so the result does not depend on any training
    row's sensitive values and may be published.
    """
    parts = []
    for split in QUALITY_ROWS:
        if split not in frames:
            raise ValueError(
                f"imputation quality is measured on held-out rows {QUALITY_ROWS}; split {split!r} is "
                f"missing (got {sorted(frames)})."
            )
        predicted = imputer.predict(frames[split], progress=progress)
        quality = imputation_quality(frames[split], predicted, categorical=categorical)
        quality.insert(0, "rows", split)
        parts.append(quality)
    return pd.concat(parts, ignore_index=True)


def check_imputer_ready(config: ImputeConfig, *, needed: Sequence[str] = ("classifier", "regressor")) -> None:
    """Before any work: the chosen imputer can run here (TabPFN: weights load without a download).

    Raises ValueError with what is missing and what to do, so that the script ends in one line.
    """
    if config.imputer != "tabpfn":
        return
    paths = {"classifier": config.tabpfn_classifier_path, "regressor": config.tabpfn_regressor_path}
    problem = tabpfn_weights_problem(paths, needed=needed)
    if problem:
        raise ValueError(problem)


def impute_dataset(df: pd.DataFrame, config: ImputeConfig, *, dataset: ModuleType, source: str) -> dict:
    """Check ``df``'s columns against the dataset module, split it (support/train/val/test,
    ``config.split_sizes``) and run :func:`impute_splits`.

    ``dataset`` is ``fusiondp.datasets.<name>``: its ``PUBLIC``, ``SENSITIVE``, ``CATEGORICAL``,
    ``LABEL`` and ``IGNORED`` columns. Ignored columns are dropped before anything is written; any
    other column that is none of these is an error naming it (it could be a leaky copy of a sensitive
    one). The imputer's readiness (TabPFN weights) is checked before any work.
    """
    check_imputer_ready(config)
    check_columns(
        df,
        path=source,
        required=[*dataset.PUBLIC, *dataset.SENSITIVE, dataset.LABEL],
        ignored=dataset.IGNORED,
        declare_in=f"IGNORED of fusiondp/datasets/{dataset.NAME}.py",
    )
    df = df.drop(columns=[c for c in dataset.IGNORED if c in df.columns])
    splits = ("support", "train", "val", "test")
    sizes = dict(zip(splits, config.split_sizes, strict=True))
    ids = split_indices(len(df), sizes, seed=config.seed)
    check_disjoint(ids["support"], ids["train"])
    frames = {name: df.iloc[rows].reset_index(drop=True) for name, rows in ids.items()}
    return impute_splits(
        frames,
        config,
        dataset=dataset.NAME,
        public=dataset.PUBLIC,
        sensitive=dataset.SENSITIVE,
        categorical=dataset.CATEGORICAL,
        info={"source": source, "splits": sizes, "ignored_columns": list(dataset.IGNORED)},
    )


def impute_splits(
    frames: dict[str, pd.DataFrame],
    config: ImputeConfig,
    *,
    dataset: str,
    public: Sequence[str],
    sensitive: Sequence[str],
    categorical: Sequence[str],
    info: dict,
    files: dict[str, str] | None = None,
    imputer_options: dict | None = None,
) -> dict:
    """Impute the training rows' sensitive columns from the support split; write every split and metrics.

    ``frames`` holds disjoint 'support', 'train', 'val' and 'test' tables; ``files`` maps those and
    'train_imputed' to file names (default: the reference ``<ds>_<split>.csv``); ``imputer_options``
    go to :class:`SensitiveImputer` (e.g. the bin blend); ``info`` goes into imputation_info.json.
    Privacy contract: the imputer and the category caps are fitted on the support split only; the
    training rows' sensitive values are never read (the imputer sees their public columns only) and
    never scored. ``imputation_metrics.csv`` holds the quality on the held-out val and test rows
    (column ``rows``), and ``imputation_info.json`` says so: both are byte-identical whatever the
    training rows' sensitive values are.
    """
    frames = {name: frame.copy() for name, frame in frames.items()}  # the caller's tables stay as given
    for col in [c for c in sensitive if c in set(categorical)]:
        keep = cap_categories(frames["support"][col], max_categories=TABPFN_MAX_CLASSES)
        for frame in frames.values():
            frame[col] = apply_cap(frame[col], keep)
    imputer = SensitiveImputer(
        kind=config.imputer,
        public=public,
        sensitive=sensitive,
        categorical=categorical,
        seed=config.seed,
        model_paths={"classifier": config.tabpfn_classifier_path, "regressor": config.tabpfn_regressor_path},
        device=config.device,
        **(imputer_options or {}),
    )
    imputed = imputer.fit(frames["support"]).predict(frames["train"], progress=config.progress)
    frames["train_imputed"] = frames["train"].assign(**{c: imputed[c] for c in sensitive})
    files = files or output_files(dataset)
    for name, frame in frames.items():
        write_csv(frame, config.out_dir / files[name])
    quality = heldout_quality(imputer, frames, categorical=categorical, progress=config.progress)
    quality.insert(0, "imputer", config.imputer)
    quality.to_csv(config.out_dir / "imputation_metrics.csv", index=False)
    info = {
        "dataset": dataset,
        "imputer": config.imputer,
        "seed": config.seed,
        **info,
        "sensitive_columns": list(sensitive),
        "imputation_quality": {"rows": list(QUALITY_ROWS), "measured_on": QUALITY_NOTE},
        "deviation_from_paper": DEVIATION_NOTE if config.imputer == "hgb" else None,
        "imputer_settings": {
            "model": (
                f"TabPFN, n_estimators {imputer.n_estimators}, device {imputer.device}"
                if config.imputer == "tabpfn"
                else f"HistGradientBoosting: learning_rate 0.05, min_samples_leaf 20, early stopping on "
                f"{HGB_VALIDATION_FRACTION:.0%} of the support set (at most {HGB_MAX_ITER} trees), except "
                "for the columns in early_stopping_off"
            ),
            "max_support_rows": imputer.max_support_rows,
            **(imputer_options or {}),
        },
    }
    hgb = config.imputer == "hgb"
    if hgb:  # counted on the public support rows only, like everything else in this file
        info["imputer_settings"]["early_stopping_rule"] = EARLY_STOPPING_RULE
        info["imputer_settings"]["early_stopping_off"] = imputer.early_stopping_off_
    (config.out_dir / IMPUTATION_INFO).write_text(json.dumps(info, indent=2, default=list) + "\n")
    print(f"imputation quality, {QUALITY_NOTE}:\n" + quality.to_string(index=False))
    if hgb:
        print(f"NOTE: {DEVIATION_NOTE}.")
        for col, what in imputer.early_stopping_off_.items():
            print(f"NOTE: hgb imputer of {col!r} fitted without early stopping ({what['reason']}).")
    return {"out_dir": str(config.out_dir), "quality": quality.to_dict("records"), **info}


def add_imputer_args(
    parser: argparse.ArgumentParser, *, splits: dict[str, int], seed: int, out_dir: str
) -> None:
    """Flags every impute_<dataset>.py shares (``--split_sizes`` only when ``splits`` is not empty)."""
    parser.add_argument("--out_dir", type=Path, default=Path(out_dir))
    parser.add_argument(
        "--imputer",
        choices=IMPUTERS,
        default="tabpfn",
        help="tabpfn (the paper's; needs weights) or hgb (offline stand-in, labelled as such)",
    )
    parser.add_argument("--tabpfn_classifier_path", default=None, help="local TabPFN classifier checkpoint")
    parser.add_argument("--tabpfn_regressor_path", default=None, help="local TabPFN regressor checkpoint")
    parser.add_argument(
        "--device", default="cpu", help="TabPFN's device, e.g. cuda (default: %(default)s; hgb ignores it)"
    )
    parser.add_argument("--seed", type=int, default=seed, help="split and imputer seed")
    if splits:
        parser.add_argument(
            "--split_sizes",
            type=int,
            nargs=len(splits),
            default=list(splits.values()),
            metavar=tuple(s.upper() for s in splits),
            help="rows per split (default: %(default)s)",
        )
    parser.add_argument("--no_progress", action="store_true")
