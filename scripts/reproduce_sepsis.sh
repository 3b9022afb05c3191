#!/usr/bin/env bash
# Reproduce the sepsis numbers of docs/results.md: the sweeps, then the tables and the plot.
#
#   bash scripts/reproduce_sepsis.sh [results/sepsis.jsonl]      # ~1.5 hours on 2 CPU cores (JOBS=2)
#
# Finished runs are skipped, so an interrupted reproduction resumes where it stopped. Every run is
# seeded (experiment mode: reproducible, and its record says the guarantee does not hold for that
# model); add --secure_rng to a command to train a model you may release.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_python.sh  # PY: the interpreter with the package (never a bare `python` from PATH)
out=${1:-results/sepsis.jsonl}
export JOBS=${JOBS:-2} SEEDS=${SEEDS:-"1 2 3"}
DP_MODES="dpsgd naive_fusion naive_fusion_pub feature-dp calibrated_fusion fusiondp"

# 1. the non-private modes (epsilon does not apply to them)
MODES="sgd_ori sgd_hybrid sgd_pub" EPSILONS=2 bash scripts/sweep_sepsis.sh "$out" > /dev/null
# 2. every DP mode at every epsilon, with the defaults: --scaling support, alpha = 3 capped by the
#    rule alpha*sigma <= 3 (--max_private_noise), beta = 0.5, PLD accountant
MODES="$DP_MODES" EPSILONS="0.5 1 2 4" bash scripts/sweep_sepsis.sh "$out" > /dev/null
# 3. the reference setting: the same, with the fixed alpha = 3 at every epsilon
MODES="calibrated_fusion fusiondp" EPSILONS="0.5 1 2 4" bash scripts/sweep_sepsis.sh "$out" --max_private_noise 0 > /dev/null
# 4. other scaling sources: DP statistics over all 14,293 rows, and the authors' (not private) choice
MODES=fusiondp EPSILONS="1 2" bash scripts/sweep_sepsis.sh "$out" --scaling dp --support_rows 0 > /dev/null
MODES="dpsgd fusiondp" EPSILONS=2 bash scripts/sweep_sepsis.sh "$out" --scaling private > /dev/null
# 5. the reference accountant (RDP) at the same targets: larger sigma
MODES="dpsgd fusiondp" EPSILONS="0.5 2" bash scripts/sweep_sepsis.sh "$out" --accountant rdp > /dev/null

mkdir -p docs/tables
main="scaling=support accountant=pld,none max_private_noise=3.0"
"$PY" scripts/make_tables.py "$out" --group mode epsilon --where $main \
  --out docs/tables/sepsis_modes_eps.md --plot docs/sepsis_aupr_vs_eps.png
"$PY" scripts/make_tables.py "$out" --group mode epsilon max_private_noise --where scaling=support accountant=pld \
  mode=fusiondp,calibrated_fusion --metrics test_aupr test_auroc val_aupr --out docs/tables/sepsis_alpha_rule.md
"$PY" scripts/make_tables.py "$out" --group mode epsilon scaling --where accountant=pld max_private_noise=3.0 \
  mode=fusiondp,dpsgd --include_outside_guarantee --metrics test_aupr test_auroc --out docs/tables/sepsis_scaling.md
"$PY" scripts/make_tables.py "$out" --group mode epsilon accountant sigma --where scaling=support max_private_noise=3.0 \
  mode=fusiondp,dpsgd --metrics test_aupr test_auroc --out docs/tables/sepsis_accountant.md
