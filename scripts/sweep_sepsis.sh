#!/usr/bin/env bash
# Sweep a training script over modes x epsilon x alpha x beta x seeds, skipping runs already in the
# results (same settings, all flags compared), N jobs at a time, then print the mean ± std table.
# A thin wrapper over scripts/sweep.py (local launcher), kept for the environment-variable interface;
# for SLURM or Ray, or a results folder, use scripts/sweep.py directly (docs/sweeps.md).
# Sepsis by default; SCRIPT=train_fusiondp_bank.py (with its flags) sweeps another dataset.
#
#   scripts/sweep_sepsis.sh results/sepsis.jsonl [extra flags for the train script]
#   MODES="dpsgd fusiondp" EPSILONS="1 2" SEEDS="1 2 3" JOBS=2 scripts/sweep_sepsis.sh results/sepsis.jsonl --epochs 5
#   scripts/sweep_sepsis.sh results/sepsis/      # a results folder: one JSON file per run
#
# Lists (space-separated) come from the environment; defaults: all nine modes, EPSILONS="0.5 1 2 4",
# the reference ALPHAS=3.0 and BETAS=0.5, SEEDS="1 2 3", JOBS=1. SCRIPT picks another train script,
# TABLE_METRICS the metrics of the final table (default: make_tables.py's), LOGS the folder of the
# runs' logs (default: RESULTS without .jsonl, plus .logs; RESULTS/logs for a folder). A failed run is
# named with its log and its error line at the end, and the sweep then exits non-zero (finished runs
# are kept).
set -euo pipefail
results=${1:?usage: $0 RESULTS.jsonl|RESULTS_FOLDER/ [extra flags for the train script]}
shift
cd "$(dirname "$0")/.."
source scripts/_python.sh  # PY: the interpreter with the package (never a bare `python` from PATH)
# Word splitting of the lists is intended: each is one flag's values.
# shellcheck disable=SC2086
exec "$PY" scripts/sweep.py --launcher local --script "${SCRIPT:-train_fusiondp_sepsis.py}" \
  --modes ${MODES:-sgd_ori sgd_hybrid sgd_pub dpsgd naive_fusion naive_fusion_pub feature-dp calibrated_fusion fusiondp} \
  --epsilons ${EPSILONS:-0.5 1 2 4} --alphas ${ALPHAS:-3.0} --betas ${BETAS:-0.5} --seeds ${SEEDS:-1 2 3} \
  --jobs "${JOBS:-1}" --results "$results" ${LOGS:+--logs "$LOGS"} \
  ${TABLE_METRICS:+--table_metrics $TABLE_METRICS} -- "$@"
