#!/usr/bin/env bash
# Demo measurement of data.mix_mode (docs/results.md "Mixing the sources"): the demo world under
# runs/mix/ (built and preprocessed as launch/demo.sh does), then for each NAME:MODE:SEED a
# 2-process ZeRO-2 CPU pretraining of configs/tiny_cpu.yaml with data.mix_mode=MODE and
# run.seed=SEED, its export and its evaluation (runs/mix/NAME/eval/results.json; a finished
# variant is skipped). The world is the 8-take demo world of commit 2501002, on which
# docs/results.md's mix-mode table was measured (make demo now builds 20 takes).
#   bash launch/mix_compare.sh wb0:within_batch:0 ms0:micro_step:0 wb1:within_batch:1 ms1:micro_step:1
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
py=.venv/bin/python
m=runs/mix
if [ ! -f "$m/raw/takes.json" ]; then
  "$py" -m preprocess.demo_world --out "$m/raw.tmp" --takes 8 --seconds 20 --resolution 160 --seed 0
  mv "$m/raw.tmp" "$m/raw"
fi
for split in train val; do
  "$py" -m preprocess.egoexo4d --root "$m/raw" --out "$m/data/egoexo4d/$split" --split "$split" \
    --size 128
done
"$py" -m preprocess.walking_tours --videos "$m/raw/walking_tours" --out "$m/data/walking_tours" \
  --size 128
for variant in "$@"; do
  name=${variant%%:*}; rest=${variant#*:}; mode=${rest%%:*}; seed=${rest#*:}
  run="$m/$name"
  [ -f "$run/eval/results.json" ] && continue
  port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  .venv/bin/deepspeed --num_gpus 2 --master_port "$port" launch/pretrain.py \
    --ds_config configs/zero2.json --config configs/tiny_cpu.yaml --resume auto \
    --data.egoexo4d_path="$m/data/egoexo4d/train" --data.walking_tours_path="$m/data/walking_tours" \
    --data.mix_mode="$mode" --run.seed="$seed" --run.output_dir="$run" --run.name="$name" \
    > "$run.train.log" 2>&1
  "$py" launch/export.py --checkpoint "$run" --out "$run/export" > "$run.export.log" 2>&1
  "$py" launch/evaluate.py --model "$run/export" --task all --out "$run/eval" \
    --data "$m/data/egoexo4d/val" --knn-train "$m/raw/imagefolder/train" \
    --knn-val "$m/raw/imagefolder/val" --workers 0 --batch-size 32 > "$run.eval.log" 2>&1
done
