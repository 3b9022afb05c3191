#!/usr/bin/env bash
# The notes stand-in sweep (docs/tables/mimic_standin_modes.md): train_fusiondp_mimic.py on the medical
# abstracts, the six text modes, DP modes at EPSILONS (default "1 5"), the non-private modes once per
# seed, SEEDS (default "1 2 3"), alpha = beta = 0.5 (the MIMIC reference), through scripts/sweep_sepsis.sh
# (finished runs are skipped). The stand-in configuration below is cheaper than the MIMIC reference so
# the whole sweep fits about 45 min of one CPU thread; docs/tables/mimic_standin_modes.md says why.
#
#   OMP_NUM_THREADS=1 scripts/sweep_mimic.sh results/mimic_standin.jsonl --data_dir outputs/medical_abstracts
set -euo pipefail
results=${1:?usage: $0 RESULTS.jsonl [extra flags for train_fusiondp_mimic.py]}
shift
cd "$(dirname "$0")/.."
source scripts/_python.sh  # PY: the interpreter with the package (never a bare `python` from PATH)
export SCRIPT=train_fusiondp_mimic.py ALPHAS=0.5 BETAS=0.5 SEEDS=${SEEDS:-"1 2 3"}
export TABLE_METRICS="test_micro_f1 test_macro_f1 test_micro_auc test_macro_auc"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
STANDIN=(--dataset medical_abstracts --epochs 10 --max_len 128 --filters 32 --batch_size 64
  --public_batch_size 64 --lr 1.0)
# word2vec from the hybrid notes for the feature-level modes; dpsgd (whole notes private) takes its
# vocabulary and embeddings from a pretrained table (MiniLM, its default) and refuses word2vec.
W2V=(--embeddings word2vec --embedding_dim 50)
MODES="sgd_ori sgd_hybrid" EPSILONS=5 scripts/sweep_sepsis.sh "$results" "${STANDIN[@]}" "${W2V[@]}" "$@"
MODES="naive_fusion calibrated_fusion fusiondp" EPSILONS=${EPSILONS:-"1 5"} \
  scripts/sweep_sepsis.sh "$results" "${STANDIN[@]}" "${W2V[@]}" "$@"
MODES="dpsgd" EPSILONS=${EPSILONS:-"1 5"} scripts/sweep_sepsis.sh "$results" "${STANDIN[@]}" "$@"
