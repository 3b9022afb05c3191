"""Diagnosis behind docs/results.md: dpsgd on sepsis with the OLD one-scaler preprocessing.

    OMP_NUM_THREADS=1 python scripts/diag_dpsgd_one_scaler.py --epsilon 2 --seeds 1 2 3

Before per-view scaling, the original view (and val/test) was standardised with the HYBRID rows'
statistics, which spread the informative sensitive columns 1.8-7.2x wider than unit variance. This
runs dpsgd with that scale on today's code (same support split, accountant and everything else) to
measure how much of dpsgd's old score came from it. NOT a private configuration (the hybrid rows'
statistics are statistics of training rows, private under sample-level DP): a diagnosis only; it
prints one JSON line per seed and writes no record.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from fusiondp.datasets import sepsis, training_parser
from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.run import run_experiment
from fusiondp.mechanism.scaling import column_statistics
from fusiondp.models import binary_bce
from fusiondp.tabular.data import data_root


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    cli = parser.parse_args()
    data_dir = data_root() / "sepsis"
    for seed in cli.seeds:
        args = training_parser(sepsis).parse_args(
            ["--mode", "dpsgd", "--epsilon", str(cli.epsilon), "--seed", str(seed), "--no_progress"]
        )
        frames, _ = sepsis.training_frames(
            sepsis.load_frames(data_dir),
            data_dir,
            support_rows=args.support_rows,
            support_seed=args.support_seed,
        )
        data, _ = sepsis.prepare(
            frames,
            # The old scale: the hybrid rows' statistics for the original view too.
            original_stats=column_statistics(frames["train_imputed"], sepsis.SENSITIVE),
            shared_fit=pd.concat([frames["train_imputed"], frames["support"]]),
            noise_seed=seed,
        )
        record = run_experiment(
            RunConfig.from_args(args),
            dataset="sepsis",
            data=data,
            build_model=lambda d=data.num_features: sepsis.build_model(d),
            loss_fn=binary_bce,
        )
        print(
            json.dumps({"seed": seed, "epsilon": cli.epsilon, "test_aupr": record["test_aupr"]}), flush=True
        )


if __name__ == "__main__":
    main()
