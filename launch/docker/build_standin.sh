#!/usr/bin/env bash
# Builds the Dockerfile here, without Docker or a GPU, and runs the project inside the image:
#   1. a stand-in for the NGC PyTorch base: a Debian rootfs from debootstrap with Python, gcc,
#      Open MPI, a CPU torch and the packages NGC ships that the Dockerfile relies on, all frozen
#      in /etc/pip/constraint.txt with PIP_CONSTRAINT set, as NGC >= 25.03 does;
#   2. `buildah bud --isolation chroot` of the Dockerfile on it (BASE_IMAGE, and the megatron-core
#      that the stand-in's Python takes);
#   3. inside the image (`buildah run --isolation chroot`): `launch/pretrain.py --print-config`, a
#      small demo world, its preprocessing, and a 2-step run of configs/tiny_cpu.yaml (CPU, gloo).
# Everything lives in its own temporary folder (image storage included), removed at the end.
#
# Usage:
#   bash launch/docker/build_standin.sh          (as root: debootstrap and chroot need it)
#   bash launch/docker/build_standin.sh --keep   (keep the folder and its images, to look inside)
#   bash launch/docker/build_standin.sh --help   (this text)
# Environment: STANDIN_SUITE (Debian suite, default bookworm: Python 3.11), DEBIAN_MIRROR,
# STANDIN_TORCH (the pip requirement of the CPU torch, default torch==2.13.0), STANDIN_TORCH_WHEEL
# (a CPU torch wheel file to use instead), TMPDIR (where the folder goes; the stand-in image alone is 2 GB).
# Needs buildah and debootstrap (apt-get install buildah debootstrap), and PyPI and a Debian mirror.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }
keep=0
case "${1:-}" in
  "") ;;
  --keep) keep=1 ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; echo "error: unknown argument '$1' (see above)" >&2; exit 2 ;;
esac
repo="$(cd "$(dirname "$0")/../.." && pwd)"

for tool in buildah debootstrap python3; do
  if ! command -v "$tool" > /dev/null 2>&1; then
    echo "error: $tool not found: install it (Debian: apt-get install buildah debootstrap python3-pip)" >&2
    exit 2
  fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root: debootstrap and buildah's chroot isolation need it" >&2
  exit 2
fi

suite="${STANDIN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What the NGC base ships that the Dockerfile relies on, at versions that differ from
# requirements.txt's pins: the build must keep these (an exact pin of its own would fail it).
base_packages=(numpy==2.2.6 packaging==24.2 tqdm==4.67.1 PyYAML==6.0.2 pillow==11.3.0
               matplotlib==3.10.3 numba==0.61.2 llvmlite==0.44.0 tensorboard==2.19.0)
# Debian packages: Python, the compilers and the Open MPI that NGC ships (as HPC-X) for mpi4py.
debs=(python3 python3-pip python3-dev python-is-python3 gcc g++ libopenmpi-dev openmpi-bin)

work="$(mktemp -d "${TMPDIR:-/tmp}/megatron-ego-image.XXXXXX")"
b=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver overlay)
cleanup() {
  local rc=$?
  if [ "$keep" = 1 ]; then
    echo "kept: $work (buildah --root $work/storage --runroot $work/run images)"
  else
    "${b[@]}" rm --all > /dev/null 2>&1 || true
    "${b[@]}" rmi --all --force > /dev/null 2>&1 || true
    rm -rf "$work" || echo "warning: could not remove $work" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
step() { echo "== [$(date +%T), ${SECONDS}s] $*"; }

step "1/4 stand-in base: debootstrap $suite, then apt-get install ${debs[*]}"
ctr="$("${b[@]}" from scratch)"
root="$("${b[@]}" mount "$ctr")"
debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" \
  > "$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; echo "error: debootstrap $suite failed (log above)" >&2; exit 1; }
# The host's own certificate authorities (PyPI through a TLS proxy, say), trusted in the stand-in.
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
# apt, not debootstrap --include, for these: debootstrap's resolver misses virtual packages.
"${b[@]}" run --isolation chroot "$ctr" -- sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends ${debs[*]} && apt-get clean && update-ca-certificates" \
  > "$work/apt.log" 2>&1 ||
  { tail -20 "$work/apt.log" >&2; echo "error: apt-get install in the stand-in failed (log above)" >&2; exit 1; }
# NGC lets root pip-install into the system Python; so does the stand-in.
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
py="$("${b[@]}" run --isolation chroot "$ctr" -- python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

step "2/4 stand-in base: CPU torch for Python $py and the base's packages, frozen in /etc/pip/constraint.txt"
mkdir -p "$work/wheels"
if [ -n "${STANDIN_TORCH_WHEEL:-}" ]; then
  cp "$STANDIN_TORCH_WHEEL" "$work/wheels/"
else
  python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp \
    --python-version "$py" --platform manylinux_2_28_x86_64 -d "$work/wheels" \
    "${STANDIN_TORCH:-torch==2.13.0}" 2>&1 | grep -v "is ignored" || true
