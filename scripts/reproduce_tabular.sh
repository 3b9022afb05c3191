#!/usr/bin/env bash
# Reproduce the bank or adult numbers of docs/results.md: impute (hgb stand-in by default, as no
# TabPFN weights are available offline; IMPUTER=tabpfn where they are), sweep, tables and plot.
#
#   bash scripts/reproduce_tabular.sh bank [results/bank.jsonl]     # ~30 minutes on 2 CPU cores
#   bash scripts/reproduce_tabular.sh adult [results/adult.jsonl]   # ~40 minutes
#   JOBS=1 DP_MODES="dpsgd calibrated_fusion fusiondp" bash scripts/reproduce_tabular.sh adult
#
# The DP modes run one epsilon at a time (smallest table first, EPSILONS order), so an interrupted run
# leaves whole rows of the table; finished runs are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_python.sh  # PY: the interpreter with the package (never a bare `python` from PATH)
dataset=${1:?usage: $0 bank|adult [RESULTS.jsonl]}
out=${2:-results/$dataset.jsonl}
IMPUTER=${IMPUTER:-hgb}
BASE_MODES=${BASE_MODES:-"sgd_ori sgd_hybrid sgd_pub"}
DP_MODES=${DP_MODES:-"dpsgd feature-dp calibrated_fusion fusiondp"}
data=outputs/${dataset}_$IMPUTER
export JOBS=${JOBS:-2} SEEDS=${SEEDS:-"1 2 3"} SCRIPT=train_fusiondp_$dataset.py ALPHAS=1.0 BETAS=1.0

# Re-impute unless the folder is complete and its quality metrics are held-out ones (a 'rows' column;
# older versions measured on training rows, a private evaluation that must not reach docs/tables).
if [ ! -f "$data/${dataset}_train_imputed.csv" ] || ! head -n 1 "$data/imputation_metrics.csv" 2>/dev/null | grep -q ',rows,'; then
  "$PY" "impute_$dataset.py" --imputer "$IMPUTER" --out_dir "$data" --no_progress
fi
MODES="$BASE_MODES" EPSILONS=1 bash scripts/sweep_sepsis.sh "$out" --one_hot --data_dir "$data" > /dev/null
for eps in ${EPSILONS:-1 0.5 2 4}; do
  MODES="$DP_MODES" EPSILONS=$eps bash scripts/sweep_sepsis.sh "$out" --one_hot --data_dir "$data" > /dev/null
done

mkdir -p docs/tables
cp "$data/imputation_metrics.csv" "docs/tables/${dataset}_imputation_$IMPUTER.csv"
"$PY" scripts/make_tables.py "$out" --group mode epsilon --out "docs/tables/${dataset}_modes_eps_$IMPUTER.md" \
  --plot "docs/${dataset}_aupr_vs_eps_$IMPUTER.png"
