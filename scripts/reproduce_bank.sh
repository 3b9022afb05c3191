#!/usr/bin/env bash
# Reproduce the bank numbers of docs/results.md: impute (hgb stand-in here, as no TabPFN weights are
# available offline; IMPUTER=tabpfn where they are), sweep, tables.
#
#   bash scripts/reproduce_bank.sh [results/bank.jsonl]      # ~30 minutes on 2 CPU cores (JOBS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bank.jsonl}
IMPUTER=${IMPUTER:-hgb}
data=outputs/bank_$IMPUTER
export JOBS=${JOBS:-2} SEEDS=${SEEDS:-"1 2 3"} SCRIPT=train_fusiondp_bank.py ALPHAS=1.0 BETAS=1.0

[ -f "$data/bank_train_imputed.csv" ] || python impute_bank.py --imputer "$IMPUTER" --out_dir "$data" --no_progress
MODES="sgd_ori sgd_hybrid sgd_pub" EPSILONS=1 bash scripts/sweep_sepsis.sh "$out" --one_hot --data_dir "$data" > /dev/null
MODES="dpsgd feature-dp calibrated_fusion fusiondp" EPSILONS="0.5 1 2 4" \
  bash scripts/sweep_sepsis.sh "$out" --one_hot --data_dir "$data" > /dev/null

mkdir -p docs/tables
cp "$data/imputation_metrics.csv" "docs/tables/bank_imputation_$IMPUTER.csv"
python scripts/make_tables.py "$out" --group mode epsilon --out "docs/tables/bank_modes_eps_$IMPUTER.md" \
  --plot "docs/bank_aupr_vs_eps_$IMPUTER.png"
