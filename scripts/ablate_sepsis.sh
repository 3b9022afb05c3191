#!/usr/bin/env bash
# The one-change-at-a-time rows of docs/results.md, "What each direction measured" (sepsis, ε = 2,
# seeds 1-3): every run starts from tuned dpsgd's winning configuration (study seed 0, trial 5) and
# changes one thing. Records go to one folder per row group; summarise them with
#   python scripts/make_tables.py RESULTS/<group> --group mode <the group's flag>
#
#   bash scripts/ablate_sepsis.sh [RESULTS [TRAIN FLAGS...]]   # default results/ablate_sepsis; ~2 h, one core
#   ONLY=warmup bash scripts/ablate_sepsis.sh      # one group: base pretrain alpha warmup clip
#
# TRAIN FLAGS go to every run, last (e.g. --data_dir DIR; the tests use them for a tiny run).
# Finished runs are skipped on a rerun (--skip_existing).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_python.sh  # PY: the interpreter with the package (never a bare `python` from PATH)
out=${1:-results/ablate_sepsis}
EXTRA=("${@:2}")
SEEDS=${SEEDS:-"1 2 3"}
# dpsgd's winner at ε = 2 (docs/results.md); --alpha 3 --beta 0.5 are the reference's.
W=(--epsilon 2 --lr 0.02554877905895379 --max_grad_norm 2.810148552211123 --batch_size 512 --epochs 13
   --optimizer momentum --lr_schedule constant --sensitive_scale 1.6458294686428658
   --public_batch_size 4096 --no_progress --skip_existing)
F=(--mode fusiondp --alpha 3 --beta 0.5)

run() {  # run GROUP FLAGS...: one training run into $out/GROUP/
  local group=$1
  shift
  if [ -z "${ONLY:-}" ] || [ "$ONLY" = "$group" ]; then
    "$PY" train_fusiondp_sepsis.py "${W[@]}" "$@" "${EXTRA[@]}" --results_json "$out/$group/"
  fi
}

for s in $SEEDS; do
  run base --mode dpsgd --seed "$s"
  run base "${F[@]}" --seed "$s"
  run pretrain --mode naive_fusion --mix_weight 1 --seed "$s"  # replace-one σ, no public term
  for pe in 2 10; do
    run pretrain --mode pretrain_dpsgd --pretrain_epochs "$pe" --pretrain_lr 0.07 --seed "$s"
  done
  run pretrain "${F[@]}" --pretrain_epochs 10 --pretrain_lr 0.07 --seed "$s"  # fusiondp, warm start
  for b in 0 0.5; do  # α 1, no cap: the objective is the original rows' loss, as dpsgd's
    run alpha --mode fusiondp --alpha 1 --max_private_noise 0 --beta "$b" --seed "$s"
  done
  for a in 2.5 3; do  # α past the cap
    run alpha --mode fusiondp --alpha "$a" --max_private_noise 0 --beta 0.5 --seed "$s"
  done
  for w in 0.5 1; do
    run warmup "${F[@]}" --alpha_warmup "$w" --seed "$s"
  done
done
# The clip norm with α 1 (seed 1 only in docs/results.md; a row's flags come after W's and win).
for c in 1.0 0.5; do
  run clip --mode fusiondp --alpha 1 --max_private_noise 0 --beta 0.5 --seed 1 --max_grad_norm "$c"
done
echo "records in $out/"
