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
# TABLE_METRICS the metrics of the final table (default: make_tables.py's), LOGS the folder of the
# runs' logs (default: RESULTS without .jsonl, plus .logs). A failed run is named with its log and its
# first error line at the end, and the sweep then exits non-zero (finished runs are kept).
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

logs=${LOGS:-${results%.jsonl}.logs}
mkdir -p "$logs"
todo=$(mktemp)
failed=$(mktemp)
trap 'rm -f "$todo" "$failed"' EXIT
total=0
for mode in $MODES; do for eps in $EPSILONS; do for alpha in $ALPHAS; do for beta in $BETAS; do
  for seed in $SEEDS; do
    total=$((total + 1))
    log="$logs/$(printf '%s_eps%s_a%s_b%s_s%s' "$mode" "$eps" "$alpha" "$beta" "$seed").log"
    # --skip_existing: the script returns at once if the results file holds a run with the same settings.
    cmd=$(printf '%q ' python "$SCRIPT" --mode "$mode" --epsilon "$eps" --alpha "$alpha" --beta "$beta" \
      --seed "$seed" --results_json "$results" --skip_existing --no_progress "$@")
    # One line per finished run, so a long sweep shows progress; output goes to the run's log.
    name="$mode eps=$eps alpha=$alpha beta=$beta seed=$seed"
    printf '%s > %q 2>&1 && { grep -q "^skipped: " %q && echo "skipped (in the results already): %s" >&2 || echo "done: %s" >&2; } || { echo %q >> %q; echo "FAILED: %s (log: %s)" >&2; }\n' \
      "$cmd" "$log" "$log" "$name" "$name" "$log" "$failed" "$name" "$log" >> "$todo"
  done
done; done; done; done

echo "$total run(s), $JOBS at a time (finished ones are skipped), results in $results, logs in $logs" >&2
xargs -P "$JOBS" -I{} -d '\n' sh -c '{}' < "$todo" || true
n_failed=$(wc -l < "$failed")
if [ "$n_failed" -gt 0 ]; then
  first=$(head -n 1 "$failed")
  reason=$(grep -m 1 -i "error" "$first" || tail -n 1 "$first")
  echo "$n_failed of $total run(s) failed; first error ($first): $reason" >&2
  echo "logs of every run: $logs" >&2
fi
if [ ! -s "$results" ]; then
  echo "no finished runs in $results: no table" >&2
  exit 1
fi
python scripts/make_tables.py "$results" --group mode epsilon ${TABLE_METRICS:+--metrics $TABLE_METRICS}
[ "$n_failed" -eq 0 ]
