"""Privacy of the notes pipeline under sample-level DP (dpsgd) and the notes' δ default.

Under dpsgd's add/remove relation a whole training note is private, so nothing the run fits or records
(vocabulary, embeddings, label set, ``vocab_size``) may depend on the training notes; and δ must sit
well below 1/N, since (ε, 1/N)-DP allows releasing one whole note.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script
from test_text_data import make_note_frames, write_notes_dir

from fusiondp.datasets import mimic as mimic_facts
from fusiondp.text.data import minilm_folder, prepare_text, read_label_list

STAND_IN_LABELS = (
    "condition_label,condition_name\n1,neoplasms\n2,digestive system diseases\n"
    "3,nervous system diseases\n4,cardiovascular diseases\n5,general pathological conditions\n"
)

mimic_script = load_script("train_fusiondp_mimic")


def _args(data_dir, *extra: str, dataset: str = "medical_abstracts"):
    fixed = ["--dataset", dataset, "--data_dir", str(data_dir), "--epochs", "0.2", "--batch_size", "4"]
    return mimic_script.get_args_parser().parse_args([*fixed, "--max_len", "20", "--no_progress", *extra])


@pytest.fixture
def captured(monkeypatch):
    """Replace training by a recorder: what main() hands to run_experiment is what the run would use."""
    calls: list[dict] = []

    def fake_run(args, *, data, extra_record=None, **_):
        calls.append({"args": args.settings(), "data": data, "extra": extra_record or {}})
        return {"mode": args.mode, "delta": args.delta, **(extra_record or {})}

    monkeypatch.setattr(mimic_script, "run_experiment", fake_run)
    return calls


@pytest.fixture
def public_data_root(tmp_path, monkeypatch):
    """$FUSIONDP_DATA with the stand-in's public class list (the corpus's medical_tc_labels.csv)."""
    root = tmp_path / "shared_data"
    (root / "medical_abstracts").mkdir(parents=True)
    (root / "medical_abstracts" / "medical_tc_labels.csv").write_text(STAND_IN_LABELS)
    monkeypatch.setenv("FUSIONDP_DATA", str(root))
    return root


def _with_one_more_note(frames: dict, *, text: str, label: str) -> dict:
    note = pd.DataFrame({"row_id": [999], "TEXT": [text], "LABELS": [label]})
    out = dict(frames)
    for split in ("train", "train_imputed"):  # the hybrid note of a new note is new too
        out[split] = pd.concat([frames[split], note], ignore_index=True)
    return out


def test_dpsgd_fits_nothing_on_the_training_notes(tmp_path, captured, public_data_root):
    """Adding one training note with a new word and a new label changes nothing fitted or recorded."""
    pytest.importorskip("transformers")  # dpsgd's default: MiniLM's tokenizer and table
    frames = make_note_frames()
    plus = _with_one_more_note(frames, text="patient zqxjvorb fever quokkaemia class4", label="4")
    a_dir = write_notes_dir(tmp_path / "a", frames)
    b_dir = write_notes_dir(tmp_path / "b", plus)
    mimic_script.main(_args(a_dir, "--mode", "dpsgd"))
    mimic_script.main(_args(b_dir, "--mode", "dpsgd"))
    a, b = captured
    assert a["data"].num_rows + 1 == b["data"].num_rows
    assert a["data"].vocab == b["data"].vocab
    assert torch.equal(a["data"].embeddings, b["data"].embeddings)
    assert a["data"].classes == b["data"].classes == ["1", "2", "3", "4", "5"]
    for key in ("labels", "text", "vocabulary_source", "label_source"):
        assert json.dumps(a["extra"][key]) == json.dumps(b["extra"][key]), key
    assert a["extra"]["text"]["vocab_size"] == len(a["data"].vocab)
    assert a["args"]["embeddings"] == "minilm" and "public" in a["extra"]["vocabulary_source"]
    # The new note's label is in the public list, so its training target is still encoded.
    assert b["data"].y[-1].tolist() == [0, 0, 0, 1, 0]


def test_feature_level_modes_keep_the_hybrid_vocabulary(tmp_path, captured, public_data_root):
    """naive_fusion and the split modes protect only sensitive spans: the hybrid notes stay public."""
    folder = write_notes_dir(tmp_path / "d", make_note_frames())
    for mode in ("naive_fusion", "fusiondp"):
        mimic_script.main(_args(folder, "--mode", mode, "--embedding_dim", "8"))
    for call in captured:
        assert call["args"]["embeddings"] == "word2vec"
        assert call["extra"]["vocabulary_source"] == "hybrid training notes only"
        assert call["data"].classes == ["1", "2", "3"]  # from the hybrid notes' labels (public here)
    labels = public_data_root / "medical_abstracts" / "medical_tc_labels.csv"
    mimic_script.main(
        _args(folder, "--mode", "fusiondp", "--embedding_dim", "8", "--labels_file", str(labels))
    )
    assert captured[-1]["data"].classes == ["1", "2", "3", "4", "5"]  # a fixed list serves any mode
    assert captured[-1]["extra"]["label_source"] == f"public list {labels}"


def test_sample_level_refuses_what_it_cannot_make_public(tmp_path, captured, public_data_root):
    folder = write_notes_dir(tmp_path / "d", make_note_frames())
    with pytest.raises(ValueError, match=r"--embeddings word2vec.*dpsgd"):
        mimic_script.main(_args(folder, "--mode", "dpsgd", "--embeddings", "word2vec"))
    with pytest.raises(ValueError, match=r"--min_count 2.*dpsgd"):
        mimic_script.main(_args(folder, "--mode", "dpsgd", "--min_count", "2"))
    mimic_dir = write_notes_dir(tmp_path / "m", make_note_frames(), dataset="mimic")
    with pytest.raises(ValueError, match=r"--labels_file.*TOP_50_CODES"):
        mimic_script.main(_args(mimic_dir, "--mode", "dpsgd", dataset="mimic"))
    missing = public_data_root / "medical_abstracts" / "medical_tc_labels.csv"
    missing.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"medical_tc_labels\.csv does not exist\. Pass --labels_file"
    ):
        mimic_script.main(_args(folder, "--mode", "dpsgd"))
    assert not captured


def test_mimic_dpsgd_takes_a_public_code_list(tmp_path, captured):
    """caml-mimic's TOP_50_CODES.csv is headerless, one code a line; codes outside it are ignored."""
    frames = make_note_frames()
    frames["train"].loc[0, "LABELS"] = "038.9;V58.61"
    frames["train_imputed"].loc[0, "LABELS"] = "038.9;V58.61"
    folder = write_notes_dir(tmp_path / "m", frames, dataset="mimic")
    codes = tmp_path / "TOP_50_CODES.csv"
    codes.write_text("401.9\n038.9\n1\n2\n3\n")
    mimic_script.main(_args(folder, "--mode", "dpsgd", "--labels_file", str(codes), dataset="mimic"))
    (call,) = captured
    assert call["data"].classes == ["401.9", "038.9", "1", "2", "3"]
    assert call["data"].y[0].tolist() == [0, 1, 0, 0, 0]  # V58.61 is not in the list
    assert call["extra"]["label_source"] == f"public list {codes}"


