#!/usr/bin/env bash
# HTE distilled with its wide part on the side features plus the current session's organic views
# (model.hte_side + model.hte_session), per seed from stages.py's VAFT run (or INIT=hepo_vaft_arr,
# the anchored HEPO with ARR), into {INIT}_hteses. Expects the runs of
# experiments/stages/stages.py under CACHE/stages (docs/results/log/stages_analysis.md §14 used
# out/bench_s5).
#   [INIT=vaft] bash experiments/stages/hte_session.sh CACHE SEED...
# then the table (w tuned on the valid day over the grid):
#   python experiments/business/bid_serving.py --seeds 7 8 9 --stages vaft_hteses vaft_hte40 \
#     --judge hte --grid 0 2 4 --work CACHE/stages --cache CACHE \
#     --out docs/results/judge_serving_hte_session.md
set -euo pipefail
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
cache=$1
init=${INIT:-vaft}
shift
for s in "$@"; do
  W=$cache/stages/s$s
  [ -f "$W/${init}_hteses/run.json" ] || gpr train --stage hte --init "$W/$init" \
    --simulator "$cache/cascade_s$s" --preset small --seed "$s" --set model.hte_side=true \
    --set model.hte_session=true --out "$W/${init}_hteses"
done
