"""train_fusiondp_mimic.py end to end on tiny notes: every text mode, refusals, the record, privacy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_script
from test_text_data import make_note_frames, write_notes_dir

from fusiondp.datasets import mimic as mimic_facts

mimic_script = load_script("train_fusiondp_mimic")


def _args(data_dir, *extra: str):
    return mimic_script.get_args_parser().parse_args(
        [
            "--dataset",
            "medical_abstracts",
            "--data_dir",
            str(data_dir),
            "--epochs",
            "0.2",
            "--batch_size",
            "4",
            "--public_batch_size",
            "8",
            "--embedding_dim",
            "8",
            "--filters",
            "4",
            "--max_len",
            "20",
            "--no_progress",
            *extra,
        ]
    )


pytestmark = pytest.mark.usefixtures("calibrate_once")  # σ calibrated once per setting (conftest)


@pytest.fixture(scope="module")
def notes_dir(tmp_path_factory):
    folder = write_notes_dir(tmp_path_factory.mktemp("notes"), make_note_frames())
    (folder / "imputation_info.json").write_text(
        json.dumps({"lm": "tiny", "detector": "rules", "x": 1, "span_counts": {"age": 3}})
    )
    # dpsgd's public label list, in the stand-in's medical_tc_labels.csv format.
    (folder / "labels.csv").write_text("condition_label,condition_name\n1,a\n2,b\n3,c\n4,d\n5,e\n")
    return folder


@pytest.mark.parametrize("mode", mimic_facts.TEXT_MODES)
def test_every_text_mode_runs(notes_dir, tmp_path, mode):
    results = tmp_path / "r.jsonl"
    sample_level = mode == "dpsgd"
    if sample_level:
        pytest.importorskip("transformers")  # dpsgd's default: MiniLM's tokenizer and table
    extra = ["--labels_file", str(notes_dir / "labels.csv")] if sample_level else []
    record = mimic_script.main(_args(notes_dir, "--mode", mode, "--results_json", str(results), *extra))
    assert record["mode"] == mode and record["steps"] == 2  # round(0.2 * 40 / 4)
    assert record["delta"] == 1e-5 and record["delta_times_n"] == pytest.approx(4e-4)  # min(1e-5, 1/(10 N))
    for split in ("val", "test"):
        for metric in ("micro_f1", "macro_f1", "micro_precision", "macro_recall", "micro_auc", "macro_auc"):
            assert 0.0 <= record[f"{split}_{metric}"] <= 1.0
    assert record["imputation"] == {"lm": "tiny", "detector": "rules"}
    assert "span_counts" not in json.dumps(record)  # counted on the original notes
    if sample_level:  # whole notes are private: public tokenizer, table and label list
        assert record["text"]["embeddings"].startswith("all-MiniLM-L6-v2")
        assert record["vocabulary_source"].startswith("public") and record["text"]["vocab_size"] > 30000
        assert record["labels"] == ["1", "2", "3", "4", "5"]
    else:
        assert record["text"]["embeddings"] == "word2vec trained on hybrid notes"
        assert record["vocabulary_source"] == "hybrid training notes only"
        assert record["labels"] == ["1", "2", "3"]
    assert (record["sigma"] is not None) == (mode not in ("sgd_ori", "sgd_hybrid"))
    if mode == "fusiondp":
        assert record["c_h_source"].endswith("(public)") and record["c_h"] > 0
    assert json.loads(results.read_text().splitlines()[-1])["mode"] == mode


@pytest.mark.parametrize("mode", ["sgd_pub", "feature-dp", "naive_fusion_pub"])
def test_noise_view_modes_are_refused(notes_dir, mode):
    with pytest.raises(ValueError, match="not available for notes"):
        mimic_script.main(_args(notes_dir, "--mode", mode))


def test_scrambled_original_notes_leave_public_modes_bit_for_bit(notes_dir, tmp_path):
    """sgd_hybrid, and fusiondp with α = 0, never read the original notes: scrambling them changes nothing."""
    frames = make_note_frames()
    rng = np.random.default_rng(5)
    frames["train"] = frames["train"].assign(
        TEXT=[" ".join(rng.permutation([*t.split(), "secret"])) for t in frames["train"].TEXT]
    )
    scrambled = write_notes_dir(tmp_path / "scrambled", frames)
    for extra in (["--mode", "sgd_hybrid"], ["--mode", "fusiondp", "--alpha", "0"]):
        a = mimic_script.main(_args(notes_dir, *extra))
        b = mimic_script.main(_args(scrambled, *extra))
        keys = [k for k in a if k.startswith(("val_", "test_"))]
        assert [a[k] for k in keys] == [b[k] for k in keys]
        assert a["c_h"] == b["c_h"]
    # The fixed α of the reference (no κ cap, which at this tiny N would shrink α to almost nothing).
    fixed = ("--mode", "fusiondp", "--alpha", "1", "--max_private_noise", "0")
    dp_a = mimic_script.main(_args(notes_dir, *fixed))
    dp_b = mimic_script.main(_args(scrambled, *fixed))
    assert dp_a["test_micro_auc"] != dp_b["test_micro_auc"]  # the private term does read them


def test_original_note_lengths_do_not_reach_the_public_path(notes_dir, tmp_path):
    """Longer ORIGINAL notes (no truncation) widen the padded private batch, hence its dropout draws;
    those draws must not shift the random stream of the noise-free public path (fusiondp, α = 0)."""
    frames = make_note_frames()
    frames["train"] = frames["train"].assign(TEXT=[t + " extra words" * 15 for t in frames["train"].TEXT])
    longer = write_notes_dir(tmp_path / "longer", frames)
    extra = ["--mode", "fusiondp", "--alpha", "0", "--max_len", "500", "--dropout", "0.5"]
    a, b = mimic_script.main(_args(notes_dir, *extra)), mimic_script.main(_args(longer, *extra))
    keys = [k for k in a if k.startswith(("val_", "test_"))]
    assert [a[k] for k in keys] == [b[k] for k in keys]


def test_bad_flags_are_refused(notes_dir):
    with pytest.raises(ValueError, match="--max_len must be >= 1"):
        mimic_script.main(_args(notes_dir, "--max_len", "0"))
    with pytest.raises(FileNotFoundError, match=r"Run impute_mimic\.py first"):
        mimic_script.main(_args(notes_dir.parent / "nowhere"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--delta", "1e-6", "--delta_one_over_n"], "not both"),
        (["--delta", "2"], r"--delta must be in \(0, 1\)"),
        (["--model", "encoder", "--embeddings", "minilm"], "is CAML's"),
        (["--sensitive_scale", "2"], "--sensitive_scale 2.0 scales tabular sensitive columns"),
    ],
)
def test_bad_flag_combinations_fail_before_any_data_is_read(tmp_path, monkeypatch, flags, message):
    def never(*args, **kwargs):
        raise AssertionError("notes were read before the flags were checked")

    monkeypatch.setattr(mimic_script, "load_note_splits", never)
    with pytest.raises(ValueError, match=message):
        mimic_script.main(_args(tmp_path / "nowhere", *flags))


def test_notes_train_with_adam_and_a_cosine_schedule(notes_dir):
    record = mimic_script.main(
        _args(notes_dir, "--mode", "fusiondp", "--optimizer", "adam", "--lr_schedule", "cosine")
    )
    assert (record["optimizer"], record["lr_schedule"], record["sensitive_scale"]) == ("adam", "cosine", None)
    assert np.isfinite(record["test_micro_f1"]) and record["args"]["optimizer"] == "adam"


def test_c_h_from_original_notes_is_marked_outside_the_guarantee(notes_dir):
    record = mimic_script.main(_args(notes_dir, "--mode", "fusiondp", "--c_h_from_private"))
    assert "NOT PRIVATE" in record["c_h_source"] and record["c_h"] > 0
    assert record["privacy_guarantee_holds"] is False and record["outside_guarantee"]


def test_propagated_model_spans_void_the_guarantee(notes_dir, tmp_path):
    # Second red-team review: the imputation's --propagate_model_spans never reached the record.
    import shutil

    folder = tmp_path / "propagated"
    shutil.copytree(notes_dir, folder)
    info = json.loads((folder / "imputation_info.json").read_text())
    (folder / "imputation_info.json").write_text(json.dumps({**info, "propagate_model_spans": True}))
    record = mimic_script.main(_args(folder, "--mode", "fusiondp", "--secure_rng"))
    assert record["imputation"]["propagate_model_spans"] is True
    assert record["privacy_guarantee_holds"] is False
    assert any("--propagate_model_spans" in r for r in record["outside_guarantee"])
    plain = mimic_script.main(_args(notes_dir, "--mode", "fusiondp", "--secure_rng"))
    assert plain["privacy_guarantee_holds"] is True


def test_notes_kappa_is_the_reference_alpha_times_the_reference_sigma():
    # κ is derived as for sepsis: the reference α (0.5) times the σ of the MIMIC reference command
    # (ε 5, δ 1e-5, b 256, 20 epochs, 8,066 MIMIC-50 training notes, PLD, zero-out).
    from fusiondp.mechanism.accounting import ZERO_OUT, calibrate_sigma, num_steps

    args = mimic_script.get_args_parser().parse_args([])
    rows = 8066
    sigma = calibrate_sigma(
        epsilon=args.epsilon,
        delta=1e-5,
        sample_rate=args.batch_size / rows,
        steps=num_steps(epochs=args.epochs, num_rows=rows, batch_size=args.batch_size),
        accountant="pld",
        relation=ZERO_OUT,
    )
    assert args.max_private_noise == 0.5
    assert round(args.alpha * sigma, 1) == args.max_private_noise
