#!/usr/bin/env bash
# GPR with HSTU's temporal attention bias (model.time_bias), per seed: MTP -> VAFT -> HTE distilled
# from the cascade's ranking model, then the replays of bid_serving.py (w = 0: VAFT alone;
# w = 2: GPR alone with its HTE). Expects the worlds, SIDs and cascades of
# experiments/stages/stages.py.
#   bash experiments/stages/time_bias.sh CACHE SEED...
# (docs/results/log/stages_analysis.md §12 used out/bench_s5). The 3-seed table:
#   python experiments/business/bid_serving.py --seeds 7 8 9 --stages vaft_hte40 vaft_tb_hte40 \
#     --judge hte --grid 0 2 --work CACHE/stages --cache CACHE \
#     --out docs/results/judge_serving_time_bias.md
set -euo pipefail
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
cache=$1
shift
for s in "$@"; do
  W=$cache/stages/s$s
  C=$cache/cascade_s$s
  [ -f "$W/mtp_tb/run.json" ] || gpr train --model gpr --data "$cache/world_s$s" --sids "$W/sids" \
    --preset small --seed "$s" --set model.time_bias=true --out "$W/mtp_tb"
  [ -f "$W/vaft_tb/run.json" ] || gpr train --stage vaft --init "$W/mtp_tb" --simulator "$C" \
    --preset small --seed "$s" --out "$W/vaft_tb"
  [ -f "$W/vaft_tb_hte40/run.json" ] || gpr train --stage hte --init "$W/vaft_tb" --simulator "$C" \
    --preset small --seed "$s" --out "$W/vaft_tb_hte40"
  python experiments/business/bid_serving.py --seeds "$s" --stages vaft_tb_hte40 --judge hte \
    --grid 0 2 --jobs 1 --work "$cache/stages" --cache "$cache" --out "$cache/bid_tb_s$s.md"
done
