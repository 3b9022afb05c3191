"""The audit grid behind ``scripts/audit_<dataset>.py``: flags, (mode, ε, seed) runs, the Markdown table.

Each run is :func:`fusiondp.audit.audit_once`; this module only loops, reuses finished records and
tabulates them.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fusiondp.audit import STATISTICS, TabularTask, audit_once
from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.results import append_record, load_records
from fusiondp.mechanism.modes import get_mode


def audit_rows(records: Sequence[dict]) -> list[dict]:
    """One flat row per audit record, for tables."""
    rows = []
    for rec in records:
        audit = rec["audit"]
        attack = audit.get("attribute_inference") or {}
        rows.append(
            {
                "mode": rec["mode"],
                "epsilon": rec["epsilon"] if rec.get("sigma") is not None else None,
                "seed": rec["seed"],
                "claimed_epsilon": audit["claimed_epsilon"],
                "epsilon_lower": max(audit["epsilon_lower"], audit["epsilon_lower_deterministic"]),
                "correct": audit["correct"],
                "guesses": audit["guesses"],
                "epsilon_lower_step": (audit.get("step_audit") or {}).get("epsilon_lower"),
                "advantage_train": attack.get("mean_advantage_train"),
                "member_gap": attack.get("mean_member_gap"),
                "test_auroc": rec.get("test_auroc"),
            }
        )
    return rows


AUDIT_MODES = ("sgd_ori", "sgd_hybrid", "dpsgd", "calibrated_fusion", "fusiondp")


def add_audit_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of the audit scripts (the training flags come from the dataset's training script)."""
    g = parser.add_argument_group("audit")
    g.add_argument("--modes", nargs="+", default=list(AUDIT_MODES), help="modes to audit")
    g.add_argument(
        "--epsilons", nargs="+", type=float, default=[1.0, 4.0, 16.0], help="target ε of the DP modes"
    )
    g.add_argument("--seeds", nargs="+", type=int, default=[1], help="one training run per (mode, ε, seed)")
    g.add_argument(
        "--canaries", type=int, default=1000, help="m: canary training rows (half in, by coin flips)"
    )
    g.add_argument("--guesses", type=int, default=100, help="k: highest-scoring canaries guessed 'in'")
    g.add_argument("--confidence", type=float, default=0.95, help="confidence of ε_lower")
    g.add_argument("--statistic", choices=STATISTICS, default="loss", help="canary score")
    g.add_argument("--attack_rows", type=int, default=2000, help="training and test rows attacked")
    g.add_argument("--table", default=None, help="write the Markdown audit table here too")
    return parser


def _audit_key(rec: dict) -> tuple:
    audit, args = rec["audit"], rec.get("args") or {}
    eps = rec["epsilon"] if rec.get("sigma") is not None else None
    return (rec["mode"], eps, rec["seed"], audit["canaries"], audit["guesses"], audit["statistic"],
            rec["epochs"], args.get("max_train_rows"))  # fmt: skip


def run_audit_grid(
    task: TabularTask,
    config: RunConfig,
    *,
    modes: Sequence[str],
    epsilons: Sequence[float],
    seeds: Sequence[int],
    canaries: int,
    guesses: int,
    confidence: float,
    statistic: str,
    attack_rows: int,
    existing: Sequence[dict] = (),
) -> list[dict]:
    """Audit every (mode, ε, seed); records already in ``existing`` are reused.

    Every run trains with ``config`` (the dataset script's flags) with its mode, ε and seed set.
    """
    done = {_audit_key(r): r for r in existing if "audit" in r}
    jobs = [
        config.replace(mode=mode, epsilon=eps, seed=seed)
        for seed in seeds
        for mode in modes
        for eps in (epsilons if get_mode(mode).private else [config.epsilon])
    ]
    max_train_rows = config.extra("max_train_rows")
    records = []
    for run_config in tqdm(jobs, desc=f"audit {task.dataset}", disable=config.no_progress):
        eps = run_config.epsilon if get_mode(run_config.mode).private else None
        key = (run_config.mode, eps, run_config.seed, canaries, guesses, statistic, run_config.epochs,
               max_train_rows)  # fmt: skip
        if key in done:
            records.append(done[key])
            continue
        rec = audit_once(
            task,
            run_config.replace(no_progress=True),
            canaries=canaries,
            guesses=guesses,
            confidence=confidence,
            statistic=statistic,
            attack_rows=attack_rows,
        )
        rec["args"] = {**rec["args"], "max_train_rows": max_train_rows}
        if config.results_json:
            append_record(config.results_json, rec)
        records.append(rec)
    return records


def _fmt(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if any(math.isinf(v) for v in values):
        return "∞"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}"


def audit_table(records: Sequence[dict]) -> str:
    """Markdown: one line per (mode, ε), mean ± std over seeds, with the counts."""
    rows = pd.DataFrame(audit_rows(records))
    rows["epsilon"] = rows["epsilon"].astype(object).where(rows["epsilon"].notna(), "–")
    lines = [
        "| mode | target ε | claimed ε (zero-out) | ε_lower (95%) | correct / guesses | ε_lower, step canaries (95%) | attack advantage over public-only (train rows) | member gap (train − held-out) | test AUROC | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    groups = sorted(
        rows.groupby(["mode", "epsilon"], sort=False),
        key=lambda g: (order.get(g[0][0], 99), -1.0 if g[0][1] == "–" else float(g[0][1])),
    )
    for (mode, eps), g in groups:
        # sgd_ori claims nothing (its record stores the claimed ε = ∞ as null)
        claimed = "∞ (none)" if mode == "sgd_ori" else _fmt(g["claimed_epsilon"].tolist())
        lines.append(
            f"| {mode} | {eps} | {claimed} | {_fmt(g['epsilon_lower'].tolist())} | "
            f"{'/'.join(map(str, g['correct']))} of {g['guesses'].iloc[0]} | {_fmt(g['epsilon_lower_step'].tolist())} | "
            f"{_fmt(g['advantage_train'].tolist(), 3)} | "
            f"{_fmt(g['member_gap'].tolist(), 3)} | {_fmt(g['test_auroc'].tolist(), 3)} | {len(g)} |"
        )
    return "\n".join(lines) + "\n"


MODE_ORDER = ("sgd_ori", "sgd_hybrid", "sgd_pub", "dpsgd", "naive_fusion", "naive_fusion_pub", "feature-dp",
              "calibrated_fusion", "fusiondp")  # fmt: skip


def run_audit_script(task: TabularTask, args: argparse.Namespace) -> dict:
    """What every ``scripts/audit_<dataset>.py`` does once it has its task: reuse the records already in
    --results_json, run the rest of the grid, print the table and write it to --table."""
    config = RunConfig.from_args(args)
    existing = (
        load_records(args.results_json) if args.results_json and Path(args.results_json).exists() else []
    )
    records = run_audit_grid(
        task,
        config,
        modes=args.modes,
        epsilons=args.epsilons,
        seeds=args.seeds,
        canaries=args.canaries,
        guesses=args.guesses,
        confidence=args.confidence,
        statistic=args.statistic,
        attack_rows=args.attack_rows,
        existing=existing,
    )
    table = audit_table(records)
    print(table)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table)
    return {"records": records, "table": table}
