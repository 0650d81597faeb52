#!/usr/bin/env bash
# Full GPR with every stage: HEPO with ARR anchored to VAFT (stages.py's hepo_vaft_arr), then its
# HTE distilled from the cascade's ranking model, served alone (w = 0) and ranked with its HTE
# (w = 2, the weight bid_serving.py keeps for vaft_hte40 on the valid day). Expects the runs of
# experiments/stages/stages.py under CACHE/stages (docs/results/log/stages_analysis.md §13 used
# out/bench_s5).
#   bash experiments/stages/hepo_anchored.sh CACHE SEED...
# then the table (w tuned on vaft_hte40, as in judge_serving_hte_topics5.md):
#   python experiments/business/bid_serving.py --seeds 7 8 9 \
#     --stages vaft_hte40 hepo_vaft_arr_hte40 --judge hte --grid 0 2 --work CACHE/stages \
#     --cache CACHE --out docs/results/judge_serving_hepo.md
set -euo pipefail
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
cache=$1
shift
for s in "$@"; do
  W=$cache/stages/s$s
  [ -f "$W/hepo_vaft_arr_hte40/run.json" ] || gpr train --stage hte --init "$W/hepo_vaft_arr" \
    --simulator "$cache/cascade_s$s" --preset small --seed "$s" --out "$W/hepo_vaft_arr_hte40"
done
