#!/usr/bin/env bash
# The policy task (TriFinger reach cube, the paper's appendix Table 5) on the demo's export, small:
# 20 scripted demonstrations and 20 held-out test states, behaviour cloning with 3 seeds on the
# frozen features of the demo export, of the stage-1 export, of a randomly initialised encoder
# and on the true cube state; prints the success rates. Needs `make demo` first (its export and
# stage-1 run); kept out of `make demo`, whose 15 minutes the pretraining already uses.
# Everything goes under runs/demo/policy/ (DEMO_DIR/policy). Camera images are rendered at
# 128 px instead of the benchmark's 270 (the demo model sees 64 px; rendering is the slow part).
#
# Usage:
#   make demo-policy            (runs `make setup` first)
#   bash launch/demo_policy.sh  (with .venv already set up)
#   DEMO_DIR=runs/demo2 bash launch/demo_policy.sh
#   bash launch/demo_policy.sh --help  (this text)
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }
case "${1:-}" in
  "") ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; echo "error: unknown argument '$1': launch/demo_policy.sh takes none" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

# as launch/demo.sh: tell DeepSpeed (the stage-1 export) the accelerator on a CPU-only machine
if ! command -v nvidia-smi > /dev/null 2>&1; then
  export DS_ACCELERATOR=cpu
fi

py=.venv/bin/python
demo="${DEMO_DIR:-runs/demo}"
out="$demo/policy"
if [[ ! -f "$demo/export/config.yaml" || ! -d "$demo/stage1" ]]; then
  echo "error: $demo/export or $demo/stage1 is missing: run \`make demo\` first" >&2
  exit 2
fi
start=$SECONDS

echo "== 1/3 export of the stage-1 (represent-only) run, a baseline"
"$py" launch/export.py --checkpoint "$demo/stage1" --out "$out/stage1_export"

echo "== 2/3 scripted demonstrations: reach cube, 20 training + 20 test episodes"
"$py" -m preprocess.trifinger_demos --task reach_cube --train 20 --test 20 --image-size 128 \
  --out "$out/reach_cube"

echo "== 3/3 behaviour cloning (3 seeds) and rollouts from the 20 test states"
"$py" launch/evaluate.py --model "$demo/export" --task policy --out "$out/eval" \
  --policy-demos "$out/reach_cube" --policy-stage1 "$out/stage1_export" --tensorboard none

echo "demo-policy finished in $((SECONDS - start)) s; results in $out/eval/results.md"
