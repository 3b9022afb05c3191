"""impute_mimic.py end to end: the stand-in and caml-mimic inputs, the output contract, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_infill import assert_no_original, tiny_llama_dir

import impute_mimic
from fusiondp.spans import detect_spans

ABSTRACTS = [
    "A {age}-year-old man with chest pain was admitted on March {day}, 1989. He had no fever.",
    "We studied {age} women; the youngest was a 6 yo girl. Serum levels rose in her.",
    "Renal function in {age} patients with stable angina was unchanged after treatment.",
    "Caucasian subjects (age {age}) were followed until June 1991 and their blood tested.",
]


def abstracts_dir(tmp_path, n=40):
    rows = [
        {
            "condition_label": i % 5 + 1,
            "medical_abstract": ABSTRACTS[i % 4].format(age=30 + i, day=i % 28 + 1),
        }
        for i in range(n)
    ]
    folder = tmp_path / "medical_abstracts"
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "medical_tc_test.csv", index=False)
    return folder


def run(*argv):
    return impute_mimic.main(impute_mimic.get_args_parser().parse_args([*argv, "--no_progress"]))


def check_contract(out, ds):
    frames = {s: pd.read_csv(out / f"{ds}_{s}.csv", dtype={"LABELS": str}) for s in
              ("support", "train", "train_imputed", "val", "test")}  # fmt: skip
    for frame in frames.values():
        assert list(frame.columns) == ["row_id", "TEXT", "LABELS"]
    train, hybrid = frames["train"], frames["train_imputed"]
    assert (train["row_id"] == hybrid["row_id"]).all() and (train["LABELS"] == hybrid["LABELS"]).all()
    spans = detect_spans(train["TEXT"].tolist())
    for note, note_spans, text in zip(train["TEXT"], spans, hybrid["TEXT"], strict=True):
        assert_no_original(note, note_spans, text)
    return frames


def test_stand_in_end_to_end_without_lm(tmp_path):
    out = tmp_path / "out"
    info = run("--dataset", "medical_abstracts", "--data_dir", str(abstracts_dir(tmp_path)), "--out_dir",
               str(out), "--lm", "none")  # fmt: skip
    frames = check_contract(out, "medical_abstracts")
    assert info["splits"] == {"support": 4, "train": 28, "val": 4, "test": 4}
    ids = [set(frames[s]["row_id"]) for s in ("support", "train", "val", "test")]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 40  # disjoint, complete
    assert set(frames["train"]["LABELS"]) <= {"1", "2", "3", "4", "5"}
    recorded = json.loads((out / "imputation_info.json").read_text())
    assert recorded["lm_is_placeholder_baseline"] and recorded["fallback_rate_of_lm_spans"] == 1.0
    spans = pd.read_csv(out / "spans.csv")
    assert list(spans.columns) == ["row_id", "start", "end", "type", "text", "replacement", "source"]
    counts = pd.read_csv(out / "span_counts.csv").set_index("type")["spans"]
    assert counts.to_dict() == spans["type"].value_counts().to_dict() and counts["age"] >= 14
    # The same seed gives the same split; the hybrid of a note with an age shows the placeholder.
    assert "[AGE]" in " ".join(frames["train_imputed"]["TEXT"])


def test_stand_in_with_a_transformers_lm_folder_and_its_cache(tmp_path):
    folder = tiny_llama_dir()
    out = tmp_path / "out"
    argv = ["--data_dir", str(abstracts_dir(tmp_path, n=12)), "--out_dir", str(out), "--lm", str(folder),
            "--max_new_tokens", "4"]  # fmt: skip
    info = run(*argv)
    check_contract(out, "medical_abstracts")
    # One generation per distinct prompt: notes of one template with their spans masked read the same.
    assert info["lm"] == str(folder) and 0 < info["lm_prompts_generated"] < info["lm_spans"] == 12
    assert info["lm_spans_per_second"] > 0
    assert run(*argv)["lm_prompts_generated"] == 0  # resumed from <out_dir>/cache


def caml(tmp_path, name, rows, columns=("HADM_ID", "TEXT", "LABELS")):
    path = tmp_path / name
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


NOTES = [
    (101, "Pt is a 72 yo male admitted [**2101-3-4**]. He had CHF.", "428.0;401.9"),
    (102, "[**Known lastname 123**] is a 60 y/o woman with sepsis. MRN: 1234567", "038.9"),
    (103, "Patient with pneumonia, discharged on 3/14/2150.", "486; 401.9"),
]


def test_mimic_caml_files_end_to_end(tmp_path):
    paths = {s: caml(tmp_path, f"{s}_50.csv", NOTES) for s in ("train", "dev", "test")}
    out = tmp_path / "out"
    info = run("--dataset", "mimic", "--train_csv", str(paths["train"]), "--dev_csv", str(paths["dev"]),
               "--test_csv", str(paths["test"]), "--out_dir", str(out), "--lm", "none",
               "--mimic_support_rows", "1")  # fmt: skip
    frames = check_contract(out, "mimic")
    assert info["splits"] == {"support": 1, "train": 3, "val": 2, "test": 3}
    assert list(frames["train"]["row_id"]) == [101, 102, 103]
    assert list(frames["train"]["LABELS"]) == ["428.0;401.9", "038.9", "486;401.9"]
    assert frames["train_imputed"]["TEXT"][1] == "[DEID] is a [AGE] person with sepsis. [RECORD]"
    assert set(info["span_counts"]) == {"age", "date", "deid", "pronoun", "record", "sex"}


def test_caml_codes_stay_text(tmp_path):
    path = caml(tmp_path, "dev_50.csv", [(1, "note one", "038.9"), (2, "note two", "401.9")])
    assert list(impute_mimic.load_caml(path, split="dev")["LABELS"]) == ["038.9", "401.9"]


@pytest.mark.parametrize(
    ("columns", "rows", "message"),
    [
        (("HADM_ID", "LABELS"), [(1, "401.9")], "missing column 'TEXT'"),
        (("HADM_ID", "TEXT"), [(1, "note")], "missing column 'LABELS'"),
        (("TEXT", "LABELS"), [], "no rows"),
        (
            ("TEXT", "LABELS"),
            [("a note", "401.9"), ("another", None)],
            r"'LABELS' is empty in data row\(s\) \[1\]",
        ),
        (("TEXT", "LABELS"), [("a note", " ; ")], "has no code in data row"),
        (("TEXT", "LABELS"), [("  ", "401.9")], "'TEXT' is empty"),
    ],
)
def test_caml_loader_rejects_bad_input_naming_file_column_and_row(tmp_path, columns, rows, message):
    path = caml(tmp_path, "train_50.csv", rows, columns)
    with pytest.raises(ValueError, match=message) as err:
        impute_mimic.load_caml(path, split="train")
    assert str(path) in str(err.value)


def test_empty_file_and_missing_arguments_are_clear_errors(tmp_path):
    empty = tmp_path / "train_50.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="cannot be read as CSV"):
        impute_mimic.load_caml(empty, split="train")
    with pytest.raises(ValueError, match="needs --dev_csv, --test_csv"):
        run("--dataset", "mimic", "--train_csv", str(empty), "--lm", "none", "--out_dir", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="MIMIC dev file not found"):
        impute_mimic.load_caml(tmp_path / "nope.csv", split="dev")
