"""Benchmark FusionDP's private step on the CAML model: book-keeping against vmap, a loop and plain steps.

    OMP_NUM_THREADS=1 python scripts/bench_caml_step.py --threads 1 --repeats 5 --out docs/tables/bench_caml_step.md

The private step of a ``fusiondp`` run (difference loss + representation regularizer; per-example
gradients, clipping to C, the sum, Gaussian noise at σ) on one batch of ``--batch_size`` (64) notes of
``--length`` (512) tokens, two views each (hybrid = original with ``--changed`` tokens replaced), a
CAML model shaped like the MIMIC one (``--vocab`` random frozen embeddings of ``--dim`` 100,
``--filters`` 50, kernel 10, ``--labels`` 50). Methods (``--methods``) on the SAME model and batch:

- ``bookkeeping``: :func:`fusiondp.mechanism.step.private_gradient` as training runs it (fusiondp/mechanism/clipping.py);
- ``vmap``: the same with the torch.func reference (vmap over grad);
- ``loop``: one forward over both views and one ``autograd.grad`` per note (what the authors' code
  does), each gradient clipped with the package's :func:`fusiondp.mechanism.step.clip_and_accumulate`;
- ``plain``: one backward of the same two-view loss, no clipping or noise (the floor of the private step);
- ``sgd``: an ordinary SGD gradient, one view, mean loss.

Each method runs in a fresh child process (so its peak resident memory, VmHWM, is its own; on CUDA
the peak allocated memory is reported too): one warm-up step, then the median seconds over
``--repeats`` steps. The parent checks the clipped sums agree (σ = 0 for the check; dropout off so
no method draws randomness) and writes the table. Timings depend on the machine's load: it is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from fusiondp.experiment.benchmark import cpu_model, peak_rss_mb
from fusiondp.experiment.records import command_line, git_commit
from fusiondp.mechanism.regularizer import consistency_penalty
from fusiondp.mechanism.step import (
    Grads,
    StepConfig,
    clip_and_accumulate,
    private_gradient,
    stacked_views,
    trainable_params,
)
from fusiondp.models import CAML, multilabel_bce

METHODS = {
    "bookkeeping": "private step: book-keeping clipped sum + noise (what training runs)",
    "vmap": "private step: torch.func vmap per-example gradients, clipped + noise",
    "loop": "private step: one autograd backward per note, clipped + noise",
    "plain": "the same two-view loss, one backward, no clipping or noise",
    "sgd": "a plain SGD gradient: one view, mean loss",
}
CLIPPED = ("bookkeeping", "vmap", "loop")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--changed", type=int, default=8, help="tokens per note that differ between views")
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--filters", type=int, default=50)
    parser.add_argument("--labels", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--sigma", type=float, default=1.0, help="noise multiplier of the timed steps")
    parser.add_argument("--beta", type=float, default=0.5, help="regularizer weight")
    parser.add_argument("--c_h", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=["bookkeeping", "vmap", "plain", "sgd"],
        help="what to time, each in a fresh process (bookkeeping is always included); loop takes minutes "
        "at the MIMIC shape (default: %(default)s)",
    )
    parser.add_argument("--only", choices=list(METHODS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def loop_private_sum(
    model: torch.nn.Module,
    x: torch.Tensor,
    x_ref: torch.Tensor,
    y: torch.Tensor,
    *,
    reg_weight: float,
    c_h: float,
    max_grad_norm: float,
) -> Grads:
    """Σ_i clip_C(∇L_i) with one autograd pass per note: the reference for the vmap step."""
    params = trainable_params(model)
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(len(x)):
        logits, h = model(torch.stack([x[i], x_ref[i]])[:, None])
        term = multilabel_bce(logits[0, 0], y[i]) - multilabel_bce(logits[1, 0], y[i])
        term = term + reg_weight * consistency_penalty(h[0, 0], h[1, 0], c_h=c_h)
        grads = torch.autograd.grad(term * (x[i] != x_ref[i]).any(), list(params.values()))
        clipped, _ = clip_and_accumulate(
            {k: g[None] for k, g in zip(params, grads, strict=True)}, max_grad_norm=max_grad_norm
        )
        for k, g in clipped.items():
            total[k] += g
    return total


def make_problem(args: argparse.Namespace, *, dtype: torch.dtype = torch.float32):
    """A CAML model and one batch of two-view notes, from --seed."""
    gen = torch.Generator().manual_seed(args.seed)
    emb = torch.randn(args.vocab, args.dim, generator=gen)
    torch.manual_seed(args.seed)
    model = CAML(emb, num_labels=args.labels, filters=args.filters, dropout=0.0).to(args.device, dtype)
    x = torch.randint(2, args.vocab, (args.batch_size, args.length), generator=gen)
    x_ref = x.clone()
    pos = torch.randint(0, args.length, (args.batch_size, args.changed), generator=gen)
    x_ref.scatter_(1, pos, torch.randint(2, args.vocab, pos.shape, generator=gen))
    y = (torch.rand(args.batch_size, args.labels, generator=gen) < 0.1).to(dtype)
    return model, x.to(args.device), x_ref.to(args.device), y.to(args.device)


def child(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, x_ref, y = make_problem(args)
    model.train()
    cfg = StepConfig(
        lr=1.0,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=args.max_grad_norm,
        noise_multiplier=args.sigma,
        expected_batch_size=float(args.batch_size),
        private_loss="difference",
        reg_weight=args.beta,
        c_h=args.c_h,
    )
    gen = torch.Generator(device=args.device).manual_seed(args.seed + 1)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def step(sigma: float) -> Grads:
        if args.only in ("vmap", "bookkeeping"):
            noised, _ = private_gradient(
                model,
                x,
                x_ref,
                y,
                cfg=replace(cfg, noise_multiplier=sigma, per_example=args.only),
                loss_fn=multilabel_bce,
                generator=gen,
            )
            return {k: g * args.batch_size for k, g in noised.items()}  # back to the sum
        params = trainable_params(model)
        if args.only in ("plain", "sgd"):
            # Non-private floors: the same two-view loss without clipping or noise, and an ordinary
            # one-view SGD gradient of the mean loss on the same notes.
            if args.only == "plain":
                logits, h = model(stacked_views(x, x_ref))
                penalty = consistency_penalty(h[0], h[1], c_h=args.c_h)
                loss = (
                    multilabel_bce(logits[0], y) - multilabel_bce(logits[1], y) + args.beta * penalty
                ).sum()
            else:
                logits, _ = model(x)
                loss = multilabel_bce(logits, y).mean()
            return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        total = loop_private_sum(
            model, x, x_ref, y, reg_weight=args.beta, c_h=args.c_h, max_grad_norm=args.max_grad_norm
        )
        std = sigma * args.max_grad_norm
        return {k: g + std * torch.randn(g.shape, generator=gen, device=g.device) for k, g in total.items()}

    if args.save:
        torch.save({k: v.cpu() for k, v in step(0.0).items()}, args.save)
    step(args.sigma)  # warm-up
    if x.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        step(args.sigma)
        sync()
        seconds.append(time.perf_counter() - start)
    out = {
        "method": args.only,
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "peak_rss_mb": peak_rss_mb(),
    }
    if x.is_cuda:
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 1e6
    return out


def main(args: argparse.Namespace) -> dict:
    if args.only:
        result = child(args)
        print(json.dumps(result))
        return result
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    results, sums = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in dict.fromkeys(["bookkeeping", *args.methods]):
            save = Path(tmp) / f"{method}.pt"
            cmd = [sys.executable, __file__, *sys.argv[1:], "--only", method, "--save", str(save)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise SystemExit(f"{method} child failed:\n{proc.stderr[-3000:]}")
            results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            sums[method] = torch.load(save)
            print(f"{method}: median {results[method]['median_s']:.3f} s/step", file=sys.stderr)
    # Every clipped sum (σ = 0) against book-keeping's: the methods compute the same thing.
    scale = max(float(g.abs().max()) for g in sums["bookkeeping"].values())
    diffs = {
        m: max(float((sums[m][k] - sums["bookkeeping"][k]).abs().max()) for k in sums[m])
        for m in CLIPPED
        if m in sums and m != "bookkeeping"
    }
    median = {m: r["median_s"] for m, r in results.items()}
    ratios = {
        f"{m}_over_{base}": median[m] / median[base]
        for m, base in (
            ("bookkeeping", "plain"),
            ("bookkeeping", "sgd"),
            ("vmap", "bookkeeping"),
            ("loop", "bookkeeping"),
        )
        if m in median and base in median
    }
    record = {
        "benchmark": "bench_caml_step",
        "config": {k: v for k, v in vars(args).items() if k not in ("only", "save", "out")},
        "results": results,
        "ratios": ratios,
        "max_abs_diff_clipped_sum": diffs,
        "max_abs_clipped_sum": scale,
        "agree": all(d <= 1e-4 * max(scale, 1.0) for d in diffs.values()),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, load {load}",
        "torch": torch.__version__,
        "command": command_line(),
        "git_commit": git_commit(),
    }
    target = ratios.get("bookkeeping_over_plain")
    lines = [
        f"## Private step on CAML (batch {args.batch_size}, {args.length} tokens, two views, {args.labels} labels)",
        "",
        "| method | what it computes | s/step (median of " + str(args.repeats) + ") | peak RSS (MB) |",
        "|---|---|---:|---:|",
        *(
            f"| {m} | {METHODS[m]} | {r['median_s']:.3f} | {r['peak_rss_mb']:.0f} |"
            for m, r in results.items()
        ),
        "",
        "Ratios: "
        + ", ".join(f"{k.replace('_over_', ' / ')} **{v:.2f}×**" for k, v in ratios.items())
        + ". "
        + (
            f"Target private step ≤ 2× a plain step on the same batch (both views): "
            f"{'met' if target <= 2 else 'NOT met'}. "
            if target is not None
            else ""
        )
        + "Clipped sums at σ = 0 against book-keeping's: "
        + ", ".join(f"{m} max |difference| {d:.2e}" for m, d in diffs.items())
        + f" (largest entry {scale:.2e}).",
        "",
        f"Machine: {record['machine']} (1-min load average at start), torch {torch.__version__}, "
        f"device {args.device}, threads {args.threads or torch.get_num_threads()}. Command: `{record['command']}`",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    print(json.dumps(record))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return record


if __name__ == "__main__":
    main(get_args_parser().parse_args())
