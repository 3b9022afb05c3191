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
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the *_bank.py scripts live at the top

import train_fusiondp_bank as bank
from fusiondp.audit import TabularTask, add_audit_args, run_audit_script
from fusiondp.cli import run_main
from fusiondp.data import load_imputed_splits
from fusiondp.models import small_tabular_mlp
from impute_bank import CATEGORICAL, LABEL, PUBLIC, SENSITIVE


def get_args_parser() -> argparse.ArgumentParser:
    parser = bank.get_args_parser()
    parser.description = __doc__
    return add_audit_args(parser)


def main(args: argparse.Namespace) -> dict:
    frames = load_imputed_splits(
        args.data_dir, dataset="bank", public=PUBLIC, sensitive=SENSITIVE, label=LABEL
    )
    info_path = Path(args.data_dir) / "imputation_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"imputer": "unknown"}
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
        build_model=small_tabular_mlp,
        categorical=CATEGORICAL,
        one_hot=args.one_hot,
        extra_record={
            "data_dir": str(args.data_dir),
            "imputer": info.get("imputer"),
            "deviation_from_paper": info.get("deviation_from_paper"),
        },
    )
    return run_audit_script(task, args)


if __name__ == "__main__":
    run_main(main, get_args_parser())
