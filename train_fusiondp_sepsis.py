r"""FusionDP on PhysioNet 2019 sepsis prediction (one row per patient; 6 sensitive columns).

Reference command (the paper authors' README; these are also the defaults):

    python train_fusiondp_sepsis.py --mode fusiondp --epsilon 2.0 --epochs 13 \
        --max_grad_norm 1.8 --alpha 3.0 --beta 0.5

Data (fusiondp/datasets/sepsis.py holds the columns, files, bounds and model): ``train_ori.csv``,
``train_hybrid.csv`` (the same rows, sensitive columns imputed by TabPFN from the public columns),
``val.csv`` and ``test.csv`` in ``--data_dir``; the default is ``$FUSIONDP_DATA/sepsis``
(``FUSIONDP_DATA`` defaults to ``../shared/data`` beside the repository). ``ICULOS_bin`` is a binned
copy of the sensitive ICULOS that was not imputed: it is never a feature.

Scaling (``--scaling``): the release ships no public support set, so ``--support_rows`` (512) rows of
train_ori.csv, drawn with ``--support_seed`` (the same rows ``impute_sepsis.py --released_dir``
takes), are treated as public, dropped from training, and scale the original view; a data folder
with its own ``support.csv`` (``impute_sepsis.py`` output) uses that instead, after checking that it
shares no row with ``train_ori.csv``. A folder ``impute_sepsis.py`` wrote has already dropped its
support rows: without its ``support.csv`` it is refused unless ``--support_rows`` is given (a second
draw would declare more private rows public). ``--scaling dp --support_rows 0`` trains on all 14,293
rows and estimates the scale under DP within ε.
"""

from __future__ import annotations

import argparse

from fusiondp.datasets import sepsis, training_parser
from fusiondp.experiment.cli import run_main
from fusiondp.experiment.config import RunConfig
from fusiondp.tabular.data import data_root
from fusiondp.tabular.runner import run_tabular


def get_args_parser() -> argparse.ArgumentParser:
    return training_parser(sepsis, __doc__)


def main(args: argparse.Namespace) -> dict:
    data_dir = args.data_dir or data_root() / "sepsis"
    # Resolved into args before the record is built: its settings name the value used.
    args.support_rows = sepsis.resolve_support_rows(data_dir, args.support_rows)
    frames, support_where = sepsis.training_frames(
        sepsis.load_frames(data_dir, max_train_rows=args.max_train_rows),
        data_dir,
        support_rows=args.support_rows,
        support_seed=args.support_seed,
    )
    return run_tabular(
        RunConfig.from_args(args),
        dataset="sepsis",
        frames=frames,
        public=sepsis.PUBLIC,
        sensitive=sepsis.SENSITIVE,
        categorical=sepsis.CATEGORICAL,
        label=sepsis.LABEL,
        bounds=sepsis.BOUNDS,
        support_where=support_where,
        build_model=sepsis.build_model,
        binary=sepsis.BINARY,
        extra_record={
            "data_dir": str(data_dir),
            "support_set": support_where,
            **sepsis.provenance(data_dir),
        },
        groups=sepsis.GROUPS,
    )


if __name__ == "__main__":
    run_main(main, get_args_parser())
