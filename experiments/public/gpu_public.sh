#!/usr/bin/env bash
# One GPU, one call: the public-benchmark runs of docs/results/log/public.md's GPU section, side
# by side.
#
#   python experiments/public/public.py --datasets beauty sports --preset small --prepare-only \
#       --set tokenizer.balanced=true --set tokenizer.collab_dim=64 --work out/pub   # on the CPU
#   BUDGET=270 OUT=out/gpu bash experiments/public/gpu_public.sh                   # on the GPU
#   RUNS=pair TAG=gpu2 BUDGET=220 ...   # only Beauty GPR-1 and TIGER (seed 7), two processes
#
# Every run: Beauty's best CPU setting (public.md row 10: balanced + collaborative SIDs, content
# vector on the inputs, GPR with one MTP head and no refiner) on the `small` preset, each run
# stopped after the epoch that crosses BUDGET seconds (train.max_seconds) unless early stopping
# comes first, then tested on every user. Writes $OUT/summary.tsv, $OUT/runs.tar.gz (run folders
# and logs) and the seed-7 checkpoints in 15 MB parts ($OUT/ckpt_<dataset>.tar.part*).
set -uo pipefail
BUDGET=${BUDGET:-270}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-out/pub}
KILL_AFTER=${KILL_AFTER:-540}
OUT=${OUT:-out/gpu}
RUNS=${RUNS:-all}
TAG=${TAG:-gpu}
LOGS=$WORK/logs_$TAG
mkdir -p "$OUT" "$LOGS"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

common=(--preset small --work "$WORK" --set train.batch_size=256 --set runtime.threads=1
  --set train.lr=3e-3 --set train.eval_every=2 --set train.patience=4
  --set train.max_eval_requests=3000 --set tokenizer.balanced=true --set tokenizer.collab_dim=64
  --set model.content_input=true --set model.mtp_heads=1 --set model.refining=false
  --set train.epochs=40 --set "train.max_seconds=$BUDGET" --set "train.device=$DEVICE")

launch() {  # name, then public.py arguments
  local name=$1
  shift
  timeout "$KILL_AFTER" python3 experiments/public/public.py "${common[@]}" "$@" \
    >"$LOGS/$name.log" 2>&1 &
}

PATTERN=${PATTERN:-run_*_${TAG}*_s*}
if [ -z "${SUMMARY_ONLY:-}" ] && [ "$RUNS" = pair ]; then
  launch beauty_gpr_s7 --datasets beauty --models gpr --tag "$TAG" --seeds 7
  launch beauty_tiger_s7 --datasets beauty --models tiger --tag "$TAG" --seeds 7
  wait
fi
[ -n "${SUMMARY_ONLY:-}" ] || [ "$RUNS" != all ] || {
  for s in 7 8 9; do
    launch "beauty_gpr_s$s" --datasets beauty --models gpr --tag "$TAG" --seeds "$s"
    launch "beauty_tiger_s$s" --datasets beauty --models tiger --tag "$TAG" --seeds "$s"
  done
  launch beauty_hstu_s7 --datasets beauty --models hstu --tag "$TAG" --seeds 7
  launch beauty_sasrec_s7 --datasets beauty --models sasrec --tag "$TAG" --seeds 7
  launch beauty_gpr_d128_s7 --datasets beauty --models gpr --tag "${TAG}d128" --seeds 7 \
    --set model.d_model=128 --set model.layers=4 --set model.heads=4
  launch beauty_gpr_d256_s7 --datasets beauty --models gpr --tag "${TAG}d256" --seeds 7 \
    --set model.d_model=256 --set model.layers=4 --set model.heads=4 --set train.lr=1e-3
  launch beauty_gpr_mtp4_s7 --datasets beauty --models gpr --tag "${TAG}mtp4" --seeds 7 \
    --set model.mtp_heads=4
  for m in gpr tiger sasrec; do
    launch "sports_${m}_s7" --datasets sports --models "$m" --tag "$TAG" --seeds 7
  done
  wait
}

{
  printf 'run\tmodel\tepochs\tstopped_by\tbest_epoch\ttrain_s\tvalid_n10\tR@5\tN@5\tR@10\tN@10\n'
  for run in "$WORK"/*/$PATTERN; do
    [ -f "$run/eval_test.json" ] || { printf '%s\tnot finished\n' "$run"; continue; }
    python3 - "$run" <<'EOF'
import json, sys
r = sys.argv[1]
i, e = json.load(open(f"{r}/run.json")), json.load(open(f"{r}/eval_test.json"))
b = i.get("best", {})
cells = [r, i["model"], i["epochs_run"], i.get("stopped_by"), b.get("epoch"), i["seconds"],
         f"{b.get('ndcg@10', float('nan')):.4f}",
         *(f"{e[k]:.4f}" for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"))]
print("\t".join(map(str, cells)))
EOF
  done
} >"$OUT/summary.tsv"
tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' "$WORK"/*/$PATTERN "$LOGS" 2>/dev/null
for d in beauty sports; do  # checkpoints, in parts under the 16 MiB a returned file may have
  # seed 7 only, and none over 15 MB (a base-size model would take more files than come back)
  find "$WORK/$d" -path "*/$PATTERN/model.safetensors" -size -15M 2>/dev/null | grep -v '_s[89]/' |
    tar cf - -T - | split -b 15M - "$OUT/ckpt_$d.tar.part"
done
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv >"$OUT/gpu.txt" 2>&1
cat "$OUT/summary.tsv"
