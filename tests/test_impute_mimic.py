"""impute_mimic.py end to end: the stand-in and caml-mimic inputs, the output contract, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import load_script
from test_infill import assert_no_original, tiny_llama_dir

from fusiondp.datasets.mimic import load_caml
from fusiondp.text.spans import detect_spans

ABSTRACTS = [
    "A {age}-year-old man with chest pain was admitted on March {day}, 1989. He had no fever.",
    "We studied {age} women; the youngest was a 6 yo girl. Serum levels rose in her.",
    "Renal function in {age} patients with stable angina was unchanged after treatment.",
    "Caucasian subjects (age {age}) were followed until June 1991 and their blood tested.",
]

impute_mimic = load_script("impute_mimic")


# ABSTRACTS with every sensitive span's value changed (same type, other value); public text unchanged
# ("{n} women" and "{n} patients" are counts, not ages).
SCRAMBLED = [
    "A {age}-year-old woman with chest pain was admitted on May {day}, 1990. She had no fever.",
    "We studied {n} men; the youngest was a 9 yo boy. Serum levels rose in his.",
    "Renal function in {n} patients with stable angina was unchanged after treatment.",
    "Hispanic subjects (age {age}) were followed until July 1992 and their blood tested.",
]


def abstracts_dir(tmp_path, n=40, *, scrambled=False):
    rows = [
        {
            "condition_label": i % 5 + 1,
            "medical_abstract": (
                SCRAMBLED[i % 4].format(age=70 + i, n=30 + i, day=(i + 5) % 28 + 1)
                if scrambled
                else ABSTRACTS[i % 4].format(age=30 + i, day=i % 28 + 1)
            ),
        }
        for i in range(n)
    ]
    folder = tmp_path / ("scrambled" if scrambled else "medical_abstracts")
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "medical_tc_test.csv", index=False)
    return folder


def run(*argv):
    return impute_mimic.main(impute_mimic.get_args_parser().parse_args([*argv, "--no_progress"]))


def check_contract(out, ds, *, placeholders=False):
    """Row-aligned splits; each hybrid is its note with every span replaced, public text copied exactly.

    ``placeholders``: no LM ran, so no span's original text may survive (a property of these test notes:
    with an LM, a guess equal to the original is kept, since it is a function of public text).
    """
    frames = {s: pd.read_csv(out / f"{ds}_{s}.csv", dtype={"LABELS": str}) for s in
              ("support", "train", "train_imputed", "val", "test")}  # fmt: skip
    for frame in frames.values():
        assert list(frame.columns) == ["row_id", "TEXT", "LABELS"]
    train, hybrid = frames["train"], frames["train_imputed"]
    assert (train["row_id"] == hybrid["row_id"]).all() and (train["LABELS"] == hybrid["LABELS"]).all()
    spans = detect_spans(train["TEXT"].tolist())
    table = pd.read_csv(out / "spans.csv", keep_default_na=False)
    for rid, note, note_spans, text in zip(
        train["row_id"], train["TEXT"], spans, hybrid["TEXT"], strict=True
    ):
        rows = table[table["row_id"] == rid].sort_values("start")
        assert list(zip(rows["start"], rows["end"], strict=True)) == [(s.start, s.end) for s in note_spans]
        rebuilt, pos = [], 0
        for s, rep in zip(note_spans, rows["replacement"], strict=True):
            rebuilt += [note[pos : s.start], str(rep)]
            pos = s.end
        assert "".join([*rebuilt, note[pos:]]) == text
        if placeholders:
            assert_no_original(note, note_spans, text)
    return frames


def test_stand_in_end_to_end_without_lm(tmp_path):
    out = tmp_path / "out"
    info = run("--dataset", "medical_abstracts", "--data_dir", str(abstracts_dir(tmp_path)), "--out_dir",
               str(out), "--lm", "none")  # fmt: skip
    frames = check_contract(out, "medical_abstracts", placeholders=True)
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


class GuessingInfiller:
    """A stand-in for CausalLMInfiller: a fixed guess per span type, read from the prompt alone.

    Its age guess "6 yo" and date guess "June 1991" equal original spans of the ABSTRACTS notes.
    """

    def __init__(self, *, cache_path, **_settings) -> None:
        self.cache_path, self.generated, self.seconds = cache_path, 0, 0.0

    def settings(self) -> dict:
        return {"max_new_tokens": 10, "temperature": 0.0}

    def __call__(self, prompts):
        self.generated += len(prompts)
        self.seconds += 1e-3
        return [
            " 6 yo" if "short age" in p else " June 1991" if "short date" in p else " Jones" for p in prompts
        ]


def test_hybrids_and_imputation_info_do_not_depend_on_original_span_values(tmp_path, monkeypatch):
    """Red-team item: scramble every span's value; the hybrid notes and the recorded info stay the same.

    The LM guess equals the original in some notes ("6 yo", "June 1991"): it is kept, and no count of
    such coincidences (a function of the original values) reaches imputation_info.json.
    """
    monkeypatch.setattr(impute_mimic, "load_causal_lm", lambda name, **_kw: (None, None, f"fake {name}"))
    monkeypatch.setattr(impute_mimic, "CausalLMInfiller", GuessingInfiller)
    runs = {}
    for scrambled in (False, True):
        out = tmp_path / f"out_{scrambled}"
        info = run("--data_dir", str(abstracts_dir(tmp_path, scrambled=scrambled)), "--out_dir", str(out),
                   "--lm", "guess")  # fmt: skip
        check_contract(out, "medical_abstracts")
        hybrid = pd.read_csv(out / "medical_abstracts_train_imputed.csv")
        recorded = json.loads((out / "imputation_info.json").read_text())
        assert recorded["replaced_by_lm"] == info["lm_spans"] > 0  # every guess kept
        timing = ("source", "detect_seconds", "seconds", "lm_spans_per_second")
        runs[scrambled] = (hybrid, {k: v for k, v in recorded.items() if k not in timing})
    original, scrambled = runs[False], runs[True]
    pd.testing.assert_frame_equal(original[0], scrambled[0])
    assert original[1] == scrambled[1]
    texts = " ".join(original[0]["TEXT"])
    assert "6 yo" in texts and "June 1991" in texts and "[AGE]" not in texts


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
    frames = check_contract(out, "mimic", placeholders=True)
    assert info["splits"] == {"support": 1, "train": 3, "val": 2, "test": 3}
    assert list(frames["train"]["row_id"]) == [101, 102, 103]
    assert list(frames["train"]["LABELS"]) == ["428.0;401.9", "038.9", "486;401.9"]
    assert frames["train_imputed"]["TEXT"][1] == "[DEID] is a [AGE] person with sepsis. [RECORD]"
    assert set(info["span_counts"]) == {"age", "date", "deid", "pronoun", "record", "sex"}


def test_caml_codes_stay_text(tmp_path):
    path = caml(tmp_path, "dev_50.csv", [(1, "note one", "038.9"), (2, "note two", "401.9")])
    assert list(load_caml(path, split="dev")["LABELS"]) == ["038.9", "401.9"]


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
        load_caml(path, split="train")
    assert str(path) in str(err.value)


def test_empty_file_and_missing_arguments_are_clear_errors(tmp_path):
    empty = tmp_path / "train_50.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="cannot be read as CSV"):
        load_caml(empty, split="train")
    with pytest.raises(ValueError, match="needs --dev_csv, --test_csv"):
        run("--dataset", "mimic", "--train_csv", str(empty), "--lm", "none", "--out_dir", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="MIMIC dev file not found"):
        load_caml(tmp_path / "nope.csv", split="dev")
