#!/usr/bin/env bash
# GPU smoke benchmark: EgoAgent-300M then EgoAgent-1B, 30 ZeRO-2 bf16 steps each on generated
# clips (the real trainer step: DeepSpeed engine, EMA teacher, three losses), asserting finite
# losses and printing clips/s, TFLOP/s, MFU and peak memory as JSON lines.
#
#   bench/gpu_smoke.sh [--out DIR]     # one H100/A100; under 8 minutes
#   bench/gpu_smoke.sh --dry-run       # CPU: the same objects, shrunk (1 layer, small heads)
#
# Needs torch, deepspeed and megatron-core; where the last two are missing and wheels lie in
# .whl/ (see docs/benchmarks.md), they are installed into a temporary folder first. No network.
# A CUDA out-of-memory error retries the same config at half the micro-batch.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out_dir="runs/gpu_smoke"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --out) out_dir="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
    *) echo "usage: $0 [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=launch/python_env.sh
source launch/python_env.sh  # sets $py; deepspeed + megatron-core importable
export PYTHONUNBUFFERED=1
mkdir -p "$out_dir"
results="$out_dir/results.jsonl"
: > "$results"

"$py" - <<'PY'
import deepspeed, megatron.core, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"torch {torch.__version__}  deepspeed {deepspeed.__version__}  "
      f"megatron-core {megatron.core.__version__}  gpu {gpu}", flush=True)
PY

run() {  # run CONFIG MICRO_BATCH [overrides...]: retry at half the batch on OOM
  local config="$1" mb="$2"; shift 2
  while [ "$mb" -ge 1 ]; do
    set +e
    "$py" bench/train_step.py --config "$config" --micro-batch "$mb" --precision "$precision" \
      --steps "$steps" --warmup "$warmup" --json "$results" "$@"
    local rc=$?
    set -e
    if [ "$rc" -ne 3 ]; then return "$rc"; fi
    mb=$((mb / 2))
    echo "out of memory: retrying $config at micro-batch $mb" >&2
  done
  return 3
}

if [ "$dry_run" -eq 1 ]; then
  precision=fp32 steps=1 warmup=0
  shrink=(--model.num_layers=1 --model.head_out_dim=256 --model.head_hidden_dim=128
          --data.num_local_crops=1 --model.recompute=true)
  run configs/egoagent_300m.yaml 1 "${shrink[@]}"
  run configs/egoagent_1b.yaml 1 "${shrink[@]}"
else
  precision=bf16 steps=30 warmup=3
  run configs/egoagent_300m.yaml 64
  run configs/egoagent_1b.yaml 32
fi

"$py" - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert rows and all(r.get("losses_finite") for r in rows), "non-finite loss or no result"
print(f"{'config':32} {'mb':>4} {'clips/s':>9} {'TFLOP/s':>9} {'MFU':>7} {'peak GiB':>9}")
for r in rows:
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
    mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "n/a"
    print(f"{r['config']:32} {r['micro_batch']:>4} {r['clips_per_s']:>9.2f} "
          f"{r['tflops_per_device']:>9.1f} {mfu:>7} {mem:>9}")
PY
