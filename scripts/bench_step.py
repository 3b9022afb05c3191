"""Benchmark the nine modes on sepsis: training seconds per epoch, peak resident memory, and where
FusionDP's step time goes. A benchmark, not a test: run it on an otherwise idle machine.

    python scripts/bench_step.py --epochs 2 --repeats 3 --results_json results/bench.jsonl --out docs/bench.md

Quick smoke test (two modes, one run each):

    python scripts/bench_step.py --epochs 1 --repeats 1 --modes sgd_ori fusiondp

Per mode and repeat, a FRESH process runs the training script with the reference defaults,

    python train_fusiondp_sepsis.py --mode M --epochs E --no_progress --seed S --results_json TMP

and seconds/epoch is read from the record it appends (training time only; evaluation excluded). The
runs are interleaved (repeat 1 of every mode, then repeat 2, ...) so a drift in background load hits
every mode alike; every repeat uses the same seed, so the repeats do identical work. The table gives
the median over repeats, the ratio to sgd_ori's median, and the largest peak RSS over the repeats.

Then, in this process and after a warm-up, it times the phases of one step on the real sepsis tensors
with the sepsis MLP (median over --phase_calls interleaved calls): the public gradient on a 4096-row
hybrid batch; the private term's clipped sum over a 128-row batch (difference loss + regularizer) by
book-keeping (what training runs) and by the vmap reference; a plain backward of the same loss over
the same rows and views, without clipping; a plain SGD gradient on 128 original rows; and whole
fusion steps of fusiondp and sgd_ori. The privacy overhead is the fusiondp step's time over the
public gradient's plus the plain backward's: what the private step costs beyond the two gradients
any implementation must compute.

Timings are only meaningful on an otherwise idle machine: the report prints the load average and
warns when it was high. On a shared machine, pass --threads (at most the free cores) to avoid
oversubscription, which slows the large public-batch matmuls many times over.

Targets stated by the project, reported as met or not (never adjusted): fusiondp ≤ 5× and dpsgd ≤ 2×
sgd_ori seconds per epoch, the privacy overhead ≤ 1.3×, and every mode ≤ 2 GB (2000 MB, MB = 10^6
bytes) peak resident memory.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from fusiondp.datasets import sepsis, training_parser
from fusiondp.experiment.benchmark import PEAK_RSS_WRAPPER, machine_info, time_calls
from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.plan import privacy_spec_for, step_config_for
from fusiondp.experiment.records import command_line, git_commit
from fusiondp.experiment.results import append_record, load_records
from fusiondp.mechanism.modes import MODES
from fusiondp.mechanism.regularizer import estimate_c_h_public
from fusiondp.mechanism.scaling import column_statistics
from fusiondp.mechanism.step import (
    Grads,
    clipped_private_sum,
    fusion_step,
    per_example_method,
    private_terms,
    public_gradient,
    stacked_views,
    trainable_params,
)
from fusiondp.models import binary_bce
from fusiondp.tabular.data import data_root

REPO = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO / "train_fusiondp_sepsis.py"
FUSIONDP_MAX_RATIO = 5.0
DPSGD_MAX_RATIO = 2.0
MAX_PRIVACY_OVERHEAD = 1.3
MAX_RSS_MB = 2000.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=float, default=2, help="epochs per training run (default 2, enough for timing)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per mode (median)")
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=list(MODES), metavar="MODE", help="default: all"
    )
    parser.add_argument(
        "--data_dir", type=Path, default=None, help="sepsis data folder (default: $FUSIONDP_DATA/sepsis)"
    )
    parser.add_argument("--seed", type=int, default=0, help="--seed of every training run")
    parser.add_argument(
        "--train_flags",
        default="",
        help="extra flags for every training run, as one string, e.g. --train_flags='--public_batch_size 128'",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, here and in the training runs (via OMP_NUM_THREADS); default: torch's own. "
        "On a machine shared with other jobs, more threads than free cores can make the large "
        "public-batch matmuls many times slower",
    )
    parser.add_argument(
        "--phase_calls", type=int, default=50, help="timed calls per step phase (0 skips the phase timing)"
    )
    parser.add_argument("--phase_warmup", type=int, default=5, help="untimed calls before each phase")
    parser.add_argument(
        "--results_json", type=Path, default=None, help="append one JSON record of this benchmark here"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    return parser


def run_child(mode: str, args: argparse.Namespace, workdir: Path, tag: str) -> dict:
    """One training run of ``mode`` in a fresh process: its seconds/epoch and peak RSS."""
    results = workdir / f"{tag}.jsonl"
    peak_file = workdir / f"{tag}.peak.json"
    train_flags = ["--mode", mode, "--epochs", str(args.epochs), "--no_progress", "--seed", str(args.seed)]
    train_flags += ["--results_json", str(results), *shlex.split(args.train_flags)]
    if args.data_dir is not None:
        train_flags += ["--data_dir", str(args.data_dir.resolve())]
    command = [sys.executable, "-c", PEAK_RSS_WRAPPER, str(peak_file), str(TRAIN_SCRIPT), *train_flags]
    start = time.perf_counter()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"training run failed (exit {proc.returncode}): {TRAIN_SCRIPT.name} {train_flags}")
    record = load_records(results)[-1]
    peak = json.loads(peak_file.read_text())
    return {
        "seconds_per_epoch": float(record["seconds_per_epoch"]),
        "train_seconds": float(record["train_seconds"]),
        "steps": int(record["steps"]),
        "peak_rss_mb": peak["peak_rss_bytes"] / 1e6,
        "peak_rss_source": peak["source"],
        "torch_threads": peak["torch_threads"],
        "wall_seconds": wall,
    }


PUBLIC = "public gradient: hybrid, one public batch (4,096 rows)"
PRIVATE_BOOKKEEPING = "private term, book-keeping: Σ clip(∇L_i) over 128 rows × 2 views"
PRIVATE_VMAP = "private term, vmap reference: the same sum"
PLAIN_BACKWARD = "plain backward of Σ L_i, the same 128 rows × 2 views, no clipping"
FUSIONDP_STEP = "whole fusion_step, fusiondp (public + private + noise + update)"


def plain_backward(
    model: torch.nn.Module, x: torch.Tensor, x_ref: torch.Tensor, y: torch.Tensor, *, cfg
) -> Grads:
    """The non-private floor of the private term: one backward of Σ_i L_i to the parameters."""
    logits, h = model(stacked_views(x, x_ref))
    terms = private_terms(
        logits,
        h,
        y,
        loss_fn=binary_bce,
        differs=None if x_ref is None else torch.ones(len(x), dtype=torch.bool),
        reg_weight=cfg.reg_weight,
        c_h=cfg.c_h,
    )
    params = trainable_params(model)
    return dict(zip(params, torch.autograd.grad(terms.sum(), list(params.values())), strict=True))


def time_phases(args: argparse.Namespace) -> dict:
    """Median ms per call of each phase of a step, on the real sepsis tensors with the sepsis MLP."""
    # the reference defaults of the training script
    ref = RunConfig.from_args(training_parser(sepsis).parse_args([]))
    data_dir = args.data_dir or data_root() / "sepsis"
    frames = sepsis.load_frames(data_dir)
    data, _ = sepsis.prepare(
        frames,
        noise_seed=args.seed,
        # Timing only: any public scale will do, the hybrid rows' own is at hand.
        original_stats=column_statistics(frames["train_imputed"], sepsis.SENSITIVE),
    )
    n = data.num_rows
    torch.manual_seed(args.seed)
    model = sepsis.build_model(data.original.shape[1])
    model.train()  # dropout on, as in training
    generator = torch.Generator().manual_seed(args.seed + 2)
    c_h = estimate_c_h_public(
        model, data.hybrid, sensitive_columns=data.sensitive_features, generator=generator
    )
    fusion = MODES["fusiondp"]
    # Fixed batches drawn once: the timings are of the computation, not of sampling or gathering rows.
    pub_rows = torch.randperm(n, generator=generator)[: min(ref.public_batch_size, n)]
    priv_rows = torch.randperm(n, generator=generator)[: ref.batch_size]
    x_pub, y_pub = data.hybrid[pub_rows], data.y[pub_rows]
    x_priv, x_ref, y_priv = data.original[priv_rows], data.hybrid[priv_rows], data.y[priv_rows]

    fusion_cfg = step_config_for(ref, fusion, privacy=privacy_spec_for(ref, fusion, num_rows=n), c_h=c_h)
    sgd_cfg = step_config_for(ref, MODES["sgd_ori"], privacy=None, c_h=None)
    # What a training run takes (--per_example auto): book-keeping for the sepsis MLP.
    fusion_cfg = replace(fusion_cfg, per_example=per_example_method(model, "auto")[0])
    step_model = copy.deepcopy(model)  # whole steps update their parameters; keep the phase model fixed
    noise_generator = torch.Generator().manual_seed(args.seed + 1)

    def fusiondp_step():
        return fusion_step(
            step_model,
            x_public=x_pub,
            y_public=y_pub,
            x_private=x_priv,
            x_reference=x_ref,
            y_private=y_priv,
            cfg=fusion_cfg,
            loss_fn=binary_bce,
            generator=noise_generator,
        )

    def sgd_step():
        return fusion_step(
            step_model,
            x_public=x_priv,
            y_public=y_priv,
            x_private=None,
            x_reference=None,
            y_private=None,
            cfg=sgd_cfg,
            loss_fn=binary_bce,
            generator=noise_generator,
        )

    phases: dict[str, Callable[[], object]] = {
        PUBLIC: lambda: public_gradient(model, x_pub, y_pub, loss_fn=binary_bce),
        PRIVATE_BOOKKEEPING: lambda: clipped_private_sum(
            model,
            x_priv,
            x_ref,
            y_priv,
            cfg=replace(fusion_cfg, per_example="bookkeeping"),
            loss_fn=binary_bce,
        ),
        PRIVATE_VMAP: lambda: clipped_private_sum(
            model, x_priv, x_ref, y_priv, cfg=replace(fusion_cfg, per_example="vmap"), loss_fn=binary_bce
        ),
        PLAIN_BACKWARD: lambda: plain_backward(model, x_priv, x_ref, y_priv, cfg=fusion_cfg),
        f"plain SGD gradient: original, {len(priv_rows)} rows": lambda: public_gradient(
            model, x_priv, y_priv, loss_fn=binary_bce
        ),
        FUSIONDP_STEP: fusiondp_step,
        "whole fusion_step, sgd_ori (+ update)": sgd_step,
    }
    steps_per_epoch = max(1, round(n / ref.batch_size))
    out = {}
    for name, ms in time_calls(phases, calls=args.phase_calls, warmup=args.phase_warmup).items():
        out[name] = {
            "median_ms": ms,
            "calls": args.phase_calls,
            "seconds_per_epoch": ms * steps_per_epoch / 1e3,
        }
    # The privacy overhead: what a fusiondp step costs beyond the two gradients any implementation
    # must compute (the public one, and one plain backward over both views of the private rows).
    floor = out[PUBLIC]["median_ms"] + out[PLAIN_BACKWARD]["median_ms"]
    return {
        "phases": out,
        "privacy_overhead": out[FUSIONDP_STEP]["median_ms"] / floor,
        "per_example_speedup": out[PRIVATE_VMAP]["median_ms"] / out[PRIVATE_BOOKKEEPING]["median_ms"],
        "steps_per_epoch": steps_per_epoch,
        "c_h": c_h,
        "noise_multiplier": fusion_cfg.noise_multiplier,
        "torch_threads": torch.get_num_threads(),
    }


def _ratio_target(name: str, ratio: float | None, limit: float) -> dict:
    return {
        "target": f"{name} ≤ {limit:g}×",
        "value": None if ratio is None else f"{ratio:.2f}×",
        "met": None if ratio is None else ratio <= limit,
    }


def check_targets(per_mode: dict, measured_all: bool, phases: dict | None = None) -> list[dict]:
    ori = per_mode.get("sgd_ori")
    targets = [
        _ratio_target(
            f"{mode} seconds/epoch against sgd_ori",
            per_mode[mode]["ratio_to_sgd_ori"] if mode in per_mode and ori else None,
            limit,
        )
        for mode, limit in (("fusiondp", FUSIONDP_MAX_RATIO), ("dpsgd", DPSGD_MAX_RATIO))
    ]
    overhead = phases.get("privacy_overhead") if phases else None
    targets.append(
        _ratio_target(
            "fusiondp step against public gradient + plain backward over the same private rows",
            overhead,
            MAX_PRIVACY_OVERHEAD,
        )
    )
    worst = max(per_mode, key=lambda m: per_mode[m]["peak_rss_mb_max"]) if per_mode else None
    over = [m for m, r in per_mode.items() if r["peak_rss_mb_max"] > MAX_RSS_MB]
    value = None
    if worst is not None:
        value = f"max {per_mode[worst]['peak_rss_mb_max']:.0f} MB ({worst})"
        if over:
            value += f"; over: {', '.join(over)}"
        if not measured_all:
            value += f"; only {len(per_mode)} of 9 modes measured"
    targets.append(
        {
            "target": f"every mode ≤ {MAX_RSS_MB / 1000:g} GB peak RSS",
            "value": value,
            "met": None if worst is None else not over,
        }
    )
    return targets


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "NOT met")


def render_markdown(record: dict) -> str:
    m = record["machine"]
    lines = [
        f"## Mode benchmark on sepsis ({record['epochs']:g} epoch(s), median of {record['repeats']} "
        "fresh-process run(s))",
        "",
        "| mode | seconds/epoch (median) | ratio to sgd_ori | peak RSS (MB) |",
        "|---|---:|---:|---:|",
    ]
    for mode, r in record["modes"].items():
        ratio = "n/a" if r["ratio_to_sgd_ori"] is None else f"{r['ratio_to_sgd_ori']:.2f}×"
        lines.append(
            f"| {mode} | {r['seconds_per_epoch_median']:.3f} | {ratio} | {r['peak_rss_mb_max']:.0f} |"
        )
    child_threads = sorted({r["torch_threads"] for r in record["modes"].values()} - {None})
    lines += [
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores"
        + (f" ({m['cpus_usable']} usable)" if "cpus_usable" in m else "")
        + f", torch {m['torch_version']}, {m['torch_threads']} torch threads here"
        + (f", {'/'.join(map(str, child_threads))} in the training runs" if child_threads else "")
        + (
            f", 1-min load average {m['load_average_at_start']} at start / {m['load_average_at_end']} at end"
            if "load_average_at_start" in m
            else ""
        )
        + f"; {m['platform']}.",
        "",
        f"Command: `{record['command']}`",
        "",
        "Peak RSS: largest VmHWM over the repeats of the training process (fresh per run); "
        "seconds/epoch: training only, evaluation excluded (the record's `seconds_per_epoch`). "
        "MB = 10^6 bytes.",
    ]
    load = m.get("load_average_at_start")
    if load is not None and load > 0.5:
        lines += [
            "",
            f"Warning: the machine was busy (1-min load average {load} before the first run on "
            f"{m['cpu_count']} cores); these timings are inflated and not comparable with an idle run "
            "(see --threads).",
        ]
    lines += ["", "### Targets", ""]
    for t in record["targets"]:
        value = f" ({t['value']})" if t["value"] else ""
        lines.append(f"- {t['target']}: **{_verdict(t['met'])}**{value}")
    phases = record.get("phases")
    if phases:
        lines += [
            "",
            f"### Where a step's time goes (in-process, median of {record['phase_calls']} interleaved "
            f"calls after {record['phase_warmup']} warm-up calls; {phases['steps_per_epoch']} steps/epoch)",
            "",
            "| phase | ms/call (median) | × steps/epoch (s) |",
            "|---|---:|---:|",
        ]
        for name, p in phases["phases"].items():
            lines.append(f"| {name} | {p['median_ms']:.2f} | {p['seconds_per_epoch']:.2f} |")
        lines += [
            "",
            "Fixed batches drawn once (sampling and row gathering not timed); the sepsis MLP in train "
            f"mode; C_h = {phases['c_h']:.4g} estimated from hybrid rows, "
            f"σ = {phases['noise_multiplier']:.4g} (reference defaults). A fusiondp step runs the "
            "public gradient and the private term once each, plus noise and the update.",
            "",
            f"Privacy overhead (fusiondp step ÷ (public gradient + plain backward)): "
            f"**{phases['privacy_overhead']:.2f}×**; the private term by book-keeping is "
            f"{phases['per_example_speedup']:.2f}× faster than by vmap.",
        ]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict:
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    if args.phase_calls < 0 or args.phase_warmup < 0:
        raise SystemExit("--phase_calls and --phase_warmup must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = list(dict.fromkeys(args.modes))
    machine = machine_info()
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        for repeat in range(args.repeats):
            for mode in modes:
                run = run_child(mode, args, Path(tmp), f"{mode}_{repeat}")
                runs[mode].append(run)
                print(
                    f"[{repeat + 1}/{args.repeats}] {mode}: {run['seconds_per_epoch']:.3f} s/epoch, "
                    f"peak {run['peak_rss_mb']:.0f} MB, {run['wall_seconds']:.1f} s wall",
                    file=sys.stderr,
                    flush=True,
                )
    per_mode = {}
    for mode, rs in runs.items():
        spe = [r["seconds_per_epoch"] for r in rs]
        rss = [r["peak_rss_mb"] for r in rs]
        per_mode[mode] = {
            "seconds_per_epoch_median": statistics.median(spe),
            "seconds_per_epoch_all": spe,
            "peak_rss_mb_max": max(rss),
            "peak_rss_mb_median": statistics.median(rss),
            "peak_rss_mb_all": rss,
            "peak_rss_source": rs[0]["peak_rss_source"],
            "torch_threads": rs[0]["torch_threads"],
            "steps": rs[0]["steps"],
            "wall_seconds_all": [r["wall_seconds"] for r in rs],
        }
    base = per_mode.get("sgd_ori", {}).get("seconds_per_epoch_median")
    for r in per_mode.values():
        r["ratio_to_sgd_ori"] = r["seconds_per_epoch_median"] / base if base else None

    phases = None
    if args.phase_calls:
        print("timing the step phases in-process ...", file=sys.stderr, flush=True)
        phases = time_phases(args)
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = round(os.getloadavg()[0], 2)

    record = {
        "benchmark": "bench_step",
        "dataset": "sepsis",
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "command": command_line(),
        "child_command": f"python {TRAIN_SCRIPT.name} --mode M --epochs {args.epochs:g} --no_progress "
        f"--seed {args.seed} --results_json TMP" + (f" --data_dir {args.data_dir}" if args.data_dir else ""),
        "git_commit": git_commit(),
        "epochs": args.epochs,
        "repeats": args.repeats,
        "seed": args.seed,
        "threads": args.threads,
        "data_dir": str(args.data_dir) if args.data_dir else None,
        "modes": per_mode,
        "phase_calls": args.phase_calls,
        "phase_warmup": args.phase_warmup,
        "phases": phases,
    }
    record["targets"] = check_targets(per_mode, measured_all=set(per_mode) >= set(MODES), phases=phases)
    report = render_markdown(record)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    if args.results_json:
        append_record(args.results_json, record)
    return record


if __name__ == "__main__":
    main(get_args_parser().parse_args())
