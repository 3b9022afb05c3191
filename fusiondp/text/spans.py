"""Sensitive spans in clinical text: a rule-based detector and an optional transformers one.

A span is ``(start, end, type)`` over one note; :func:`detect_spans` returns them sorted and
non-overlapping. Types (``SPAN_TYPES``):

- ``deid``: MIMIC-III de-identification placeholders ``[** ... **]`` (names, places, hospitals,
  shifted dates: everything the MIMIC de-identifier already found; the whole placeholder is a span).
- ``age``: "45-year-old", "45 year old", "6-month-old", "72 years of age", "aged 72", "age 60",
  "ages 20 to 40", "a 6 yo", "72 y.o.", "60 y/o".
- ``sex``: sex and gender words (male, female, man, woman, boy, girl, gentleman, lady, plurals) and
  "Sex: M"/"Sex: F" header fields.
- ``pronoun``: he, she, him, her, his, hers, himself, herself. They are sensitive because they
  state the patient's sex as plainly as "male"/"female" do; leaving them in would make masking the
  sex words pointless. The cost is many spans in case reports (a pronoun can also refer to a
  clinician; we mask those too: a false positive loses a little text, a false negative leaks).
- ``ethnicity``: Caucasian, Hispanic, Latino/Latina, African American, Asian, Native American,
  Pacific Islander; the nouns "whites"/"blacks"; and the adjectives "white"/"black" only in a
  demographic context: before a person or group word ("white male", "black women", "black
  population", "white race"), also across "non-Hispanic", a parenthesised word or a coordination
  ("white non-Hispanic Americans", "black (Zulu) patients", "black and white recipients"). "White
  blood cells", "black stools", "white matter", "White class" and "Wolff-Parkinson-White" are
  clinical, not demographic, and stay public text.
- ``date``: 3/14/1989, 14-03-89, 1989-03-14, March 14, 1989, Mar. 14 1989, 14 March 1989,
  March 1989, March 14 (capitalised month names only: "may" is a verb). Bare years are not dates
  here: HIPAA's Safe Harbor rule keeps years, and abstracts cite study years constantly.
- ``phone``: (617) 555-1234, 617-555-1234, 617.555.1234.
- ``record``: a record/MRN/ID keyword followed by a number: "MRN: 1234567", "Medical Record
  Number 12-34-56", "Unit No: 98765", "patient ID 4433".

Privacy contract of the detector: whether an occurrence is a span is decided from the text around
that occurrence only, by the same rules in every note. It never depends on whether the same string is
a span elsewhere in the note. That is why rule spans are never propagated. The rules already judge
every occurrence of a string. Propagating a rule span could only add an occurrence that the rules
judged non-sensitive in its own context, and the hybrid would then reveal the value. Example: a
detected "white man" would turn "white blood cell" into "[ETHNICITY] blood cell". Span locations and
types are public (docs/privacy.md); a span's value must not be readable from them.

:func:`propagate` (every other whole-word occurrence of a span's text is masked as well) is applied only
to spans found by a model detector, and only on request (``propagate_model_spans=True``). It masks the
model's misses of a name it found once. But it masks a word BECAUSE its value is a span elsewhere in
the note, so the location of a propagated span can reveal that value ("[NAME] stools" if the name is
"Black"). That is outside the guarantee, and ``impute_mimic.py`` records the choice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

SPAN_TYPES = ("deid", "age", "sex", "pronoun", "ethnicity", "date", "phone", "record")
DETECTORS = ("rules", "hf", "both")

_MONTH = (
    r"(?:Jan(?:uary|\.)?|Feb(?:ruary|\.)?|Mar(?:ch|\.)?|Apr(?:il|\.)?|May|June?|July?|Aug(?:ust|\.)?"
    r"|Sep(?:t(?:ember)?)?\.?|Oct(?:ober|\.)?|Nov(?:ember|\.)?|Dec(?:ember|\.)?)"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]\d\d|2[01]\d\d)"
_PERSON = (
    r"(?:m[ae]n|wom[ae]n|males?|females?|patients?|subjects?|individuals?|persons?|people|child(?:ren)?"
    r"|boys?|girls?|adults?|americans?|adolescents?|infants?|volunteers?|participants?"
    r"|populations?|communit(?:y|ies)|races?|ethnicity|recipients?|donors?|cohorts?|residents?)"
)
# Every value the ethnicity rule itself detects, multi-word ones included: a coordination partner
# ("black or African American patients") must count whatever its value is, or the masking of the
# colour word would tell which kind of value stands beside it.
_ETHNIC_WORD = (
    r"(?:white|black|(?:non-?)?hispanic|(?:non-?)?caucasian|asian(?:[-\s]american)?|latin[oa]"
    r"|african[-\s]american|native\s+american|pacific\s+islander)s?"
)
# What must follow "white"/"black" for it to be an ethnicity. It is read at each occurrence, so the
# decision is the same in every note: an optional coordination ("black and [three] white"), an optional
# "non-Hispanic" or parenthesised word ("black (Zulu) patients"), then a person or group word.
_ETHNIC_CONTEXT = (
    rf"(?:\s+(?:and|or)\s+(?:\w+\s+)?{_ETHNIC_WORD})?(?:\s+(?:(?:non-?)?hispanic|\(\w+\)))?\s+{_PERSON}\b"
)
_I = re.IGNORECASE

# (type, compiled pattern); the span is the whole match. Order = priority when matches overlap
# at the same start (the longest match wins first; see _resolve).
RULES: list[tuple[str, re.Pattern]] = [
    ("deid", re.compile(r"\[\*\*.*?\*\*\]")),
    (
        "record",
        re.compile(
            r"\b(?:MRN|medical\s+record(?:\s+(?:number|no\.?))?|record\s+(?:number|no\.?|#)|unit\s+no\.?"
            r"|admission\s+no\.?|patient\s+id|chart\s+(?:number|no\.?))\s*[:#]?\s*\d[\d-]{3,}\b",
            _I,
        ),
    ),
    ("phone", re.compile(r"(?:\(\d{3}\)\s*|\b\d{3}[-.\s])\d{3}[-.]\d{4}\b")),
    ("date", re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b")),
    ("date", re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}\b")),
    ("date", re.compile(rf"\b{_MONTH},?\s+{_YEAR}\b")),
    ("date", re.compile(rf"\b{_MONTH}\s+{_DAY}\b(?!\s*(?:mg|ml|%|patients))")),
    ("date", re.compile(r"\b(?:1[89]|2[01])\d\d[-/](?:0?[1-9]|1[0-2])[-/](?:0?[1-9]|[12]\d|3[01])\b")),
    ("date", re.compile(r"\b\d{1,2}[/-]\d{1,2}[/-](?:\d{4}|\d{2})\b(?![/-]\d)")),
    (
        "age",
        re.compile(
            r"\b\d{1,3}(?:\.\d+)?(?:\s*-\s*|\s+)(?:years?|yrs?|months?|mos?|weeks?|wks?|days?)(?:\s*-\s*|\s+)old\b",
            _I,
        ),
    ),
    ("age", re.compile(r"\b\d{1,3}\s+(?:years?|yrs?)\s+of\s+age\b", _I)),
    ("age", re.compile(r"\b\d{1,3}\s*(?:yo|y\.o\.?|y/o)(?![A-Za-z0-9])", _I)),
    (
        "age",
        re.compile(
            r"\bage[ds]?\s*(?:of\s+|=\s*|:\s*)?\d{1,3}(?:\.\d+)?(?:\s*(?:-|to|and)\s*\d{1,3})?"
            r"(?:\s*(?:years?|yrs?|y)\b(?:\s+old\b)?)?",
            _I,
        ),
    ),
    (
        "ethnicity",
        re.compile(
            r"\b(?:(?:non-?)?caucasians?|(?:non-?)?hispanics?|latin[oa]s?|african[-\s]americans?"
            r"|asian(?:[-\s]americans?|s)?|native\s+americans?|pacific\s+islanders?"
            r"|(?<!egg\s)(?:white|black)s(?!\s+of\s+the\s+eyes?\b)"  # the nouns, not egg whites
            rf"|(?:white|black)s?(?={_ETHNIC_CONTEXT}))\b",
            _I,
        ),
    ),
    ("sex", re.compile(r"\bsex\s*:\s*[MF]\b", _I)),
    (
        "sex",
        re.compile(r"\b(?:males?|females?|m[ae]n|wom[ae]n|boys?|girls?|gentlem[ae]n|lady|ladies)\b", _I),
    ),
    ("pronoun", re.compile(r"\b(?:he|she|him|her|his|hers|himself|herself)\b", _I)),
]


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    type: str

    def text(self, note: str) -> str:
        return note[self.start : self.end]


def word_pattern(text: str) -> re.Pattern:
    """``text`` as a whole word, case-insensitive: not preceded or followed by a letter or digit."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(text)}(?![A-Za-z0-9])", _I)


