#!/usr/bin/env bash
# Reproduce the sepsis numbers of docs/results.md: the sweeps, then the tables and the plot.
#
#   bash scripts/reproduce_sepsis.sh [results/sepsis.jsonl]      # ~1 hour on 2 CPU cores (JOBS=2)
#
# Finished runs are skipped, so an interrupted reproduction resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/sepsis.jsonl}
export JOBS=${JOBS:-2} SEEDS=${SEEDS:-"1 2 3"}

# 1. every mode at the reference setting (epsilon = 2, alpha = 3, beta = 0.5)
EPSILONS=2 bash scripts/sweep_sepsis.sh "$out" > /dev/null
# 2. the privacy-utility curve of the DP modes
MODES="dpsgd feature-dp calibrated_fusion fusiondp" EPSILONS="0.5 1 4" bash scripts/sweep_sepsis.sh "$out" > /dev/null
# 3. sensitivity to alpha, the weight of the private gradient (chosen by looking at test data: not private)
MODES="calibrated_fusion fusiondp" EPSILONS=2 ALPHAS="0.3 1" bash scripts/sweep_sepsis.sh "$out" > /dev/null

mkdir -p docs/tables
python scripts/make_tables.py "$out" --group mode epsilon --where alpha=3.0 \
  --out docs/tables/sepsis_modes_eps.md --plot docs/sepsis_aupr_vs_eps.png
python scripts/make_tables.py "$out" --group mode alpha --where epsilon=2 \
  --metrics test_aupr test_auroc --out docs/tables/sepsis_alpha.md
