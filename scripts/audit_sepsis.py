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

from audit_common import add_audit_args, run_audit_script  # scripts/audit_common.py

from fusiondp.audit import TabularTask
from fusiondp.datasets import sepsis, training_parser
from fusiondp.experiment.cli import run_main
from fusiondp.tabular.data import data_root


def get_args_parser() -> argparse.ArgumentParser:
    parser = training_parser(sepsis, __doc__)  # the flags of train_fusiondp_sepsis.py, with its defaults
    return add_audit_args(parser)


def main(args: argparse.Namespace) -> dict:
    data_dir = args.data_dir or data_root() / "sepsis"
    frames = sepsis.load_frames(data_dir, max_train_rows=args.max_train_rows)
    task = TabularTask(
        dataset="sepsis",
        frames={
            "original": frames["train"],
            "hybrid": frames["train_imputed"],
            "val": frames["val"],
            "test": frames["test"],
        },  # TabularTask names the training views original/hybrid
        public=sepsis.PUBLIC,
        sensitive=sepsis.SENSITIVE,
        label=sepsis.LABEL,
        build_model=sepsis.build_model,
        extra_record={"data_dir": str(data_dir)},
    )
    return run_audit_script(task, args)


if __name__ == "__main__":
    run_main(main, get_args_parser())
