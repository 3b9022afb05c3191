"""The imputed-note loader, the hybrid-only vocabulary and embeddings, per-batch padding, metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fusiondp.experiment.metrics import multilabel_metrics
from fusiondp.text.data import PAD, UNK, load_note_splits, prepare_text, read_notes

WORDS = "patient fever cough pain chest renal liver tumor therapy dose week trial cells blood".split()
SENSITIVE = ["male", "female", "caucasian", "72-year-old", "hispanic", "woman"]


def make_note_frames(n_train: int = 40, n_eval: int = 12, seed: int = 0, classes: int = 3) -> dict:
    """Notes whose label shows in their words; hybrid notes have their 'sensitive' words rewritten."""
    rng = np.random.default_rng(seed)

    def notes(n: int, start: int) -> pd.DataFrame:
        labels = rng.integers(1, classes + 1, n)
        text = [
            " ".join([*rng.choice(WORDS, rng.integers(5, 25)), f"class{c}", *rng.choice(SENSITIVE, 2)])
            for c in labels
        ]
        return pd.DataFrame(
            {"row_id": np.arange(start, start + n), "TEXT": text, "LABELS": labels.astype(str)}
        )

    train = notes(n_train, 0)
    hybrid = train.assign(
        TEXT=[t.replace("male", "person").replace("caucasian", "adult") for t in train.TEXT]
    )
    return {
        "support": notes(6, 1000),
        "train": train,
        "train_imputed": hybrid,
        "val": notes(n_eval, 2000),
        "test": notes(n_eval, 3000),
    }


def write_notes_dir(folder, frames: dict, dataset: str = "medical_abstracts"):
    folder.mkdir(parents=True, exist_ok=True)
    for split, frame in frames.items():
        frame.to_csv(folder / f"{dataset}_{split}.csv", index=False)
    return folder


def test_loader_reads_and_checks_alignment(tmp_path):
    folder = write_notes_dir(tmp_path / "d", make_note_frames())
    frames = load_note_splits(folder, dataset="medical_abstracts")
    assert len(frames["train"]) == 40 and list(frames["val"].columns) == ["row_id", "TEXT", "LABELS"]

    bad = make_note_frames()
    bad["train_imputed"].loc[7, "LABELS"] = "99"
    write_notes_dir(tmp_path / "b", bad)
    with pytest.raises(ValueError, match=r"not row-aligned.*'LABELS'.*row 7"):
        load_note_splits(tmp_path / "b", dataset="medical_abstracts")

    short = make_note_frames()
    short["train_imputed"] = short["train_imputed"].iloc[:-1]
    write_notes_dir(tmp_path / "s", short)
    with pytest.raises(ValueError, match="39 rows but"):
        load_note_splits(tmp_path / "s", dataset="medical_abstracts")

    with pytest.raises(FileNotFoundError, match=r"Run impute_mimic\.py first"):
        load_note_splits(tmp_path / "missing", dataset="mimic")


def test_read_notes_names_file_column_and_row(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"row_id": [1, 2], "TEXT": ["a b", "c"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"x.csv: missing column\(s\) \['LABELS'\]"):
        read_notes(path, what="notes")
    pd.DataFrame({"row_id": [1, 2, 3], "TEXT": ["a b", " ", "c"], "LABELS": ["1", "2", "3"]}).to_csv(
        path, index=False
    )
    with pytest.raises(ValueError, match=r"x.csv: column 'TEXT' is empty in data row\(s\) \[1\]"):
        read_notes(path, what="notes")


def test_vocabulary_from_hybrid_only_and_labels_multi_hot():
    frames = make_note_frames()
    data = prepare_text(frames, embeddings="word2vec", dim=8)
    assert "person" in data.vocab and "male" not in data.vocab  # 'male' occurs only in original notes
    assert data.vocab[:2] == ["<pad>", "<unk>"]
    male = next(i for i, t in enumerate(frames["train"].TEXT) if " male" in f" {t}")
    assert UNK in data.original[male].tolist()
    assert data.classes == ["1", "2", "3"] and data.y.sum(1).eq(1).all()
    short = prepare_text(frames, embeddings="word2vec", dim=8, max_len=5)
    assert max(len(n) for n in short.original + short.hybrid + short.test) == 5
    assert data.embeddings.shape == (len(data.vocab), 8) and not data.embeddings[PAD].any()
    assert data.info["coverage"] == 1.0 and data.info["tokenizer"] == "words"


def test_scrambled_original_notes_change_no_public_input():
    frames = make_note_frames()
    a = prepare_text(frames, embeddings="word2vec", dim=8, seed=3)
    scrambled = dict(frames)
    rng = np.random.default_rng(1)
    scrambled["train"] = frames["train"].assign(
        TEXT=[" ".join(rng.permutation([*t.split(), "secretname", "1961"])) for t in frames["train"].TEXT]
    )
    b = prepare_text(scrambled, embeddings="word2vec", dim=8, seed=3)
    assert a.vocab == b.vocab and a.classes == b.classes
    assert torch.equal(a.embeddings, b.embeddings)
    for split in ("hybrid", "val", "test"):
        assert all(torch.equal(x, y) for x, y in zip(getattr(a, split), getattr(b, split), strict=True))
    assert torch.equal(a.y, b.y)
    assert not all(torch.equal(x, y) for x, y in zip(a.original, b.original, strict=True))


def test_batch_pads_views_jointly():
    data = prepare_text(make_note_frames(), embeddings="word2vec", dim=8)
    rows = torch.tensor([3, 0, 5])
    ori, hyb = data.batch(["original", "hybrid"], rows)
    assert ori.shape == hyb.shape
    width = max(len(data.original[i]) for i in rows.tolist())
    width = max(width, *(len(data.hybrid[i]) for i in rows.tolist()))
    assert ori.shape == (3, width)
    assert torch.equal(ori[1, : len(data.original[0])], data.original[0])
    assert (ori[1, len(data.original[0]) :] == PAD).all()
    assert [t.shape for t in data.batch(["hybrid"], torch.tensor([], dtype=torch.long))] == [(0, 1)]
    with pytest.raises(ValueError, match="no noise view"):
        data.batch(["noise"], rows)


def test_minilm_embeddings_offline():
    pytest.importorskip("transformers")
    data = prepare_text(make_note_frames(n_train=10), embeddings="minilm", max_len=40)
    assert data.info["tokenizer"] == "wordpiece" and data.embeddings.shape[1] == 384
    assert data.info["coverage"] == 1.0  # every WordPiece token has a row in MiniLM's table


def test_embeddings_from_npy_file(tmp_path):
    words = ["patient", "fever", "class1"]
    np.save(tmp_path / "emb.npy", np.arange(9, dtype=np.float32).reshape(3, 3))
    (tmp_path / "emb.vocab.txt").write_text("\n".join(words) + "\n")
    data = prepare_text(make_note_frames(), embeddings=str(tmp_path / "emb.npy"))
    row = data.vocab.index("fever")
    assert data.embeddings[row].tolist() == [3.0, 4.0, 5.0]
    assert not data.embeddings[data.vocab.index("cough")].any()  # not in the file: zero vector
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt"):
        np.save(tmp_path / "other.npy", np.zeros((2, 2)))
        prepare_text(make_note_frames(), embeddings=str(tmp_path / "other.npy"))


def test_multilabel_metrics_by_hand():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.6, 0.7], [0.8, 0.1], [0.1, 0.3]])
    m = multilabel_metrics(y, p)
    # predictions [[1,0],[1,1],[1,0],[0,0]]: TP 3, FP 1, FN 1
    assert m["micro_precision"] == pytest.approx(0.75) and m["micro_recall"] == pytest.approx(0.75)
    assert m["micro_f1"] == pytest.approx(0.75)
    # label 0: P 2/3, R 1, F1 0.8; label 1: P 1, R 0.5, F1 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["macro_auc"] == pytest.approx((1.0 + 0.5) / 2)  # label 1: 2 of 4 pairs ordered
    with pytest.raises(ValueError, match="diverged"):
        multilabel_metrics(y, np.full((4, 2), np.nan))


def test_embeddings_from_gensim_keyed_vectors(tmp_path):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=4)
    kv.add_vectors(["fever", "class2"], np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32))
    kv.save(str(tmp_path / "vectors.kv"))
    data = prepare_text(make_note_frames(), embeddings=str(tmp_path / "vectors.kv"))
    assert data.embeddings[data.vocab.index("class2")].tolist() == [5.0, 6.0, 7.0, 8.0]
    assert data.info["embeddings"].endswith("vectors.kv") and 0 < data.info["coverage"] < 1
    with pytest.raises(ValueError, match="unknown format"):
        (tmp_path / "vectors.json").write_text("{}")
        prepare_text(make_note_frames(), embeddings=str(tmp_path / "vectors.json"))
