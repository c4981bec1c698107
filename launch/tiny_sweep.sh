#!/usr/bin/env bash
# What-if sweep of the demo's tiny config through the real pipeline: every variant is pretrained
# (launch/pretrain.py, one process, DeepSpeed ZeRO-2), exported (launch/export.py) and evaluated
# (launch/evaluate.py --task all) on the demo world; variants run in parallel (on one GPU they
# share it); a table of the variants' results.json closes the run.
#
#   launch/tiny_sweep.sh [--demo runs/demo] [--out runs/sweep] [--jobs 8] \
#       [--config configs/tiny_cpu.yaml] NAME="--section.key=value ..." [NAME=...]
#   launch/tiny_sweep.sh base= t01="--loss.predict_contrastive_temp=0.01" \
#       long="--schedule.train_iters=2400"
#
# The demo's two stages with another seed (stage 2 starts from the stage-1 variant's run folder):
#   launch/tiny_sweep.sh --config configs/tiny_cpu_stage1.yaml st1s1="--run.seed=1"
#   launch/tiny_sweep.sh st2s1="--run.seed=1 --run.init_from=runs/sweep/st1s1"
#
# --demo is a finished `make demo` folder (its data/ and raw/imagefolder/ are read, nothing is
# written there; without data/walking_tours the variants train on Ego-Exo4D clips alone). Each
# variant is one process of its own (launcher and SLURM rank variables are dropped for it) and
# writes --out/NAME/{overrides.txt,train.log,export,eval}; a variant whose eval/results.json
# exists is not run again, and a NAME already used with other overrides stops that variant
# (never two configs in one folder). Needs torch, deepspeed and megatron-core; where the last two
# are missing and wheels lie in .whl/, they are installed into a temporary folder first.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=runs/demo
out=runs/sweep
jobs=8
config=configs/tiny_cpu.yaml
variants=()
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) demo="$2"; shift ;;
    --out) out="$2"; shift ;;
    --jobs) jobs="$2"; shift ;;
    --config) config="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
    -*) echo "usage: $0 [--demo DIR] [--out DIR] [--jobs N] [--config FILE] NAME=\"OVERRIDES\" ..." >&2
        exit 2 ;;
    *=*)
      if [[ ! "${1%%=*}" =~ ^[A-Za-z0-9_.-]+$ ]]; then
        echo "variant name '${1%%=*}' must be letters, digits, '.', '_' or '-' (a folder name)" >&2
        exit 2
      fi
      variants+=("$1") ;;
    *) echo "variant '$1' is not NAME=\"--section.key=value ...\"" >&2; exit 2 ;;
  esac
  shift
done
if [ "${#variants[@]}" -eq 0 ]; then
  echo "no variants given: name at least one, e.g. base=" >&2
  exit 2
fi
for need in "$demo/data/egoexo4d/train" "$demo/data/egoexo4d/val" \
            "$demo/raw/imagefolder/train" "$demo/raw/imagefolder/val"; do
  if [ ! -d "$need" ]; then
    echo "$need is missing: run 'make demo' first (or pass --demo DIR of a finished demo)" >&2
    exit 2
  fi
done

# shellcheck source=launch/python_env.sh
source launch/python_env.sh  # sets $py; deepspeed + megatron-core importable
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
# one process per variant, whatever launcher or allocation this shell sits in
unset RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR MASTER_PORT SLURM_PROCID SLURM_NTASKS SLURM_LOCALID
walking=("--data.walking_tours_path=$demo/data/walking_tours")
[ -d "$demo/data/walking_tours" ] || walking=("--data.walking_tours_ratio=0")

variant() {  # variant NAME OVERRIDES: pretrain, export, evaluate; log under $out/NAME
  local name="$1" dir="$out/$1"
  local -a overrides
  read -r -a overrides <<< "$2"
  if [ -f "$dir/overrides.txt" ] && [ "$(cat "$dir/overrides.txt")" != "$2" ]; then
    echo "variant $name failed: $dir was made with other overrides ($(cat "$dir/overrides.txt"));" \
      "choose another name or delete that folder" >&2
    return 0
  fi
  if [ -f "$dir/config.txt" ] && [ "$(cat "$dir/config.txt")" != "$config" ]; then
    echo "variant $name failed: $dir was made with --config $(cat "$dir/config.txt");" \
      "choose another name or delete that folder" >&2
    return 0
  fi
  [ -f "$dir/eval/results.json" ] && return 0
  mkdir -p "$dir"
  printf '%s\n' "$config" > "$dir/config.txt"
  printf '%s\n' "$2" > "$dir/overrides.txt"
  {
    "$py" launch/pretrain.py --ds_config configs/zero2.json --config "$config" \
      --resume auto "--run.name=$name" "--run.output_dir=$dir" \
      "--data.egoexo4d_path=$demo/data/egoexo4d/train" "${walking[@]}" "${overrides[@]}" &&
    "$py" launch/export.py --checkpoint "$dir" --out "$dir/export" &&
    "$py" launch/evaluate.py --model "$dir/export" --task all --out "$dir/eval" \
      --data "$demo/data/egoexo4d/val" --knn-train "$demo/raw/imagefolder/train" \
      --knn-val "$demo/raw/imagefolder/val" --workers 0 --batch-size 64
  } > "$dir/train.log" 2>&1 || echo "variant $name failed: see $dir/train.log" >&2
}

mkdir -p "$out"
running=0
for v in "${variants[@]}"; do
  variant "${v%%=*}" "${v#*=}" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
done
wait

"$py" - "$out" "${variants[@]}" <<'PY'
import json, os, sys
out, variants = sys.argv[1], [v.split("=", 1) for v in sys.argv[2:]]
missing = 0
print(f"{'variant':12} {'top1':>6} {'repr':>6} {'mAP':>6} {'repr':>6} {'MPJPE':>6} {'zero-v':>6} "
      f"{'k-NN':>6}")
for name, overrides in variants:
    path = os.path.join(out, name, "eval", "results.json")
    with open(os.path.join(out, name, "overrides.txt")) as f:
        made_with = f.read().rstrip("\n")
    if made_with != overrides:
        print(f"{name:12} (made with other overrides: {made_with})")
        missing += 1
        continue
    if not os.path.exists(path):
        print(f"{name:12} (no results: see {os.path.join(out, name, 'train.log')})")
        missing += 1
        continue
    r = json.load(open(path))
    ret, mot, knn = r["retrieval"], r["motion"], r["knn"]
    print(f"{name:12} {ret['egoagent']['top1']:6.2f} {ret['representation_only']['top1']:6.2f} "
          f"{ret['egoagent']['map']:6.2f} {ret['representation_only']['map']:6.2f} "
          f"{mot['egoagent']['mpjpe_30fps']:6.2f} {mot['zero_velocity']['mpjpe_30fps']:6.2f} "
          f"{knn['egoagent']['top1']:6.2f}")
sys.exit(1 if missing else 0)
PY
