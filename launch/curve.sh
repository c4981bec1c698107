#!/usr/bin/env bash
# Learning curve of one run: export and evaluate (all tasks, with the input controls) the
# checkpoints of the given steps, then print their table (python -m megatron_ego.eval.curve).
#
#   launch/curve.sh --run runs/sweep/lc0 --demo runs/demo 900 1800 2700 3600
#
# --run is a run folder whose checkpoints/step_NNNNNNN folders hold the steps (train it with
# --run.save_interval and --run.keep_last that keep them); --demo a finished `make demo` folder
# (its val data and k-NN folders are read). Writes RUN/curve/step_N/{export,eval}; a step whose
# eval/results.json exists is not evaluated again.
set -euo pipefail
cd "$(dirname "$0")/.."

run=""
demo=runs/demo
steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --run) run="$2"; shift ;;
    --demo) demo="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
    *[!0-9]*) echo "error: '$1' is not a step number (usage: --run DIR [--demo DIR] STEP...)" >&2
              exit 2 ;;
    *) steps+=("$1") ;;
  esac
  shift
done
if [ -z "$run" ] || [ "${#steps[@]}" -eq 0 ]; then
  echo "error: give --run DIR and at least one step" >&2
  exit 2
fi
for step in "${steps[@]}"; do
  checkpoint=$(printf '%s/checkpoints/step_%07d' "$run" "$step")
  if [ ! -d "$checkpoint" ]; then
    echo "error: $checkpoint does not exist: train with --run.save_interval dividing $step and" \
      "a --run.keep_last that keeps it" >&2
    exit 2
  fi
done

# shellcheck source=launch/python_env.sh
source launch/python_env.sh  # sets $py
for step in "${steps[@]}"; do
  out="$run/curve/step_$step"
  [ -f "$out/eval/results.json" ] && continue
  "$py" launch/export.py --checkpoint "$(printf '%s/checkpoints/step_%07d' "$run" "$step")" \
    --out "$out/export"
  "$py" launch/evaluate.py --model "$out/export" --task all --out "$out/eval" \
    --data "$demo/data/egoexo4d/val" --knn-train "$demo/raw/imagefolder/train" \
    --knn-val "$demo/raw/imagefolder/val" --workers 0 --batch-size 64 --tensorboard none \
    > "$out.log" 2>&1 || { echo "error: evaluating step $step failed: see $out.log" >&2; exit 1; }
done
"$py" -m megatron_ego.eval.curve "$run"
