#!/usr/bin/env bash
# GPU smoke benchmark: EgoAgent-300M then EgoAgent-1B with the shipped configs' micro-batch and
# recomputation, 30 ZeRO-2 bf16 steps each on generated clips (the real trainer step: DeepSpeed
# engine, EMA teacher, three losses); the 300M again with model.compile_elementwise; a sync
# check (one step under torch.cuda.set_sync_debug_mode: no synchronisation from our code); and,
# where Transformer Engine imports, the TE spec in bf16 and FP8. Asserts finite losses and prints
# one table (clips/s, TFLOP/s, MFU, peak memory). One call, under 8 minutes on one H100.
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
  mb_300m=1 mb_1b=1
else
  precision=bf16 steps=30 warmup=3 shrink=()
  mb_300m=$(awk '/micro_batch_size/ {print $2}' configs/egoagent_300m.yaml)
  mb_1b=$(awk '/micro_batch_size/ {print $2}' configs/egoagent_1b.yaml)
fi
run configs/egoagent_300m.yaml "$mb_300m" "${shrink[@]}"
run configs/egoagent_1b.yaml "$mb_1b" "${shrink[@]}"
if [ "$dry_run" -eq 0 ]; then  # torch.compile on a CPU takes minutes
  run configs/egoagent_300m.yaml "$mb_300m" --model.compile_elementwise=true
fi
steps=1 warmup=2 run configs/egoagent_300m.yaml "$mb_300m" "${shrink[@]}" --sync-check
if "$py" -c "import transformer_engine.pytorch" 2>/dev/null; then
  run configs/egoagent_300m.yaml "$mb_300m" "${shrink[@]}" --model.transformer_impl=transformer_engine
  run configs/egoagent_300m.yaml "$mb_300m" "${shrink[@]}" --model.transformer_impl=transformer_engine \
    --model.fp8=true
else
  echo "transformer_engine does not import: TE and FP8 rows skipped"
fi

"$py" - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert rows and all(r.get("losses_finite") for r in rows), "non-finite loss or no result"
assert not any(r.get("syncs_ours") for r in rows), "host-device sync in our step"
print(f"{'config':28} {'spec':18} {'recompute':9} {'mb':>4} {'clips/s':>9} {'TFLOP/s':>9} "
      f"{'MFU':>7} {'peak GiB':>9} {'syncs (ours/DeepSpeed)':>22}")
for r in rows:
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
    mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "n/a"
    syncs = f"{len(r['syncs_ours'])}/{r['syncs_other']}" if "syncs_ours" in r else ""
    spec = r["layer_spec"] + ("+compile" if r.get("compile_elementwise") else "")
    print(f"{r['config']:28} {spec:18} {str(r['recompute']):9} {r['micro_batch']:>4} "
          f"{r['clips_per_s']:>9.2f} {r['tflops_per_device']:>9.1f} {mfu:>7} {mem:>9} {syncs:>22}")
PY
