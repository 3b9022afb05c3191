r"""Gradient-space canary audit of the private step at a data set's reference setting.

    OMP_NUM_THREADS=1 python scripts/audit_step.py --num_rows 14293 --batch_size 128 --epochs 13 \
        --max_grad_norm 1.8 --epsilons 1 2 4 16 --seeds 1 2 3 --label sepsis

For each target ε, σ is calibrated as a training run would (zero-out, --accountant), then
:func:`fusiondp.audit.step_canary_audit` runs the package's private step for T steps on Dirac canaries,
for the correct step and for the named broken variants of fusiondp/audit/controls.py (no noise,
no clipping). Prints a Markdown
table: claimed ε, ε_lower (95%) mean ± std over seeds, and correct guesses. ε_lower cannot exceed
what --canaries/--guesses allow (all guesses right), about 5.7 for 5000/1000.
"""

from __future__ import annotations

import argparse

import numpy as np

from fusiondp.audit import CORRECT, NO_CLIPPING, NO_NOISE, step_canary_audit
from fusiondp.experiment.cli import run_main
from fusiondp.mechanism.accounting import ACCOUNTANTS, make_privacy_spec

VARIANTS = (CORRECT, NO_NOISE, NO_CLIPPING)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", default="", help="data set name for the table")
    parser.add_argument("--num_rows", type=int, required=True, help="N training rows")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--accountant", default="rdp", choices=ACCOUNTANTS)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--canaries", type=int, default=5000)
    parser.add_argument("--guesses", type=int, default=1000)
    return parser


def main(args: argparse.Namespace) -> dict:
    lines = [
        "| data set | target ε | σ | claimed ε (zero-out) | step | ε_lower (95%) | correct of guesses | seeds |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    rows = []
    for eps in args.epsilons:
        spec = make_privacy_spec(
            epsilon=eps,
            delta=args.delta,
            batch_size=args.batch_size,
            num_rows=args.num_rows,
            epochs=args.epochs,
            accountant=args.accountant,
        )
        for variant in VARIANTS:
            results = []
            for seed in args.seeds:
                results.append(
                    step_canary_audit(
                        noise_multiplier=spec.noise_multiplier,
                        sample_rate=spec.sample_rate,
                        steps=spec.steps,
                        max_grad_norm=args.max_grad_norm,
                        claimed_epsilon=spec.epsilon_spent,
                        delta=args.delta,
                        canaries=args.canaries,
                        guesses=args.guesses,
                        seed=seed,
                        variant=variant,
                    )
                )
            lower = np.array([r["epsilon_lower"] for r in results])
            spread = f" ± {lower.std(ddof=1):.2f}" if len(lower) > 1 else ""
            correct = "/".join(str(r["correct"]) for r in results)
            name = variant.name
            lines.append(
                f"| {args.label} | {eps:g} | {spec.noise_multiplier:.3f} | {spec.epsilon_spent:.2f} | {name} | "
                f"{lower.mean():.2f}{spread} | {correct} of {args.guesses} | {len(results)} |"
            )
            rows.append({"epsilon": eps, "variant": name, "results": results})
    table = "\n".join(lines) + "\n"
    print(table)
    return {"table": table, "rows": rows}


if __name__ == "__main__":
    run_main(main, get_args_parser())
