r"""Privacy audit of the sepsis sensitive columns: one-run canary audit, attribute inference.

    OMP_NUM_THREADS=1 python scripts/audit_sepsis.py --epsilons 1 4 16 --seeds 1 \
        --results_json results/audit_sepsis.jsonl --table docs/tables/audit_sepsis.md

Trains one model per (mode, ε, seed) with the reference hyperparameters of train_fusiondp_sepsis.py
(every training flag of that script applies to all runs) on data with --canaries planted canaries,
then scores them and attacks each sensitive column (see fusiondp/audit.py). Records already in
--results_json with the same mode, ε, seed and audit settings are reused, not re-run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the train_*.py scripts live at the top

import train_fusiondp_sepsis as sepsis
from fusiondp.audit import TabularTask, add_audit_args, run_audit_script
from fusiondp.cli import run_main
from fusiondp.data import data_root
from fusiondp.models import sepsis_mlp


def get_args_parser() -> argparse.ArgumentParser:
    parser = sepsis.get_args_parser()
    parser.description = __doc__
    return add_audit_args(parser)


def main(args: argparse.Namespace) -> dict:
    data_dir = args.data_dir or data_root() / "sepsis"
    frames = sepsis.load_frames(data_dir, max_train_rows=args.max_train_rows)
    task = TabularTask(
        dataset="sepsis",
        frames=frames,
        public=sepsis.PUBLIC,
        sensitive=sepsis.SENSITIVE,
        label=sepsis.LABEL,
        build_model=sepsis_mlp,
        extra_record={"data_dir": str(data_dir)},
    )
    return run_audit_script(task, args)


if __name__ == "__main__":
    run_main(main, get_args_parser())
