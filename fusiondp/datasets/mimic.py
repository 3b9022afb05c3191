"""Clinical notes: MIMIC-III top-50 ICD-9 codes (caml-mimic files), and a public stand-in corpus.

MIMIC-III (``--dataset mimic``): caml-mimic's ``train_50.csv``, ``dev_50.csv``, ``test_50.csv``
(columns TEXT and LABELS, ``;``-separated ICD-9 codes; other columns ignored; row_id is HADM_ID when
present); its public label list is caml-mimic's TOP_50_CODES.csv. Stand-in (``--dataset
medical_abstracts``): ``$FUSIONDP_DATA/medical_abstracts/medical_tc_test.csv`` (2,888 abstracts,
``condition_label`` 1-5), whose public label list is ``medical_tc_labels.csv`` beside it.
impute_mimic.py writes ``<ds>_{support,train,train_imputed,val,test}.csv`` with :data:`COLUMNS`;
train_fusiondp_mimic.py reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fusiondp.mechanism.accounting import ADD_REMOVE
from fusiondp.mechanism.modes import get_mode
from fusiondp.tabular.data import data_root, read_csv
from fusiondp.text.data import read_label_list

NAMES = ("medical_abstracts", "mimic")
COLUMNS = ["row_id", "TEXT", "LABELS"]
"""The columns of every split file impute_mimic.py writes."""
STANDIN = "medical_abstracts"
STANDIN_CORPUS = "medical_tc_test.csv"
STANDIN_LABELS = "medical_tc_labels.csv"
STANDIN_FRACTIONS = {"support": 0.1, "train": 0.7, "val": 0.1, "test": 0.1}
"""The stand-in's seeded splits (each rounded down, the rest to train)."""
TEXT_MODES = ("sgd_ori", "sgd_hybrid", "dpsgd", "naive_fusion", "calibrated_fusion", "fusiondp")
"""The modes for notes: those built on the N(0, 1) noise view have no meaning for token ids."""
IMPUTATION_KEYS = ("detector", "detector_model", "lm", "lm_is_placeholder_baseline", "propagate_model_spans")
"""imputation_info.json keys a training record carries. Not "span_counts": counted on the ORIGINAL
notes, a statistic the record must not carry."""
DELTA_CAP = 1e-5
DELTA_TIMES_N_CAP = 0.1
DEFAULT_DELTA_RULE = "min(1e-5, 1/(10 N)), so delta*N <= 0.1"


def standin_dir() -> Path:
    """The stand-in corpus's folder: ``$FUSIONDP_DATA/medical_abstracts``."""
    return data_root() / STANDIN


def default_data_dir(dataset: str) -> Path:
    """impute_mimic.py's default ``--out_dir``, train_fusiondp_mimic.py's default ``--data_dir``."""
    return Path("outputs") / dataset


def is_sample_level(mode_name: str) -> bool:
    """True for the modes that protect whole training notes (add/remove relation: dpsgd)."""
    return get_mode(mode_name).relation == ADD_REMOVE


def text_sources(*, mode: str, embeddings: str | None, min_count: int) -> tuple[str, str]:
    """(embeddings, vocabulary source: 'hybrid' or 'public') for ``mode``; ``embeddings`` None: its default.

    Privacy contract: sample-level modes (a whole note, its hybrid copy and labels private) get a
    public vocabulary and embeddings, never ones fitted on training notes; a flag that would fit on
    them is refused, naming the flag and value that asked for it.
    """
    sample_level = is_sample_level(mode)
    if embeddings is None:
        embeddings = "minilm" if sample_level else "word2vec"
    if not sample_level:
        return embeddings, "hybrid"
    if embeddings == "word2vec":
        raise ValueError(
            f"--embeddings word2vec trains on the training notes, which --mode {mode} protects "
            "whole (sample-level DP); use --embeddings minilm (the default) or a pretrained vectors file."
        )
    if min_count != 1:
        raise ValueError(
            f"--min_count {min_count} counts tokens in the training notes, which --mode "
            f"{mode} protects whole; its vocabulary is the pretrained table's (drop the flag)."
        )
    return embeddings, "public"


