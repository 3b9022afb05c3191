r"""Hybrid clinical notes: detect sensitive spans, let a language model rewrite them, write the splits.

    python impute_mimic.py --dataset medical_abstracts --out_dir outputs/medical_abstracts
    python impute_mimic.py --dataset mimic --train_csv train_50.csv --dev_csv dev_50.csv \
        --test_csv test_50.csv --out_dir outputs/mimic

Stand-in (``--dataset medical_abstracts``): ``$FUSIONDP_DATA/medical_abstracts/medical_tc_test.csv``
(2,888 abstracts, ``condition_label`` 1-5), split with ``--seed`` (66) into support/train/val/test =
10%/70%/10%/10% of the rows (288/2,024/288/288: each split rounded down, the rest to
train), disjoint; LABELS is the class number ("3").
MIMIC-III (``--dataset mimic``): the caml-mimic files (columns TEXT and LABELS, ``;``-separated
ICD-9 codes; other columns ignored; row_id is HADM_ID when present). train → train, dev → val,
test → test. MIMIC has no public support set: ``mimic_support.csv`` is written with no rows, unless
``--mimic_support_rows K`` moves a seeded slice of K dev notes (original text, treated as public)
out of val into support.

Only the training notes are rewritten. Spans are found (``--detector``), each occurrence judged in its
own context (fusiondp/text/spans.py). Each span of an LM type is masked, and ``--lm`` writes a replacement
from the masked context. Sex, pronoun and ethnicity spans get value-independent neutral words. The
hybrid notes and imputation_info.json read no original span value: an infill equal to the original
is kept, not flagged or counted (fusiondp/text/infill.py states the privacy contract).
``--propagate_model_spans`` (off by default, recorded) masks every repeat of a string that the model
detector found once. That masking depends on the value being a span elsewhere in the note, so it is
outside the guarantee.
``--lm none`` puts type placeholders ([AGE], [DATE], ...) instead: a model-free baseline, labelled
in imputation_info.json. Writes to --out_dir: ``<ds>_support.csv, <ds>_train.csv,
<ds>_train_imputed.csv`` (row-aligned with train, TEXT = hybrid note), ``<ds>_val.csv, <ds>_test.csv``
(all with columns row_id, TEXT, LABELS), ``spans.csv`` (every training span WITH ITS ORIGINAL TEXT:
private, for human review only, never a model input), ``span_counts.csv`` and ``imputation_info.json``.
``--max_rows N`` uses a seeded N-row sample of the stand-in corpus (a shorter run; recorded).
Cost: SmolLM2-135M infills about 1 span per second on one CPU thread (scripts/bench_infill.py); MIMIC
notes hold many spans (every ``[** **]`` placeholder), so run it there with ``--device cuda``. An
interrupted run resumes from ``<out_dir>/cache`` (generations are cached per prompt, model and seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fusiondp.datasets.mimic import (
    COLUMNS,
    NAMES,
    STANDIN_CORPUS,
    STANDIN_FRACTIONS,
    default_data_dir,
    load_caml,
    load_standin,
    standin_dir,
)
from fusiondp.experiment.cli import resolve_device, run_main
from fusiondp.tabular.data import IMPUTATION_INFO, check_disjoint, output_files, split_indices, write_csv
from fusiondp.text.infill import NEUTRAL_TYPES, NO_LM, SMOLLM2, CausalLMInfiller, infill_notes, load_causal_lm
from fusiondp.text.spans import DETECTORS, HFSpanDetector, detect_spans

SPAN_COLUMNS = ["row_id", "start", "end", "type", "text", "replacement", "source"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=NAMES, default="medical_abstracts")
    parser.add_argument(
        "--data_dir", type=Path, default=None, help="default: $FUSIONDP_DATA/medical_abstracts"
    )
    for split in ("train", "dev", "test"):
        parser.add_argument(
            f"--{split}_csv", type=Path, default=None, help=f"mimic: caml-mimic {split}_50.csv"
        )
    parser.add_argument("--mimic_support_rows", type=int, default=0, help="mimic: dev notes moved to support")
    parser.add_argument("--out_dir", type=Path, default=None, help="default: outputs/<dataset>")
    parser.add_argument("--seed", type=int, default=66, help="split and generation seed")
    parser.add_argument("--max_rows", type=int, default=None, help="stand-in: use a seeded sample of N rows")
    parser.add_argument("--detector", choices=DETECTORS, default="rules")
    parser.add_argument(
        "--detector_model", default=None, help="token-classification model (--detector hf/both)"
    )
    parser.add_argument(
        "--propagate_model_spans",
        action="store_true",
        help="mask every repeat of a model-detected span's text (--detector hf/both). Masks the model's "
        "misses of a name, but a masked repeat can reveal the value: outside the guarantee",
    )
    parser.add_argument(
        "--lm", default=SMOLLM2, help=f"'{SMOLLM2}' (offline wheel), any HF causal LM, or '{NO_LM}'"
    )
    parser.add_argument(
        "--neutral_types",
        default=",".join(NEUTRAL_TYPES),
        help="span types given value-independent neutral words instead of LM infill ('' for none)",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="prompts per generate() call")
    parser.add_argument("--max_new_tokens", type=int, default=10)
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="> 0: seeded sampling (greedy copies the few-shot answer, e.g. one date for all); 0: greedy",
    )
    parser.add_argument("--left_chars", type=int, default=300, help="characters of context before a span")
    parser.add_argument("--right_chars", type=int, default=150, help="characters of context after a span")
    parser.add_argument("--device", default="cpu", help="where the LM runs: cpu, cuda, cuda:1 or auto")
    parser.add_argument("--cache_dir", type=Path, default=None, help="default: <out_dir>/cache")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def load_splits(args: argparse.Namespace) -> tuple[dict[str, pd.DataFrame], str]:
    if args.dataset == "mimic":
        missing = [f"--{s}_csv" for s in ("train", "dev", "test") if getattr(args, f"{s}_csv") is None]
        if missing:
            raise ValueError(
                f"--dataset mimic needs {', '.join(missing)} (caml-mimic train_50/dev_50/test_50.csv)."
            )
        frames = {
            "train": load_caml(args.train_csv, split="train"),
            "val": load_caml(args.dev_csv, split="dev"),
            "test": load_caml(args.test_csv, split="test"),
        }
        k = args.mimic_support_rows
        if not 0 <= k < len(frames["val"]):
            raise ValueError(f"--mimic_support_rows must be in [0, {len(frames['val'])}), got {k}.")
        pick = np.zeros(len(frames["val"]), bool)
        pick[np.random.default_rng(args.seed).permutation(len(pick))[:k]] = True
        frames["support"] = frames["val"][pick].reset_index(drop=True)
        frames["val"] = frames["val"][~pick].reset_index(drop=True)
        return frames, f"caml-mimic files {args.train_csv}, {args.dev_csv}, {args.test_csv}"
    path = (args.data_dir or standin_dir()) / STANDIN_CORPUS
    df = load_standin(path)
    if args.max_rows is not None:
        if args.max_rows < 10:
            raise ValueError(f"--max_rows must be >= 10 (four splits), got {args.max_rows}.")
        df = df.iloc[np.sort(np.random.default_rng(args.seed).permutation(len(df))[: args.max_rows])]
    sizes = {name: int(np.floor(f * len(df))) for name, f in STANDIN_FRACTIONS.items()}
    sizes["train"] += len(df) - sum(sizes.values())
    ids = split_indices(len(df), sizes, seed=args.seed)
    check_disjoint(df["row_id"].to_numpy()[ids["support"]], df["row_id"].to_numpy()[ids["train"]])
    return {name: df.iloc[rows].reset_index(drop=True) for name, rows in ids.items()}, str(path)


def main(args: argparse.Namespace) -> dict:
    out_dir = args.out_dir or default_data_dir(args.dataset)
    ds = "mimic" if args.dataset == "mimic" else "medical_abstracts"
    neutral = [t.strip() for t in args.neutral_types.split(",") if t.strip()]
    frames, source = load_splits(args)
    train = frames["train"]
    hf = HFSpanDetector(args.detector_model) if args.detector != "rules" and args.detector_model else None
    t0 = time.perf_counter()
    spans = detect_spans(
        train["TEXT"].tolist(),
        detector=args.detector,
        hf_detector=hf,
        propagate_model_spans=args.propagate_model_spans,
    )
    detect_seconds = time.perf_counter() - t0
    generate, lm_id = None, "none (type placeholders; a model-free baseline, not LM infill)"
    if args.lm != NO_LM:
        model, tokenizer, lm_id = load_causal_lm(args.lm, device=str(resolve_device(args.device)))
        generate = CausalLMInfiller(
            model=model,
            tokenizer=tokenizer,
            model_id=lm_id,
            seed=args.seed,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            cache_path=(args.cache_dir or out_dir / "cache") / "infill_cache.jsonl",
            progress=not args.no_progress,
        )
        generate.cache_path.parent.mkdir(parents=True, exist_ok=True)
    result = infill_notes(
        train["TEXT"].tolist(),
        spans,
        generate=generate,
        neutral_types=neutral,
        left_chars=args.left_chars,
        right_chars=args.right_chars,
    )
    frames["train_imputed"] = train.assign(TEXT=result.hybrids)
    files = output_files(ds)
    for name in ("support", "train", "train_imputed", "val", "test"):
        write_csv(frames[name][COLUMNS], out_dir / files[name])
    span_rows = [
        (rid, s.start, s.end, s.type, s.text(note), rep, src)
        for rid, note, note_spans, reps, srcs in zip(
            train["row_id"], train["TEXT"], spans, result.replacements, result.sources, strict=True
        )
        for s, rep, src in zip(note_spans, reps, srcs, strict=True)
    ]
    span_table = pd.DataFrame(span_rows, columns=SPAN_COLUMNS)
    write_csv(span_table, out_dir / "spans.csv")
    counts = (
        span_table.groupby("type").agg(spans=("start", "size"), notes=("row_id", "nunique")).reset_index()
    )
    write_csv(counts, out_dir / "span_counts.csv")
    summary = result.summary()
    lm_seconds = generate.seconds if generate is not None else 0.0
    info = {
        "dataset": ds,
        "source": source,
        "seed": args.seed,
        "splits": {name: len(frames[name]) for name in ("support", "train", "val", "test")},
        "split_rule": "caml files; support from dev"
        if ds == "mimic"
        else "seeded 10/70/10/10% of the corpus",
        "max_rows": args.max_rows,
        "detector": args.detector,
        "detector_model": args.detector_model,
        "propagate_model_spans": args.propagate_model_spans,
        "detect_seconds": round(detect_seconds, 2),
        "lm": lm_id,
        "lm_is_placeholder_baseline": generate is None,
        "neutral_types": neutral,
        "device": args.device,
        "generation": {
            **(generate.settings() if generate else {}),
            "batch_size": args.batch_size,
            "left_chars": args.left_chars,
            "right_chars": args.right_chars,
        },
        "lm_prompts_generated": generate.generated if generate else 0,
        "lm_spans_per_second": round(generate.generated / lm_seconds, 3) if lm_seconds else None,
        "span_counts": dict(zip(counts["type"], counts["spans"].astype(int).tolist(), strict=True)),
        **summary,
        "private_files": ["spans.csv (original span text)", f"{files['train']} (original notes)"],
    }
    (out_dir / IMPUTATION_INFO).write_text(json.dumps(info, indent=2, default=int) + "\n")
    print(counts.to_string(index=False))
    keys = ("lm", "lm_spans_per_second", "fallback_rate_of_lm_spans", "fallbacks")
    print(json.dumps({k: info[k] for k in keys}, default=int))
    print(
        f"wrote {out_dir}; spans.csv holds ORIGINAL private span text for review: never share it or train on it."
    )
    return {"out_dir": str(out_dir), **info}


if __name__ == "__main__":
    run_main(main, get_args_parser())
