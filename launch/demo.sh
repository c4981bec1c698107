#!/usr/bin/env bash
# The whole job on the embedded demo world, on CPU: demo world -> preprocessing -> pretraining
# in two stages as the paper's recipe (the representation alone, then the joint model started
# from it; 2 processes, DeepSpeed ZeRO-2 over gloo) -> export -> evaluation -> summary table.
# Everything goes under runs/demo/ (or DEMO_DIR). A second run resumes where the first stopped
# (each stage skips finished work); if the demo's settings changed, it starts clean instead of
# mixing.
#
# Usage:
#   make demo                   (runs `make setup` first)
#   bash launch/demo.sh         (with .venv already set up)
#   DEMO_DIR=runs/demo2 bash launch/demo.sh   (another folder; the config's paths follow it)
#   bash launch/demo.sh --help  (this text)
# Takes no other arguments. `make clean-demo` removes runs/demo.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }
case "${1:-}" in
  "") ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; echo "error: unknown argument '$1': launch/demo.sh takes none (see above)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

# Tell DeepSpeed the accelerator on a machine without NVIDIA GPUs, instead of letting every
# process (launcher and ranks) warn that it fell back to the CPU.
if ! command -v nvidia-smi > /dev/null 2>&1; then
  export DS_ACCELERATOR=cpu
fi

py=.venv/bin/python
demo="${DEMO_DIR:-runs/demo}"
config=configs/tiny_cpu.yaml
stage1_config=configs/tiny_cpu_stage1.yaml
# 20 takes, every 4th to val: 5 val takes whose clips hold 239 distinct transitions where the
# camera turns 10 degrees or more between I_t and I_t+1 (tests/test_demo_world.py counts them)
world=(--takes 20 --seconds 20 --resolution 160 --seed 0)
size=128
# the run folder is run.output_dir/run.name: $demo itself
paths=("--data.egoexo4d_path=$demo/data/egoexo4d/train"
       "--data.walking_tours_path=$demo/data/walking_tours"
       "--run.output_dir=$(dirname "$demo")" "--run.name=$(basename "$demo")")

# Start clean when the settings that produced runs/demo changed (never mix two demos).
stamp="$(printf '%s\n' "${world[*]}" "$size" | cat - "$config" "$stage1_config" configs/zero2.json |
  sha256sum | cut -c1-16)"
if [ -d "$demo" ] && [ "$(cat "$demo/DEMO_STAMP" 2>/dev/null)" != "$stamp" ]; then
  echo "== $demo was made with other settings: starting clean"
  rm -rf "$demo"
fi
mkdir -p "$demo"
echo "$stamp" > "$demo/DEMO_STAMP"

echo "== 1/5 demo world (Ego-Exo4D layout, WalkingTours-like videos, k-NN ImageFolder)"
if [ ! -f "$demo/raw/takes.json" ]; then
  rm -rf "$demo/raw"
  "$py" -m preprocess.demo_world --out "$demo/raw.tmp" "${world[@]}" --workers 2
  mv "$demo/raw.tmp" "$demo/raw"
fi

echo "== 2/5 preprocessing into Megatron indexed datasets (the three sets side by side)"
pids=()
for split in train val; do
  "$py" -m preprocess.egoexo4d --root "$demo/raw" --out "$demo/data/egoexo4d/$split" \
    --split "$split" --size "$size" &
  pids+=("$!")
done
"$py" -m preprocess.walking_tours --videos "$demo/raw/walking_tours" \
  --out "$demo/data/walking_tours" --size "$size" &
pids+=("$!")
for pid in "${pids[@]}"; do
  wait "$pid"  # set -e: a failed set stops the demo here
done

free_port() {
  "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# --log_level error: the launcher's own INFO lines and its "no hostfile" warning say nothing a
# demo user can act on; its errors (a rank that failed) still show.
echo "== 3/5 pretraining, stage 1: $stage1_config, the representation alone (2 processes, ZeRO-2, CPU)"
.venv/bin/deepspeed --log_level error --num_gpus 2 --master_port "$(free_port)" launch/pretrain.py \
  --ds_config configs/zero2.json --config "$stage1_config" --resume auto \
  "--data.egoexo4d_path=$demo/data/egoexo4d/train" "--data.walking_tours_path=$demo/data/walking_tours" \
  "--run.output_dir=$demo" "--run.name=stage1"
echo "== 3/5 pretraining, stage 2: $config from stage 1's weights (2 processes, ZeRO-2, CPU)"
.venv/bin/deepspeed --log_level error --num_gpus 2 --master_port "$(free_port)" launch/pretrain.py \
  --ds_config configs/zero2.json --config "$config" --resume auto "${paths[@]}" \
  "--run.init_from=$demo/stage1"

echo "== 4/5 export (teacher: represent; student: predict and act -> safetensors)"
"$py" launch/export.py --checkpoint "$demo" --out "$demo/export"

echo "== 5/5 evaluation: represent (k-NN), predict (retrieval), act (motion)"
"$py" launch/evaluate.py --model "$demo/export" --task all --out "$demo/eval" \
  --data "$demo/data/egoexo4d/val" --knn-train "$demo/raw/imagefolder/train" \
  --knn-val "$demo/raw/imagefolder/val" --workers 0 --batch-size 32

"$py" -m megatron_ego.eval.demo_summary --run "$demo"
