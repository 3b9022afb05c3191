#!/usr/bin/env bash
# Sweep a training script over modes x epsilon x alpha x beta x seeds, skipping runs already in the
# results file (same settings, all flags compared), N jobs at a time, then print the mean ± std table.
# Sepsis by default; SCRIPT=train_fusiondp_bank.py (with its flags) sweeps another dataset.
#
#   scripts/sweep_sepsis.sh results/sepsis.jsonl [extra flags for the train script]
#   MODES="dpsgd fusiondp" EPSILONS="1 2" SEEDS="1 2 3" JOBS=2 scripts/sweep_sepsis.sh results/sepsis.jsonl --epochs 5
#
# Lists (space-separated) come from the environment; defaults: all nine modes, EPSILONS="0.5 1 2 4",
# the reference ALPHAS=3.0 and BETAS=0.5, SEEDS="1 2 3", JOBS=1. SCRIPT picks another train script,
# TABLE_METRICS the metrics of the final table (default: make_tables.py's).
set -euo pipefail
results=${1:?usage: $0 RESULTS.jsonl [extra flags for the train script]}
shift
MODES=${MODES:-"sgd_ori sgd_hybrid sgd_pub dpsgd naive_fusion naive_fusion_pub feature-dp calibrated_fusion fusiondp"}
EPSILONS=${EPSILONS:-"0.5 1 2 4"}
ALPHAS=${ALPHAS:-3.0}
BETAS=${BETAS:-0.5}
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-1}
SCRIPT=${SCRIPT:-train_fusiondp_sepsis.py}
cd "$(dirname "$0")/.."
# Parallel jobs share the cores instead of each starting one thread per core.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}

todo=$(mktemp)
trap 'rm -f "$todo"' EXIT
for mode in $MODES; do for eps in $EPSILONS; do for alpha in $ALPHAS; do for beta in $BETAS; do
  for seed in $SEEDS; do
    # --skip_existing: the script returns at once if the results file holds a run with the same settings.
    printf '%q ' python "$SCRIPT" --mode "$mode" --epsilon "$eps" --alpha "$alpha" --beta "$beta" \
      --seed "$seed" --results_json "$results" --skip_existing --no_progress "$@" >> "$todo"
    echo >> "$todo"
  done
done; done; done; done

echo "$(wc -l < "$todo") run(s), $JOBS at a time (finished ones are skipped), results in $results" >&2
xargs -P "$JOBS" -I{} -d '\n' sh -c '{} || echo "FAILED: {}" >&2' < "$todo"
python scripts/make_tables.py "$results" --group mode epsilon ${TABLE_METRICS:+--metrics $TABLE_METRICS}