fi
wheel="$(find "$work/wheels" -name 'torch-*+cpu-*.whl' | head -n 1)"
if [ -z "$wheel" ]; then
  echo "error: no CPU torch wheel for Python $py (found: $(ls "$work/wheels")): set STANDIN_TORCH_WHEEL=/path/to/torch-...+cpu-...whl" >&2
  exit 2
fi
"${b[@]}" run --isolation chroot --volume "$work/wheels:/wheels:ro" "$ctr" -- sh -c "
  set -e
  python -m pip install -q --no-cache-dir --root-user-action=ignore /wheels/$(basename "$wheel") ${base_packages[*]}
  mkdir -p /etc/pip && python -m pip list --format=freeze > /etc/pip/constraint.txt
  echo \"stand-in: Python $py, \$(grep -c == /etc/pip/constraint.txt) packages frozen, \$(grep -E '^(torch|numpy|tqdm|pillow)==' /etc/pip/constraint.txt | tr '\n' ' ')\""
"${b[@]}" config --env PIP_CONSTRAINT=/etc/pip/constraint.txt "$ctr"
"${b[@]}" umount "$ctr" > /dev/null
"${b[@]}" commit -q "$ctr" localhost/ngc-standin:"$suite" > /dev/null
"${b[@]}" rm "$ctr" > /dev/null

# megatron-core: the Dockerfile's default (0.17.x) needs Python >= 3.12; below, requirements.txt's.
core_args=()
if [ "${py#3.}" -lt 12 ]; then
  core="$(sed -n 's/^megatron-core==\([^ #]*\).*/\1/p' "$repo/requirements.txt")"
  core_args=(--build-arg "MEGATRON_CORE_VERSION=$core")
fi
torch_version="$(basename "$wheel" | cut -d- -f2)"

step "3/4 buildah bud of the Dockerfile on localhost/ngc-standin:$suite ${core_args[*]}"
"${b[@]}" bud --isolation chroot --pull=never --layers=false \
  --build-arg BASE_IMAGE=localhost/ngc-standin:"$suite" --build-arg IMAGE_PYTHON_VERSION="$py" \
  --build-arg IMAGE_TORCH_VERSION="$torch_version" "${core_args[@]}" \
  -t localhost/megatron-ego:standin -f "$repo/Dockerfile" "$repo" > "$work/bud.log" 2>&1 ||
  { tail -40 "$work/bud.log" >&2; echo "error: buildah bud failed (log above)" >&2; exit 1; }
grep -E '^(base_pins|check_image|STEP)|image-versions|^(torch|megatron-core|deepspeed|transformer[-_]engine|apex) ' \
  "$work/bud.log" | grep -v '^STEP.*: COPY' || true

step "4/4 inside the image: --print-config, demo world, preprocessing, 2 training steps"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
run="$("${b[@]}" from --pull=never localhost/megatron-ego:standin)"
# shellcheck disable=SC2016  # the script runs in the image: its variables expand there
"${b[@]}" run --isolation chroot --env DS_ACCELERATOR=cpu --env MASTER_PORT="$port" "$run" -- bash -c '
  set -euo pipefail
  w=$(mktemp -d)
  echo "user: $(id -un), python $(python --version 2>&1 | cut -d" " -f2), in $PWD"
  python launch/pretrain.py --config configs/tiny_cpu.yaml --print-config > "$w/config.txt"
  echo "print-config: $(wc -l < "$w/config.txt") lines, sha256 $(sha256sum < "$w/config.txt" | cut -d" " -f1)"
  python -m preprocess.demo_world --out "$w/raw" --takes 2 --seconds 3 --resolution 64 \
    --walking-tours 1 --walking-tours-seconds 3 --knn-train 1 --knn-val 1 > "$w/prep.log" 2>&1
  python -m preprocess.egoexo4d --root "$w/raw" --out "$w/data/egoexo4d" --split train \
    --size 64 >> "$w/prep.log" 2>&1
  python -m preprocess.walking_tours --videos "$w/raw/walking_tours" --out "$w/data/walking_tours" \
    --size 64 >> "$w/prep.log" 2>&1
  echo "preprocessed: $(find "$w/data" -name "*.bin" | wc -l) indexed datasets"
  python launch/pretrain.py --config configs/tiny_cpu.yaml --ds_config configs/zero2.json \
    --model.num_layers=2 --model.hidden_size=64 --model.num_attention_heads=4 \
    --model.head_hidden_dim=64 --model.head_bottleneck_dim=32 --model.head_out_dim=128 \
    --data.num_workers=0 --run.micro_batch_size=2 --run.global_batch_size=2 \
    --schedule.train_iters=2 --schedule.warmup_iters=1 --run.log_interval=1 \
    --data.egoexo4d_path="$w/data/egoexo4d" --data.walking_tours_path="$w/data/walking_tours" \
    --run.output_dir="$w/runs" --run.name=standin --resume none > "$w/train.log" 2>&1 ||
    { tail -30 "$w/train.log"; exit 1; }
  echo "metrics.jsonl:"
  cat "$w/runs/standin/metrics.jsonl"
  echo "checkpoints: $(ls "$w/runs/standin/checkpoints" | tr "\n" " ")"
'
step "done: the Dockerfile builds on the stand-in and trains inside it"