def label_list(*, mode: str, dataset: str, labels_file: Path | None) -> tuple[list[str] | None, Path | None]:
    """The public label list and its file, or (None, None): the hybrid notes' labels.

    Under sample-level DP the labels are private, so a list fixed in advance is required: given for
    MIMIC (caml-mimic's TOP_50_CODES.csv), the corpus's class list by default for the stand-in.
    """
    if not is_sample_level(mode):
        return (read_label_list(labels_file) if labels_file else None), labels_file
    if labels_file is None:
        if dataset == "mimic":
            raise ValueError(
                f"--mode {mode} protects whole notes, labels included, so the label set must be "
                "fixed in advance: pass --labels_file with a public code list, e.g. caml-mimic's "
                "TOP_50_CODES.csv (one ICD-9 code a line)."
            )
        labels_file = standin_dir() / STANDIN_LABELS
    hint = "Pass --labels_file with the public label list (or set FUSIONDP_DATA for the stand-in's)."
    return read_label_list(labels_file, hint=hint), labels_file


def check_delta_flags(delta: float | None, *, one_over_n: bool) -> None:
    """``--delta`` and ``--delta_one_over_n`` exclude each other; ``--delta`` lies in (0, 1)."""
    if delta is not None and one_over_n:
        raise ValueError(f"give either --delta {delta!r} or --delta_one_over_n, not both.")
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"--delta must be in (0, 1), got {delta!r}.")


def resolve_delta(*, delta: float | None, one_over_n: bool, num_rows: int) -> tuple[float, str]:
    """δ and the rule that chose it, for N = ``num_rows`` training notes.

    Default min(1e-5, 1/(10 N)), so δ·N ≤ 0.1: a mechanism that publishes each note whole with
    probability δ is (0, δ)-DP, hence (ε, δ)-DP for every ε; at δ = 1/N it publishes about one note a
    run, at the default at most 0.1 expected notes.
    ``one_over_n`` is the reference's 1/N; an explicit ``delta`` wins (the record shows its δ·N).
    """
    check_delta_flags(delta, one_over_n=one_over_n)
    if delta is not None:
        return delta, "given (--delta)"
    if one_over_n:
        return 1.0 / num_rows, "reference: 1/N (--delta_one_over_n)"
    return min(DELTA_CAP, DELTA_TIMES_N_CAP / num_rows), f"default: {DEFAULT_DELTA_RULE}"


def load_caml(path: Path, *, split: str) -> pd.DataFrame:
    """A caml-mimic CSV as (row_id, TEXT, LABELS), with errors naming the file, column and row."""
    df = read_csv(path, what=f"MIMIC {split} file", hint=f"Pass --{split}_csv (caml-mimic {split}_50.csv).")
    for col in ("TEXT", "LABELS"):
        if col not in df.columns:
            raise ValueError(
                f"{path}: missing column {col!r} (found {list(df.columns)}); caml-mimic files have TEXT and LABELS."
            )
    if df.empty:
        raise ValueError(f"{path}: no rows; a caml-mimic {split} file holds one note per row.")
    for col in ("TEXT", "LABELS"):
        blank = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if blank.any():
            rows = np.flatnonzero(blank.to_numpy())[:5].tolist()
            raise ValueError(
                f"{path}: column {col!r} is empty in data row(s) {rows} (0-based); every note needs {col}."
            )
    if df["LABELS"].dtype != object:  # all single numeric codes: re-read as text so "038.9" keeps its 0
        df["LABELS"] = pd.read_csv(path, usecols=["LABELS"], dtype=str)["LABELS"]
    labels = df["LABELS"].astype(str).map(lambda s: ";".join(c.strip() for c in s.split(";") if c.strip()))
    bad = np.flatnonzero((labels == "").to_numpy())
    if len(bad):
        raise ValueError(
            f"{path}: column 'LABELS' has no code in data row(s) {bad[:5].tolist()}; expected e.g. '401.9;428.0'."
        )
    ids = (
        df["HADM_ID"]
        if "HADM_ID" in df.columns and df["HADM_ID"].is_unique
        else pd.Series(np.arange(len(df)))
    )
    return pd.DataFrame(
        {"row_id": ids.to_numpy(), "TEXT": df["TEXT"].astype(str).to_numpy(), "LABELS": labels.to_numpy()}
    )


def load_standin(path: Path) -> pd.DataFrame:
    """The stand-in corpus as (row_id, TEXT, LABELS); LABELS is the class number ("3")."""
    raw = read_csv(path, what="medical abstracts corpus", hint="Set FUSIONDP_DATA or pass --data_dir.")
    for col in ("condition_label", "medical_abstract"):
        if col not in raw.columns:
            raise ValueError(f"{path}: missing column {col!r}; found {list(raw.columns)}.")
    return pd.DataFrame(
        {
            "row_id": np.arange(len(raw)),
            "TEXT": raw["medical_abstract"].astype(str),
            "LABELS": raw["condition_label"].astype(int).astype(str),
        }
    )