def test_minilm_public_vocabulary_is_the_whole_table():
    pytest.importorskip("transformers")
    table = (minilm_folder() / "vocab.txt").read_text().splitlines()
    frames = make_note_frames(n_train=10)
    data = prepare_text(frames, embeddings="minilm", vocabulary="public", classes=["1", "2", "3"], max_len=40)
    assert data.vocab == ["<pad>", "<unk>", *table] and data.info["vocab_size"] == len(table) + 2
    assert data.info["coverage"] == 1.0 and data.info["tokenizer"] == "wordpiece"
    assert data.embeddings.shape == (len(table) + 2, 384) and not data.embeddings[:2].any()
    with pytest.raises(ValueError, match="classes fixed in advance"):
        prepare_text(frames, embeddings="minilm", vocabulary="public")


def test_read_label_list_formats_and_errors(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(STAND_IN_LABELS)
    assert read_label_list(path) == ["1", "2", "3", "4", "5"]
    path.write_text("401.9\n038.90\n\nV58.61\n")
    assert read_label_list(path) == ["401.9", "038.90", "V58.61"]  # text, leading zeros kept
    path.write_text("401.9\n038.9\n401.9\n")
    with pytest.raises(ValueError, match=r"labels\.csv.*'401.9'.*twice"):
        read_label_list(path)
    path.write_text("code\n")
    with pytest.raises(ValueError, match=r"labels\.csv.*no label"):
        read_label_list(path)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        read_label_list(tmp_path / "nowhere.csv")


def test_public_vocabulary_from_a_vectors_file_ignores_the_notes(tmp_path):
    words = ["patient", "fever", "zebra"]
    np.save(tmp_path / "emb.npy", np.arange(9, dtype=np.float32).reshape(3, 3))
    (tmp_path / "emb.vocab.txt").write_text("\n".join(words) + "\n")
    frames = make_note_frames()
    other = make_note_frames(seed=7)
    kwargs = dict(embeddings=str(tmp_path / "emb.npy"), vocabulary="public", classes=["1", "2", "3"])
    a, b = prepare_text(frames, **kwargs), prepare_text(other, **kwargs)
    assert a.vocab == b.vocab == ["<pad>", "<unk>", *words] and torch.equal(a.embeddings, b.embeddings)
    assert a.info["vocab_size"] == 5 and a.info["min_count"] is None
    with pytest.raises(ValueError, match="word2vec"):
        prepare_text(frames, embeddings="word2vec", vocabulary="public", classes=["1"])
    with pytest.raises(ValueError, match=r"vocabulary 'notes'"):
        prepare_text(frames, embeddings="word2vec", vocabulary="notes")
    with pytest.raises(ValueError, match=r"'2'.*twice"):
        prepare_text(frames, **{**kwargs, "classes": ["1", "2", "2"]})


def test_default_delta_is_well_below_one_over_n(tmp_path, captured, public_data_root):
    """Default δ = min(1e-5, 1/(10 N)): δ·N ≤ 0.1, a tenth of the reference's 1 (N = 40 here)."""
    folder = write_notes_dir(tmp_path / "d", make_note_frames())
    record = mimic_script.main(_args(folder, "--mode", "fusiondp", "--embedding_dim", "8"))
    assert record["delta"] == 1e-5 and record["delta_times_n"] == pytest.approx(40e-5)
    assert record["delta_times_n"] <= 0.1
    assert "min(1e-5, 1/(10 N))" in record["delta_rule"]
    for n in (40, 2024, 8066, 10**5, 10**7):
        delta, _ = mimic_facts.resolve_delta(delta=None, one_over_n=False, num_rows=n)
        assert delta * n <= 0.1 + 1e-12


def test_reference_delta_is_exactly_one_over_n(tmp_path, captured, public_data_root):
    folder = write_notes_dir(tmp_path / "d", make_note_frames())
    record = mimic_script.main(_args(folder, "--mode", "dpsgd", "--delta_one_over_n"))
    assert record["delta"] == 1 / 40 and record["delta_times_n"] == 1.0
    assert "reference" in record["delta_rule"]
    given = mimic_script.main(_args(folder, "--mode", "dpsgd", "--delta", "1e-3"))
    assert given["delta"] == 1e-3 and given["delta_times_n"] == pytest.approx(0.04)
    with pytest.raises(ValueError, match=r"--delta 0.001.*--delta_one_over_n"):
        mimic_script.main(_args(folder, "--mode", "dpsgd", "--delta", "1e-3", "--delta_one_over_n"))
    with pytest.raises(ValueError, match=r"--delta must be in \(0, 1\), got 1.5"):
        mimic_script.main(_args(folder, "--mode", "dpsgd", "--delta", "1.5"))