def _resolve(candidates: Iterable[tuple[int, int, int, str]]) -> list[Span]:
    """Non-overlapping spans: earliest start first, then the longest, then rule priority."""
    kept: list[Span] = []
    end = -1
    for start, stop, _prio, kind in sorted(candidates, key=lambda c: (c[0], -(c[1] - c[0]), c[2])):
        if start >= end and stop > start:
            kept.append(Span(start, stop, kind))
            end = stop
    return kept


def rule_spans(note: str) -> list[Span]:
    candidates = []
    for prio, (kind, pattern) in enumerate(RULES):
        for m in pattern.finditer(note):
            start, stop = m.span()
            while stop > start and note[stop - 1].isspace():  # patterns with optional tails
                stop -= 1
            candidates.append((start, stop, prio, kind))
    return _resolve(candidates)


def propagate(note: str, spans: Sequence[Span]) -> list[Span]:
    """Add every other whole-word occurrence of each span's text as a span of the same type.

    Privacy: an added span exists because its value is a span elsewhere in the note. Its location can
    therefore reveal that value, so :func:`detect_spans` applies this only to model spans and only on
    request, never to rule spans (see the module docstring).
    """
    candidates = [(s.start, s.end, 0, s.type) for s in spans]
    seen = set()
    for s in spans:
        key = s.text(note).lower()
        if key in seen:
            continue
        seen.add(key)
        for m in word_pattern(s.text(note)).finditer(note):
            candidates.append((m.start(), m.end(), 1, s.type))
    return _resolve(candidates)


