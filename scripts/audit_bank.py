r"""Privacy audit of the bank sensitive columns (age, job, marital, education, housing).

    python impute_bank.py --imputer hgb --out_dir outputs/bank      # first: the splits (hgb stand-in, labelled)
    OMP_NUM_THREADS=1 python scripts/audit_bank.py --one_hot --modes sgd_ori sgd_hybrid dpsgd fusiondp \
        --epsilons 1 16 --seeds 66 --results_json results/audit_bank.jsonl --table docs/tables/audit_bank.md

Trains one model per (mode, ε, seed) with the reference hyperparameters of train_fusiondp_bank.py
(every training flag of that script applies to all runs) on data with --canaries planted canaries,
then scores them and attacks each sensitive column (see fusiondp/audit.py). Records already in
--results_json with the same mode, ε, seed and audit settings are reused, not re-run.
"""

from __future__ import annotations

import argparse

from audit_common import add_audit_args, run_audit_script  # scripts/audit_common.py

from fusiondp.audit import TabularTask
from fusiondp.datasets import bank, training_parser
from fusiondp.datasets.bank import CATEGORICAL, LABEL, PUBLIC, SENSITIVE
from fusiondp.experiment.cli import run_main
from fusiondp.tabular.data import imputer_provenance, load_imputed_splits


def get_args_parser() -> argparse.ArgumentParser:
    parser = training_parser(bank, __doc__)  # the flags of train_fusiondp_bank.py, with its defaults
    return add_audit_args(parser)


def main(args: argparse.Namespace) -> dict:
    frames = load_imputed_splits(
        args.data_dir, dataset="bank", public=PUBLIC, sensitive=SENSITIVE, label=LABEL
    )
    task = TabularTask(
        dataset="bank",
        frames={
            "original": frames["train"],
            "hybrid": frames["train_imputed"],
            "val": frames["val"],
            "test": frames["test"],
            "support": frames["support"],
        },
        public=PUBLIC,
        sensitive=SENSITIVE,
        label=LABEL,
        build_model=bank.build_model,
        categorical=CATEGORICAL,
        one_hot=args.one_hot,
        extra_record={"data_dir": str(args.data_dir), **imputer_provenance(args.data_dir)},
    )
    return run_audit_script(task, args)


if __name__ == "__main__":
    run_main(main, get_args_parser())
