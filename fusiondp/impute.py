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

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, r2_score
from tqdm.auto import tqdm

from fusiondp.config import ImputeConfig
from fusiondp.data import IMPUTATION_INFO, check_disjoint, output_files, split_indices, write_csv

IMPUTERS = ("tabpfn", "hgb")
DEVIATION_NOTE = "hgb imputer (scikit-learn HistGradientBoosting), NOT TabPFN: a deviation from the paper"
TABPFN_MAX_CLASSES = 10
QUALITY_ROWS = ("val", "test")
"""The splits whose imputation quality is measured and written (held-out evaluation rows, never training)."""
QUALITY_NOTE = (
    "measured on held-out evaluation rows (val, test): the imputer, fitted on the public support set, "
    "predicts them from their public columns and is scored against their true values; the training rows' "
    "sensitive values are never read for it"
)


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

    def fit(self, x: np.ndarray, y: np.ndarray) -> BinBlendRegressor:
        y = np.asarray(y, dtype=float)
        # Ties (e.g. integer ICULOS) can merge quantiles: keep distinct inner edges only.
        self.edges_ = np.unique(np.quantile(y, np.linspace(0, 1, self.n_bins + 1)[1:-1]))
        bins = np.searchsorted(self.edges_, y, side="right")
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
            # chosen by early stopping on a held-out fifth of the (public) support set.
            return cls(
                random_state=self.seed,
                learning_rate=0.05,
                min_samples_leaf=20,
                early_stopping=True,
                validation_fraction=0.2,
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
            self.models_[col] = self._model(col).fit(x[known], y)
        return self

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


def impute_dataset(
    df: pd.DataFrame,
    config: ImputeConfig,
    *,
    dataset: str,
    public: Sequence[str],
    sensitive: Sequence[str],
    categorical: Sequence[str],
    source: str,
) -> dict:
    """Split ``df`` (support/train/val/test, ``config.split_sizes``) and run :func:`impute_splits`."""
    splits = ("support", "train", "val", "test")
    sizes = dict(zip(splits, config.split_sizes, strict=True))
    ids = split_indices(len(df), sizes, seed=config.seed)
    check_disjoint(ids["support"], ids["train"])
    frames = {name: df.iloc[rows].reset_index(drop=True) for name, rows in ids.items()}
    return impute_splits(
        frames,
        config,
        dataset=dataset,
        public=public,
        sensitive=sensitive,
        categorical=categorical,
        info={"source": source, "splits": sizes},
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
                else "HistGradientBoosting: learning_rate 0.05, min_samples_leaf 20, early stopping on 20% of the support set"
            ),
            "max_support_rows": imputer.max_support_rows,
            **(imputer_options or {}),
        },
    }
    (config.out_dir / IMPUTATION_INFO).write_text(json.dumps(info, indent=2, default=list) + "\n")
    print(f"imputation quality, {QUALITY_NOTE}:\n" + quality.to_string(index=False))
    if config.imputer == "hgb":
        print(f"NOTE: {DEVIATION_NOTE}.")
    return {"out_dir": str(config.out_dir), "quality": quality.to_dict("records"), **info}