class HFSpanDetector:
    """A transformers token-classification model (e.g. a de-identification NER model) as a detector.

        ``model`` is a local folder or a Hub name (needs internet the first time). Entity groups are
        mapped to span types by lower-cased name through ``type_map``; unmapped groups keep their own
        name ("O" predictions are never spans). Long notes are read in overlapping windows (the pipeline's
    ``stride``), so no span is lost to truncation; the tokenizer must be a fast one.
    """

    DEFAULT_TYPE_MAP: ClassVar[dict[str, str]] = {
        "age": "age",
        "date": "date",
        "phone": "phone",
        "contact": "phone",
        "id": "record",
        "idnum": "record",
        "medicalrecord": "record",
    }

    def __init__(self, model: str, *, type_map: dict[str, str] | None = None, device: int = -1) -> None:
        from transformers import pipeline

        self.type_map = {**self.DEFAULT_TYPE_MAP, **(type_map or {})}
        self.pipe = pipeline(
            "token-classification", model=model, aggregation_strategy="simple", device=device
        )
        if not self.pipe.tokenizer.is_fast:
            raise ValueError(
                f"detector model {model!r} has a slow tokenizer: the pipeline then truncates long notes and "
                "would miss their later spans. Use a model with a fast (tokenizers) tokenizer."
            )
        # Without a stride the pipeline silently truncates a note to model_max_length tokens, and every
        # span after that would stay in the hybrid: overlapping windows cover the whole note.
        self.stride = max(1, min(64, self.pipe.tokenizer.model_max_length // 4))
        self.model_name = model

    def __call__(self, notes: Sequence[str], *, batch_size: int = 8) -> list[list[Span]]:
        out = []
        results = self.pipe(list(notes), batch_size=batch_size, stride=self.stride) if notes else []
        for note, entities in zip(notes, results, strict=True):
            spans = []
            for ent in entities:
                group = str(ent.get("entity_group", ent.get("entity", ""))).lower()
                if group in ("o", "") or ent["end"] <= ent["start"]:
                    continue
                start, stop = int(ent["start"]), int(ent["end"])
                while stop > start and note[stop - 1].isspace():
                    stop -= 1
                while start < stop and note[start].isspace():
                    start += 1
                spans.append((start, stop, 0, self.type_map.get(group, group)))
            out.append(_resolve(spans))
        return out


def detect_spans(
    notes: Sequence[str],
    *,
    detector: str = "rules",
    hf_detector: Callable[[Sequence[str]], list[list[Span]]] | None = None,
    propagate_model_spans: bool = False,
) -> list[list[Span]]:
    """Sorted, non-overlapping sensitive spans of each note.

    ``detector``: ``rules`` (the regexes above), ``hf`` (``hf_detector`` only) or ``both`` (their
    union; where they overlap the earlier and longer span wins). ``hf_detector`` is an
    :class:`HFSpanDetector` or any callable with its signature.

    Privacy: each occurrence is judged from its own context; rule spans are never propagated.
    ``propagate_model_spans=True`` masks every occurrence of a model span's text. That masking
    depends on the value occurring as a span elsewhere, which is outside the guarantee (module docstring).
    """
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {DETECTORS}.")
    if detector != "rules" and hf_detector is None:
        raise ValueError(f"detector {detector!r} needs a token-classification model (--detector_model).")
    model_spans = hf_detector(notes) if detector != "rules" else [[] for _ in notes]
    out = []
    for note, from_model in zip(notes, model_spans, strict=True):
        found = propagate(note, from_model) if propagate_model_spans else list(from_model)
        if detector != "hf":
            found = _resolve([(s.start, s.end, 0, s.type) for s in [*found, *rule_spans(note)]])
        out.append(found)
    return out
